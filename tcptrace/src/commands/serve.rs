//! `tcptrace serve`: the Prometheus exporter.
//!
//! Two threads: the event thread owns the kernel program, reads the ring, updates metrics and
//! the socket table, and publishes gauges every second; the main thread serves HTTP. A scrape
//! only gathers and encodes, so it never delays event processing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::Args;
use tokio::sync::Notify;

use crate::cli::{FilterArgs, KernelArgs, LogArgs, ThresholdArgs, parse_duration};
use crate::commands::tail::{Format, TailSink};
use crate::commands::{Shutdown, needs, runtime, start_tracer, warn_lost_kernel_log};
use crate::diagnosis::window::Window;
use crate::host::clock::monotonic_ns;
use crate::host::process;
use crate::host::snapshot::{self, Request};
use crate::model::sockets::SocketTable;
use crate::output::http::{self, Limits, Site};
use crate::output::metrics::{Breakdowns, Metrics, MetricsSink, window_capacity};
use crate::output::picture::{Feed, Sampler};
use crate::output::svg;
use crate::output::table::{self, TransitionTable};
use crate::output::time::{TimeFormat, WallClock};
use crate::output::web_config::{SharedWebConfig, WebConfig};
use crate::output::{Lines, OutputFormat};
use crate::pipeline::{Pipeline, RunOptions, Snapshots, StopReason};

/// Seconds of history the web page's dwell quantiles cover.
const DWELL_WINDOW_NS: u64 = 60_000_000_000;

/// Default metrics address: loopback only; expose it deliberately.
pub const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1:9850";

/// File descriptors kept for the agent itself (maps, programs, snapshots, /proc reads) when
/// the open-file limit bounds connections.
const RESERVED_FDS: u64 = 64;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to serve metrics on, as node_exporter takes it: HOST:PORT, [IPV6]:PORT, or
    /// :PORT for every address of this host (IPv4 and IPv6). A host name listens on its
    /// first address (IPv4 first), e.g. localhost:9850. Repeat to listen on several.
    #[arg(long = "web.listen-address", value_name = "[HOST]:PORT", default_value = DEFAULT_LISTEN_ADDRESS)]
    pub listen_address: Vec<ListenAddress>,

    /// Path under which to expose metrics.
    #[arg(long = "web.telemetry-path", value_name = "PATH", default_value = "/metrics", value_parser = parse_path)]
    pub telemetry_path: String,

    /// Prometheus exporter web configuration (the exporter-toolkit YAML node_exporter reads):
    /// tls_server_config (TLS 1.2/1.3, client certificates), basic_auth_users (bcrypt) and
    /// http_server_config.headers. Checked at start; reloaded on SIGHUP (a bad file is then
    /// reported and the one in force kept). Keys tcptrace cannot honour are refused.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,

    /// Scrapes rendered at once; more are answered 503 (0: no limit).
    #[arg(long = "web.max-requests", value_name = "N", default_value_t = http::DEFAULT_MAX_REQUESTS)]
    pub max_requests: usize,

    /// Open connections in all; more are closed at once. Idle connections cost little, so
    /// the bound is high; bounded by the open-file limit too.
    #[arg(long = "web.max-connections", value_name = "N", default_value_t = http::DEFAULT_MAX_CONNECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    /// Open connections from one address: one host cannot take every connection.
    #[arg(long = "web.max-connections-per-source", value_name = "N", default_value_t = http::DEFAULT_MAX_CONNECTIONS_PER_SOURCE as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_per_source: u64,

    /// Seconds between INET_DIAG snapshots that reconcile the per-state socket gauges.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_duration, allow_negative_numbers = true)]
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

    /// Also export per-port metrics (tcptrace_port_sockets, tcptrace_port_transitions_total,
    /// tcptrace_port_handshake_duration_seconds) for the first N local listening ports seen
    /// (the services; never an ephemeral port; those listening at start lowest first), the
    /// rest summed under port="other": about
    /// 10 + 20 + 30 series per port. 0 (the default) exports none.
    #[arg(long = "metrics.port-limit", value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub port_limit: u64,

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

/// `--web.listen-address`: a host (or none: every address) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddress {
    /// `None` for `:PORT`.
    pub host: Option<String>,
    pub port: u16,
}

impl std::str::FromStr for ListenAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` has no port: use HOST:PORT, [IPV6]:PORT or :PORT"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{port}` in `{s}` is not a port number"))?;
        let host = match host {
            "" => None,
            h if h.starts_with('[') && h.ends_with(']') => {
                let inner = &h[1..h.len() - 1];
                inner
                    .parse::<Ipv6Addr>()
                    .map_err(|_| format!("`{inner}` in `{s}` is not an IPv6 address"))?;
                Some(inner.to_owned())
            }
            h if h.contains(':') => {
                return Err(format!(
                    "`{s}`: write an IPv6 address in brackets, e.g. [::1]:{port}"
                ));
            }
            h if h.chars().any(char::is_whitespace) => {
                return Err(format!("`{h}` is not a host name"));
            }
            h => Some(h.to_owned()),
        };
        Ok(Self { host, port })
    }
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            None => write!(f, ":{}", self.port),
            Some(h) if h.contains(':') => write!(f, "[{h}]:{}", self.port),
            Some(h) => write!(f, "{h}:{}", self.port),
        }
    }
}

impl ListenAddress {
    /// The socket addresses to try in order: every address (IPv6 dual-stack, else IPv4) for
    /// `:PORT`; a literal as given; a host name's first IPv4 address, else its first (as Go's
    /// listener does).
    pub fn candidates(&self) -> anyhow::Result<Vec<SocketAddr>> {
        let Some(host) = &self.host else {
            return Ok(vec![
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), self.port),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), self.port),
            ]);
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let resolved: Vec<SocketAddr> = (host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| anyhow!("--web.listen-address {self}: cannot resolve {host}: {e}"))?
            .collect();
        let first = resolved
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| resolved.first())
            .copied()
            .ok_or_else(|| anyhow!("--web.listen-address {self}: {host} has no address"))?;
        Ok(vec![first])
    }
}

fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Binds `address`: the first candidate that works (for `:PORT`, IPv4 alone when this host
/// has no IPv6).
fn bind(address: &ListenAddress) -> anyhow::Result<std::net::TcpListener> {
    let candidates = address.candidates()?;
    let mut last = None;
    for addr in &candidates {
        match bind_one(*addr) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some((addr, e)),
        }
        if address.host.is_some() {
            break;
        }
    }
    let (addr, e) = last.context("no address to listen on")?;
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another exporter or tcptrace is using it; pick another with --web.listen-address)"
        }
        std::io::ErrorKind::AddrNotAvailable => " (no local interface has that address)",
        std::io::ErrorKind::PermissionDenied => {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        }
        _ => "",
    };
    let resolved = if addr.to_string() == address.to_string() {
        String::new()
    } else {
        format!(" ({addr})")
    };
    Err(anyhow!("cannot listen on {address}{resolved}: {e}{hint}"))
}

/// The endpoint's bounds from the flags; connections also within the open-file limit (raised
/// to its hard maximum first, as Go exporters do).
fn limits(args: &ServeArgs) -> Limits {
    let mut max_connections = args.max_connections;
    if let Some(nofile) = process::raise_nofile_limit() {
        let room = nofile.saturating_sub(RESERVED_FDS).max(1);
        if max_connections > room {
            log::warn!(
                "--web.max-connections {max_connections} is more than the open-file limit allows ({nofile}): at most {room}"
            );
            max_connections = room;
        }
    }
    Limits {
        max_requests: args.max_requests,
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        max_connections_per_source: usize::try_from(args.max_connections_per_source)
            .unwrap_or(usize::MAX),
    }
}

/// Waits (without blocking the runtime) until the event thread has applied the seed
/// snapshot, for at most a minute; false when it never did.
async fn seeded(rx: std::sync::mpsc::Receiver<()>) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match rx.try_recv() {
            Ok(()) => return true,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return false,
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reloads the web config on every SIGHUP; a file that no longer checks out is reported and
/// the configuration in force kept.
async fn reload_on_hangup(
    mut hup: tokio::signal::unix::Signal,
    path: Option<PathBuf>,
    web: Arc<SharedWebConfig>,
) {
    while hup.recv().await.is_some() {
        let Some(path) = &path else {
            log::info!("SIGHUP: no --web.config.file to reload");
            continue;
        };
        match WebConfig::load(path) {
            Ok(config) => {
                web.replace(config);
                log::info!("SIGHUP: reloaded {}", path.display());
            }
            Err(e) => log::warn!("SIGHUP: keeping the web config in force: {e:#}"),
        }
    }
}

pub fn run(args: ServeArgs, log: &LogArgs) -> anyhow::Result<ExitCode> {
    // Exporters survive SIGHUP (it reloads the web config): never let it end the agent, even
    // before the handler below is installed.
    process::ignore_sighup();
    let filter = args.filter.to_filter()?;
    // A bad web config or a busy port are the likeliest mistakes: report them before loading
    // anything.
    let web_config = match &args.web_config_file {
        Some(path) => WebConfig::load(path)?,
        None => WebConfig::default(),
    };
    let scheme = if web_config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let web = Arc::new(SharedWebConfig::new(web_config));
    let listeners = args
        .listen_address
        .iter()
        .map(bind)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let limits = limits(&args);
    // Connection metrics judge whole connections: the kernel and the pipeline keep every
    // transition of the selected sockets, and the sinks apply states and owners.
    let sockets = filter.socket_level();
    let scope = args.filter.scope(&filter)?;
    let (mut tracer, ring) = start_tracer(&sockets, &args.kernel, log, &needs(&scope, true))?;

    let metrics = Metrics::new(Breakdowns {
        namespaces: args.namespace_limit,
        ports: args.port_limit,
    });
    let tracked = args.max_tracked_sockets as usize;
    let mut table = SocketTable::new(tracked, filter.clone());
    if args.port_limit > 0 {
        table = table.count_ports();
    }
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
        if args.tail_format == OutputFormat::Json {
            pipeline.resolve_cgroups();
        }
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

    // Signals are handled from here on: SIGTERM during the seed snapshot still stops cleanly.
    let http_runtime = runtime()?;
    let shutdown = Shutdown::register(&http_runtime)?;
    let hangup = {
        let _guard = http_runtime.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot handle SIGHUP")?
    };

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

    let path = args.telemetry_path.clone();
    let home_path = args.telemetry_path.clone();
    let site = Site {
        telemetry_path: args.telemetry_path,
        render: Box::new(move || metrics.render()),
        home: Box::new(move || svg::page(&feed.latest(), &home_path)),
    };
    let addresses: Vec<String> = listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map_or_else(|_| "?".into(), |a| format!("{scheme}://{a}{path}"))
        })
        .collect();
    http_runtime.block_on(async {
        let signal = shutdown.wait(None);
        tokio::pin!(signal);
        let mut done = done_rx;
        // Serve only once the gauges hold the seed snapshot: a scrape must never report an
        // empty host just because the agent has only started.
        tokio::select! {
            ok = seeded(seeded_rx) => if !ok {
                log::warn!("no INET_DIAG seed snapshot yet; socket gauges start at 0");
            },
            () = &mut signal => return anyhow::Ok(()),
            _ = &mut done => return anyhow::Ok(()),
        }
        let listeners = listeners
            .into_iter()
            .map(tokio::net::TcpListener::from_std)
            .collect::<std::io::Result<Vec<_>>>()?;
        eprintln!(
            "tcptrace: tracing; serving metrics on {} (Ctrl-C to stop)",
            addresses.join(", ")
        );
        tokio::select! {
            () = http::serve(listeners, site, web.clone(), limits) => {}
            () = reload_on_hangup(hangup, args.web_config_file.clone(), web.clone()) => {}
            () = &mut signal => {}
            _ = &mut done => {}
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
