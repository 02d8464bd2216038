//! The subcommands: each file holds its arguments, its sink and its `run`.

pub mod doctor;
pub mod life;
pub mod serve;
pub mod tail;
pub mod top;

use anyhow::{Context as _, bail};

use crate::cli::{KernelArgs, LogArgs};
use crate::host::caps::{self, Capability, Need};
use crate::host::snapshot::Scope;
use crate::kernel::loader::{KernelCounters, Tracer};
use crate::kernel::ring::Ring;
use crate::model::filter::Filter;
use crate::model::tcp::TcpState;
use crate::pipeline::Stats;

/// What a command that names owners and snapshots `scope` needs besides loading: owner
/// lookups in `/proc/PID/fd` (optional), and `setns` into another namespace: required when
/// `netns_required` and the scope is one other namespace, else optional (without it only
/// the agent's own namespace is snapshotted, and the others are reported as failed).
pub fn needs(scope: &Scope, netns_required: bool) -> Vec<Need> {
    let mut needs = caps::OWNERS.to_vec();
    match scope {
        Scope::Own => {}
        Scope::One { .. } => needs.push(Need {
            required: netns_required,
            ..caps::ENTER_NETNS
        }),
        Scope::All => needs.push(Need {
            required: false,
            ..caps::ENTER_NETNS
        }),
    }
    needs
}

/// Checks what the command `needs` besides loading, loads and attaches the programs, then
/// drops every capability but those needs and `--capabilities.keep`, before any thread or
/// runtime starts (threads inherit the reduced sets). Errors name the missing capability.
pub fn start_tracer(
    filter: &Filter,
    kernel: &KernelArgs,
    log: &LogArgs,
    needs: &[Need],
) -> anyhow::Result<(Tracer, Ring)> {
    let have = caps::permitted();
    let missing: Vec<&Need> = have.as_ref().map_or_else(Vec::new, |have| {
        needs.iter().filter(|n| !have.contains(&n.cap)).collect()
    });
    if let Some(need) = missing.iter().find(|n| n.required) {
        let cap = caps::name(need.cap);
        let short = cap.trim_start_matches("CAP_").to_ascii_lowercase();
        bail!(
            "missing {cap}: {}; run as root or grant it (systemd AmbientCapabilities={cap}, setpriv --inh-caps +{short} --ambient-caps +{short})",
            need.why
        );
    }
    // Loading fails first, alone, when its own capabilities are missing.
    let (tracer, ring) = Tracer::start(&filter.kernel(), kernel.sizes(log))?;
    for need in missing {
        log::warn!(
            "missing {}: {}; without it {}",
            caps::name(need.cap),
            need.why,
            need.without
        );
    }
    let Some(have) = have else {
        log::warn!("cannot read this process's capabilities; none dropped");
        return Ok((tracer, ring));
    };
    let absent = kernel.keep_caps.absent(&have);
    if !absent.is_empty() {
        log::warn!(
            "--capabilities.keep: this process does not have {}",
            caps::names(&absent)
        );
    }
    let mut keep = kernel.keep_caps.within(&have);
    keep.extend(needs.iter().map(|n| n.cap).filter(|c| have.contains(c)));
    if !map_reads_without(&tracer, &keep) {
        // Before Linux 6.5, with kernel.unprivileged_bpf_disabled, every bpf() call checks.
        let cap = if have.contains(&Capability::CAP_BPF) {
            Capability::CAP_BPF
        } else {
            Capability::CAP_SYS_ADMIN
        };
        log::info!(
            "this kernel needs {} to read BPF maps: kept",
            caps::name(cap)
        );
        keep.insert(cap);
    }
    if caps::threads().is_some_and(|n| n > 1) {
        log::warn!("capabilities are dropped after other threads started: they keep theirs");
    }
    caps::drop_all_but(&keep).context("cannot drop capabilities")?;
    log::info!("capabilities kept: {}", caps::names(&keep));
    Ok((tracer, ring))
}

/// Whether the counters map can still be read once the BPF capabilities not in `keep` are
/// gone: they are lowered from the effective set for one read, then raised again.
fn map_reads_without(tracer: &Tracer, keep: &caps::CapsHashSet) -> bool {
    let lowered: Vec<Capability> = [Capability::CAP_BPF, Capability::CAP_SYS_ADMIN]
        .into_iter()
        .filter(|c| !keep.contains(c))
        .collect();
    if caps::lower(&lowered).is_err() {
        let _ = caps::raise(&lowered);
        return true;
    }
    let ok = tracer.probe_counters().is_ok();
    let _ = caps::raise(&lowered);
    ok
}

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
