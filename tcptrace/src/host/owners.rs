//! Which process holds a socket, from `/proc/PID/fd` (what `ss -p` does): the fallback owner
//! for sockets that existed before tcptrace started, whose owner no transition told.

use std::collections::HashMap;

/// A process by pid and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessName {
    pub pid: u32,
    pub comm: String,
}

/// Socket inode -> the process holding it (the lowest pid when several share it, e.g. after
/// fork).
#[derive(Debug, Default)]
pub struct SocketOwners {
    by_inode: HashMap<u32, ProcessName>,
}

/// The inode in a `socket:[12345]` fd link.
pub fn socket_inode(link: &str) -> Option<u32> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

impl SocketOwners {
    /// Scans every process's fds. Processes that exit meanwhile or deny access are skipped.
    pub fn scan() -> Self {
        let mut by_inode: HashMap<u32, ProcessName> = HashMap::new();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return Self { by_inode };
        };
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            let mut comm = None;
            for fd in fds.flatten() {
                let Some(inode) = std::fs::read_link(fd.path())
                    .ok()
                    .and_then(|l| l.to_str().and_then(socket_inode))
                else {
                    continue;
                };
                let comm = comm
                    .get_or_insert_with(|| {
                        std::fs::read_to_string(entry.path().join("comm"))
                            .map(|c| c.trim_end().to_owned())
                            .unwrap_or_default()
                    })
                    .clone();
                let name = ProcessName { pid, comm };
                by_inode
                    .entry(inode)
                    .and_modify(|p| {
                        if pid < p.pid {
                            *p = name.clone();
                        }
                    })
                    .or_insert(name);
            }
        }
        Self { by_inode }
    }

    pub fn from_pairs(pairs: impl IntoIterator<Item = (u32, ProcessName)>) -> Self {
        Self {
            by_inode: pairs.into_iter().collect(),
        }
    }

    pub fn get(&self, inode: u32) -> Option<&ProcessName> {
        (inode != 0).then(|| self.by_inode.get(&inode)).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_socket_links() {
        assert_eq!(socket_inode("socket:[4026]"), Some(4026));
        assert_eq!(socket_inode("pipe:[4026]"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }

    #[test]
    fn finds_a_socket_of_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sock = crate::host::inet_diag::dump_tcp()
            .unwrap()
            .into_iter()
            .find(|s| s.endpoints.local_port == port)
            .unwrap();
        let owners = SocketOwners::scan();
        let me = owners
            .get(sock.inode)
            .expect("this process holds the listener");
        assert_eq!(me.pid, std::process::id());
        assert!(!me.comm.is_empty());
        assert_eq!(owners.get(0), None);
    }
}
