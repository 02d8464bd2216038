//! `cargo xtask bench`: what tcptrace costs the host and whether it misses anything.
//!
//! A loopback connection-churn load (about 10 transitions per connection) runs interleaved
//! with no tracer, with `tcptrace tail -o json > /dev/null`, with `tcptrace serve` (scraped
//! every second), with `tcptrace top` drawing in a real terminal (tmux, 100x30), and with the
//! peers a user would otherwise run on the same tracepoint (libbpf-tools `tcpstates`, the same
//! tool as a bpftrace script, and an empty bpftrace program: the floor any tracer pays), for
//! several rounds (A B C D ... A B C D ...). For each run it records
//! connections/s, transitions expected vs received vs lost (ring full, recursion misses)
//! and that the agent read every record the kernel sent,
//! the kernel program's ns per run (`kernel.bpf_stats_enabled` on for the bench), the agent's
//! CPU seconds per million transitions and its peak RSS. A held mode keeps many connections
//! ESTABLISHED under `serve` to measure memory with many tracked sockets.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};

use crate::{cargo, sh, workspace_root};

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Connections per run.
    #[arg(long, default_value_t = 20_000)]
    connections: u64,
    /// Concurrent client (and server) threads.
    #[arg(long, default_value_t = 2)]
    concurrency: u64,
    /// Rounds of (no tracer, tail, serve, top).
    #[arg(long, default_value_t = 5)]
    rounds: u64,
    /// Which end closes first.
    #[arg(long, value_enum, default_value_t = CloseOrder::Client)]
    close: CloseOrder,
    /// Also hold this many connections ESTABLISHED under `serve` and report its memory
    /// (2 tracked sockets per connection; 0 skips).
    #[arg(long, default_value_t = 50_000)]
    held: u64,
    /// The short run `cargo xtask test` does: 1 round of 2000 connections, 2000 held, results
    /// in target/bench-smoke (other options are ignored).
    #[arg(long)]
    smoke: bool,
    /// Where to write result.json and result.md.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Also run `tail` and `serve` of this other tcptrace binary in every round (e.g. the
    /// previous release), interleaved with this tree's, to compare the two in one run.
    #[arg(long, value_name = "BIN")]
    compare: Option<PathBuf>,
    /// Also run `tail` with the kernel program's own log enabled (`--log-level debug`), to
    /// measure what the log statements cost when they are on.
    #[arg(long)]
    kernel_log: bool,
    /// Also churn connections for this many seconds while `serve` holds `--held` connections
    /// and reconciles them every 5 s: no transition may be lost to a full ring (0 skips).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    churn_secs: u64,
    /// The agent binary to measure instead of this tree's release build, e.g. the static one
    /// `cargo xtask package` writes; unlike --compare, the held-sockets peak RSS is measured
    /// on it too (default: build and measure target/release/tcptrace).
    #[arg(long, value_name = "PATH")]
    bin: Option<PathBuf>,
    /// Also run `tail` and `serve` with their socket entries in the kernel program's hash
    /// (`--no-socket-storage`: the path of kernels before 5.11), to compare with socket storage.
    #[arg(long)]
    socket_hash: bool,
    /// Leave out the peers (libbpf-tools tcpstates, tcpstates as a bpftrace script) and the
    /// floors (an empty bpftrace program on the same tracepoint; on tp_btf, an empty program
    /// and one that only streams a record per transition).
    #[arg(long)]
    no_peers: bool,
}

impl BenchArgs {
    /// The CI run (`--smoke`).
    pub fn smoke() -> Self {
        Self {
            connections: 2_000,
            concurrency: 2,
            rounds: 1,
            close: CloseOrder::Client,
            held: 2_000,
            smoke: true,
            out: PathBuf::from("target/bench-smoke"),
            compare: None,
            kernel_log: false,
            churn_secs: 5,
            bin: None,
            socket_hash: false,
            no_peers: false,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum CloseOrder {
    Client,
    Server,
}

/// What runs beside the churn.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    None,
    Tail,
    Serve,
    /// `top` in a tmux terminal, drawing as it does for a person.
    Top,
    /// Another tracer of the same tracepoint.
    Peer(Peer),
}

/// The tools a user would otherwise run, on the classic tracepoint `sock:inet_sock_set_state`
/// (bpftrace 0.17, Debian 12's, has no raw or BTF tracepoints), and the floors: an empty
/// program on that classic tracepoint, and on `tp_btf/inet_sock_set_state` (tcptrace's own
/// hook, which skips the classic tracepoint's perf-event glue) an empty program and one that
/// only streams a record per transition (`bench-floor/`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    /// libbpf-tools' `tcpstates` (Debian's `libbpf-tools`), printing to a pipe we drain.
    Tcpstates,
    /// `xtask/bench/tcpstates.bt`: the same tool as a bpftrace script.
    BpftraceTcpstates,
    /// A bpftrace program that does nothing on the tracepoint: the cost of being attached.
    Empty,
    /// An empty program on `tp_btf/inet_sock_set_state`: the floor tcptrace's own program
    /// stands on.
    EmptyBtf,
    /// A `tp_btf` program that only reserves, stamps and submits a record of tcptrace's size
    /// with tcptrace's wakeup rule, drained as the agent drains: what streaming alone costs.
    RingBtf,
}

impl Peer {
    const ALL: [Self; 5] = [
        Self::Tcpstates,
        Self::BpftraceTcpstates,
        Self::Empty,
        Self::EmptyBtf,
        Self::RingBtf,
    ];

    fn command(self) -> Command {
        match self {
            Self::Tcpstates => Command::new("/usr/sbin/tcpstates"),
            Self::BpftraceTcpstates => {
                let mut c = Command::new("bpftrace");
                c.arg(workspace_root().join("xtask/bench/tcpstates.bt"));
                c
            }
            Self::Empty => {
                let mut c = Command::new("bpftrace");
                c.args(["-e", "tracepoint:sock:inet_sock_set_state { }"]);
                c
            }
            Self::EmptyBtf | Self::RingBtf => {
                let mut c = Command::new(workspace_root().join(FLOOR_BIN));
                c.arg(if self == Self::EmptyBtf {
                    "empty"
                } else {
                    "ring"
                });
                c
            }
        }
    }

    /// Whether it is one of the project's own floor programs (`bench-floor/`).
    fn ours(self) -> bool {
        matches!(self, Self::EmptyBtf | Self::RingBtf)
    }

    /// Whether it reports what it received: one line per transition of the churn's port, or
    /// (the ring floor, which reads every transition on the host) a count at the end.
    fn prints(self) -> bool {
        !matches!(self, Self::Empty | Self::EmptyBtf)
    }
}

/// One column of the comparison: a kind of run, with which tcptrace binary.
#[derive(Clone, Debug)]
struct Mode {
    kind: Kind,
    bin: PathBuf,
    /// Appended to the name when the binary or its options are not the default ones.
    label: Option<String>,
    /// More arguments for the agent.
    extra: Vec<&'static str>,
}

impl Mode {
    fn name(&self) -> String {
        let base = match self.kind {
            Kind::None => "no tracer",
            Kind::Tail => "tail -o json > /dev/null",
            Kind::Serve => "serve (scraped 1/s)",
            Kind::Top => "top (in tmux, 100x30)",
            Kind::Peer(Peer::Tcpstates) => "peer: libbpf-tools tcpstates",
            Kind::Peer(Peer::BpftraceTcpstates) => "peer: tcpstates.bt (bpftrace)",
            Kind::Peer(Peer::Empty) => "floor: empty program (bpftrace)",
            Kind::Peer(Peer::EmptyBtf) => "floor: empty program (tp_btf)",
            Kind::Peer(Peer::RingBtf) => "floor: a ring record only (tp_btf)",
        };
        match &self.label {
            Some(label) => format!("{base} [{label}]"),
            None => base.to_owned(),
        }
    }
}

/// Transitions of one connection: client 5 (CLOSE->SYN_SENT->ESTABLISHED->...->CLOSE) and
/// server child 5.
const TRANSITIONS_PER_CONNECTION: u64 = 10;
/// The listener's CLOSE -> LISTEN and LISTEN -> CLOSE.
const LISTENER_TRANSITIONS: u64 = 2;
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// The floor programs' loader (`bench-floor/`).
const FLOOR_BIN: &str = "target/release/tcptrace-bench-floor";
/// What the floor's summary line says, which only a floor that ended well prints.
const FLOOR_SUMMARY: &str = "sent by the kernel";

#[derive(Default, Clone, Debug)]
struct RunResult {
    conns_per_s: f64,
    /// conn/s of the untraced run just before this one (its pair).
    paired_with: f64,
    expected: u64,
    received: u64,
    /// Records the kernel program wrote to the ring (its own counter), and records the agent
    /// could not decode: received + unreadable must equal sent.
    sent: u64,
    unreadable: u64,
    lost_ring: u64,
    lost_recursion: u64,
    prog_ns_per_run: Option<f64>,
    cpu_s_per_m: Option<f64>,
    peak_rss_kb: Option<u64>,
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The churn: `n` connections from `c` client threads to `c` server threads.
fn churn(port: u16, n: u64, c: u64, close: CloseOrder) -> anyhow::Result<f64> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    // A deep accept queue: an overflowing one drops SYNs, and a 1 s SYN retransmit would
    // measure the backlog instead of the tracer.
    // SAFETY: listen(2) again on our own listening socket only changes its backlog.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) };
    let listener = Arc::new(listener);
    let accepted = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + RUN_TIMEOUT;
    let servers: Vec<_> = (0..c)
        .map(|_| {
            let listener = listener.clone();
            let accepted = accepted.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                while accepted.fetch_add(1, Ordering::Relaxed) < n {
                    let (mut s, _) = listener.accept()?;
                    if close == CloseOrder::Client {
                        let mut buf = [0u8; 1];
                        let _ = s.read(&mut buf);
                    }
                }
                Ok(())
            })
        })
        .collect();
    let start = Instant::now();
    let per = n / c;
    let clients: Vec<_> = (0..c)
        .map(|i| {
            let count = if i == c - 1 { n - per * (c - 1) } else { per };
            std::thread::spawn(move || -> std::io::Result<()> {
                for _ in 0..count {
                    let mut s = TcpStream::connect(("127.0.0.1", port))?;
                    if close == CloseOrder::Server {
                        let mut buf = [0u8; 1];
                        let _ = s.read(&mut buf);
                    }
                    if Instant::now() > deadline {
                        return Err(std::io::Error::other("run timed out"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in clients {
        t.join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    }
    // Each acceptor takes a ticket before accept(), so exactly `n` accepts are attempted
    // and all of them complete.
    for t in servers {
        t.join()
            .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    }
    let elapsed = start.elapsed();
    Ok(n as f64 / elapsed.as_secs_f64())
}

pub(crate) fn read_proc(pid: u32, file: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default()
}

pub(crate) fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key)
            .then(|| v.split_whitespace().next()?.parse().ok())
            .flatten()
    })
}

/// The fdinfo of each of process `pid`'s BPF programs.
fn bpf_progs(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("bpf-prog"))
        })
        .map(|e| read_proc(pid, &format!("fdinfo/{}", e.file_name().to_string_lossy())))
        .collect()
}

/// The fdinfo of process `pid`'s busiest BPF program (the most runs).
fn busiest_prog(pid: u32) -> Option<String> {
    bpf_progs(pid)
        .into_iter()
        .max_by_key(|info| field(info, "run_cnt").unwrap_or(0))
}

/// (run_time_ns of all the process's BPF programs, run_cnt of its busiest): the kernel time
/// per event, where a tool runs more than one program per event (tcptrace's main and nested
/// programs on the one tracepoint).
fn prog_stats(pid: u32) -> Option<(u64, u64)> {
    let progs = bpf_progs(pid);
    let time = progs
        .iter()
        .filter_map(|i| field(i, "run_time_ns"))
        .sum::<u64>();
    let runs = progs.iter().filter_map(|i| field(i, "run_cnt")).max()?;
    Some((time, runs))
}

/// `recursion_misses` of the process's busiest BPF program (runs the kernel skipped because a
/// BPF program was already running on that CPU; Linux 5.12+).
fn prog_misses(pid: u32) -> Option<u64> {
    field(&busiest_prog(pid)?, "recursion_misses")
}

pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = read_proc(pid, "stat");
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime, fields 14 and 15 of proc(5), in USER_HZ ticks.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / USER_HZ)
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux architecture tcptrace supports.
const USER_HZ: f64 = 100.0;

pub(crate) fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

pub(crate) fn sample(metrics: &str, series: &str) -> Option<u64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse::<f64>()
            .ok()
            .map(|v| v as u64)
    })
}

struct Agent {
    /// The agent process (`tail`, `serve`); `top` runs inside tmux, not as our child.
    child: Option<Child>,
    pid: u32,
    stderr: Option<BufReader<std::process::ChildStderr>>,
    metrics_addr: Option<String>,
    tmux: Option<Tmux>,
    /// A peer's stdout and stderr readers: (transition lines on the bench's port, stderr).
    peer_output: Option<PeerOutput>,
}

/// Threads draining a peer's output, so a full pipe never slows it.
struct PeerOutput {
    lines: std::thread::JoinHandle<u64>,
    stderr: std::thread::JoinHandle<String>,
}

/// The tmux server `top` runs in, and the file its stderr goes to.
struct Tmux {
    socket: String,
    log: PathBuf,
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// How long an agent may take to attach, and to stop.
const AGENT_WAIT: Duration = Duration::from_secs(60);

/// Starts `tcptrace top --port PORT` in a new 100x30 tmux terminal; returns once it says it
/// is tracing (its stderr goes to a file, the terminal is its stdout).
fn start_top(bin: &Path, port: &str, extra: &[&str]) -> anyhow::Result<Agent> {
    let socket = format!("tcptrace-bench-{}-{port}", std::process::id());
    let log = std::env::temp_dir().join(format!("{socket}.log"));
    let mut command = format!("exec {} top --port {port}", bin.display());
    for arg in extra {
        command.push(' ');
        command.push_str(arg);
    }
    command.push_str(&format!(" 2>{}", log.display()));
    let tmux = Tmux { socket, log };
    sh(Command::new("tmux").args([
        "-L",
        &tmux.socket,
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "100",
        "-y",
        "30",
        &command,
    ]))
    .context("tmux (cargo xtask setup installs it)")?;
    let out = Command::new("tmux")
        .args([
            "-L",
            &tmux.socket,
            "list-panes",
            "-t",
            "top",
            "-F",
            "#{pane_pid}",
        ])
        .output()?;
    let pid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("the pid of top in tmux")?;
    let deadline = Instant::now() + AGENT_WAIT;
    loop {
        let said = std::fs::read_to_string(&tmux.log).unwrap_or_default();
        if said.contains("tcptrace: tracing") {
            break;
        }
        if Instant::now() > deadline || !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("tcptrace top did not start: {said}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Agent {
        child: None,
        pid,
        stderr: None,
        metrics_addr: None,
        tmux: Some(tmux),
        peer_output: None,
    })
}

/// Starts a peer tracer; returns once its program is attached (the process holds a BPF
/// program and the perf event or link that attaches it) and a moment has passed.
fn start_peer(peer: Peer, port: u16) -> anyhow::Result<Agent> {
    let mut child = peer
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            if peer.ours() {
                format!("cannot start {FLOOR_BIN} (the bench builds it)")
            } else {
                format!(
                    "cannot start {peer:?} (cargo xtask setup installs libbpf-tools and bpftrace)"
                )
            }
        })?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let word = format!(" {port} ");
    let lines = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains(&word))
            .count() as u64
    });
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let pid = child.id();
    let deadline = Instant::now() + AGENT_WAIT;
    while !attached(pid) {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{peer:?} did not attach within {AGENT_WAIT:?}");
        }
        if let Some(status) = child.try_wait()? {
            let said = stderr.join().unwrap_or_default();
            bail!("{peer:?} exited ({status}): {}", said.trim());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(Agent {
        pid,
        child: Some(child),
        stderr: None,
        metrics_addr: None,
        tmux: None,
        peer_output: Some(PeerOutput { lines, stderr }),
    })
}

/// Whether process `pid` holds a BPF program and what attaches one (a perf event for a
/// classic tracepoint, or a BPF link).
fn attached(pid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let links: Vec<String> = dir
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    links.iter().any(|l| l.contains("bpf-prog"))
        && links
            .iter()
            .any(|l| l.contains("perf_event") || l.contains("bpf_link"))
}

/// Events a peer said it lost: libbpf-tools print `lost N events on CPU #C`, bpftrace
/// `Lost N events`.
fn peer_lost(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("lost "))
        .filter_map(|l| number_before(l, " events"))
        .sum()
}

fn start_agent(bin: &Path, kind: Kind, port: u16, extra: &[&str]) -> anyhow::Result<Agent> {
    let port = port.to_string();
    let mut cmd = Command::new(bin);
    let mut metrics_addr = None;
    match kind {
        Kind::None => bail!("no agent to start"),
        Kind::Tail => {
            cmd.args(["tail", "-o", "json", "--port", &port]);
        }
        Kind::Serve => {
            let addr = format!("127.0.0.1:{}", free_port()?);
            cmd.args(["serve", "--port", &port, "--web.listen-address", &addr]);
            metrics_addr = Some(addr);
        }
        Kind::Top => return start_top(bin, &port, extra),
        Kind::Peer(peer) => return start_peer(peer, port.parse()?),
    }
    let mut child = cmd
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let mut stderr = BufReader::new(child.stderr.take().context("stderr")?);
    let mut line = String::new();
    stderr.read_line(&mut line)?;
    if !line.starts_with("tcptrace: tracing") {
        bail!("tcptrace did not start: {line}");
    }
    Ok(Agent {
        pid: child.id(),
        child: Some(child),
        stderr: Some(stderr),
        metrics_addr,
        tmux: None,
        peer_output: None,
    })
}

/// Stops the agent with SIGINT (as Ctrl-C would) and returns what it said on stderr after
/// it started.
fn stop(agent: &mut Agent) -> anyhow::Result<String> {
    Command::new("kill")
        .args(["-INT", &agent.pid.to_string()])
        .status()?;
    if let Some(tmux) = &agent.tmux {
        let deadline = Instant::now() + AGENT_WAIT;
        while Path::new(&format!("/proc/{}", agent.pid)).exists() {
            if Instant::now() > deadline {
                bail!("tcptrace top did not stop on SIGINT");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        return Ok(std::fs::read_to_string(&tmux.log)?);
    }
    if let Some(output) = agent.peer_output.take() {
        if let Some(child) = &mut agent.child {
            child.wait()?;
        }
        let lines = output.lines.join().unwrap_or(0);
        let said = output.stderr.join().unwrap_or_default();
        // The floors report in tail's words.
        if said.contains(FLOOR_SUMMARY) {
            return Ok(said);
        }
        // In tail's words, for the parser below.
        return Ok(format!(
            "{lines} shown, {} lost (ring full), 0 lost (recursion)",
            peer_lost(&said)
        ));
    }
    let mut rest = String::new();
    if let Some(stderr) = &mut agent.stderr {
        stderr.read_to_string(&mut rest)?;
    }
    if let Some(child) = &mut agent.child {
        child.wait()?;
    }
    Ok(rest)
}

/// "12 shown, ... 3 lost (ring full), 4 lost (recursion)" -> the number before `label`.
fn number_before(text: &str, label: &str) -> Option<u64> {
    let at = text.find(label)?;
    text[..at]
        .split(|c: char| !c.is_ascii_digit())
        .rev()
        .find(|s| !s.is_empty())?
        .parse()
        .ok()
}

/// What the agent reported at the end of a run.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    received: u64,
    lost_ring: u64,
    lost_recursion: u64,
    sent: u64,
    unreadable: u64,
}

impl Counts {
    /// Zero received when the tool prints nothing to count (the table then shows `-`).
    fn counted(self, prints: bool) -> Self {
        if prints {
            self
        } else {
            Self {
                received: 0,
                sent: 0,
                ..self
            }
        }
    }
}

fn run_once(mode: &Mode, args: &BenchArgs, n: u64) -> anyhow::Result<RunResult> {
    let port = free_port()?;
    let expected = n * TRANSITIONS_PER_CONNECTION + LISTENER_TRANSITIONS;
    if mode.kind == Kind::None {
        let rate = churn(port, n, args.concurrency, args.close)?;
        return Ok(RunResult {
            conns_per_s: rate,
            expected,
            ..Default::default()
        });
    }
    let mut agent = start_agent(&mode.bin, mode.kind, port, &mode.extra)?;
    let pid = agent.pid;
    let scraping = Arc::new(AtomicBool::new(true));
    let scraper = agent.metrics_addr.clone().map(|addr| {
        let scraping = scraping.clone();
        std::thread::spawn(move || {
            while scraping.load(Ordering::Relaxed) {
                let _ = http_get(&addr, "/metrics");
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    });
    let before = prog_stats(pid);
    let misses_before = prog_misses(pid);
    let cpu_before = cpu_seconds(pid);
    let rate = churn(port, n, args.concurrency, args.close)?;
    // Let the agent drain what is queued.
    std::thread::sleep(Duration::from_millis(1500));
    let after = prog_stats(pid);
    let misses_after = prog_misses(pid);
    let cpu_after = cpu_seconds(pid);
    let peak_rss_kb = field(&read_proc(pid, "status"), "VmHWM");
    let counts = match &agent.metrics_addr {
        // Kernel counters are published once a second: scrape until two scrapes agree.
        Some(addr) => {
            let read = || {
                let m = http_get(addr, "/metrics").unwrap_or_default();
                let get = |series: &str| sample(&m, series).unwrap_or(0);
                Counts {
                    received: get("tcptrace_events_processed_total"),
                    lost_ring: get("tcptrace_lost_events_total{reason=\"ring_full\"}"),
                    lost_recursion: get("tcptrace_lost_events_total{reason=\"recursion\"}"),
                    sent: get("tcptrace_kernel_events_total"),
                    unreadable: get("tcptrace_decode_errors_total"),
                }
            };
            let mut last = read();
            for _ in 0..10 {
                std::thread::sleep(Duration::from_millis(1100));
                let now = read();
                if now == last {
                    break;
                }
                last = now;
            }
            last
        }
        None => Counts::default(),
    };
    scraping.store(false, Ordering::Relaxed);
    if let Some(s) = scraper {
        let _ = s.join();
    }
    let summary = stop(&mut agent)?;
    let counts = if matches!(mode.kind, Kind::Tail | Kind::Top) {
        let get = |label: &str| number_before(&summary, label).unwrap_or(0);
        let received = if mode.kind == Kind::Top {
            "transitions drawn"
        } else {
            "shown"
        };
        Counts {
            received: get(received),
            lost_ring: get("lost (ring full)"),
            lost_recursion: get("lost (recursion)"),
            sent: get("sent by the kernel"),
            unreadable: get("unreadable"),
        }
    } else if let Kind::Peer(peer) = mode.kind {
        let floor = peer.ours();
        if floor && !summary.contains(FLOOR_SUMMARY) {
            bail!("{} failed: {}", mode.name(), summary.trim());
        }
        let get = |label: &str| number_before(&summary, label).unwrap_or(0);
        let received = get("shown");
        Counts {
            received,
            lost_ring: get("lost (ring full)"),
            // The kernel's count for the program (`recursion_misses` in its fdinfo).
            lost_recursion: match (misses_before, misses_after) {
                (Some(a), Some(b)) => b.saturating_sub(a),
                _ => 0,
            },
            // The floors count what their program wrote; a peer has no such count, so what
            // it printed is all we know.
            sent: if floor { get(FLOOR_SUMMARY) } else { received },
            unreadable: 0,
        }
        .counted(peer.prints())
    } else {
        counts
    };
    let Counts {
        received,
        lost_ring,
        lost_recursion,
        sent,
        unreadable,
    } = counts;
    let prog_ns_per_run = match (before, after) {
        (Some((t0, c0)), Some((t1, c1))) if c1 > c0 && t1 > 0 => {
            Some((t1 - t0) as f64 / (c1 - c0) as f64)
        }
        _ => None,
    };
    let cpu_s_per_m = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) if received > 0 => Some((b - a) / (received as f64 / 1e6)),
        _ => None,
    };
    Ok(RunResult {
        conns_per_s: rate,
        paired_with: rate,
        expected,
        received,
        sent,
        unreadable,
        lost_ring,
        lost_recursion,
        prog_ns_per_run,
        cpu_s_per_m,
        peak_rss_kb,
    })
}

/// Helper processes holding connections open (see [`hold_connections`]), and their ports.
struct Holders {
    helpers: Vec<(Child, BufReader<std::process::ChildStdout>)>,
    ports: Vec<String>,
}

impl Holders {
    /// Starts helpers for `n` connections (not yet opened).
    fn spawn(n: u64) -> anyhow::Result<Self> {
        // Without CAP_SYS_RESOURCE one process gets at most the hard RLIMIT_NOFILE of file
        // descriptors, two per connection: spread the connections over helper processes, each
        // with a listener of its own (one destination port offers ~28k ephemeral source ports).
        let per_helper = (raise_nofile(2 * n + 4096).saturating_sub(512) / 2).min(20_000);
        if per_helper == 0 {
            bail!("RLIMIT_NOFILE leaves no room for held connections");
        }
        let exe = std::env::current_exe().context("xtask's own path")?;
        let mut holders = Self {
            helpers: Vec::new(),
            ports: Vec::new(),
        };
        let mut left = n;
        while left > 0 {
            let count = left.min(per_helper);
            left -= count;
            let mut child = Command::new(&exe)
                .args(["hold-connections", "--count", &count.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("cannot start a hold-connections helper")?;
            let mut out = BufReader::new(child.stdout.take().context("helper stdout")?);
            let mut line = String::new();
            out.read_line(&mut line)?;
            let port = line
                .strip_prefix("port ")
                .and_then(|p| p.trim().parse::<u16>().ok())
                .with_context(|| format!("helper said {line:?}, not its port"))?;
            holders.ports.push(port.to_string());
            holders.helpers.push((child, out));
        }
        Ok(holders)
    }

    /// `--port P` for every helper's port.
    fn port_args(&self) -> Vec<&str> {
        self.ports
            .iter()
            .flat_map(|p| ["--port", p.as_str()])
            .collect()
    }

    /// Opens the connections; returns how many are held.
    fn open(&mut self) -> anyhow::Result<u64> {
        let mut opened = 0;
        for (child, out) in &mut self.helpers {
            writeln!(child.stdin.as_mut().context("helper stdin")?, "go")?;
            let mut line = String::new();
            out.read_line(&mut line)?;
            opened += line
                .strip_prefix("held ")
                .and_then(|c| c.trim().parse::<u64>().ok())
                .with_context(|| format!("helper said {line:?}, not how many it holds"))?;
        }
        Ok(opened)
    }

    /// Closes every connection and waits for the helpers.
    fn release(self) -> anyhow::Result<()> {
        for (mut child, _) in self.helpers {
            drop(child.stdin.take());
            child.wait()?;
        }
        Ok(())
    }
}

/// Agent options for `n` held connections: the kernel's per-socket map and the agent's table
/// must hold them all, and a reconcile every `reconcile` seconds.
fn held_options(n: u64, reconcile: &str) -> Vec<String> {
    let max = (2 * n + 4096).next_power_of_two().to_string();
    [
        "--max-sockets",
        &max,
        "--max-tracked-sockets",
        &max,
        "--reconcile-interval",
        reconcile,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Holds `n` connections open under `serve` (reconciled every second) and reports its peak
/// RSS, the sockets its gauge counted, and what a reconcile of them all costs.
fn held(bin: &Path, n: u64) -> anyhow::Result<Held> {
    let mut holders = Holders::spawn(n)?;
    // A reconcile every second: each takes an INET_DIAG snapshot of every held socket, the
    // agent's largest transient allocation, so the peak measured includes it.
    let options = held_options(n, "1");
    let mut extra: Vec<&str> = options.iter().map(String::as_str).collect();
    extra.extend(holders.port_args());
    let mut agent = start_agent(bin, Kind::Serve, holders.ports[0].parse()?, &extra)?;
    let started = Instant::now();
    let opened = holders.open()?;
    let open_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    let addr = agent.metrics_addr.clone().context("metrics address")?;
    // Reconciles over a quiet window of a few seconds: their mean wall time, and the agent's
    // CPU per reconcile.
    let read = || {
        let m = http_get(&addr, "/metrics").unwrap_or_default();
        let count = sample(&m, "tcptrace_reconcile_duration_seconds_count").unwrap_or(0);
        let sum = m
            .lines()
            .find_map(|l| l.strip_prefix("tcptrace_reconcile_duration_seconds_sum "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        (count, sum, cpu_seconds(agent.pid))
    };
    let (c0, s0, cpu0) = read();
    std::thread::sleep(Duration::from_secs(6));
    let (c1, s1, cpu1) = read();
    let reconciles = c1.saturating_sub(c0);
    let per = |v: f64| (reconciles > 0).then(|| v / reconciles as f64);
    let reconcile_s = per(s1 - s0);
    let reconcile_cpu_s = cpu0.zip(cpu1).and_then(|(a, b)| per(b - a));
    let metrics = http_get(&addr, "/metrics").unwrap_or_default();
    let tracked = sample(&metrics, "tcptrace_sockets{state=\"established\"}").unwrap_or(0);
    let peak_rss_kb = field(&read_proc(agent.pid, "status"), "VmHWM").unwrap_or(0);
    holders.release()?;
    stop(&mut agent)?;
    Ok(HeldReport {
        connections: opened,
        tracked,
        peak_rss_kb,
        open_s,
        reconcile_s,
        reconcile_cpu_s,
    })
}

/// What `--churn-secs` measured: reconciles of many sockets while connections churn.
#[derive(serde::Serialize, Debug, Default)]
struct ChurnReport {
    held: u64,
    seconds: f64,
    connections: u64,
    transitions_per_s: f64,
    reconciles: u64,
    /// Sockets the last reconcile compared (the held ones, TIME_WAIT and the churn's).
    sockets_at_end: u64,
    events: u64,
    kernel_sent: u64,
    lost_ring_full: u64,
    lost_recursion: u64,
    /// Agent RSS (kB) a few seconds in, and at the end: memory stays flat.
    rss_start_kb: u64,
    rss_end_kb: u64,
    peak_rss_kb: u64,
    /// TIME_WAIT as the gauge said and as `ss` counted at the end.
    time_wait_gauge: u64,
    time_wait_ss: u64,
}

/// `n` connections held under `serve` (reconciled every 5 s) while loopback connections churn
/// for `secs`: a reconcile of all of them must never stall the ring's reader.
fn churn_with_reconciles(bin: &Path, n: u64, secs: u64, c: u64) -> anyhow::Result<ChurnReport> {
    let mut holders = Holders::spawn(n)?;
    let port = free_port()?;
    let port_arg = port.to_string();
    let options = held_options(n + 200_000, "5");
    let mut extra: Vec<&str> = options.iter().map(String::as_str).collect();
    extra.extend(holders.port_args());
    extra.extend(["--port", port_arg.as_str()]);
    let mut agent = start_agent(bin, Kind::Serve, holders.ports[0].parse()?, &extra)?;
    let pid = agent.pid;
    let addr = agent.metrics_addr.clone().context("metrics address")?;
    let held = holders.open()?;
    let start = Instant::now();
    let mut connections = 0;
    let mut rss_start_kb = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        churn(port, 2_000, c, CloseOrder::Client)?;
        connections += 2_000;
        if rss_start_kb == 0 && start.elapsed() > Duration::from_secs(secs.min(10) / 2) {
            rss_start_kb = field(&read_proc(pid, "status"), "VmRSS").unwrap_or(0);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(2500));
    let metrics = http_get(&addr, "/metrics").unwrap_or_default();
    let get = |series: &str| sample(&metrics, series).unwrap_or(0);
    // The same sockets the agent counts: its filter is the churn's and the holders' ports
    // (earlier runs' TIME_WAIT, on other ports, may still be there).
    let ss_filter = format!("( sport = :{port} or dport = :{port} )");
    let ss = Command::new("ss")
        .args(["-tanH", "state", "time-wait", &ss_filter])
        .output()?;
    let status = read_proc(pid, "status");
    let report = ChurnReport {
        held,
        seconds,
        connections,
        transitions_per_s: (connections * TRANSITIONS_PER_CONNECTION) as f64 / seconds,
        reconciles: get("tcptrace_reconciles_total"),
        sockets_at_end: GAUGES
            .iter()
            .map(|s| get(&format!("tcptrace_sockets{{state=\"{s}\"}}")))
            .sum(),
        events: get("tcptrace_events_processed_total"),
        kernel_sent: get("tcptrace_kernel_events_total"),
        lost_ring_full: get("tcptrace_lost_events_total{reason=\"ring_full\"}"),
        lost_recursion: get("tcptrace_lost_events_total{reason=\"recursion\"}"),
        rss_start_kb,
        rss_end_kb: field(&status, "VmRSS").unwrap_or(0),
        peak_rss_kb: field(&status, "VmHWM").unwrap_or(0),
        time_wait_gauge: get("tcptrace_sockets{state=\"time_wait\"}"),
        time_wait_ss: String::from_utf8_lossy(&ss.stdout).lines().count() as u64,
    };
    holders.release()?;
    stop(&mut agent)?;
    Ok(report)
}

/// Socket states of the `tcptrace_sockets` gauge.
const GAUGES: [&str; 10] = [
    "established",
    "syn_sent",
    "syn_recv",
    "fin_wait1",
    "fin_wait2",
    "time_wait",
    "close_wait",
    "last_ack",
    "listen",
    "closing",
];

/// The helper behind `held`: binds a loopback listener, says its port, waits for "go", opens
/// `count` connections (both ends kept), says how many, and holds them until stdin closes.
pub fn hold_connections(count: u64) -> anyhow::Result<ExitCode> {
    let nofile = raise_nofile(2 * count + 64);
    if nofile < 2 * count + 16 {
        bail!("RLIMIT_NOFILE {nofile} cannot hold {count} connections");
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "port {}", listener.local_addr()?.port())?;
    stdout.flush()?;
    let mut stdin = BufReader::new(std::io::stdin());
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    let mut conns = Vec::with_capacity(2 * count as usize);
    for _ in 0..count {
        conns.push(TcpStream::connect(listener.local_addr()?)?);
        conns.push(listener.accept()?.0);
    }
    writeln!(stdout, "held {count}")?;
    stdout.flush()?;
    // Until the bench closes our stdin.
    let _ = stdin.read_to_string(&mut line);
    drop(conns);
    Ok(ExitCode::SUCCESS)
}

/// Raises RLIMIT_NOFILE toward `want`; returns the soft limit obtained (without
/// CAP_SYS_RESOURCE only up to the hard limit).
fn raise_nofile(want: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to rlimit structs.
    unsafe {
        if libc::setrlimit(
            libc::RLIMIT_NOFILE,
            &libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            },
        ) != 0
        {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// Results per mode, in run order.
type Runs = Vec<(Mode, Vec<RunResult>)>;

/// `result.json`.
#[derive(serde::Serialize)]
struct Report {
    machine: String,
    connections: u64,
    rounds: u64,
    modes: Vec<ModeReport>,
    held: Option<HeldReport>,
    churn_with_reconciles: Option<ChurnReport>,
}

#[derive(serde::Serialize)]
struct ModeReport {
    mode: String,
    conns_per_s_median: f64,
    conns_per_s: Vec<f64>,
    /// Median of the per-round ratios to the untraced run (1 = no cost).
    ratio: f64,
    ratios_pct: Vec<f64>,
    received: u64,
    expected: u64,
    lost_ring_full: u64,
    lost_recursion: u64,
    kernel_ns_per_run: Option<f64>,
    agent_cpu_s_per_million: Option<f64>,
    agent_peak_rss_kb: Option<u64>,
}

#[derive(serde::Serialize)]
struct HeldReport {
    connections: u64,
    /// Sockets `tcptrace_sockets{state="established"}` counted.
    tracked: u64,
    peak_rss_kb: u64,
    /// Seconds to open the connections (the agent tracing them as they come).
    open_s: f64,
    /// Mean wall time of the reconciles over a quiet window (`tcptrace_reconcile_duration_seconds`).
    reconcile_s: Option<f64>,
    /// The agent's CPU seconds per reconcile over that window (it does nothing else then).
    reconcile_cpu_s: Option<f64>,
}
/// Held mode's result.
type Held = HeldReport;

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn spread(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.is_empty() {
        "-".into()
    } else {
        format!("{min:.0}–{max:.0}")
    }
}

fn bpf_stats(enable: Option<&str>) -> anyhow::Result<String> {
    let path = "/proc/sys/kernel/bpf_stats_enabled";
    let old = std::fs::read_to_string(path)
        .context("kernel.bpf_stats_enabled")?
        .trim()
        .to_owned();
    if let Some(v) = enable {
        std::fs::write(path, v).context("set kernel.bpf_stats_enabled")?;
    }
    Ok(old)
}

pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let args = if args.smoke {
        BenchArgs::smoke()
    } else {
        args.clone()
    };
    if !crate::setup::is_ready() {
        crate::setup::steps(crate::setup::BUILD)?;
    }
    let bin = match &args.bin {
        Some(bin) => bin.clone(),
        None => {
            sh(cargo().args(["build", "--release", "--package", "tcptrace", "--bins"]))?;
            workspace_root().join("target/release/tcptrace")
        }
    };
    if !args.no_peers {
        sh(cargo().args(["build", "--release", "--package", "tcptrace-bench-floor"]))?;
    }
    let machine = describe_machine();
    println!("xtask: bench on {machine}");
    let old_stats = bpf_stats(Some("1"))?;
    let mode = |kind, bin: &Path, label: Option<String>| Mode {
        kind,
        bin: bin.to_owned(),
        label,
        extra: Vec::new(),
    };
    let mut modes = vec![
        mode(Kind::None, &bin, None),
        mode(Kind::Tail, &bin, None),
        mode(Kind::Serve, &bin, None),
        mode(Kind::Top, &bin, None),
    ];
    if args.socket_hash {
        for kind in [Kind::Tail, Kind::Serve] {
            let mut hash = mode(kind, &bin, Some("socket hash".into()));
            hash.extra = vec!["--no-socket-storage"];
            modes.push(hash);
        }
    }
    if !args.no_peers {
        modes.extend(Peer::ALL.map(|p| mode(Kind::Peer(p), &bin, None)));
    }
    if let Some(other) = &args.compare {
        // The file name only: a path of the measuring machine has no place in a published table.
        let label = other.file_name().map_or_else(
            || other.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        modes.push(mode(Kind::Tail, other, Some(label.clone())));
        modes.push(mode(Kind::Serve, other, Some(label)));
    }
    if args.kernel_log {
        let mut logging = mode(Kind::Tail, &bin, Some("kernel log on".into()));
        logging.extra = vec!["--log-level", "debug"];
        modes.push(logging);
    }
    let result = (|| -> anyhow::Result<(Runs, Option<Held>, Option<ChurnReport>)> {
        let mut runs: Runs = modes.into_iter().map(|m| (m, Vec::new())).collect();
        // Each traced run right after an untraced one (its pair), the traced modes in an
        // order that rotates each round: this VM's speed drifts by up to 2x within a round,
        // far more than a tracer costs, so only adjacent runs compare.
        let mut order: Vec<usize> = (1..runs.len()).collect();
        for round in 1..=args.rounds {
            order.rotate_left(1);
            for &i in &order {
                let mut pair = Vec::with_capacity(2);
                for index in [0, i] {
                    let mut r = run_once(&runs[index].0, &args, args.connections)?;
                    println!(
                        "xtask: round {round} {:<26} {:>8.0} conn/s received {}/{} lost ring {} recursion {}",
                        runs[index].0.name(),
                        r.conns_per_s,
                        r.received,
                        r.expected,
                        r.lost_ring,
                        r.lost_recursion
                    );
                    r.paired_with = pair
                        .first()
                        .map_or(r.conns_per_s, |b: &RunResult| b.conns_per_s);
                    pair.push(r.clone());
                    runs[index].1.push(r);
                }
            }
        }
        let held = (args.held > 0).then(|| held(&bin, args.held)).transpose()?;
        let churned = (args.churn_secs > 0)
            .then(|| churn_with_reconciles(&bin, args.held, args.churn_secs, args.concurrency))
            .transpose()?;
        Ok((runs, held, churned))
    })();
    bpf_stats(Some(&old_stats))?;
    let (runs, held, churned) = result?;

    // Each traced run is compared with the untraced run of its own round: on a shared VM the
    // machine's speed drifts between rounds far more than the tracer costs.
    let paired = |rs: &[RunResult]| -> Vec<f64> {
        rs.iter()
            .map(|r| 100.0 * r.conns_per_s / r.paired_with.max(1e-9))
            .collect()
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {machine}. {} connections per run, {} client threads, {} closes first, {} rounds; each traced run paired with an untraced run just before it, the modes in a rotating order.\n",
        args.connections,
        args.concurrency,
        if args.close == CloseOrder::Client {
            "client"
        } else {
            "server"
        },
        args.rounds
    );
    md.push_str("| mode | conn/s (median, min–max) | vs the untraced run just before (median, min–max) | transitions received / expected | completeness | lost ring_full | lost recursion | kernel ns/run | user-space CPU s per 1M transitions | user-space peak RSS |\n|---|---|---|---|---|---|---|---|---|---|\n");
    let mut report = Report {
        machine: machine.clone(),
        connections: args.connections,
        rounds: args.rounds,
        modes: Vec::new(),
        held,
        churn_with_reconciles: None,
    };
    for (mode, rs) in &runs {
        let rates: Vec<f64> = rs.iter().map(|r| r.conns_per_s).collect();
        let rate = median(rates.clone()).unwrap_or(0.0);
        let ratios = paired(rs);
        let ratio = median(ratios.clone()).unwrap_or(0.0);
        let received: u64 = rs.iter().map(|r| r.received).sum();
        let expected: u64 = rs.iter().map(|r| r.expected).sum();
        let ring: u64 = rs.iter().map(|r| r.lost_ring).sum();
        let rec: u64 = rs.iter().map(|r| r.lost_recursion).sum();
        let ns = median(rs.iter().filter_map(|r| r.prog_ns_per_run).collect());
        let cpu = median(rs.iter().filter_map(|r| r.cpu_s_per_m).collect());
        let rss = rs.iter().filter_map(|r| r.peak_rss_kb).max();
        let fmt = |v: Option<f64>, p: usize| v.map_or("-".to_owned(), |v| format!("{v:.p$}"));
        if mode.kind == Kind::None {
            let _ = writeln!(
                md,
                "| {} | {rate:.0} ({}) | 100 % | - | - | - | - | - | - | - |",
                mode.name(),
                spread(&rates)
            );
        } else if matches!(mode.kind, Kind::Peer(p) if !p.prints()) {
            let _ = writeln!(
                md,
                "| {} | {rate:.0} ({}) | {:.1} % ({} %) | - | - | - | {rec} | {} | - | {} |",
                mode.name(),
                spread(&rates),
                ratio,
                spread(&ratios),
                fmt(ns, 0),
                rss.map_or("-".into(), |kb| format!("{:.1} MB", kb as f64 / 1024.0)),
            );
        } else {
            let _ = writeln!(
                md,
                "| {} | {rate:.0} ({}) | {:.1} % ({} %) | {received} / {expected} | {:.3} % | {ring} | {rec} | {} | {} | {} |",
                mode.name(),
                spread(&rates),
                ratio,
                spread(&ratios),
                100.0 * received as f64 / expected.max(1) as f64,
                fmt(ns, 0),
                fmt(cpu, 2),
                rss.map_or("-".into(), |kb| format!("{:.1} MB", kb as f64 / 1024.0)),
            );
        }
        report.modes.push(ModeReport {
            mode: mode.name(),
            conns_per_s_median: rate,
            conns_per_s: rates,
            ratio: ratio / 100.0,
            ratios_pct: ratios,
            received,
            expected,
            lost_ring_full: ring,
            lost_recursion: rec,
            kernel_ns_per_run: ns,
            agent_cpu_s_per_million: cpu,
            agent_peak_rss_kb: rss,
        });
    }
    md.push_str(&against_targets(&runs, &report.modes));
    if let Some(h) = &report.held {
        let _ = writeln!(
            md,
            "\nHeld: {} connections ESTABLISHED under `serve` ({} sockets in `tcptrace_sockets{{state=\"established\"}}`), opened in {:.1} s: agent peak RSS {:.1} MB; a reconcile of them all (every second) took {} of wall time and {} of the agent's CPU.",
            h.connections,
            h.tracked,
            h.open_s,
            h.peak_rss_kb as f64 / 1024.0,
            h.reconcile_s
                .map_or("-".into(), |s| format!("{:.0} ms", s * 1e3)),
            h.reconcile_cpu_s
                .map_or("-".into(), |s| format!("{:.0} ms", s * 1e3)),
        );
    }
    if let Some(c) = &churned {
        let _ = writeln!(
            md,
            "\nChurn with reconciles: {} connections held, {:.0} transitions/s for {:.0} s, {} \
             reconciles (every 5 s, {} sockets at the end): {} events read of {} sent, lost ring \
             full {}, recursion {}; agent RSS {:.1} MB after warm-up, {:.1} MB at the end, peak \
             {:.1} MB; TIME_WAIT gauge {} vs ss {}.",
            c.held,
            c.transitions_per_s,
            c.seconds,
            c.reconciles,
            c.sockets_at_end,
            c.events,
            c.kernel_sent,
            c.lost_ring_full,
            c.lost_recursion,
            c.rss_start_kb as f64 / 1024.0,
            c.rss_end_kb as f64 / 1024.0,
            c.peak_rss_kb as f64 / 1024.0,
            c.time_wait_gauge,
            c.time_wait_ss
        );
    }
    report.churn_with_reconciles = churned;
    let json = serde_json::to_string_pretty(&report)?;
    let out = workspace_root().join(&args.out);
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("result.json"), &json)?;
    std::fs::write(out.join("result.md"), &md)?;
    println!(
        "\n{md}\nxtask: wrote {} and result.md",
        out.join("result.json").display()
    );

    // A reconcile must never stall the ring's reader. The CI smoke run only shows the mode
    // works (its machine is shared); the full run holds tcptrace to it.
    if let Some(c) = &report.churn_with_reconciles
        && c.lost_ring_full > 0
    {
        let what = format!(
            "{} transitions lost to a full ring while reconciling {} sockets",
            c.lost_ring_full, c.sockets_at_end
        );
        if args.smoke {
            println!("xtask: warning: {what}");
        } else {
            bail!("{what}");
        }
    }
    // Nothing may vanish between the kernel and the agent: every record the program wrote is
    // read (decoded or counted unreadable). Completeness against the connection model is
    // reported above, not asserted: the kernel itself may deviate from it (e.g. accept-queue
    // overflows change a connection's transitions).
    for (mode, rs) in &runs[1..] {
        for r in rs {
            if r.received + r.unreadable != r.sent {
                bail!(
                    "{}: the kernel sent {} records, the agent read {} (+{} unreadable)",
                    mode.name(),
                    r.sent,
                    r.received,
                    r.unreadable
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The per-run targets, in this run's figures: tcptrace's kernel ns per run against
/// the empty `tp_btf` program's and the ring floor's, and its overhead (1 - ratio) against the
/// best peer's. Empty when a figure is missing (`--no-peers`).
fn against_targets(runs: &Runs, modes: &[ModeReport]) -> String {
    let of = |kind: Kind| {
        runs.iter()
            .zip(modes)
            .find(|((mode, _), _)| mode.kind == kind && mode.label.is_none())
            .map(|(_, report)| report)
    };
    let (Some(empty), Some(ring)) = (
        of(Kind::Peer(Peer::EmptyBtf)),
        of(Kind::Peer(Peer::RingBtf)),
    ) else {
        return String::new();
    };
    let (Some(empty_ns), Some(ring_ns)) = (empty.kernel_ns_per_run, ring.kernel_ns_per_run) else {
        return String::new();
    };
    let best_peer = [Peer::Tcpstates, Peer::BpftraceTcpstates]
        .into_iter()
        .filter_map(|p| of(Kind::Peer(p)))
        .map(|r| (1.0 - r.ratio, r.mode.as_str()))
        .reduce(|a, b| if b.0 < a.0 { b } else { a });
    let mut out = format!(
        "\nAgainst the targets: the empty tp_btf program {empty_ns:.0} ns per run, the ring floor {ring_ns:.0} ns ({:.1}x empty).",
        ring_ns / empty_ns.max(1e-9)
    );
    let mut parts = Vec::new();
    for kind in [Kind::Tail, Kind::Serve] {
        let Some(r) = of(kind) else { continue };
        let mut part = if kind == Kind::Tail { "tail" } else { "serve" }.to_owned();
        if let Some(ns) = r.kernel_ns_per_run {
            let _ = write!(
                part,
                ": {ns:.0} ns ({:.1}x empty, {:.1}x the ring floor)",
                ns / empty_ns.max(1e-9),
                ns / ring_ns.max(1e-9)
            );
        }
        if let Some((peer, name)) = best_peer {
            let _ = write!(
                part,
                ", overhead {:.1} % ({:.2}x the best peer's, {name}: {:.1} %)",
                100.0 * (1.0 - r.ratio),
                (1.0 - r.ratio) / peer.max(1e-9),
                100.0 * peer
            );
        }
        parts.push(part);
    }
    if !parts.is_empty() {
        let _ = write!(out, " {}.", parts.join("; "));
    }
    out.push('\n');
    out
}

fn describe_machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| field(&m, "MemTotal"))
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    format!(
        "{cpus} CPUs ({model}), {:.0} GiB RAM, Linux {kernel}",
        mem_kb as f64 / 1048576.0
    )
}
