//! Owner, namespace and cgroup attribution against the real kernel, with real processes
//! (socat), a network namespace reached over veth, and a fresh cgroup. Needs root;
//! `cargo xtask test` runs these with `--ignored`.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    Agent, Netns, by_cookie, free_port, seen, socket_where, transitions, wait_timeout,
    without_lost_races,
};
use serde_json::Value;

/// `socat -u TCP-LISTEN:port OPEN:/dev/null`: accepts one connection, reads until EOF, then
/// closes (so the client closes first and this server passes through CLOSE_WAIT).
fn server_cmd(ip: &str, port: u16) -> String {
    format!("socat -u TCP4-LISTEN:{port},bind={ip},reuseaddr OPEN:/dev/null")
}

/// `socat -u OPEN:/dev/null TCP:ip:port`: connects, sends nothing, closes first.
fn client(ip: &str, port: u16) -> Child {
    Command::new("socat")
        .args(["-u", "OPEN:/dev/null", &format!("TCP4:{ip}:{port}")])
        .stdin(Stdio::null())
        .spawn()
        .expect("socat (Debian package `socat`; `cargo xtask setup` installs it)")
}

/// Runs `script` under `sh -c`; a final `exec` keeps the pid.
fn sh(script: &str) -> Child {
    Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .spawn()
        .expect("sh")
}

/// How long a step may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);

fn wait_listening(agent: &mut Agent, port: u16) {
    assert!(
        agent.wait_for(WAIT, |ev| ev
            .iter()
            .any(|e| e["to"] == "LISTEN" && e["local_port"] == port)),
        "server never listened: {:#?}",
        agent.events
    );
}

/// Once the server is listening, runs one client to `ip:port`, waits for both processes and
/// for the agent to see both sockets close. Returns the client's pid.
fn exchange(agent: &mut Agent, server: &mut Child, ip: &str, port: u16) -> u32 {
    wait_listening(agent, port);
    let mut client = client(ip, port);
    // Generous: these bound a failure, and emulated guests on a busy host are slow.
    let status = wait_timeout(&mut client, WAIT);
    assert!(status.success(), "client socat: {status}");
    let status = wait_timeout(server, WAIT);
    assert!(status.success(), "server socat: {status}");
    assert!(
        agent.wait_for(WAIT, complete),
        "both sockets never closed: {:#?}",
        agent.events
    );
    client.id()
}

fn complete(events: &[Value]) -> bool {
    seen(events, "LAST_ACK", "CLOSE") >= 1 && seen(events, "LISTEN", "CLOSE") >= 1
}

fn pids(events: &[Value]) -> Vec<Option<u64>> {
    events.iter().map(|e| e["pid"].as_u64()).collect()
}

#[test]
#[ignore = "needs root, a BTF kernel and socat; run by `cargo xtask test`"]
fn every_transition_names_the_process_that_owns_the_socket() {
    let port = free_port("127.0.0.1");
    let mut agent = Agent::start(&["--port", &port.to_string()]);
    let mut server = sh(&format!("exec {}", server_cmd("127.0.0.1", port)));
    let client_pid = exchange(&mut agent, &mut server, "127.0.0.1", port);
    let (_, _, events) = agent.stop();
    let (server_pid, client_pid) = (u64::from(server.id()), u64::from(client_pid));

    let sockets = by_cookie(&without_lost_races(&events));
    let listener = socket_where(&sockets, |e| e["to"] == "LISTEN").unwrap();
    let child = socket_where(&sockets, |e| e["to"] == "SYN_RECV").unwrap();
    let client = socket_where(&sockets, |e| e["to"] == "SYN_SENT").unwrap();
    assert_eq!(
        transitions(child),
        [
            "LISTEN->SYN_RECV",
            "SYN_RECV->ESTABLISHED",
            "ESTABLISHED->CLOSE_WAIT",
            "CLOSE_WAIT->LAST_ACK",
            "LAST_ACK->CLOSE"
        ]
    );
    assert!(
        pids(listener).iter().all(|p| *p == Some(server_pid)),
        "{listener:#?}"
    );
    // Every transition of the server's child socket, including the handshake and the
    // peer-triggered close that run in softirq, names the server process.
    assert!(
        pids(child).iter().all(|p| *p == Some(server_pid)),
        "{child:#?}"
    );
    assert!(child.iter().all(|e| e["comm"] == "socat"));
    assert!(
        pids(client).iter().all(|p| *p == Some(client_pid)),
        "{client:#?}"
    );
    // The child is born in softirq while the server sleeps in accept(): the task on the CPU
    // is someone else, and tcptrace keeps it apart as cpu_pid.
    assert_ne!(
        child[0]["cpu_pid"].as_u64(),
        Some(server_pid),
        "{:#?}",
        child[0]
    );
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn sockets_older_than_the_agent_name_the_process_holding_them() {
    let port = free_port("127.0.0.1");
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    // The agent starts after both sockets exist: no transition told who created them; the
    // process holding each (as `ss -p` finds it in /proc/PID/fd) is their owner.
    let mut agent = Agent::start(&["--port", &port.to_string()]);
    drop(client);
    assert!(agent.wait_for(Duration::from_secs(10), |ev| seen(
        ev,
        "ESTABLISHED",
        "CLOSE_WAIT"
    ) == 1));
    let (_, _, events) = agent.stop();
    drop(server);
    let close_wait = events.iter().find(|e| e["to"] == "CLOSE_WAIT").unwrap();
    // The peer's FIN arrives in softirq: the owner comes from /proc, not from the CPU.
    assert_eq!(
        close_wait["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{close_wait}"
    );
    // The client's close is its own system call: that one the kernel captures.
    let fin = events.iter().find(|e| e["to"] == "FIN_WAIT1").unwrap();
    assert_eq!(fin["pid"].as_u64(), Some(u64::from(std::process::id())));
}

#[test]
#[ignore = "needs root, a BTF kernel and socat; run by `cargo xtask test`"]
fn server_in_a_network_namespace_reports_that_namespace() {
    use std::os::unix::fs::MetadataExt as _;
    let ns = Netns::create();
    let inode = std::fs::metadata(ns.path()).unwrap().ino();
    let port = free_port("127.0.0.1");
    let mut agent = Agent::start(&["--netns-path", &ns.path(), "--port", &port.to_string()]);
    let mut server = sh(&format!(
        "exec ip netns exec {} {}",
        ns.name,
        server_cmd(&ns.ns_ip, port)
    ));
    exchange(&mut agent, &mut server, &ns.ns_ip, port);
    let (_, _, events) = agent.stop();
    // Only the namespace's sockets (listener and child) pass --netns-path; the client lives
    // in the host namespace.
    assert_eq!(without_lost_races(&events).len(), 7, "{events:#?}");
    for e in &events {
        assert_eq!(e["netns"].as_u64(), Some(inode), "{e}");
        assert_eq!(e["local_addr"], ns.ns_ip.as_str());
        assert_eq!(e["pid"].as_u64(), Some(u64::from(server.id())), "{e}");
    }
    assert!(
        events
            .iter()
            .any(|e| e["remote_addr"] == ns.host_ip.as_str())
    );
}

/// A fresh cgroup v2 directory; removed on drop.
struct Cgroup {
    dir: PathBuf,
    rel: String,
}

impl Cgroup {
    fn create() -> Self {
        let root = tcptrace::host::cgroup::cgroup2_mount().expect("a cgroup2 mount");
        let rel = format!("/tcptrace-test-{}", std::process::id());
        let dir = root.join(rel.trim_start_matches('/'));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap();
        Self { dir, rel }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
#[ignore = "needs root, a BTF kernel and socat; run by `cargo xtask test`"]
fn process_in_a_fresh_cgroup_reports_its_path_and_cgroup_filter() {
    let cg = Cgroup::create();
    let port = free_port("127.0.0.1");
    let mut agent = Agent::start(&["--cgroup", &cg.rel, "--port", &port.to_string()]);
    // The server moves itself into the cgroup before it creates its socket.
    let mut server = sh(&format!(
        "echo $$ > {}/cgroup.procs && exec {}",
        cg.dir.display(),
        server_cmd("127.0.0.1", port)
    ));
    exchange(&mut agent, &mut server, "127.0.0.1", port);
    let (_, _, events) = agent.stop();
    // Listener (2) and child (5); the client is in another cgroup and filtered out.
    assert_eq!(without_lost_races(&events).len(), 7, "{events:#?}");
    for e in &events {
        assert_eq!(e["cgroup"], cg.rel.as_str(), "{e}");
        assert!(e["container"].is_null(), "{e}");
    }
}

#[test]
#[ignore = "needs root, a BTF kernel and socat; run by `cargo xtask test`"]
fn pid_filter_lets_through_exactly_that_process_sockets() {
    let port = free_port("127.0.0.1");
    let go = std::env::temp_dir().join(format!("tcptrace-go-{}-{port}", std::process::id()));
    // The server's pid is known before it listens: it waits for the agent.
    let mut server = sh(&format!(
        "while [ ! -e {0} ]; do sleep 0.05; done; exec {1}",
        go.display(),
        server_cmd("127.0.0.1", port)
    ));
    let server_pid = server.id();
    let mut agent = Agent::start(&["--pid", &server_pid.to_string()]);
    std::fs::write(&go, b"").unwrap();
    exchange(&mut agent, &mut server, "127.0.0.1", port);
    let (_, _, events) = agent.stop();
    let _ = std::fs::remove_file(&go);
    assert_eq!(without_lost_races(&events).len(), 7, "{events:#?}");
    assert!(events.iter().all(|e| e["pid"] == server_pid), "{events:#?}");
}

/// A `socat` server that forks a handler per connection (the parent alone keeps the listener,
/// as `ss -tlnp` shows), logging each accepted client's port to a file.
struct ForkingServer {
    child: Child,
    log: PathBuf,
}

impl ForkingServer {
    /// Listens on `ip:port`, with SO_REUSEPORT when `reuseport`; returns once it listens.
    fn start(ip: &str, port: u16, reuseport: bool) -> Self {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!(
            "tcptrace-socat-{}-{port}-{seq}.log",
            std::process::id()
        ));
        let options = if reuseport { ",reuseport" } else { "" };
        let child = Command::new("socat")
            .args([
                "-d",
                "-d",
                "-lf",
                &log.display().to_string(),
                &format!("TCP4-LISTEN:{port},bind={ip},fork,reuseaddr{options}"),
                "OPEN:/dev/null",
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("socat");
        let server = Self { child, log };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !server.logged().contains("listening on") {
            assert!(std::time::Instant::now() < deadline, "socat never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    fn pid(&self) -> u64 {
        u64::from(self.child.id())
    }

    fn logged(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The client ports it accepted (`accepting connection from AF=2 IP:PORT on ...`).
    fn accepted(&self) -> Vec<u64> {
        self.logged()
            .lines()
            .filter_map(|l| l.split("accepting connection from AF=2 ").nth(1))
            .filter_map(|rest| {
                rest.split_whitespace()
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }
}

impl Drop for ForkingServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Connects `n` clients to `ip:port` one after the other, each closing first.
fn connect_clients(ip: &str, port: u16, n: usize) {
    for _ in 0..n {
        let mut c = client(ip, port);
        assert!(wait_timeout(&mut c, Duration::from_secs(10)).success());
    }
}

/// The handshake rows of server children on `port`: LISTEN -> SYN_RECV and SYN_RECV ->
/// ESTABLISHED.
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

fn handshakes_done(port: u16, n: usize) -> impl Fn(&[Value]) -> bool {
    move |ev: &[Value]| child_handshakes(&without_lost_races(ev), port).len() >= 2 * n
}

#[test]
#[ignore = "needs root, a BTF kernel and socat; run by `cargo xtask test`"]
fn children_of_a_listener_older_than_the_agent_name_its_holder() {
    let port = free_port("127.0.0.1");
    // The server has been listening for a while when tracing starts: no transition of the
    // agent's ever told who called listen().
    let server = ForkingServer::start("127.0.0.1", port, false);
    let mut agent = Agent::start(&["--port", &port.to_string()]);
    connect_clients("127.0.0.1", port, 3);
    assert!(agent.wait_for(Duration::from_secs(10), handshakes_done(port, 3)));
    let (_, _, events) = agent.stop();
    let events = without_lost_races(&events);
    let rows = child_handshakes(&events, port);
    assert_eq!(rows.len(), 6, "{events:#?}");
    for row in rows {
        assert_eq!(row["pid"].as_u64(), Some(server.pid()), "{row}");
        assert_eq!(row["comm"], "socat", "{row}");
    }
}

/// Each child row names the process whose listener accepted it (`accepted` maps client
/// ports to pids); every listener must have taken some.
fn assert_children_name_their_acceptor(events: &[Value], port: u16, servers: &[&ForkingServer]) {
    let mut acceptor = std::collections::BTreeMap::new();
    for s in servers {
        let ports = s.accepted();
        assert!(!ports.is_empty(), "pid {} accepted nothing", s.pid());
        for p in ports {
            acceptor.insert(p, s.pid());
        }
    }
    let rows = child_handshakes(events, port);
    assert_eq!(rows.len(), 2 * acceptor.len(), "{events:#?}");
    for row in rows {
        let client_port = row["remote_port"].as_u64().unwrap();
        assert_eq!(
            row["pid"].as_u64(),
            Some(acceptor[&client_port]),
            "client port {client_port}: {row}"
        );
    }
}

#[test]
#[ignore = "needs root, a BTF kernel and socat; run by `cargo xtask test`"]
fn reuseport_listeners_name_the_process_each_child_came_from() {
    let port = free_port("127.0.0.1");
    // One listener older than the agent, one younger: both kinds of owner in one group.
    let a = ForkingServer::start("127.0.0.1", port, true);
    let mut agent = Agent::start(&["--port", &port.to_string()]);
    let b = ForkingServer::start("127.0.0.1", port, true);
    connect_clients("127.0.0.1", port, 16);
    assert!(agent.wait_for(Duration::from_secs(10), handshakes_done(port, 16)));
    let (_, _, events) = agent.stop();
    let events = without_lost_races(&events);
    assert_children_name_their_acceptor(&events, port, &[&a, &b]);
}

#[test]
#[ignore = "needs root, a BTF kernel and socat; run by `cargo xtask test`"]
fn listeners_on_one_port_and_two_addresses_keep_their_own_owners() {
    let port = free_port("127.0.0.1");
    let a = ForkingServer::start("127.0.0.1", port, false);
    let mut agent = Agent::start(&["--port", &port.to_string()]);
    let b = ForkingServer::start("127.0.0.2", port, false);
    connect_clients("127.0.0.1", port, 3);
    connect_clients("127.0.0.2", port, 3);
    assert!(agent.wait_for(Duration::from_secs(10), handshakes_done(port, 6)));
    let (_, _, events) = agent.stop();
    let events = without_lost_races(&events);
    assert_children_name_their_acceptor(&events, port, &[&a, &b]);
    for row in child_handshakes(&events, port) {
        let expected = if row["local_addr"] == "127.0.0.1" {
            a.pid()
        } else {
            b.pid()
        };
        assert_eq!(row["pid"].as_u64(), Some(expected), "{row}");
    }
}
