//! The classic TCP state pathologies, recognised from an INET_DIAG snapshot, a window of
//! transitions and the kernel's TCP counters, as findings with evidence and advice.
//!
//! Pure logic: `doctor` and `serve` gather the inputs ([`Observations`] from the pipeline, a
//! snapshot, [`crate::host`] facts, [`crate::procfs`] owners) and call [`diagnose`].

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::cgroup::CgroupInfo;
use crate::connections::{CloseTracker, ClosedBy, Connection, End, Role};
use crate::event::{Task, Transition};
use crate::filter::Filter;
use crate::host::{Settings, TcpCounters};
use crate::inet_diag::DiagSocket;
use crate::pipeline::{Flow, Sink};
use crate::procfs::{ProcessName, SocketOwners};
use crate::sockets::CookieMap;
use crate::state::TcpState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    CloseWaitLeak,
    TimeWaitPressure,
    FinWait2Stuck,
    SynFlood,
    ConnectFailures,
    Resets,
    SimultaneousClose,
    LongIdleEstablished,
}

impl Kind {
    pub const ALL: [Self; 8] = [
        Self::CloseWaitLeak,
        Self::TimeWaitPressure,
        Self::FinWait2Stuck,
        Self::SynFlood,
        Self::ConnectFailures,
        Self::Resets,
        Self::SimultaneousClose,
        Self::LongIdleEstablished,
    ];

    /// The stable name used in output, JSON and the `tcptrace_finding` metric.
    pub fn name(self) -> &'static str {
        match self {
            Self::CloseWaitLeak => "close_wait_leak",
            Self::TimeWaitPressure => "time_wait_pressure",
            Self::FinWait2Stuck => "fin_wait2_stuck",
            Self::SynFlood => "syn_flood",
            Self::ConnectFailures => "connect_failures",
            Self::Resets => "resets",
            Self::SimultaneousClose => "simultaneous_close",
            Self::LongIdleEstablished => "long_idle_established",
        }
    }

    /// What the finding means and how tcptrace decides it (`doctor --explain`).
    pub fn explain(self) -> &'static str {
        match self {
            Self::CloseWaitLeak => {
                "Sockets sit in CLOSE_WAIT longer than --close-wait-age. The peer sent its FIN; \
the kernel acknowledged it and now waits for this application to call close(). The kernel \
never times CLOSE_WAIT out, so a socket stays until the process closes it or exits: this is a \
bug in the application (a code path that stops using a connection without closing it), never \
a network or kernel problem. Age: the time since the socket entered CLOSE_WAIT when tcptrace \
saw it, else at least the time since the peer's last segment (tcp_info)."
            }
            Self::TimeWaitPressure => {
                "The side that closes first keeps each connection in TIME_WAIT for 60 s \
(TCP_TIMEWAIT_LEN; tcp_fin_timeout does not change it). A TIME_WAIT socket still occupies its \
four-tuple, so between one client address and one server ip:port at most \
ip_local_port_range ports can be in use at once: past that, connect() fails with \
EADDRNOTAVAIL. The finding reports, per client address and server endpoint, the share of the \
ephemeral range held in TIME_WAIT, which side closed first (the one holding TIME_WAIT), and the \
total against tcp_max_tw_buckets (beyond it the kernel destroys TIME_WAIT sockets early and \
counts TCPTimeWaitOverflow)."
            }
            Self::FinWait2Stuck => {
                "This side closed (or shut down) its sending direction, the peer acknowledged the \
FIN, and the peer never sent its own. An orphaned socket (closed by the application) is \
reaped after tcp_fin_timeout; a socket the application still holds after shutdown(SHUT_WR) \
waits in FIN_WAIT2 forever. Reported: held FIN_WAIT2 sockets older than --fin-wait2-age \
(default: tcp_fin_timeout)."
            }
            Self::SynFlood => {
                "Half-open connections (SYN received, SYN-ACK sent, final ACK never came) pile up \
on a listener: request sockets in SYN_RECV. Reported when a listener has at least --syn-recv \
of them or its SYN queue is full (as many as its backlog), or when the kernel sent SYN cookies \
or dropped SYNs for a full queue during the window. Many distinct source addresses point to a \
(possibly spoofed) flood; a few point to one client's trouble. With tcp_syncookies on, a full \
queue still answers every SYN with a cookie; with it off, SYNs are dropped. Sources are counted \
from the half-open sockets: SYNs answered with a cookie leave no socket, so they are counted \
(syncookies_sent) but not attributed."
            }
            Self::ConnectFailures => {
                "Outgoing connects that went SYN_SENT -> CLOSE during the window, at least \
--connect-failures of them. Refused: the peer answered the SYN with a RST (nothing listens, or \
a firewall rejects). Timed out: no answer at all until tcp_syn_retries ran out (a firewall \
dropping, a route or host down). Abandoned: the application gave up before the kernel did \
(non-blocking connect with its own timeout)."
            }
            Self::Resets => {
                "Connections that ended by a reset instead of the FIN exchange, at least --resets \
of them during the window. Aborted here: this host sent the RST (SO_LINGER with timeout 0, \
close() with unread data, a retransmission or keepalive give-up, ss -K). Reset by the peer: a \
RST arrived (the peer aborted, crashed or restarted, or a middlebox lost the connection)."
            }
            Self::SimultaneousClose => {
                "Both ends sent FIN at the same time (FIN_WAIT1 -> CLOSING): harmless, but both \
then hold TIME_WAIT. Informational."
            }
            Self::LongIdleEstablished => {
                "ESTABLISHED connections with no traffic for longer than --idle-age and no \
keepalive timer (SO_KEEPALIVE off, nothing in flight). If the peer vanished without FIN or RST \
(host crash, NAT or firewall state expired), such a socket stays ESTABLISHED forever: a ghost \
candidate. Idle pools look the same, hence informational."
            }
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
const TOP: usize = 5;
/// Connection ends kept per window for the event-derived findings.
const ENDED_CAP: usize = 65_536;

/// A value in a finding's evidence.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    Count(u64),
    /// Seconds, percentages, rates: the key names the unit.
    Number(f64),
    Text(String),
}

impl std::fmt::Display for Fact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Number(x) => write!(f, "{x:.1}"),
            Self::Text(t) => f.write_str(t),
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

/// A connection that ended in a way a finding may report.
#[derive(Debug, Clone, Copy)]
struct Ended {
    end: End,
    closed_by: ClosedBy,
    role: Role,
    local: SocketAddr,
    remote: SocketAddr,
    owner: Option<Task>,
}

/// What the transitions of a window told: the live connections (when each entered its state,
/// who owns it) and the connections that ended badly. A [`Sink`].
pub struct Observations {
    connections: CloseTracker,
    ended: Vec<Ended>,
    /// Transitions seen in this window.
    pub transitions: u64,
    /// Connections that closed in this window (every end).
    pub closed: u64,
    /// Ends beyond what one window keeps (still counted in `closed`).
    pub ended_overflow: u64,
}

impl Observations {
    pub fn new(capacity: usize) -> Self {
        Self {
            connections: CloseTracker::new(capacity),
            ended: Vec::new(),
            transitions: 0,
            closed: 0,
            ended_overflow: 0,
        }
    }

    /// Applies a transition; returns the connection it closed, if any.
    pub fn observe(&mut self, t: &Transition) -> Option<Connection> {
        self.transitions += 1;
        let closed = self.connections.apply(t);
        if let Some(c) = closed {
            self.closed += 1;
            let notable = c.closed_by == ClosedBy::Both
                || matches!(
                    c.end,
                    Some(
                        End::Refused
                            | End::Timeout
                            | End::HandshakeAborted
                            | End::Aborted
                            | End::RstReceived
                    )
                );
            if notable {
                if self.ended.len() < ENDED_CAP {
                    self.ended.push(Ended {
                        end: c.end.unwrap_or(End::Aborted),
                        closed_by: c.closed_by,
                        role: c.role,
                        local: SocketAddr::new(c.saddr, c.sport),
                        remote: SocketAddr::new(c.daddr, c.dport),
                        owner: c.owner,
                    });
                } else {
                    self.ended_overflow += 1;
                }
            }
        }
        closed
    }

    /// Connections dropped from the bounded table before they finished.
    pub fn evicted(&self) -> u64 {
        self.connections.evicted
    }

    /// Starts a new window: forgets ends and counts, keeps what is known of live sockets.
    pub fn new_window(&mut self) {
        self.ended.clear();
        self.transitions = 0;
        self.closed = 0;
        self.ended_overflow = 0;
    }

    /// The owner transitions reported for a live socket.
    pub fn owner_of(&self, cookie: u64) -> Option<ProcessName> {
        self.connections.live(cookie)?.owner.map(process)
    }

    /// When a live socket entered `state`, if a transition into it was seen.
    fn in_state_since(&self, cookie: u64, state: TcpState) -> Option<u64> {
        let c = self.connections.live(cookie)?;
        (c.state == state).then_some(c.state_since_ns)
    }
}

impl Sink for Observations {
    fn transition(&mut self, t: &Transition, _: Option<&CgroupInfo>) -> io::Result<Flow> {
        self.observe(t);
        Ok(Flow::Continue)
    }
}

fn process(t: Task) -> ProcessName {
    ProcessName {
        pid: t.pid,
        comm: t.comm.as_str().to_owned(),
    }
}

/// What a finding compares against from the start of the window: counters, and which
/// sockets were already in a state whose age matters.
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    pub taken_ns: u64,
    pub counters: TcpCounters,
    states: CookieMap<TcpState>,
}

impl Baseline {
    pub fn new(sockets: &[DiagSocket], taken_ns: u64, counters: TcpCounters) -> Self {
        let states = sockets
            .iter()
            .filter(|s| {
                matches!(
                    s.state,
                    TcpState::CloseWait | TcpState::FinWait2 | TcpState::SynRecv
                )
            })
            .map(|s| (s.cookie, s.state))
            .collect();
        Self {
            taken_ns,
            counters,
            states,
        }
    }
}

/// Everything [`diagnose`] looks at, as of the end of the window.
pub struct Scene<'a> {
    /// The snapshot taken at the end of the window.
    pub sockets: &'a [DiagSocket],
    pub taken_ns: u64,
    pub counters: &'a TcpCounters,
    pub settings: &'a Settings,
    pub baseline: &'a Baseline,
}

/// Who holds a socket, by inode, when no transition told.
pub trait OwnerLookup {
    fn owner(&mut self, inode: u32) -> Option<ProcessName>;
}

impl OwnerLookup for SocketOwners {
    fn owner(&mut self, inode: u32) -> Option<ProcessName> {
        self.get(inode).cloned()
    }
}

/// Scans `/proc` on the first question only: most evaluations need no owner at all.
#[derive(Default)]
pub struct LazyOwners(Option<SocketOwners>);

impl OwnerLookup for LazyOwners {
    fn owner(&mut self, inode: u32) -> Option<ProcessName> {
        if inode == 0 {
            return None;
        }
        self.0
            .get_or_insert_with(SocketOwners::scan)
            .get(inode)
            .cloned()
    }
}

struct Ctx<'a> {
    scene: &'a Scene<'a>,
    obs: &'a Observations,
    owners: &'a mut dyn OwnerLookup,
    window_s: f64,
}

impl Ctx<'_> {
    fn owner(&mut self, s: &DiagSocket) -> Option<ProcessName> {
        self.obs
            .owner_of(s.cookie)
            .or_else(|| self.owners.owner(s.inode))
    }

    /// Who a finished connection belonged to: its owner, else (server sockets whose listener
    /// predates tracing) the process holding the listener on its local port.
    fn end_owner(&mut self, e: &Ended) -> Option<ProcessName> {
        if let Some(t) = e.owner {
            return Some(process(t));
        }
        let port = e.local.port();
        let listener = *self
            .scene
            .sockets
            .iter()
            .find(|s| s.state == TcpState::Listen && s.sport == port)?;
        self.owner(&listener)
    }

    /// Lower bound of the time `s` has spent in its current state, when anything tells.
    fn age_ns(&self, s: &DiagSocket) -> Option<u64> {
        let taken = self.scene.taken_ns;
        let from_event = self
            .obs
            .in_state_since(s.cookie, s.state)
            .map(|since| taken.saturating_sub(since));
        let base = self.scene.baseline;
        let from_baseline = (base.states.get(&s.cookie) == Some(&s.state))
            .then(|| taken.saturating_sub(base.taken_ns));
        // In CLOSE_WAIT and FIN_WAIT2 the peer has said its last word (or acknowledged ours):
        // the time since its last ACK is at most the time in the state.
        let from_info = match s.state {
            TcpState::CloseWait | TcpState::FinWait2 => {
                s.idle.map(|i| u64::from(i.last_ack_recv_ms) * 1_000_000)
            }
            _ => None,
        };
        [from_event, from_baseline, from_info]
            .into_iter()
            .flatten()
            .max()
    }

    fn delta(&self, name: &str) -> u64 {
        self.scene
            .counters
            .delta(&self.scene.baseline.counters, name)
    }

    fn setting(&self, name: &str) -> String {
        self.scene
            .settings
            .get(name)
            .unwrap_or("unknown")
            .to_owned()
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn owner_labels(owner: &Option<ProcessName>) -> Vec<(&'static str, Fact)> {
    match owner {
        Some(p) => vec![
            ("pid", Fact::Count(u64::from(p.pid))),
            ("comm", Fact::Text(p.comm.clone())),
        ],
        None => vec![("pid", Fact::Text("unknown".into()))],
    }
}

fn owner_text(owner: &Option<ProcessName>) -> String {
    match owner {
        Some(p) => format!("pid {} ({})", p.pid, p.comm),
        None => "an unknown process".to_owned(),
    }
}

/// Owner, local and remote endpoint of a group.
type GroupKey = (Option<ProcessName>, String, String);

/// The label and the endpoint of an end that [`end_groups`] groups by.
type EndpointKey = (&'static str, fn(&Ended) -> SocketAddr);

/// Groups keyed by owner and endpoint strings, largest first.
#[derive(Default)]
struct Grouper {
    groups: BTreeMap<GroupKey, (u64, Option<u64>)>,
}

impl Grouper {
    fn add(&mut self, owner: Option<ProcessName>, local: String, remote: String, age: Option<u64>) {
        let g = self
            .groups
            .entry((owner, local, remote))
            .or_insert((0, None));
        g.0 += 1;
        g.1 = g.1.max(age);
    }

    fn top(self, local_key: &'static str, remote_key: &'static str) -> Vec<Group> {
        let mut v: Vec<_> = self.groups.into_iter().collect();
        v.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(b.1.1.cmp(&a.1.1)));
        v.into_iter()
            .take(TOP)
            .map(|((owner, local, remote), (count, oldest))| {
                let mut labels = owner_labels(&owner);
                if !local.is_empty() {
                    labels.push((local_key, Fact::Text(local)));
                }
                if !remote.is_empty() {
                    labels.push((remote_key, Fact::Text(remote)));
                }
                Group {
                    labels,
                    count,
                    oldest_s: oldest.map(secs),
                }
            })
            .collect()
    }
}

fn group_text(g: &Group) -> String {
    let mut out = String::new();
    let mut pid = None;
    let mut comm = None;
    for (k, v) in &g.labels {
        match *k {
            "pid" => pid = Some(v.to_string()),
            "comm" => comm = Some(v.to_string()),
            _ => {
                if !out.is_empty() {
                    out.push(' ');
                }
                let _ = write!(out, "{k} {v}");
            }
        }
    }
    match (pid, comm) {
        (Some(p), Some(c)) => format!("pid {p} ({c}) {out}"),
        _ => format!("unknown process {out}"),
    }
}

/// Groups sockets (oldest first, with their ages) by owner and local endpoint, and by remote
/// endpoint too when `by_remote`; the oldest few become examples. Also returns the largest
/// group in words.
fn socket_groups(
    ctx: &mut Ctx<'_>,
    sockets: &[(&DiagSocket, u64)],
    by_remote: bool,
) -> (Vec<Group>, Vec<Example>, String) {
    let mut groups = Grouper::default();
    let mut examples = Vec::new();
    for &(s, age) in sockets {
        let local = SocketAddr::new(s.saddr, s.sport);
        let remote = SocketAddr::new(s.daddr, s.dport);
        let owner = ctx.owner(s);
        if examples.len() < TOP {
            examples.push(Example {
                state: s.state,
                local,
                remote,
                age_s: Some(secs(age)),
                owner: owner.clone(),
            });
        }
        let remote = if by_remote {
            remote.to_string()
        } else {
            String::new()
        };
        groups.add(owner, local.to_string(), remote, Some(age));
    }
    let top = groups.top("local", "remote");
    let worst = top.first().map(group_text).unwrap_or_default();
    (top, examples, worst)
}

/// Sockets `keep` selects, aged at least `min_age_ns`, oldest first, with their ages; and how
/// many selected sockets had no known age.
fn aged<'s>(
    ctx: &Ctx<'_>,
    sockets: &'s [DiagSocket],
    keep: impl Fn(&DiagSocket) -> bool,
    min_age_ns: u64,
) -> (Vec<(&'s DiagSocket, u64)>, u64) {
    let mut unknown = 0;
    let mut v: Vec<_> = sockets
        .iter()
        .filter(|s| keep(s))
        .filter_map(|s| match ctx.age_ns(s) {
            Some(age) => (age >= min_age_ns).then_some((s, age)),
            None => {
                unknown += 1;
                None
            }
        })
        .collect();
    v.sort_by_key(|(_, age)| std::cmp::Reverse(*age));
    (v, unknown)
}

/// Keeps the snapshot sockets the filter speaks for. Owner filters judge a socket by its
/// owner, and sockets without one (TIME_WAIT, half-open) by their port's listener.
pub fn filter_sockets<'s>(
    filter: &Filter,
    sockets: &'s [DiagSocket],
    obs: &Observations,
    owners: &mut dyn OwnerLookup,
) -> Cow<'s, [DiagSocket]> {
    let by_socket = |s: &DiagSocket| {
        filter.matches_socket(s.family, s.saddr, s.sport, s.daddr, s.dport, s.state)
    };
    let by_owner = !(filter.pids.is_empty() && filter.comms.is_empty());
    // The common case keeps everything: no copy of a snapshot that may hold 100k sockets,
    // and a copy is sized exactly (collecting would double its way up).
    let kept = sockets.iter().filter(|s| by_socket(s)).count();
    if !by_owner && kept == sockets.len() {
        return Cow::Borrowed(sockets);
    }
    let mut copy = Vec::with_capacity(kept);
    copy.extend(sockets.iter().filter(|s| by_socket(s)).copied());
    let sockets = copy;
    if !by_owner {
        return Cow::Owned(sockets);
    }
    let owner_ok = |s: &DiagSocket, owners: &mut dyn OwnerLookup| {
        obs.owner_of(s.cookie)
            .or_else(|| owners.owner(s.inode))
            .is_some_and(|p| {
                (filter.pids.is_empty() || filter.pids.contains(&p.pid))
                    && (filter.comms.is_empty()
                        || filter.comms.iter().any(|c| p.comm.starts_with(c.as_str())))
            })
    };
    let listener_ports: HashSet<u16> = sockets
        .iter()
        .filter(|s| s.state == TcpState::Listen)
        .filter(|s| owner_ok(s, owners))
        .map(|s| s.sport)
        .collect();
    Cow::Owned(
        sockets
            .into_iter()
            .filter(|s| owner_ok(s, owners) || (s.inode == 0 && listener_ports.contains(&s.sport)))
            .collect(),
    )
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
        close_wait_leak(&mut ctx, th),
        time_wait_pressure(&mut ctx, th),
        fin_wait2_stuck(&mut ctx, th),
        connect_failures(&mut ctx, th),
        resets(&mut ctx, th),
        simultaneous_close(&mut ctx),
        long_idle_established(&mut ctx, th),
    ]
    .into_iter()
    .flatten()
    .chain(syn_flood(&mut ctx, th))
    .collect();
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(b.count.cmp(&a.count)));
    findings
}

fn close_wait_leak(ctx: &mut Ctx<'_>, th: &Thresholds) -> Option<Finding> {
    let min = th.close_wait_age.as_nanos() as u64;
    let sockets = ctx.scene.sockets;
    let total = sockets
        .iter()
        .filter(|s| s.state == TcpState::CloseWait)
        .count() as u64;
    let (old, unknown) = aged(ctx, sockets, |s| s.state == TcpState::CloseWait, min);
    if old.is_empty() {
        return None;
    }
    let (top, examples, worst) = socket_groups(ctx, &old, false);
    let n = old.len() as u64;
    let oldest = secs(old[0].1);
    let severity = if n >= 100 {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Some(Finding {
        kind: Kind::CloseWaitLeak,
        severity,
        statement: format!(
            "{n} socket(s) in CLOSE_WAIT for over {}: the peer closed and the application never \
called close() (a leak in the application); most: {worst}",
            human(th.close_wait_age)
        ),
        count: n,
        facts: vec![
            ("close_wait_total", Fact::Count(total)),
            ("over_threshold", Fact::Count(n)),
            ("age_unknown", Fact::Count(unknown)),
            ("oldest_s", Fact::Number(oldest)),
            ("threshold_s", Fact::Number(th.close_wait_age.as_secs_f64())),
        ],
        top,
        examples,
        settings: Vec::new(),
        advice: vec![
            "Fix the application: every path that stops using a connection (errors, timeouts, \
early returns, a response body never read to the end) must close() it."
                .into(),
            "The kernel never times CLOSE_WAIT out: these sockets (and their file descriptors) \
stay until the process closes them or exits; restarting it only hides the leak."
                .into(),
        ],
    })
}

fn time_wait_pressure(ctx: &mut Ctx<'_>, th: &Thresholds) -> Option<Finding> {
    let sockets = ctx.scene.sockets;
    let settings = ctx.scene.settings;
    // Timewait sockets: TIME_WAIT proper and the orphaned FIN_WAIT2 substate (timer 3).
    let tw: Vec<&DiagSocket> = sockets
        .iter()
        .filter(|s| s.state == TcpState::TimeWait || s.timer == 3)
        .collect();
    if tw.is_empty() {
        return None;
    }
    let listening: HashSet<u16> = sockets
        .iter()
        .filter(|s| s.state == TcpState::Listen)
        .map(|s| s.sport)
        .collect();
    let range = settings.ephemeral_ports().unwrap_or(28_232).max(1);
    // (client address, server endpoint, server closed first) -> count
    let mut pairs: BTreeMap<(IpAddr, SocketAddr, bool), u64> = BTreeMap::new();
    for s in &tw {
        let key = if listening.contains(&s.sport) {
            (s.daddr, SocketAddr::new(s.saddr, s.sport), true)
        } else {
            (s.saddr, SocketAddr::new(s.daddr, s.dport), false)
        };
        *pairs.entry(key).or_default() += 1;
    }
    let mut pairs: Vec<_> = pairs.into_iter().collect();
    pairs.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let ((client, server, server_first), worst) = pairs[0];
    let share = worst as f64 * 100.0 / range as f64;
    let total = tw.len() as u64;
    let max_tw = settings.number("net.ipv4.tcp_max_tw_buckets");
    let bucket_pct = max_tw.map(|m| total as f64 * 100.0 / m.max(1) as f64);
    let overflow = ctx.delta("TcpExt.TCPTimeWaitOverflow");
    let severity = if share >= 90.0 || overflow > 0 || bucket_pct.is_some_and(|p| p >= 90.0) {
        Severity::Critical
    } else if share >= th.time_wait_share || bucket_pct.is_some_and(|p| p >= 50.0) {
        Severity::Warning
    } else {
        return None;
    };
    let closer = if server_first { "server" } else { "client" };
    let top = pairs
        .iter()
        .take(TOP)
        .map(|((client, server, server_first), n)| Group {
            labels: vec![
                ("client", Fact::Text(client.to_string())),
                ("server", Fact::Text(server.to_string())),
                (
                    "closed_first",
                    Fact::Text(if *server_first { "server" } else { "client" }.into()),
                ),
                (
                    "port_range_pct",
                    Fact::Number(*n as f64 * 100.0 / range as f64),
                ),
            ],
            count: *n,
            oldest_s: None,
        })
        .collect();
    let mut advice = Vec::new();
    if server_first {
        advice.push(format!(
            "The server at {server} closes first, so TIME_WAIT lands on its side: let clients \
close (HTTP keep-alive, a client idle timeout shorter than the server's) or reuse connections."
        ));
    } else {
        advice.push(format!(
            "This host opens and closes a connection per request to {server}: reuse connections \
(keep-alive, a connection pool)."
        ));
        advice.push(
            "net.ipv4.tcp_tw_reuse=1 lets new outgoing connections take over TIME_WAIT ports \
safely (needs TCP timestamps); tcp_tw_recycle no longer exists (removed in Linux 4.12)."
                .into(),
        );
    }
    advice.push(format!(
        "Widening net.ipv4.ip_local_port_range ({}) gives each client/server pair more ports.",
        ctx.setting("net.ipv4.ip_local_port_range")
    ));
    let mut facts = vec![
        ("time_wait_total", Fact::Count(total)),
        ("worst_pair", Fact::Count(worst)),
        ("worst_pair_port_range_pct", Fact::Number(share)),
        ("ephemeral_ports", Fact::Count(range)),
        ("tw_overflow", Fact::Count(overflow)),
    ];
    if let Some(p) = bucket_pct {
        facts.push(("max_tw_buckets_pct", Fact::Number(p)));
    }
    Some(Finding {
        kind: Kind::TimeWaitPressure,
        severity,
        statement: format!(
            "{total} socket(s) in TIME_WAIT; {worst} between client {client} and server {server} \
hold {share:.1}% of the {range}-port ephemeral range (the {closer} closes first)"
        ),
        count: total,
        facts,
        top,
        examples: Vec::new(),
        settings: settings.pick(&[
            "net.ipv4.tcp_tw_reuse",
            "net.ipv4.tcp_max_tw_buckets",
            "net.ipv4.ip_local_port_range",
        ]),
        advice,
    })
}

fn fin_wait2_stuck(ctx: &mut Ctx<'_>, th: &Thresholds) -> Option<Finding> {
    let fin_timeout = ctx
        .scene
        .settings
        .number("net.ipv4.tcp_fin_timeout")
        .unwrap_or(60);
    let threshold = th.fin_wait2_age.unwrap_or(Duration::from_secs(fin_timeout));
    let sockets = ctx.scene.sockets;
    // Held sockets only: orphans are timewait sockets (timer 3) that tcp_fin_timeout reaps.
    let held = |s: &DiagSocket| s.state == TcpState::FinWait2 && s.timer != 3;
    let orphans = sockets
        .iter()
        .filter(|s| s.state == TcpState::FinWait2 && s.timer == 3)
        .count() as u64;
    let (old, unknown) = aged(ctx, sockets, held, threshold.as_nanos() as u64);
    if old.is_empty() {
        return None;
    }
    let n = old.len() as u64;
    let (top, examples, worst) = socket_groups(ctx, &old, true);
    Some(Finding {
        kind: Kind::FinWait2Stuck,
        severity: Severity::Warning,
        statement: format!(
            "{n} socket(s) half-closed and waiting in FIN_WAIT2 for over {}: the peer never sent \
its FIN and the application still holds them; most: {worst}",
            human(threshold)
        ),
        count: n,
        facts: vec![
            ("over_threshold", Fact::Count(n)),
            ("age_unknown", Fact::Count(unknown)),
            ("oldest_s", Fact::Number(secs(old[0].1))),
            ("orphaned_fin_wait2", Fact::Count(orphans)),
            ("threshold_s", Fact::Number(threshold.as_secs_f64())),
        ],
        top,
        examples,
        settings: ctx.scene.settings.pick(&["net.ipv4.tcp_fin_timeout"]),
        advice: vec![
            format!(
                "tcp_fin_timeout ({fin_timeout} s) reaps only orphaned sockets; a socket the \
application keeps after shutdown(SHUT_WR) waits for the peer's FIN forever: give the \
application a read timeout and close() it."
            ),
            "On the peer, the matching socket sits in CLOSE_WAIT: the peer application never \
closes its side (see close_wait_leak there)."
                .into(),
        ],
    })
}

fn syn_flood(ctx: &mut Ctx<'_>, th: &Thresholds) -> Vec<Finding> {
    let sockets = ctx.scene.sockets;
    let cookies_sent = ctx.delta("TcpExt.SyncookiesSent");
    let queue_full_drops = ctx.delta("TcpExt.TCPReqQFullDrop");
    let listen_drops = ctx.delta("TcpExt.ListenDrops");
    let listen_overflows = ctx.delta("TcpExt.ListenOverflows");
    let syncookies = ctx.setting("net.ipv4.tcp_syncookies");
    let mut by_port: BTreeMap<u16, Vec<&DiagSocket>> = BTreeMap::new();
    for s in sockets.iter().filter(|s| s.state == TcpState::SynRecv) {
        by_port.entry(s.sport).or_default().push(s);
    }
    let mut findings = Vec::new();
    let settings = ctx.scene.settings.pick(&[
        "net.ipv4.tcp_syncookies",
        "net.ipv4.tcp_max_syn_backlog",
        "net.core.somaxconn",
        "net.ipv4.tcp_synack_retries",
    ]);
    let advice = |syncookies: &str| {
        let mut a = Vec::new();
        if syncookies == "0" {
            a.push(
                "Turn SYN cookies on (net.ipv4.tcp_syncookies=1): with them off, a full SYN queue \
drops legitimate clients' SYNs."
                    .to_owned(),
            );
        }
        a.push(
            "Raise the listen backlog (the application's listen() argument, capped by \
net.core.somaxconn) and net.ipv4.tcp_max_syn_backlog if legitimate bursts fill the queue."
                .to_owned(),
        );
        a.push(
            "Lower net.ipv4.tcp_synack_retries so half-open entries expire sooner; many distinct \
sources with no final ACK are typical of spoofed floods: rate-limit or filter SYNs upstream."
                .to_owned(),
        );
        a
    };
    for (port, half_open) in by_port {
        let listener = sockets
            .iter()
            .find(|s| s.state == TcpState::Listen && s.sport == port);
        let backlog = listener.map_or(0, |l| u64::from(l.wqueue));
        let n = half_open.len() as u64;
        let full = backlog > 0 && n >= backlog;
        if n < th.syn_recv && !full {
            continue;
        }
        let sources: HashSet<IpAddr> = half_open.iter().map(|s| s.daddr).collect();
        let new = half_open
            .iter()
            .filter(|s| !ctx.scene.baseline.states.contains_key(&s.cookie))
            .count() as u64;
        let rate = (new + cookies_sent) as f64 / ctx.window_s;
        let owner = listener.and_then(|l| ctx.owner(l));
        let severity = if full || queue_full_drops > 0 {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let mut labels = owner_labels(&owner);
        labels.push(("port", Fact::Count(u64::from(port))));
        labels.push(("sources", Fact::Count(sources.len() as u64)));
        labels.push(("backlog", Fact::Count(backlog)));
        let examples = half_open
            .iter()
            .take(TOP)
            .map(|s| Example {
                state: s.state,
                local: SocketAddr::new(s.saddr, s.sport),
                remote: SocketAddr::new(s.daddr, s.dport),
                age_s: None,
                owner: None,
            })
            .collect();
        findings.push(Finding {
            kind: Kind::SynFlood,
            severity,
            statement: format!(
                "{n} half-open connection(s) on port {port} ({}) from {} distinct address(es); \
SYN queue {n}/{backlog}{}; {cookies_sent} SYN cookie(s) sent in {:.1} s",
                owner_text(&owner),
                sources.len(),
                if full { " (full)" } else { "" },
                ctx.window_s,
            ),
            count: n,
            facts: vec![
                ("half_open", Fact::Count(n)),
                ("distinct_sources", Fact::Count(sources.len() as u64)),
                ("new_in_window", Fact::Count(new)),
                ("syn_rate_per_s", Fact::Number(rate)),
                ("listen_backlog", Fact::Count(backlog)),
                (
                    "accept_queue",
                    Fact::Count(listener.map_or(0, |l| u64::from(l.rqueue))),
                ),
                ("syncookies_sent", Fact::Count(cookies_sent)),
                ("syn_queue_full_drops", Fact::Count(queue_full_drops)),
                ("listen_overflows", Fact::Count(listen_overflows)),
                ("listen_drops", Fact::Count(listen_drops)),
            ],
            top: vec![Group {
                labels,
                count: n,
                oldest_s: None,
            }],
            examples,
            settings: settings.clone(),
            advice: advice(&syncookies),
        });
    }
    if findings.is_empty() && (cookies_sent > 0 || queue_full_drops > 0) {
        findings.push(Finding {
            kind: Kind::SynFlood,
            severity: if queue_full_drops > 0 {
                Severity::Critical
            } else {
                Severity::Warning
            },
            statement: format!(
                "a SYN queue overflowed during the {:.1} s window: {cookies_sent} SYN cookie(s) \
sent, {queue_full_drops} SYN(s) dropped for a full queue (no half-open sockets left to name \
the listener)",
                ctx.window_s
            ),
            count: cookies_sent + queue_full_drops,
            facts: vec![
                ("syncookies_sent", Fact::Count(cookies_sent)),
                ("syn_queue_full_drops", Fact::Count(queue_full_drops)),
                ("listen_overflows", Fact::Count(listen_overflows)),
                ("listen_drops", Fact::Count(listen_drops)),
            ],
            top: Vec::new(),
            examples: Vec::new(),
            settings,
            advice: advice(&syncookies),
        });
    }
    findings
}

/// Groups window ends by owner and, when `endpoint` is given, one endpoint; largest first.
fn end_groups<'e>(
    ctx: &mut Ctx<'_>,
    ends: impl Iterator<Item = &'e Ended>,
    endpoint: Option<EndpointKey>,
) -> (Vec<Group>, String) {
    let mut g = Grouper::default();
    for e in ends {
        let place = endpoint.map_or_else(String::new, |(_, f)| f(e).to_string());
        g.add(ctx.end_owner(e), place, String::new(), None);
    }
    let top = g.top(endpoint.map_or("", |(key, _)| key), "");
    let worst = top.first().map(group_text).unwrap_or_default();
    (top, worst)
}

fn connect_failures(ctx: &mut Ctx<'_>, th: &Thresholds) -> Option<Finding> {
    let obs = ctx.obs;
    let failed: Vec<&Ended> = obs
        .ended
        .iter()
        .filter(|e| {
            e.role == Role::Client
                && matches!(e.end, End::Refused | End::Timeout | End::HandshakeAborted)
        })
        .collect();
    let count = |end: End| failed.iter().filter(|e| e.end == end).count() as u64;
    let (refused, timeout, abandoned) = (
        count(End::Refused),
        count(End::Timeout),
        count(End::HandshakeAborted),
    );
    let n = failed.len() as u64;
    if n == 0 || n < th.connect_failures {
        return None;
    }
    // Per destination: how many of each kind.
    let mut dest: BTreeMap<SocketAddr, [u64; 3]> = BTreeMap::new();
    for e in &failed {
        let c = dest.entry(e.remote).or_default();
        match e.end {
            End::Refused => c[0] += 1,
            End::Timeout => c[1] += 1,
            _ => c[2] += 1,
        }
    }
    let mut dest: Vec<_> = dest.into_iter().collect();
    dest.sort_by_key(|(_, c)| std::cmp::Reverse(c.iter().sum::<u64>()));
    let (by_owner, _) = end_groups(ctx, failed.iter().copied(), None);
    let mut top: Vec<Group> = dest
        .iter()
        .take(TOP)
        .map(|(addr, c)| Group {
            labels: vec![
                ("destination", Fact::Text(addr.to_string())),
                ("refused", Fact::Count(c[0])),
                ("timed_out", Fact::Count(c[1])),
                ("abandoned", Fact::Count(c[2])),
            ],
            count: c.iter().sum(),
            oldest_s: None,
        })
        .collect();
    top.extend(by_owner);
    let (worst_dest, worst_n) = (dest[0].0, dest[0].1.iter().sum::<u64>());
    let mut advice = Vec::new();
    if refused > 0 {
        advice.push(
            "Refused: nothing listens at the destination (service down, wrong port or address) \
or a firewall rejects; clients should back off instead of retrying at once."
                .into(),
        );
    }
    if timeout > 0 {
        advice.push(format!(
            "Timed out: SYNs get no answer (a firewall dropping, a route or host down); each \
attempt blocks until net.ipv4.tcp_syn_retries ({retries}) runs out{}, so give clients a \
connect timeout.",
            // SYN retransmissions back off from 1 s, doubling: 1 + 2 + ... + 2^retries.
            ctx.scene
                .settings
                .number("net.ipv4.tcp_syn_retries")
                .filter(|r| *r < 30)
                .map_or_else(String::new, |r| format!(" (about {} s)", (2u64 << r) - 1)),
            retries = ctx.setting("net.ipv4.tcp_syn_retries"),
        ));
    }
    if abandoned > 0 {
        advice.push(
            "Abandoned: the application gave up on a connect still in progress (its own connect \
timeout is shorter than the handshake took)."
                .into(),
        );
    }
    Some(Finding {
        kind: Kind::ConnectFailures,
        severity: Severity::Warning,
        statement: format!(
            "{n} outgoing connect(s) failed in {:.1} s: {refused} refused (RST), {timeout} timed \
out (no answer), {abandoned} abandoned; most to {worst_dest} ({worst_n})",
            ctx.window_s
        ),
        count: n,
        facts: vec![
            ("failed", Fact::Count(n)),
            ("refused", Fact::Count(refused)),
            ("timed_out", Fact::Count(timeout)),
            ("abandoned", Fact::Count(abandoned)),
            ("attempt_fails", Fact::Count(ctx.delta("Tcp.AttemptFails"))),
        ],
        top,
        examples: Vec::new(),
        settings: ctx.scene.settings.pick(&["net.ipv4.tcp_syn_retries"]),
        advice,
    })
}

fn resets(ctx: &mut Ctx<'_>, th: &Thresholds) -> Option<Finding> {
    let obs = ctx.obs;
    let sent: Vec<&Ended> = obs.ended.iter().filter(|e| e.end == End::Aborted).collect();
    let received: Vec<&Ended> = obs
        .ended
        .iter()
        .filter(|e| e.end == End::RstReceived)
        .collect();
    let n = (sent.len() + received.len()) as u64;
    if n == 0 || n < th.resets {
        return None;
    }
    let (mut top, worst_sent) = end_groups(
        ctx,
        sent.iter().copied(),
        Some(("aborted_local", |e| e.local)),
    );
    let (top_received, worst_received) = end_groups(
        ctx,
        received.iter().copied(),
        Some(("reset_by_peer", |e| e.remote)),
    );
    top.extend(top_received);
    let mut most = Vec::new();
    if !sent.is_empty() {
        most.push(format!("aborts by {worst_sent}"));
    }
    if !received.is_empty() {
        most.push(format!("resets to {worst_received}"));
    }
    Some(Finding {
        kind: Kind::Resets,
        severity: Severity::Warning,
        statement: format!(
            "{n} connection(s) ended by a reset in {:.1} s: {} aborted here (RST sent), {} reset \
by the peer; most: {}",
            ctx.window_s,
            sent.len(),
            received.len(),
            most.join("; ")
        ),
        count: n,
        facts: vec![
            ("aborted_here", Fact::Count(sent.len() as u64)),
            ("reset_by_peer", Fact::Count(received.len() as u64)),
            ("out_rsts", Fact::Count(ctx.delta("Tcp.OutRsts"))),
            ("estab_resets", Fact::Count(ctx.delta("Tcp.EstabResets"))),
            (
                "abort_on_close",
                Fact::Count(ctx.delta("TcpExt.TCPAbortOnClose")),
            ),
            (
                "abort_on_data",
                Fact::Count(ctx.delta("TcpExt.TCPAbortOnData")),
            ),
            (
                "abort_on_linger",
                Fact::Count(ctx.delta("TcpExt.TCPAbortOnLinger")),
            ),
            (
                "abort_on_timeout",
                Fact::Count(ctx.delta("TcpExt.TCPAbortOnTimeout")),
            ),
        ],
        top,
        examples: Vec::new(),
        settings: Vec::new(),
        advice: vec![
            "Aborted here: SO_LINGER with a 0 timeout (counted in TCPAbortOnData), close() with \
unread data (TCPAbortOnClose), or a retransmission/keepalive give-up (TCPAbortOnTimeout); fix \
the application or the path accordingly."
                .into(),
            "Reset by the peer: the peer aborted, crashed or restarted, or a middlebox (NAT, \
load balancer, firewall) lost the connection's state."
                .into(),
        ],
    })
}

fn simultaneous_close(ctx: &mut Ctx<'_>) -> Option<Finding> {
    let obs = ctx.obs;
    let both: Vec<&Ended> = obs
        .ended
        .iter()
        .filter(|e| e.closed_by == ClosedBy::Both)
        .collect();
    if both.is_empty() {
        return None;
    }
    let n = both.len() as u64;
    let (top, worst) = end_groups(ctx, both.iter().copied(), Some(("remote", |e| e.remote)));
    Some(Finding {
        kind: Kind::SimultaneousClose,
        severity: Severity::Info,
        statement: format!(
            "{n} connection(s) closed by both ends at once (FIN_WAIT1 -> CLOSING); both ends \
then hold TIME_WAIT; most: {worst}"
        ),
        count: n,
        facts: vec![("simultaneous_closes", Fact::Count(n))],
        top,
        examples: Vec::new(),
        settings: Vec::new(),
        advice: vec![
            "Harmless. If frequent, both ends likely use the same idle timeout: make one side \
close first."
                .into(),
        ],
    })
}

fn long_idle_established(ctx: &mut Ctx<'_>, th: &Thresholds) -> Option<Finding> {
    let min_ms = th.idle_age.as_millis() as u64;
    let mut idle: Vec<(&DiagSocket, u64)> = ctx
        .scene
        .sockets
        .iter()
        .filter(|s| s.state == TcpState::Established && s.timer == 0)
        .filter_map(|s| {
            let ms = u64::from(s.idle?.idle_ms());
            (ms >= min_ms).then_some((s, ms * 1_000_000))
        })
        .collect();
    if idle.is_empty() {
        return None;
    }
    idle.sort_by_key(|(_, ns)| std::cmp::Reverse(*ns));
    let n = idle.len() as u64;
    let (top, examples, worst) = socket_groups(ctx, &idle, true);
    Some(Finding {
        kind: Kind::LongIdleEstablished,
        severity: Severity::Info,
        statement: format!(
            "{n} ESTABLISHED connection(s) idle for over {} with keepalive off: if the peer is \
gone they stay forever (ghost candidates); most: {worst}",
            human(th.idle_age)
        ),
        count: n,
        facts: vec![
            ("idle_without_keepalive", Fact::Count(n)),
            ("longest_idle_s", Fact::Number(secs(idle[0].1))),
            ("threshold_s", Fact::Number(th.idle_age.as_secs_f64())),
        ],
        top,
        examples,
        settings: ctx.scene.settings.pick(&[
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_keepalive_intvl",
            "net.ipv4.tcp_keepalive_probes",
        ]),
        advice: vec![
            "Enable SO_KEEPALIVE on long-lived connections (the kernel probes after \
net.ipv4.tcp_keepalive_time idle seconds) or give the application an idle timeout."
                .into(),
        ],
    })
}

/// `30 s`, `1.5 s`, `2 min`: a threshold for a sentence.
pub fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 120.0 && s % 60.0 == 0.0 {
        format!("{} min", s / 60.0)
    } else if s.fract() == 0.0 {
        format!("{s} s")
    } else {
        format!("{s:.1} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Family;
    use crate::event::tests::raw_v4;
    use crate::inet_diag::Idle;

    const S: u64 = 1_000_000_000;

    fn sock(cookie: u64, state: TcpState, local: &str, remote: &str) -> DiagSocket {
        let l: SocketAddr = local.parse().unwrap();
        let r: SocketAddr = remote.parse().unwrap();
        DiagSocket {
            cookie,
            state,
            family: Family::Ipv4,
            saddr: l.ip(),
            sport: l.port(),
            daddr: r.ip(),
            dport: r.port(),
            timer: if state == TcpState::TimeWait { 3 } else { 0 },
            expires_ms: 0,
            uid: 0,
            inode: cookie as u32,
            rqueue: 0,
            wqueue: 0,
            idle: None,
        }
    }

    /// tcp_info idle times: last data sent, last data received, last ACK received (ms).
    fn idle(sent: u32, recv: u32, ack: u32) -> Option<Idle> {
        Some(Idle {
            last_data_sent_ms: sent,
            last_data_recv_ms: recv,
            last_ack_recv_ms: ack,
        })
    }

    fn settings() -> Settings {
        Settings::from_pairs(&[
            ("net.ipv4.ip_local_port_range", "40000 40999"),
            ("net.ipv4.tcp_fin_timeout", "60"),
            ("net.ipv4.tcp_max_tw_buckets", "100000"),
            ("net.ipv4.tcp_syncookies", "1"),
        ])
    }

    fn run(sockets: &[DiagSocket], obs: &Observations, th: &Thresholds) -> Vec<Finding> {
        run_with(
            sockets,
            obs,
            th,
            &Baseline::default(),
            &TcpCounters::default(),
        )
    }

    fn run_with(
        sockets: &[DiagSocket],
        obs: &Observations,
        th: &Thresholds,
        baseline: &Baseline,
        counters: &TcpCounters,
    ) -> Vec<Finding> {
        let settings = settings();
        let scene = Scene {
            sockets,
            taken_ns: 100 * S,
            counters,
            settings: &settings,
            baseline,
        };
        let mut owners = SocketOwners::from_pairs([(
            7,
            ProcessName {
                pid: 700,
                comm: "leaky".into(),
            },
        )]);
        diagnose(&scene, obs, &mut owners, th)
    }

    fn transition(cookie: u64, old: TcpState, new: TcpState, at: u64, rst: bool) -> Transition {
        let mut raw = raw_v4();
        raw.cookie = cookie;
        raw.oldstate = old.number();
        raw.newstate = new.number();
        raw.ts_ns = at;
        raw.in_old_ns = 1_000;
        if rst {
            raw.flags |= tcptrace_common::flags::RST_RECEIVED;
        }
        Transition::from_raw(&raw).unwrap()
    }

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
    fn close_wait_ages_come_from_tcp_info_baseline_or_events_and_name_the_owner() {
        let mut old = sock(7, TcpState::CloseWait, "10.0.0.1:8080", "10.0.0.2:40000");
        old.idle = idle(0, 45_000, 45_000);
        let young = sock(8, TcpState::CloseWait, "10.0.0.1:8080", "10.0.0.2:40001");
        let in_baseline = sock(9, TcpState::CloseWait, "10.0.0.1:9090", "10.0.0.2:40002");
        let from_event = sock(10, TcpState::CloseWait, "10.0.0.1:9090", "10.0.0.2:40003");
        let mut obs = Observations::new(100);
        obs.observe(&transition(
            10,
            TcpState::Established,
            TcpState::CloseWait,
            50 * S,
            false,
        ));
        let baseline = Baseline::new(&[in_baseline], 60 * S, TcpCounters::default());
        let f = run_with(
            &[old, young, in_baseline, from_event],
            &obs,
            &Thresholds::default(),
            &baseline,
            &TcpCounters::default(),
        );
        assert_eq!(f.len(), 1, "{f:#?}");
        let f = &f[0];
        assert_eq!(
            (f.kind, f.severity, f.count),
            (Kind::CloseWaitLeak, Severity::Warning, 3)
        );
        // Oldest first: 50 s (event), 45 s (tcp_info), 40 s (baseline).
        let ages: Vec<_> = f.examples.iter().map(|e| e.age_s.unwrap()).collect();
        assert_eq!(ages, [50.0, 45.0, 40.0]);
        assert_eq!(
            f.examples[0].owner.as_ref().unwrap().pid,
            1234,
            "event owner"
        );
        assert_eq!(
            f.examples[1].owner.as_ref().unwrap().comm,
            "leaky",
            "procfs owner"
        );
        assert!(
            f.statement
                .contains("3 socket(s) in CLOSE_WAIT for over 30 s"),
            "{}",
            f.statement
        );
        assert!(f.facts.contains(&("age_unknown", Fact::Count(1))));
    }

    #[test]
    fn owner_filters_judge_sockets_by_owner_and_ownerless_ones_by_their_listener() {
        let sockets = vec![
            sock(7, TcpState::Listen, "10.0.0.1:80", "0.0.0.0:0"), // held by pid 700
            sock(8, TcpState::CloseWait, "10.0.0.1:80", "10.0.0.2:40000"), // unknown owner
            {
                let mut tw = sock(9, TcpState::TimeWait, "10.0.0.1:80", "10.0.0.2:40001");
                tw.inode = 0;
                tw
            },
            {
                let mut tw = sock(10, TcpState::TimeWait, "10.0.0.1:443", "10.0.0.2:40002");
                tw.inode = 0;
                tw
            },
        ];
        let mut owners = SocketOwners::from_pairs([(
            7,
            ProcessName {
                pid: 700,
                comm: "leaky".into(),
            },
        )]);
        let obs = Observations::new(10);
        let kept = |filter: Filter, owners: &mut SocketOwners| -> Vec<u64> {
            filter_sockets(&filter, &sockets, &obs, owners)
                .iter()
                .map(|s| s.cookie)
                .collect()
        };
        let by_pid = Filter {
            pids: vec![700],
            ..Filter::default()
        };
        assert_eq!(kept(by_pid, &mut owners), [7, 9]);
        let by_port = Filter {
            lports: vec![443],
            ..Filter::default()
        };
        assert_eq!(kept(by_port, &mut owners), [10]);
        assert_eq!(kept(Filter::default(), &mut owners).len(), 4);
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        let mut s = sock(7, TcpState::CloseWait, "[::1]:8080", "[fe80::1]:40000");
        s.family = Family::Ipv6;
        s.idle = idle(0, 60_000, 60_000);
        let f = run(&[s], &Observations::new(10), &Thresholds::default());
        assert!(
            f[0].top[0]
                .labels
                .contains(&("local", Fact::Text("[::1]:8080".into())))
        );
        assert!(
            f[0].statement.ends_with("local [::1]:8080"),
            "{}",
            f[0].statement
        );
    }

    #[test]
    fn time_wait_share_of_the_port_range_per_pair_and_who_closed_first() {
        let mut sockets = vec![sock(1, TcpState::Listen, "10.0.0.1:80", "0.0.0.0:0")];
        // 400 server-side TIME_WAITs from one client: 40% of a 1000-port range.
        for i in 0..400u16 {
            sockets.push(sock(
                100 + u64::from(i),
                TcpState::TimeWait,
                "10.0.0.1:80",
                &format!("10.0.0.2:{}", 40_000 + i),
            ));
        }
        // 10 client-side ones elsewhere.
        for i in 0..10u16 {
            sockets.push(sock(
                1000 + u64::from(i),
                TcpState::TimeWait,
                &format!("10.0.0.1:{}", 40_000 + i),
                "10.0.0.9:5432",
            ));
        }
        let obs = Observations::new(100);
        let f = run(&sockets, &obs, &Thresholds::default());
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].kind, f[0].severity, f[0].count),
            (Kind::TimeWaitPressure, Severity::Warning, 410)
        );
        let g = &f[0].top[0];
        assert_eq!(g.count, 400);
        assert!(
            g.labels
                .contains(&("closed_first", Fact::Text("server".into())))
        );
        assert!(
            g.labels
                .contains(&("server", Fact::Text("10.0.0.1:80".into())))
        );
        assert!(
            f[0].statement.contains("40.0% of the 1000-port"),
            "{}",
            f[0].statement
        );
        // Below the share: nothing.
        let th = Thresholds {
            time_wait_share: 50.0,
            ..Thresholds::default()
        };
        assert!(run(&sockets, &obs, &th).is_empty());
    }

    #[test]
    fn held_fin_wait2_is_stuck_orphans_are_not() {
        let mut held = sock(7, TcpState::FinWait2, "10.0.0.1:40000", "10.0.0.2:80");
        held.idle = idle(90_000, 90_000, 90_000);
        let mut orphan = held;
        orphan.cookie = 8;
        orphan.timer = 3;
        let f = run(
            &[held, orphan],
            &Observations::new(10),
            &Thresholds::default(),
        );
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].kind, f[0].count), (Kind::FinWait2Stuck, 1));
        assert!(f[0].facts.contains(&("orphaned_fin_wait2", Fact::Count(1))));
        assert_eq!(f[0].examples[0].owner.as_ref().unwrap().pid, 700);
        let th = Thresholds {
            fin_wait2_age: Some(Duration::from_secs(120)),
            ..Thresholds::default()
        };
        assert!(run(&[held], &Observations::new(10), &th).is_empty());
    }

    #[test]
    fn syn_flood_on_a_full_queue_is_critical_with_sources_and_cookies() {
        let mut listener = sock(7, TcpState::Listen, "10.0.0.1:8080", "0.0.0.0:0");
        listener.wqueue = 16;
        let mut sockets = vec![listener];
        for i in 0..16u8 {
            let mut s = sock(
                100 + u64::from(i),
                TcpState::SynRecv,
                "10.0.0.1:8080",
                &format!("10.201.0.{i}:1234"),
            );
            s.inode = 0;
            sockets.push(s);
        }
        let mut before = TcpCounters::default();
        before.parse("TcpExt: SyncookiesSent\nTcpExt: 5\n");
        let mut after = TcpCounters::default();
        after.parse("TcpExt: SyncookiesSent\nTcpExt: 205\n");
        let baseline = Baseline::new(&[], 90 * S, before);
        let f = run_with(
            &sockets,
            &Observations::new(10),
            &Thresholds::default(),
            &baseline,
            &after,
        );
        assert_eq!(f.len(), 1, "{f:#?}");
        let f = &f[0];
        assert_eq!(
            (f.kind, f.severity, f.count),
            (Kind::SynFlood, Severity::Critical, 16)
        );
        assert!(f.facts.contains(&("distinct_sources", Fact::Count(16))));
        assert!(f.facts.contains(&("syncookies_sent", Fact::Count(200))));
        assert!(f.facts.contains(&("syn_rate_per_s", Fact::Number(21.6))));
        assert!(
            f.top[0]
                .labels
                .contains(&("comm", Fact::Text("leaky".into())))
        );
        // Half the queue, below --syn-recv: nothing; cookies alone still tell.
        let few = &sockets[..9];
        let flood = |after: &TcpCounters| {
            run_with(
                few,
                &Observations::new(10),
                &Thresholds::default(),
                &baseline,
                after,
            )
        };
        let f = flood(&after);
        assert_eq!(
            (f[0].kind, f[0].severity, f[0].count),
            (Kind::SynFlood, Severity::Warning, 200)
        );
        let f = run(few, &Observations::new(10), &Thresholds::default());
        assert!(f.is_empty());
        // SYNs dropped for a full queue are critical even with no listener to name.
        after.parse("TcpExt: TCPReqQFullDrop\nTcpExt: 3\n");
        let f = flood(&after);
        assert_eq!(
            (f[0].kind, f[0].severity, f[0].count),
            (Kind::SynFlood, Severity::Critical, 203)
        );
    }

    #[test]
    fn failures_resets_and_simultaneous_closes_come_from_the_window() {
        let mut obs = Observations::new(100);
        let mut at = S;
        let mut next = |obs: &mut Observations, cookie, path: &[(TcpState, TcpState, bool)]| {
            for (old, new, rst) in path {
                at += 10_000_000;
                obs.observe(&transition(cookie, *old, *new, at, *rst));
            }
        };
        use TcpState::*;
        for c in 0..3 {
            next(
                &mut obs,
                c,
                &[(Close, SynSent, false), (SynSent, Close, true)],
            );
        }
        // A SYN_SENT that lasted over a second without RST: timed out.
        obs.observe(&transition(10, Close, SynSent, 2 * S, false));
        let mut late = transition(10, SynSent, Close, 5 * S, false);
        late.in_old_ns = Some(3 * S);
        obs.observe(&late);
        for c in 20..22 {
            next(
                &mut obs,
                c,
                &[
                    (Close, SynSent, false),
                    (SynSent, Established, false),
                    (Established, Close, false),
                ],
            );
        }
        next(
            &mut obs,
            30,
            &[
                (Close, SynSent, false),
                (SynSent, Established, false),
                (Established, Close, true),
            ],
        );
        next(
            &mut obs,
            40,
            &[
                (Close, SynSent, false),
                (SynSent, Established, false),
                (Established, FinWait1, false),
                (FinWait1, Closing, false),
                (Closing, Close, false),
            ],
        );
        assert_eq!(obs.closed, 8);
        let th = Thresholds {
            connect_failures: 4,
            resets: 3,
            ..Thresholds::default()
        };
        let f = run(&[], &obs, &th);
        let kinds: Vec<_> = f.iter().map(|f| (f.kind, f.count)).collect();
        assert_eq!(
            kinds,
            [
                (Kind::ConnectFailures, 4),
                (Kind::Resets, 3),
                (Kind::SimultaneousClose, 1)
            ]
        );
        assert!(f[0].facts.contains(&("refused", Fact::Count(3))));
        assert!(f[0].facts.contains(&("timed_out", Fact::Count(1))));
        assert!(f[1].facts.contains(&("aborted_here", Fact::Count(2))));
        assert!(f[1].facts.contains(&("reset_by_peer", Fact::Count(1))));
        // Defaults want more before calling it a problem.
        let f = run(&[], &obs, &Thresholds::default());
        assert_eq!(
            f.iter().map(|f| f.kind).collect::<Vec<_>>(),
            [Kind::SimultaneousClose]
        );
        obs.new_window();
        assert!(run(&[], &obs, &th).is_empty());
    }

    #[test]
    fn idle_established_without_keepalive_is_a_ghost_candidate() {
        let mut ghost = sock(7, TcpState::Established, "10.0.0.1:40000", "10.0.0.2:80");
        ghost.idle = idle(4_000_000, 4_000_000, 4_000_000);
        let mut keepalive = ghost;
        keepalive.cookie = 8;
        keepalive.timer = 2;
        let f = run(
            &[ghost, keepalive],
            &Observations::new(10),
            &Thresholds::default(),
        );
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].kind, f[0].severity, f[0].count),
            (Kind::LongIdleEstablished, Severity::Info, 1)
        );
        assert_eq!(Severity::exit_code(Some(f[0].severity)), 0);
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
