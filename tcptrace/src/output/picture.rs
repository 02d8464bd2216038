//! Samples the state diagram from the sinks `serve` keeps: socket counts and ages from the
//! [`SocketTable`], arrow rates from the `tcptrace_transitions_total` counters, dwell
//! quantiles from the `tcptrace_state_duration_seconds` histograms, losses and corrections
//! from their counters, findings from the [`Window`]. One [`Picture`] per tick, published in a
//! [`Feed`] the terminal UI and the web page read.
//!
//! The math (rates over an interval, quantiles of a histogram window, the busiest arrows) is
//! pure and unit-tested here.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::diagnosis::Finding;
use crate::diagnosis::window::Window;
use crate::host::owners::{ProcessName, SocketOwners};
use crate::model::CookieMap;
use crate::model::connections::{Connection, End, Role};
use crate::model::snapshot::Snapshot;
use crate::model::sockets::SocketTable;
use crate::model::tcp::{Endpoints, STATE_SLOTS, TcpState};
use crate::model::transition::Task;
use crate::output::diagram::{
    ABORTS, ARROWS, ArrowView, COUNTED, FindingLine, OwnerPanel, OwnerRow, Picture, SocketRow,
    Source, StateView,
};
use crate::output::metrics::{DURATION_BUCKETS, Metrics};
use crate::output::time::WallClock;

/// The latest picture, shared between the thread that samples it and those that show it;
/// and which state's sockets the view wants listed.
#[derive(Clone, Default)]
pub struct Feed {
    latest: Arc<Mutex<Arc<Picture>>>,
    /// The kernel number of the state to list, 0 for none: listing walks every socket, so
    /// it is done only for the state a person is looking at.
    wanted: Arc<AtomicU8>,
}

impl Feed {
    /// Replaces the latest picture.
    pub fn publish(&self, picture: Picture) {
        let picture = Arc::new(picture);
        match self.latest.lock() {
            Ok(mut slot) => *slot = picture,
            Err(poisoned) => *poisoned.into_inner() = picture,
        }
    }

    /// The latest picture (empty before the first sample).
    pub fn latest(&self) -> Arc<Picture> {
        match self.latest.lock() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Lists the oldest sockets of `state` from the next sample on (`None`: of no state).
    pub fn want(&self, state: Option<TcpState>) {
        self.wanted
            .store(state.map_or(0, TcpState::number), Ordering::Relaxed);
    }

    fn wanted(&self) -> Option<TcpState> {
        TcpState::from_kernel(self.wanted.load(Ordering::Relaxed))
    }
}

/// What a sample reads (all owned by the metrics sink).
pub struct Inputs<'a> {
    /// Kernel monotonic ns of the sample.
    pub now_ns: u64,
    pub table: &'a SocketTable,
    pub metrics: &'a Metrics,
    pub window: &'a Window,
    /// The last evaluation's findings, most severe first.
    pub findings: &'a [Finding],
    pub seeded: bool,
    /// TIME_WAIT sockets the table let expire, since start.
    pub expired_time_waits: u64,
    /// The age of each state's oldest socket, as the gauges were just published with
    /// ([`SocketTable::oldest`] at `now_ns`), indexed by [`TcpState::slot`].
    pub oldest: &'a [Option<u64>; STATE_SLOTS],
}

/// Each state's dwell histogram as sampled: cumulative bucket counts and the total.
type Dwell = Vec<(TcpState, Vec<u64>, u64)>;

/// Sockets or events per (holder's pid, endpoint): how many, the oldest's age in ns, and the
/// holder as shown.
type Groups = HashMap<(Option<u32>, Endpoint), (u64, Option<u64>, String)>;

/// Rows an owner panel lists at most.
const PANEL_ROWS: usize = 5;

/// Turns the sinks' cumulative counters into pictures.
pub struct Sampler {
    feed: Feed,
    clock: WallClock,
    /// Sample socket lists and owner panels too (`top`).
    lists: usize,
    last_ns: u64,
    last: HashMap<(TcpState, TcpState), u64>,
    last_expired: u64,
    /// Each state's cumulative dwell buckets at each sample of the dwell window, oldest first.
    dwell: VecDeque<(u64, Dwell)>,
    dwell_window_ns: u64,
    /// Sockets of the last snapshot that no story tells about: their endpoints and inode.
    seen: CookieMap<(Endpoints, u32)>,
    /// Holders of sockets by inode, scanned at most once per snapshot, when a row needs one.
    holders: Holders,
    /// The last picture whose rates cover a whole tick.
    rates: Option<Picture>,
}

impl Sampler {
    /// Publishes into `feed`; dwell quantiles over the last `dwell_window_ns`; with `lists`
    /// > 0, also that many oldest sockets of each state and the owner panels.
    pub fn new(feed: Feed, dwell_window_ns: u64, lists: usize, now_ns: u64) -> Self {
        Self {
            feed,
            clock: WallClock::now(),
            lists,
            last_ns: now_ns,
            last: HashMap::new(),
            last_expired: 0,
            // The histograms start empty: the first window counts from here.
            dwell: VecDeque::from([(now_ns, Vec::new())]),
            dwell_window_ns,
            seen: CookieMap::default(),
            holders: Holders::Idle,
            rates: None,
        }
    }

    /// A snapshot came in: remembers the sockets no story covers (for their endpoints and
    /// owners), and forgets the last scan of holders.
    pub fn snapshot(&mut self, snapshot: &Snapshot, window: &Window) {
        self.holders.forget();
        if self.lists == 0 {
            return;
        }
        self.seen.clear();
        for s in &snapshot.sockets {
            if window.story(s.cookie).is_none() {
                self.seen.insert(s.cookie, (s.endpoints, s.inode));
            }
        }
    }

    /// Samples a picture from `inputs` and publishes it. With `rates` the interval since the
    /// last such sample ends here (ticks); without, counts, findings and lists are renewed
    /// and the rates of the last interval kept (snapshots: an interval of a few ms would make
    /// one transition read as a thousand per second).
    pub fn sample(&mut self, inputs: &Inputs<'_>, rates: bool) {
        let mut picture = self.picture(inputs, rates);
        if rates {
            self.rates = Some(picture.clone());
        } else if let Some(last) = &self.rates {
            picture.interval_s = last.interval_s;
            picture.dwell_window_s = last.dwell_window_s;
            picture.arrows = last.arrows.clone();
            picture.other_per_s = last.other_per_s;
            for (now, then) in picture.states.iter_mut().zip(&last.states) {
                now.aborts_per_s = then.aborts_per_s;
                now.dwell_p50_ns = then.dwell_p50_ns;
                now.dwell_p99_ns = then.dwell_p99_ns;
            }
        }
        self.feed.publish(picture);
    }

    /// A picture as of `i`; with `advance`, an interval ends here (the next rates count from
    /// now).
    fn picture(&mut self, i: &Inputs<'_>, advance: bool) -> Picture {
        let dt_s = (i.now_ns.saturating_sub(self.last_ns) as f64 / 1e9).max(1e-3);
        let now_counts: HashMap<(TcpState, TcpState), u64> = i
            .metrics
            .transition_counts()
            .into_iter()
            .map(|(f, t, n)| ((f, t), n))
            .collect();
        let deltas = deltas(&self.last, &now_counts);
        let expired = i.expired_time_waits.saturating_sub(self.last_expired);

        let mut states = [StateView::default(); STATE_SLOTS];
        let oldest = i.oldest;
        for s in COUNTED {
            states[s.slot()].count = i.table.count(s);
            states[s.slot()].oldest_ns = oldest[s.slot()];
        }
        // Arrows and marks.
        let mut shown = std::collections::HashSet::new();
        let mut arrows: Vec<ArrowView> = ARROWS
            .iter()
            .enumerate()
            .map(|(n, a)| {
                let (delta, total) = match a.source {
                    Source::Transition(f, t) => {
                        shown.insert((f, t));
                        (
                            deltas.get(&(f, t)).copied().unwrap_or(0),
                            now_counts.get(&(f, t)).copied().unwrap_or(0),
                        )
                    }
                    Source::TimeWaitExpiry => (expired, i.expired_time_waits),
                };
                ArrowView {
                    arrow: n,
                    rate: delta as f64 / dt_s,
                    total,
                    hot: false,
                }
            })
            .collect();
        mark_hot(&mut arrows);
        for (state, _) in ABORTS {
            shown.insert((state, TcpState::Close));
            let n = deltas.get(&(state, TcpState::Close)).copied().unwrap_or(0);
            states[state.slot()].aborts_per_s = n as f64 / dt_s;
        }
        let other: u64 = deltas
            .iter()
            .filter(|(k, _)| !shown.contains(k))
            .map(|(_, n)| n)
            .sum();
        // Dwell quantiles over the window.
        let histograms = i.metrics.dwell_histograms();
        while self.dwell.len() > 1
            && self
                .dwell
                .front()
                .is_some_and(|(at, _)| i.now_ns.saturating_sub(*at) > self.dwell_window_ns)
        {
            self.dwell.pop_front();
        }
        let (since, then) = self
            .dwell
            .front()
            .map_or((i.now_ns, &[][..]), |(at, h)| (*at, &h[..]));
        for (state, buckets, count) in &histograms {
            let before = then.iter().find(|(s, _, _)| s == state);
            let (b0, c0) = before.map_or((&[][..], 0), |(_, b, c)| (&b[..], *c));
            let window: Vec<u64> = buckets
                .iter()
                .enumerate()
                .map(|(n, c)| c.saturating_sub(b0.get(n).copied().unwrap_or(0)))
                .collect();
            let total = count.saturating_sub(c0);
            let view = &mut states[state.slot()];
            view.dwell_p50_ns = quantile(0.5, &DURATION_BUCKETS, &window, total).map(|s| s * 1e9);
            view.dwell_p99_ns = quantile(0.99, &DURATION_BUCKETS, &window, total).map(|s| s * 1e9);
        }
        if advance {
            self.dwell.push_back((i.now_ns, histograms));
            self.last_ns = i.now_ns;
            self.last = now_counts;
            self.last_expired = i.expired_time_waits;
        }
        let findings = i
            .findings
            .iter()
            .map(|f| FindingLine {
                severity: f.severity.name(),
                kind: f.kind.name(),
                statement: f.statement.clone(),
            })
            .collect();
        let mut picture = Picture {
            now_ns: i.now_ns,
            time: self
                .clock
                .time_of_day(i.now_ns)
                .to_string()
                .chars()
                .take(8)
                .collect(),
            interval_s: dt_s,
            dwell_window_s: i.now_ns.saturating_sub(since) as f64 / 1e9,
            seeded: i.seeded,
            states,
            arrows,
            other_per_s: other as f64 / dt_s,
            gaps: i.metrics.gaps(),
            findings,
            owners: Vec::new(),
            listed: None,
        };
        if self.lists > 0 {
            self.lists_and_owners(i, &mut picture);
        }
        picture
    }

    /// Who holds the sockets in trouble, and the oldest sockets of the state the view wants
    /// listed. Runs each tick over every tracked socket: groups are keyed by pid and endpoint
    /// (no text is made but for the rows shown).
    fn lists_and_owners(&mut self, i: &Inputs<'_>, picture: &mut Picture) {
        let wanted = self.feed.wanted();
        let mut oldest: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
        let mut groups: [Groups; 3] = Default::default();
        let troubled = [TcpState::CloseWait, TcpState::TimeWait, TcpState::SynRecv];
        for (cookie, e) in i.table.iter() {
            let age = e.since_ns().map(|s| i.now_ns.saturating_sub(s));
            if wanted == Some(e.state) {
                oldest.push(Reverse((age.unwrap_or(0), cookie)));
                if oldest.len() > self.lists {
                    oldest.pop();
                }
            }
            let Some(g) = troubled.iter().position(|s| *s == e.state) else {
                continue;
            };
            let who = self.who(i.window, cookie);
            let end = match e.state {
                TcpState::TimeWait => service_end(who.role, who.local, who.remote),
                _ => who
                    .local
                    .map_or(Endpoint::Unknown, |l| Endpoint::Port(l.port())),
            };
            let entry = groups[g]
                .entry((who.holder.pid(), end))
                .or_insert_with(|| (0, None, who.holder.label()));
            entry.0 += 1;
            entry.1 = entry.1.max(age);
        }
        let titles = [
            "CLOSE_WAIT leakers",
            "TIME_WAIT producers",
            "SYN_RECV per listener",
        ];
        for ((title, state), group) in titles.into_iter().zip(troubled).zip(groups) {
            picture.owners.push(OwnerPanel {
                title,
                state,
                rows: top_rows(group),
            });
        }
        // Failed connects in this window, per destination.
        let mut failures: Groups = HashMap::new();
        for e in &i.window.observations().ended {
            let failed = matches!(
                e.end,
                End::Refused | End::Timeout | End::HandshakeAborted | End::PortsExhausted
            );
            if e.role == Role::Client && failed {
                let holder = e.owner.map_or(Holder::Unknown, Holder::Task);
                failures
                    .entry((holder.pid(), Endpoint::Addr(e.remote)))
                    .or_insert_with(|| (0, None, holder.label()))
                    .0 += 1;
            }
        }
        picture.owners.push(OwnerPanel {
            title: "connect failures",
            state: TcpState::SynSent,
            rows: top_rows(failures),
        });
        if let Some(state) = wanted {
            // Sorting `Reverse`s ascending puts the oldest first.
            let rows = oldest
                .into_sorted_vec()
                .into_iter()
                .map(|Reverse((age, cookie))| self.row(i, cookie, age))
                .collect();
            picture.listed = Some((state, rows));
        }
    }

    /// Who holds a socket and where its ends are, from its story or the last snapshot (and
    /// then its holder in `/proc`, scanned on a thread of its own once per snapshot).
    fn who(&mut self, window: &Window, cookie: u64) -> Who {
        if let Some(c) = window.story(cookie) {
            return Who {
                holder: c.owner.map_or(Holder::Unknown, Holder::Task),
                local: Some(c.endpoints.local()),
                remote: Some(c.endpoints.remote()),
                role: c.role,
            };
        }
        let Some(&(endpoints, inode)) = self.seen.get(&cookie) else {
            return Who {
                holder: Holder::Unknown,
                local: None,
                remote: None,
                role: Role::Unknown,
            };
        };
        let holder = if inode == 0 {
            Holder::Unknown
        } else {
            self.holders
                .owner(inode)
                .map_or(Holder::Unknown, |p| Holder::Process(p.pid, p.comm))
        };
        Who {
            holder,
            local: Some(endpoints.local()),
            remote: Some(endpoints.remote()),
            role: Role::Unknown,
        }
    }

    fn row(&mut self, i: &Inputs<'_>, cookie: u64, age: u64) -> SocketRow {
        let who = self.who(i.window, cookie);
        let known = i.table.get(cookie).and_then(|e| e.since_ns()).is_some();
        SocketRow {
            cookie,
            age_ns: known.then_some(age),
            owner: who.holder.label(),
            local: who.local.map_or("-".to_owned(), |a| a.to_string()),
            remote: who.remote.map_or("-".to_owned(), |a| a.to_string()),
            story: i.window.story(cookie).copied(),
        }
    }
}

/// Who holds a socket.
#[derive(Debug, Clone)]
enum Holder {
    /// The owner transitions reported.
    Task(Task),
    /// The process `/proc` says holds it.
    Process(u32, String),
    Unknown,
}

impl Holder {
    fn pid(&self) -> Option<u32> {
        match self {
            Self::Task(t) => Some(t.pid),
            Self::Process(pid, _) => Some(*pid),
            Self::Unknown => None,
        }
    }

    /// `pid comm`, or `-`.
    fn label(&self) -> String {
        match self {
            Self::Task(t) => format!("{} {}", t.pid, t.comm.as_str()),
            Self::Process(pid, comm) => format!("{pid} {comm}"),
            Self::Unknown => "-".to_owned(),
        }
    }
}

/// A socket's holder, ends and role, as far as anything tells.
struct Who {
    holder: Holder,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    role: Role,
}

/// The end of a socket a panel row groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Endpoint {
    /// A local port, shown `:8080`.
    Port(u16),
    /// An address and port, shown `10.0.0.1:443`.
    Addr(SocketAddr),
    Unknown,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Port(p) => write!(f, ":{p}"),
            Self::Addr(a) => write!(f, "{a}"),
            Self::Unknown => f.write_str("-"),
        }
    }
}

/// Socket holders from `/proc`, scanned on a thread of their own (a scan walks every
/// process's descriptors: never on the thread that reads the ring). A scan older than the
/// last snapshot still answers while the next one runs: holders rarely change, and a picture
/// taken at each snapshot must not lose every owner the scan had found.
#[derive(Default)]
enum Holders {
    /// Never scanned.
    #[default]
    Idle,
    /// A scan runs; the previous one's result, if any, answers meanwhile.
    Scanning(std::thread::JoinHandle<SocketOwners>, Option<SocketOwners>),
    /// Scanned since the last snapshot.
    Done(SocketOwners),
    /// Scanned before the last snapshot: answers, and the next question starts a new scan.
    Stale(SocketOwners),
}

impl Holders {
    /// The holder of socket `inode`, from the latest scan done; a question with no scan since
    /// the last snapshot starts one.
    fn owner(&mut self, inode: u32) -> Option<ProcessName> {
        if let Self::Scanning(scan, _) = self
            && scan.is_finished()
        {
            let Self::Scanning(scan, previous) = std::mem::take(self) else {
                unreachable!("matched above")
            };
            *self = Self::Done(scan.join().unwrap_or_else(|_| previous.unwrap_or_default()));
        }
        match std::mem::take(self) {
            Self::Done(owners) => {
                let found = owners.get(inode).cloned();
                *self = Self::Done(owners);
                found
            }
            Self::Scanning(scan, previous) => {
                let found = previous.as_ref().and_then(|o| o.get(inode).cloned());
                *self = Self::Scanning(scan, previous);
                found
            }
            Self::Idle => {
                *self = Self::start(None);
                None
            }
            Self::Stale(owners) => {
                let found = owners.get(inode).cloned();
                *self = Self::start(Some(owners));
                found
            }
        }
    }

    /// A scan on its own thread, `previous` answering meanwhile (`Idle` or `Stale` when the
    /// thread cannot start).
    fn start(previous: Option<SocketOwners>) -> Self {
        match std::thread::Builder::new()
            .name("tcptrace-holders".into())
            .spawn(SocketOwners::scan)
        {
            Ok(scan) => Self::Scanning(scan, previous),
            Err(_) => previous.map_or(Self::Idle, Self::Stale),
        }
    }

    /// A snapshot came: holders may have changed, so the next question starts a new scan
    /// (the last result answers until it is done).
    fn forget(&mut self) {
        if matches!(self, Self::Done(_)) {
            let Self::Done(owners) = std::mem::take(self) else {
                unreachable!("matched above")
            };
            *self = Self::Stale(owners);
        }
    }
}

/// The end of a TIME_WAIT connection that names the service: the server's port for a server
/// socket, the server's address for a client's; when the role is unknown, the lower port.
fn service_end(role: Role, local: Option<SocketAddr>, remote: Option<SocketAddr>) -> Endpoint {
    match (role, local, remote) {
        (Role::Server, Some(l), _) => Endpoint::Port(l.port()),
        (Role::Client, _, Some(r)) => Endpoint::Addr(r),
        (_, Some(l), Some(r)) if l.port() < r.port() => Endpoint::Port(l.port()),
        (_, _, Some(r)) => Endpoint::Addr(r),
        _ => Endpoint::Unknown,
    }
}

/// The largest groups first (then the oldest, then by name), at most [`PANEL_ROWS`].
fn top_rows(groups: Groups) -> Vec<OwnerRow> {
    let mut rows: Vec<OwnerRow> = groups
        .into_iter()
        .map(|((_, end), (count, oldest_ns, owner))| OwnerRow {
            owner,
            endpoint: end.to_string(),
            count,
            oldest_ns,
        })
        .collect();
    rows.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(b.oldest_ns.cmp(&a.oldest_ns))
            .then_with(|| (&a.owner, &a.endpoint).cmp(&(&b.owner, &b.endpoint)))
    });
    rows.truncate(PANEL_ROWS);
    rows
}

/// A story so far with `life`'s fields (times in ms, as `life`'s table shows them).
pub fn story(c: &Connection, now_ns: u64) -> Vec<(&'static str, String)> {
    let ms = |ns: Option<u64>| ns.map_or("-".to_owned(), |n| format!("{:.3}", n as f64 / 1e6));
    let states: Vec<&str> = c.states().map(TcpState::name).collect();
    let mut out = vec![
        ("cookie", c.cookie.to_string()),
        ("role", c.role.name().to_owned()),
        (
            "owner",
            c.owner
                .map_or("-".to_owned(), |t| format!("{} {}", t.pid, t.comm.as_str())),
        ),
        ("local", c.endpoints.local().to_string()),
        ("remote", c.endpoints.remote().to_string()),
        ("netns", c.netns.map_or("-".to_owned(), |n| n.to_string())),
        ("states", states.join(" -> ")),
        (
            "now",
            c.time_wait
                .map_or(c.state, |tw| tw.substate)
                .name()
                .to_owned(),
        ),
        (
            "in_state_ms",
            ms(Some(now_ns.saturating_sub(c.state_since_ns))),
        ),
        ("handshake_ms", ms(c.handshake_ns)),
        ("established_ms", ms(c.established_ns)),
        ("close_wait_ms", ms(c.close_wait_ns)),
        (
            "life_ms",
            ms(c.start_ns()
                .map(|s| c.closed_ns.unwrap_or(now_ns).saturating_sub(s))),
        ),
        ("closed_by", c.closed_by.name().to_owned()),
        ("end", c.end.map_or("-".to_owned(), |e| e.name().to_owned())),
    ];
    // What it carried, as of its last transition (the kernel's counters at that moment).
    let count = |n: Option<u64>| n.map_or("-".to_owned(), |n| n.to_string());
    out.push(("tx_bytes", count(c.tx_bytes())));
    out.push(("rx_bytes", count(c.rx_bytes())));
    out.push((
        "retransmits",
        count(c.carried.map(|x| u64::from(x.retransmits))),
    ));
    out.push((
        "srtt_us",
        count(c.carried.and_then(|x| x.srtt_us).map(u64::from)),
    ));
    if let Some(tw) = c.time_wait {
        out.push((
            "time_wait_ms",
            ms(Some(
                tw.ended_ns.unwrap_or(now_ns).saturating_sub(tw.entered_ns),
            )),
        ));
    }
    out
}

/// How much each counter grew since `before` (counters absent before grew from 0).
pub fn deltas(
    before: &HashMap<(TcpState, TcpState), u64>,
    now: &HashMap<(TcpState, TcpState), u64>,
) -> HashMap<(TcpState, TcpState), u64> {
    now.iter()
        .map(|(k, n)| (*k, n.saturating_sub(before.get(k).copied().unwrap_or(0))))
        .filter(|(_, d)| *d > 0)
        .collect()
}

/// Marks the busiest arrows hot: at least 1/s and at least a quarter of the busiest rate.
pub fn mark_hot(arrows: &mut [ArrowView]) {
    let max = arrows.iter().map(|a| a.rate).fold(0.0, f64::max);
    for a in arrows {
        a.hot = a.rate >= 1.0 && a.rate >= max / 4.0;
    }
}

/// The `q` quantile of a histogram with cumulative counts `cumulative` for the finite upper
/// bounds `bounds` and `total` observations (the +Inf bucket), as PromQL's
/// `histogram_quantile` computes it: linear within the bucket the rank falls in, the highest
/// finite bound when it falls in +Inf. `None` without observations.
pub fn quantile(q: f64, bounds: &[f64], cumulative: &[u64], total: u64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (bound, &count) in bounds.iter().zip(cumulative) {
        if count as f64 >= rank {
            let inside = count.saturating_sub(below);
            if inside == 0 {
                return Some(*bound);
            }
            return Some(lower + (bound - lower) * (rank - below as f64) / inside as f64);
        }
        below = count;
        lower = *bound;
    }
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    #[test]
    fn holders_found_by_a_scan_survive_the_next_snapshot() {
        use std::os::unix::fs::MetadataExt as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let inode = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino() as u32;
        let me = std::process::id();
        let mut holders = Holders::Idle;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let found = loop {
            if let Some(p) = holders.owner(inode) {
                break p;
            }
            assert!(std::time::Instant::now() < deadline, "no scan finished");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(found.pid, me);
        // A snapshot: the next question starts a new scan, and the last one still answers.
        holders.forget();
        assert_eq!(holders.owner(inode).map(|p| p.pid), Some(me));
        assert_eq!(holders.owner(inode).map(|p| p.pid), Some(me));
        drop(listener);
    }

    use super::*;
    use crate::diagnosis::Thresholds;
    use crate::model::filter::Filter;
    use crate::output::metrics::MetricsSink;
    use crate::pipeline::{Sink as _, Tick};
    use crate::testing::step;
    use TcpState::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn quantiles_interpolate_within_the_bucket_like_promql() {
        let bounds = [1.0, 2.0, 4.0];
        // 10 observations: 2 up to 1, 6 in (1, 2], 2 in (2, 4].
        let cumulative = [2, 8, 10];
        assert_eq!(quantile(0.5, &bounds, &cumulative, 10), Some(1.5));
        assert_eq!(quantile(0.2, &bounds, &cumulative, 10), Some(1.0));
        assert_eq!(quantile(0.9, &bounds, &cumulative, 10), Some(3.0));
        assert_eq!(quantile(0.1, &bounds, &cumulative, 10), Some(0.5));
        // Beyond the last finite bucket: its bound.
        assert_eq!(quantile(0.99, &bounds, &cumulative, 20), Some(4.0));
        assert_eq!(quantile(0.5, &bounds, &[0, 0, 0], 0), None);
    }

    #[test]
    fn deltas_and_hot_arrows() {
        let before = HashMap::from([((SynSent, Established), 10), ((Established, FinWait1), 5)]);
        let now = HashMap::from([
            ((SynSent, Established), 30),
            ((Established, FinWait1), 5),
            ((Established, CloseWait), 4),
        ]);
        let d = deltas(&before, &now);
        assert_eq!(d.get(&(SynSent, Established)), Some(&20));
        assert_eq!(d.get(&(Established, CloseWait)), Some(&4));
        assert!(!d.contains_key(&(Established, FinWait1)), "no growth");
        let view = |rate| ArrowView {
            arrow: 0,
            rate,
            total: 0,
            hot: false,
        };
        let mut arrows = [view(100.0), view(30.0), view(20.0), view(0.5), view(0.0)];
        mark_hot(&mut arrows);
        let hot: Vec<bool> = arrows.iter().map(|a| a.hot).collect();
        assert_eq!(hot, [true, true, false, false, false]);
        let mut quiet = [view(0.5), view(0.2)];
        mark_hot(&mut quiet);
        assert!(quiet.iter().all(|a| !a.hot), "under 1/s nothing is hot");
    }

    /// A metrics sink sampling into a feed, as `top` builds it.
    fn sink(feed: &Feed) -> MetricsSink {
        let metrics = Metrics::new(crate::output::metrics::Breakdowns::default());
        let window = Window::new(100, Filter::default(), Thresholds::default()).with_stories(100);
        MetricsSink::new(metrics, SocketTable::new(100, Filter::default()), window)
            .with_diagram(Sampler::new(feed.clone(), 60 * S, 10, 0))
    }

    fn tick(sink: &mut MetricsSink, now_ns: u64) {
        sink.tick(&Tick {
            now_ns,
            ..Default::default()
        });
    }

    #[test]
    fn rates_are_per_second_over_the_interval_and_ages_grow() {
        let feed = Feed::default();
        let mut sink = sink(&feed);
        // Five clients connect at 1 s, then each closes first at 2 s; one more stays.
        for c in 1..=6 {
            sink.transition(&step(c, Close, SynSent).at(S).done(), None)
                .unwrap();
            sink.transition(
                &step(c, SynSent, Established)
                    .at(S)
                    .dwell(Some(50_000))
                    .done(),
                None,
            )
            .unwrap();
        }
        tick(&mut sink, 2 * S);
        let p = feed.latest();
        let arrow = |from, to| {
            ARROWS
                .iter()
                .position(|a| a.source == Source::Transition(from, to))
                .unwrap()
        };
        assert_eq!(p.arrow(arrow(Close, SynSent)).rate, 3.0, "6 in 2 s");
        assert_eq!(p.state(Established).count, 6);
        assert_eq!(p.state(Established).oldest_ns, Some(S));
        // The SYN_SENT dwell (50 µs) lands in the (25 µs, 50 µs] bucket: p50 interpolates.
        let p50 = p.state(SynSent).dwell_p50_ns.unwrap();
        assert!((25_000.0..=50_000.0).contains(&p50), "{p50}");
        for c in 1..=5 {
            sink.transition(
                &step(c, Established, FinWait1)
                    .at(2 * S)
                    .dwell(Some(S))
                    .done(),
                None,
            )
            .unwrap();
            sink.transition(&step(c, FinWait1, FinWait2).at(2 * S).done(), None)
                .unwrap();
            sink.transition(&step(c, FinWait2, Close).at(2 * S).done(), None)
                .unwrap();
        }
        sink.transition(&step(6, Established, Close).at(2 * S).done(), None)
            .unwrap();
        tick(&mut sink, 4 * S);
        let p = feed.latest();
        assert_eq!(p.arrow(arrow(Close, SynSent)).rate, 0.0, "nothing new");
        assert_eq!(p.arrow(arrow(Established, FinWait1)).rate, 2.5, "5 in 2 s");
        assert!(p.arrow(arrow(Established, FinWait1)).hot);
        assert_eq!(p.arrow(arrow(FinWait2, Close)).total, 5);
        assert_eq!(p.state(TimeWait).count, 5, "inferred TIME_WAIT");
        assert_eq!(p.state(TimeWait).oldest_ns, Some(2 * S));
        assert_eq!(p.state(Established).aborts_per_s, 0.5, "one abort in 2 s");
        // The TIME_WAIT stories are listed, oldest first, with their owner and story.
        assert!(p.sockets_in(TimeWait).is_empty(), "listed only when wanted");
        feed.want(Some(TimeWait));
        tick(&mut sink, 4 * S);
        let p = feed.latest();
        let tw = p.sockets_in(TimeWait);
        assert_eq!(tw.len(), 5);
        let story = tw[0].story.expect("a story");
        assert_eq!(story.closed_by, crate::model::connections::ClosedBy::Local);
        assert!(
            super::story(&story, p.now_ns)
                .iter()
                .any(|(k, v)| *k == "states" && v.ends_with("CLOSE -> TIME_WAIT")),
            "life's fields"
        );
        assert_eq!(tw[0].owner, "1234 curl");
        let producers = p.owners.iter().find(|o| o.state == TimeWait).unwrap();
        assert_eq!(producers.rows[0].count, 5);
        // 60 s later the table lets them expire: the TIME_WAIT -> CLOSE arrow shows it.
        tick(&mut sink, 2 * S + crate::model::tcp::TIME_WAIT_NS);
        let p = feed.latest();
        assert_eq!(p.state(TimeWait).count, 0);
        let expiry = ARROWS
            .iter()
            .position(|a| a.source == Source::TimeWaitExpiry)
            .unwrap();
        assert_eq!(p.arrow(expiry).total, 5);
        assert!(p.arrow(expiry).rate > 0.0);
        // A snapshot a moment after the tick renews the counts, not the rates: an interval
        // of a few ms would make each transition read as hundreds per second.
        let rate = p.arrow(expiry).rate;
        let at = 2 * S + crate::model::tcp::TIME_WAIT_NS + 1_000_000;
        sink.begin_snapshot();
        sink.snapshot(&crate::testing::snap(&[], at));
        let q = feed.latest();
        assert_eq!(q.arrow(expiry).rate, rate);
        assert_eq!(q.interval_s, p.interval_s);
        assert_eq!(q.state(Established).count, 0, "counts renewed");
    }
}
