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
pub mod pipeline;
pub mod serve;
pub mod sockets;
pub mod state;
pub mod tail;

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers the default disposition still ends the process.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
