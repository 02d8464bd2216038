//! Hosts as they really are, checked against oracles tcptrace did not write: servers older
//! than the agent with worker processes, listeners handed from a launcher to a worker, real
//! nginx under a real load generator (ab) in a namespace of its own, gauges of namespaces
//! other than the agent's, a full TIME_WAIT table. The kernel's own counters (`nstat`) and
//! `ss` are the references. Root only, host only (these need python3, nginx and ab, which the
//! VM guests lack); `cargo xtask test` runs them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::{Agent, BIN, Exporter, Netns, await_ready, free_port, sample, wait_timeout};
use serde_json::Value;

const SERVERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/helpers/servers.py");

/// A server from `tests/helpers/servers.py`: its ready line and what it accepted.
struct Py {
    child: Child,
    lines: Receiver<String>,
    /// The numbers of its `ready` line (its pid, then any worker pids).
    ready: Vec<u32>,
}

impl Py {
    fn start(args: &[&str]) -> Self {
        Self::spawn(Command::new("python3").arg(SERVERS).args(args))
    }

    fn start_in(ns: &Netns, args: &[&str]) -> Self {
        Self::spawn(
            Command::new("ip")
                .args(["netns", "exec", &ns.name, "python3", SERVERS])
                .args(args),
        )
    }

    fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (Debian package `python3`; `cargo xtask setup` installs it)");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("the server never said it was ready");
        let ready = first
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("not a ready line: {first}"))
            .split([' ', ','])
            .map(|n| n.parse().unwrap())
            .collect();
        Self {
            child,
            lines,
            ready,
        }
    }

    /// Waits for `n` "accepted PORT" lines; returns the client ports.
    fn accepted(&self, n: usize) -> Vec<u16> {
        (0..n)
            .map(|_| {
                let line = self
                    .lines
                    .recv_timeout(Duration::from_secs(10))
                    .expect("a connection accepted");
                line.strip_prefix("accepted ").unwrap().parse().unwrap()
            })
            .collect()
    }

    fn terminate(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = wait_timeout(&mut self.child, Duration::from_secs(10));
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Handshake rows of server children on `port`.
fn child_handshakes(events: &[Value], port: u16) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["local_port"] == port)
        .filter(|e| {
            (e["from"] == "LISTEN" && e["to"] == "SYN_RECV")
                || (e["from"] == "SYN_RECV" && e["to"] == "ESTABLISHED")
        })
        .collect()
}

/// Connects to `127.0.0.1:port` and closes at once.
fn touch(port: u16) {
    drop(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
}

#[test]
#[ignore = "needs root, a BTF kernel and python3; run by `cargo xtask test`"]
fn children_of_a_preforked_listener_older_than_the_agent_name_a_worker() {
    let port = free_port("127.0.0.1");
    // A master listens, forks two workers that accept, and waits: as nginx without reuseport.
    // `ss -tlnp` lists all three for the listener.
    let mut server = Py::start(&["prefork", "127.0.0.1", &port.to_string(), "2"]);
    let (master, workers) = (server.ready[0], server.ready[1..].to_vec());
    let mut agent = Agent::start(&["--port", &port.to_string()]);
    for _ in 0..6 {
        touch(port);
    }
    assert!(agent.wait_for(
        Duration::from_secs(10),
        |ev| child_handshakes(ev, port).len() == 12
    ));
    let (_, _, events) = agent.stop();
    server.terminate();
    for row in child_handshakes(&events, port) {
        let pid = row["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("no owner: {row}")) as u32;
        assert!(
            workers.contains(&pid),
            "{row}: not a worker of {workers:?} (master {master})"
        );
    }
}

#[test]
#[ignore = "needs root, a BTF kernel and python3; run by `cargo xtask test`"]
fn a_handed_off_listener_names_its_new_holder_never_the_exited_launcher() {
    let port = free_port("127.0.0.1");
    let mut agent = Agent::start(&["--port", &port.to_string()]);
    // The launcher listens, starts a worker that inherits the socket, and exits (socket
    // activation, inetd, a binary upgrade).
    let mut launcher = Py::start(&["handoff", "127.0.0.1", &port.to_string(), "3"]);
    let (launcher_pid, worker_pid) = (launcher.ready[0], launcher.ready[1]);
    assert!(wait_timeout(&mut launcher.child, Duration::from_secs(10)).success());
    // The agent learns of the exit at once and looks for the new holder within a second.
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..3 {
        touch(port);
    }
    launcher.accepted(3);
    assert!(agent.wait_for(
        Duration::from_secs(10),
        |ev| child_handshakes(ev, port).len() == 6
    ));
    let (_, _, events) = agent.stop();
    let listen = events
        .iter()
        .find(|e| e["to"] == "LISTEN" && e["local_port"] == port)
        .unwrap();
    assert_eq!(
        listen["pid"].as_u64(),
        Some(u64::from(launcher_pid)),
        "{listen}"
    );
    for row in child_handshakes(&events, port) {
        assert_eq!(row["pid"].as_u64(), Some(u64::from(worker_pid)), "{row}");
    }
    let after_exit: Vec<&Value> = events
        .iter()
        .filter(|e| e["local_port"] == port && e["to"] != "LISTEN")
        .filter(|e| e["pid"].as_u64() == Some(u64::from(launcher_pid)))
        .collect();
    assert!(
        after_exit.is_empty(),
        "the exited launcher named after its exit: {after_exit:#?}"
    );
}

#[test]
#[ignore = "needs root, a BTF kernel and python3; run by `cargo xtask test`"]
fn resets_from_an_older_listeners_close_name_its_holder() {
    let ns = Netns::bare();
    let port = 8080;
    // Listens, never accepts; three clients wait in its queue before doctor starts.
    let mut server = Py::start_in(&ns, &["backlog", "127.0.0.1", &port.to_string(), "8"]);
    let clients: Vec<TcpStream> = ns.run(|| {
        (0..3)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect()
    });
    let mut doctor = Command::new(BIN)
        .args(["doctor", "-o", "json", "--netns-path", &ns.path()])
        .args(["--duration", "3", "--resets", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stderr = await_ready(&mut doctor, "tcptrace: watching");
    // Its exit closes the listener: the queued children are reset by that close.
    server.terminate();
    let out = doctor.wait_with_output().unwrap();
    drop(clients);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let resets = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "resets")
        .unwrap_or_else(|| panic!("no resets finding: {report:#}"));
    let by_owner = resets["top"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g.get("pid").is_some())
        .unwrap();
    assert_eq!(
        by_owner["pid"].as_u64(),
        Some(u64::from(server.ready[0])),
        "{resets:#}"
    );
    assert_eq!(by_owner["count"], 3, "{resets:#}");
}

/// The kernel's TCP counters of a namespace, as `nstat -az` prints them.
fn nstat(ns: &Netns) -> BTreeMap<String, u64> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nstat", "-azs"])
        .output()
        .expect("nstat (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.parse().ok()?))
        })
        .collect()
}

/// `Tcp: CurrEstab` of a namespace (`/proc/net/snmp`; nstat leaves this gauge out): the
/// sockets in ESTABLISHED or CLOSE_WAIT now.
fn curr_estab(ns: &Netns) -> u64 {
    let snmp = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap());
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "CurrEstab")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Sockets per state in a namespace, as `ss -tan` counts them (state names as tcptrace's
/// metric labels spell them).
fn ss_states(ns: &Netns) -> BTreeMap<String, u64> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "ss", "-tanH"])
        .output()
        .expect("ss");
    let mut counts = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let state = match line.split_whitespace().next().unwrap_or("") {
            "ESTAB" => "established",
            "SYN-SENT" => "syn_sent",
            "SYN-RECV" => "syn_recv",
            "FIN-WAIT-1" => "fin_wait1",
            "FIN-WAIT-2" => "fin_wait2",
            "TIME-WAIT" => "time_wait",
            "CLOSE-WAIT" => "close_wait",
            "LAST-ACK" => "last_ack",
            "LISTEN" => "listen",
            "CLOSING" => "closing",
            other => panic!("ss state {other}"),
        };
        *counts.entry(state.to_owned()).or_default() += 1;
    }
    counts
}

const GAUGE_STATES: [&str; 10] = [
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

/// Scrapes until every `tcptrace_sockets{state}` equals `ss`'s count in `ns` (TIME_WAITs
/// inferred at a close are confirmed or dropped by the next tick or snapshot); fails with
/// the last difference.
fn gauges_match_ss(exporter: &Exporter, ns: &Netns, series: impl Fn(&str) -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ss = ss_states(ns);
        let metrics = exporter.scrape();
        let diff: Vec<String> = GAUGE_STATES
            .iter()
            .filter_map(|state| {
                let ours = sample(&metrics, &series(state)).unwrap_or(0.0) as u64;
                let theirs = ss.get(*state).copied().unwrap_or(0);
                (ours != theirs).then(|| format!("{state}: tcptrace {ours}, ss {theirs}"))
            })
            .collect();
        if diff.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "gauges differ from ss: {diff:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// nginx, stopped (and its files removed) on drop.
struct Nginx {
    master: Child,
    dir: std::path::PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: a graceful stop of master and workers.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.master.id() as i32, libc::SIGQUIT) };
        let _ = wait_timeout(&mut self.master, Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A minimal nginx: `workers` worker processes, each with a SO_REUSEPORT listener of its own on
/// 127.0.0.1:8080, answering every request with a short body.
fn nginx(ns: &Netns, dir: &std::path::Path, workers: u32) -> Nginx {
    std::fs::create_dir_all(dir).unwrap();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes {workers};\npid {pid};\nerror_log stderr;\ndaemon off;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{ listen 127.0.0.1:8080 reuseport; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n",
            pid = dir.join("nginx.pid").display(),
            d = dir.display(),
        ),
    )
    .unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nginx", "-p"])
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (Debian package `nginx-light`; `cargo xtask setup` installs it)");
    let nginx = Nginx {
        master: child,
        dir: dir.to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while ss_states(ns).get("listen").copied().unwrap_or(0) < u64::from(workers) {
        assert!(Instant::now() < deadline, "nginx never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    nginx
}

/// nginx's worker pids: the processes whose parent is its master (`/proc/PID/stat`).
fn nginx_workers(master: u32) -> BTreeSet<u64> {
    let parent_of = |pid: &str| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "PID (comm) STATE PPID ...": the comm may hold spaces, the rest does not.
        stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| parent_of(&pid.to_string()) == Some(master))
        .collect()
}

#[test]
#[ignore = "needs root, a BTF kernel, nginx and ab; run by `cargo xtask test`"]
fn nginx_under_ab_matches_the_kernels_counters_and_ss() {
    let ns = Netns::bare();
    let dir = std::env::temp_dir().join(format!("tcptrace-nginx-{}", std::process::id()));
    // nginx runs before tcptrace starts, as on a production host.
    let nginx = nginx(&ns, &dir, 2);
    // `ip netns exec` execs nginx: the master's pid is the child's.
    let workers = nginx_workers(nginx.master.id());
    assert_eq!(workers.len(), 2, "{workers:?}");
    let exporter = Exporter::start(&["--netns-path", &ns.path(), "--reconcile-interval", "2"]);
    let tail = Agent::start(&["--netns-path", &ns.path(), "--port", "8080"]);
    gauges_match_ss(&exporter, &ns, |s| {
        format!("tcptrace_sockets{{state=\"{s}\"}}")
    });
    let before = nstat(&ns);
    let metrics_before = exporter.scrape();
    let requests = 2000;
    let ab = Command::new("ip")
        .args(["netns", "exec", &ns.name, "ab", "-q", "-n"])
        .arg(requests.to_string())
        .args(["-c", "8", "http://127.0.0.1:8080/"])
        .stdout(Stdio::null())
        .status()
        .expect("ab (Debian package `apache2-utils`)");
    assert!(ab.success());
    let after = nstat(&ns);
    let delta = |name: &str| after.get(name).unwrap_or(&0) - before.get(name).unwrap_or(&0);
    assert!(delta("TcpActiveOpens") >= requests, "{after:?}");
    // Counters: tcptrace's transitions equal the kernel's MIB counters exactly.
    let transitions = |metrics: &str, from: &str, to: &str| {
        sample(
            metrics,
            &format!("tcptrace_transitions_total{{from=\"{from}\",to=\"{to}\"}}"),
        )
        .unwrap_or(0.0) as u64
    };
    let grew = |from: &str, to: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n =
                transitions(&exporter.scrape(), from, to) - transitions(&metrics_before, from, to);
            if n >= delta("TcpActiveOpens") || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert_eq!(grew("close", "syn_sent"), delta("TcpActiveOpens"));
    assert_eq!(grew("listen", "syn_recv"), delta("TcpPassiveOpens"));
    let resets = transitions(&exporter.scrape(), "established", "close")
        + transitions(&exporter.scrape(), "close_wait", "close")
        - transitions(&metrics_before, "established", "close")
        - transitions(&metrics_before, "close_wait", "close");
    assert_eq!(resets, delta("TcpEstabResets"));
    let metrics = exporter.scrape();
    for reason in ["ring_full", "recursion"] {
        assert_eq!(
            sample(
                &metrics,
                &format!("tcptrace_lost_events_total{{reason=\"{reason}\"}}")
            ),
            Some(0.0),
            "lost events: counts could not be exact"
        );
    }
    // Gauges: every state as ss counts it in that namespace, TIME_WAIT included.
    gauges_match_ss(&exporter, &ns, |s| {
        format!("tcptrace_sockets{{state=\"{s}\"}}")
    });
    // Scraped again: the earlier scrape may predate the last closes gauges_match_ss waited for.
    let metrics = exporter.scrape();
    let established = sample(&metrics, "tcptrace_sockets{state=\"established\"}").unwrap()
        + sample(&metrics, "tcptrace_sockets{state=\"close_wait\"}").unwrap();
    assert_eq!(established as u64, curr_estab(&ns));
    // Owners: every child handshake row names one of nginx's workers. (The rows are all in:
    // the exporter's counters above come from the same kernel program, and tail reads them
    // within its drain interval.)
    std::thread::sleep(Duration::from_secs(1));
    let (_, _, events) = tail.stop();
    let rows = child_handshakes(&events, 8080);
    // Each passive open is a child's LISTEN -> SYN_RECV, then SYN_RECV -> ESTABLISHED, or
    // SYN_RECV -> CLOSE for a child the kernel discarded at birth (lost the race for its
    // request socket to a sibling); PassiveOpens counts both.
    let discarded = events
        .iter()
        .filter(|e| e["local_port"] == 8080 && e["from"] == "SYN_RECV" && e["to"] == "CLOSE")
        .count();
    assert_eq!(
        (rows.len() + discarded) as u64,
        2 * delta("TcpPassiveOpens")
    );
    let unnamed: Vec<&&Value> = rows
        .iter()
        .filter(|r| !r["pid"].as_u64().is_some_and(|p| workers.contains(&p)))
        .collect();
    assert!(
        unnamed.is_empty(),
        "{} of {} handshake rows name no worker of {workers:?}: {:#?}",
        unnamed.len(),
        rows.len(),
        unnamed.iter().take(3).collect::<Vec<_>>()
    );
    drop(nginx);
}

/// `n` connections to 127.0.0.1:8080 in `ns` whose client closes first: `n` TIME_WAIT sockets
/// there (while the table has room).
fn client_closes(ns: &Netns, n: usize) {
    ns.run(|| {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 8080)).unwrap();
        for _ in 0..n {
            let c = TcpStream::connect(("127.0.0.1", 8080)).unwrap();
            let (mut s, _) = listener.accept().unwrap();
            drop(c);
            let _ = std::io::Read::read(&mut s, &mut [0; 1]);
        }
    });
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn gauges_describe_the_traced_namespace_and_every_namespace() {
    let ns = Netns::bare();
    client_closes(&ns, 300);
    // A CLOSE_WAIT leak in that namespace: the peer closed, nobody closes here.
    let leak = ns.run(|| {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 9090)).unwrap();
        let c = TcpStream::connect(("127.0.0.1", 9090)).unwrap();
        let (s, _) = listener.accept().unwrap();
        drop(c);
        (listener, s)
    });
    // Tracing that namespace: its gauges are that namespace's, not the agent's.
    let one = Exporter::start(&["--netns-path", &ns.path()]);
    gauges_match_ss(&one, &ns, |s| format!("tcptrace_sockets{{state=\"{s}\"}}"));
    drop(one);
    // Tracing every namespace: the per-namespace gauges show it by name.
    let inode = std::fs::metadata(ns.path()).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let inode = inode.unwrap();
    let all = Exporter::start(&["--metrics.namespace-limit", "1000"]);
    gauges_match_ss(&all, &ns, |s| {
        format!(
            "tcptrace_namespace_sockets{{namespace=\"{}\",netns=\"{inode}\",state=\"{s}\"}}",
            ns.name
        )
    });
    drop(all);
    // doctor looks at every namespace and says where each finding is.
    let out = Command::new(BIN)
        .args([
            "doctor",
            "-o",
            "json",
            "--duration",
            "0.5",
            "--close-wait-age",
            "0.1",
        ])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let leak_finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "close_wait_leak" && f["namespace"] == ns.name.as_str())
        .unwrap_or_else(|| panic!("no CLOSE_WAIT finding named {}: {report:#}", ns.name));
    assert_eq!(leak_finding["netns"].as_u64(), Some(inode));
    assert!(report["namespaces"].as_array().unwrap().len() >= 2);
    drop(leak);
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn time_wait_gauge_never_exceeds_the_kernels_table() {
    let ns = Netns::bare();
    // A TIME_WAIT table of 64 sockets in this namespace (the sysctl is per namespace).
    ns.exec("sysctl", &["-qw", "net.ipv4.tcp_max_tw_buckets=64"]);
    // No snapshot after the seed: the gauge must be right between reconciles too.
    let exporter = Exporter::start(&["--netns-path", &ns.path(), "--reconcile-interval", "600"]);
    let before = nstat(&ns);
    client_closes(&ns, 300);
    let overflows = nstat(&ns)["TcpExtTCPTimeWaitOverflow"]
        - before.get("TcpExtTCPTimeWaitOverflow").unwrap_or(&0);
    assert!(overflows >= 200, "the table never filled: {overflows}");
    gauges_match_ss(&exporter, &ns, |s| {
        format!("tcptrace_sockets{{state=\"{s}\"}}")
    });
    let metrics = exporter.scrape();
    assert_eq!(
        sample(&metrics, "tcptrace_sockets{state=\"time_wait\"}"),
        Some(64.0)
    );
    assert_eq!(
        sample(&metrics, "tcptrace_time_wait_overflows_total"),
        Some(overflows as f64)
    );
}
