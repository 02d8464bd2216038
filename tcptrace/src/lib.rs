//! tcptrace's userspace agent: loads the kernel program, reads transitions from the ring
//! buffer, and renders them.
//!
//! Pure logic (decoding, filtering, formatting, BTF offsets) lives in modules that are
//! unit-tested without root; kernel I/O is confined to `loader` and `pipeline::Pipeline::run`.

pub mod btf;
pub mod cgroup;
pub mod cli;
pub mod connections;
pub mod event;
pub mod filter;
pub mod format;
pub mod http;
pub mod inet_diag;
pub mod life;
pub mod loader;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod serve;
pub mod sockets;
pub mod state;
pub mod tail;

/// Inode of this process's network namespace: the one INET_DIAG snapshots describe.
pub fn own_netns() -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/net")
        .ok()
        .map(|m| m.ino() as u32)
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
