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

/// A path to the namespace with inode `inode`: some process's `/proc/PID/ns/net`.
pub fn path_of(inode: u32) -> Option<PathBuf> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        e.file_name().to_str()?.parse::<u32>().ok()?;
        let path = e.path().join("ns/net");
        (inode_of(&path).ok()? == inode).then_some(path)
    })
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
        assert_eq!(run_in(None, || 7).unwrap(), 7);
        assert!(run_in(Some(Path::new("/nonexistent")), || ()).is_err());
    }
}
