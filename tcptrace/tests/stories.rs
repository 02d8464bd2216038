//! The classic TCP cases on a real kernel, told by `tcptrace life`: each scenario drives real
//! sockets (loopback, or a network namespace this test creates) and asserts the exact states
//! of both ends and their connection story. Needs root; `cargo xtask test` runs these.

mod common;

use std::io::{ErrorKind, Read};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Agent, Netns, free_port, set_linger_zero, wait_timeout};
use serde_json::Value;

const CLIENT_ACTIVE: [&str; 7] = [
    "CLOSE",
    "SYN_SENT",
    "ESTABLISHED",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "CLOSE",
    "TIME_WAIT",
];
const CLIENT_PASSIVE: [&str; 6] = [
    "CLOSE",
    "SYN_SENT",
    "ESTABLISHED",
    "CLOSE_WAIT",
    "LAST_ACK",
    "CLOSE",
];
const SERVER_ACTIVE: [&str; 7] = [
    "LISTEN",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "CLOSE",
    "TIME_WAIT",
];
const SERVER_PASSIVE: [&str; 6] = [
    "LISTEN",
    "SYN_RECV",
    "ESTABLISHED",
    "CLOSE_WAIT",
    "LAST_ACK",
    "CLOSE",
];

/// `tcptrace life --time-wait -o json` for `port`, with frequent snapshots so TIME_WAIT ends
/// are seen fast.
fn life(port: u16) -> Agent {
    Agent::command(
        "life",
        &[
            "--port",
            &port.to_string(),
            "--time-wait",
            "--snapshot-interval",
            "0.2",
        ],
    )
}

/// Waits for `n` stories and stops the agent.
fn stories(agent: Agent, n: usize) -> Vec<Value> {
    stories_within(agent, n, Duration::from_secs(20))
}

fn stories_within(mut agent: Agent, n: usize, wait: Duration) -> Vec<Value> {
    assert!(
        agent.wait_for(wait, |s| s.len() >= n),
        "expected {n} stories, got {:#?}",
        agent.events
    );
    let (status, stderr, stories) = agent.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(stories.len(), n, "{stories:#?}");
    stories
}

fn states(story: &Value) -> Vec<&str> {
    story["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

fn role<'a>(stories: &'a [Value], role: &str) -> &'a Value {
    stories
        .iter()
        .find(|s| s["role"] == role)
        .unwrap_or_else(|| panic!("no {role} story in {stories:#?}"))
}

fn dur(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a duration: {v}"))
}

/// How a TIME_WAIT socket ended, and so how long it lasted.
struct TimeWaitEnd {
    /// Nanoseconds the TIME_WAIT dwell must fall within.
    dwell_ns: std::ops::Range<u64>,
    /// How long to wait for the stories.
    wait: Duration,
}

/// Ends the TIME_WAIT sockets on `port` after `after` (SOCK_DESTROY, `ss -K`), so a story that
/// would wait 60 s ends now with a known TIME_WAIT dwell. Older kernels (5.10, 6.1) refuse to
/// destroy timewait sockets (`tcp_abort()` returns EOPNOTSUPP for sockets that are not full
/// sockets): there the socket lives its `TCP_TIMEWAIT_LEN` of 60 s.
fn end_time_wait(port: u16, after: Duration) -> TimeWaitEnd {
    std::thread::sleep(after);
    let filter = format!("( sport = :{port} or dport = :{port} )");
    let ss = |kill: bool| {
        let out = Command::new("ss")
            .args([
                if kill { "-K" } else { "-H" },
                "-tan",
                "state",
                "time-wait",
                &filter,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "ss -K");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    ss(true);
    let after_ns = after.as_nanos() as u64;
    if ss(false) == 0 {
        TimeWaitEnd {
            dwell_ns: after_ns - 50_000_000..after_ns + 4_700_000_000,
            wait: Duration::from_secs(20),
        }
    } else {
        TimeWaitEnd {
            dwell_ns: 55_000_000_000..75_000_000_000,
            wait: Duration::from_secs(90),
        }
    }
}

fn pair(ip: &str, listener: &TcpListener) -> (TcpStream, TcpStream) {
    let port = listener.local_addr().unwrap().port();
    let client = TcpStream::connect((ip, port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

fn read_eof(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    assert_eq!(s.read(&mut buf).unwrap(), 0, "EOF");
}

/// Client closes first; the server closes after reading EOF; the client's TIME_WAIT is ended
/// after ~300 ms.
fn client_active_close(ip: &str) {
    let port = free_port(ip);
    let agent = life(port);
    let listener = TcpListener::bind((ip, port)).unwrap();
    let (client, mut server) = pair(ip, &listener);
    drop(client);
    read_eof(&mut server);
    drop(server);
    drop(listener);
    let end = end_time_wait(port, Duration::from_millis(300));
    let s = stories_within(agent, 2, end.wait);
    let c = role(&s, "client");
    assert_eq!(states(c), CLIENT_ACTIVE);
    assert_eq!(
        (&c["closed_by"], &c["end"]),
        (&"local".into(), &"fin".into())
    );
    assert_eq!(c["time_wait_state"], "TIME_WAIT");
    assert_eq!(c["time_wait_confirmed"], true);
    let tw = dur(&c["time_wait_ns"]);
    assert!(end.dwell_ns.contains(&tw), "TIME_WAIT {tw} ns");
    let srv = role(&s, "server");
    assert_eq!(states(srv), SERVER_PASSIVE);
    assert_eq!(
        (&srv["closed_by"], &srv["end"]),
        (&"remote".into(), &"fin".into())
    );
    assert!(srv["time_wait_ns"].is_null());
    for story in &s {
        assert!(story["from_start"].as_bool().unwrap());
        assert!(dur(&story["handshake_ns"]) < 1_000_000_000);
        assert_eq!(story["local_addr"], ip.trim_matches(['[', ']']));
    }
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn client_closes_first_and_sits_in_time_wait() {
    client_active_close("127.0.0.1");
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn ipv6_client_closes_first_and_sits_in_time_wait() {
    client_active_close("::1");
}

fn server_active_close(ip: &str) {
    let port = free_port(ip);
    let agent = life(port);
    let listener = TcpListener::bind((ip, port)).unwrap();
    let (mut client, server) = pair(ip, &listener);
    drop(server);
    read_eof(&mut client);
    drop(client);
    drop(listener);
    let end = end_time_wait(port, Duration::from_millis(300));
    let s = stories_within(agent, 2, end.wait);
    let srv = role(&s, "server");
    assert_eq!(states(srv), SERVER_ACTIVE);
    assert_eq!(
        (&srv["closed_by"], &srv["end"]),
        (&"local".into(), &"fin".into())
    );
    let tw = dur(&srv["time_wait_ns"]);
    assert!(end.dwell_ns.contains(&tw), "TIME_WAIT {tw} ns");
    let c = role(&s, "client");
    assert_eq!(states(c), CLIENT_PASSIVE);
    assert_eq!(
        (&c["closed_by"], &c["end"]),
        (&"remote".into(), &"fin".into())
    );
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn server_closes_first_and_the_server_sits_in_time_wait() {
    server_active_close("127.0.0.1");
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn ipv6_server_closes_first() {
    server_active_close("::1");
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn slow_application_shows_its_close_wait_dwell() {
    let port = free_port("127.0.0.1");
    let agent = life(port);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (client, mut server) = pair("127.0.0.1", &listener);
    drop(client);
    read_eof(&mut server);
    std::thread::sleep(Duration::from_millis(400)); // the application is slow to close
    drop(server);
    drop(listener);
    let end = end_time_wait(port, Duration::from_millis(100));
    let s = stories_within(agent, 2, end.wait);
    let srv = role(&s, "server");
    assert_eq!(states(srv), SERVER_PASSIVE);
    let cw = dur(&srv["close_wait_ns"]);
    assert!(
        (400_000_000..1_400_000_000).contains(&cw),
        "CLOSE_WAIT {cw} ns"
    );
}

/// Both ends send FIN while the other's FIN is still unacknowledged. Loopback is too fast
/// for that, so both ends live in a namespace whose firewall drops the connection's segments
/// while both call shutdown(); when the drop is lifted, the retransmitted FINs cross and
/// each end goes FIN_WAIT1 -> CLOSING. Whether they cross is up to the two retransmit timers
/// (if one end's FIN is acknowledged before the other's arrives, that end goes FIN_WAIT2):
/// reliable on hardware, not under an emulated CPU, so the attempt is repeated a few times.
fn simultaneous_close(ns: &Netns) -> (u16, Vec<Value>) {
    let port = free_port("127.0.0.1");
    // Without --time-wait, life prints each story at its close.
    let agent = Agent::command("life", &["--port", &port.to_string()]);
    let (a, b) = ns.run(|| {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        pair("127.0.0.1", &listener)
    });
    common::close_simultaneously(ns, port, a, b);
    (port, stories(agent, 2))
}

#[test]
#[ignore = "needs root, a BTF kernel and nftables; run by `cargo xtask test`"]
fn simultaneous_close_goes_through_closing_on_both_ends() {
    let ns = Netns::create();
    let crossed = |s: &[Value]| s.iter().all(|story| states(story).contains(&"CLOSING"));
    let (mut port, mut s) = simultaneous_close(&ns);
    for _ in 0..4 {
        if crossed(&s) {
            break;
        }
        println!("the FINs did not cross this time; again");
        (port, s) = simultaneous_close(&ns);
    }
    for story in &s {
        let st = states(story);
        assert_eq!(
            st[st.len() - 5..],
            ["ESTABLISHED", "FIN_WAIT1", "CLOSING", "CLOSE", "TIME_WAIT"],
            "{story}"
        );
        assert_eq!(
            (&story["closed_by"], &story["end"]),
            (&"both".into(), &"fin".into())
        );
    }
    // Both ends are now timewait sockets in that namespace.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "ss",
            "-tan",
            "state",
            "time-wait",
        ])
        .output()
        .unwrap();
    let tw = String::from_utf8_lossy(&out.stdout);
    assert_eq!(tw.matches(&format!(":{port}")).count(), 2, "{tw}");
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn so_linger_zero_aborts_without_time_wait_and_the_peer_sees_a_reset() {
    let port = free_port("127.0.0.1");
    let agent = life(port);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (client, server) = pair("127.0.0.1", &listener);
    set_linger_zero(&client);
    std::thread::sleep(Duration::from_millis(50));
    drop(client); // close() with SO_LINGER 0: RST, no FIN, no TIME_WAIT
    std::thread::sleep(Duration::from_millis(50));
    drop(server);
    drop(listener);
    let s = stories(agent, 2);
    let c = role(&s, "client");
    assert_eq!(states(c), ["CLOSE", "SYN_SENT", "ESTABLISHED", "CLOSE"]);
    assert_eq!(
        (&c["end"], &c["closed_by"]),
        (&"aborted".into(), &"local".into())
    );
    assert!(c["time_wait_ns"].is_null());
    assert!(dur(&c["established_ns"]) >= 50_000_000);
    let srv = role(&s, "server");
    assert_eq!(states(srv), ["LISTEN", "SYN_RECV", "ESTABLISHED", "CLOSE"]);
    assert_eq!(
        (&srv["end"], &srv["closed_by"]),
        (&"rst_received".into(), &"remote".into())
    );
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn peer_reset_while_established() {
    let port = free_port("127.0.0.1");
    let agent = life(port);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (client, server) = pair("127.0.0.1", &listener);
    set_linger_zero(&server);
    drop(server); // the server resets the connection
    std::thread::sleep(Duration::from_millis(50));
    drop(client);
    drop(listener);
    let s = stories(agent, 2);
    let c = role(&s, "client");
    assert_eq!(states(c), ["CLOSE", "SYN_SENT", "ESTABLISHED", "CLOSE"]);
    assert_eq!(
        (&c["end"], &c["closed_by"]),
        (&"rst_received".into(), &"remote".into())
    );
    let srv = role(&s, "server");
    assert_eq!(
        (&srv["end"], &srv["closed_by"]),
        (&"aborted".into(), &"local".into())
    );
}

fn refused(ip: &str) {
    let port = free_port(ip);
    let agent = life(port);
    let err = TcpStream::connect((ip, port)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    let s = stories(agent, 1);
    assert_eq!(states(&s[0]), ["CLOSE", "SYN_SENT", "CLOSE"]);
    assert_eq!(
        (&s[0]["role"], &s[0]["end"]),
        (&"client".into(), &"refused".into())
    );
    assert!(dur(&s[0]["lifetime_ns"]) < 1_000_000_000);
    assert_ne!(s[0]["local_port"], 0, "the local port survives the close");
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn connection_refused() {
    refused("127.0.0.1");
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn ipv6_connection_refused() {
    refused("::1");
}

/// A namespace whose outgoing SYNs to `port` are dropped by nftables, with
/// `tcp_syn_retries` = 1 so a connect times out after ~3 s (1 s + 2 s).
fn dropping_namespace(port: u16) -> Netns {
    let ns = Netns::create();
    let nft = |args: &[&str]| ns.exec("nft", args);
    nft(&["add", "table", "inet", "tcptrace_test"]);
    nft(&[
        "add",
        "chain",
        "inet",
        "tcptrace_test",
        "out",
        "{ type filter hook output priority 0; }",
    ]);
    nft(&[
        "add",
        "rule",
        "inet",
        "tcptrace_test",
        "out",
        "tcp",
        "dport",
        &port.to_string(),
        "drop",
    ]);
    let ok = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "sysctl",
            "-qw",
            "net.ipv4.tcp_syn_retries=1",
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok, "sysctl in the namespace");
    ns
}

/// `socat` inside the namespace connecting to the host end of the veth.
fn connect_from(ns: &Netns, port: u16, timeout: &str) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", &ns.name, "socat", "-u", "OPEN:/dev/null"])
        .arg(format!(
            "TCP4:{}:{port},connect-timeout={timeout}",
            ns.host_ip
        ))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
#[ignore = "needs root, a BTF kernel, socat and nftables; run by `cargo xtask test`"]
fn syn_timeout_through_a_firewall_drop() {
    let port = free_port("127.0.0.1");
    let ns = dropping_namespace(port);
    let agent = life(port);
    let mut client = connect_from(&ns, port, "30");
    let status = wait_timeout(&mut client, Duration::from_secs(30));
    assert!(!status.success(), "the connect must fail");
    let s = stories(agent, 1);
    assert_eq!(states(&s[0]), ["CLOSE", "SYN_SENT", "CLOSE"]);
    assert_eq!(
        (&s[0]["role"], &s[0]["end"]),
        (&"client".into(), &"timeout".into())
    );
    let life_ns = dur(&s[0]["lifetime_ns"]);
    assert!(
        (2_500_000_000..10_000_000_000).contains(&life_ns),
        "SYN_SENT for {life_ns} ns with tcp_syn_retries=1"
    );
}

#[test]
#[ignore = "needs root, a BTF kernel, socat and nftables; run by `cargo xtask test`"]
fn close_before_the_handshake_completes() {
    let port = free_port("127.0.0.1");
    let ns = dropping_namespace(port);
    let agent = life(port);
    // socat gives up (closes the socket) after 0.3 s, long before the SYN times out.
    let mut client = connect_from(&ns, port, "0.3");
    let status = wait_timeout(&mut client, Duration::from_secs(10));
    assert!(!status.success());
    let s = stories(agent, 1);
    assert_eq!(states(&s[0]), ["CLOSE", "SYN_SENT", "CLOSE"]);
    assert_eq!(s[0]["end"], "handshake_aborted");
    assert!(dur(&s[0]["lifetime_ns"]) < 1_000_000_000);
}

/// The thread name the kernel records for this thread (`task->comm`).
fn my_comm() -> String {
    let tid = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap();
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .unwrap()
        .trim_end()
        .to_owned()
}

/// Four connections on two ports: closed by the client, closed by the server (both on
/// `p1`), aborted with SO_LINGER 0, and a refused connect (both on `p2`). Seven stories
/// (four clients, three server children) and two listeners.
fn four_connections(p1: u16, p2: u16) {
    let l1 = TcpListener::bind(("127.0.0.1", p1)).unwrap();
    let (c, mut s) = pair("127.0.0.1", &l1);
    c.shutdown(Shutdown::Both).unwrap();
    read_eof(&mut s);
    drop(c);
    drop(s);
    let (mut c, s) = pair("127.0.0.1", &l1);
    s.shutdown(Shutdown::Both).unwrap();
    read_eof(&mut c);
    drop(s);
    drop(c);
    drop(l1);
    let l2 = TcpListener::bind(("127.0.0.1", p2)).unwrap();
    let (c, s) = pair("127.0.0.1", &l2);
    set_linger_zero(&c);
    drop(c);
    std::thread::sleep(Duration::from_millis(20));
    drop(s);
    drop(l2);
    let err = TcpStream::connect(("127.0.0.1", p2)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}

/// Filters select whole connections: a connection that passed through a state, or belongs
/// to a process, is told whole (the kernel keeps every transition of the sockets the
/// endpoint filters select; states and owners are judged per story).
#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn filters_select_whole_connections() {
    let (p1, p2) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    let ports = ["--port", &p1.to_string(), "--port", &p2.to_string()].map(str::to_owned);
    let me = std::process::id().to_string();
    let comm = my_comm();
    let variants: [(&[&str], usize); 6] = [
        (&[], 7),
        (&["--state", "syn_sent"], 4),
        (&["--state", "close_wait"], 2),
        (&["--state", "close,syn_sent"], 7),
        (&["--pid", &me], 7),
        (&["--comm", &comm], 7),
    ];
    let agents: Vec<Agent> = variants
        .iter()
        .map(|(filter, _)| {
            let mut args: Vec<&str> = ports.iter().map(String::as_str).collect();
            args.extend_from_slice(filter);
            Agent::command("life", &args)
        })
        .collect();
    four_connections(p1, p2);
    let mut whole = std::collections::HashMap::new();
    for (agent, (filter, n)) in agents.into_iter().zip(variants) {
        let s = stories(agent, n);
        for story in &s {
            let cookie = story["cookie"].as_u64().unwrap();
            if filter.is_empty() {
                whole.insert(cookie, story.clone());
                continue;
            }
            // The same story as without the filter: complete, not a fragment (each agent's
            // program reads the clock itself, so times differ by nanoseconds).
            let plain = &whole[&cookie];
            for key in ["states", "role", "from_start", "closed_by", "end", "pid"] {
                assert_eq!(story[key], plain[key], "{key} with {filter:?}: {story}");
            }
            for key in ["handshake_ns", "lifetime_ns"] {
                assert_eq!(story[key].is_null(), plain[key].is_null(), "{key}: {story}");
            }
        }
        match filter.first().copied() {
            Some("--state") if filter[1] == "syn_sent" => {
                assert!(s.iter().all(|c| c["role"] == "client"), "{s:#?}")
            }
            Some("--state") if filter[1] == "close_wait" => {
                assert!(
                    s.iter().all(|c| states(c).contains(&"CLOSE_WAIT")),
                    "{s:#?}"
                )
            }
            _ => assert!(s.iter().all(|c| c["from_start"] == true), "{s:#?}"),
        }
    }
}

/// By default a connection is printed when its socket closes: both ends of one loopback
/// connection come out together, the active closer's TIME_WAIT noted as following but not
/// measured. With --time-wait, what is still in TIME_WAIT at exit is printed with its
/// TIME_WAIT so far, never dropped, and the summary counts it.
#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn life_prints_at_close_and_drops_nothing_at_exit() {
    let port = free_port("127.0.0.1");
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut at_close = Agent::command("life", &["--port", &port.to_string()]);
    let waiting = Agent::command(
        "life",
        &[
            "--port",
            &port.to_string(),
            "--time-wait",
            "--duration",
            "3",
        ],
    );
    let (c, mut s) = pair("127.0.0.1", &listener);
    drop(c);
    read_eof(&mut s);
    drop(s);
    assert!(
        at_close.wait_for(Duration::from_secs(2), |e| e.len() == 2),
        "both ends at close: {:#?}",
        at_close.events
    );
    let (_, _, printed) = at_close.stop();
    let client = role(&printed, "client");
    assert_eq!(client["time_wait_state"], "TIME_WAIT");
    assert!(client["time_wait_ns"].is_null());
    assert_eq!(client["time_wait_ended"], false);
    assert!(role(&printed, "server")["time_wait_state"].is_null());
    // --duration 3 ends the run while the client's TIME_WAIT (60 s) still runs.
    let (status, stderr, printed) = waiting.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(printed.len(), 2, "{printed:#?}");
    let client = role(&printed, "client");
    assert_eq!(client["time_wait_ended"], false);
    assert!(dur(&client["time_wait_ns"]) >= 1_000_000_000, "{client}");
    assert!(
        stderr.contains("2 connections printed (1 of them at exit"),
        "{stderr}"
    );
    drop(listener);
}

/// A connection older than tcptrace: its start is unknown, so its lifetime is too, never the
/// time since tracing began; the server end is known as such because its port listens.
#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn connections_older_than_tcptrace_have_unknown_starts() {
    let port = free_port("127.0.0.1");
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (c, mut s) = pair("127.0.0.1", &listener);
    std::thread::sleep(Duration::from_millis(500));
    let agent = Agent::command("life", &["--port", &port.to_string()]);
    drop(c);
    read_eof(&mut s);
    drop(s);
    let st = stories(agent, 2);
    for story in &st {
        assert_eq!(story["from_start"], false, "{story}");
        assert!(story["lifetime_ns"].is_null(), "{story}");
        assert!(story["start_time"].is_null(), "{story}");
    }
    let server = st.iter().find(|s| s["local_port"] == port).unwrap();
    assert_eq!(server["role"], "server");
    let client = st.iter().find(|s| s["remote_port"] == port).unwrap();
    assert_eq!(client["role"], "unknown");
    assert_eq!(client["closed_by"], "local");
    drop(listener);
}

#[test]
#[ignore = "needs root, a BTF kernel and nftables; run by `cargo xtask test`"]
fn a_lost_final_ack_makes_the_servers_handshake_last_until_the_clients_data() {
    let ns = Netns::bare();
    let port: u16 = 8080;
    let agent = Agent::command("life", &["--netns-path", &ns.path(), "--port", "8080"]);
    let listener = ns.run(|| TcpListener::bind(("127.0.0.1", port)).unwrap());
    // Pure ACKs to the server are dropped: the handshake's final ACK (and the client's answer
    // to the SYN-ACK retransmitted after 1 s) never arrive; data segments carry PSH and pass.
    ns.exec("nft", &["add", "table", "inet", "tcptrace_ack"]);
    ns.exec(
        "nft",
        &[
            "add",
            "chain",
            "inet",
            "tcptrace_ack",
            "in",
            "{ type filter hook input priority 0; }",
        ],
    );
    ns.exec(
        "nft",
        &[
            "add",
            "rule",
            "inet",
            "tcptrace_ack",
            "in",
            "tcp",
            "dport",
            "8080",
            "tcp",
            "flags",
            "==",
            "ack",
            "drop",
        ],
    );
    let (client, server) = ns.run(|| {
        // connect() returns at the SYN-ACK: the client is established, the server is not.
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        std::io::Write::write_all(&mut client, b"hello").unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).unwrap();
        (client, server)
    });
    ns.exec("nft", &["delete", "table", "inet", "tcptrace_ack"]);
    drop(client);
    drop(server);
    let s = stories(agent, 2);
    let handshake = |r: &str| dur(&role(&s, r)["handshake_ns"]);
    // The server's handshake ran from its first SYN-ACK to the data that completed it.
    let server = handshake("server");
    assert!(
        (900_000_000..1_800_000_000).contains(&server),
        "server handshake {server} ns: {s:#?}"
    );
    assert!(handshake("client") < 200_000_000, "{s:#?}");
}

/// One connection to `ip:port` that sends `up` bytes and receives `down`, the client closing
/// first once both are through; the server end runs on a thread in `ns` (or here).
fn transfer(ns: Option<&Netns>, ip: &str, port: u16, up: usize, down: usize) {
    use std::io::Write as _;
    let listen = || TcpListener::bind((ip, port)).unwrap();
    let listener = match ns {
        Some(ns) => ns.run(listen),
        None => listen(),
    };
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = vec![0u8; up];
        s.read_exact(&mut got).unwrap();
        s.write_all(&vec![7u8; down]).unwrap();
        read_eof(&mut s);
    });
    let mut c = TcpStream::connect((ip, port)).unwrap();
    c.write_all(&vec![1u8; up]).unwrap();
    let mut back = vec![0u8; down];
    c.read_exact(&mut back).unwrap();
    drop(c);
    server.join().unwrap();
}

fn count(story: &Value, key: &str) -> u64 {
    story[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key}: {story}"))
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn what_a_connection_carried_is_what_was_sent_and_received() {
    let port = free_port("127.0.0.1");
    let agent = Agent::command("life", &["--port", &port.to_string()]);
    transfer(None, "127.0.0.1", port, 1 << 20, 64 << 10);
    let s = stories(agent, 2);
    let (client, server) = (role(&s, "client"), role(&s, "server"));
    // Data bytes only: the SYN and the FIN take a sequence number but carry no byte.
    assert_eq!(
        (count(client, "tx_bytes"), count(client, "rx_bytes")),
        (1 << 20, 64 << 10),
        "{client}"
    );
    assert_eq!(
        (count(server, "tx_bytes"), count(server, "rx_bytes")),
        (64 << 10, 1 << 20),
        "{server}"
    );
    for story in &s {
        assert_eq!(count(story, "retransmits"), 0, "{story}");
        let rtt = count(story, "srtt_us");
        assert!(
            (1..100_000).contains(&rtt),
            "loopback RTT {rtt} us: {story}"
        );
    }
}

#[test]
#[ignore = "needs root, a BTF kernel and nftables; run by `cargo xtask test`"]
fn segments_dropped_on_the_way_are_retransmissions_of_the_sender() {
    let ns = Netns::create();
    let port: u16 = 8080;
    let agent = Agent::command("life", &["--port", "8080"]);
    // Every 20th full-sized segment toward the server is dropped, and counted.
    ns.exec("nft", &["add", "table", "inet", "tcptrace_loss"]);
    ns.exec(
        "nft",
        &[
            "add",
            "chain",
            "inet",
            "tcptrace_loss",
            "in",
            "{ type filter hook input priority 0; }",
        ],
    );
    ns.exec(
        "nft",
        &[
            "add",
            "rule",
            "inet",
            "tcptrace_loss",
            "in",
            "tcp",
            "dport",
            "8080",
            "meta",
            "length",
            ">",
            "1000",
            "numgen",
            "inc",
            "mod",
            "20",
            "==",
            "0",
            "counter",
            "drop",
        ],
    );
    transfer(Some(&ns), &ns.ns_ip, port, 2 << 20, 64 << 10);
    let rules = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "nft",
            "list",
            "table",
            "inet",
            "tcptrace_loss",
        ])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    let dropped: u64 = rules
        .split("counter packets ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {rules}"));
    assert!(dropped > 0, "{rules}");
    let s = stories(agent, 2);
    let client = role(&s, "client");
    assert_eq!(count(client, "tx_bytes"), 2 << 20, "{client}");
    assert!(
        count(client, "retransmits") >= dropped,
        "{dropped} dropped: {client}"
    );
    let server = role(&s, "server");
    assert_eq!(count(server, "rx_bytes"), 2 << 20, "{server}");
}
