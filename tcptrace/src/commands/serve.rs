//! `tcptrace serve`: the Prometheus exporter.
//!
//! Two threads: the event thread owns the kernel program, reads the ring, updates metrics and
//! the socket table, and publishes gauges every second; the main thread serves HTTP. A scrape
//! only gathers and encodes, so it never delays event processing.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::Args;
use tokio::sync::Notify;

use crate::cli::{FilterArgs, KernelArgs, LogArgs, ThresholdArgs, parse_duration};
use crate::commands::tail::{Format, TailSink};
use crate::commands::{Shutdown, runtime, warn_lost_kernel_log};
use crate::diagnosis::window::Window;
use crate::host::clock::monotonic_ns;
use crate::host::snapshot::{self, Request};
use crate::kernel::loader::Tracer;
use crate::model::sockets::SocketTable;
use crate::output::http::{self, Site};
use crate::output::metrics::{Metrics, MetricsSink, window_capacity};
use crate::output::picture::{Feed, Sampler};
use crate::output::svg;
use crate::output::table::{self, TransitionTable};
use crate::output::time::{TimeFormat, WallClock};
use crate::output::{Lines, OutputFormat};
use crate::pipeline::{Pipeline, RunOptions, Snapshots, StopReason};

/// Seconds of history the web page's dwell quantiles cover.
const DWELL_WINDOW_NS: u64 = 60_000_000_000;

/// Default metrics address: loopback only; expose it deliberately.
pub const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1:9850";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to serve metrics on.
    #[arg(long = "web.listen-address", value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN_ADDRESS)]
    pub listen_address: SocketAddr,

    /// Path under which to expose metrics.
    #[arg(long = "web.telemetry-path", value_name = "PATH", default_value = "/metrics", value_parser = parse_path)]
    pub telemetry_path: String,

    /// Seconds between INET_DIAG snapshots that reconcile the per-state socket gauges.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_duration)]
    pub reconcile_interval: Duration,

    /// Sockets the agent tracks for the gauges (beyond this, new sockets are counted in
    /// tcptrace_tracked_sockets_overflow_total and picked up by the next snapshot if room).
    #[arg(long, value_name = "N", default_value_t = 262_144, value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    pub max_tracked_sockets: u64,

    /// Also export the socket gauges of the N network namespaces with the most sockets as
    /// tcptrace_namespace_sockets{netns,namespace,state} (the rest summed under netns="other"):
    /// up to 10 series per namespace. 0 (the default) exports only the host-wide gauges.
    #[arg(long = "metrics.namespace-limit", value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub namespace_limit: u64,

    /// Also print every transition to stdout, as `tail` does.
    #[arg(long)]
    pub tail: bool,

    /// How --tail prints: a table, or one JSON object per line as `tail -o json`.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = OutputFormat::Table, requires = "tail")]
    pub tail_format: OutputFormat,

    /// Where doctor's findings start; serve evaluates them at every reconcile and exports
    /// them as tcptrace_finding{kind,severity}.
    #[command(flatten)]
    pub thresholds: ThresholdArgs,

    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub kernel: KernelArgs,
}

fn parse_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s.contains(char::is_whitespace) {
        return Err(format!("`{s}` must start with / and contain no spaces"));
    }
    Ok(s.to_owned())
}

fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                " (another exporter or tcptrace is using it; pick another with --web.listen-address)"
            }
            std::io::ErrorKind::AddrNotAvailable => " (no local interface has that address)",
            _ => "",
        };
        anyhow!("cannot listen on {addr}: {e}{hint}")
    })?;
    listener
        .set_nonblocking(true)
        .context("cannot make the listening socket non-blocking")?;
    Ok(listener)
}

pub fn run(args: ServeArgs, log: &LogArgs) -> anyhow::Result<ExitCode> {
    let filter = args.filter.to_filter()?;
    // A busy port is the likeliest mistake: report it before loading anything.
    let listener = bind(args.listen_address)?;
    // Connection metrics judge whole connections: the kernel and the pipeline keep every
    // transition of the selected sockets, and the sinks apply states and owners.
    let sockets = filter.socket_level();
    let scope = args.filter.scope(&filter)?;
    let (mut tracer, ring) = Tracer::start(&sockets.kernel(), args.kernel.sizes(log))?;

    let metrics = Metrics::new(args.namespace_limit);
    let tracked = args.max_tracked_sockets as usize;
    let table = SocketTable::new(tracked, filter.clone());
    let mut pipeline = Pipeline::new(&sockets, scope.clone());
    pipeline.identity(tracer.identity());
    pipeline.listener_map(tracer.take_listeners());
    pipeline.seed_owners();
    let (seeded_tx, seeded_rx) = std::sync::mpsc::channel();
    let mut window = Window::new(
        window_capacity(tracked),
        filter.clone(),
        args.thresholds.to_thresholds(),
    );
    // Attached first, then listed: see `life`.
    match snapshot::take(&scope, Request::LISTENERS) {
        Ok(listening) => window.learn_listeners(&listening),
        Err(e) => log::warn!("cannot list the listeners: {e:#}"),
    }
    // The `/` page: the state diagram, sampled each second from the same sink.
    let feed = Feed::default();
    let sampler = Sampler::new(feed.clone(), DWELL_WINDOW_NS, 0, monotonic_ns());
    pipeline.subscribe(Box::new(
        MetricsSink::new(metrics.clone(), table, window)
            .with_diagram(sampler)
            .notify_seeded(seeded_tx),
    ));
    if args.tail {
        let lines = Lines::new(std::io::LineWriter::new(std::io::stdout()), None);
        let format = match args.tail_format {
            OutputFormat::Table => Format::Table(TransitionTable::new(
                WallClock::now(),
                TimeFormat::Time,
                Some(table::terminal_width()),
            )),
            OutputFormat::Json => Format::Json {
                clock: WallClock::now(),
            },
        };
        let tail = TailSink::new(lines, format).only(filter);
        pipeline.subscribe(Box::new(tail));
    }

    let stop = Arc::new(Notify::new());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let reconcile = args.reconcile_interval;
    let stop_events = stop.clone();
    let events = std::thread::Builder::new()
        .name("tcptrace-events".into())
        .spawn(move || {
            let result = runtime().and_then(|rt| {
                rt.block_on(pipeline.run(
                    ring,
                    stop_events.notified(),
                    RunOptions {
                        tick: Some(Duration::from_secs(1)),
                        snapshots: Snapshots::Every(reconcile),
                        snapshot_idle: true,
                        snapshot_stack: true,
                        time_wait_overflows: true,
                        tracer: Some(&tracer),
                    },
                ))
                .map_err(anyhow::Error::from)
            });
            warn_lost_kernel_log(&pipeline.stats, &tracer.counters());
            let _ = done_tx.send(());
            result
        })
        .context("cannot start the event thread")?;

    // Serve only once the gauges hold the seed snapshot: a scrape must never report an empty
    // host just because the agent has only started.
    if seeded_rx.recv_timeout(Duration::from_secs(60)).is_err() {
        log::warn!("no INET_DIAG seed snapshot yet; socket gauges start at 0");
    }
    let path = args.telemetry_path.clone();
    let home_path = args.telemetry_path.clone();
    let site = Site {
        telemetry_path: args.telemetry_path,
        render: Box::new(move || metrics.render()),
        home: Box::new(move || svg::page(&feed.latest(), &home_path)),
    };
    let runtime = runtime()?;
    let shutdown = Shutdown::register(&runtime)?;
    eprintln!(
        "tcptrace: tracing; serving metrics on http://{}{path} (Ctrl-C to stop)",
        args.listen_address
    );
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tokio::select! {
            () = http::serve(listener, site) => {}
            () = shutdown.wait(None) => {}
            _ = done_rx => {}
        }
        anyhow::Ok(())
    })?;
    stop.notify_one();
    let reason = events
        .join()
        .map_err(|_| anyhow!("the event thread panicked"))??;
    if reason == StopReason::OutputClosed {
        eprintln!("tcptrace: stdout closed; stopped");
    }
    Ok(ExitCode::SUCCESS)
}
