//! The subcommands: each file holds its arguments, its sink and its `run`.

pub mod doctor;
pub mod life;
pub mod serve;
pub mod tail;
pub mod top;

use anyhow::Context as _;

use crate::kernel::loader::KernelCounters;
use crate::model::filter::Filter;
use crate::model::tcp::TcpState;
use crate::pipeline::Stats;

/// Says how many kernel log messages a full log ring dropped, if any (see `kernel::log`).
pub fn warn_lost_kernel_log(stats: &Stats, kernel: &KernelCounters) {
    let lost = kernel
        .log_attempts
        .saturating_sub(stats.kernel_log_received);
    if lost > 0 {
        log::warn!(
            "{lost} of {} kernel log messages were lost (the log ring was full)",
            kernel.log_attempts
        );
    }
}

/// Refuses a `--state` a command can never see: the tracepoint reports no transition into
/// NEW_SYN_RECV (request sockets) nor, for `tail`, into TIME_WAIT (a timewait socket replaces
/// the full socket without one).
pub fn refuse_unseen_states(filter: &Filter, unseen: &[TcpState]) -> anyhow::Result<()> {
    let Some(state) = filter.states.iter().find(|s| unseen.contains(s)) else {
        return Ok(());
    };
    let hint = match state {
        TcpState::TimeWait => {
            "TIME_WAIT sockets show in `tcptrace doctor` and in serve's tcptrace_sockets{state=\"time_wait\"}; `--state fin_wait2,closing` shows the transitions that lead into it"
        }
        _ => {
            "half-open request sockets show in `tcptrace doctor` (syn_flood) and in serve's tcptrace_sockets{state=\"syn_recv\"}"
        }
    };
    anyhow::bail!(
        "--state {}: the kernel's tracepoint never reports that state; {hint}",
        state.label()
    )
}

/// A current-thread tokio runtime for a command's event loop.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
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
