//! `tcptrace serve` against the real kernel and a real Prometheus server (Debian's
//! `prometheus` package, loopback only). Needs root; `cargo xtask test` runs these with
//! `--ignored`.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Exporter, free_port, http_get, sample};
use serde_json::Value;

/// `n` connections to `port` where the server closes first, so each server-side socket ends
/// in TIME_WAIT (for 60 s).
fn server_closes_first(listener: &TcpListener, n: usize) {
    let addr = listener.local_addr().unwrap();
    for _ in 0..n {
        let mut client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        drop(server);
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap(), 0, "EOF from the server");
    }
}

/// A Prometheus server scraping `target` every second, with its own data directory.
struct Prometheus {
    child: Child,
    addr: String,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tcptrace-prometheus-{}-{}",
            std::process::id(),
            free_port("127.0.0.1")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: tcptrace\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "start prometheus (Debian package `prometheus`; `cargo xtask setup` installs it)",
            );
        Self { child, addr, dir }
    }

    /// Instant query; the value of the single resulting sample, if any.
    fn query(&self, promql: &str) -> Option<f64> {
        let encoded: String = promql
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let (status, body) =
            http_get(&self.addr, &format!("/api/v1/query?query={encoded}")).ok()?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    fn wait(&self, promql: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let value = self.query(promql);
            if let Some(v) = value
                && pred(v)
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus: `{promql}` never satisfied the condition; last {value:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
#[ignore = "needs root, a BTF kernel and Prometheus; run by `cargo xtask test`"]
fn prometheus_sees_exactly_n_handshakes_and_the_time_wait_sockets() {
    const N: usize = 20;
    let port = free_port("127.0.0.1");
    let exporter = Exporter::start(&["--port", &port.to_string()]);
    let prometheus = Prometheus::start(&exporter.addr);
    prometheus.wait("up{job=\"tcptrace\"}", |v| v == 1.0);

    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    server_closes_first(&listener, N);
    let n = N as f64;

    prometheus.wait(
        "tcptrace_transitions_total{job=\"tcptrace\",from=\"syn_sent\",to=\"established\"}",
        |v| v == n,
    );
    for (from, to) in [
        ("close", "syn_sent"),
        ("listen", "syn_recv"),
        ("syn_recv", "established"),
        // The server closed first: every server socket went through FIN_WAIT2 -> CLOSE
        // (into TIME_WAIT), every client through LAST_ACK -> CLOSE.
        ("fin_wait2", "close"),
        ("last_ack", "close"),
    ] {
        let promql =
            format!("tcptrace_transitions_total{{job=\"tcptrace\",from=\"{from}\",to=\"{to}\"}}");
        assert_eq!(prometheus.wait(&promql, |v| v >= n), n, "{promql}");
    }
    for role in ["client", "server"] {
        let promql = format!(
            "tcptrace_handshake_duration_seconds_count{{job=\"tcptrace\",role=\"{role}\"}}"
        );
        assert_eq!(prometheus.wait(&promql, |v| v >= n), n, "{promql}");
    }
    // The test left N server-side sockets in TIME_WAIT (60 s).
    prometheus.wait(
        "tcptrace_sockets{job=\"tcptrace\",state=\"time_wait\"}",
        |v| v >= n,
    );
    assert_eq!(
        prometheus.query("tcptrace_lost_events_total{job=\"tcptrace\",reason=\"ring_full\"}"),
        Some(0.0)
    );
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn sockets_opened_before_start_are_counted_then_tracked() {
    // Below the ephemeral range: exact gauges need a port no other connection used.
    let port = common::quiet_port();
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    // Before the agent starts: 4 open connections (8 ESTABLISHED sockets) and 3 server-side
    // TIME_WAIT sockets.
    let mut pairs: Vec<(TcpStream, TcpStream)> = (0..4)
        .map(|_| {
            let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (s, _) = listener.accept().unwrap();
            (c, s)
        })
        .collect();
    server_closes_first(&listener, 3);
    // And one CLOSE_WAIT leak two seconds old.
    let leak_client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (leak_server, _) = listener.accept().unwrap();
    drop(leak_client);
    std::thread::sleep(Duration::from_secs(2));

    let exporter = Exporter::start(&["--port", &port.to_string()]);
    let metrics = exporter.scrape();
    assert_eq!(
        sample(&metrics, "tcptrace_sockets{state=\"established\"}"),
        Some(8.0)
    );
    // The seed was a reconcile, and it took some time, well under a second here.
    assert!(sample(&metrics, "tcptrace_reconcile_duration_seconds_count").unwrap() >= 1.0);
    let took = sample(&metrics, "tcptrace_reconcile_duration_seconds_sum").unwrap();
    assert!(took > 0.0 && took < 5.0, "{took}");
    assert_eq!(
        sample(&metrics, "tcptrace_sockets{state=\"close_wait\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "tcptrace_sockets{state=\"listen\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "tcptrace_sockets{state=\"time_wait\"}"),
        Some(3.0)
    );
    // The leak's client end is an orphan waiting for the FIN in the timewait FIN_WAIT2
    // substate.
    assert_eq!(
        sample(&metrics, "tcptrace_sockets{state=\"fin_wait2\"}"),
        Some(1.0)
    );
    // Sockets older than the agent keep their age, as a lower bound: a CLOSE_WAIT leak since
    // the peer's last ACK (tcp_info), TIME_WAIT from its timer; a restart hides no leak.
    let oldest = |state: &str| {
        sample(
            &metrics,
            &format!("tcptrace_state_oldest_seconds{{state=\"{state}\"}}"),
        )
        .unwrap()
    };
    assert!(oldest("close_wait") >= 2.0, "{metrics}");
    assert!(oldest("time_wait") >= 2.0, "{metrics}");
    assert!(oldest("close_wait") < 60.0, "{metrics}");
    assert_eq!(
        sample(&metrics, "tcptrace_reconcile_corrections_total"),
        Some(0.0)
    );

    // Now transitions move them: two clients close first; their servers never do.
    let mut leaked_servers = Vec::new();
    for (client, server) in pairs.drain(..2) {
        drop(client);
        leaked_servers.push(server);
    }
    exporter.wait_metric("tcptrace_sockets{state=\"close_wait\"}", |v| v == 3.0);
    exporter.wait_metric("tcptrace_sockets{state=\"established\"}", |v| v == 4.0);
    exporter.wait_metric("tcptrace_sockets{state=\"time_wait\"}", |v| v == 5.0);
    exporter.wait_metric("tcptrace_state_oldest_seconds{state=\"close_wait\"}", |v| {
        (2.0..60.0).contains(&v)
    });
    // Their starts predate the agent: closes are counted, lifetimes never invented.
    let metrics = exporter.scrape();
    assert!(
        metrics.contains(
            "tcptrace_connections_closed_total{closed_by=\"local\",end=\"fin\",role=\"unknown\"} 2"
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains("tcptrace_connection_duration_seconds_count{role=\"unknown\"}"),
        "{metrics}"
    );
    drop(pairs);
    drop(leaked_servers);
    drop(leak_server);
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn promtool_lints_a_live_scrape_clean() {
    let port = free_port("127.0.0.1");
    let exporter = Exporter::start(&["--port", &port.to_string()]);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    server_closes_first(&listener, 3);
    exporter.wait_metric(
        "tcptrace_transitions_total{from=\"syn_sent\",to=\"established\"}",
        |v| v == 3.0,
    );
    let metrics = exporter.scrape();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && report.trim().is_empty(), "{report}");
    // The landing page links to the metrics.
    let (status, body) = http_get(&exporter.addr, "/").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("href=\"/metrics\""), "{body}");
    assert_eq!(http_get(&exporter.addr, "/nope").unwrap().0, 404);
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn hostile_clients_cannot_stall_the_agent_or_grow_its_memory() {
    let port = free_port("127.0.0.1");
    let exporter = Exporter::start(&["--port", &port.to_string()]);
    // Slowloris: 40 connections that never finish their request head.
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(&exporter.addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    // A head that never ends: rejected once it passes the size limit.
    let mut huge = TcpStream::connect(&exporter.addr).unwrap();
    huge.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let junk = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(64 * 1024));
    let _ = huge.write_all(junk.as_bytes());
    let mut reply = String::new();
    let _ = huge.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");

    // Meanwhile the agent keeps processing transitions, and a scrape still gets through.
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    server_closes_first(&listener, 10);
    exporter.wait_metric(
        "tcptrace_transitions_total{from=\"syn_sent\",to=\"established\"}",
        |v| v == 10.0,
    );

    // Many parallel scrapes: every one is answered (200, or 503 beyond --web.max-requests).
    let scrapers: Vec<_> = (0..100)
        .map(|_| {
            let addr = exporter.addr.clone();
            std::thread::spawn(move || http_get(&addr, "/metrics").map(|(s, _)| s))
        })
        .collect();
    let statuses: Vec<u16> = scrapers
        .into_iter()
        .map(|t| t.join().unwrap().unwrap_or(0))
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200));

    // The slow clients are cut off after the head timeout: closed, without an answer.
    std::thread::sleep(Duration::from_secs(6));
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reply = String::new();
        let n = s.read_to_string(&mut reply);
        assert!(matches!(n, Ok(0)) || n.is_err(), "{reply}");
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", exporter.pid())).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(rss_kb < 64 * 1024, "RSS {rss_kb} kB after the attack");
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn doctor_findings_are_exported_while_they_last() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let exporter = Exporter::start(&[
        "--lport",
        &port.to_string(),
        "--reconcile-interval",
        "1",
        "--close-wait-age",
        "1",
    ]);
    // Three CLOSE_WAIT sockets this server never closes.
    let mut leaked = Vec::new();
    for _ in 0..3 {
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        leaked.push(listener.accept().unwrap().0);
        drop(client);
    }
    let series = "tcptrace_finding{kind=\"close_wait_leak\",severity=\"warning\"}";
    assert_eq!(exporter.wait_metric(series, |v| v >= 3.0), 3.0);
    // The application finally closes them: the finding clears and its series goes away.
    drop(leaked);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = exporter.scrape();
        if sample(&text, series).is_none() {
            assert!(sample(&text, "tcptrace_finding_evaluations_total").unwrap() >= 2.0);
            break;
        }
        assert!(Instant::now() < deadline, "finding never cleared");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn per_port_metrics_name_listening_ports_only_and_bytes_are_counted() {
    let ns = common::Netns::bare();
    // Two services; one label allowed: the first seen listening gets it, the other is "other".
    let (a, b) = ns.run(|| {
        (
            TcpListener::bind(("127.0.0.1", 8081)).unwrap(),
            TcpListener::bind(("127.0.0.1", 8082)).unwrap(),
        )
    });
    let exporter = Exporter::start(&["--netns-path", &ns.path(), "--metrics.port-limit", "1"]);
    // Three connections to 8081 that carry 1000 bytes each way, one to 8082; each client
    // closes first.
    ns.run(|| {
        for (l, port, n) in [(&a, 8081, 3), (&b, 8082, 1)] {
            for _ in 0..n {
                let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let (mut s, _) = l.accept().unwrap();
                c.write_all(&[1; 1000]).unwrap();
                let mut buf = [0u8; 1000];
                s.read_exact(&mut buf).unwrap();
                s.write_all(&buf).unwrap();
                c.read_exact(&mut buf).unwrap();
                drop(c);
                let _ = s.read(&mut buf);
            }
        }
    });
    exporter.wait_metric(
        "tcptrace_port_transitions_total{from=\"listen\",port=\"8081\",to=\"syn_recv\"}",
        |v| v == 3.0,
    );
    exporter.wait_metric(
        "tcptrace_port_transitions_total{from=\"listen\",port=\"other\",to=\"syn_recv\"}",
        |v| v == 1.0,
    );
    exporter.wait_metric(
        "tcptrace_port_sockets{port=\"8081\",state=\"listen\"}",
        |v| v == 1.0,
    );
    let metrics = exporter.scrape();
    // Only listening ports are labels: the clients' ephemeral ports never are.
    for line in metrics.lines().filter(|l| l.starts_with("tcptrace_port_")) {
        assert!(
            line.contains("port=\"8081\"") || line.contains("port=\"other\""),
            "{line}"
        );
    }
    // 4000 data bytes sent by the clients (and as many by the servers), SYN and FIN apart.
    exporter.wait_metric(
        "tcptrace_connection_bytes_total{direction=\"tx\",role=\"client\"}",
        |v| v == 4000.0,
    );
    exporter.wait_metric(
        "tcptrace_connection_bytes_total{direction=\"rx\",role=\"server\"}",
        |v| v == 4000.0,
    );
    assert!(
        sample(
            &metrics,
            "tcptrace_connection_rtt_seconds_count{role=\"client\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
}
