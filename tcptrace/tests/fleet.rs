//! The fleet, end to end: three `tcptrace serve` agents standing in for three hosts (each
//! runs inside its own network namespace, traces only that namespace, and serves on its own
//! address and port over a veth to the host), one real Prometheus (Debian's package) scraping
//! them with the project's recording and alert rules, and a real CLOSE_WAIT leak on one
//! "host": its alert fires for that instance only and resolves when the leak ends. The same
//! run checks that every metric the dashboard and the rules name is one the agents export.
//! Needs root; `cargo xtask test` runs it with `--ignored`. Host only (not in vm-test guests).

mod common;
mod deploykit;

use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Netns, await_ready, free_port, http_get, require_root};
use deploykit::{
    Scratch, dashboard_queries, exported_names, project_dashboard, project_rules, read,
    unknown_metrics,
};
use serde_json::Value;

/// The CLOSE_WAIT alert pending period in the test (5m in the project's rules).
const TEST_FOR: &str = "2s";

/// The project's rules with every alert's `for:` shortened to TEST_FOR; nothing else changes.
fn rules_for_the_test() -> String {
    let rules = read(&deploykit::deploy("prometheus/tcptrace.rules.yml"));
    let mut out = String::new();
    let mut changed = 0;
    for line in rules.lines() {
        match line.split_once("for: ") {
            Some((indent, _)) if indent.trim().is_empty() => {
                out.push_str(&format!("{indent}for: {TEST_FOR}\n"));
                changed += 1;
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    assert!(changed >= 7, "only {changed} `for:` lines in the rules");
    out
}

/// One stand-in host: a network namespace with an agent inside, reachable at `target`.
struct Host {
    ns: Netns,
    agent: Child,
    stderr: Option<std::thread::JoinHandle<String>>,
    target: String,
}

impl Host {
    fn start() -> Self {
        let ns = Netns::create();
        let port = free_port("127.0.0.1");
        let target = format!("{}:{port}", ns.ns_ip);
        let mut agent = Command::new("ip")
            .args(["netns", "exec", &ns.name, BIN, "serve"])
            .args(["--web.listen-address", &target])
            .args(["--netns-path", &ns.path()])
            // Snapshots and findings every second; a CLOSE_WAIT socket leaks after 2 s.
            .args(["--reconcile-interval", "1", "--close-wait-age", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ip netns exec tcptrace serve");
        let stderr = Some(await_ready(&mut agent, common::READY));
        Self {
            ns,
            agent,
            stderr,
            target,
        }
    }

    fn scrape(&self) -> String {
        let (status, body) = http_get(&self.target, "/metrics").expect("scrape");
        assert_eq!(status, 200);
        body
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child (`ip netns exec` execs the agent).
        unsafe { libc::kill(self.agent.id() as i32, libc::SIGTERM) };
        let _ = common::wait_timeout(&mut self.agent, Duration::from_secs(20));
        if let Some(rest) = self.stderr.take().and_then(|t| t.join().ok())
            && !rest.is_empty()
        {
            eprintln!("agent in {}: {rest}", self.ns.name);
        }
    }
}

/// A Prometheus server scraping `targets` every second, evaluating `rules` every second.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: Scratch,
}

impl Prometheus {
    fn start(targets: &[&str], rules: &str) -> Self {
        let dir = Scratch::new("fleet-prometheus");
        let rules_path = dir.write("tcptrace.rules.yml", rules);
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = dir.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: tcptrace\n    static_configs:\n      - targets: [{}]\n",
                rules_path.display(),
                list.join(", ")
            ),
        );
        let addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package `prometheus`; `cargo xtask setup` installs it)");
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    /// GET over HTTP/1.0, so that large answers come whole rather than chunked.
    fn api(&self, path: &str) -> Option<Value> {
        use std::io::{Read as _, Write as _};
        let mut stream = TcpStream::connect(&self.addr).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.0 200")
            .then(|| serde_json::from_str(body).ok())?
    }

    /// An instant query's result vector (None when Prometheus refuses the query).
    fn query(&self, promql: &str) -> Option<Vec<Value>> {
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
        let v = self.api(&format!("/api/v1/query?query={encoded}"))?;
        v["data"]["result"].as_array().cloned()
    }

    /// Active (pending or firing) alerts named `name`, from /api/v1/alerts.
    fn alerts(&self, name: &str) -> Vec<Value> {
        self.api("/api/v1/alerts")
            .and_then(|v| v["data"]["alerts"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .collect()
    }

    /// Polls `check` every 250 ms until it returns Some, for at most `timeout`.
    fn wait<T>(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus: {what} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs root, a BTF kernel and Prometheus; run by `cargo xtask test`"]
fn close_wait_leak_on_one_host_fires_its_alert_there_only_and_resolves() {
    require_root();
    let hosts: Vec<Host> = (0..3).map(|_| Host::start()).collect();
    let targets: Vec<&str> = hosts.iter().map(|h| h.target.as_str()).collect();
    let prometheus = Prometheus::start(&targets, &rules_for_the_test());
    prometheus.wait("all three agents up", Duration::from_secs(60), || {
        let up = prometheus.query("sum(up{job=\"tcptrace\"})")?;
        (up.first()?["value"][1] == "3").then_some(())
    });

    // The leak, on the second host: a server that never closes its end after the client
    // closed. The sockets belong to that host's namespace.
    let leaky = &hosts[1];
    let (client, leaked) = leaky.ns.run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut pairs = Vec::new();
        for _ in 0..3 {
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            pairs.push((client, server));
        }
        let (clients, servers): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
        (clients, servers)
    });
    drop(client);

    let firing = prometheus.wait(
        "TcptraceCloseWaitLeak firing",
        Duration::from_secs(90),
        || {
            let alerts = prometheus.alerts("TcptraceCloseWaitLeak");
            alerts
                .iter()
                .any(|a| a["state"] == "firing")
                .then_some(alerts)
        },
    );
    // For the leaking host only.
    assert_eq!(firing.len(), 1, "{firing:#?}");
    let alert = &firing[0];
    assert_eq!(
        alert["labels"]["instance"],
        leaky.target.as_str(),
        "{alert:#}"
    );
    assert_eq!(alert["labels"]["job"], "tcptrace");
    assert_eq!(alert["labels"]["severity"], "warning");
    assert_eq!(
        alert["value"].as_str().map(str::parse::<f64>),
        Some(Ok(3.0)),
        "{alert:#}"
    );
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains(&leaky.target) && s.contains("CLOSE_WAIT")),
        "{alert:#}"
    );

    // While the leak is on, one agent's scrape has every metric family tcptrace exports
    // (findings, transitions, dwell, handshake, closed connections): every name the
    // dashboard and the rules use must be among them, or be a recording rule of the project.
    let exported = exported_names(&leaky.scrape());
    assert!(exported.contains("tcptrace_finding"), "{exported:?}");
    let rules = project_rules();
    let recorded: BTreeSet<String> = rules.iter().filter_map(|r| r.record.clone()).collect();
    let mut queries = dashboard_queries(&project_dashboard());
    queries.extend(rules.iter().map(|r| {
        (
            r.record
                .clone()
                .or_else(|| r.alert.clone())
                .unwrap_or_default(),
            r.expr.clone(),
        )
    }));
    let unknown = unknown_metrics(&queries, &exported, &recorded);
    assert!(unknown.is_empty(), "not exported by tcptrace: {unknown:#?}");
    // A misspelt metric would be caught.
    let planted = vec![(
        "planted".to_owned(),
        "sum(rate(tcptrace_transition_total[5m]))".to_owned(),
    )];
    assert_eq!(
        unknown_metrics(&planted, &exported, &recorded),
        ["planted: tcptrace_transition_total"]
    );
    // And Prometheus itself accepts every dashboard query.
    for (title, expr) in dashboard_queries(&project_dashboard()) {
        assert!(
            prometheus.query(&expr).is_some(),
            "Prometheus refused the query of `{title}`: {expr}"
        );
    }

    // The application closes its sockets: the finding clears at the next reconcile and the
    // alert resolves (leaves the active alerts).
    drop(leaked);
    prometheus.wait(
        "TcptraceCloseWaitLeak resolved",
        Duration::from_secs(60),
        || {
            prometheus
                .alerts("TcptraceCloseWaitLeak")
                .is_empty()
                .then_some(())
        },
    );
    // No host ever had another CLOSE_WAIT alert.
    let history = prometheus
        .query("max_over_time(ALERTS{alertname=\"TcptraceCloseWaitLeak\"}[10m])")
        .expect("ALERTS query");
    let instances: BTreeSet<&str> = history
        .iter()
        .filter_map(|s| s["metric"]["instance"].as_str())
        .collect();
    assert_eq!(instances, BTreeSet::from([leaky.target.as_str()]));
}
