//! Least privilege and the secured metrics endpoint, against the real kernel: every command as
//! a non-root user with only the documented capabilities (and only the kept ones left in every
//! thread afterwards), TLS, basic auth and client certificates scraped by a real Prometheus,
//! 500 slow clients that do not starve a scrape, and serve's exporter conventions. Needs root
//! (it drops to nobody itself), Prometheus and setpriv; host only (not in VM guests).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{BIN, READY, free_port, http_get, require_root, wait_timeout};
use serde_json::Value;

/// Capability numbers (linux/capability.h).
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;

const OWNER_CAPS: u64 = (1 << CAP_DAC_READ_SEARCH) | (1 << CAP_SYS_PTRACE);

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tcptrace-security-{}-{name}-{}",
            std::process::id(),
            free_port("127.0.0.1")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        set_mode(&dir, 0o755);
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The agent copied where user nobody can run it (the build tree may not be reachable).
fn agent_for_nobody(dir: &TempDir) -> PathBuf {
    let bin = dir.0.join("tcptrace");
    std::fs::copy(BIN, &bin).unwrap();
    set_mode(&bin, 0o755);
    bin
}

/// `tcptrace ARGS` as user nobody with exactly `caps` (e.g. "+bpf,+perfmon") inheritable and
/// ambient: what `setpriv` or systemd's AmbientCapabilities give a service.
fn as_nobody(bin: &Path, caps: &str, args: &[&str]) -> Command {
    let caps = format!("-all,{caps}");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A started agent: stdout lines on a thread, stderr drained after the ready line.
struct Running {
    child: Child,
    stdout: Option<JoinHandle<Vec<String>>>,
    stderr: Option<JoinHandle<String>>,
}

impl Running {
    fn start(mut cmd: Command, ready: &str) -> Self {
        let mut child = cmd.spawn().expect("spawn tcptrace");
        let out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        // Lines before the ready line (warnings at start) are kept with the rest.
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut early = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut line = String::new();
            let n = err.read_line(&mut line).unwrap();
            assert!(
                n > 0 && Instant::now() < deadline,
                "tcptrace exited before `{ready}`: {early}"
            );
            if line.starts_with(ready) {
                break;
            }
            early.push_str(&line);
        }
        let stderr = std::thread::spawn(move || {
            let mut rest = early;
            let _ = err.read_to_string(&mut rest);
            rest
        });
        Self {
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, then the exit status, stdout lines and the rest of stderr.
    fn stop(self) -> (std::process::ExitStatus, Vec<String>, String) {
        self.signal(libc::SIGTERM);
        self.finish()
    }

    fn finish(mut self) -> (std::process::ExitStatus, Vec<String>, String) {
        let status = wait_timeout(&mut self.child, Duration::from_secs(20));
        let out = self.stdout.take().unwrap().join().unwrap();
        let err = self.stderr.take().unwrap().join().unwrap();
        (status, out, err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (thread name, CapEff, CapPrm) of every thread of `pid`.
fn thread_caps(pid: u32) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |key: &str| -> u64 {
            let v = status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("{key} in {status}"));
            u64::from_str_radix(v.trim(), 16).unwrap()
        };
        let name = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .unwrap_or("?")
            .trim()
            .to_owned();
        out.push((name, field("CapEff:"), field("CapPrm:")));
    }
    out
}

/// Every thread holds exactly `kept` in its effective and permitted sets.
fn assert_only_kept(pid: u32, kept: u64, min_threads: usize) {
    let threads = thread_caps(pid);
    assert!(
        threads.len() >= min_threads,
        "expected at least {min_threads} threads: {threads:?}"
    );
    for (name, eff, prm) in &threads {
        assert_eq!(
            (*eff, *prm),
            (kept, kept),
            "thread {name}: CapEff {eff:#x} CapPrm {prm:#x}, kept {kept:#x}"
        );
    }
}

/// One loopback connection on `port` with both ends closed.
fn one_connection(port: u16) {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    drop(client);
    drop(server);
}

#[test]
#[ignore = "needs root (drops to nobody with setpriv) and a BTF kernel; run by `cargo xtask test`"]
fn every_command_runs_as_nobody_with_the_documented_capabilities_and_keeps_only_those() {
    require_root();
    let dir = TempDir::new("nobody");
    let bin = agent_for_nobody(&dir);
    let load = "+bpf,+perfmon";
    let owners = "+bpf,+perfmon,+sys_ptrace,+dac_read_search";

    // tail: loading only; nothing kept (owners of older sockets and other namespaces stay
    // unknown, with a warning each).
    let port = free_port("127.0.0.1");
    let tail = Running::start(
        as_nobody(
            &bin,
            load,
            &["tail", "-o", "json", "--port", &port.to_string()],
        ),
        READY,
    );
    assert_only_kept(tail.pid(), 0, 1);
    one_connection(port);
    std::thread::sleep(Duration::from_millis(500));
    let (status, lines, stderr) = tail.stop();
    assert!(status.success(), "{status}: {stderr}");
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["from"] == "SYN_SENT" && e["to"] == "ESTABLISHED"),
        "{lines:?}"
    );
    // The kernel counters were still readable without any capability.
    assert!(
        stderr.contains(&format!("{} sent by the kernel", events.len())),
        "{stderr}"
    );

    // life: loading only.
    let port = free_port("127.0.0.1");
    let life = Running::start(
        as_nobody(
            &bin,
            load,
            &[
                "life",
                "-o",
                "json",
                "--no-time-wait",
                "--port",
                &port.to_string(),
            ],
        ),
        READY,
    );
    assert_only_kept(life.pid(), 0, 1);
    one_connection(port);
    std::thread::sleep(Duration::from_millis(500));
    let (status, lines, stderr) = life.stop();
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(lines.len(), 2, "both ends: {lines:?} {stderr}");

    // serve: owners for the findings; every thread (main, events, a render thread) keeps
    // exactly those.
    let port = free_port("127.0.0.1");
    let addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let serve = Running::start(
        as_nobody(
            &bin,
            owners,
            &[
                "serve",
                "--web.listen-address",
                &addr,
                "--port",
                &port.to_string(),
                "--reconcile-interval",
                "1",
            ],
        ),
        READY,
    );
    one_connection(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = http_get(&addr, "/metrics").unwrap();
        assert_eq!(status, 200, "{body}");
        if common::sample(
            &body,
            "tcptrace_transitions_total{from=\"syn_sent\",to=\"established\"}",
        ) == Some(1.0)
            && common::sample(&body, "tcptrace_reconciles_total").is_some_and(|v| v >= 2.0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "serve never counted: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_only_kept(serve.pid(), OWNER_CAPS, 3);
    let (status, _, stderr) = serve.stop();
    assert!(status.success(), "{status}: {stderr}");
    // Only other namespaces stay out of reach: their snapshots need setns (other tests'
    // namespaces may come and go meanwhile, reported as not dumped).
    for line in stderr.lines().filter(|l| l.contains("warning")) {
        assert!(
            line.contains("missing CAP_SYS_ADMIN") || line.contains("could not be dumped"),
            "{stderr}"
        );
    }

    // serve without the owner capabilities: a warning each, and it runs with none kept.
    let addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let serve = Running::start(
        as_nobody(&bin, load, &["serve", "--web.listen-address", &addr]),
        READY,
    );
    assert_eq!(http_get(&addr, "/metrics").unwrap().0, 200);
    assert_only_kept(serve.pid(), 0, 2);
    let (status, _, stderr) = serve.stop();
    assert!(status.success());
    assert!(
        stderr.contains("missing CAP_SYS_PTRACE") && stderr.contains("missing CAP_DAC_READ_SEARCH"),
        "{stderr}"
    );

    // doctor: owners while it watches; a report and a verdict exit code at the end.
    let doctor = Running::start(
        as_nobody(&bin, owners, &["doctor", "--duration", "2", "-o", "json"]),
        "tcptrace: watching",
    );
    assert_only_kept(doctor.pid(), OWNER_CAPS, 1);
    let (status, lines, stderr) = doctor.finish();
    assert!(matches!(status.code(), Some(0..=2)), "{status}: {stderr}");
    let report: Value = serde_json::from_str(&lines.join("\n")).unwrap();
    assert!(report["summary"]["sockets"].as_u64().is_some(), "{report}");

    // Missing a loading capability: one line naming it, before anything is loaded.
    let out = as_nobody(&bin, "+bpf", &["tail"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("missing CAP_PERFMON:"), "{stderr}");
    // doctor in another namespace needs CAP_SYS_ADMIN to enter it: named, or it works.
    let ns = common::Netns::bare();
    let path = ns.path();
    let netns_args = ["doctor", "--duration", "1", "--netns-path", path.as_str()];
    let out = as_nobody(&bin, owners, &netns_args).output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    // doctor's "could not tell" code (UNKNOWN, as monitoring plugins use it).
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("missing CAP_SYS_ADMIN"), "{stderr}");
    let with_admin = format!("{owners},+sys_admin");
    let doctor = Running::start(
        as_nobody(&bin, &with_admin, &netns_args),
        "tcptrace: watching",
    );
    assert_only_kept(doctor.pid(), OWNER_CAPS | (1 << CAP_SYS_ADMIN), 1);
    let (status, lines, stderr) = doctor.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(lines.concat().contains("0 sockets"), "{lines:?}");
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn a_root_agent_drops_to_what_it_needs_plus_capabilities_keep() {
    require_root();
    let port = free_port("127.0.0.1").to_string();
    let tail = |extra: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(["tail", "-o", "json", "--port", &port])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Running::start(c, READY)
    };
    // Every namespace (the default): owners from /proc/PID/fd, and setns for the snapshots
    // of the others.
    let every = tail(&[]);
    assert_only_kept(every.pid(), OWNER_CAPS | (1 << CAP_SYS_ADMIN), 1);
    drop(every);
    // Its own namespace only: no setns, so no CAP_SYS_ADMIN.
    let own = std::fs::metadata("/proc/self/ns/net")
        .unwrap()
        .ino()
        .to_string();
    let own = tail(&["--netns", &own]);
    assert_only_kept(own.pid(), OWNER_CAPS, 1);
    drop(own);
    let addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let serve = Running::start(
        {
            let mut c = Command::new(BIN);
            c.args([
                "serve",
                "--web.listen-address",
                &addr,
                "--capabilities.keep",
                "cap_net_admin",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            c
        },
        READY,
    );
    assert_eq!(http_get(&addr, "/metrics").unwrap().0, 200);
    assert_only_kept(
        serve.pid(),
        OWNER_CAPS | (1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN),
        3,
    );
    let (status, _, stderr) = serve.stop();
    assert!(status.success(), "{status}: {stderr}");
}

/// Test certificates (made now; no private key is committed): a CA, a server certificate for
/// 127.0.0.1, a client certificate.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (cert, key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
    let (client_cert, client_key) = leaf(vec!["prometheus".into()]);
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        cert: write("server.pem", &cert),
        key: write("server-key.pem", &key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client-key.pem", &client_key),
    }
}

/// A rustls client trusting the test CA, with the client certificate when asked.
fn tls_client(pki: &Pki, with_cert: bool) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(if with_cert {
        let certs = CertificateDer::pem_file_iter(&pki.client_cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&pki.client_key).unwrap();
        builder.with_client_auth_cert(certs, key).unwrap()
    } else {
        builder.with_no_client_auth()
    })
}

/// An HTTPS GET with optional basic credentials; the status, or the TLS/IO error.
fn https_get(
    addr: &str,
    client: Arc<rustls::ClientConfig>,
    auth: Option<&str>,
) -> Result<u16, String> {
    use base64::Engine as _;
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = rustls::ClientConnection::new(client, "127.0.0.1".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let header = auth.map_or(String::new(), |a| {
        format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(a)
        )
    });
    write!(
        tls,
        "GET /metrics HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not HTTP: {text}"))
}

/// Prometheus with the given scrape jobs (YAML list items), its own data directory.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: TempDir,
}

impl Prometheus {
    fn start(jobs: &str) -> Self {
        let dir = TempDir::new("prometheus");
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package; `cargo xtask setup` installs it)");
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    /// (health, lastError) of the target of `job`, once Prometheus scraped it.
    fn target(&self, job: &str) -> Option<(String, String)> {
        let v: Value = serde_json::from_str(&http10_get(&self.addr, "/api/v1/targets")?).ok()?;
        v["data"]["activeTargets"]
            .as_array()?
            .iter()
            .find(|t| t["labels"]["job"] == job)
            .map(|t| {
                (
                    t["health"].as_str().unwrap_or("").to_owned(),
                    t["lastError"].as_str().unwrap_or("").to_owned(),
                )
            })
    }

    /// Waits until `job`'s target health is `health`; returns its last error.
    fn wait_health(&self, job: &str, health: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let target = self.target(job);
            if let Some((h, err)) = &target
                && h == health
            {
                return err.clone();
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus job {job} never became {health}: {target:?}"
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

/// The body of an HTTP/1.0 GET: never chunked, unlike Go's HTTP/1.1 answers of a few KiB.
fn http10_get(addr: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then(|| body.to_owned())
}

fn job(name: &str, target: &str, body: &str) -> String {
    format!("  - job_name: {name}\n    static_configs:\n      - targets: ['{target}']\n{body}")
}

#[test]
#[ignore = "needs root, a BTF kernel and Prometheus; run by `cargo xtask test`"]
fn prometheus_scrapes_over_tls_with_basic_auth_and_client_certificates() {
    require_root();
    let dir = TempDir::new("tls");
    let pki = pki(&dir.0);
    let hash = bcrypt::hash("scrape-secret", 6).unwrap();
    let web = dir.0.join("web.yml");
    let server_tls = format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
        pki.cert.display(),
        pki.key.display()
    );
    let users = format!("basic_auth_users:\n  prometheus: '{hash}'\n");
    std::fs::write(&web, format!("{server_tls}{users}")).unwrap();

    let addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let serve = Running::start(
        {
            let mut c = Command::new(BIN);
            c.args(["serve", "--web.listen-address", &addr, "--web.config.file"])
                .arg(&web)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            c
        },
        READY,
    );

    let tls = |with_cert: bool| {
        let certs = if with_cert {
            format!(
                "      cert_file: {}\n      key_file: {}\n",
                pki.client_cert.display(),
                pki.client_key.display()
            )
        } else {
            String::new()
        };
        format!(
            "    scheme: https\n    tls_config:\n      ca_file: {}\n{certs}",
            pki.ca.display()
        )
    };
    let auth = "    basic_auth:\n      username: prometheus\n      password: scrape-secret\n";
    let jobs = [
        job("tls_auth", &addr, &format!("{}{auth}", tls(false))),
        job("tls_no_auth", &addr, &tls(false)),
        job("plain", &addr, auth),
        job("client_cert", &addr, &format!("{}{auth}", tls(true))),
    ]
    .concat();
    let prometheus = Prometheus::start(&jobs);
    prometheus.wait_health("tls_auth", "up");
    prometheus.wait_health("client_cert", "up");
    // Prometheus says "server returned HTTP status 401 Unauthorized" (the address itself may
    // contain "401", as port 33401 did).
    let err = prometheus.wait_health("tls_no_auth", "down");
    assert!(err.contains("HTTP status 401"), "{err}");
    let err = prometheus.wait_health("plain", "down");
    assert!(!err.is_empty() && !err.contains("HTTP status 401"), "{err}");

    // The same from a plain client: 401 without credentials, no HTTP over plain TCP.
    assert_eq!(https_get(&addr, tls_client(&pki, false), None), Ok(401));
    assert_eq!(
        https_get(&addr, tls_client(&pki, false), Some("prometheus:wrong")),
        Ok(401)
    );
    assert_eq!(
        https_get(
            &addr,
            tls_client(&pki, false),
            Some("prometheus:scrape-secret")
        ),
        Ok(200)
    );
    let plain = http_get(&addr, "/metrics").map(|(s, _)| s);
    assert!(matches!(plain, Err(_) | Ok(0)), "{plain:?}");

    // SIGHUP reloads: client certificates now required.
    std::fs::write(
        &web,
        format!(
            "{server_tls}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n{users}",
            pki.ca.display()
        ),
    )
    .unwrap();
    serve.signal(libc::SIGHUP);
    let err = prometheus.wait_health("tls_auth", "down");
    assert!(!err.contains("401"), "a TLS error, not HTTP: {err}");
    prometheus.wait_health("client_cert", "up");
    assert!(
        https_get(
            &addr,
            tls_client(&pki, false),
            Some("prometheus:scrape-secret")
        )
        .is_err()
    );
    assert_eq!(
        https_get(
            &addr,
            tls_client(&pki, true),
            Some("prometheus:scrape-secret")
        ),
        Ok(200)
    );

    // A reload that fails keeps the configuration in force, and the agent.
    std::fs::write(&web, "tls_server_config:\n  min_version: TLS10\n").unwrap();
    serve.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        https_get(
            &addr,
            tls_client(&pki, true),
            Some("prometheus:scrape-secret")
        ),
        Ok(200)
    );
    let (status, _, stderr) = serve.stop();
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("SIGHUP: keeping the web config in force") && stderr.contains("TLS10"),
        "{stderr}"
    );
}

/// `count` connections to `addr` from `sources` (loopback addresses, round robin), each having
/// sent half a request head.
fn slow_clients(addr: SocketAddr, sources: &[&str], count: usize) -> Vec<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (0..count)
        .map(|i| {
            let source: std::net::IpAddr = sources[i % sources.len()].parse().unwrap();
            let stream = rt.block_on(async {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(SocketAddr::new(source, 0)).unwrap();
                socket.connect(addr).await.unwrap()
            });
            let mut stream = stream.into_std().unwrap();
            stream.set_nonblocking(false).unwrap();
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            stream
        })
        .collect()
}

/// Connections the agent holds open on its listening port.
fn established_to(port: u16) -> usize {
    let out = Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn a_scrape_gets_through_500_slow_clients() {
    require_root();
    let port = free_port("127.0.0.1");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let serve = Running::start(
        {
            let mut c = Command::new(BIN);
            c.args([
                "serve",
                "--web.listen-address",
                &addr.to_string(),
                "--web.max-connections-per-source",
                "100",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            c
        },
        READY,
    );
    // 500 slow clients from five addresses (100 each: every one is held).
    let sources = [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.6",
    ];
    let slow = slow_clients(addr, &sources, 500);
    let deadline = Instant::now() + Duration::from_secs(5);
    while established_to(port) < 500 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        established_to(port) >= 500,
        "the slow clients are held open"
    );

    let started = Instant::now();
    let (status, body) = http_get(&addr.to_string(), "/metrics").unwrap();
    let latency = started.elapsed();
    assert_eq!(status, 200, "{body}");
    eprintln!("scrape with 500 slow clients held open: {latency:?}");
    assert!(latency < Duration::from_secs(10), "{latency:?}");

    // A 101st connection from one of those addresses is closed at once; other sources are
    // still served.
    let mut extra = slow_clients(addr, &["127.0.0.2"], 1).pop().unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reply = Vec::new();
    let read = extra.read_to_end(&mut reply);
    assert!(
        read.is_ok_and(|n| n == 0) || reply.is_empty(),
        "closed without an answer"
    );
    assert_eq!(http_get(&addr.to_string(), "/").unwrap().0, 200);

    // The slow clients are cut off after the head timeout (5 s): EOF, no answer needed.
    let cutoff = Instant::now();
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
    assert!(cutoff.elapsed() < Duration::from_secs(20));
    let status = std::fs::read_to_string(format!("/proc/{}/status", serve.pid())).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(rss_kb < 64 * 1024, "RSS {rss_kb} kB after the slow clients");
    let (status, _, stderr) = serve.stop();
    assert!(status.success(), "{status}: {stderr}");
}

/// A port free on every address, below the ephemeral range: a port picked by the kernel for
/// 127.0.0.1 and released may meanwhile be some connection's local port, which a wildcard
/// bind then collides with.
fn wildcard_port() -> u16 {
    let start = 20_000 + (std::process::id() % 5_000) as u16;
    (start..32_000)
        .find(|p| {
            TcpListener::bind(("::", *p)).is_ok() && TcpListener::bind(("0.0.0.0", *p)).is_ok()
        })
        .expect("a free port below the ephemeral range")
}

#[test]
#[ignore = "needs root and a BTF kernel; run by `cargo xtask test`"]
fn serve_listens_like_node_exporter_survives_sighup_and_tails_json() {
    require_root();
    let port = wildcard_port();
    let traced = free_port("127.0.0.1");
    let listen = format!(":{port}");
    let serve = Running::start(
        {
            let mut c = Command::new(BIN);
            c.args([
                "serve",
                "--web.listen-address",
                &listen,
                "--port",
                &traced.to_string(),
                "--tail",
                "--tail-format",
                "json",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            c
        },
        READY,
    );
    // `:PORT` is every address, IPv4 and IPv6.
    assert_eq!(
        http_get(&format!("127.0.0.1:{port}"), "/metrics")
            .unwrap()
            .0,
        200
    );
    if TcpListener::bind("[::1]:0").is_ok() {
        assert_eq!(
            http_get(&format!("[::1]:{port}"), "/metrics").unwrap().0,
            200
        );
    }
    // SIGHUP (nothing to reload) does not end it.
    serve.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(http_get(&format!("127.0.0.1:{port}"), "/").unwrap().0, 200);
    one_connection(traced);
    std::thread::sleep(Duration::from_millis(500));
    let (status, lines, stderr) = serve.stop();
    assert!(status.success(), "{status}: {stderr}");
    // --tail --tail-format json: tail's JSON lines, with its documented keys.
    let keys = common::golden_keys(include_str!("golden/tail.jsonl"));
    assert_eq!(lines.len(), 12, "listener, client, server child: {lines:?}");
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap();
        let got: BTreeSet<String> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(got, keys);
    }

    // `localhost:PORT` listens on localhost's first address.
    let port = free_port("127.0.0.1");
    let serve = Running::start(
        {
            let mut c = Command::new(BIN);
            c.args([
                "serve",
                "--web.listen-address",
                &format!("localhost:{port}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            c
        },
        READY,
    );
    assert_eq!(
        http_get(&format!("127.0.0.1:{port}"), "/metrics")
            .unwrap()
            .0,
        200
    );
    let (status, _, _) = serve.stop();
    assert!(status.success());
}

/// A bad --web.config.file is one line and exit 1 before anything is loaded: it is reported
/// even without the capabilities loading needs (no root needed for this test).
#[test]
fn a_bad_web_config_is_one_line_before_anything_is_loaded() {
    let dir = TempDir::new("badconfig");
    let hash = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";
    for (name, text, needle) in [
        (
            "syntax.yml",
            "tls_server_config: [",
            "not a valid web config",
        ),
        (
            "unknown.yml",
            "tls_server_configs: {}\n",
            "tls_server_configs",
        ),
        (
            "hash.yml",
            "basic_auth_users:\n  alice: secret\n",
            "basic_auth_users.alice",
        ),
        (
            "missing.yml",
            "tls_server_config:\n  cert_file: /nonexistent/c.pem\n  key_file: /nonexistent/k.pem\n",
            "/nonexistent/c.pem",
        ),
        (
            "version.yml",
            &format!(
                "basic_auth_users:\n  a: '{hash}'\ntls_server_config:\n  min_version: TLS11\n  cert_file: c\n  key_file: k\n"
            ),
            "TLS 1.2 and 1.3",
        ),
    ] {
        let path = dir.0.join(name);
        std::fs::write(&path, text).unwrap();
        let started = Instant::now();
        let out = Command::new(BIN)
            .args([
                "serve",
                "--web.listen-address",
                "127.0.0.1:0",
                "--web.config.file",
            ])
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(
            stderr.starts_with("tcptrace: error: --web.config.file") && stderr.contains(needle),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains(READY) && out.stdout.is_empty());
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    let out = Command::new(BIN)
        .args(["serve", "--web.config.file"])
        .arg(dir.0.join("nope.yml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("nope.yml"), "{stderr}");
}
