//! Network namespaces: which one this process is in, and running work inside another one.

use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// Inode of the network namespace at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`), as
/// `readlink /proc/PID/ns/net` shows it and the kernel program reports it.
pub fn inode_of(path: &Path) -> std::io::Result<u32> {
    std::fs::metadata(path).map(|m| m.ino() as u32)
}

/// Inode of this process's network namespace: the one INET_DIAG snapshots describe.
pub fn own() -> Option<u32> {
    inode_of(Path::new("/proc/self/ns/net")).ok()
}

/// A path to the namespace with inode `inode` (see [`all`]).
pub fn path_of(inode: u32) -> Option<PathBuf> {
    all().remove(&inode)
}

/// Every network namespace this host has that a path leads to: the namespaces of all
/// processes (`/proc/PID/ns/net`) and the named ones (`/run/netns/NAME`, as `ip netns` keeps
/// them), by inode, each with one path to it.
pub fn all() -> std::collections::BTreeMap<u32, PathBuf> {
    let mut found = std::collections::BTreeMap::new();
    let named = ["/run/netns", "/var/run/netns"]
        .into_iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .flatten()
        .map(|e| e.path());
    let processes = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .map(|e| e.path().join("ns/net"));
    for path in named.chain(processes) {
        if let Ok(inode) = inode_of(&path) {
            found.entry(inode).or_insert(path);
        }
    }
    found
}

/// Runs `f` on a thread inside the network namespace at `path` (or here, when `None`):
/// INET_DIAG dumps, `/proc/thread-self/net` and `/proc/sys/net` then describe that namespace.
/// setns(2) with CLONE_NEWNET moves only the calling thread, so the rest of the process stays.
pub fn run_in<T: Send>(path: Option<&Path>, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    let Some(path) = path else {
        return Ok(f());
    };
    let ns = std::fs::File::open(path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a valid namespace fd; it affects this scoped thread only.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_is_found_by_inode() {
        let me = own().expect("/proc/self/ns/net");
        assert_eq!(inode_of(Path::new("/proc/thread-self/ns/net")).unwrap(), me);
        assert!(path_of(me).is_some());
        assert!(all().contains_key(&me));
        assert_eq!(run_in(None, || 7).unwrap(), 7);
        assert!(run_in(Some(Path::new("/nonexistent")), || ()).is_err());
    }
}
