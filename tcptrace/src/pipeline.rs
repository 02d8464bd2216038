//! The agent's data flow: kernel ring -> decode -> agent-side filter -> sinks, plus the
//! periodic ticks and INET_DIAG snapshots the sinks reconcile against.
//!
//! The reader is a tokio task woken by the ring buffer's epoll readiness (and a short drain
//! timer); each wake-up drains every available record, then tells the sinks the batch ended
//! (where they flush output).

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use crate::host::cgroup::CgroupResolver;
use crate::host::clock::monotonic_ns;
use crate::host::inet_diag;
use crate::kernel::decode;
use crate::kernel::loader::{Identity, KernelCounters, Tracer};
use crate::kernel::ring::{RING_POLL, Ring};
use crate::model::cgroup::CgroupInfo;
use crate::model::filter::Filter;
use crate::model::snapshot::DiagSocket;
use crate::model::socket_ids::SocketIds;
use crate::model::transition::Transition;

/// What sinks see on each periodic tick.
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    pub now_ns: u64,
    pub stats: Stats,
    pub kernel: KernelCounters,
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
    /// [`Sink::snapshot`] happened after it.
    fn begin_snapshot(&mut self) {}

    /// An INET_DIAG snapshot taken at `taken_ns`; the first one of a run is the seed.
    fn snapshot(&mut self, _sockets: &[DiagSocket], _taken_ns: u64) {}

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

    fn snapshot(&mut self, sockets: &[DiagSocket], taken_ns: u64) {
        (**self).snapshot(sockets, taken_ns);
    }

    fn finish(&mut self, now_ns: u64) -> io::Result<()> {
        (**self).finish(now_ns)
    }
}

/// When [`Pipeline::run`] takes INET_DIAG snapshots.
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
    /// INET_DIAG snapshots taken, and how many failed.
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

/// Sinks may borrow (`'s`): a command can hand in `&mut` its own sink and read it afterwards.
pub struct Pipeline<'s> {
    filter: Option<Filter>,
    /// Applied to snapshot sockets as they are parsed, when the filter names endpoints.
    snapshot_filter: Option<Filter>,
    /// Sockets the last snapshot kept: the next one's size when /proc/net/sockstat is unreadable.
    snapshot_len: usize,
    cgroups: Option<CgroupResolver>,
    /// Set when transition ids are not socket cookies: snapshots are matched by address.
    ids: Option<SocketIds>,
    sinks: Vec<Box<dyn Sink + Send + 's>>,
    pub stats: Stats,
}

impl<'s> Pipeline<'s> {
    /// `filter` is applied in the agent only when it has parts the kernel cannot apply.
    pub fn new(filter: &Filter) -> Self {
        Self {
            filter: filter.has_agent_part().then(|| filter.clone()),
            snapshot_filter: filter.constrains_endpoints().then(|| filter.clone()),
            snapshot_len: 0,
            cgroups: filter.needs_cgroup().then(CgroupResolver::new),
            ids: None,
            sinks: Vec::new(),
            stats: Stats::default(),
        }
    }

    pub fn subscribe(&mut self, sink: Box<dyn Sink + Send + 's>) {
        self.sinks.push(sink);
    }

    /// Tells the pipeline what transition ids are on this kernel; snapshots it takes (of the
    /// namespace `snapshot_netns`) then carry the same ids.
    pub fn identity(&mut self, identity: Identity, snapshot_netns: Option<u32>) {
        self.ids = match identity {
            Identity::Cookie => None,
            Identity::Numbered => Some(SocketIds::new(snapshot_netns)),
        };
    }

    /// Gives the sockets of a snapshot taken at `taken_ns` the ids transitions use.
    pub fn match_ids(&mut self, sockets: &mut [DiagSocket], taken_ns: u64) {
        if let Some(ids) = &mut self.ids {
            ids.translate(sockets, taken_ns);
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
        let t = match decode::decode(bytes) {
            Ok(t) => t,
            Err(_) => {
                self.stats.decode_errors += 1;
                return Ok(Flow::Continue);
            }
        };
        if let Some(ids) = &mut self.ids {
            ids.observe(&t);
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
        };
        for sink in &mut self.sinks {
            sink.tick(&tick);
        }
    }

    /// Dumps the sockets the filter's endpoint parts accept (sinks judge states and owners
    /// themselves; a socket's endpoints hold for its whole life, so no sink misses one it
    /// tracks). The list is sized up front from the kernel's socket count: a list grown by
    /// doubling holds up to twice what it needs, at 100k sockets megabytes (room reserved but
    /// not filled, as when a filter keeps few sockets, is never touched and costs no memory).
    fn dump(&self, idle: bool) -> io::Result<Vec<DiagSocket>> {
        let expected = inet_diag::tcp_socket_count().unwrap_or(self.snapshot_len);
        // Room for sockets opened meanwhile, and request sockets, which the count leaves out.
        let capacity = expected + expected / 16 + 64;
        let filter = self.snapshot_filter.as_ref();
        inet_diag::dump_tcp_where(idle, capacity, &mut |s| {
            filter.is_none_or(|f| f.matches_endpoints(&s.endpoints))
        })
    }

    /// Takes a snapshot, then drains the ring so that every transition up to now is applied
    /// before the sinks compare: what happened during the dump is then known to be newer.
    fn snapshot(&mut self, ring: &mut Ring, idle: bool) -> io::Result<Flow> {
        for sink in &mut self.sinks {
            sink.begin_snapshot();
        }
        let taken_ns = monotonic_ns();
        let dump = self.dump(idle);
        let flow = self.drain(ring)?;
        match dump {
            // A failed dump says nothing about which sockets exist: the sinks keep their view
            // (an empty list would read as "every socket closed").
            Err(e) => {
                log::warn!("INET_DIAG snapshot failed: {e}");
                self.stats.snapshot_errors += 1;
            }
            Ok(mut sockets) => {
                self.snapshot_len = sockets.len();
                self.match_ids(&mut sockets, taken_ns);
                for sink in &mut self.sinks {
                    sink.snapshot(&sockets, taken_ns);
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
        let mut ring: AsyncFd<Ring> = ring.into_async()?;
        tokio::pin!(stop);
        let far = Duration::from_secs(365 * 24 * 3600);
        let mut tick = tokio::time::interval(options.tick.unwrap_or(far));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let every = match options.snapshots {
            Snapshots::Every(interval) => Some(interval),
            Snapshots::Never => None,
        };
        let mut snapshot = tokio::time::interval(every.unwrap_or(far));
        snapshot.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Intervals fire at once; consume the first snapshot tick here as the seed.
        snapshot.tick().await;
        if options.snapshots != Snapshots::Never
            && self.snapshot(ring.get_mut(), options.snapshot_idle)? == Flow::Stop
        {
            return Ok(StopReason::SinkDone);
        }
        let mut poll = tokio::time::interval(RING_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                _ = poll.tick() => {
                    match self.drain(ring.get_mut()) {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Stop) => break Ok(StopReason::SinkDone),
                        Err(e) => break Err(e),
                    }
                }
                _ = tick.tick(), if options.tick.is_some() => {
                    self.tick(options.tracer);
                }
                _ = snapshot.tick(), if every.is_some() => {
                    match self.snapshot(ring.get_mut(), options.snapshot_idle) {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Stop) => break Ok(StopReason::SinkDone),
                        Err(e) => break Err(e),
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
        let mut p = Pipeline::new(&filter);
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
        let mut p = Pipeline::new(&filter);
        p.record(&bytes(&raw_v4())).unwrap();
        assert_eq!(p.stats.filtered, 0);
        assert_eq!(p.stats.delivered, 1);
    }
}
