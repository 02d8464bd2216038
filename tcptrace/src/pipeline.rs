//! The agent's data flow: kernel ring -> decode -> owners -> agent-side filter -> sinks, plus
//! the periodic ticks and the snapshots the sinks reconcile against.
//!
//! The reader is a tokio task woken by the ring buffer's epoll readiness (and a short drain
//! timer); each wake-up drains every available record, then tells the sinks the batch ended
//! (where they flush output). Snapshots of the traced namespaces and looks at `/proc` for
//! listener holders run on blocking threads, so a dump of hundreds of thousands of sockets
//! never stops the reading of the ring; the sinks compare once the dump is in.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use crate::host::cgroup::CgroupResolver;
use crate::host::clock::monotonic_ns;
use crate::host::netns;
use crate::host::owners::SocketOwners;
use crate::host::process::PidWatch;
use crate::host::snapshot::{self, Request, Scope};
use crate::host::stack::TcpCounters;
use crate::kernel::decode;
use crate::kernel::loader::{Identity, KernelCounters, ListenerMap, Tracer};
use crate::kernel::ring::{RING_POLL, Ring};
use crate::model::cgroup::CgroupInfo;
use crate::model::filter::Filter;
use crate::model::owners::{ListenerUpdate, OwnerBook};
use crate::model::snapshot::{DiagSocket, Snapshot};
use crate::model::socket_ids::SocketIds;
use crate::model::tcp::TcpState;
use crate::model::transition::Transition;

/// How often listener holders are checked for being due a look.
const OWNER_TICK: Duration = Duration::from_secs(1);
/// The kernel's count of closes that found the TIME_WAIT table full.
const TIME_WAIT_OVERFLOW: &str = "TcpExt.TCPTimeWaitOverflow";

/// What sinks see on each periodic tick.
#[derive(Debug, Clone, Default)]
pub struct Tick {
    pub now_ns: u64,
    pub stats: Stats,
    pub kernel: KernelCounters,
    /// Per namespace (inode), how often its TIME_WAIT table was full since the last tick
    /// (only with [`RunOptions::time_wait_overflows`], and only namespaces where TIME_WAITs
    /// were inferred).
    pub time_wait_overflows: Vec<(u32, u64)>,
}

/// Whether the pipeline should keep going after a sink call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The sink has seen all it wants (e.g. `--count` reached).
    Stop,
}

/// A consumer of decoded transitions (terminal output, metrics, diagnosis, ...).
pub trait Sink {
    /// One transition; `cgroup` is the socket's cgroup when the pipeline resolves cgroups
    /// (see [`Pipeline::resolve_cgroups`]).
    fn transition(&mut self, t: &Transition, cgroup: Option<&CgroupInfo>) -> io::Result<Flow>;

    /// Called after each batch of records read in one wake-up.
    fn batch_end(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Called every [`RunOptions::tick`] (gauges, expiry).
    fn tick(&mut self, _tick: &Tick) {}

    /// A snapshot is about to be taken: transitions delivered from now until
    /// [`Sink::snapshot`] may be newer than it.
    fn begin_snapshot(&mut self) {}

    /// A snapshot (its ids those of transitions); the first one of a run is the seed.
    fn snapshot(&mut self, _snapshot: &Snapshot) {}

    /// The run is over (kernel monotonic `now_ns`): nothing the sink holds back may be lost
    /// silently. Not called when the run ended with an error.
    fn finish(&mut self, _now_ns: u64) -> io::Result<()> {
        Ok(())
    }
}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn transition(&mut self, t: &Transition, cgroup: Option<&CgroupInfo>) -> io::Result<Flow> {
        (**self).transition(t, cgroup)
    }

    fn batch_end(&mut self) -> io::Result<()> {
        (**self).batch_end()
    }

    fn tick(&mut self, tick: &Tick) {
        (**self).tick(tick);
    }

    fn begin_snapshot(&mut self) {
        (**self).begin_snapshot();
    }

    fn snapshot(&mut self, snapshot: &Snapshot) {
        (**self).snapshot(snapshot);
    }

    fn finish(&mut self, now_ns: u64) -> io::Result<()> {
        (**self).finish(now_ns)
    }
}

/// When [`Pipeline::run`] takes snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Snapshots {
    #[default]
    Never,
    /// One at start (the seed) and then this often.
    Every(Duration),
}

/// Periodic work during [`Pipeline::run`].
#[derive(Default)]
pub struct RunOptions<'a> {
    /// Call [`Sink::tick`] this often, with the kernel counters read from `tracer`.
    pub tick: Option<Duration>,
    pub snapshots: Snapshots,
    /// Ask each snapshot for the sockets' idle times (`tcp_info`).
    pub snapshot_idle: bool,
    /// Read each snapshotted namespace's TCP counters and settings.
    pub snapshot_stack: bool,
    /// At each tick, read the TIME_WAIT overflow count of the namespaces where TIME_WAITs were
    /// inferred ([`Tick::time_wait_overflows`]).
    pub time_wait_overflows: bool,
    pub tracer: Option<&'a Tracer>,
}

/// What the agent itself counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records read from the ring buffer.
    pub received: u64,
    /// Records that could not be decoded (counted, never fatal).
    pub decode_errors: u64,
    /// Decoded transitions dropped by the agent-side filter.
    pub filtered: u64,
    /// Transitions handed to the sinks.
    pub delivered: u64,
    /// Snapshots taken, and how many failed.
    pub snapshots: u64,
    pub snapshot_errors: u64,
    /// Kernel log messages received (0 when kernel logging is off).
    pub kernel_log_received: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The stop future completed (signal, duration).
    Requested,
    /// A sink asked to stop.
    SinkDone,
    /// Writing output failed because the reader went away (closed pipe).
    OutputClosed,
}

/// A look at the listeners and their holders, taken on a blocking thread.
type Look = (anyhow::Result<Snapshot>, SocketOwners);

/// Sinks may borrow (`'s`): a command can hand in `&mut` its own sink and read it afterwards.
pub struct Pipeline<'s> {
    filter: Option<Filter>,
    /// Applied to snapshot sockets as they are parsed, when the filter names endpoints.
    snapshot_filter: Option<Filter>,
    /// The namespaces snapshots cover.
    scope: Scope,
    cgroups: Option<CgroupResolver>,
    /// Set when transition ids are not socket cookies: snapshots are matched by address.
    ids: Option<SocketIds>,
    owners: OwnerBook,
    pids: PidWatch,
    /// Namespaces where TIME_WAITs were inferred since the last tick, when asked for.
    time_wait_namespaces: Option<HashSet<u32>>,
    /// Each namespace's TIME_WAIT overflow count when last read.
    time_wait_overflows_seen: HashMap<u32, u64>,
    /// A path into each namespace snapshots covered (the agent's own has none).
    paths: HashMap<u32, PathBuf>,
    /// The kernel's listener map, kept current with listener holders.
    listener_map: Option<ListenerMap>,
    /// The owners of what existed at start were read.
    owners_seeded: bool,
    /// Said once that some namespaces cannot be dumped.
    warned_namespaces: bool,
    /// No look for listener holders before this (kernel monotonic ns): looks scan every
    /// process's descriptors, so they are spaced by 20 times what the last one took.
    next_look_ns: u64,
    own_netns: Option<u32>,
    sinks: Vec<Box<dyn Sink + Send + 's>>,
    pub stats: Stats,
}

impl<'s> Pipeline<'s> {
    /// `filter` is applied in the agent only when it has parts the kernel cannot apply;
    /// snapshots (and looks for socket holders) cover `scope`.
    pub fn new(filter: &Filter, scope: Scope) -> Self {
        Self {
            filter: filter.has_agent_part().then(|| filter.clone()),
            snapshot_filter: filter.constrains_endpoints().then(|| filter.clone()),
            scope,
            cgroups: filter.needs_cgroup().then(CgroupResolver::new),
            ids: None,
            owners: OwnerBook::default(),
            pids: PidWatch::default(),
            time_wait_namespaces: None,
            time_wait_overflows_seen: HashMap::new(),
            paths: HashMap::new(),
            listener_map: None,
            owners_seeded: false,
            warned_namespaces: false,
            next_look_ns: 0,
            own_netns: netns::own(),
            sinks: Vec::new(),
            stats: Stats::default(),
        }
    }

    pub fn subscribe(&mut self, sink: Box<dyn Sink + Send + 's>) {
        self.sinks.push(sink);
    }

    /// Keeps the kernel's listener map current with the holders the agent finds.
    pub fn listener_map(&mut self, map: Option<ListenerMap>) {
        self.listener_map = map;
    }

    /// Tells the pipeline what transition ids are on this kernel; snapshots it takes then
    /// carry the same ids.
    pub fn identity(&mut self, identity: Identity) {
        self.ids = match identity {
            Identity::Cookie => None,
            Identity::Numbered => Some(SocketIds::new()),
        };
    }

    /// Gives the sockets of a snapshot the ids transitions use.
    pub fn match_ids(&mut self, snapshot: &mut Snapshot) {
        if let Some(ids) = &mut self.ids {
            ids.translate(snapshot);
        }
    }

    /// The ids transitions use for some sockets of a partial dump.
    fn ids_of(&self, sockets: &[DiagSocket]) -> Vec<u64> {
        match &self.ids {
            Some(ids) => ids.ids(sockets),
            None => sockets.iter().map(|s| s.cookie).collect(),
        }
    }

    /// Resolve each socket's cgroup path and container for the sinks (costs a cache lookup
    /// per transition; off unless a sink or the filter needs it).
    pub fn resolve_cgroups(&mut self) {
        self.cgroups.get_or_insert_with(CgroupResolver::new);
    }

    /// Handles one raw record.
    pub fn record(&mut self, bytes: &[u8]) -> io::Result<Flow> {
        self.stats.received += 1;
        let mut t = match decode::decode(bytes) {
            Ok(t) => t,
            Err(_) => {
                self.stats.decode_errors += 1;
                return Ok(Flow::Continue);
            }
        };
        if let Some(ids) = &mut self.ids {
            ids.observe(&t);
        }
        self.owners.resolve(&mut t, &mut self.pids);
        if let Some(namespaces) = &mut self.time_wait_namespaces
            && matches!(
                (t.old, t.new),
                (TcpState::FinWait2 | TcpState::Closing, TcpState::Close)
            )
        {
            namespaces.insert(t.netns.unwrap_or(0));
        }
        let info = match (&mut self.cgroups, t.cgroup) {
            (Some(resolver), Some(id)) => resolver.resolve(id),
            _ => None,
        };
        if let Some(filter) = &self.filter
            && !(filter.matches(&t) && filter.matches_cgroup(info.as_deref()))
        {
            self.stats.filtered += 1;
            return Ok(Flow::Continue);
        }
        self.stats.delivered += 1;
        let mut flow = Flow::Continue;
        for sink in &mut self.sinks {
            if sink.transition(&t, info.as_deref())? == Flow::Stop {
                flow = Flow::Stop;
            }
        }
        Ok(flow)
    }

    pub fn batch_end(&mut self) -> io::Result<()> {
        for sink in &mut self.sinks {
            sink.batch_end()?;
        }
        Ok(())
    }

    /// Drains every record currently in the ring, and the kernel's log.
    fn drain(&mut self, ring: &mut Ring) -> io::Result<Flow> {
        ring.drain_log();
        let mut flow = Flow::Continue;
        let mut read = false;
        while let Some(item) = ring.next_record() {
            read = true;
            if self.record(&item)? == Flow::Stop {
                flow = Flow::Stop;
                break;
            }
        }
        // The poll timer mostly finds the ring empty: no flush for nothing.
        if read {
            self.batch_end()?;
        }
        Ok(flow)
    }

    fn tick(&mut self, tracer: Option<&Tracer>) {
        let tick = Tick {
            now_ns: monotonic_ns(),
            stats: self.stats,
            kernel: tracer.map(Tracer::counters).unwrap_or_default(),
            time_wait_overflows: self.read_time_wait_overflows(),
        };
        for sink in &mut self.sinks {
            sink.tick(&tick);
        }
    }

    /// How much each namespace's TIME_WAIT overflow count grew since it was last read, for
    /// the namespaces where TIME_WAITs were inferred since the last tick.
    fn read_time_wait_overflows(&mut self) -> Vec<(u32, u64)> {
        let Some(namespaces) = &mut self.time_wait_namespaces else {
            return Vec::new();
        };
        let mut grew = Vec::new();
        for netns in namespaces.drain() {
            let path = if Some(netns) == self.own_netns {
                None
            } else {
                match self.paths.get(&netns) {
                    Some(path) => Some(path.as_path()),
                    // No snapshot has entered it yet: nothing to compare with.
                    None => continue,
                }
            };
            let Ok(counters) = TcpCounters::read_in(path) else {
                continue;
            };
            let now = counters.get(TIME_WAIT_OVERFLOW);
            match self.time_wait_overflows_seen.insert(netns, now) {
                Some(before) if now > before => grew.push((netns, now - before)),
                _ => {}
            }
        }
        grew
    }

    /// Reads the holders of every socket that exists now: the owners of sockets and
    /// listeners older than the trace. Call it once attached and before saying so, so every
    /// connection the user makes after that finds its listener known; [`Pipeline::run`] does
    /// it otherwise.
    pub fn seed_owners(&mut self) {
        match snapshot::take(&self.scope, Request::SOCKETS) {
            Ok(snapshot) => self.seed_owners_from(&snapshot),
            Err(e) => {
                self.owners_seeded = true;
                log::warn!("cannot list the sockets that exist already: {e:#}");
            }
        }
    }

    /// As [`Pipeline::seed_owners`], from a snapshot of the scope taken just now (ids already
    /// those of transitions).
    pub fn seed_owners_from(&mut self, snapshot: &Snapshot) {
        let started = std::time::Instant::now();
        let now_ns = monotonic_ns();
        let owners = SocketOwners::scan();
        let ids = self.ids_of(&snapshot.sockets);
        let updates = self
            .owners
            .seed(&snapshot.sockets, &ids, &owners, now_ns, &mut self.pids);
        register(self.listener_map.as_mut(), &updates, now_ns);
        self.owners_seeded = true;
        log::debug!(
            "socket owners: {} listeners and {} other sockets held by a process, in {} \
             namespaces, found in {:.1} ms",
            self.owners.listeners(),
            self.owners.older_sockets(),
            snapshot.namespaces.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
    }

    /// Takes in a look at the listeners' holders.
    fn looked(&mut self, look: Look) {
        let (dump, owners) = look;
        let now_ns = monotonic_ns();
        match dump {
            Ok(snapshot) => {
                let ids = self.ids_of(&snapshot.sockets);
                let updates =
                    self.owners
                        .looked(&snapshot.sockets, &ids, &owners, now_ns, &mut self.pids);
                register(self.listener_map.as_mut(), &updates, now_ns);
            }
            Err(e) => log::debug!("cannot list the listeners: {e:#}"),
        }
    }

    /// Starts a snapshot of the scope on a blocking thread.
    fn start_snapshot(&mut self, idle: bool, stack: bool) -> JoinHandle<anyhow::Result<Snapshot>> {
        for sink in &mut self.sinks {
            sink.begin_snapshot();
        }
        let scope = self.scope.clone();
        let filter = self.snapshot_filter.clone();
        tokio::task::spawn_blocking(move || {
            let keep = filter
                .as_ref()
                .map(|f| move |s: &DiagSocket| f.matches_endpoints(&s.endpoints));
            snapshot::take(
                &scope,
                Request {
                    idle,
                    stack,
                    listeners_only: false,
                    keep: keep
                        .as_ref()
                        .map(|k| k as &(dyn Fn(&DiagSocket) -> bool + Sync)),
                },
            )
        })
    }

    /// A snapshot is in: drains the ring so every transition up to now is applied before the
    /// sinks compare (what happened during the dump is then known to be newer), then hands it
    /// to them.
    fn finish_snapshot(
        &mut self,
        ring: &mut Ring,
        dump: anyhow::Result<Snapshot>,
    ) -> io::Result<Flow> {
        let flow = self.drain(ring)?;
        match dump {
            // A failed dump says nothing about which sockets exist: the sinks keep their view
            // (an empty list would read as "every socket closed").
            Err(e) => {
                log::warn!("snapshot failed: {e:#}");
                self.stats.snapshot_errors += 1;
            }
            Ok(mut snapshot) => {
                if let Some(why) = &snapshot.failure {
                    // Namespaces come and go; one that cannot be entered stays so: say it once.
                    if self.warned_namespaces {
                        log::debug!("{} namespaces not dumped: {why}", snapshot.failed);
                    } else {
                        self.warned_namespaces = true;
                        log::warn!(
                            "{} network namespaces could not be dumped, their sockets are counted \
                             from transitions only: {why}",
                            snapshot.failed
                        );
                    }
                }
                for ns in &snapshot.namespaces {
                    let Some(inode) = ns.inode else { continue };
                    if let Some(path) = &ns.path {
                        self.paths.insert(inode, path.clone());
                    }
                    if let Some(stack) = &ns.stack {
                        self.time_wait_overflows_seen
                            .entry(inode)
                            .or_insert_with(|| stack.counters.get(TIME_WAIT_OVERFLOW));
                    }
                }
                self.match_ids(&mut snapshot);
                for sink in &mut self.sinks {
                    sink.snapshot(&snapshot);
                }
                self.stats.snapshots += 1;
            }
        }
        Ok(flow)
    }

    /// Reads the ring until `stop` completes, a sink is done, or output is closed. Records
    /// already in the ring when `stop` fires are still delivered.
    pub async fn run(
        &mut self,
        ring: Ring,
        stop: impl Future<Output = ()>,
        options: RunOptions<'_>,
    ) -> io::Result<StopReason> {
        let RunOptions {
            tick: tick_every,
            snapshots,
            snapshot_idle,
            snapshot_stack,
            time_wait_overflows,
            tracer,
        } = options;
        if time_wait_overflows {
            self.time_wait_namespaces = Some(HashSet::new());
        }
        let mut ring: AsyncFd<Ring> = ring.into_async()?;
        let mut exits = self.pids.take_exits();
        if !self.owners_seeded {
            self.seed_owners();
        }
        tokio::pin!(stop);
        let far = Duration::from_secs(365 * 24 * 3600);
        let mut tick = tokio::time::interval(tick_every.unwrap_or(far));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let every = match snapshots {
            Snapshots::Every(interval) => Some(interval),
            Snapshots::Never => None,
        };
        let mut snapshot_timer = tokio::time::interval(every.unwrap_or(far));
        snapshot_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Intervals fire at once; the first snapshot (the seed) starts now.
        snapshot_timer.tick().await;
        let mut snapshot_job = every.map(|_| self.start_snapshot(snapshot_idle, snapshot_stack));
        let mut look_job: Option<JoinHandle<(Look, Duration)>> = None;
        let mut owner_timer = tokio::time::interval(OWNER_TICK);
        owner_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = tokio::time::interval(RING_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                // Exits first: a record read after an exit is judged knowing it.
                biased;
                Some((pid, at_ns)) = async { exits.as_mut().expect("guarded").recv().await },
                    if exits.is_some() =>
                {
                    self.pids.exited(pid, at_ns);
                    self.owners.exited(pid, at_ns);
                }
                _ = poll.tick() => {
                    match self.drain(ring.get_mut()) {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Stop) => break Ok(StopReason::SinkDone),
                        Err(e) => break Err(e),
                    }
                }
                _ = tick.tick(), if tick_every.is_some() => {
                    self.tick(tracer);
                }
                _ = snapshot_timer.tick(), if every.is_some() && snapshot_job.is_none() => {
                    snapshot_job = Some(self.start_snapshot(snapshot_idle, snapshot_stack));
                }
                dump = async { snapshot_job.as_mut().expect("guarded").await },
                    if snapshot_job.is_some() =>
                {
                    snapshot_job = None;
                    let dump = dump.unwrap_or_else(|e| Err(anyhow::anyhow!("snapshot thread: {e}")));
                    match self.finish_snapshot(ring.get_mut(), dump) {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Stop) => break Ok(StopReason::SinkDone),
                        Err(e) => break Err(e),
                    }
                }
                _ = owner_timer.tick() => {
                    let now_ns = monotonic_ns();
                    self.owners.expire(now_ns);
                    if look_job.is_none() && now_ns >= self.next_look_ns && self.owners.look_due(now_ns) {
                        let scope = self.scope.clone();
                        let roots = self.owners.look_roots(now_ns, &mut self.pids);
                        look_job = Some(tokio::task::spawn_blocking(move || {
                            let started = std::time::Instant::now();
                            let listeners = snapshot::take(&scope, Request::LISTENERS);
                            let inodes: HashSet<u32> = listeners
                                .iter()
                                .flat_map(|l| l.sockets.iter().map(|s| s.inode))
                                .collect();
                            let owners = SocketOwners::scan_where(
                                |i| inodes.contains(&i),
                                roots.as_deref(),
                            );
                            let look = (listeners, owners);
                            (look, started.elapsed())
                        }));
                    }
                }
                look = async { look_job.as_mut().expect("guarded").await }, if look_job.is_some() => {
                    look_job = None;
                    if let Ok((look, took)) = look {
                        self.next_look_ns = monotonic_ns() + (20 * took).max(OWNER_TICK).as_nanos() as u64;
                        self.looked(look);
                    }
                }
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    // Clear before draining: the kernel wakes the reader only when it has
                    // caught up (bpf_ringbuf_commit), so a record committed after the last
                    // read but before a later clear would lose its wakeup and sit in the ring.
                    guard.clear_ready();
                    let flow = self.drain(guard.get_inner_mut());
                    match flow {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Stop) => break Ok(StopReason::SinkDone),
                        Err(e) => break Err(e),
                    }
                }
                () = &mut stop => {
                    break match self.drain(ring.get_mut()) {
                        Ok(Flow::Stop) => Ok(StopReason::SinkDone),
                        Ok(Flow::Continue) => Ok(StopReason::Requested),
                        Err(e) => Err(e),
                    };
                }
            }
        };
        self.stats.kernel_log_received = ring.get_ref().log_received().unwrap_or(0);
        let now_ns = monotonic_ns();
        let result = result.and_then(|reason| {
            for sink in &mut self.sinks {
                sink.finish(now_ns)?;
            }
            Ok(reason)
        });
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(StopReason::OutputClosed),
            other => other,
        }
    }
}

/// Writes holder changes into the kernel's listener map.
fn register(map: Option<&mut ListenerMap>, updates: &[ListenerUpdate], now_ns: u64) {
    if let Some(map) = map {
        for u in updates {
            map.set(u.cookie, u.id, &u.holder, now_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::raw_v4;
    use std::sync::{Arc, Mutex};
    use zerocopy::IntoBytes as _;

    struct Collect {
        seen: Arc<Mutex<Vec<Transition>>>,
        stop_after: usize,
    }

    impl Sink for Collect {
        fn transition(&mut self, t: &Transition, _: Option<&CgroupInfo>) -> io::Result<Flow> {
            let mut seen = self.seen.lock().unwrap();
            seen.push(*t);
            Ok(if seen.len() >= self.stop_after {
                Flow::Stop
            } else {
                Flow::Continue
            })
        }
    }

    fn bytes(raw: &tcptrace_common::RawTransition) -> Vec<u8> {
        raw.as_bytes().to_vec()
    }

    #[test]
    fn decodes_filters_counts_and_stops() {
        let filter = Filter {
            addrs: vec!["10.0.0.0/8".parse().unwrap()],
            ..Default::default()
        };
        let mut p = Pipeline::new(&filter, Scope::Own);
        let seen = Arc::new(Mutex::new(Vec::new()));
        p.subscribe(Box::new(Collect {
            seen: seen.clone(),
            stop_after: 2,
        }));
        let good = bytes(&raw_v4());
        let mut other = raw_v4();
        other.daddr[..4].copy_from_slice(&[192, 0, 2, 1]);
        let other = bytes(&other);

        assert_eq!(p.record(&good).unwrap(), Flow::Continue);
        assert_eq!(p.record(&good[..10]).unwrap(), Flow::Continue);
        assert_eq!(p.record(&other).unwrap(), Flow::Continue);
        assert_eq!(p.record(&good).unwrap(), Flow::Stop);
        assert_eq!(
            p.stats,
            Stats {
                received: 4,
                decode_errors: 1,
                filtered: 1,
                delivered: 2,
                ..Stats::default()
            }
        );
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn kernel_only_filters_are_not_rechecked() {
        let filter = Filter {
            lports: vec![1],
            ..Default::default()
        };
        let mut p = Pipeline::new(&filter, Scope::Own);
        p.record(&bytes(&raw_v4())).unwrap();
        assert_eq!(p.stats.filtered, 0);
        assert_eq!(p.stats.delivered, 1);
    }
}
