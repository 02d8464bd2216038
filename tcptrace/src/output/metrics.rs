//! Prometheus metrics: what `tcptrace serve` exports. Names and labels are a contract
//! documented in the README.
//!
//! The event thread updates counters and histograms per transition through handles resolved
//! once (no label lookups or allocation per event), and publishes gauges once per tick. The
//! HTTP side only gathers and encodes.

use std::sync::Arc;

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::diagnosis::Finding;
use crate::diagnosis::evidence::LazyOwners;
use crate::diagnosis::window::Window;
use crate::host::clock::monotonic_ns;
use crate::kernel::loader::KernelCounters;
use crate::model::cgroup::CgroupInfo;
use crate::model::connections::{Connection, Listeners, Role};
use crate::model::snapshot::Snapshot;
use crate::model::sockets::{Origin, SocketTable};
use crate::model::tcp::{STATE_SLOTS, TcpState};
use crate::model::transition::Transition;
use crate::output::diagram::Gaps;
use crate::output::picture::{Inputs, Sampler};
use crate::pipeline::{Flow, Sink, Tick};

/// One bucket set for every duration, 10 µs to 4 h: 1-2.5-5 steps per decade up to 10 s
/// (loopback handshakes take tens of µs, LAN ones hundreds, WAN ones tens of ms), then the
/// landmarks of TCP timers: 30 s, 1 min (TIME_WAIT, tcp_fin_timeout), 2 and 5 min, 10 and 30
/// min, 1 h, 2 h (keepalive), 4 h. 28 buckets.
pub const DURATION_BUCKETS: [f64; 28] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    7200.0, 14400.0,
];

/// States a socket can be found in (CLOSE and NEW_SYN_RECV are not socket states INET_DIAG
/// reports or that a socket stays in).
pub const GAUGE_STATES: [TcpState; 10] = [
    TcpState::Established,
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::TimeWait,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::Listen,
    TcpState::Closing,
];

/// The registry and every metric handle.
pub struct Metrics {
    registry: Registry,
    transitions: IntCounterVec,
    state_duration: HistogramVec,
    handshake_client: Histogram,
    handshake_server: Histogram,
    connect_failures: IntCounter,
    sockets: IntGaugeVec,
    /// Per namespace, when asked for (`--metrics.namespace-limit`): that many namespaces.
    namespace_sockets: Option<(IntGaugeVec, usize)>,
    time_wait_overflows: IntCounter,
    oldest: prometheus::GaugeVec,
    lost_ring_full: IntCounter,
    lost_recursion: IntCounter,
    decode_errors: IntCounter,
    events: IntCounter,
    kernel_sent: IntCounter,
    reconcile_corrections: IntCounter,
    reconciles: IntCounter,
    /// Wall time of each reconcile, from the snapshot's first dump to the gauges published.
    reconcile_duration: Histogram,
    snapshot_errors: IntCounter,
    tracked_overflow: IntCounter,
    dwell_forgotten: IntCounter,
    connection_duration: HistogramVec,
    connection_bytes: IntCounterVec,
    connection_retransmits: IntCounterVec,
    connection_rtt: HistogramVec,
    connections_closed: IntCounterVec,
    /// Per local listening port, when asked for (`--metrics.port-limit`).
    ports: Option<PortMetrics>,
    connections_evicted: IntCounter,
    findings: IntGaugeVec,
    finding_evaluations: IntCounter,
}

/// Registers a metric and returns its handle.
fn registered<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<C>,
) -> C {
    let metric = must(metric);
    must(registry.register(Box::new(metric.clone())));
    metric
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; an error here is a programming error caught by tests.
    r.unwrap_or_else(|e| panic!("invalid metric definition: {e}"))
}

/// The per-port metrics and how many ports get a label of their own.
struct PortMetrics {
    limit: usize,
    sockets: IntGaugeVec,
    transitions: IntCounterVec,
    handshake: HistogramVec,
}

/// Which breakdowns `serve` exports besides the host-wide metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Breakdowns {
    /// Namespaces with socket gauges of their own (`--metrics.namespace-limit`; 0: none).
    pub namespaces: u64,
    /// Local listening ports with metrics of their own (`--metrics.port-limit`; 0: none).
    pub ports: u64,
}

impl Metrics {
    /// Every metric, with the breakdowns asked for.
    pub fn new(breakdowns: Breakdowns) -> Arc<Self> {
        let namespace_limit = breakdowns.namespaces;
        let registry = Registry::new();
        let counter = |name: &str, help: &str| registered(&registry, IntCounter::new(name, help));
        let duration_opts = |name: &str, help: &str| {
            HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec())
        };

        let transitions = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "tcptrace_transitions_total",
                    "TCP state transitions observed, by old and new state.",
                ),
                &["from", "to"],
            ),
        );
        let state_duration = registered(
            &registry,
            HistogramVec::new(
                duration_opts(
                    "tcptrace_state_duration_seconds",
                    "Time sockets spent in a state before leaving it (only when the entry time is known).",
                ),
                &["state"],
            ),
        );
        let handshake = registered(
            &registry,
            HistogramVec::new(
                duration_opts(
                    "tcptrace_handshake_duration_seconds",
                    "TCP handshake time: SYN_SENT -> ESTABLISHED (client); the first SYN-ACK sent -> ESTABLISHED (server, when the kernel program found the connection's request).",
                ),
                &["role"],
            ),
        );
        let sockets = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "tcptrace_sockets",
                    "TCP sockets currently in each state in the traced network namespaces: every namespace on the host, or the one --netns/--netns-path names (TIME_WAIT included, never more than each namespace's tcp_max_tw_buckets).",
                ),
                &["state"],
            ),
        );
        let namespace_sockets = (namespace_limit > 0).then(|| {
            let gauges = registered(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "tcptrace_namespace_sockets",
                        "TCP sockets in each state per network namespace, for the namespaces with the most sockets (--metrics.namespace-limit); the rest are summed under netns=\"other\".",
                    ),
                    &["netns", "namespace", "state"],
                ),
            );
            (gauges, namespace_limit as usize)
        });
        let oldest = registered(
            &registry,
            prometheus::GaugeVec::new(
                Opts::new(
                    "tcptrace_state_oldest_seconds",
                    "Age in its current state of the oldest socket whose entry time is known; 0 when none.",
                ),
                &["state"],
            ),
        );
        let lost = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "tcptrace_lost_events_total",
                    "Transitions lost before reaching the agent: ring buffer full, or program runs the kernel skipped (recursion).",
                ),
                &["reason"],
            ),
        );
        let build_info = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "tcptrace_build_info",
                    "tcptrace build information; always 1.",
                ),
                &["version"],
            ),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let connection_duration = registered(
            &registry,
            HistogramVec::new(
                duration_opts(
                    "tcptrace_connection_duration_seconds",
                    "Connection lifetime from SYN to the full socket's CLOSE (TIME_WAIT excluded).",
                ),
                &["role"],
            ),
        );
        let connection_bytes = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "tcptrace_connection_bytes_total",
                    "Bytes closed connections carried, counted at their close: sent and acknowledged (direction=\"tx\", tcp_sock.bytes_acked) and received (\"rx\", bytes_received).",
                ),
                &["role", "direction"],
            ),
        );
        let connection_retransmits = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "tcptrace_connection_retransmits_total",
                    "Segments closed connections retransmitted over their life (tcp_sock.total_retrans), counted at their close.",
                ),
                &["role"],
            ),
        );
        let connection_rtt = registered(
            &registry,
            HistogramVec::new(
                duration_opts(
                    "tcptrace_connection_rtt_seconds",
                    "Smoothed RTT of each closed connection at its close (tcp_sock.srtt_us); connections with no RTT sample are not observed.",
                ),
                &["role"],
            ),
        );
        let reconcile_duration = registered(
            &registry,
            Histogram::with_opts(duration_opts(
                "tcptrace_reconcile_duration_seconds",
                "Wall time of each reconcile: the INET_DIAG snapshot of every traced namespace, its comparison with the tracked sockets and the gauges published (on the agent's own threads, never the ring reader's).",
            )),
        );
        let ports = (breakdowns.ports > 0).then(|| PortMetrics {
            limit: breakdowns.ports as usize,
            sockets: registered(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "tcptrace_port_sockets",
                        "Sockets in each state on a local listening port (the listener and its connections: the service), for the first --metrics.port-limit ports seen listening; the rest are summed under port=\"other\". Never an ephemeral port.",
                    ),
                    &["port", "state"],
                ),
            ),
            transitions: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "tcptrace_port_transitions_total",
                        "State transitions of sockets on a local listening port, as tcptrace_transitions_total.",
                    ),
                    &["port", "from", "to"],
                ),
            ),
            handshake: registered(
                &registry,
                HistogramVec::new(
                    duration_opts(
                        "tcptrace_port_handshake_duration_seconds",
                        "Server handshakes per local listening port, as tcptrace_handshake_duration_seconds{role=\"server\"}.",
                    ),
                    &["port"],
                ),
            ),
        });
        let connections_closed = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "tcptrace_connections_closed_total",
                    "Connections closed, by role, who closed first and how they ended (see README).",
                ),
                &["role", "closed_by", "end"],
            ),
        );

        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        must(registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )));

        let metrics = Self {
            transitions,
            state_duration,
            handshake_client: handshake.with_label_values(&["client"]),
            handshake_server: handshake.with_label_values(&["server"]),
            connect_failures: counter(
                "tcptrace_connect_failures_total",
                "Connects that failed: SYN_SENT -> CLOSE (refused, timed out, or aborted).",
            ),
            sockets,
            namespace_sockets,
            time_wait_overflows: counter(
                "tcptrace_time_wait_overflows_total",
                "Closes that found a namespace's TIME_WAIT table full (net.ipv4.tcp_max_tw_buckets) and so left no TIME_WAIT socket (the kernel's TcpExt.TCPTimeWaitOverflow, in namespaces where tcptrace saw such closes).",
            ),
            oldest,
            lost_ring_full: lost.with_label_values(&["ring_full"]),
            lost_recursion: lost.with_label_values(&["recursion"]),
            decode_errors: counter(
                "tcptrace_decode_errors_total",
                "Ring buffer records the agent could not decode.",
            ),
            events: counter(
                "tcptrace_events_processed_total",
                "Transitions the agent read from the kernel and processed.",
            ),
            kernel_sent: counter(
                "tcptrace_kernel_events_total",
                "Transitions the kernel program wrote to the ring buffer (published each second).",
            ),
            reconcile_corrections: counter(
                "tcptrace_reconcile_corrections_total",
                "Sockets whose state from transitions disagreed with an INET_DIAG snapshot and was corrected.",
            ),
            reconciles: counter(
                "tcptrace_reconciles_total",
                "INET_DIAG snapshots compared with the tracked sockets (the first one seeds them).",
            ),
            snapshot_errors: counter(
                "tcptrace_snapshot_errors_total",
                "INET_DIAG snapshots that failed.",
            ),
            tracked_overflow: counter(
                "tcptrace_tracked_sockets_overflow_total",
                "Sockets not tracked because the table was full (see --max-tracked-sockets).",
            ),
            dwell_forgotten: counter(
                "tcptrace_kernel_sockets_evicted_total",
                "Transitions whose time in state the kernel had forgotten although the agent saw the socket enter it: its --max-sockets table (LRU) evicted the socket. Their dwell is unknown, never guessed.",
            ),
            connection_duration,
            connection_bytes,
            connection_retransmits,
            connection_rtt,
            connections_closed,
            reconcile_duration,
            ports,
            connections_evicted: counter(
                "tcptrace_connections_evicted_total",
                "Connections dropped from the bounded connection table before they finished.",
            ),
            findings: registered(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "tcptrace_finding",
                        "Active doctor findings by kind and severity; the value is the number of sockets or connections concerned. A series disappears when its finding clears.",
                    ),
                    &["kind", "severity"],
                ),
            ),
            finding_evaluations: counter(
                "tcptrace_finding_evaluations_total",
                "Times the doctor findings were evaluated (once per reconcile snapshot after the first).",
            ),
            registry,
        };
        for state in GAUGE_STATES {
            metrics.sockets.with_label_values(&[state.label()]).set(0);
            metrics.oldest.with_label_values(&[state.label()]).set(0.0);
        }
        Arc::new(metrics)
    }

    /// Replaces the exported findings with `findings` (cleared ones disappear).
    pub fn set_findings(&self, findings: &[Finding]) {
        self.findings.reset();
        for f in findings {
            self.findings
                .with_label_values(&[f.kind.name(), f.severity.name()])
                .add(f.count.min(i64::MAX as u64) as i64);
        }
        self.finding_evaluations.inc();
    }

    /// Every `tcptrace_transitions_total` series: from, to, count since start. Read, never
    /// created: the exported series stay those transitions made.
    pub fn transition_counts(&self) -> Vec<(TcpState, TcpState, u64)> {
        let mut out = Vec::new();
        for family in prometheus::core::Collector::collect(&self.transitions) {
            for m in family.get_metric() {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .and_then(|l| l.value().parse::<TcpState>().ok())
                };
                if let (Some(from), Some(to)) = (label("from"), label("to")) {
                    out.push((from, to, m.get_counter().get_value() as u64));
                }
            }
        }
        out
    }

    /// Each state's `tcptrace_state_duration_seconds` histogram: the cumulative count of each
    /// of [`DURATION_BUCKETS`] and the total count, since start (states no socket left yet
    /// are absent).
    pub fn dwell_histograms(&self) -> Vec<(TcpState, Vec<u64>, u64)> {
        let mut out = Vec::new();
        for family in prometheus::core::Collector::collect(&self.state_duration) {
            for m in family.get_metric() {
                let Some(state) = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "state")
                    .and_then(|l| l.value().parse::<TcpState>().ok())
                else {
                    continue;
                };
                let h = m.get_histogram();
                let buckets = h.get_bucket().iter().map(|b| b.cumulative_count());
                out.push((state, buckets.collect(), h.get_sample_count()));
            }
        }
        out
    }

    /// What the agent lost or corrected since start, as exported.
    pub fn gaps(&self) -> Gaps {
        Gaps {
            lost_ring_full: self.lost_ring_full.get(),
            lost_recursion: self.lost_recursion.get(),
            unreadable: self.decode_errors.get(),
            corrections: self.reconcile_corrections.get(),
            reconciles: self.reconciles.get(),
            snapshot_errors: self.snapshot_errors.get(),
            untracked: self.tracked_overflow.get(),
        }
    }

    /// The text exposition format (version 0.0.4) of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 * 1024);
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Keeps the metrics current from transitions, ticks and snapshots.
pub struct MetricsSink {
    metrics: Arc<Metrics>,
    table: SocketTable,
    /// Doctor's findings over each reconcile interval, for `tcptrace_finding`; also tells how
    /// each connection closed.
    window: Window,
    /// `[old][new]` handles, created on first use.
    transitions: [[Option<IntCounter>; STATE_SLOTS]; STATE_SLOTS],
    durations: [Option<Histogram>; STATE_SLOTS],
    seeded: bool,
    /// Told once the first snapshot has been applied (the gauges are meaningful from then on).
    on_seeded: Option<std::sync::mpsc::Sender<()>>,
    last_kernel: KernelCounters,
    last_decode_errors: u64,
    last_overflow: u64,
    last_snapshot_errors: u64,
    last_evicted: u64,
    last_sent: u64,
    /// Namespace names from snapshots, for the per-namespace gauges.
    names: std::collections::HashMap<u32, String>,
    /// The per-namespace series last published, to remove those that went away.
    published: Vec<(String, String)>,
    /// For the per-port metrics: which ports listen, and which of them have a label.
    listening: Listeners,
    port_labels: Vec<u16>,
    /// The findings of the last evaluation, most severe first.
    findings: Vec<Finding>,
    /// TIME_WAIT sockets the table let expire, since start.
    expired_time_waits: u64,
    /// Samples the state diagram at every tick and snapshot, when asked for.
    diagram: Option<Sampler>,
}

impl MetricsSink {
    /// `window` evaluates the findings at every snapshot after the seed (snapshots should
    /// then carry idle times).
    pub fn new(metrics: Arc<Metrics>, table: SocketTable, window: Window) -> Self {
        Self {
            metrics,
            table,
            window,
            transitions: Default::default(),
            durations: Default::default(),
            seeded: false,
            on_seeded: None,
            last_kernel: Default::default(),
            last_decode_errors: 0,
            last_overflow: 0,
            last_snapshot_errors: 0,
            last_evicted: 0,
            last_sent: 0,
            names: std::collections::HashMap::new(),
            published: Vec::new(),
            listening: Listeners::default(),
            port_labels: Vec::new(),
            findings: Vec::new(),
            expired_time_waits: 0,
            diagram: None,
        }
    }

    /// The label of local port `port` for the per-port metrics: the port itself for the
    /// first ports seen listening (as many as allowed), `other` for later listening ports,
    /// `None` when nothing listens on it (a client's ephemeral port never gets a series).
    fn port_label(&mut self, netns: Option<u32>, port: u16) -> Option<String> {
        let limit = self.metrics.ports.as_ref()?.limit;
        if !self.listening.contains(netns, port) {
            return None;
        }
        if self.port_labels.contains(&port) {
            return Some(port.to_string());
        }
        if self.port_labels.len() < limit {
            self.port_labels.push(port);
            return Some(port.to_string());
        }
        Some("other".to_owned())
    }

    /// Per-port gauges: each labelled port's sockets, and the other listening ports' summed.
    fn publish_ports(&self) {
        let Some(ports) = &self.metrics.ports else {
            return;
        };
        let mut others: Vec<u16> = self
            .listening
            .ports()
            .filter(|p| !self.port_labels.contains(p))
            .collect();
        others.sort_unstable();
        others.dedup();
        for state in GAUGE_STATES {
            for &port in &self.port_labels {
                let n = self.table.count_on(port, state).min(i64::MAX as u64) as i64;
                ports
                    .sockets
                    .with_label_values(&[&port.to_string(), state.label()])
                    .set(n);
            }
            if !others.is_empty() {
                let n: u64 = others.iter().map(|&p| self.table.count_on(p, state)).sum();
                ports
                    .sockets
                    .with_label_values(&["other", state.label()])
                    .set(n.min(i64::MAX as u64) as i64);
            }
        }
    }

    /// Also samples the state diagram (`top`, serve's web page) at every tick and snapshot.
    pub fn with_diagram(mut self, sampler: Sampler) -> Self {
        self.diagram = Some(sampler);
        self
    }

    /// Samples the diagram, if asked for, as of `now_ns` (the gauges were just published
    /// with `oldest`); `rates`: a tick (an interval of rates ends), else a snapshot.
    fn sample(&mut self, now_ns: u64, oldest: &[Option<u64>; STATE_SLOTS], rates: bool) {
        if let Some(sampler) = &mut self.diagram {
            sampler.sample(
                &Inputs {
                    now_ns,
                    table: &self.table,
                    metrics: &self.metrics,
                    window: &self.window,
                    findings: &self.findings,
                    seeded: self.seeded,
                    expired_time_waits: self.expired_time_waits,
                    oldest,
                },
                rates,
            );
        }
    }

    fn closed(&self, c: &Connection) {
        let role = c.role.name();
        if let Some(ns) = c.lifetime_ns() {
            self.metrics
                .connection_duration
                .with_label_values(&[role])
                .observe(ns as f64 / 1e9);
        }
        let end = c.end.map_or("unknown", |e| e.name());
        self.metrics
            .connections_closed
            .with_label_values(&[role, c.closed_by.name(), end])
            .inc();
        if let Some(x) = c.carried {
            let m = &self.metrics;
            if let Some(tx) = c.tx_bytes() {
                m.connection_bytes
                    .with_label_values(&[role, "tx"])
                    .inc_by(tx);
            }
            m.connection_bytes
                .with_label_values(&[role, "rx"])
                .inc_by(x.rx_bytes());
            m.connection_retransmits
                .with_label_values(&[role])
                .inc_by(u64::from(x.retransmits));
            if let Some(us) = x.srtt_us {
                m.connection_rtt
                    .with_label_values(&[role])
                    .observe(f64::from(us) / 1e6);
            }
        }
    }

    /// Ends the diagnosis window at this snapshot (exporting its findings) and starts the
    /// next one.
    fn evaluate_findings(&mut self, snapshot: &Snapshot) {
        if let Some(evaluation) = self.window.evaluate(snapshot, &mut LazyOwners::default()) {
            self.metrics.set_findings(&evaluation.findings);
            self.findings = evaluation.findings;
        }
        self.window.restart(snapshot);
    }

    /// `tx` receives one message once the seed snapshot has been applied.
    pub fn notify_seeded(mut self, tx: std::sync::mpsc::Sender<()>) -> Self {
        self.on_seeded = Some(tx);
        self
    }

    /// Publishes the socket gauges; returns each state's oldest age (ns), which it computed.
    fn publish_gauges(&mut self, now_ns: u64) -> [Option<u64>; STATE_SLOTS] {
        let oldest = self.table.oldest(now_ns);
        for state in GAUGE_STATES {
            let count = self.table.count(state).min(i64::MAX as u64) as i64;
            self.metrics
                .sockets
                .with_label_values(&[state.label()])
                .set(count);
            let age = oldest[state.slot()].map_or(0.0, |ns| ns as f64 / 1e9);
            self.metrics
                .oldest
                .with_label_values(&[state.label()])
                .set(age);
        }
        self.publish_namespaces();
        self.publish_ports();
        oldest
    }

    /// The per-namespace gauges: the namespaces with the most sockets, the rest as "other".
    fn publish_namespaces(&mut self) {
        let Some((gauges, limit)) = &self.metrics.namespace_sockets else {
            return;
        };
        let namespaces = self.table.namespaces();
        let mut now: Vec<(String, String)> = Vec::new();
        for &(netns, _) in namespaces.iter().take(*limit) {
            let name = self.names.get(&netns).cloned().unwrap_or_default();
            let inode = if netns == 0 {
                "unknown".to_owned()
            } else {
                netns.to_string()
            };
            for state in GAUGE_STATES {
                let count = self.table.count_in(netns, state).min(i64::MAX as u64) as i64;
                gauges
                    .with_label_values(&[&inode, &name, state.label()])
                    .set(count);
            }
            now.push((inode, name));
        }
        if namespaces.len() > *limit {
            for state in GAUGE_STATES {
                let rest: u64 = namespaces[*limit..]
                    .iter()
                    .map(|&(netns, _)| self.table.count_in(netns, state))
                    .sum();
                gauges
                    .with_label_values(&["other", "", state.label()])
                    .set(rest.min(i64::MAX as u64) as i64);
            }
            now.push(("other".to_owned(), String::new()));
        }
        for (inode, name) in &self.published {
            if !now.contains(&(inode.clone(), name.clone())) {
                for state in GAUGE_STATES {
                    let _ = gauges.remove_label_values(&[inode, name, state.label()]);
                }
            }
        }
        self.published = now;
    }
}

/// Connections a serve window remembers: as many as the socket table tracks, within bounds.
pub fn window_capacity(max_tracked_sockets: usize) -> usize {
    max_tracked_sockets.clamp(1024, 1 << 20)
}

fn add_delta(counter: &IntCounter, last: &mut u64, now: u64) {
    // Counters only move forward, even if a source were to go backwards.
    if now > *last {
        counter.inc_by(now - *last);
        *last = now;
    }
}

impl Sink for MetricsSink {
    fn transition(
        &mut self,
        t: &Transition,
        _cgroup: Option<&CgroupInfo>,
    ) -> std::io::Result<Flow> {
        // Connections are judged whole (the window's filter), transitions one by one.
        if let Some(c) = self.window.observe(t)
            && c.role != Role::Listener
        {
            self.closed(&c);
        }
        if !self.window.filter().matches_event(t) {
            return Ok(Flow::Continue);
        }
        if self.metrics.ports.is_some() {
            // A port listens from its `-> LISTEN` on, up to and including its `LISTEN -> CLOSE`.
            let (netns, port) = (t.netns, t.endpoints.local_port);
            let before = (t.new != TcpState::Listen)
                .then(|| self.port_label(netns, port))
                .flatten();
            self.listening.apply(t);
            let label = if t.new == TcpState::Listen {
                self.port_label(netns, port)
            } else {
                before
            };
            if let Some(label) = label
                && let Some(ports) = &self.metrics.ports
            {
                ports
                    .transitions
                    .with_label_values(&[&label, t.old.label(), t.new.label()])
                    .inc();
                if let Some(ns) = t.server_handshake_ns() {
                    ports
                        .handshake
                        .with_label_values(&[&label])
                        .observe(ns as f64 / 1e9);
                }
            }
        }
        let m = &self.metrics;
        m.events.inc();
        let (old, new) = (t.old.slot(), t.new.slot());
        self.transitions[old][new]
            .get_or_insert_with(|| {
                m.transitions
                    .with_label_values(&[t.old.label(), t.new.label()])
            })
            .inc();
        if let Some(ns) = t.in_old_ns {
            let secs = ns as f64 / 1e9;
            self.durations[old]
                .get_or_insert_with(|| m.state_duration.with_label_values(&[t.old.label()]))
                .observe(secs);
            if (t.old, t.new) == (TcpState::SynSent, TcpState::Established) {
                m.handshake_client.observe(secs);
            }
        }
        // A server child's SYN_RECV lasts microseconds (it is created by the final ACK): its
        // handshake runs from the request's first SYN-ACK.
        if let Some(ns) = t.server_handshake_ns() {
            m.handshake_server.observe(ns as f64 / 1e9);
        }
        if (t.old, t.new) == (TcpState::SynSent, TcpState::Close) {
            m.connect_failures.inc();
        }
        // The agent saw this socket enter `old`, yet the kernel reports no entry time: the
        // kernel's LRU table dropped the socket (it does so silently).
        if t.in_old_ns.is_none()
            && self
                .table
                .get(t.cookie)
                .is_some_and(|e| e.origin == Origin::Event && e.state == t.old)
        {
            m.dwell_forgotten.inc();
        }
        self.table.apply(t);
        Ok(Flow::Continue)
    }

    fn tick(&mut self, tick: &Tick) {
        for &(netns, overflows) in &tick.time_wait_overflows {
            self.table.time_wait_overflowed(netns, overflows);
            self.metrics.time_wait_overflows.inc_by(overflows);
        }
        self.table.time_wait_interval();
        self.expired_time_waits += self.table.expire(tick.now_ns) as u64;
        self.window.tick(tick.now_ns);
        let oldest = self.publish_gauges(tick.now_ns);
        let m = &self.metrics;
        let k = tick.kernel;
        add_delta(
            &m.lost_ring_full,
            &mut self.last_kernel.ring_full,
            k.ring_full,
        );
        add_delta(&m.kernel_sent, &mut self.last_sent, k.sent);
        add_delta(
            &m.lost_recursion,
            &mut self.last_kernel.recursion_misses,
            k.recursion_misses,
        );
        add_delta(
            &m.decode_errors,
            &mut self.last_decode_errors,
            tick.stats.decode_errors + k.read_failed,
        );
        add_delta(
            &m.tracked_overflow,
            &mut self.last_overflow,
            self.table.overflow,
        );
        add_delta(
            &m.snapshot_errors,
            &mut self.last_snapshot_errors,
            tick.stats.snapshot_errors,
        );
        add_delta(
            &m.connections_evicted,
            &mut self.last_evicted,
            self.window.observations().evicted(),
        );
        self.sample(tick.now_ns, &oldest, true);
    }

    fn begin_snapshot(&mut self) {
        self.table.begin_reconcile();
    }

    fn snapshot(&mut self, snapshot: &Snapshot) {
        if self.metrics.ports.is_some() {
            self.listening.snapshot(snapshot);
            // Ports seen listening together get their labels lowest first: the dump's order
            // follows a per-namespace hash, and labels must not depend on it.
            let mut listening: Vec<(u16, Option<u32>)> = snapshot
                .sockets
                .iter()
                .filter(|s| s.state == TcpState::Listen)
                .map(|s| (s.endpoints.local_port, s.netns))
                .collect();
            listening.sort_unstable();
            for (port, netns) in listening {
                let _ = self.port_label(netns, port);
            }
        }
        self.names.clear();
        for ns in &snapshot.namespaces {
            if let Some(inode) = ns.inode {
                self.names.insert(inode, ns.name.clone());
            }
        }
        let report = self.table.reconcile(snapshot, !self.seeded);
        self.seeded = true;
        self.metrics.reconciles.inc();
        self.metrics
            .reconcile_corrections
            .inc_by(report.corrections);
        let now_ns = monotonic_ns();
        let oldest = self.publish_gauges(now_ns);
        self.evaluate_findings(snapshot);
        self.metrics
            .reconcile_duration
            .observe(monotonic_ns().saturating_sub(snapshot.taken_ns) as f64 / 1e9);
        if let Some(sampler) = &mut self.diagram {
            sampler.snapshot(snapshot, &self.window);
        }
        self.sample(now_ns, &oldest, false);
        if let Some(tx) = self.on_seeded.take() {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnosis::Thresholds;
    use crate::model::filter::Filter;
    use crate::testing::step;

    fn t(old: TcpState, new: TcpState, dwell: Option<u64>) -> Transition {
        step(4242, old, new).dwell(dwell).done()
    }

    fn sink(metrics: &Arc<Metrics>) -> MetricsSink {
        MetricsSink::new(
            metrics.clone(),
            SocketTable::new(100, Filter::default()),
            Window::new(100, Filter::default(), Thresholds::default()),
        )
    }

    fn scrape(m: &Metrics) -> String {
        String::from_utf8(m.render()).unwrap()
    }

    #[test]
    fn transitions_durations_handshakes_and_failures() {
        let metrics = Metrics::new(Breakdowns::default());
        let mut sink = sink(&metrics);
        use TcpState::*;
        sink.transition(&t(Close, SynSent, None), None).unwrap();
        sink.transition(&t(SynSent, Established, Some(40_000)), None)
            .unwrap();
        // A server child: its SYN_RECV dwell (7 µs) is not its handshake; its request's first
        // SYN-ACK, 1 s before, is where the handshake started.
        let mut child = t(SynRecv, Established, Some(7_000));
        child.ts_ns = 5_000_000_000;
        child.request_ns = Some(4_000_000_000);
        sink.transition(&child, None).unwrap();
        // Without the request's time, no server observation at all (never 0).
        sink.transition(&t(SynRecv, Established, Some(7_000)), None)
            .unwrap();
        sink.transition(&t(SynSent, Close, Some(3_000_000_000)), None)
            .unwrap();
        let text = scrape(&metrics);
        assert!(
            text.contains("tcptrace_transitions_total{from=\"close\",to=\"syn_sent\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tcptrace_transitions_total{from=\"syn_sent\",to=\"established\"} 1")
        );
        assert!(text.contains("tcptrace_handshake_duration_seconds_count{role=\"client\"} 1"));
        assert!(text.contains(
            "tcptrace_handshake_duration_seconds_bucket{role=\"client\",le=\"0.00005\"} 1"
        ));
        assert!(text.contains(
            "tcptrace_handshake_duration_seconds_bucket{role=\"client\",le=\"0.000025\"} 0"
        ));
        assert!(text.contains("tcptrace_handshake_duration_seconds_count{role=\"server\"} 1"));
        assert!(text.contains("tcptrace_handshake_duration_seconds_sum{role=\"server\"} 1\n"));
        assert!(text.contains("tcptrace_connect_failures_total 1"));
        assert!(
            text.contains(
                "tcptrace_connections_closed_total{closed_by=\"unknown\",end=\"timeout\",role=\"client\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("tcptrace_connection_duration_seconds_count{role=\"client\"} 1"));
        // Unknown dwell is not observed: syn_sent has 2 observations (40 µs and 3 s).
        assert!(text.contains("tcptrace_state_duration_seconds_count{state=\"syn_sent\"} 2"));
        assert!(!text.contains("tcptrace_state_duration_seconds_count{state=\"close\"}"));
        assert!(text.contains("tcptrace_events_processed_total 5"));
        assert!(text.contains("tcptrace_build_info{version=\""));
    }

    #[test]
    fn a_dwell_the_kernel_forgot_is_counted_as_an_eviction() {
        let metrics = Metrics::new(Breakdowns::default());
        let mut sink = sink(&metrics);
        use TcpState::*;
        sink.transition(&t(SynSent, Established, Some(5)), None)
            .unwrap();
        // Seen entering ESTABLISHED; the kernel then reports its exit with no entry time.
        sink.transition(&t(Established, FinWait1, None), None)
            .unwrap();
        // A socket first seen now (older than the agent): not an eviction.
        sink.transition(&step(7, Established, CloseWait).dwell(None).done(), None)
            .unwrap();
        assert!(scrape(&metrics).contains("tcptrace_kernel_sockets_evicted_total 1"));
    }

    #[test]
    fn findings_are_exported_and_cleared() {
        use crate::diagnosis::{Kind, Severity};
        let metrics = Metrics::new(Breakdowns::default());
        let finding = |kind, severity, count| Finding {
            kind,
            netns: None,
            namespace: None,
            severity,
            statement: String::new(),
            count,
            facts: Vec::new(),
            top: Vec::new(),
            examples: Vec::new(),
            settings: Vec::new(),
            advice: Vec::new(),
        };
        metrics.set_findings(&[
            finding(Kind::SynFlood, Severity::Critical, 16),
            finding(Kind::SynFlood, Severity::Critical, 4),
            finding(Kind::CloseWaitLeak, Severity::Warning, 3),
        ]);
        let text = scrape(&metrics);
        assert!(
            text.contains("tcptrace_finding{kind=\"syn_flood\",severity=\"critical\"} 20"),
            "{text}"
        );
        assert!(text.contains("tcptrace_finding{kind=\"close_wait_leak\",severity=\"warning\"} 3"));
        metrics.set_findings(&[finding(Kind::CloseWaitLeak, Severity::Critical, 100)]);
        let text = scrape(&metrics);
        assert!(
            !text.contains("syn_flood") && !text.contains("severity=\"warning\""),
            "{text}"
        );
        assert!(text.contains("tcptrace_finding_evaluations_total 2"));
    }

    #[test]
    fn gauges_losses_and_reconcile_counters() {
        let metrics = Metrics::new(Breakdowns::default());
        let mut sink = sink(&metrics);
        use TcpState::*;
        let mut est = t(SynSent, Established, Some(1));
        est.ts_ns = 1_000_000_000;
        sink.transition(&est, None).unwrap();
        let mut tick = Tick {
            now_ns: 11_000_000_000,
            stats: Default::default(),
            kernel: KernelCounters {
                ring_full: 5,
                recursion_misses: 2,
                sent: 9,
                ..Default::default()
            },
            time_wait_overflows: Vec::new(),
        };
        sink.tick(&tick);
        let text = scrape(&metrics);
        assert!(
            text.contains("tcptrace_sockets{state=\"established\"} 1"),
            "{text}"
        );
        assert!(text.contains("tcptrace_sockets{state=\"time_wait\"} 0"));
        assert!(text.contains("tcptrace_state_oldest_seconds{state=\"established\"} 10"));
        assert!(text.contains("tcptrace_lost_events_total{reason=\"ring_full\"} 5"));
        assert!(text.contains("tcptrace_lost_events_total{reason=\"recursion\"} 2"));
        assert!(text.contains("tcptrace_kernel_events_total 9"));
        // Counters stay monotonic.
        tick.kernel.ring_full = 3;
        sink.tick(&tick);
        assert!(scrape(&metrics).contains("tcptrace_lost_events_total{reason=\"ring_full\"} 5"));

        // Seed: no corrections; then a snapshot without the socket: one correction.
        sink.begin_snapshot();
        sink.snapshot(&crate::testing::snap(&[], 500_000_000));
        assert!(scrape(&metrics).contains("tcptrace_reconcile_corrections_total 0"));
        sink.begin_snapshot();
        sink.snapshot(&crate::testing::snap(&[], 20_000_000_000));
        let text = scrape(&metrics);
        assert!(
            text.contains("tcptrace_reconcile_corrections_total 1"),
            "{text}"
        );
        assert!(text.contains("tcptrace_reconciles_total 2"));
        assert!(text.contains("tcptrace_sockets{state=\"established\"} 0"));
    }

    #[test]
    fn what_connections_carried_and_per_port_metrics() {
        let metrics = Metrics::new(Breakdowns {
            namespaces: 0,
            ports: 1,
        });
        let table = SocketTable::new(100, Filter::default()).count_ports();
        let window = Window::new(100, Filter::default(), Thresholds::default());
        let mut sink = MetricsSink::new(metrics.clone(), table, window);
        use crate::testing::step;
        use TcpState::*;
        let feed = |sink: &mut MetricsSink, t: Transition| sink.transition(&t, None).unwrap();
        // Two services listen (80 gets the one label allowed, 443 is "other"); a client
        // connection from the ephemeral port 40000 to 80; its server child ends carrying
        // 1000 bytes out, 50 in, 2 retransmissions, a 0.5 ms RTT.
        feed(&mut sink, step(1, Close, Listen).ports(80, 0).done());
        feed(&mut sink, step(2, Close, Listen).ports(443, 0).done());
        feed(&mut sink, step(3, Close, SynSent).ports(40000, 80).done());
        feed(&mut sink, step(4, Listen, SynRecv).ports(80, 40000).done());
        let mut est = step(4, SynRecv, Established)
            .ports(80, 40000)
            .at(5_000_000_000)
            .done();
        est.request_ns = Some(4_999_000_000);
        feed(&mut sink, est);
        feed(&mut sink, step(5, Listen, SynRecv).ports(443, 40001).done());
        feed(
            &mut sink,
            step(4, Established, Close)
                .ports(80, 40000)
                .carried(1000, 50, 2, 500)
                .done(),
        );
        sink.tick(&Tick::default());
        let text = scrape(&metrics);
        for line in [
            "tcptrace_port_sockets{port=\"80\",state=\"listen\"} 1",
            "tcptrace_port_sockets{port=\"other\",state=\"listen\"} 1",
            "tcptrace_port_sockets{port=\"other\",state=\"syn_recv\"} 1",
            "tcptrace_port_transitions_total{from=\"listen\",port=\"80\",to=\"syn_recv\"} 1",
            "tcptrace_port_handshake_duration_seconds_count{port=\"80\"} 1",
            "tcptrace_connection_bytes_total{direction=\"tx\",role=\"server\"} 1000",
            "tcptrace_connection_bytes_total{direction=\"rx\",role=\"server\"} 49",
            "tcptrace_connection_retransmits_total{role=\"server\"} 2",
            "tcptrace_connection_rtt_seconds_count{role=\"server\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        // The client's ephemeral port never becomes a label.
        assert!(!text.contains("port=\"40000\""), "{text}");
    }

    #[test]
    fn process_metrics_come_from_the_process_collector() {
        let text = scrape(&Metrics::new(Breakdowns::default()));
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "{name}: {text}");
        }
    }

    #[test]
    fn buckets_are_sorted_and_span_10us_to_hours() {
        assert!(DURATION_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(DURATION_BUCKETS[0], 0.000_01);
        assert!(*DURATION_BUCKETS.last().unwrap() >= 3600.0);
    }
}
