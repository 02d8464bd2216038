//! What a socket's cgroup says about it: the cgroup v2 path and, from the path shapes common
//! container runtimes and systemd create, the container id or service.

/// What is known about one cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupInfo {
    /// Path relative to the cgroup2 root, e.g. `/system.slice/docker-3f2a….scope`.
    pub path: String,
    /// Container id (docker, containerd, cri-o, podman, kubepods) or systemd service name.
    pub container: Option<String>,
}

fn is_hex_id(s: &str) -> bool {
    s.len() >= 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container id a cgroup path belongs to, or the systemd service for plain services.
pub fn container_id(path: &str) -> Option<String> {
    let mut found = None;
    let mut service = None;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let stem = part.strip_suffix(".scope").unwrap_or(part);
        // docker-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope, libpod-<id>.scope
        let id = stem.rsplit_once('-').map(|(_, id)| id).unwrap_or(stem);
        if is_hex_id(id) {
            found = Some(id.to_owned());
        } else if let Some(unit) = part.strip_suffix(".service").map(|_| part) {
            service = Some(unit.to_owned());
        }
    }
    found.or(service)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c0e1b7d4e5f8a6b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f";

    #[test]
    fn container_ids_from_runtime_path_shapes() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!(
                "/system.slice/containerd.service/kubepods-burstable-pod1234.slice/cri-containerd-{ID}.scope"
            ),
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b.slice/crio-{ID}.scope"
            ),
            format!("/kubepods/burstable/pod7d1e2f3a-aaaa-bbbb-cccc-0123456789ab/{ID}"),
            format!("/machine.slice/libpod-{ID}.scope"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(ID), "{path}");
        }
        assert_eq!(
            container_id("/system.slice/nginx.service").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(container_id("/"), None);
        assert_eq!(
            container_id("/user.slice/user-1000.slice/session-3.scope"),
            None
        );
    }
}
