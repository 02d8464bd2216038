//! The classic TCP state pathologies, recognised from INET_DIAG snapshots, a window of
//! transitions and the kernel's TCP counters, as findings with evidence and advice.
//!
//! Pure logic: `doctor` and `serve` feed a [`window::Window`] with transitions and snapshots
//! of a namespace ([`crate::host`] facts, [`crate::host::owners`] for owners) and get the
//! findings of each window. Each finding kind lives in its own file under [`checks`].

pub mod checks;
pub mod evidence;
pub mod window;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::diagnosis::evidence::{Ctx, OwnerLookup, secs};
use crate::diagnosis::window::{Observations, Scene};
use crate::host::owners::ProcessName;
use crate::model::tcp::TcpState;

/// How bad a finding is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, strum::IntoStaticStr, serde::Serialize,
)]
#[strum(serialize_all = "snake_case")]
#[serde(into = "&'static str")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// A problem to fix.
    Warning,
    /// Service at risk now.
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// `doctor`'s exit code for a run whose worst finding has this severity.
    pub fn exit_code(worst: Option<Self>) -> u8 {
        match worst {
            Some(Self::Critical) => 2,
            Some(Self::Warning) => 1,
            Some(Self::Info) | None => 0,
        }
    }
}

/// A finding's kind: a stable name in output, JSON and the `tcptrace_finding` metric.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, strum::IntoStaticStr, serde::Serialize,
)]
#[strum(serialize_all = "snake_case")]
#[serde(into = "&'static str")]
pub enum Kind {
    CloseWaitLeak,
    TimeWaitPressure,
    FinWait2Stuck,
    SynFlood,
    AcceptQueueOverflow,
    ConnectFailures,
    Resets,
    SimultaneousClose,
    LongIdleEstablished,
}

impl Kind {
    pub const ALL: [Self; 9] = [
        Self::CloseWaitLeak,
        Self::TimeWaitPressure,
        Self::FinWait2Stuck,
        Self::SynFlood,
        Self::AcceptQueueOverflow,
        Self::ConnectFailures,
        Self::Resets,
        Self::SimultaneousClose,
        Self::LongIdleEstablished,
    ];

    /// The stable name, e.g. `close_wait_leak`.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// What the finding means and how tcptrace decides it (`doctor --explain`).
    pub fn explain(self) -> &'static str {
        match self {
            Self::CloseWaitLeak => checks::close_wait_leak::EXPLAIN,
            Self::TimeWaitPressure => checks::time_wait_pressure::EXPLAIN,
            Self::FinWait2Stuck => checks::fin_wait2_stuck::EXPLAIN,
            Self::SynFlood => checks::syn_flood::EXPLAIN,
            Self::AcceptQueueOverflow => checks::accept_queue_overflow::EXPLAIN,
            Self::ConnectFailures => checks::connect_failures::EXPLAIN,
            Self::Resets => checks::resets::EXPLAIN,
            Self::SimultaneousClose => checks::simultaneous_close::EXPLAIN,
            Self::LongIdleEstablished => checks::long_idle_established::EXPLAIN,
        }
    }
}

/// What each TCP state means, for `doctor --explain`.
pub const STATES_EXPLAINED: &[(&str, &str)] = &[
    ("LISTEN", "a server socket waiting for connections"),
    (
        "SYN_SENT",
        "connect() sent a SYN; waiting for SYN-ACK (dwell: connect latency or time to fail)",
    ),
    (
        "SYN_RECV",
        "a SYN arrived and a SYN-ACK went out; waiting for the final ACK (half-open)",
    ),
    ("ESTABLISHED", "the connection is open"),
    (
        "FIN_WAIT1",
        "this side closed first and sent FIN; waiting for its ACK",
    ),
    (
        "FIN_WAIT2",
        "our FIN was acknowledged; waiting for the peer's FIN",
    ),
    (
        "CLOSE_WAIT",
        "the peer closed; waiting for this application to call close()",
    ),
    (
        "LAST_ACK",
        "this side closed after the peer; waiting for the ACK of our FIN",
    ),
    (
        "CLOSING",
        "both sides sent FIN at once; waiting for the ACK of ours",
    ),
    (
        "TIME_WAIT",
        "the side that closed first waits 60 s so late segments of this connection die out",
    ),
    ("CLOSE", "the socket is gone (or not yet connected)"),
];

/// Where each finding starts. Flags of `doctor` and `serve`.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub close_wait_age: Duration,
    /// `None`: the namespace's `tcp_fin_timeout`.
    pub fin_wait2_age: Option<Duration>,
    /// Percent of the ephemeral port range one client/server pair may hold in TIME_WAIT.
    pub time_wait_share: f64,
    pub syn_recv: u64,
    pub connect_failures: u64,
    pub resets: u64,
    pub idle_age: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            close_wait_age: Duration::from_secs(30),
            fin_wait2_age: None,
            time_wait_share: 30.0,
            syn_recv: 100,
            connect_failures: 10,
            resets: 10,
            idle_age: Duration::from_secs(3600),
        }
    }
}

/// Groups and examples each finding lists at most.
pub(crate) const TOP: usize = 5;

/// A value in a finding's evidence or a group's labels.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    Count(u64),
    /// Seconds, percentages, rates: the key names the unit.
    Number(f64),
    Text(String),
    /// An address: `KEY_addr` in JSON.
    Addr(IpAddr),
    /// An address and port: `KEY_addr` and `KEY_port` in JSON, `ip:port` in text.
    Endpoint(SocketAddr),
}

impl std::fmt::Display for Fact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Number(x) => write!(f, "{x:.1}"),
            Self::Text(t) => f.write_str(t),
            Self::Addr(a) => write!(f, "{a}"),
            Self::Endpoint(e) => write!(f, "{e}"),
        }
    }
}

/// Sockets or events that share an owner and endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub labels: Vec<(&'static str, Fact)>,
    pub count: u64,
    pub oldest_s: Option<f64>,
}

/// One socket as evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub state: TcpState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub age_s: Option<f64>,
    pub owner: Option<ProcessName>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub kind: Kind,
    /// The network namespace it is in (its inode), `None` when unknown.
    pub netns: Option<u32>,
    /// That namespace as a person names it (`host`, an `ip netns` name, `pid N (comm)`).
    pub namespace: Option<String>,
    pub severity: Severity,
    pub statement: String,
    /// Sockets or connections concerned (the value of the `tcptrace_finding` gauge).
    pub count: u64,
    pub facts: Vec<(&'static str, Fact)>,
    pub top: Vec<Group>,
    pub examples: Vec<Example>,
    pub settings: Vec<(&'static str, String)>,
    pub advice: Vec<String>,
}

/// Runs every check; findings come most severe first.
pub fn diagnose(
    scene: &Scene<'_>,
    obs: &Observations,
    owners: &mut dyn OwnerLookup,
    th: &Thresholds,
) -> Vec<Finding> {
    let window_s = secs(scene.taken_ns.saturating_sub(scene.baseline.taken_ns)).max(1e-3);
    let mut ctx = Ctx {
        scene,
        obs,
        owners,
        window_s,
    };
    let mut findings: Vec<Finding> = [
        checks::close_wait_leak::check(&mut ctx, th),
        checks::time_wait_pressure::check(&mut ctx, th),
        checks::fin_wait2_stuck::check(&mut ctx, th),
        checks::accept_queue_overflow::check(&mut ctx),
        checks::connect_failures::check(&mut ctx, th),
        checks::resets::check(&mut ctx, th),
        checks::simultaneous_close::check(&mut ctx),
        checks::long_idle_established::check(&mut ctx, th),
    ]
    .into_iter()
    .flatten()
    .chain(checks::syn_flood::check(&mut ctx, th))
    .collect();
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(b.count.cmp(&a.count)));
    findings
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::diagnosis::checks::support::*;
    use crate::diagnosis::evidence::human;

    #[test]
    fn healthy_snapshot_has_no_findings() {
        let sockets = [
            sock(1, TcpState::Listen, "0.0.0.0:80", "0.0.0.0:0"),
            sock(2, TcpState::Established, "10.0.0.1:80", "10.0.0.2:40000"),
            sock(3, TcpState::TimeWait, "10.0.0.1:80", "10.0.0.2:40001"),
            sock(4, TcpState::CloseWait, "10.0.0.1:80", "10.0.0.2:40002"),
        ];
        let obs = Observations::new(100);
        assert!(run(&sockets, &obs, &Thresholds::default()).is_empty());
    }

    #[test]
    fn event_findings_come_from_the_window_most_severe_and_largest_first() {
        let mut obs = window_of_ends();
        assert_eq!(obs.closed, 8);
        let f = run(&[], &obs, &low_thresholds());
        let kinds: Vec<_> = f.iter().map(|f| (f.kind, f.count)).collect();
        assert_eq!(
            kinds,
            [
                (Kind::ConnectFailures, 4),
                (Kind::Resets, 3),
                (Kind::SimultaneousClose, 1)
            ]
        );
        // A new window forgets the ends.
        obs.new_window();
        assert!(run(&[], &obs, &low_thresholds()).is_empty());
    }

    #[test]
    fn exit_codes_and_names_are_stable() {
        assert_eq!(Severity::exit_code(None), 0);
        assert_eq!(Severity::exit_code(Some(Severity::Warning)), 1);
        assert_eq!(Severity::exit_code(Some(Severity::Critical)), 2);
        let names: HashSet<_> = Kind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), Kind::ALL.len());
        assert_eq!(human(Duration::from_secs(3600)), "60 min");
        assert_eq!(human(Duration::from_millis(1500)), "1.5 s");
    }
}
