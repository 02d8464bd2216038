//! This process's capabilities: what loading the programs and each command need, a precise
//! "missing X" at start, and dropping all the others once the programs are attached.
//!
//! Capabilities belong to threads, and a thread starts with its creator's: the drop therefore
//! happens on the main thread before any runtime or other thread exists, and every thread
//! started later inherits the reduced sets. What each command keeps (measured on Linux 6.18
//! as a non-root user given exactly these capabilities; see the README's Security section):
//!
//! - loading and attaching: `CAP_BPF` and `CAP_PERFMON` (`CAP_SYS_ADMIN` also passes both
//!   kernel checks);
//! - reading the kernel's counters map afterwards: nothing since Linux 6.5; before, with
//!   `kernel.unprivileged_bpf_disabled` set, every `bpf()` call needs `CAP_BPF`, so it is
//!   kept when a probe with it lowered fails;
//! - INET_DIAG snapshots and /proc/net counters of the agent's own namespace: nothing;
//! - socket owners from other processes' `/proc/PID/fd` (serve's and doctor's findings):
//!   `CAP_DAC_READ_SEARCH` to list another user's, `CAP_SYS_PTRACE` to read the links;
//! - entering another network namespace (`doctor --netns-path`): `CAP_SYS_ADMIN`.

use std::collections::HashSet;
use std::fmt::Write as _;

use caps::CapSet;
pub use caps::{Capability, CapsHashSet};

/// Loading and attaching the tracing programs: `bpf_capable()` and `perfmon_capable()`.
pub const LOAD: [Capability; 2] = [Capability::CAP_BPF, Capability::CAP_PERFMON];

/// A capability a command needs once it runs, and what for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub cap: Capability,
    /// Shown when it is missing.
    pub why: &'static str,
    /// What the command does without it (an optional need's warning).
    pub without: &'static str,
    /// Missing: an error (else a warning, and the command runs with less).
    pub required: bool,
}

/// Owner lookups in other processes' `/proc/PID/fd`: listing the directory (mode 0500, owned
/// by the process's user) needs `CAP_DAC_READ_SEARCH` unless the agent runs as that user;
/// reading each link (`ptrace_may_access(PTRACE_MODE_READ)`) needs `CAP_SYS_PTRACE` unless the
/// process is the agent's user's and has no capability the agent lacks (so even a root agent,
/// once it dropped its capabilities, needs it for root's other processes).
pub const OWNERS: [Need; 2] = [
    Need {
        cap: Capability::CAP_SYS_PTRACE,
        why: "owners of sockets no transition told are read from other processes' /proc/PID/fd links",
        without: "sockets opened before tcptrace started show owner unknown until a transition tells it",
        required: false,
    },
    Need {
        cap: Capability::CAP_DAC_READ_SEARCH,
        why: "owners of sockets no transition told are read from other users' /proc/PID/fd directories",
        without: "sockets opened before tcptrace started show owner unknown until a transition tells it",
        required: false,
    },
];

/// `setns(CLONE_NEWNET)` into another network namespace.
pub const ENTER_NETNS: Need = Need {
    cap: Capability::CAP_SYS_ADMIN,
    why: "entering another network namespace (setns) for its snapshots and counters",
    without: "only this namespace is snapshotted: other namespaces' socket gauges, findings and older owners are missing",
    required: true,
};

/// `CAP_BPF` as `CAP_BPF` prints.
pub fn name(cap: Capability) -> String {
    cap.to_string()
}

/// Names, sorted, comma-separated; `none` for an empty set.
pub fn names(set: &CapsHashSet) -> String {
    let mut v: Vec<String> = set.iter().map(|c| name(*c)).collect();
    v.sort();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// This thread's permitted set: what it may still raise. `None` when it cannot be read (then
/// nothing is checked in advance and the kernel decides).
pub fn permitted() -> Option<CapsHashSet> {
    caps::read(None, CapSet::Permitted).ok()
}

/// Why the programs cannot be loaded with `have`, naming exactly what is missing.
pub fn missing_for_load(have: &CapsHashSet) -> Option<String> {
    if have.contains(&Capability::CAP_SYS_ADMIN) {
        return None;
    }
    let missing: Vec<String> = LOAD
        .iter()
        .filter(|c| !have.contains(c))
        .map(|c| name(*c))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let mut msg = format!("missing {}", missing.join(" and "));
    let _ = write!(
        msg,
        ": loading and attaching the tracing programs needs CAP_BPF and CAP_PERFMON (run as root, or grant them: `setpriv --inh-caps +bpf,+perfmon --ambient-caps +bpf,+perfmon`, systemd `AmbientCapabilities=CAP_BPF CAP_PERFMON`)"
    );
    Some(msg)
}

/// `--capabilities.keep`: `none`, `all`, or names such as `cap_net_admin,CAP_SYSLOG`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Keep {
    #[default]
    None,
    All,
    Some(CapsHashSet),
}

impl std::str::FromStr for Keep {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("none") || s.is_empty() {
            return Ok(Self::None);
        }
        if s.eq_ignore_ascii_case("all") {
            return Ok(Self::All);
        }
        let mut set = HashSet::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let upper = part.to_ascii_uppercase();
            let full = if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            };
            let cap: Capability = full.parse().map_err(|_| {
                format!(
                    "`{part}` is not a capability name (e.g. cap_sys_ptrace; see capabilities(7))"
                )
            })?;
            set.insert(cap);
        }
        Ok(Self::Some(set))
    }
}

impl Keep {
    /// The capabilities to keep among `have`.
    pub fn within(&self, have: &CapsHashSet) -> CapsHashSet {
        match self {
            Self::None => CapsHashSet::new(),
            Self::All => have.clone(),
            Self::Some(set) => set.intersection(have).copied().collect(),
        }
    }

    /// Named capabilities this process does not have (kept would be a no-op).
    pub fn absent(&self, have: &CapsHashSet) -> CapsHashSet {
        match self {
            Self::Some(set) => set.difference(have).copied().collect(),
            _ => CapsHashSet::new(),
        }
    }
}

/// Lowers `caps` from this thread's effective set (they stay permitted), for a probe.
pub fn lower(caps: &[Capability]) -> Result<(), caps::errors::CapsError> {
    for cap in caps {
        caps::drop(None, CapSet::Effective, *cap)?;
    }
    Ok(())
}

/// Raises `caps` back into the effective set (they must still be permitted).
pub fn raise(caps: &[Capability]) -> Result<(), caps::errors::CapsError> {
    for cap in caps {
        caps::raise(None, CapSet::Effective, *cap)?;
    }
    Ok(())
}

/// Keeps exactly `keep` (within what is permitted) in this thread's effective and permitted
/// sets, and nothing inheritable or ambient: a program this process started would get none.
/// Irreversible: a dropped capability cannot be raised again.
pub fn drop_all_but(keep: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    let keep: CapsHashSet = keep.intersection(&permitted).copied().collect();
    // The kernel requires effective ⊆ permitted at every step: lower effective first.
    caps::set(None, CapSet::Effective, &keep)?;
    caps::clear(None, CapSet::Ambient)?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())?;
    caps::set(None, CapSet::Permitted, &keep)
}

/// Threads of this process (`Threads:` in /proc/self/status): a drop on the main thread covers
/// them all only while this is 1.
pub fn threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_threads(&status)
}

/// The `Threads:` count of a /proc status file.
pub fn parse_threads(status: &str) -> Option<usize> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_parses_names_all_and_none() {
        assert_eq!("none".parse::<Keep>().unwrap(), Keep::None);
        assert_eq!("ALL".parse::<Keep>().unwrap(), Keep::All);
        let Keep::Some(set) = "cap_sys_ptrace, SYSLOG,CAP_NET_ADMIN"
            .parse::<Keep>()
            .unwrap()
        else {
            panic!("a set");
        };
        assert_eq!(
            names(&set),
            "CAP_NET_ADMIN, CAP_SYSLOG, CAP_SYS_PTRACE".to_owned()
        );
        let err = "cap_bogus".parse::<Keep>().unwrap_err();
        assert!(err.contains("cap_bogus"), "{err}");
    }

    #[test]
    fn keep_is_bounded_by_what_the_process_has() {
        let have: CapsHashSet = [Capability::CAP_BPF, Capability::CAP_SYS_PTRACE].into();
        let keep: Keep = "cap_sys_ptrace,cap_net_admin".parse().unwrap();
        assert_eq!(keep.within(&have), [Capability::CAP_SYS_PTRACE].into());
        assert_eq!(keep.absent(&have), [Capability::CAP_NET_ADMIN].into());
        assert_eq!(Keep::All.within(&have), have);
        assert!(Keep::None.within(&have).is_empty());
    }

    #[test]
    fn load_names_exactly_what_is_missing() {
        let only_bpf: CapsHashSet = [Capability::CAP_BPF].into();
        let msg = missing_for_load(&only_bpf).unwrap();
        assert!(msg.starts_with("missing CAP_PERFMON:"), "{msg}");
        assert!(!msg.contains('\n'));
        let none = CapsHashSet::new();
        assert!(
            missing_for_load(&none)
                .unwrap()
                .starts_with("missing CAP_BPF and CAP_PERFMON:")
        );
        let both: CapsHashSet = LOAD.into();
        assert_eq!(missing_for_load(&both), None);
        let admin: CapsHashSet = [Capability::CAP_SYS_ADMIN].into();
        assert_eq!(missing_for_load(&admin), None);
    }

    #[test]
    fn threads_from_status() {
        assert_eq!(parse_threads("Name:\tx\nThreads:\t3\n"), Some(3));
        assert_eq!(parse_threads("Name:\tx\n"), None);
        assert!(threads().is_some());
    }
}
