//! Helpers for tests that run the real agent against the real kernel (root only).
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_tcptrace");

/// Line tcptrace prints on stderr once the program is attached.
pub const READY: &str = "tcptrace: tracing";

/// The keys of the first JSON record of a golden file (`tests/golden/`, compared byte for byte
/// with the output writers by the unit tests): the documented key list of that output. The
/// file is compiled in, so the tests also run where the source tree is not (VM guests).
pub fn golden_keys(golden: &str) -> BTreeSet<String> {
    let first: Value = serde_json::from_str(golden.lines().next().expect("a record")).unwrap();
    first
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect()
}

/// Fails clearly when not root, instead of reporting a misleading kernel error.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "kernel tests need root: run `sudo -E cargo xtask test`"
    );
}

/// A running `tcptrace tail --output json` with its stdout parsed line by line.
pub struct Agent {
    child: Child,
    lines: Receiver<Value>,
    stdout_thread: Option<JoinHandle<()>>,
    stderr_thread: Option<JoinHandle<String>>,
    pub events: Vec<Value>,
}

impl Agent {
    /// Starts `tcptrace tail -o json ARGS` and waits until the program is attached.
    pub fn start(args: &[&str]) -> Self {
        Self::command("tail", args)
    }

    /// Starts `tcptrace COMMAND -o json ARGS` (`tail` or `life`).
    pub fn command(command: &str, args: &[&str]) -> Self {
        require_root();
        let mut child = Command::new(BIN)
            .args([command, "--output", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcptrace");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout_thread = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let stderr_thread = await_ready(&mut child, READY);
        Self {
            child,
            lines,
            stdout_thread: Some(stdout_thread),
            stderr_thread: Some(stderr_thread),
            events: Vec::new(),
        }
    }

    /// Collects events until `done(events)` holds or `timeout` passes; returns whether it held.
    pub fn wait_for(&mut self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.events) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.lines.recv_timeout(left) {
                Ok(v) => self.events.push(v),
                Err(RecvTimeoutError::Timeout) => return done(&self.events),
                Err(RecvTimeoutError::Disconnected) => return done(&self.events),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, waits for exit, and returns the exit status and the rest of stderr.
    pub fn stop(self) -> (ExitStatus, String, Vec<Value>) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.finish()
    }

    /// Waits for the agent to exit by itself.
    pub fn finish(mut self) -> (ExitStatus, String, Vec<Value>) {
        let status = wait_timeout(&mut self.child, Duration::from_secs(20));
        if let Some(t) = self.stdout_thread.take() {
            t.join().unwrap();
        }
        while let Ok(v) = self.lines.try_recv() {
            self.events.push(v);
        }
        let stderr = self.stderr_thread.take().unwrap().join().unwrap();
        (status, stderr, std::mem::take(&mut self.events))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `child`'s stderr until a line starts with `ready` (within 60 s: the verifier can be
/// slow on a busy machine), then drains the rest on a thread that returns it.
pub fn await_ready(child: &mut Child, ready: &str) -> JoinHandle<String> {
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr piped"));
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !line.starts_with(ready) {
        line.clear();
        let n = stderr.read_line(&mut line).expect("read stderr");
        assert!(
            n > 0 && Instant::now() < deadline,
            "tcptrace exited before `{ready}`: {line}"
        );
    }
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    })
}

/// Waits for `child`, killing it (and failing) after `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// close() will then send a RST and skip TIME_WAIT.
pub fn set_linger_zero(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and a properly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(s),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as u32,
        )
    };
    assert_eq!(rc, 0);
}

/// A port that is free on `ip` right now (picked by the kernel, then released), so that the
/// test can start the agent before the listener exists and see its CLOSE -> LISTEN.
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a: SocketAddr| a.port())
        .expect("bind to port 0")
}

/// A port free on 127.0.0.1 below the ephemeral range: no connection of another test (or of
/// anything else on the host) can have used it as its local port, so no stray TIME_WAIT
/// socket of an earlier connection sits on it.
pub fn quiet_port() -> u16 {
    let start = 20_000 + (std::process::id() % 5_000) as u16;
    (start..32_000)
        .chain(20_000..start)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// Events grouped by socket cookie, each group in kernel time order.
pub fn by_cookie(events: &[Value]) -> BTreeMap<u64, Vec<Value>> {
    let mut map: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for e in events {
        map.entry(e["cookie"].as_u64().unwrap())
            .or_default()
            .push(e.clone());
    }
    for list in map.values_mut() {
        list.sort_by_key(|e| e["ts_ns"].as_u64().unwrap());
    }
    map
}

/// Cookies of server children that lost the race for their request socket. When a
/// connection's final ACK and its next segment (data or FIN) are processed on two CPUs at once,
/// both run `tcp_check_req()` on the same request socket and each clones a child
/// (LISTEN -> SYN_RECV, in `inet_csk_clone_lock()`); the one whose `inet_ehash_nolisten()` finds
/// the request already replaced closes at once (SYN_RECV -> CLOSE) and is never accepted. On
/// loopback this happens when the sender's softirq work is deferred, as in emulated guests.
/// Such a socket has exactly those two transitions, and a sibling with its endpoints and
/// namespace went on.
pub fn lost_race_children(events: &[Value]) -> BTreeSet<u64> {
    let sockets = by_cookie(events);
    let key = |e: &Value| {
        (
            e["netns"].clone(),
            e["local_addr"].clone(),
            e["local_port"].clone(),
            e["remote_addr"].clone(),
            e["remote_port"].clone(),
        )
    };
    sockets
        .iter()
        .filter(|(cookie, list)| {
            transitions(list) == ["LISTEN->SYN_RECV", "SYN_RECV->CLOSE"]
                && sockets.iter().any(|(other, siblings)| {
                    other != *cookie
                        && siblings
                            .iter()
                            .any(|e| e["from"] == "SYN_RECV" && e["to"] == "ESTABLISHED")
                        && key(&siblings[0]) == key(&list[0])
                })
        })
        .map(|(cookie, _)| *cookie)
        .collect()
}

/// `events` without the sockets [`lost_race_children`] names.
pub fn without_lost_races(events: &[Value]) -> Vec<Value> {
    let lost = lost_race_children(events);
    events
        .iter()
        .filter(|e| !e["cookie"].as_u64().is_some_and(|c| lost.contains(&c)))
        .cloned()
        .collect()
}

/// `["CLOSE->LISTEN", ...]` for a socket's events.
pub fn transitions(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{}->{}",
                e["from"].as_str().unwrap(),
                e["to"].as_str().unwrap()
            )
        })
        .collect()
}

/// The socket whose events match `pred` on any event.
pub fn socket_where(
    sockets: &BTreeMap<u64, Vec<Value>>,
    pred: impl Fn(&Value) -> bool,
) -> Option<&Vec<Value>> {
    sockets.values().find(|events| events.iter().any(&pred))
}

/// How many `old -> new` transitions are in `events`.
pub fn seen(events: &[Value], old: &str, new: &str) -> usize {
    events
        .iter()
        .filter(|e| e["from"] == old && e["to"] == new)
        .count()
}

/// A minimal HTTP/1.1 GET over loopback: returns (status, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::Write as _;
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of one sample line `name{labels} value` in a text exposition.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// A running `tcptrace serve`.
pub struct Exporter {
    child: Child,
    /// The rest of the agent's stderr, printed when the test ends.
    stderr: Option<JoinHandle<String>>,
    pub addr: String,
}

impl Exporter {
    /// Starts `tcptrace serve` on a free loopback port and waits until it answers.
    pub fn start(args: &[&str]) -> Self {
        require_root();
        let port = free_port("127.0.0.1");
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(BIN)
            .args(["serve", "--web.listen-address", &addr])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcptrace serve");
        // Keep draining stderr so the agent never blocks on a full pipe.
        let stderr = Some(await_ready(&mut child, READY));
        let exporter = Self {
            child,
            stderr,
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(&exporter.addr, "/metrics").is_err() {
            assert!(Instant::now() < deadline, "exporter never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
        exporter
    }

    pub fn scrape(&self) -> String {
        let (status, body) = http_get(&self.addr, "/metrics").expect("scrape");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Scrapes until `metric` satisfies `pred` (gauges are published once a second).
    pub fn wait_metric(&self, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let value = sample(&self.scrape(), series);
            if let Some(v) = value
                && pred(v)
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{series} never satisfied the condition; last value {value:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(rest) = self.stderr.take().and_then(|t| t.join().ok())
            && !rest.is_empty()
        {
            eprintln!("tcptrace serve stderr: {rest}");
        }
    }
}

/// A network namespace: loopback, and optionally a veth pair to the host; removed on drop.
pub struct Netns {
    pub name: String,
    pub host_ip: String,
    pub ns_ip: String,
}

/// Namespaces created by this test process so far: names and subnets stay unique when tests
/// run in parallel.
static NETNS_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Netns {
    /// A namespace with loopback up and a veth pair to the host.
    pub fn create() -> Self {
        let ns = Self::bare();
        let (host_if, ns_if) = (
            format!("{}a", ns.name_suffix()),
            format!("{}b", ns.name_suffix()),
        );
        let ip = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().unwrap().success();
            assert!(ok, "ip {args:?}");
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &host_if,
        ]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/30", ns.ns_ip),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", &ns.name, "link", "set", &ns_if, "up"]);
        ns
    }

    /// A namespace with only loopback (up): traffic in it never leaves it.
    pub fn bare() -> Self {
        let id = std::process::id() % 10_000;
        let seq = NETNS_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("tcptrace-test-{id}-{seq}");
        // Third octet unique per (process, namespace), within one /30 each.
        let subnet = (id % 50) * 5 + seq % 5;
        let host_ip = format!("10.213.{subnet}.1");
        let ns_ip = format!("10.213.{subnet}.2");
        // A namespace left over by an interrupted run.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ip = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().unwrap().success();
            assert!(ok, "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self {
            name,
            host_ip,
            ns_ip,
        }
    }

    /// Short unique suffix for interface names (at most 15 characters in all).
    fn name_suffix(&self) -> String {
        let rest = self
            .name
            .trim_start_matches("tcptrace-test-")
            .replace('-', "x");
        format!("ttv{rest}")
    }

    /// Runs `f` on a thread inside this namespace: sockets it creates live here.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        use std::os::fd::AsRawFd as _;
        let file = std::fs::File::open(self.path()).unwrap();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns(2) on this thread only, with a valid namespace fd.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns");
                    f()
                })
                .join()
                .unwrap()
        })
    }

    /// Runs a command inside this namespace (`ip netns exec`) and asserts it succeeded.
    pub fn exec(&self, program: &str, args: &[&str]) {
        let ok = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "{program} {args:?} in {}", self.name);
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Closes both ends of the connection `a` <-> `b` (on `port`, in `ns`) at the same time: with
/// every segment of the port dropped, both shut down their sending side, then the drop is
/// lifted so the two FINs cross (FIN_WAIT1 -> CLOSING on both ends, when the timing allows;
/// callers retry when it did not). Reads each end to EOF and closes it.
pub fn close_simultaneously(ns: &Netns, port: u16, mut a: TcpStream, mut b: TcpStream) {
    use std::io::Read as _;
    let p = port.to_string();
    ns.exec("nft", &["add", "table", "inet", "tcptrace_sim"]);
    ns.exec(
        "nft",
        &[
            "add",
            "chain",
            "inet",
            "tcptrace_sim",
            "in",
            "{ type filter hook input priority 0; }",
        ],
    );
    for dir in ["dport", "sport"] {
        ns.exec(
            "nft",
            &[
                "add",
                "rule",
                "inet",
                "tcptrace_sim",
                "in",
                "tcp",
                dir,
                &p,
                "drop",
            ],
        );
    }
    a.shutdown(std::net::Shutdown::Write).unwrap();
    b.shutdown(std::net::Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    ns.exec("nft", &["delete", "table", "inet", "tcptrace_sim"]);
    for s in [&mut a, &mut b] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(s.read(&mut buf).unwrap(), 0, "EOF");
    }
}

/// Extracts the number before `label` in the summary line, e.g. "12 filtered out (10 in kernel".
pub fn summary_number(stderr: &str, label: &str) -> u64 {
    let at = stderr
        .find(label)
        .unwrap_or_else(|| panic!("no `{label}` in {stderr}"));
    stderr[..at]
        .split(|c: char| !c.is_ascii_digit())
        .rev()
        .find(|s| !s.is_empty())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before `{label}` in {stderr}"))
}
