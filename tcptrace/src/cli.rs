//! The command line: the top-level command, and the flag groups several subcommands share
//! (filters, kernel sizes, output, thresholds, logging). Each subcommand's own arguments live
//! with it in [`crate::commands`].

use clap::{Args, Parser, Subcommand, ValueEnum};
use tcptrace_common::{DEFAULT_MAX_SOCKETS, DEFAULT_RING_BYTES};

use crate::commands::doctor::DoctorArgs;
use crate::commands::life::LifeArgs;
use crate::commands::serve::ServeArgs;
use crate::commands::tail::TailArgs;
use crate::commands::top::TopArgs;
use crate::diagnosis::Thresholds;
use crate::host::netns;
use crate::kernel::loader::Sizes;
use crate::model::filter::{Cidr, Filter};
use crate::model::tcp::TcpState;
use crate::output::OutputFormat;
use crate::output::time::TimeFormat;

/// `tcptrace -V`: the version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TCPTRACE_GIT_COMMIT"),
    ")"
);

/// `tcptrace --version`: also the kernels it supports (README, "Kernel support").
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit:  ",
    env!("TCPTRACE_GIT_COMMIT"),
    "\nkernels: Linux 5.10 or newer with BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF=y); \
tested on 5.10, 6.1, 6.12 and 7.x"
);

#[derive(Debug, Parser)]
#[command(
    name = "tcptrace",
    version = VERSION,
    long_version = LONG_VERSION,
    about = "Live TCP state transitions from the kernel, with the time spent in each state",
    long_about = "tcptrace hooks the kernel's sock:inet_sock_set_state tracepoint with eBPF and \
shows every TCP state transition on this host as it happens: which socket moved from which \
state to which, and how long it spent in the state it left (measured in the kernel).\n\n\
Needs Linux with BTF (/sys/kernel/btf/vmlinux) and root, or CAP_BPF + CAP_PERFMON.",
    after_help = "Examples:\n  \
sudo tcptrace tail                         every transition, as a table\n  \
sudo tcptrace tail --port 443              connections with 443 at either end\n  \
sudo tcptrace tail --state close_wait      sockets entering or leaving CLOSE_WAIT\n  \
sudo tcptrace tail -o json --count 100     100 JSON lines, then exit\n  \
sudo tcptrace top                          the state diagram, live, in the terminal\n  \
sudo tcptrace doctor                       diagnose CLOSE_WAIT leaks, SYN floods, ..."
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// How much the agent says on stderr about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            Self::Off => log::LevelFilter::Off,
            Self::Error => log::LevelFilter::Error,
            Self::Warn => log::LevelFilter::Warn,
            Self::Info => log::LevelFilter::Info,
            Self::Debug => log::LevelFilter::Debug,
            Self::Trace => log::LevelFilter::Trace,
        }
    }
}

/// Diagnostics on stderr.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Diagnostics to print on stderr: warnings by default (fallbacks, evictions, failed
    /// snapshots); debug adds what helps a bug report, including the kernel program's own
    /// messages. Overrides RUST_LOG (which takes env_logger directives).
    #[arg(
        long,
        value_enum,
        value_name = "LEVEL",
        global = true,
        help_heading = "Logging"
    )]
    pub log_level: Option<LogLevel>,
}

impl LogArgs {
    /// Up to which level the kernel program logs: the asked-for level when `--log-level` or
    /// `RUST_LOG` is given, else nothing (a disabled statement costs nothing in the kernel).
    pub fn kernel_level(&self) -> log::LevelFilter {
        match self.log_level {
            Some(level) => level.filter(),
            None if std::env::var_os("RUST_LOG").is_some() => log::max_level(),
            None => log::LevelFilter::Off,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print every TCP state transition as it happens.
    #[command(
        long_about = "Print one line per TCP state transition as it happens.\n\n\
Columns: TIME (local time of the transition), PID and COMM (the socket's owner, captured when \
its process connected, listened or closed, and inherited by server sockets from their listener; \
'-' when unknown; the task merely on the CPU is in the JSON as cpu_pid/cpu_comm), LOCAL and REMOTE (address:port of this socket and of its peer), FROM TO (the \
transition), DWELL_MS (milliseconds the socket spent in FROM, '-' when tcptrace first saw the \
socket at this transition and cannot know).\n\n\
The kernel never reports TIME_WAIT here: an active close shows as FIN_WAIT2 -> CLOSE (or \
CLOSING -> CLOSE) when the socket is handed over to a timewait socket.",
        after_help = "Examples:\n  \
tcptrace tail --lport 8080                 the server side of port 8080\n  \
tcptrace tail --addr 10.0.0.0/8 -4         IPv4 peers or local addresses in 10/8\n  \
tcptrace tail --state syn_sent --state close    connects and their failures\n  \
tcptrace tail -o json | jq .               one JSON object per line\n  \
tcptrace tail --duration 10                stop after 10 seconds"
    )]
    Tail(TailArgs),

    /// Export Prometheus metrics: transition counters, state-dwell histograms, live socket
    /// counts per state (TIME_WAIT included), loss counters.
    #[command(
        long_about = "Serve Prometheus metrics over HTTP.\n\n\
Counters and histograms come from every transition the kernel reports; the per-state socket \
gauges are seeded from an INET_DIAG snapshot at start (so sockets opened earlier and TIME_WAIT \
sockets count), kept current from transitions, and reconciled against a fresh snapshot every \
--reconcile-interval. At each reconcile after the first, the findings of `tcptrace doctor` are \
evaluated over the interval and exported as tcptrace_finding{kind,severity} (thresholds: the \
same flags as doctor). Metric names and labels are documented in the README.\n\n\
TLS, basic auth and response headers come from --web.config.file, the exporter-toolkit YAML \
node_exporter reads; SIGHUP reloads it and never stops the agent. Once the programs are \
attached, serve keeps only CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (socket owners), \
CAP_SYS_ADMIN (other namespaces' snapshots) when it has them, and what --capabilities.keep \
names.",
        after_help = "Examples:\n  \
tcptrace serve                                   metrics on http://127.0.0.1:9850/metrics\n  \
tcptrace serve --web.listen-address :9850        every address, IPv4 and IPv6\n  \
tcptrace serve --web.config.file web.yml         TLS and basic auth (exporter-toolkit format)\n  \
tcptrace serve --lport 443 --tail                only port 443, and print transitions too"
    )]
    Serve(ServeArgs),

    /// Print one line per finished connection: role, handshake and lifetime, what it carried,
    /// who closed first, how it ended, and (with --time-wait) how long it then sat in
    /// TIME_WAIT.
    #[command(
        long_about = "Print one line per finished connection, when its socket closes.\n\n\
Columns: TIME (when the story ended), PID/COMM (the owner), LOCAL/REMOTE, ROLE (client, server, \
unknown when first seen mid-life), HS_MS (handshake: a client's SYN_SENT; a server's from its \
first SYN-ACK), LIFE_MS (open to close, TIME_WAIT excluded), TX_KB/RX_KB (KiB of data sent and \
acknowledged / received, read from the socket at its close), RETRANS (segments retransmitted), \
RTT_MS (smoothed RTT at the close), CLOSED_BY (local: this socket sent the first FIN, or reset a \
connection that had none; remote; both: simultaneous close), END (fin, refused, timeout, ports_exhausted, handshake_aborted, \
rst_received, aborted), TW_MS (after an active close: `wait`, its TIME_WAIT has just begun; with \
--time-wait, how long it lasted, measured with INET_DIAG snapshots; a FIN_WAIT2 suffix marks an orphaned socket that waited for the peer's \
FIN). A narrow terminal drops RTT_MS, RETRANS, TW_MS, HS_MS, RX_KB, TX_KB and TIME, in that \
order, before cutting anything; --wide shows them all.\n\n\
With --time-wait, a connection closed actively is printed when its TIME_WAIT ends (up to 60 s \
later). The README documents the rules and their limits.",
        after_help = "Examples:\n  \
tcptrace life                         every connection as it finishes\n  \
tcptrace life --rport 5432 -o json    connections to PostgreSQL, as JSON\n  \
tcptrace life --time-wait             print after TIME_WAIT, with its length"
    )]
    Life(LifeArgs),

    /// Diagnose the classic TCP state pathologies (CLOSE_WAIT leaks, TIME_WAIT pressure,
    /// stuck FIN_WAIT2, SYN floods, full accept queues, failed connects, resets, ghost
    /// connections).
    #[command(
        long_about = "Diagnose TCP state pathologies on this host, with evidence and advice.\n\n\
doctor takes an INET_DIAG snapshot, watches transitions for --duration, takes a second \
snapshot (with each socket's idle times), reads the kernel's TCP counters and settings, and \
prints its findings, most severe first. Each finding has a stable kind, a severity, one \
statement, the evidence (counts, rates, ages, top owners, ports and endpoints, example \
sockets), the relevant kernel settings and advice. --explain describes every state and kind.\n\n\
Exit code (the monitoring-plugin convention): 0 OK (healthy, or informational findings \
only), 1 WARNING, 2 CRITICAL, 3 UNKNOWN (doctor could not run: a usage error, missing \
privileges, a failed snapshot).\n\n\
With --netns-path (or --netns), snapshots, counters and settings are read inside that network \
namespace and only its transitions are watched.",
        after_help = "Examples:\n  \
tcptrace doctor                            5 s look at this host\n  \
tcptrace doctor --duration 30 -o json      a longer look, as one JSON object\n  \
tcptrace doctor --lport 8080               only connections of local port 8080\n  \
tcptrace doctor --netns-path /run/netns/x  inside a network namespace\n  \
tcptrace doctor --explain                  what each state and finding means"
    )]
    Doctor(DoctorArgs),

    /// The TCP state diagram of this host, live, in the terminal: sockets in each state,
    /// transitions per second on each arrow, who holds the sockets in trouble.
    #[command(
        long_about = "Draw the TCP state machine of this host, live, in the terminal.\n\n\
The boxes are the kernel's TCP states, laid out as RFC 793's diagram: CLOSE and LISTEN at the \
top, the server's SYN_RECV on the left and the client's SYN_SENT on the right, ESTABLISHED in \
the middle, the active close (FIN_WAIT1, FIN_WAIT2) down the left, the passive close \
(CLOSE_WAIT, LAST_ACK) down the right, CLOSING between them and TIME_WAIT at the bottom. Each \
box shows the sockets in that state now and, for the states sockets get stuck in (SYN_SENT, \
SYN_RECV, CLOSE_WAIT, FIN_WAIT2, LAST_ACK, TIME_WAIT), how long the oldest has been there. \
Each arrow shows transitions per second over the last second, the busiest in red; a mark \
✕N on a box counts its moves straight to CLOSE per second (failed connects, aborts, resets), \
which RFC 793's figure has no arrow for.\n\n\
The panels show, per state, the time sockets spent in it (p50/p99 over --dwell-window), who \
holds the sockets in trouble (CLOSE_WAIT leakers and TIME_WAIT producers by process and \
port, half-open SYN_RECV per listener, failed connects per destination), and what the \
picture may miss: events the kernel lost and sockets a snapshot corrected. The banner shows \
the findings of `tcptrace doctor`, evaluated at each reconcile.\n\n\
Counts come from the same socket table `serve` exports: seeded from an INET_DIAG snapshot at \
start (TIME_WAIT and older sockets included), kept by transitions, corrected every \
--reconcile-interval.\n\n\
Keys: q quit, p pause, f filter (the filter flags below, e.g. --port 80 --comm nginx), s pick \
a state and list its sockets (oldest first; Enter on one shows its story so far, with \
`life`'s fields), ? help. Needs a terminal of at least 64x16; an 80x24 one shows \
everything, a larger one more.",
        after_help = "Examples:\n  \
tcptrace top                            the whole host\n  \
tcptrace top --lport 8080               the sockets of local port 8080\n  \
tcptrace top --netns-path /run/netns/x  one network namespace\n  \
tcptrace top --comm nginx               the sockets nginx holds"
    )]
    Top(TopArgs),
}

/// Where each `doctor` finding starts (also used by `serve` for tcptrace_finding).
#[derive(Debug, Args)]
pub struct ThresholdArgs {
    /// close_wait_leak: sockets in CLOSE_WAIT at least this many seconds.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_duration, allow_negative_numbers = true, help_heading = "Thresholds")]
    pub close_wait_age: std::time::Duration,

    /// fin_wait2_stuck: sockets held in FIN_WAIT2 at least this many seconds [default: the
    /// namespace's net.ipv4.tcp_fin_timeout].
    #[arg(long, value_name = "SECS", value_parser = parse_duration, allow_negative_numbers = true, help_heading = "Thresholds")]
    pub fin_wait2_age: Option<std::time::Duration>,

    /// time_wait_pressure: percent of the ephemeral port range one client/server pair holds
    /// in TIME_WAIT.
    #[arg(long, value_name = "PCT", default_value_t = 30.0, value_parser = parse_percent, help_heading = "Thresholds")]
    pub time_wait_share: f64,

    /// syn_flood: half-open connections on one listener (a full SYN queue always counts).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Thresholds")]
    pub syn_recv: u64,

    /// connect_failures: failed outgoing connects in the window.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Thresholds")]
    pub connect_failures: u64,

    /// resets: connections ended by a reset (sent or received) in the window.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Thresholds")]
    pub resets: u64,

    /// long_idle_established: ESTABLISHED without keepalive, idle at least this many seconds.
    #[arg(long, value_name = "SECS", default_value = "3600", value_parser = parse_duration, allow_negative_numbers = true, help_heading = "Thresholds")]
    pub idle_age: std::time::Duration,
}

impl ThresholdArgs {
    pub fn to_thresholds(&self) -> Thresholds {
        Thresholds {
            close_wait_age: self.close_wait_age,
            fin_wait2_age: self.fin_wait2_age,
            time_wait_share: self.time_wait_share,
            syn_recv: self.syn_recv,
            connect_failures: self.connect_failures,
            resets: self.resets,
            idle_age: self.idle_age,
        }
    }
}

/// A percentage in (0, 100].
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a percentage"))?;
    if !(p > 0.0 && p <= 100.0) {
        return Err(format!("{p} is not a percentage in (0, 100]"));
    }
    Ok(p)
}

/// Output and run-length options of the line-printing commands (`tail`, `life`).
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Do not print the table header.
    #[arg(long)]
    pub no_header: bool,

    /// How the table shows times (JSON is always RFC 3339 UTC).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = TimeFormat::Time)]
    pub time_format: TimeFormat,

    /// Stop after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_duration, allow_negative_numbers = true)]
    pub duration: Option<std::time::Duration>,

    /// Stop after printing this many lines.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

impl OutputArgs {
    /// `header` when the output is a table that wants one.
    pub fn header<'h>(&self, header: &'h str) -> Option<&'h str> {
        (self.output == OutputFormat::Table && !self.no_header).then_some(header)
    }
}

/// Filters shared by every command that reads transitions.
#[derive(Debug, Args, Default)]
pub struct FilterArgs {
    /// Keep connections with this port at either end (repeatable).
    #[arg(long = "port", value_name = "PORT", value_parser = parse_port, help_heading = "Filters")]
    pub ports: Vec<u16>,

    /// Keep connections with this local port (repeatable).
    #[arg(long = "lport", value_name = "PORT", value_parser = parse_port, help_heading = "Filters")]
    pub lports: Vec<u16>,

    /// Keep connections with this remote port (repeatable).
    #[arg(long = "rport", value_name = "PORT", value_parser = parse_port, help_heading = "Filters")]
    pub rports: Vec<u16>,

    /// Keep connections with an address (either end) in this block, e.g. 10.0.0.0/8 or ::1
    /// (repeatable).
    #[arg(long = "addr", value_name = "CIDR", help_heading = "Filters")]
    pub addrs: Vec<Cidr>,

    /// IPv4 sockets only.
    #[arg(
        short = '4',
        long = "ipv4",
        help_heading = "Filters",
        conflicts_with = "ipv6"
    )]
    pub ipv4: bool,

    /// IPv6 sockets only (v4-mapped addresses on dual-stack sockets count as IPv6).
    #[arg(short = '6', long = "ipv6", help_heading = "Filters")]
    pub ipv6: bool,

    /// Keep transitions that leave or enter this state, e.g. syn_sent, close_wait (repeatable,
    /// or comma-separated).
    #[arg(
        long = "state",
        value_name = "STATE",
        value_delimiter = ',',
        help_heading = "Filters"
    )]
    pub states: Vec<TcpState>,

    /// Keep sockets owned by this process id (repeatable, up to 8; in the kernel).
    #[arg(long = "pid", value_name = "PID", help_heading = "Filters")]
    pub pids: Vec<u32>,

    /// Keep sockets whose owner's command name starts with NAME (repeatable).
    #[arg(long = "comm", value_name = "NAME", help_heading = "Filters")]
    pub comms: Vec<String>,

    /// Keep sockets in cgroup PATH or below it, e.g. /system.slice/nginx.service (whole path
    /// components: not /system.slice/nginx.service-canary; repeatable).
    #[arg(long = "cgroup", value_name = "PATH", help_heading = "Filters")]
    pub cgroups: Vec<String>,

    /// Keep sockets of containers whose id starts with PREFIX (docker, containerd, cri-o,
    /// podman, kubepods), or of a systemd service by name (repeatable).
    #[arg(long = "container", value_name = "PREFIX", help_heading = "Filters")]
    pub containers: Vec<String>,

    /// Keep sockets of this network namespace, by inode (`readlink /proc/PID/ns/net`).
    #[arg(
        long,
        value_name = "INODE",
        help_heading = "Filters",
        conflicts_with = "netns_path"
    )]
    pub netns: Option<u32>,

    /// Keep sockets of the network namespace at PATH, e.g. /run/netns/NAME or /proc/PID/ns/net.
    #[arg(long, value_name = "PATH", help_heading = "Filters")]
    pub netns_path: Option<std::path::PathBuf>,
}

impl FilterArgs {
    /// The namespaces snapshots cover for `filter` (this one's result): the one asked for,
    /// else every namespace.
    pub fn scope(&self, filter: &Filter) -> anyhow::Result<crate::host::snapshot::Scope> {
        crate::host::snapshot::Scope::of(filter.netns, self.netns_path.as_deref())
    }

    /// The filter, with paths resolved; errors name the flag.
    pub fn to_filter(&self) -> anyhow::Result<Filter> {
        if self.pids.len() > tcptrace_common::MAX_PID_FILTER {
            anyhow::bail!(
                "--pid can be given at most {} times",
                tcptrace_common::MAX_PID_FILTER
            );
        }
        if let Some(comm) = self.comms.iter().find(|c| c.len() > MAX_COMM) {
            anyhow::bail!(
                "--comm {comm} can never match: the kernel keeps at most {MAX_COMM} bytes of a task name; use its first {MAX_COMM} (`{}`)",
                comm.get(..MAX_COMM).unwrap_or(comm)
            );
        }
        if let Some(path) = self.cgroups.iter().find(|c| !c.starts_with('/')) {
            anyhow::bail!(
                "--cgroup {path} can never match: cgroup paths start at the cgroup2 root with `/`, as /proc/PID/cgroup shows them (e.g. /system.slice/nginx.service)"
            );
        }
        let by_cgroup = !self.cgroups.is_empty() || !self.containers.is_empty();
        if by_cgroup {
            let Some(mount) = crate::host::cgroup::cgroup2_mount() else {
                anyhow::bail!(
                    "--cgroup and --container need a cgroup v2 hierarchy, and this host has only cgroup v1: every socket reports the root cgroup"
                );
            };
            let mount = mount.to_string_lossy();
            if let Some(path) = self.cgroups.iter().find(|c| {
                c.strip_prefix(mount.as_ref())
                    .is_some_and(|rest| rest.starts_with('/'))
            }) {
                anyhow::bail!(
                    "--cgroup {path} is a file system path: give the cgroup relative to the cgroup2 root, `{}`",
                    &path[mount.len()..]
                );
            }
        }
        for pid in &self.pids {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                log::warn!("no process has pid {pid} now; --pid {pid} matches once one does");
            }
        }
        let netns = match (&self.netns, &self.netns_path) {
            (Some(inode), _) => {
                if !netns::all().contains_key(inode) {
                    anyhow::bail!(
                        "--netns {inode}: no network namespace has that inode (see `ls -l /proc/*/ns/net` or `ip netns list`); --netns-path takes a path"
                    );
                }
                Some(*inode)
            }
            (None, Some(path)) => Some(
                netns::inode_of(path)
                    .map_err(|e| anyhow::anyhow!("--netns-path {}: {e}", path.display()))?,
            ),
            (None, None) => None,
        };
        Ok(Filter {
            ports: self.ports.clone(),
            lports: self.lports.clone(),
            rports: self.rports.clone(),
            addrs: self.addrs.clone(),
            ipv4_only: self.ipv4,
            ipv6_only: self.ipv6,
            states: self.states.clone(),
            pids: self.pids.clone(),
            comms: self.comms.clone(),
            netns,
            cgroups: self.cgroups.clone(),
            containers: self.containers.clone(),
        })
    }
}

/// Kernel-side sizes.
#[derive(Debug, Args)]
pub struct KernelArgs {
    /// Ring buffer size in bytes between kernel and agent: a power of two, at least 4096.
    /// Larger rides out longer bursts before events are lost (counted as ring_full). The
    /// kernel wakes the agent each time another 1/8 of it is waiting; otherwise the agent
    /// drains it every 10 ms.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RING_BYTES, value_parser = parse_ring_bytes, help_heading = "Kernel")]
    pub ring_bytes: u32,

    /// Sockets whose state-entry time the kernel remembers (LRU), on kernels before 5.12:
    /// beyond this, the coldest socket is forgotten and its next transition shows an unknown
    /// time in state. From Linux 5.12 each socket keeps its own entry (socket storage), with
    /// no limit, and this is not used.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_SOCKETS, value_parser = clap::value_parser!(u32).range(1024..), help_heading = "Kernel")]
    pub max_sockets: u32,

    /// Keep socket entries in the --max-sockets hash even where socket storage works: the
    /// older kernels' path, for tests and benchmarks.
    #[arg(long, hide = true)]
    pub no_socket_storage: bool,

    /// Capabilities to keep once the programs are attached, beyond what the command needs:
    /// `none`, `all`, or names such as cap_net_admin,cap_syslog. tcptrace checks at start
    /// that it has CAP_BPF and CAP_PERFMON (loading), then keeps only what the command uses
    /// after, when it has them: CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (owners of sockets
    /// opened before it started, from other processes' /proc/PID/fd) and CAP_SYS_ADMIN
    /// (setns into other network namespaces for their snapshots; required by doctor and
    /// serve for --netns-path), and drops every other capability in every thread.
    #[arg(
        long = "capabilities.keep",
        value_name = "CAPS",
        default_value = "none",
        help_heading = "Privileges"
    )]
    pub keep_caps: crate::host::caps::Keep,
}

impl KernelArgs {
    pub fn sizes(&self, log: &LogArgs) -> Sizes {
        Sizes {
            ring_bytes: self.ring_bytes,
            max_sockets: self.max_sockets,
            kernel_log: log.kernel_level(),
            socket_storage: !self.no_socket_storage,
        }
    }
}

/// The longest task name the kernel keeps (`TASK_COMM_LEN` minus its NUL).
const MAX_COMM: usize = tcptrace_common::TASK_COMM_LEN - 1;

/// A port a connection can have: 1 to 65535.
fn parse_port(s: &str) -> Result<u16, String> {
    let port: u16 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a port (1 to 65535)"))?;
    if port == 0 {
        return Err(
            "no connection has port 0 (a connect() shows local port 0 only before the kernel picks one)"
                .into(),
        );
    }
    Ok(port)
}

/// Seconds, fractions allowed, more than zero.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("`{s}` must be a positive number of seconds"));
    }
    // from_secs_f64 panics beyond u64 seconds (found by fuzzing: `--duration 1e30`).
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is too many seconds"))
}

fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!(
            "{n} is not a power of two of at least 4096 (the kernel requires a power-of-two multiple of the page size)"
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::doctor::DoctorFormat;
    use crate::commands::serve::DEFAULT_LISTEN_ADDRESS;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn version_names_commit_and_kernels() {
        let long = Cli::command().render_long_version();
        assert!(long.starts_with(&format!("tcptrace {}\n", env!("CARGO_PKG_VERSION"))));
        assert!(long.contains("commit:  ") && long.contains("Linux 5.10 or newer with BTF"));
        let short = Cli::command().render_version();
        assert!(short.contains(" (commit "), "{short}");
    }

    fn tail(args: &[&str]) -> Result<TailArgs, clap::Error> {
        let mut argv = vec!["tcptrace", "tail"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Tail(t) => t,
            _ => unreachable!("parsed tail"),
        })
    }

    #[test]
    fn defaults() {
        let t = tail(&[]).unwrap();
        assert_eq!(t.out.output, OutputFormat::Table);
        assert_eq!(t.kernel.ring_bytes, DEFAULT_RING_BYTES);
        assert_eq!(t.kernel.max_sockets, DEFAULT_MAX_SOCKETS);
        assert_eq!(t.filter.to_filter().unwrap(), Filter::default());
        assert!(t.out.duration.is_none() && t.out.count.is_none());
    }

    #[test]
    fn filters_parse() {
        let t = tail(&[
            "--port",
            "80",
            "--port",
            "443",
            "--lport",
            "8080",
            "--rport",
            "5432",
            "--addr",
            "10.0.0.0/8",
            "-6",
            "--state",
            "syn_sent,CLOSE",
            "--state",
            "listen",
            "-o",
            "json",
            "--duration",
            "1.5",
            "--count",
            "3",
        ])
        .unwrap();
        let f = t.filter.to_filter().unwrap();
        assert_eq!(f.ports, [80, 443]);
        assert_eq!(f.lports, [8080]);
        assert_eq!(f.rports, [5432]);
        assert_eq!(f.addrs.len(), 1);
        assert!(f.ipv6_only && !f.ipv4_only);
        assert_eq!(
            f.states,
            [TcpState::SynSent, TcpState::Close, TcpState::Listen]
        );
        assert_eq!(t.out.output, OutputFormat::Json);
        assert_eq!(t.out.duration, Some(std::time::Duration::from_millis(1500)));
        assert_eq!(t.out.count, Some(3));
    }

    #[test]
    fn owner_and_namespace_filters() {
        let t = tail(&[
            "--pid",
            "1",
            "--pid",
            "2",
            "--comm",
            "nginx",
            "--cgroup",
            "/system.slice",
            "--container",
            "3f2a",
            "--netns-path",
            "/proc/self/ns/net",
            "--wide",
        ])
        .unwrap();
        assert!(t.wide);
        let f = t.filter.to_filter().unwrap();
        assert_eq!(f.pids, [1, 2]);
        assert_eq!(f.comms, ["nginx"]);
        assert_eq!(f.cgroups, ["/system.slice"]);
        assert_eq!(f.containers, ["3f2a"]);
        use std::os::unix::fs::MetadataExt as _;
        let me = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        assert_eq!(f.netns, Some(me));
        let too_many: Vec<String> = (0..9)
            .flat_map(|i| ["--pid".into(), i.to_string()])
            .collect();
        let args: Vec<&str> = too_many.iter().map(String::as_str).collect();
        let err = tail(&args).unwrap().filter.to_filter().unwrap_err();
        assert!(err.to_string().contains("at most 8"), "{err}");
        let missing = tail(&["--netns-path", "/run/netns/does-not-exist"]).unwrap();
        let err = missing.filter.to_filter().unwrap_err().to_string();
        assert!(
            err.contains("--netns-path") && err.contains("does-not-exist"),
            "{err}"
        );
        assert!(tail(&["--netns", "1", "--netns-path", "/x"]).is_err());
        let relative = tail(&["--cgroup", "system.slice/nginx.service"]).unwrap();
        let err = relative.filter.to_filter().unwrap_err().to_string();
        assert!(err.contains("start at the cgroup2 root"), "{err}");
        // A file system path names the cgroup to give instead (on hosts with cgroup v2).
        if let Some(mount) = crate::host::cgroup::cgroup2_mount() {
            let fs_path = format!("{}/system.slice", mount.display());
            let args = tail(&["--cgroup", &fs_path]).unwrap();
            let err = args.filter.to_filter().unwrap_err().to_string();
            assert!(err.contains("`/system.slice`"), "{err}");
        }
    }

    #[test]
    fn doctor_flags() {
        let doctor = |args: &[&str]| {
            let mut argv = vec!["tcptrace", "doctor"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).map(|cli| match cli.command {
                Command::Doctor(d) => d,
                _ => unreachable!("parsed doctor"),
            })
        };
        let d = doctor(&[]).unwrap();
        assert_eq!(d.duration, std::time::Duration::from_secs(5));
        assert_eq!(d.output, DoctorFormat::Text);
        assert_eq!(d.thresholds.to_thresholds(), Thresholds::default());
        let d = doctor(&[
            "-o",
            "json",
            "--close-wait-age",
            "1.5",
            "--time-wait-share",
            "10",
            "--fin-wait2-age",
            "2",
            "--netns-path",
            "/proc/self/ns/net",
        ])
        .unwrap();
        let t = d.thresholds.to_thresholds();
        assert_eq!(t.close_wait_age, std::time::Duration::from_millis(1500));
        assert_eq!(t.fin_wait2_age, Some(std::time::Duration::from_secs(2)));
        assert_eq!(t.time_wait_share, 10.0);
        for bad in [
            &["--time-wait-share", "0"][..],
            &["--time-wait-share", "101"],
            &["--syn-recv", "0"],
            &["--close-wait-age", "-1"],
            &["-o", "table"],
        ] {
            assert!(doctor(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serve_flags() {
        let serve = |args: &[&str]| {
            let mut argv = vec!["tcptrace", "serve"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).map(|cli| match cli.command {
                Command::Serve(s) => s,
                _ => unreachable!("parsed serve"),
            })
        };
        let s = serve(&[]).unwrap();
        assert_eq!(s.listen_address.len(), 1);
        assert_eq!(s.listen_address[0].to_string(), DEFAULT_LISTEN_ADDRESS);
        assert!(!s.tail);
        assert_eq!(s.max_requests, 40);
        assert_eq!(s.telemetry_path, "/metrics");
        assert_eq!(s.reconcile_interval, std::time::Duration::from_secs(30));
        let s = serve(&[
            "--web.listen-address",
            "[::1]:9999",
            "--web.telemetry-path",
            "/m",
            "--port",
            "80",
            "--tail",
        ])
        .unwrap();
        assert_eq!(s.listen_address[0].port, 9999);
        assert_eq!(s.listen_address[0].host.as_deref(), Some("::1"));
        assert_eq!(s.telemetry_path, "/m");
        assert_eq!(s.filter.ports, [80]);
        assert!(s.tail);
        assert_eq!(s.tail_format, OutputFormat::Table);
        assert!(serve(&["--web.telemetry-path", "metrics"]).is_err());
        assert!(serve(&["--web.listen-address", "localhost"]).is_err());
        // node_exporter's forms: every address, a host name, several listeners.
        let s = serve(&[
            "--web.listen-address",
            ":9850",
            "--web.listen-address",
            "localhost:9851",
            "--tail",
            "--tail-format",
            "json",
            "--web.config.file",
            "/etc/tcptrace/web.yml",
            "--capabilities.keep",
            "cap_syslog",
        ])
        .unwrap();
        assert_eq!(s.listen_address[0].host, None);
        assert_eq!(s.listen_address[0].to_string(), ":9850");
        assert_eq!(s.listen_address[1].host.as_deref(), Some("localhost"));
        assert_eq!(s.tail_format, OutputFormat::Json);
        assert!(s.web_config_file.is_some());
        let all = s.listen_address[0].candidates().unwrap();
        assert!(
            all.iter()
                .all(|a| a.ip().is_unspecified() && a.port() == 9850)
        );
        let local = s.listen_address[1].candidates().unwrap();
        assert_eq!(local.len(), 1);
        assert!(
            local[0].ip().is_loopback() && local[0].is_ipv4(),
            "{local:?}"
        );
        for bad in ["9850", "::1:9850", "[zz]:1", "host:99999", "a b:1"] {
            assert!(serve(&["--web.listen-address", bad]).is_err(), "{bad}");
        }
        assert!(serve(&["--tail=yaml"]).is_err());
        assert!(serve(&["--capabilities.keep", "cap_nonsense"]).is_err());
    }

    #[test]
    fn top_flags() {
        let top = |args: &[&str]| {
            let mut argv = vec!["tcptrace", "top"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).map(|cli| match cli.command {
                Command::Top(t) => t,
                _ => unreachable!("parsed top"),
            })
        };
        let t = top(&[]).unwrap();
        assert_eq!(t.reconcile_interval, std::time::Duration::from_secs(10));
        assert_eq!(t.dwell_window, std::time::Duration::from_secs(60));
        assert_eq!(t.list, 200);
        let t = top(&[
            "--lport",
            "8080",
            "--comm",
            "nginx",
            "--close-wait-age",
            "5",
        ])
        .unwrap();
        assert_eq!(t.filter.lports, [8080]);
        assert_eq!(t.filter.comms, ["nginx"]);
        assert_eq!(
            t.thresholds.to_thresholds().close_wait_age,
            std::time::Duration::from_secs(5)
        );
        assert!(top(&["--list", "0"]).is_err());
        assert!(top(&["--dwell-window", "0"]).is_err());
    }

    #[test]
    fn bad_flags_are_rejected_with_a_reason() {
        for (args, needle) in [
            (&["--port", "70000"][..], "70000"),
            (&["--state", "bogus"][..], "SYN_SENT"),
            (&["--addr", "10.0.0.0/40"][..], "CIDR"),
            (&["--duration", "0"][..], "positive"),
            (&["--duration", "1e30"][..], "too many seconds"),
            (
                &["--duration", "666666666666666666666666666"][..],
                "too many seconds",
            ),
            (&["--count", "0"][..], "0"),
            (&["--ring-bytes", "5000"][..], "power of two"),
            (&["-4", "-6"][..], "cannot be used"),
        ] {
            let err = tail(args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}
