//! This process's own settings (memory allocator tuning, resource limits, signal
//! dispositions), and whether other processes still run.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::host::clock::monotonic_ns;
use crate::model::owners::Liveness;

/// When watched processes exit, from pidfds (Linux 5.3+): each watched process's pidfd waits in
/// the reactor and, once the process has exited (a zombie included), reports the time it
/// learned so. So whether a process was running at a transition is known to within a wakeup,
/// and a pid the kernel hands to another process later is never mistaken for it.
#[derive(Debug)]
pub struct PidWatch {
    watched: HashMap<u32, Watched>,
    exits_tx: mpsc::UnboundedSender<(u32, u64)>,
    exits_rx: Option<mpsc::UnboundedReceiver<(u32, u64)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    Running,
    /// Known to have exited by this kernel monotonic time (0: before it was first watched).
    Exited(u64),
    /// No pidfd (an older kernel, or refused): `/proc/PID/stat` decides when asked.
    Unwatchable,
}

/// Processes watched at most (each running one holds a pidfd); beyond it, exited ones are
/// forgotten, and new ones are judged by `/proc` instead.
const MAX_WATCHED: usize = 4096;

impl Default for PidWatch {
    fn default() -> Self {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        Self {
            watched: HashMap::new(),
            exits_tx,
            exits_rx: Some(exits_rx),
        }
    }
}

impl PidWatch {
    /// The stream of `(pid, exited_by_ns)`: the reader applies each with [`PidWatch::exited`]
    /// before the records that follow (once; `None` after).
    pub fn take_exits(&mut self) -> Option<mpsc::UnboundedReceiver<(u32, u64)>> {
        self.exits_rx.take()
    }

    /// Records that `pid` had exited by `at_ns`.
    pub fn exited(&mut self, pid: u32, at_ns: u64) {
        if let Some(w) = self.watched.get_mut(&pid)
            && *w == Watched::Running
        {
            *w = Watched::Exited(at_ns);
        }
    }

    fn start(&mut self, pid: u32) -> Watched {
        let Some(raw) = rustix::process::Pid::from_raw(pid as i32) else {
            return Watched::Exited(0);
        };
        let fd: OwnedFd =
            match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::NONBLOCK) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::SRCH) => return Watched::Exited(0),
                Err(_) => return Watched::Unwatchable,
            };
        let mut poll = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        if !matches!(rustix::event::poll(&mut poll, 0), Ok(0)) {
            // Exited before it was watched: when is unknown.
            return Watched::Exited(0);
        }
        // Outside a runtime (unit tests) the exit is never reported: the process stays running.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tx = self.exits_tx.clone();
            runtime.spawn(async move {
                // SAFETY: the AsyncFd owns the pidfd, keeps it open and unchanged until it is
                // dropped, and `as_raw_fd` always returns that same fd.
                let fd =
                    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
                if let Ok(fd) = fd
                    && fd.readable().await.is_ok()
                {
                    let _ = tx.send((pid, monotonic_ns()));
                }
            });
        }
        Watched::Running
    }
}

impl Liveness for PidWatch {
    fn watch(&mut self, pid: u32) {
        if self.watched.contains_key(&pid) {
            return;
        }
        if self.watched.len() >= MAX_WATCHED {
            self.watched.retain(|_, w| *w == Watched::Running);
        }
        let w = if self.watched.len() >= MAX_WATCHED {
            Watched::Unwatchable
        } else {
            self.start(pid)
        };
        self.watched.insert(pid, w);
    }

    fn alive_at(&mut self, pid: u32, at_ns: u64) -> bool {
        self.watch(pid);
        match self.watched.get(&pid) {
            Some(Watched::Exited(by)) => at_ns < *by,
            Some(Watched::Unwatchable) => std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| !stat.contains(") Z ")),
            _ => true,
        }
    }
}

/// glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), after
/// which snapshot lists and table resizes are carved from the heap, and their freed pages stay
/// resident. A fixed threshold keeps every block of 1 MiB or more in its own mapping: returned
/// to the kernel when freed, and resident only as far as it is filled. And glibc gives each
/// thread that allocates an arena of its own (up to 8 per CPU): snapshots and `/proc` scans run
/// on blocking threads, whose arenas would each keep their freed pages; two arenas suffice for
/// the few threads the agent has.
pub fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hands freed heap pages back to the system (after the one-time BTF work at load).
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; no pointer is invalidated.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it where that is allowed.
pub fn raise_memlock_rlimit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to a properly initialised rlimit.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

/// An exporter keeps running on SIGHUP (it reloads its web config): until `serve` installs its
/// own handler, the signal is ignored instead of ending the process.
pub fn ignore_sighup() {
    // SAFETY: installs SIG_IGN for SIGHUP; no handler code runs, nothing is shared.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// Raises the soft open-file limit to the hard one (as Go does at start): an exporter's
/// connections are file descriptors. Returns the soft limit in force.
pub fn raise_nofile_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit the call fills.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: valid pointer to a properly initialised rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_watch_learns_when_a_process_exits() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut watch = PidWatch::default();
            let mut exits = watch.take_exits().unwrap();
            assert!(watch.alive_at(std::process::id(), u64::MAX));
            let mut child = std::process::Command::new("sleep")
                .arg("0.2")
                .spawn()
                .unwrap();
            let pid = child.id();
            watch.watch(pid);
            let before = monotonic_ns();
            assert!(watch.alive_at(pid, before));
            // Exited (a zombie until reaped): reported with a time after it still ran.
            let (exited, by) = exits.recv().await.unwrap();
            assert_eq!(exited, pid);
            watch.exited(pid, by);
            assert!(watch.alive_at(pid, before), "it ran then");
            assert!(!watch.alive_at(pid, by), "not by the time it was seen gone");
            child.wait().unwrap();
            // A pid first asked about after it is gone is gone at any time.
            let mut fresh = PidWatch::default();
            assert!(!fresh.alive_at(pid, 0));
        });
    }
}
