//! Connection stories: from a socket's transitions to "who, how long to connect, how long it
//! lived, who closed first, how it ended, how long it sat in TIME_WAIT".
//!
//! Rules (what transitions can and cannot tell):
//! - role: `CLOSE -> SYN_SENT` = client, `LISTEN -> SYN_RECV` = server (child socket),
//!   `CLOSE -> LISTEN` = listener; a socket first seen later is a server when its local port
//!   is one a known listener of its namespace listens on ([`Listeners`]), else `unknown`. Its
//!   start, and so its lifetime, is unknown.
//! - closed first: `ESTABLISHED -> FIN_WAIT1` = local (this socket sent the first FIN),
//!   `ESTABLISHED -> CLOSE_WAIT` = remote, `FIN_WAIT1 -> CLOSING` = both (simultaneous).
//! - end:
//!   - `fin`: an orderly close (`LAST_ACK -> CLOSE`, or `FIN_WAIT2/CLOSING -> CLOSE`, where the
//!     kernel swaps in a timewait socket: TIME_WAIT follows).
//!   - `refused`: `SYN_SENT -> CLOSE` after a RST (exact: `tcp:tcp_receive_reset` marks it).
//!   - `timeout`: `SYN_SENT -> CLOSE` without a RST after at least 1 s (`TCP_TIMEOUT_INIT`,
//!     the first SYN retransmission), or `FIN_WAIT1 -> CLOSE` without a RST.
//!   - `ports_exhausted`: `SYN_SENT -> CLOSE` before a local port was chosen: connect() found
//!     no free local port for the destination (EADDRNOTAVAIL from `inet_hash_connect()`) and
//!     sent no SYN (the kernel counts no `ActiveOpens` either).
//!   - `handshake_aborted`: `SYN_SENT -> CLOSE` without a RST within 1 s (the application
//!     closed a pending connect), or `SYN_RECV -> CLOSE`/`SYN_RECV -> FIN_WAIT1`.
//!   - `rst_received`: any other `-> CLOSE` after a RST from the peer.
//!   - `aborted`: `ESTABLISHED/CLOSE_WAIT -> CLOSE` without a RST received: this end reset the
//!     connection (SO_LINGER 0, close() with unread data, `ss -K`) or gave up after
//!     retransmission/keepalive timeouts; transitions alone cannot tell these apart (the
//!     kernel sets CLOSE before it sends the abort's RST). Closed by: local.
//!   - a reset received with no FIN before it: closed by remote.
//! - a discarded child is no connection: a server child is cloned at the final ACK
//!   (`inet_csk_clone_lock()`, `LISTEN -> SYN_RECV`) and, without TCP Fast Open, reaches
//!   ESTABLISHED in the same softirq. One that goes `SYN_RECV -> CLOSE` within
//!   [`DISCARD_WINDOW_NS`] of its birth was discarded before anyone could accept it: it lost the
//!   race for its request socket (the final ACK and the next segment processed on two CPUs at
//!   once, both run `tcp_check_req()` and clone a child; the one whose
//!   `inet_ehash_nolisten()` finds the request taken is closed at once), or the kernel could
//!   not set it up (`__inet_inherit_port()` failed). Counted (`discarded`), not told
//!   as a story nor counted as a close. (The kernel's `PassiveOpens` counts it, as
//!   `LISTEN -> SYN_RECV` transitions do.)
//! - TIME_WAIT is inferred at `FIN_WAIT2/CLOSING -> CLOSE` and confirmed from INET_DIAG
//!   snapshots (a timewait socket keeps its cookie); when it leaves the snapshot the story
//!   ends with its TIME_WAIT dwell. Orphaned sockets become timewait sockets in the FIN_WAIT2
//!   substate, which the snapshot reports.

use std::collections::{BinaryHeap, HashMap, VecDeque};

use crate::model::CookieMap;
use crate::model::snapshot::{DiagSocket, Snapshot};
use crate::model::tcp::{Endpoints, SYN_RETRANSMIT_NS, TIME_WAIT_NS, TcpState};
use crate::model::transition::{Carried, Comm, Task, Transition};
/// How long past its expected end an unconfirmed TIME_WAIT waits for a snapshot.
const TIME_WAIT_GRACE_NS: u64 = 5_000_000_000;

/// Which end of a connection a socket is, by how its story began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, serde::Serialize)]
#[strum(serialize_all = "snake_case")]
#[serde(into = "&'static str")]
pub enum Role {
    /// `CLOSE -> SYN_SENT`: connect().
    Client,
    /// `LISTEN -> SYN_RECV`: a listener's child.
    Server,
    /// `CLOSE -> LISTEN`: listen().
    Listener,
    /// First seen later.
    Unknown,
}

/// Which end sent the first FIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, serde::Serialize)]
#[strum(serialize_all = "snake_case")]
#[serde(into = "&'static str")]
pub enum ClosedBy {
    /// `ESTABLISHED -> FIN_WAIT1`.
    Local,
    /// `ESTABLISHED -> CLOSE_WAIT`.
    Remote,
    /// `FIN_WAIT1 -> CLOSING`: simultaneous close.
    Both,
    Unknown,
}

/// How a connection ended (the rules are in the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, serde::Serialize)]
#[strum(serialize_all = "snake_case")]
#[serde(into = "&'static str")]
pub enum End {
    Fin,
    Refused,
    Timeout,
    /// connect() found no free local port (EADDRNOTAVAIL): no SYN was sent.
    PortsExhausted,
    HandshakeAborted,
    RstReceived,
    Aborted,
    /// A listener that stopped listening.
    Closed,
}

impl Role {
    pub fn name(self) -> &'static str {
        self.into()
    }
}

impl ClosedBy {
    pub fn name(self) -> &'static str {
        self.into()
    }
}

impl End {
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// Listening ports per network namespace, as transitions (`-> LISTEN`, `LISTEN -> CLOSE`) and
/// snapshots tell them: a socket first seen mid-life whose local port one of them listens on
/// is a server socket.
#[derive(Debug, Default)]
pub struct Listeners {
    /// (netns inode, port) -> listening sockets on it (several with SO_REUSEPORT).
    ports: HashMap<(Option<u32>, u16), u32>,
}

impl Listeners {
    pub fn apply(&mut self, t: &Transition) {
        let key = (t.netns, t.endpoints.local_port);
        if t.new == TcpState::Listen {
            *self.ports.entry(key).or_default() += 1;
        } else if (t.old, t.new) == (TcpState::Listen, TcpState::Close)
            && let Some(n) = self.ports.get_mut(&key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.ports.remove(&key);
            }
        }
    }

    /// Replaces what is known of the namespaces a snapshot covers with their listeners.
    pub fn snapshot(&mut self, snapshot: &Snapshot) {
        self.ports.retain(|(ns, _), _| !snapshot.covers(*ns));
        for s in snapshot
            .sockets
            .iter()
            .filter(|s| s.state == TcpState::Listen)
        {
            *self
                .ports
                .entry((s.netns, s.endpoints.local_port))
                .or_default() += 1;
        }
    }

    pub fn contains(&self, netns: Option<u32>, port: u16) -> bool {
        self.ports.contains_key(&(netns, port))
    }

    /// The ports something listens on, in any namespace.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports.keys().map(|&(_, port)| port)
    }
}

/// The TIME_WAIT (or timewait FIN_WAIT2 substate) that follows an active close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWaitSpan {
    pub entered_ns: u64,
    /// When it ended (left the snapshot, or its timer ran out), or when tracing stopped while
    /// it still ran (`complete` false).
    pub ended_ns: Option<u64>,
    /// It ran to its end while traced: `ended_ns` is its end, not when tracing stopped.
    pub complete: bool,
    /// Expected end: 60 s after entry until a snapshot reports the timer.
    pub expires_ns: u64,
    /// Seen in a snapshot (otherwise only inferred from the transition).
    pub confirmed: bool,
    /// `TIME_WAIT`, or `FIN_WAIT2` for an orphaned socket still waiting for the peer's FIN.
    pub substate: TcpState,
}

/// Up to this many states of a socket's path are kept (a full client story has 6).
const PATH_LEN: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    pub cookie: u64,
    pub role: Role,
    pub endpoints: Endpoints,
    pub owner: Option<Task>,
    pub netns: Option<u32>,
    /// Seen from its first transition (role known, times complete).
    pub from_start: bool,
    /// When the connection started (SYN_SENT / SYN_RECV / LISTEN entered), else first seen.
    pub opened_ns: u64,
    pub handshake_ns: Option<u64>,
    /// Time spent ESTABLISHED.
    pub established_ns: Option<u64>,
    /// Time the application took to close after the peer did.
    pub close_wait_ns: Option<u64>,
    pub closed_by: ClosedBy,
    /// When the socket reached CLOSE (the full socket ended).
    pub closed_ns: Option<u64>,
    pub end: Option<End>,
    /// What it carried, read at its close.
    pub carried: Option<Carried>,
    pub time_wait: Option<TimeWaitSpan>,
    /// The state the last transition entered, and when.
    pub state: TcpState,
    pub state_since_ns: u64,
    path: [TcpState; PATH_LEN],
    path_len: u8,
}

impl Connection {
    /// The story of a socket first seen at `t`.
    fn new(t: &Transition, listeners: &Listeners) -> Self {
        let (role, from_start) = match (t.old, t.new) {
            (TcpState::Close, TcpState::SynSent) => (Role::Client, true),
            (TcpState::Listen, TcpState::SynRecv) => (Role::Server, true),
            (TcpState::Close, TcpState::Listen) => (Role::Listener, true),
            // Only a listener itself leaves LISTEN other than for SYN_RECV (`LISTEN -> CLOSE`):
            // one older than tcptrace, first seen as it closes.
            (TcpState::Listen, _) => (Role::Listener, false),
            _ if listeners.contains(t.netns, t.endpoints.local_port) => (Role::Server, false),
            _ => (Role::Unknown, false),
        };
        let mut c = Self {
            cookie: t.cookie,
            role,
            endpoints: t.endpoints,
            owner: t.owner.map(|o| o.task),
            netns: t.netns,
            from_start,
            opened_ns: t.ts_ns,
            handshake_ns: None,
            established_ns: None,
            close_wait_ns: None,
            closed_by: ClosedBy::Unknown,
            closed_ns: None,
            end: None,
            carried: None,
            time_wait: None,
            state: t.old,
            state_since_ns: t.ts_ns,
            path: [TcpState::Close; PATH_LEN],
            path_len: 0,
        };
        c.push(t.old);
        c
    }

    fn push(&mut self, state: TcpState) {
        if usize::from(self.path_len) < PATH_LEN {
            self.path[usize::from(self.path_len)] = state;
            self.path_len += 1;
        }
    }

    /// The states the socket went through, in order (TIME_WAIT included when it followed).
    pub fn states(&self) -> impl Iterator<Item = TcpState> + '_ {
        self.path[..usize::from(self.path_len)]
            .iter()
            .copied()
            .chain(self.time_wait.map(|tw| tw.substate))
    }

    /// When the connection started (SYN_SENT, SYN_RECV or LISTEN entered); unknown for a
    /// socket first seen later (its start predates tracing).
    pub fn start_ns(&self) -> Option<u64> {
        self.from_start.then_some(self.opened_ns)
    }

    /// From open to the full socket's CLOSE (TIME_WAIT not included); unknown when the start
    /// is.
    pub fn lifetime_ns(&self) -> Option<u64> {
        let start = self.start_ns()?;
        self.closed_ns.map(|c| c.saturating_sub(start))
    }

    /// When the story ended: the end of its TIME_WAIT, else the close, else when it opened.
    pub fn end_ns(&self) -> u64 {
        self.time_wait
            .and_then(|tw| tw.ended_ns)
            .or(self.closed_ns)
            .unwrap_or(self.opened_ns)
    }

    /// Data bytes it sent that the peer acknowledged: the kernel's acknowledged sequence space
    /// less the SYN (counted for an active opener once its SYN was answered: a client whose
    /// handshake did not fail) and this end's FIN (counted once acknowledged: an orderly end
    /// after a FIN of its own, from FIN_WAIT2, CLOSING or LAST_ACK). Judged from the story's
    /// role, who closed and how it ended, which a connection keeps whole. `None` when the
    /// connection's start is unknown (whether its SYN counts is then unknowable) or nothing was
    /// read at its close.
    pub fn tx_bytes(&self) -> Option<u64> {
        let carried = self.carried?;
        let syn = match self.role {
            Role::Client => !matches!(
                self.end,
                Some(End::Refused | End::Timeout | End::HandshakeAborted | End::PortsExhausted)
            ),
            Role::Server | Role::Listener => false,
            Role::Unknown => return None,
        };
        let fin = self.end == Some(End::Fin) && self.closed_by != ClosedBy::Unknown;
        Some(
            carried
                .acked
                .saturating_sub(u64::from(syn) + u64::from(fin)),
        )
    }

    /// Data bytes it received (see [`Carried::rx_bytes`]).
    pub fn rx_bytes(&self) -> Option<u64> {
        self.carried.map(|c| c.rx_bytes())
    }

    pub fn time_wait_ns(&self) -> Option<u64> {
        let tw = self.time_wait?;
        tw.ended_ns.map(|e| e.saturating_sub(tw.entered_ns))
    }

    fn apply(&mut self, t: &Transition) {
        if t.endpoints.local_port != 0 {
            self.endpoints.local_port = t.endpoints.local_port;
        }
        if let Some(owner) = t.owner {
            self.owner = Some(owner.task);
        }
        self.push(t.new);
        self.state = t.new;
        self.state_since_ns = t.ts_ns;
        use TcpState::*;
        match (t.old, t.new) {
            // A client's handshake is its SYN_SENT; a server child's SYN_RECV lasts
            // microseconds (the final ACK creates it), so its handshake runs from its request's
            // first SYN-ACK, when the kernel program found it. Unknown otherwise, never 0.
            (SynSent, Established) => self.handshake_ns = t.in_old_ns,
            (SynRecv, Established) => self.handshake_ns = t.server_handshake_ns(),
            (Established, FinWait1) | (SynRecv, FinWait1) => {
                self.established_ns = t.in_old_ns;
                self.closed_by = ClosedBy::Local;
            }
            (Established, CloseWait) => {
                self.established_ns = t.in_old_ns;
                self.closed_by = ClosedBy::Remote;
            }
            (FinWait1, Closing) => self.closed_by = ClosedBy::Both,
            (CloseWait, LastAck) => self.close_wait_ns = t.in_old_ns,
            _ => {}
        }
        if t.new != Close {
            return;
        }
        self.closed_ns = Some(t.ts_ns);
        self.carried = t.carried;
        let dwell = t.in_old_ns;
        self.end = Some(match t.old {
            FinWait2 | Closing => {
                self.time_wait = Some(TimeWaitSpan {
                    entered_ns: t.ts_ns,
                    ended_ns: None,
                    complete: false,
                    expires_ns: t.ts_ns + TIME_WAIT_NS,
                    confirmed: false,
                    substate: TimeWait,
                });
                End::Fin
            }
            LastAck if !t.rst_received => End::Fin,
            Listen => End::Closed,
            SynSent if t.rst_received => End::Refused,
            SynSent if self.endpoints.local_port == 0 => End::PortsExhausted,
            SynSent if dwell.is_some_and(|d| d >= SYN_RETRANSMIT_NS) => End::Timeout,
            SynSent | SynRecv => End::HandshakeAborted,
            _ if t.rst_received => End::RstReceived,
            FinWait1 => End::Timeout,
            Established => {
                self.established_ns = dwell;
                End::Aborted
            }
            _ => End::Aborted,
        });
        // Without a FIN first, whoever reset the connection closed it.
        if self.closed_by == ClosedBy::Unknown {
            self.closed_by = match self.end {
                Some(End::Aborted) => ClosedBy::Local,
                Some(End::RstReceived) => ClosedBy::Remote,
                _ => ClosedBy::Unknown,
            };
        }
    }
}

/// Connections by cookie, bounded; finished stories are queued for the caller.
pub struct ConnectionTable {
    live: CookieMap<Connection>,
    capacity: usize,
    finished: VecDeque<Connection>,
    /// Closed connections whose TIME_WAIT is still running.
    time_wait: CookieMap<Connection>,
    /// Hold closed connections back until their TIME_WAIT ends, to report it (else they are
    /// finished at once, with the TIME_WAIT that follows not yet measured).
    pub wait_time_wait: bool,
    pub evicted: u64,
    /// Server children discarded at birth ([`DISCARD_WINDOW_NS`]): not connections.
    pub discarded: u64,
    listeners: Listeners,
}

/// A server child that closes this soon after its birth was discarded by the kernel. Its
/// SYN_RECV otherwise ends in the softirq that cloned it (microseconds; a 6.1 guest under
/// software emulation stays far below this), and a TCP Fast Open child's lasts at least the
/// SYN-ACK's round trip.
pub const DISCARD_WINDOW_NS: u64 = 10_000_000;

/// Whether `t` is a child's `SYN_RECV -> CLOSE` within [`DISCARD_WINDOW_NS`] of its birth (see
/// the module documentation); a child whose birth time is unknown is not judged.
fn discarded_at_birth(t: &Transition) -> bool {
    t.old == TcpState::SynRecv
        && t.new == TcpState::Close
        && t.in_old_ns.is_some_and(|dwell| dwell < DISCARD_WINDOW_NS)
}

impl ConnectionTable {
    pub fn new(capacity: usize) -> Self {
        // Grown on demand, like the socket table: a reserved table would be resident at once.
        Self {
            live: CookieMap::default(),
            capacity,
            finished: VecDeque::new(),
            time_wait: CookieMap::default(),
            wait_time_wait: false,
            evicted: 0,
            discarded: 0,
            listeners: Listeners::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.live.len() + self.time_wait.len()
    }

    /// A connection whose full socket has not closed yet.
    pub fn live(&self, cookie: u64) -> Option<&Connection> {
        self.live.get(&cookie)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a transition. Returns the connection when this transition closed it (the full
    /// socket reached CLOSE), for callers that count closes at once.
    pub fn apply(&mut self, t: &Transition) -> Option<Connection> {
        if discarded_at_birth(t) {
            self.discarded += 1;
            self.live.swap_remove(&t.cookie);
            return None;
        }
        let conn = match self.live.get_mut(&t.cookie) {
            Some(c) => c,
            None => {
                let mut c = Connection::new(t, &self.listeners);
                if t.new == TcpState::Close && t.old != TcpState::SynSent {
                    // First seen at its end: nothing to tell beyond the transition itself.
                    self.listeners.apply(t);
                    c.apply(t);
                    return self.close(c);
                }
                self.evicted += make_room(&mut self.live, self.capacity, |c| c.opened_ns);
                self.live.entry(t.cookie).or_insert(c)
            }
        };
        self.listeners.apply(t);
        conn.apply(t);
        if conn.end.is_some() {
            let c = self.live.swap_remove(&t.cookie)?;
            return self.close(c);
        }
        None
    }

    fn close(&mut self, c: Connection) -> Option<Connection> {
        if c.time_wait.is_some() && self.wait_time_wait {
            self.time_wait.insert(c.cookie, c);
        } else {
            self.finished.push_back(c);
        }
        Some(c)
    }

    /// Learns the listeners of a snapshot (of listeners only, or of every socket).
    pub fn learn_listeners(&mut self, snapshot: &Snapshot) {
        self.listeners.snapshot(snapshot);
    }

    /// Learns the listeners of a snapshot and confirms, or ends, the TIME_WAITs it can speak
    /// for (those of the namespaces it covers); TIME_WAITs elsewhere end by the 60 s rule.
    pub fn snapshot(&mut self, snapshot: &Snapshot) {
        self.listeners.snapshot(snapshot);
        let taken_ns = snapshot.taken_ns;
        let by_cookie: CookieMap<&DiagSocket> = snapshot
            .sockets
            .iter()
            .filter(|s| s.is_timewait())
            .map(|s| (s.cookie, s))
            .collect();
        self.end_time_waits(|c, tw| {
            if !snapshot.covers(c.netns) || taken_ns <= tw.entered_ns {
                return None; // taken before the socket became a timewait socket
            }
            match by_cookie.get(&c.cookie) {
                Some(s) => {
                    tw.confirmed = true;
                    tw.substate = s.state;
                    tw.expires_ns = taken_ns + u64::from(s.expires_ms) * 1_000_000;
                    None
                }
                None if tw.confirmed => Some(taken_ns.min(tw.expires_ns.max(tw.entered_ns))),
                None => Some(taken_ns),
            }
        });
    }

    /// Ends TIME_WAITs whose expected end passed long ago without a snapshot to tell.
    pub fn expire(&mut self, now_ns: u64) {
        self.end_time_waits(|_, tw| {
            (now_ns > tw.expires_ns + TIME_WAIT_GRACE_NS).then_some(tw.expires_ns)
        });
    }

    /// Tracing stops at `now_ns`: every TIME_WAIT still running is finished with its length so
    /// far (`complete` false). Returns how many.
    pub fn flush(&mut self, now_ns: u64) -> usize {
        let before = self.finished.len();
        for (_, mut c) in self.time_wait.drain(..) {
            if let Some(tw) = &mut c.time_wait {
                tw.ended_ns = Some(now_ns.max(tw.entered_ns));
            }
            self.finished.push_back(c);
        }
        self.finished.len() - before
    }

    /// A connection that is open, or closed and in its TIME_WAIT (when waiting for them).
    pub fn story(&self, cookie: u64) -> Option<&Connection> {
        self.live
            .get(&cookie)
            .or_else(|| self.time_wait.get(&cookie))
    }

    /// Connections whose full socket has not closed yet.
    pub fn open(&self) -> usize {
        self.live.len()
    }

    /// Finishes the TIME_WAITs `end` gives an end time to (they ran to their end).
    fn end_time_waits(
        &mut self,
        mut end: impl FnMut(&Connection, &mut TimeWaitSpan) -> Option<u64>,
    ) {
        let mut done = Vec::new();
        for (cookie, c) in &mut self.time_wait {
            let Some(mut tw) = c.time_wait else {
                continue;
            };
            let ended = end(c, &mut tw);
            if let Some(at) = ended {
                tw.ended_ns = Some(at);
                tw.complete = true;
                done.push(*cookie);
            }
            c.time_wait = Some(tw);
        }
        for cookie in done {
            if let Some(c) = self.time_wait.swap_remove(&cookie) {
                self.finished.push_back(c);
            }
        }
    }

    /// Stories completed since the last call.
    pub fn next_finished(&mut self) -> Option<Connection> {
        self.finished.pop_front()
    }
}

/// Makes room for one more entry in a map bounded to `capacity`: when it is full, evicts the
/// connections opened longest ago (`opened`, kernel monotonic ns; the lower cookie on a tie),
/// a sixteenth of the capacity at once, so the scan that finds them is amortized over as
/// many insertions. Returns how many entries were evicted.
///
/// No insertion-order queue is kept beside the map: it cost 8 bytes per live connection
/// (8.4 MB at a million) for a case that only arises once the bound is reached. The scan keeps
/// only the `n` oldest seen so far (a max-heap: 16 bytes each, 1 MB at 2^20 capacity).
fn make_room<V>(live: &mut CookieMap<V>, capacity: usize, opened: impl Fn(&V) -> u64) -> u64 {
    if live.len() < capacity || live.is_empty() {
        return 0;
    }
    let n = (live.len() + 1 - capacity)
        .max(capacity / 16)
        .min(live.len());
    let mut oldest: BinaryHeap<(u64, u64)> = BinaryHeap::with_capacity(n + 1);
    for (cookie, v) in live.iter() {
        let key = (opened(v), *cookie);
        if oldest.len() < n {
            oldest.push(key);
        } else if oldest.peek().is_some_and(|newest| key < *newest) {
            oldest.pop();
            oldest.push(key);
        }
    }
    for (_, cookie) in &oldest {
        live.swap_remove(cookie);
    }
    n as u64
}

/// What a [`CloseTracker`] keeps of a live connection: enough to tell at its close how it
/// ended, who closed it and how long it lived, in a quarter of a [`Connection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Brief {
    pub opened_ns: u64,
    /// When the socket entered `state`.
    pub state_since_ns: u64,
    /// The owner's pid, 0 for none: with `owner_comm`, 40 bytes a brief instead of the 48 an
    /// `Option<Task>` would take (a million live connections: 8 MB).
    owner_pid: u32,
    owner_comm: Comm,
    pub state: TcpState,
    role: Role,
    closed_by: ClosedBy,
    from_start: bool,
}

impl Brief {
    fn of(c: &Connection) -> Self {
        Self {
            opened_ns: c.opened_ns,
            state_since_ns: c.state_since_ns,
            owner_pid: c.owner.map_or(0, |o| o.pid),
            owner_comm: c.owner.map_or_else(Comm::default, |o| o.comm),
            state: c.state,
            role: c.role,
            closed_by: c.closed_by,
            from_start: c.from_start,
        }
    }

    /// The process that owns the connection, when known.
    pub fn owner(&self) -> Option<Task> {
        (self.owner_pid != 0).then_some(Task {
            pid: self.owner_pid,
            comm: self.owner_comm,
        })
    }

    /// The connection as far as the brief knows it, ready for its next transition `t`
    /// (addresses come from `t`, which carries them on every transition).
    fn resume(&self, t: &Transition, listeners: &Listeners) -> Connection {
        let mut c = Connection::new(t, listeners);
        c.role = self.role;
        c.from_start = self.from_start;
        c.opened_ns = self.opened_ns;
        c.closed_by = self.closed_by;
        c.owner = self.owner();
        c.state = self.state;
        c.state_since_ns = self.state_since_ns;
        c
    }
}

/// Live connections reduced to [`Brief`]s, bounded, for callers that only need each close as
/// it happens (role, who closed, how it ended, lifetime, owner) and the live sockets' owners
/// and states: no stories are kept and no TIME_WAIT is followed. The closes it returns are
/// those a [`ConnectionTable`] would return, without the per-state durations and path.
pub struct CloseTracker {
    live: CookieMap<Brief>,
    capacity: usize,
    pub evicted: u64,
    /// Server children discarded at birth ([`DISCARD_WINDOW_NS`]): not connections.
    pub discarded: u64,
    listeners: Listeners,
}

impl CloseTracker {
    pub fn new(capacity: usize) -> Self {
        Self {
            live: CookieMap::default(),
            capacity,
            evicted: 0,
            discarded: 0,
            listeners: Listeners::default(),
        }
    }

    /// Learns the listeners of a snapshot.
    pub fn snapshot(&mut self, snapshot: &Snapshot) {
        self.listeners.snapshot(snapshot);
    }

    pub fn live(&self, cookie: u64) -> Option<&Brief> {
        self.live.get(&cookie)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.live.len()
    }

    /// Applies a transition. Returns the connection when this transition closed it.
    pub fn apply(&mut self, t: &Transition) -> Option<Connection> {
        if discarded_at_birth(t) {
            self.discarded += 1;
            self.live.swap_remove(&t.cookie);
            return None;
        }
        let mut c = match self.live.get(&t.cookie) {
            Some(brief) => brief.resume(t, &self.listeners),
            None => Connection::new(t, &self.listeners),
        };
        self.listeners.apply(t);
        c.apply(t);
        if c.end.is_some() {
            self.live.swap_remove(&t.cookie);
            return Some(c);
        }
        match self.live.get_mut(&t.cookie) {
            Some(brief) => *brief = Brief::of(&c),
            None => {
                self.evicted += make_room(&mut self.live, self.capacity, |b| b.opened_ns);
                self.live.insert(t.cookie, Brief::of(&c));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::step;
    use TcpState::*;

    const MS: u64 = 1_000_000;

    /// Feeds `(old, new, at_ms)` for one cookie; dwell = time since the previous step.
    fn feed(
        table: &mut ConnectionTable,
        cookie: u64,
        steps: &[(TcpState, TcpState, u64)],
        rst_at_end: bool,
    ) {
        let mut prev: Option<u64> = None;
        for (i, &(old, new, at)) in steps.iter().enumerate() {
            let t = step(cookie, old, new)
                .at(at * MS)
                .dwell(prev.map(|p| (at - p) * MS))
                .rst(rst_at_end && i == steps.len() - 1)
                .done();
            prev = Some(at);
            table.apply(&t);
        }
    }

    fn story(table: &mut ConnectionTable) -> Connection {
        table.next_finished().expect("a finished story")
    }

    fn names(c: &Connection) -> Vec<&'static str> {
        c.states().map(TcpState::name).collect()
    }

    #[test]
    fn client_closes_first_then_time_wait_confirmed_and_ended_by_snapshots() {
        let mut t = ConnectionTable::new(100);
        t.wait_time_wait = true;
        feed(
            &mut t,
            1,
            &[
                (Close, SynSent, 1000),
                (SynSent, Established, 1040),
                (Established, FinWait1, 4040),
                (FinWait1, FinWait2, 4041),
                (FinWait2, Close, 4042),
            ],
            false,
        );
        assert!(t.next_finished().is_none(), "waits for TIME_WAIT");
        let mut diag = crate::testing::diag(1, TimeWait, "127.0.0.1:1", "127.0.0.1:2");
        diag.expires_ms = 59_000;
        t.snapshot(&crate::testing::snap(&[diag], 4000 * MS)); // taken before TIME_WAIT began: ignored
        t.snapshot(&crate::testing::snap(&[diag], 5042 * MS));
        assert!(t.next_finished().is_none());
        diag.cookie = 99;
        t.snapshot(&crate::testing::snap(&[diag], 6042 * MS)); // gone: ended
        let c = story(&mut t);
        assert_eq!(c.role, Role::Client);
        assert!(c.from_start);
        assert_eq!(c.handshake_ns, Some(40 * MS));
        assert_eq!(c.established_ns, Some(3000 * MS));
        assert_eq!(c.lifetime_ns(), Some(3042 * MS));
        assert_eq!(c.closed_by, ClosedBy::Local);
        assert_eq!(c.end, Some(End::Fin));
        assert_eq!(c.time_wait_ns(), Some(2000 * MS));
        assert!(c.time_wait.unwrap().confirmed);
        assert_eq!(
            names(&c),
            [
                "CLOSE",
                "SYN_SENT",
                "ESTABLISHED",
                "FIN_WAIT1",
                "FIN_WAIT2",
                "CLOSE",
                "TIME_WAIT"
            ]
        );
    }

    #[test]
    fn a_child_discarded_at_birth_is_no_connection() {
        let mut t = ConnectionTable::new(100);
        // Two children of one request, cloned on two CPUs: the loser, closed at once, may be
        // reported before the winner (each child's birth is reported at its next transition).
        feed(
            &mut t,
            11,
            &[(Listen, SynRecv, 1000), (SynRecv, Close, 1000)],
            false,
        );
        assert_eq!(t.discarded, 1);
        assert!(t.next_finished().is_none());
        assert!(t.live(11).is_none());
        feed(
            &mut t,
            10,
            &[(Listen, SynRecv, 1000), (SynRecv, Established, 1000)],
            false,
        );
        assert_eq!(t.live(10).map(|c| c.role), Some(Role::Server));
        // A Fast Open child reset 50 ms after its SYN is a handshake that was aborted...
        feed(
            &mut t,
            12,
            &[(Listen, SynRecv, 9000), (SynRecv, Close, 9050)],
            true,
        );
        assert_eq!(story(&mut t).end, Some(End::HandshakeAborted));
        // ...and a child whose birth was not seen is not judged.
        feed(&mut t, 13, &[(SynRecv, Close, 9100)], false);
        assert_eq!(story(&mut t).end, Some(End::HandshakeAborted));
        assert_eq!(t.discarded, 1);
    }

    #[test]
    fn passive_close_with_slow_application() {
        let mut t = ConnectionTable::new(100);
        feed(
            &mut t,
            2,
            &[
                (Listen, SynRecv, 0),
                (SynRecv, Established, 1),
                (Established, CloseWait, 501),
                (CloseWait, LastAck, 801),
                (LastAck, Close, 802),
            ],
            false,
        );
        let c = story(&mut t);
        assert_eq!(
            (c.role, c.closed_by, c.end),
            (Role::Server, ClosedBy::Remote, Some(End::Fin))
        );
        assert_eq!(c.close_wait_ns, Some(300 * MS));
        assert_eq!(c.time_wait, None);
    }

    #[test]
    fn close_tracker_closes_like_the_full_table() {
        use std::collections::HashMap;
        // (old, new, at ms, RST received)
        type Step = (TcpState, TcpState, u64, bool);
        let paths: &[(u64, &[Step])] = &[
            // client, active close
            (
                1,
                &[
                    (Close, SynSent, 0, false),
                    (SynSent, Established, 1, false),
                    (Established, FinWait1, 10, false),
                    (FinWait1, FinWait2, 11, false),
                    (FinWait2, Close, 12, false),
                ],
            ),
            // server child, passive close
            (
                2,
                &[
                    (Listen, SynRecv, 0, false),
                    (SynRecv, Established, 1, false),
                    (Established, CloseWait, 5, false),
                    (CloseWait, LastAck, 305, false),
                    (LastAck, Close, 306, false),
                ],
            ),
            // refused connect, timed-out connect
            (3, &[(Close, SynSent, 0, false), (SynSent, Close, 1, true)]),
            (
                4,
                &[(Close, SynSent, 0, false), (SynSent, Close, 3000, false)],
            ),
            // simultaneous close
            (
                5,
                &[
                    (Close, SynSent, 0, false),
                    (SynSent, Established, 1, false),
                    (Established, FinWait1, 2, false),
                    (FinWait1, Closing, 3, false),
                    (Closing, Close, 4, false),
                ],
            ),
            // first seen mid-life, then aborted; a listener
            (6, &[(Established, Close, 50, false)]),
            (7, &[(Close, Listen, 0, false), (Listen, Close, 90, false)]),
            // two children of one request; 9 lost the race: discarded at birth, no connection
            (
                8,
                &[
                    (Listen, SynRecv, 200, false),
                    (SynRecv, Established, 200, false),
                    (Established, Close, 300, false),
                ],
            ),
            (
                9,
                &[(Listen, SynRecv, 200, false), (SynRecv, Close, 200, false)],
            ),
        ];
        let mut full = ConnectionTable::new(100);
        let mut brief = CloseTracker::new(100);
        let mut from_full = HashMap::new();
        let mut from_brief = HashMap::new();
        for (cookie, path) in paths {
            let mut prev: Option<u64> = None;
            for &(old, new, at, rst) in *path {
                let t = step(*cookie, old, new)
                    .at(at * MS)
                    .dwell(prev.map(|p| (at - p) * MS))
                    .rst(rst)
                    .done();
                prev = Some(at);
                if let Some(c) = full.apply(&t) {
                    from_full.insert(c.cookie, c);
                }
                if let Some(c) = brief.apply(&t) {
                    from_brief.insert(c.cookie, c);
                }
                if new != Close {
                    let b = brief.live(*cookie).expect("live");
                    assert_eq!((b.state, b.state_since_ns), (new, at * MS));
                }
            }
        }
        assert_eq!(from_full.len(), paths.len() - 1);
        assert!(!from_full.contains_key(&9) && !from_brief.contains_key(&9));
        assert_eq!((full.discarded, brief.discarded), (1, 1));
        for (cookie, f) in &from_full {
            let b = &from_brief[cookie];
            assert_eq!(
                (
                    b.role,
                    b.closed_by,
                    b.end,
                    b.lifetime_ns(),
                    b.owner,
                    b.from_start
                ),
                (
                    f.role,
                    f.closed_by,
                    f.end,
                    f.lifetime_ns(),
                    f.owner,
                    f.from_start
                ),
                "cookie {cookie}"
            );
            assert_eq!(b.endpoints, f.endpoints);
        }
        assert!(brief.len() == 0 && full.is_empty());
    }

    #[test]
    fn a_brief_is_a_fraction_of_a_connection() {
        let (brief, full) = (size_of::<Brief>(), size_of::<Connection>());
        assert!(brief * 4 <= full, "{brief} vs {full} bytes");
        // One per live socket in `serve`: the peak-RSS figure at 100k sockets depends on it.
        assert!(brief <= 40, "Brief grew to {brief} bytes");
    }

    #[test]
    fn close_tracker_is_bounded() {
        let mut t = CloseTracker::new(2);
        for cookie in 1..=3 {
            t.apply(&step(cookie, Close, SynSent).done());
        }
        assert_eq!((t.len(), t.evicted), (2, 1));
        assert!(t.live(1).is_none() && t.live(3).is_some());
    }

    #[test]
    fn simultaneous_close_is_both() {
        let mut t = ConnectionTable::new(100);
        feed(
            &mut t,
            3,
            &[
                (Close, SynSent, 0),
                (SynSent, Established, 1),
                (Established, FinWait1, 10),
                (FinWait1, Closing, 11),
                (Closing, Close, 12),
            ],
            false,
        );
        let c = story(&mut t);
        assert_eq!((c.closed_by, c.end), (ClosedBy::Both, Some(End::Fin)));
        assert!(c.time_wait.is_some(), "TIME_WAIT follows CLOSING");
    }

    #[test]
    fn a_listener_first_seen_as_it_closes_is_a_listener() {
        let mut t = ConnectionTable::new(100);
        feed(&mut t, 7, &[(Listen, Close, 1000)], false);
        let c = story(&mut t);
        assert_eq!(c.role, Role::Listener);
        assert!(!c.from_start);
    }

    #[test]
    fn failed_connects() {
        let mut t = ConnectionTable::new(100);
        feed(&mut t, 4, &[(Close, SynSent, 0), (SynSent, Close, 0)], true);
        assert_eq!(story(&mut t).end, Some(End::Refused));
        feed(
            &mut t,
            5,
            &[(Close, SynSent, 0), (SynSent, Close, 3000)],
            false,
        );
        assert_eq!(story(&mut t).end, Some(End::Timeout));
        feed(
            &mut t,
            6,
            &[(Close, SynSent, 0), (SynSent, Close, 200)],
            false,
        );
        assert_eq!(story(&mut t).end, Some(End::HandshakeAborted));
    }

    #[test]
    fn aborts_and_resets() {
        let mut t = ConnectionTable::new(100);
        let est = [
            (Close, SynSent, 0),
            (SynSent, Established, 1),
            (Established, Close, 101),
        ];
        feed(&mut t, 7, &est, false);
        let c = story(&mut t);
        assert_eq!(
            (c.end, c.established_ns),
            (Some(End::Aborted), Some(100 * MS))
        );
        feed(&mut t, 8, &est, true);
        assert_eq!(story(&mut t).end, Some(End::RstReceived));
        // First seen at its end: a story of one transition, role unknown.
        feed(&mut t, 9, &[(CloseWait, Close, 5)], false);
        let c = story(&mut t);
        assert_eq!(
            (c.role, c.from_start, c.end),
            (Role::Unknown, false, Some(End::Aborted))
        );
    }

    #[test]
    fn snapshots_do_not_end_time_waits_of_other_namespaces() {
        let mut t = ConnectionTable::new(100);
        t.wait_time_wait = true;
        feed(
            &mut t,
            11,
            &[
                (Established, FinWait1, 0),
                (FinWait1, FinWait2, 1),
                (FinWait2, Close, 2),
            ],
            false,
        );
        // The test transitions carry netns 4026531840.
        t.snapshot(&Snapshot::of(Some(1), Vec::new(), 1000 * MS));
        assert!(t.next_finished().is_none());
        t.snapshot(&crate::testing::snap(&[], 1000 * MS));
        assert_eq!(story(&mut t).time_wait_ns(), Some(998 * MS));
    }

    #[test]
    fn unconfirmed_time_wait_expires_after_grace() {
        let mut t = ConnectionTable::new(100);
        t.wait_time_wait = true;
        feed(
            &mut t,
            10,
            &[
                (Established, FinWait1, 0),
                (FinWait1, FinWait2, 1),
                (FinWait2, Close, 2),
            ],
            false,
        );
        t.expire(2 * MS + TIME_WAIT_NS);
        assert!(t.next_finished().is_none());
        t.expire(2 * MS + TIME_WAIT_NS + TIME_WAIT_GRACE_NS + 1);
        let c = story(&mut t);
        assert_eq!(c.time_wait_ns(), Some(TIME_WAIT_NS));
        assert!(!c.time_wait.unwrap().confirmed);
    }

    #[test]
    fn a_full_tracker_evicts_a_sixteenth_opened_longest_ago() {
        let mut t = CloseTracker::new(32);
        // Opened in an order unrelated to the cookies: eviction follows the opening time.
        for cookie in 1..=32u64 {
            let at = (cookie * 7919) % 101 * MS + MS;
            t.apply(&step(cookie, Close, SynSent).at(at).done());
        }
        let mut by_age: Vec<u64> = (1..=32u64).collect();
        by_age.sort_by_key(|c| (c * 7919) % 101);
        t.apply(&step(33, Close, SynSent).at(200 * MS).done());
        assert_eq!((t.len(), t.evicted), (31, 2));
        assert!(t.live(by_age[0]).is_none() && t.live(by_age[1]).is_none());
        assert!(by_age[2..].iter().all(|c| t.live(*c).is_some()));
        assert!(t.live(33).is_some());
    }

    #[test]
    fn bounded_table_evicts_oldest() {
        let mut t = ConnectionTable::new(2);
        for cookie in 1..=3 {
            feed(&mut t, cookie, &[(Close, SynSent, cookie)], false);
        }
        assert_eq!(t.evicted, 1);
        assert_eq!(t.len(), 2);
        assert!(!t.live.contains_key(&1));
    }
}
