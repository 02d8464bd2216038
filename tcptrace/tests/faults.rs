//! Faults, with nothing lost silently, against the real kernel: the agent stopped under
//! churn, namespaces, cgroups and processes that vanish while traced, kernel and agent tables
//! far smaller than the live sockets, scrapes during reconciles of 100k sockets, and SIGTERM
//! during a snapshot. Needs root; host only (not in VM guests: 100k sockets).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, Exporter, free_port, http_get, require_root, sample, summary_number};
use serde_json::Value;

/// `n` loopback connections to `port`, each closed by the client first (10 transitions each);
/// bounded in count, not paced.
fn churn(listener: &TcpListener, n: usize) {
    let addr = listener.local_addr().unwrap();
    for _ in 0..n {
        let client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        drop(client);
        let mut buf = [0u8; 1];
        let mut server = server;
        let _ = server.read(&mut buf);
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child of this test.
    unsafe { libc::kill(pid as i32, sig) };
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn a_stopped_agent_loses_nothing_without_counting_it() {
    const N: usize = 400;
    let port = free_port("127.0.0.1");
    // The smallest ring (4 KiB, ~30 records) overflows while the agent is stopped.
    let mut agent = Agent::start(&["--port", &port.to_string(), "--ring-bytes", "4096"]);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let pid = agent.pid();
    signal(pid, libc::SIGSTOP);
    churn(&listener, N);
    std::thread::sleep(Duration::from_secs(3));
    signal(pid, libc::SIGCONT);
    churn(&listener, 10);
    drop(listener);
    agent.wait_for(Duration::from_secs(5), |e| {
        e.iter()
            .any(|e| e["from"] == "LISTEN" && e["to"] == "CLOSE")
    });
    let (status, stderr, events) = agent.stop();
    assert!(status.success(), "{status}: {stderr}");
    let shown = summary_number(&stderr, "shown");
    let ring_full = summary_number(&stderr, "lost (ring full)");
    let recursion = summary_number(&stderr, "lost (recursion)");
    let unreadable = summary_number(&stderr, "unreadable");
    let sent = summary_number(&stderr, "sent by the kernel");
    assert_eq!(shown as usize, events.len());
    // Every record the kernel wrote was read.
    assert_eq!(sent, shown + unreadable, "{stderr}");
    // Every transition on the port was delivered or counted lost. Recursion misses are
    // counted for every program run, on any port, so they bound from above.
    let expected = (N as u64 + 10) * 10 + 2;
    assert!(ring_full > 0, "the stop overflowed the ring: {stderr}");
    // Nothing invented. The ring-full count is not exact per transition: one run counted 4046
    // lost with 64 shown for 4102 transitions (8 more than happened), so it only bounds from
    // above as well.
    assert!(shown <= expected, "{stderr}");
    assert!(shown + ring_full + recursion >= expected, "{stderr}");
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn gauges_are_right_again_after_the_reconcile_that_follows_a_stop() {
    let port = free_port("127.0.0.1");
    let exporter = Exporter::start(&[
        "--port",
        &port.to_string(),
        "--ring-bytes",
        "4096",
        "--reconcile-interval",
        "1",
    ]);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut held: Vec<(TcpStream, TcpStream)> = (0..20)
        .map(|_| {
            let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            (c, listener.accept().unwrap().0)
        })
        .collect();
    exporter.wait_metric("tcptrace_sockets{state=\"established\"}", |v| v == 40.0);
    signal(exporter.pid(), libc::SIGSTOP);
    churn(&listener, 300);
    // Half the held connections end while nobody reads the ring.
    for (c, s) in held.drain(..10) {
        drop(c);
        drop(s);
    }
    std::thread::sleep(Duration::from_secs(3));
    signal(exporter.pid(), libc::SIGCONT);
    exporter.wait_metric("tcptrace_lost_events_total{reason=\"ring_full\"}", |v| {
        v > 0.0
    });
    exporter.wait_metric("tcptrace_sockets{state=\"established\"}", |v| v == 20.0);
    exporter.wait_metric("tcptrace_sockets{state=\"listen\"}", |v| v == 1.0);
    // The agent read every record the kernel wrote.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = exporter.scrape();
        let sent = sample(&m, "tcptrace_kernel_events_total").unwrap();
        let read = sample(&m, "tcptrace_events_processed_total").unwrap()
            + sample(&m, "tcptrace_decode_errors_total").unwrap();
        if sent == read && sent > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "sent {sent}, read {read}");
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(held);
}

/// A process that holds one end of a connection (socat), started in `cgroup` when given.
fn socat(args: &[&str], cgroup: Option<&str>) -> Child {
    let mut cmd = match cgroup {
        Some(dir) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("echo $$ > {dir}/cgroup.procs && exec socat \"$@\""))
                .arg("sh")
                .args(args);
            c
        }
        None => {
            let mut c = Command::new("socat");
            c.args(args);
            c
        }
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat (`cargo xtask setup` installs it)")
}

/// Waits until a socket listens on `port` (without connecting: socat serves one connection).
fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("ss")
            .args(["-Hltn", &format!("( sport = :{port} )")])
            .output()
            .unwrap();
        if !out.stdout.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn namespaces_cgroups_and_processes_that_vanish_leave_no_stale_owner() {
    require_root();
    let port = free_port("127.0.0.1");
    let mut agent = Agent::start(&["--port", &port.to_string()]);

    // A connection inside a namespace deleted while it is open.
    let ns = common::Netns::bare();
    let ns_inode = std::fs::metadata(ns.path())
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let (client, server, listener) = ns.run(|| {
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let s = l.accept().unwrap().0;
        (c, s, l)
    });
    drop(ns);
    drop((client, server, listener));

    // A process killed mid-connection (its listener and accepted socket close in its exit),
    // then another process listening on the same port: its children are its own.
    let cgroup_root = std::path::Path::new("/sys/fs/cgroup");
    let cgroup = cgroup_root
        .join("cgroup.controllers")
        .exists()
        .then(|| cgroup_root.join(format!("tcptrace-faults-{}", std::process::id())));
    if let Some(dir) = &cgroup {
        let _ = std::fs::remove_dir(dir);
        std::fs::create_dir(dir).unwrap();
    }
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr");
    let mut first = socat(&[&listen, "-"], cgroup.as_ref().and_then(|d| d.to_str()));
    wait_listening(port);
    let held = TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let first_pid = first.id();
    first.kill().unwrap();
    first.wait().unwrap();
    drop(held);
    if let Some(dir) = &cgroup {
        // The cgroup goes away once its last process has.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(dir).is_err() {
            assert!(Instant::now() < deadline, "cannot remove {}", dir.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mut second = socat(&[&listen, "-"], None);
    wait_listening(port);
    let second_pid = second.id();
    let held = TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let _ = second.kill();
    let _ = second.wait();
    drop(held);

    let done = |e: &[Value]| {
        e.iter()
            .filter(|e| e["from"] == "LISTEN" && e["to"] == "CLOSE")
            .count()
            >= 3
    };
    assert!(
        agent.wait_for(Duration::from_secs(10), done),
        "{:?}",
        agent.events
    );
    let (status, stderr, events) = agent.stop();
    assert!(status.success(), "{status}: {stderr}");

    // The namespace's sockets were reported in it, its listener by this test.
    let in_ns: Vec<&Value> = events.iter().filter(|e| e["netns"] == ns_inode).collect();
    assert!(
        in_ns
            .iter()
            .any(|e| e["from"] == "LISTEN" && e["to"] == "CLOSE"),
        "{in_ns:?}"
    );
    // Server sockets on the host are owned by the socat that listened when they were born;
    // none of the second's is named after the killed one.
    let me = std::process::id();
    for e in events
        .iter()
        .filter(|e| e["netns"] != ns_inode && e["local_port"] == port)
    {
        let pid = e["pid"].as_u64().map(|p| p as u32);
        assert!(
            pid.is_none() || pid == Some(first_pid) || pid == Some(second_pid) || pid == Some(me),
            "{e}"
        );
        if e["to"] == "LISTEN" || e["from"] == "LISTEN" {
            assert!(pid == Some(first_pid) || pid == Some(second_pid), "{e}");
        }
    }
    // Each socat's one server child is its own: the killed one's name is not reused.
    let mut children: Vec<&Value> = events
        .iter()
        .filter(|e| e["netns"] != ns_inode && e["local_port"] == port)
        .filter(|e| e["from"] == "LISTEN" && e["to"] == "SYN_RECV")
        .collect();
    children.sort_by_key(|e| e["ts_ns"].as_u64());
    let owners: Vec<Option<u64>> = children.iter().map(|e| e["pid"].as_u64()).collect();
    assert_eq!(
        owners,
        [Some(u64::from(first_pid)), Some(u64::from(second_pid))],
        "{children:?}"
    );
    // The killed process's sockets carry its cgroup, resolved while it existed.
    if let Some(dir) = &cgroup {
        let name = format!("/{}", dir.file_name().unwrap().to_str().unwrap());
        assert!(
            events
                .iter()
                .any(|e| e["pid"].as_u64() == Some(u64::from(first_pid)) && e["cgroup"] == name),
            "{events:?}"
        );
    }
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn tables_far_smaller_than_the_live_sockets_count_evictions_and_never_guess_a_dwell() {
    const HELD: usize = 3000;
    const HOLD: Duration = Duration::from_secs(2);
    let port = free_port("127.0.0.1");
    let p = port.to_string();
    // The kernel program's socket hash (kernels before 5.12 have no other), on every kernel.
    let exporter = Exporter::start(&[
        "--port",
        &p,
        "--max-sockets",
        "1024",
        "--no-socket-storage",
        "--max-tracked-sockets",
        "500",
        "--reconcile-interval",
        "1",
    ]);
    let mut agent = Agent::start(&["--port", &p, "--max-sockets", "1024", "--no-socket-storage"]);
    let opened = hold_then_close(port, HELD, HOLD);
    // 10 transitions per connection and the listener's two (a cheap check: it runs per line).
    agent.wait_for(Duration::from_secs(20), |e| e.len() >= 10 * HELD + 2);
    let held_for = opened.elapsed();
    let (status, stderr, events) = agent.stop();
    assert!(status.success(), "{status}: {stderr}");
    // Every ESTABLISHED dwell is either unknown or what the connection really lived.
    let mut unknown = 0;
    for e in events.iter().filter(|e| e["from"] == "ESTABLISHED") {
        match e["dwell_ns"].as_u64() {
            None => unknown += 1,
            Some(ns) => {
                let d = Duration::from_nanos(ns);
                assert!(d >= HOLD && d <= held_for + Duration::from_secs(5), "{e}");
            }
        }
    }
    assert!(
        unknown > 0,
        "a 1024-entry table cannot hold {} sockets",
        2 * HELD
    );
    assert!(unknown < 2 * HELD, "recently used sockets keep their entry");
    // serve counted both tables' shortfalls.
    let m = exporter.scrape();
    assert!(
        sample(&m, "tcptrace_kernel_sockets_evicted_total").unwrap() > 0.0,
        "{m}"
    );
    assert!(sample(&m, "tcptrace_tracked_sockets_overflow_total").unwrap() > 0.0);
    assert!(sample(&m, "tcptrace_sockets{state=\"established\"}").unwrap() <= 500.0);
}

/// Opens `n` connections to a listener on `port`, holds them for `hold`, closes them and the
/// listener; returns when they were all open.
fn hold_then_close(port: u16, n: usize, hold: Duration) -> Instant {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let pairs: Vec<(TcpStream, TcpStream)> = (0..n)
        .map(|_| {
            let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            (c, listener.accept().unwrap().0)
        })
        .collect();
    let opened = Instant::now();
    std::thread::sleep(hold);
    drop(pairs);
    drop(listener);
    opened
}

/// Whether the running kernel is at least `major.minor` (`uname -r`).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn socket_storage_knows_every_dwell_beyond_max_sockets() {
    const HELD: usize = 3000;
    const HOLD: Duration = Duration::from_secs(1);
    let port = free_port("127.0.0.1");
    let p = port.to_string();
    let exporter = Exporter::start(&["--port", &p, "--max-sockets", "1024"]);
    let mut agent = Agent::start(&["--port", &p, "--max-sockets", "1024"]);
    hold_then_close(port, HELD, HOLD);
    agent.wait_for(Duration::from_secs(20), |e| e.len() >= 10 * HELD + 2);
    let (status, stderr, events) = agent.stop();
    assert!(status.success(), "{status}: {stderr}");
    let unknown = events
        .iter()
        .filter(|e| e["from"] == "ESTABLISHED" && e["dwell_ns"].is_null())
        .count();
    let evicted = sample(&exporter.scrape(), "tcptrace_kernel_sockets_evicted_total").unwrap();
    if kernel_at_least(5, 12) {
        // Each socket keeps its own entry: --max-sockets does not bound anything.
        assert_eq!(unknown, 0, "{} sockets, 1024-entry hash unused", 2 * HELD);
        assert_eq!(evicted, 0.0);
    } else {
        // Before 5.12 the hash is all there is, and it is too small.
        assert!(
            unknown > 0 && evicted > 0.0,
            "{unknown} unknown, {evicted} evicted"
        );
    }
}

/// Helper process for the 100k-socket test (the test runs this binary again with
/// `TCPTRACE_HOLD=N`): holds N loopback connections on its own listener, says `ready`, and
/// keeps them until stdin closes. A no-op in a normal run.
#[test]
#[ignore = "helper process, started by scrapes_never_fail_during_reconciles_of_100k_sockets"]
fn hold_connections_helper() {
    let Some(n) = std::env::var("TCPTRACE_HOLD")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return;
    };
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit pointers; raises this helper's soft fd limit to its hard limit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    // Two fds per connection, and room for the rest of the process.
    let room = usize::try_from(limit.rlim_cur.saturating_sub(64) / 2).unwrap_or(usize::MAX);
    let n = n.min(room).min(9000);
    // Its own loopback address: a port range of its own, whatever else holds ports on
    // 127.0.0.1 (TIME_WAIT sockets of earlier tests and benchmarks).
    let ip: std::net::IpAddr = std::env::var("TCPTRACE_HOLD_IP")
        .unwrap_or_else(|_| "127.0.0.1".into())
        .parse()
        .unwrap();
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let held: Vec<(TcpStream, TcpStream)> = (0..n)
        .map(|i| {
            let c = rt
                .block_on(async {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.bind(std::net::SocketAddr::new(ip, 0))?;
                    socket.connect(addr).await
                })
                .unwrap_or_else(|e| panic!("connection {i} of {n} from {ip}: {e}"))
                .into_std()
                .unwrap();
            c.set_nonblocking(false).unwrap();
            (c, listener.accept().unwrap().0)
        })
        .collect();
    println!("ready {}", held.len());
    std::io::stdout().flush().unwrap();
    let mut rest = String::new();
    let _ = std::io::stdin().read_to_string(&mut rest);
    // Reset instead of closing: 50k sockets in TIME_WAIT for a minute would weigh on the
    // snapshots of the tests that run next (their TIME_WAIT stories ended early then).
    for (c, s) in &held {
        common::set_linger_zero(c);
        common::set_linger_zero(s);
    }
}

/// Helpers holding `total` connections (2 sockets each) between them, each as many as its
/// open-file limit allows.
fn hold(total: usize) -> Vec<Child> {
    let exe = std::env::current_exe().unwrap();
    let mut helpers = Vec::new();
    let mut left = total;
    while left > 0 {
        assert!(
            helpers.len() < 40,
            "too many helpers for {total} connections"
        );
        let ip = format!("127.0.1.{}", 10 + helpers.len());
        let mut h = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "hold_connections_helper",
                "--nocapture",
            ])
            .env("TCPTRACE_HOLD", left.to_string())
            .env("TCPTRACE_HOLD_IP", ip)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(h.stdout.take().unwrap()).lines();
        let held = lines.find_map(|l| {
            l.ok()?
                .strip_prefix("ready ")
                .and_then(|n| n.trim().parse::<usize>().ok())
        });
        let Some(held) = held.filter(|n| *n > 0) else {
            let mut err = String::new();
            let _ = h.stderr.take().unwrap().read_to_string(&mut err);
            panic!("a helper failed to hold its connections: {err}");
        };
        left -= held.min(left);
        helpers.push(h);
    }
    helpers
}

fn release(helpers: Vec<Child>) {
    for mut h in helpers {
        drop(h.stdin.take());
        let _ = h.wait();
    }
}

/// BPF object ids (`prog_id`, `link_id`) held by `pid`'s file descriptors.
fn bpf_ids(pid: u32) -> Vec<(&'static str, u32)> {
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        for line in info.lines() {
            for key in ["prog_id", "link_id"] {
                if let Some(v) = line.strip_prefix(key).and_then(|r| r.strip_prefix(':')) {
                    ids.push((key, v.trim().parse().unwrap()));
                }
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Whether the kernel still has a BPF program or link with this id (BPF_*_GET_FD_BY_ID).
fn bpf_object_exists(kind: &str, id: u32) -> bool {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    let cmd = if kind == "prog_id" {
        BPF_PROG_GET_FD_BY_ID
    } else {
        BPF_LINK_GET_FD_BY_ID
    };
    // union bpf_attr for *_GET_FD_BY_ID: { u32 id; u32 next_id; u32 open_flags; }
    let attr: [u32; 4] = [id, 0, 0, 0];
    // SAFETY: bpf(2) reads `size_of_val(&attr)` bytes from a valid buffer; a returned fd is
    // closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), size_of_val(&attr)) };
    if fd >= 0 {
        // SAFETY: fd was just returned by the kernel to this process.
        unsafe { libc::close(fd as i32) };
        true
    } else {
        false
    }
}

#[test]
#[ignore = "needs root, a BTF kernel and memory for 100k sockets; run by `cargo xtask test`"]
fn scrapes_never_fail_during_reconciles_of_100k_sockets_and_sigterm_detaches_cleanly() {
    require_root();
    let helpers = hold(50_000);
    // The whole host's sockets, reconciled every second.
    let exporter = Exporter::start(&["--reconcile-interval", "1"]);
    let started = Instant::now();
    let mut scrapes = 0;
    let first = sample(&exporter.scrape(), "tcptrace_reconciles_total").unwrap();
    while started.elapsed() < Duration::from_secs(8) {
        let (status, body) = http_get(&exporter.addr, "/metrics").expect("scrape");
        assert_eq!(status, 200, "{body}");
        scrapes += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = exporter.scrape();
    let reconciles = sample(&m, "tcptrace_reconciles_total").unwrap() - first;
    assert!(reconciles >= 3.0, "{reconciles} reconciles in 8 s");
    assert!(
        sample(&m, "tcptrace_sockets{state=\"established\"}").unwrap() >= 100_000.0,
        "{m}"
    );
    eprintln!("{scrapes} scrapes, all 200, during {reconciles} reconciles of 100k sockets");
    // Event processing kept up: what the kernel had sent is read within seconds.
    let sent = sample(&m, "tcptrace_kernel_events_total").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = exporter.scrape();
        if sample(&m, "tcptrace_events_processed_total").unwrap()
            + sample(&m, "tcptrace_decode_errors_total").unwrap()
            >= sent
        {
            break;
        }
        assert!(Instant::now() < deadline, "events fell behind");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(exporter);

    // SIGTERM during a snapshot: snapshots of 100k sockets back to back, SIGTERM at three
    // points; each time exit 0 and no program or link left behind.
    for delay_ms in [150u64, 400, 750] {
        let port = free_port("127.0.0.1");
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(common::BIN)
            .args([
                "serve",
                "--web.listen-address",
                &addr,
                "--reconcile-interval",
                "0.1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = common::await_ready(&mut child, common::READY);
        let ids = bpf_ids(child.id());
        assert!(ids.iter().any(|(k, _)| *k == "link_id"), "{ids:?}");
        assert!(
            ids.iter().all(|(k, id)| bpf_object_exists(k, *id)),
            "{ids:?}"
        );
        std::thread::sleep(Duration::from_millis(delay_ms));
        signal(child.id(), libc::SIGTERM);
        let status = common::wait_timeout(&mut child, Duration::from_secs(30));
        let stderr = stderr.join().unwrap();
        assert_eq!(status.code(), Some(0), "{stderr}");
        // Links and programs go with the last fd; the kernel frees them shortly after.
        let deadline = Instant::now() + Duration::from_secs(5);
        while ids.iter().any(|(k, id)| bpf_object_exists(k, *id)) {
            assert!(Instant::now() < deadline, "left behind: {ids:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    release(helpers);
}
