//! tcptrace's userspace agent: loads the kernel program, reads transitions from the ring
//! buffer, and renders them.
//!
//! Pure logic (decoding, filtering, formatting, BTF offsets) lives in modules that are
//! unit-tested without root; kernel I/O is confined to `loader` and `pipeline::Pipeline::run`.

pub mod btf;
pub mod cgroup;
pub mod cli;
pub mod connections;
pub mod diagnosis;
pub mod doctor;
pub mod event;
pub mod filter;
pub mod format;
pub mod host;
pub mod http;
pub mod identity;
pub mod inet_diag;
pub mod life;
pub mod loader;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod procfs;
pub mod serve;
pub mod sockets;
pub mod state;
pub mod tail;

#[cfg(test)]
mod golden_tests;

/// Inode of this process's network namespace: the one INET_DIAG snapshots describe.
pub fn own_netns() -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/net")
        .ok()
        .map(|m| m.ino() as u32)
}

/// Runs `f` on a thread inside the network namespace at `path` (or here, when `None`):
/// INET_DIAG dumps, `/proc/thread-self/net` and `/proc/sys/net` then describe that namespace.
/// setns(2) with CLONE_NEWNET moves only the calling thread, so the rest of the process stays.
pub fn in_netns<T: Send>(
    path: Option<&std::path::Path>,
    f: impl FnOnce() -> T + Send,
) -> std::io::Result<T> {
    use std::os::fd::AsRawFd as _;
    let Some(path) = path else {
        return Ok(f());
    };
    let ns = std::fs::File::open(path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a valid namespace fd; affects this scoped thread only.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))
    })
}

/// A current-thread tokio runtime for a command's event loop.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// SIGINT (Ctrl-C) and SIGTERM handlers, registered before a command says it is ready, so a
/// signal sent right after the ready line stops it cleanly instead of killing it.
pub struct Shutdown {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Shutdown {
    pub fn register(runtime: &tokio::runtime::Runtime) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        use tokio::signal::unix::{SignalKind, signal};
        let _guard = runtime.enter();
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    /// Completes on the first signal, or after `duration` when given.
    pub async fn wait(mut self, duration: Option<std::time::Duration>) {
        let timer = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            () = timer => {}
        }
    }
}
