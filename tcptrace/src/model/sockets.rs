//! Which TCP sockets exist right now and in which state: kept current from transitions,
//! seeded and periodically reconciled from INET_DIAG snapshots.
//!
//! The transition stream alone is not enough: sockets opened before the agent started are
//! invisible, TIME_WAIT is never reported (an active close ends with FIN_WAIT2 -> CLOSE or
//! CLOSING -> CLOSE when `tcp_time_wait()` swaps in a timewait socket), half-open request
//! sockets never fire the tracepoint, and the kernel may skip program runs (recursion misses).
//! So TIME_WAIT is *inferred* from those transitions, and a snapshot periodically confirms or
//! corrects every entry.
//!
//! A namespace's TIME_WAIT table is bounded (`net.ipv4.tcp_max_tw_buckets`): when it is full,
//! `tcp_time_wait()` creates no timewait socket and counts `TCPTimeWaitOverflow` instead, while
//! the transition is the same. So the TIME_WAIT count never exceeds the namespace's limit, and
//! the kernel's overflow count takes back as many inferred entries (see
//! [`SocketTable::time_wait_overflowed`]).

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::num::NonZeroU64;

use crate::model::filter::Filter;
use crate::model::snapshot::{DiagSocket, Snapshot, Timer};
use crate::model::tcp::{STATE_SLOTS, TIME_WAIT_NS, TcpState};
use crate::model::transition::Transition;
use crate::model::{CookieHasher, CookieMap};

/// Where an entry's current state comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A transition the program reported.
    Event,
    /// Derived from a transition the kernel reports differently (TIME_WAIT after
    /// FIN_WAIT2/CLOSING -> CLOSE); not yet confirmed by a snapshot.
    Inferred,
    /// Read from an INET_DIAG snapshot.
    Snapshot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    pub state: TcpState,
    pub origin: Origin,
    /// Snapshot generation that last saw this socket (it only has to differ from the
    /// current one: an entry is either seen by a snapshot or removed by it).
    generation: u16,
    /// Network namespace inode, 0 when unknown.
    netns: u32,
    /// Local port (0 before connect() picked one).
    port: u16,
    /// When the socket entered `state` (kernel monotonic ns): exact from a transition; for a
    /// socket only snapshots have seen in this state, a lower bound ([`entered_by`]).
    since: MaybeNs,
    /// When this entry last changed.
    pub updated_ns: u64,
    /// For TIME_WAIT (and the FIN_WAIT2 timewait substate): when the kernel will drop it.
    expires: MaybeNs,
}

/// A kernel monotonic timestamp or none, in 8 bytes (the clock is never 0 once booted): one
/// entry per tracked socket, so 32 bytes instead of 48 matter at 100k sockets.
type MaybeNs = Option<NonZeroU64>;

fn maybe_ns(ns: Option<u64>) -> MaybeNs {
    ns.and_then(NonZeroU64::new)
}

/// The latest a snapshot socket can have entered its state: a TIME_WAIT socket
/// `TCP_TIMEWAIT_LEN` before it expires, a CLOSE_WAIT or FIN_WAIT2 socket at the peer's last
/// ACK (`tcp_info`: the peer has nothing more to send), anything else at the snapshot itself.
/// So an agent restart does not make old sockets look new.
fn entered_by(s: &DiagSocket, taken_ns: u64) -> u64 {
    let ago_ms = match s.state {
        TcpState::TimeWait if s.timer == Timer::TimeWait => {
            (TIME_WAIT_NS / 1_000_000).saturating_sub(u64::from(s.expires_ms))
        }
        TcpState::CloseWait | TcpState::FinWait2 => {
            s.idle.map_or(0, |i| u64::from(i.last_ack_recv_ms))
        }
        _ => 0,
    };
    taken_ns.saturating_sub(ago_ms * 1_000_000)
}

impl Tracked {
    /// When the socket entered its state (kernel monotonic ns): exact when a transition told,
    /// a lower bound of its age when only snapshots did.
    pub fn since_ns(&self) -> Option<u64> {
        self.since.map(NonZeroU64::get)
    }

    /// For TIME_WAIT (and the FIN_WAIT2 timewait substate): when the kernel will drop it.
    pub fn expires_ns(&self) -> Option<u64> {
        self.expires.map(NonZeroU64::get)
    }
}

/// What one reconcile changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Entries where the event-derived view disagreed with the kernel.
    pub corrections: u64,
    /// Entries added from or refreshed by the snapshot without disagreement (seed, half-open
    /// request sockets, timewait substates).
    pub refreshed: u64,
}

pub struct SocketTable {
    map: CookieMap<Tracked>,
    counts: [u64; STATE_SLOTS],
    /// The same per network namespace (inode, 0 for unknown).
    by_netns: HashMap<u32, [u64; STATE_SLOTS]>,
    /// The same per local port, when asked for ([`SocketTable::count_ports`]).
    by_port: Option<HashMap<u16, [u64; STATE_SLOTS]>>,
    /// Each namespace's `net.ipv4.tcp_max_tw_buckets`, from snapshots.
    time_wait_limits: HashMap<u32, u64>,
    /// TIME_WAITs inferred since the last [`SocketTable::time_wait_overflowed`], oldest first.
    recent_time_waits: Vec<(u32, u64)>,
    /// Overflows not yet matched with an inferred TIME_WAIT, per namespace.
    overflow_debt: HashMap<u32, u64>,
    capacity: usize,
    filter: Filter,
    generation: u16,
    /// Cookies closed by events while a reconcile is in progress: a snapshot taken before the
    /// close must not resurrect them.
    closed_during_reconcile: Option<HashSet<u64, BuildHasherDefault<CookieHasher>>>,
    /// Sockets not tracked because the table was full.
    pub overflow: u64,
}

impl SocketTable {
    pub fn new(capacity: usize, filter: Filter) -> Self {
        // Not reserved up front: indices land in random buckets, so a reserved index table
        // would be resident in full at once; growth is amortized (a few reallocations per
        // doubling).
        Self {
            map: CookieMap::default(),
            counts: [0; STATE_SLOTS],
            by_netns: HashMap::new(),
            by_port: None,
            time_wait_limits: HashMap::new(),
            recent_time_waits: Vec::new(),
            overflow_debt: HashMap::new(),
            capacity,
            filter,
            generation: 0,
            closed_during_reconcile: None,
            overflow: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, cookie: u64) -> Option<&Tracked> {
        self.map.get(&cookie)
    }

    /// Every tracked socket: its cookie and entry.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Tracked)> {
        self.map.iter().map(|(c, e)| (*c, e))
    }

    /// Sockets in `state`. TIME_WAIT never counts more in a namespace than its
    /// `tcp_max_tw_buckets` lets the kernel hold.
    pub fn count(&self, state: TcpState) -> u64 {
        if state != TcpState::TimeWait || self.time_wait_limits.is_empty() {
            return self.counts[state.slot()];
        }
        self.by_netns
            .iter()
            .map(|(ns, counts)| self.capped(*ns, state, counts[state.slot()]))
            .sum()
    }

    /// Sockets in `state` in namespace `netns` (0: sockets of unknown namespace).
    pub fn count_in(&self, netns: u32, state: TcpState) -> u64 {
        self.by_netns
            .get(&netns)
            .map_or(0, |counts| self.capped(netns, state, counts[state.slot()]))
    }

    /// Also count sockets per local port (for per-port gauges).
    pub fn count_ports(mut self) -> Self {
        self.by_port = Some(HashMap::new());
        self
    }

    /// Sockets in `state` on local port `port` (with [`SocketTable::count_ports`]).
    pub fn count_on(&self, port: u16, state: TcpState) -> u64 {
        self.by_port
            .as_ref()
            .and_then(|ports| ports.get(&port))
            .map_or(0, |counts| counts[state.slot()])
    }

    /// The namespaces with sockets, by how many sockets each has (most first).
    pub fn namespaces(&self) -> Vec<(u32, u64)> {
        let mut all: Vec<(u32, u64)> = self
            .by_netns
            .iter()
            .map(|(ns, counts)| (*ns, counts.iter().sum()))
            .filter(|(_, n)| *n > 0)
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all
    }

    fn capped(&self, netns: u32, state: TcpState, count: u64) -> u64 {
        match (state, self.time_wait_limits.get(&netns)) {
            (TcpState::TimeWait, Some(&limit)) => count.min(limit),
            _ => count,
        }
    }

    fn keeps_state(&self, state: TcpState) -> bool {
        self.filter.states.is_empty() || self.filter.states.contains(&state)
    }

    /// Moves socket `e` into (`add`) or out of the counts of its state.
    fn account(&mut self, e: &Tracked, add: bool) {
        let slot = e.state.slot();
        let bump = |counts: &mut [u64; STATE_SLOTS]| {
            counts[slot] = if add {
                counts[slot] + 1
            } else {
                counts[slot].saturating_sub(1)
            };
        };
        bump(&mut self.counts);
        bump(self.by_netns.entry(e.netns).or_insert([0; STATE_SLOTS]));
        if let Some(ports) = &mut self.by_port {
            bump(ports.entry(e.port).or_insert([0; STATE_SLOTS]));
        }
    }

    fn remove(&mut self, cookie: u64) -> Option<Tracked> {
        let old = self.map.swap_remove(&cookie)?;
        self.account(&old, false);
        Some(old)
    }

    /// Inserts or replaces `cookie`'s entry, keeping the per-state counts exact.
    fn put(&mut self, cookie: u64, entry: Tracked) {
        if !self.keeps_state(entry.state) {
            self.remove(cookie);
            return;
        }
        match self.map.get_mut(&cookie) {
            Some(old) => {
                let before = *old;
                *old = entry;
                self.account(&before, false);
            }
            None => {
                if self.map.len() >= self.capacity {
                    self.overflow += 1;
                    return;
                }
                self.map.insert(cookie, entry);
            }
        }
        self.account(&entry, true);
    }

    /// Applies one transition.
    pub fn apply(&mut self, t: &Transition) {
        let netns = t.netns.unwrap_or(0);
        let port = t.endpoints.local_port;
        let entry = |state, origin, expires_ns| Tracked {
            port,
            state,
            since: maybe_ns(Some(t.ts_ns)),
            updated_ns: t.ts_ns,
            origin,
            expires: maybe_ns(expires_ns),
            generation: self.generation,
            netns,
        };
        match (t.old, t.new) {
            // tcp_time_wait(): the full socket becomes a timewait socket and reports CLOSE.
            (TcpState::FinWait2 | TcpState::Closing, TcpState::Close) => {
                let tw = entry(
                    TcpState::TimeWait,
                    Origin::Inferred,
                    Some(t.ts_ns + TIME_WAIT_NS),
                );
                self.put(t.cookie, tw);
                if self.filter.is_whole_namespace() {
                    self.recent_time_waits.push((netns, t.cookie));
                }
            }
            (_, TcpState::Close) => {
                self.remove(t.cookie);
                if let Some(closed) = &mut self.closed_during_reconcile {
                    closed.insert(t.cookie);
                }
            }
            (_, new) => {
                let e = entry(new, Origin::Event, None);
                self.put(t.cookie, e);
            }
        }
    }

    /// Drops timewait entries whose timer has run out. Returns how many.
    pub fn expire(&mut self, now_ns: u64) -> usize {
        let expired: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, e)| e.expires_ns().is_some_and(|at| at <= now_ns))
            .map(|(c, _)| *c)
            .collect();
        for cookie in &expired {
            self.remove(*cookie);
        }
        expired.len()
    }

    /// The kernel found its TIME_WAIT table full `overflows` times in namespace `netns` since
    /// the last call (`TcpExt.TCPTimeWaitOverflow` grew by that much): that many closes made
    /// no timewait socket, so as many TIME_WAITs inferred since are taken back (which ones is
    /// unknowable; the count is what matters). Only a table that tracks every socket of the
    /// namespace can do so (a filtered one cannot tell whose closes overflowed).
    pub fn time_wait_overflowed(&mut self, netns: u32, overflows: u64) {
        if overflows == 0 || !self.filter.is_whole_namespace() {
            return;
        }
        let mut debt = self.overflow_debt.remove(&netns).unwrap_or(0) + overflows;
        let mut i = self.recent_time_waits.len();
        while debt > 0 && i > 0 {
            i -= 1;
            let (ns, cookie) = self.recent_time_waits[i];
            if ns != netns {
                continue;
            }
            self.recent_time_waits.swap_remove(i);
            if self
                .map
                .get(&cookie)
                .is_some_and(|e| e.origin == Origin::Inferred)
            {
                self.remove(cookie);
                debt -= 1;
            }
        }
        if debt > 0 {
            // Closes applied after the counter was read: settled at the next call, once.
            self.overflow_debt.insert(netns, debt.min(overflows));
        }
    }

    /// Starts a new overflow interval: TIME_WAITs inferred before now can no longer be taken
    /// back (the namespaces whose counter did not grow kept theirs).
    pub fn time_wait_interval(&mut self) {
        self.recent_time_waits.clear();
    }

    /// Starts a reconcile: from now until [`SocketTable::reconcile`], closes are remembered.
    pub fn begin_reconcile(&mut self) {
        self.closed_during_reconcile = Some(HashSet::default());
    }

    /// Compares the table with a snapshot (taken before the events since then were applied)
    /// and makes the table agree with the kernel in the namespaces the snapshot covers. `seed`
    /// is the first snapshot: everything it adds is expected, not a correction.
    pub fn reconcile(&mut self, snapshot: &Snapshot, seed: bool) -> ReconcileReport {
        let taken_ns = snapshot.taken_ns;
        for ns in &snapshot.namespaces {
            let limit = ns
                .stack
                .as_ref()
                .and_then(|s| s.settings.number("net.ipv4.tcp_max_tw_buckets"));
            if let (Some(inode), Some(limit)) = (ns.inode, limit) {
                self.time_wait_limits.insert(inode, limit);
            }
        }
        let closed = self.closed_during_reconcile.take().unwrap_or_default();
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let mut report = ReconcileReport::default();
        // With owner or cgroup filters a snapshot cannot say whether an unknown socket
        // qualifies: it then only updates sockets already tracked from transitions.
        let may_add = self.filter.judges_snapshots();
        for s in &snapshot.sockets {
            if !self.filter.matches_socket(&s.endpoints, s.state) {
                continue;
            }
            let expires_ns = (s.timer == Timer::TimeWait)
                .then(|| taken_ns + u64::from(s.expires_ms) * 1_000_000);
            match self.map.get_mut(&s.cookie) {
                Some(e) => {
                    e.generation = generation;
                    if e.state == s.state {
                        if e.origin == Origin::Inferred {
                            e.origin = Origin::Snapshot;
                        }
                        if e.origin == Origin::Snapshot {
                            // Each snapshot may push the bound further back.
                            let bound = entered_by(s, taken_ns);
                            e.since = maybe_ns(Some(e.since_ns().map_or(bound, |t| t.min(bound))));
                        }
                        e.expires = maybe_ns(expires_ns).or(e.expires);
                        continue;
                    }
                    if e.updated_ns >= taken_ns {
                        // An event newer than the snapshot already moved it on.
                        continue;
                    }
                    // An orphaned FIN_WAIT2 socket also becomes a timewait socket (substate
                    // FIN_WAIT2): a refinement of the inference, not an error.
                    let refinement = e.origin == Origin::Inferred && expires_ns.is_some();
                    if refinement || seed || e.origin == Origin::Snapshot {
                        report.refreshed += 1;
                    } else {
                        report.corrections += 1;
                    }
                    let updated = Tracked {
                        state: s.state,
                        since: if refinement {
                            e.since
                        } else {
                            maybe_ns(Some(entered_by(s, taken_ns)))
                        },
                        updated_ns: taken_ns,
                        origin: Origin::Snapshot,
                        expires: maybe_ns(expires_ns),
                        ..*e
                    };
                    self.put(s.cookie, updated);
                }
                None => {
                    if !may_add || closed.contains(&s.cookie) {
                        continue;
                    }
                    // Request sockets (half-open SYN_RECV) never fire the tracepoint, so a
                    // snapshot is their only source.
                    if seed || s.state == TcpState::SynRecv {
                        report.refreshed += 1;
                    } else {
                        report.corrections += 1;
                    }
                    self.put(
                        s.cookie,
                        Tracked {
                            state: s.state,
                            since: maybe_ns(Some(entered_by(s, taken_ns))),
                            updated_ns: taken_ns,
                            origin: Origin::Snapshot,
                            expires: maybe_ns(expires_ns),
                            generation,
                            netns: s.netns.unwrap_or(0),
                            port: s.endpoints.local_port,
                        },
                    );
                }
            }
        }
        // Entries of the namespaces it covers the snapshot did not see, and that no event
        // touched since it was taken.
        let gone: Vec<(u64, Origin)> = self
            .map
            .iter()
            .filter(|(_, e)| {
                e.generation != generation
                    && e.updated_ns < taken_ns
                    && snapshot.covers((e.netns != 0).then_some(e.netns))
            })
            .map(|(c, e)| (*c, e.origin))
            .collect();
        for (cookie, origin) in gone {
            self.remove(cookie);
            // Snapshot-only and inferred entries are expected to vanish (request sockets
            // complete, timewait sockets expire or are reused); an event-tracked socket that
            // the kernel no longer has means a close was missed.
            if origin == Origin::Event && !seed {
                report.corrections += 1;
            } else {
                report.refreshed += 1;
            }
        }
        report
    }

    /// Age of the oldest socket in each state whose entry time is known.
    pub fn oldest(&self, now_ns: u64) -> [Option<u64>; STATE_SLOTS] {
        let mut oldest = [None::<u64>; STATE_SLOTS];
        for e in self.map.values() {
            if let Some(since) = e.since_ns() {
                let age = now_ns.saturating_sub(since);
                let slot = &mut oldest[e.state.slot()];
                *slot = Some(slot.map_or(age, |a| a.max(age)));
            }
        }
        oldest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::Idle;
    use crate::testing::{snap, step};

    const S: u64 = 1_000_000_000;

    fn t(cookie: u64, old: TcpState, new: TcpState, ts: u64) -> Transition {
        step(cookie, old, new).at(ts).done()
    }

    fn diag(cookie: u64, state: TcpState) -> DiagSocket {
        let mut s = crate::testing::diag(cookie, state, "127.0.0.1:45678", "10.1.2.3:8080");
        s.inode = 0;
        if state == TimeWait {
            s.expires_ms = 30_000;
        }
        s
    }

    fn table() -> SocketTable {
        SocketTable::new(1000, Filter::default())
    }

    use TcpState::*;

    #[test]
    fn a_tracked_socket_takes_40_bytes() {
        // One per tracked socket: the peak-RSS figure at 100k sockets depends on it.
        assert_eq!(size_of::<Tracked>(), 40);
    }

    #[test]
    fn client_lifecycle_counts_and_infers_time_wait() {
        let mut tab = table();
        tab.apply(&t(1, Close, SynSent, S));
        assert_eq!(tab.count(SynSent), 1);
        tab.apply(&t(1, SynSent, Established, 2 * S));
        assert_eq!((tab.count(SynSent), tab.count(Established)), (0, 1));
        tab.apply(&t(1, Established, FinWait1, 3 * S));
        tab.apply(&t(1, FinWait1, FinWait2, 4 * S));
        tab.apply(&t(1, FinWait2, Close, 5 * S));
        assert_eq!(tab.count(TimeWait), 1);
        assert_eq!(tab.count(FinWait2), 0);
        let e = tab.get(1).unwrap();
        assert_eq!(e.origin, Origin::Inferred);
        assert_eq!(e.since_ns(), Some(5 * S));
        // TIME_WAIT lasts TCP_TIMEWAIT_LEN.
        assert_eq!(tab.expire(5 * S + TIME_WAIT_NS - 1), 0);
        assert_eq!(tab.expire(5 * S + TIME_WAIT_NS), 1);
        assert_eq!(tab.count(TimeWait), 0);
        assert!(tab.is_empty());
    }

    #[test]
    fn passive_close_and_abort_remove_the_socket() {
        let mut tab = table();
        tab.apply(&t(2, Listen, SynRecv, S));
        tab.apply(&t(2, SynRecv, Established, S));
        tab.apply(&t(2, Established, CloseWait, S));
        tab.apply(&t(2, CloseWait, LastAck, S));
        tab.apply(&t(2, LastAck, Close, S));
        tab.apply(&t(3, Established, Close, S)); // unknown socket aborted: nothing to do
        assert!(tab.is_empty());
        assert!(tab.counts.iter().all(|&c| c == 0));
    }

    #[test]
    fn oldest_age_per_state() {
        let mut tab = table();
        tab.apply(&t(1, Established, CloseWait, 10 * S));
        tab.apply(&t(2, Established, CloseWait, 40 * S));
        tab.apply(&t(3, SynSent, Established, 45 * S));
        let oldest = tab.oldest(50 * S);
        assert_eq!(oldest[usize::from(CloseWait.number())], Some(40 * S));
        assert_eq!(oldest[usize::from(Established.number())], Some(5 * S));
        assert_eq!(oldest[usize::from(Listen.number())], None);
    }

    #[test]
    fn seed_adds_everything_without_corrections_and_lower_bounds_of_entry_times() {
        let mut tab = table();
        tab.begin_reconcile();
        let mut leak = diag(5, CloseWait);
        leak.idle = Some(Idle::new(0, 40_000, 40_000));
        let r = tab.reconcile(
            &snap(
                &[
                    diag(1, Established),
                    diag(2, TimeWait),
                    diag(3, Listen),
                    diag(4, SynRecv),
                    leak,
                ],
                100 * S,
            ),
            true,
        );
        assert_eq!(
            r,
            ReconcileReport {
                corrections: 0,
                refreshed: 5
            }
        );
        assert_eq!(tab.count(TimeWait), 1);
        // Entry times unseen: at least since the snapshot, or what the kernel tells.
        assert_eq!(tab.get(1).unwrap().since_ns(), Some(100 * S));
        assert_eq!(tab.get(2).unwrap().expires_ns(), Some(130 * S));
        assert_eq!(
            tab.get(2).unwrap().since_ns(),
            Some(70 * S),
            "60 s before expiry"
        );
        assert_eq!(
            tab.get(5).unwrap().since_ns(),
            Some(60 * S),
            "at the peer's last ACK"
        );
        let oldest = tab.oldest(200 * S);
        assert_eq!(oldest[CloseWait.slot()], Some(140 * S));
        assert_eq!(oldest[Established.slot()], Some(100 * S));
        // A later snapshot keeps the earliest bound.
        tab.begin_reconcile();
        tab.reconcile(
            &snap(&[diag(1, Established), diag(5, CloseWait)], 150 * S),
            false,
        );
        assert_eq!(tab.get(1).unwrap().since_ns(), Some(100 * S));
        assert_eq!(tab.get(5).unwrap().since_ns(), Some(60 * S));
    }

    #[test]
    fn reconcile_corrects_missed_events_only() {
        let mut tab = table();
        tab.apply(&t(1, SynSent, Established, S)); // will be closed without us seeing it
        tab.apply(&t(2, SynSent, Established, S)); // agrees with the snapshot
        tab.apply(&t(3, Established, CloseWait, S)); // snapshot says LAST_ACK: missed event
        tab.apply(&t(4, FinWait1, FinWait2, S));
        tab.apply(&t(4, FinWait2, Close, 2 * S)); // inferred TIME_WAIT, snapshot: FIN_WAIT2 substate
        tab.begin_reconcile();
        // Events after the snapshot was taken (at 10 s): 5 is opened and closed, 2 moves on.
        tab.apply(&t(5, Close, SynSent, 11 * S));
        tab.apply(&t(5, SynSent, Close, 12 * S));
        tab.apply(&t(2, Established, FinWait1, 11 * S));
        let mut fw2 = diag(4, FinWait2);
        fw2.timer = Timer::TimeWait;
        fw2.expires_ms = 50_000;
        let r = tab.reconcile(
            &snap(
                &[
                    diag(2, Established),
                    diag(3, LastAck),
                    fw2,
                    diag(5, SynSent),
                    diag(6, SynRecv),     // half-open request socket
                    diag(7, Established), // opened while an event was lost
                ],
                10 * S,
            ),
            false,
        );
        // 1 missing, 3 wrong state, 7 unknown.
        assert_eq!(r.corrections, 3, "{r:?}");
        assert!(tab.get(1).is_none());
        assert_eq!(tab.get(2).unwrap().state, FinWait1, "newer event wins");
        assert_eq!(tab.get(3).unwrap().state, LastAck);
        assert_eq!(
            tab.get(3).unwrap().since_ns(),
            Some(10 * S),
            "at least since the snapshot"
        );
        let fw = tab.get(4).unwrap();
        assert_eq!((fw.state, fw.since_ns()), (FinWait2, Some(2 * S)));
        assert_eq!(fw.expires_ns(), Some(60 * S));
        assert!(
            tab.get(5).is_none(),
            "closed after the snapshot: not resurrected"
        );
        assert_eq!(tab.get(6).unwrap().state, SynRecv);
        assert_eq!(tab.get(7).unwrap().origin, Origin::Snapshot);
        let sum: u64 = tab.counts.iter().sum();
        assert_eq!(sum as usize, tab.len());

        // The next snapshot no longer has the request socket: it vanishes quietly.
        tab.begin_reconcile();
        let r = tab.reconcile(
            &snap(
                &[diag(2, FinWait1), diag(3, LastAck), diag(7, Established)],
                20 * S,
            ),
            false,
        );
        assert_eq!(r.corrections, 0, "{r:?}");
        assert!(tab.get(6).is_none() && tab.get(4).is_none());
    }

    #[test]
    fn state_filter_and_capacity() {
        let filter = Filter {
            states: vec![CloseWait],
            ..Default::default()
        };
        let mut tab = SocketTable::new(2, filter);
        tab.apply(&t(1, Established, CloseWait, S));
        assert_eq!(tab.count(CloseWait), 1);
        tab.apply(&t(1, CloseWait, LastAck, S));
        assert!(tab.is_empty(), "left the filtered states");
        for c in 10..13 {
            tab.apply(&t(c, Established, CloseWait, S));
        }
        assert_eq!(tab.len(), 2);
        assert_eq!(tab.overflow, 1);
    }

    #[test]
    fn namespaces_are_counted_apart_and_reconciled_only_where_covered() {
        let mut tab = table();
        tab.apply(&t(1, SynSent, Established, S));
        let mut elsewhere = t(2, SynSent, Established, S);
        elsewhere.netns = Some(7);
        tab.apply(&elsewhere);
        assert_eq!(tab.count(Established), 2);
        assert_eq!(tab.count_in(7, Established), 1);
        assert_eq!(tab.count_in(4026531840, Established), 1);
        assert_eq!(tab.namespaces().len(), 2);
        // A snapshot of namespace 7 alone says nothing of the other one's socket.
        tab.begin_reconcile();
        tab.reconcile(&Snapshot::of(Some(7), Vec::new(), 2 * S), false);
        assert!(tab.get(1).is_some());
        assert!(tab.get(2).is_none());
        assert_eq!(tab.count_in(7, Established), 0);
    }

    #[test]
    fn time_wait_never_exceeds_the_namespaces_table_and_overflows_take_inferences_back() {
        use crate::host::stack::Settings;
        let mut tab = table();
        let mut seed = snap(&[], S);
        seed.namespaces[0].stack = Some(crate::model::snapshot::Stack {
            counters: Default::default(),
            settings: Settings::from_pairs(&[("net.ipv4.tcp_max_tw_buckets", "3")]),
        });
        tab.begin_reconcile();
        tab.reconcile(&seed, true);
        for c in 1..=5 {
            tab.apply(&t(c, FinWait2, Close, 2 * S));
        }
        assert_eq!(tab.count(TimeWait), 3, "the kernel holds at most 3");
        assert_eq!(tab.count_in(4026531840, TimeWait), 3);
        // The kernel says 2 of those closes found the table full.
        tab.time_wait_overflowed(4026531840, 2);
        assert_eq!(tab.len(), 3);
        tab.time_wait_interval();
        tab.apply(&t(6, FinWait2, Close, 3 * S));
        // An overflow of a namespace with nothing inferred since waits, once, for its close.
        tab.time_wait_overflowed(7, 1);
        assert_eq!(tab.len(), 4);
        // Filtered tables cannot tell whose closes overflowed.
        let mut filtered = SocketTable::new(
            10,
            Filter {
                ports: vec![80],
                ..Default::default()
            },
        );
        filtered.apply(&t(1, FinWait2, Close, S));
        filtered.time_wait_overflowed(4026531840, 1);
        assert_eq!(filtered.len(), 1);
    }

    #[test]
    fn counts_never_underflow() {
        let mut tab = table();
        tab.apply(&t(1, Established, Close, S));
        tab.expire(u64::MAX);
        tab.begin_reconcile();
        tab.reconcile(&snap(&[], S), false);
        assert!(tab.counts.iter().all(|&c| c == 0));
    }
}
