//! What `cargo xtask package` builds, used as a user would: the .deb installed, upgraded,
//! removed and purged with dpkg, its service's command run as the unit runs it (the tcptrace
//! user with the unit's capabilities only); the OCI image unpacked and the agent run from its
//! root file system, tracing a real connection. Needs root and the files in target/package
//! (`cargo xtask test` builds them first and runs these with `--ignored`). Host only: the
//! guests of `cargo xtask vm-test` do not run this binary.

mod common;
mod deploykit;

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{await_ready, free_port, http_get, require_root, sample, wait_timeout};
use deploykit::{Scratch, read, text};
use serde_json::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn package_dir() -> PathBuf {
    deploykit::root().join("target/package")
}

fn artifact(name: &str) -> PathBuf {
    let path = package_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask package` first",
        path.display()
    );
    path
}

fn sh(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    (out.status.success(), text(&out))
}

fn must(program: &str, args: &[&str]) -> String {
    let (ok, out) = sh(program, args);
    assert!(ok, "{program} {args:?}: {out}");
    out
}

/// `install ok installed VERSION`, `deinstall ok config-files VERSION`, or "" when dpkg
/// does not know the package.
fn dpkg_status() -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status} ${Version}", "tcptrace"])
        .output()
        .expect("dpkg-query");
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    } else {
        String::new()
    }
}

fn user_exists(name: &str) -> bool {
    sh("getent", &["passwd", name]).0
}

fn group_exists(name: &str) -> bool {
    sh("getent", &["group", name]).0
}

/// Files under /etc/systemd/system and deb-systemd-helper's state that name the unit.
fn systemd_traces() -> Vec<String> {
    let out = sh(
        "find",
        &[
            "/etc/systemd/system",
            "/var/lib/systemd/deb-systemd-helper-enabled",
            "/var/lib/systemd/deb-systemd-helper-masked",
            "-name",
            "*tcptrace*",
        ],
    )
    .1;
    out.lines()
        .filter(|l| l.contains("tcptrace"))
        .map(str::to_owned)
        .collect()
}

/// Puts the machine back as it was, whatever happened: the package purged, its user and
/// group gone.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        if !dpkg_status().is_empty() {
            let _ = sh("dpkg", &["--purge", "tcptrace"]);
        }
        if user_exists("tcptrace") {
            let _ = sh("userdel", &["tcptrace"]);
        }
        if group_exists("tcptrace") {
            let _ = sh("groupdel", &["tcptrace"]);
        }
    }
}

/// `Key=value` of the unit's [Service] section.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
        .trim()
        .to_owned()
}

/// Runs the installed unit's ExecStart as systemd would: as its User, with exactly its
/// AmbientCapabilities (also the bounding set) and no new privileges, its EnvironmentFile's
/// TCPTRACE_ARGS split on whitespace. Returns the scrape once the agent answers, or why the
/// agent did not start.
fn run_as_the_unit(unit: &str) -> Result<String, String> {
    let user = unit_value(unit, "User");
    let caps: Vec<String> = unit_value(unit, "AmbientCapabilities")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert_eq!(
        unit_value(unit, "CapabilityBoundingSet"),
        unit_value(unit, "AmbientCapabilities")
    );
    let caps = format!("-all,{}", caps.join(","));
    let exec = unit_value(unit, "ExecStart");
    assert_eq!(exec, "/usr/bin/tcptrace serve $TCPTRACE_ARGS");
    let env_file = unit_value(unit, "EnvironmentFile");
    let env_file = env_file.trim_start_matches('-');
    let args = must(
        "sh",
        &["-c", &format!(". {env_file}; printf %s \"$TCPTRACE_ARGS\"")],
    );
    let address = args
        .split_whitespace()
        .skip_while(|a| *a != "--web.listen-address")
        .nth(1)
        .expect("a listen address in TCPTRACE_ARGS")
        .to_owned();

    let mut child = Command::new("setpriv")
        .args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--clear-groups",
            &format!("--inh-caps={caps}"),
            &format!("--ambient-caps={caps}"),
            &format!("--bounding-set={caps}"),
            "--no-new-privs",
            "/usr/bin/tcptrace",
            "serve",
        ])
        .args(args.split_whitespace())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (Debian package util-linux)");
    // Until the ready line, or the agent's error if it exits first.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            let status = wait_timeout(&mut child, Duration::from_secs(20));
            return Err(format!("exited {status} before serving: {said}"));
        }
        if line.starts_with("tcptrace: tracing") {
            break;
        }
        said.push_str(&line);
    }
    let stderr = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = err.read_to_string(&mut rest);
        rest
    });
    // Two scrapes: the first one's own connection shows up in the second.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut body = String::new();
    while Instant::now() < deadline {
        if let Ok((200, b)) = http_get(&address, "/metrics") {
            body = b;
            if sample(
                &body,
                "tcptrace_transitions_total{from=\"syn_sent\",to=\"established\"}",
            )
            .is_some_and(|v| v >= 1.0)
            {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_timeout(&mut child, Duration::from_secs(20));
    let rest = stderr.join().unwrap();
    assert!(
        status.success(),
        "the service's agent exited {status}: {rest}"
    );
    Ok(body)
}

#[test]
#[ignore = "needs root and target/package (cargo xtask package); run by `cargo xtask test`"]
fn deb_installs_upgrades_and_purges_cleanly() {
    require_root();
    assert!(
        dpkg_status().is_empty() && !user_exists("tcptrace") && !group_exists("tcptrace"),
        "this machine already has a tcptrace package, user or group: the test would change them ({})",
        dpkg_status()
    );
    let _restore = Restore;
    let deb = artifact(&format!("tcptrace_{VERSION}-1_amd64.deb"));

    // Install.
    must("dpkg", &["--install", &deb.to_string_lossy()]);
    assert_eq!(dpkg_status(), format!("install ok installed {VERSION}-1"));
    let version = must("/usr/bin/tcptrace", &["--version"]);
    assert!(
        version.starts_with(&format!("tcptrace {VERSION}\n")),
        "{version}"
    );
    assert!(
        version.contains("kernels: Linux 5.10 or newer"),
        "{version}"
    );
    let passwd = must("getent", &["passwd", "tcptrace"]);
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "not a system user: {passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{passwd}");
    assert!(group_exists("tcptrace"));
    let conffiles = must("dpkg-query", &["-W", "-f=${Conffiles}", "tcptrace"]);
    assert!(conffiles.contains("/etc/default/tcptrace"), "{conffiles}");
    assert!(
        Path::new("/etc/systemd/system/multi-user.target.wants/tcptrace.service").exists(),
        "postinst did not enable the unit: {:?}",
        systemd_traces()
    );
    let help = must("zcat", &["/usr/share/doc/tcptrace/tcptrace.txt.gz"]);
    assert!(help.contains("Usage: tcptrace serve"), "{help}");
    // The installed unit, against the installed system.
    let (ok, report) = sh(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/tcptrace.service"],
    );
    assert!(ok && report.trim().is_empty(), "{report}");

    // The administrator's flags (a conffile edit) survive the upgrade.
    let port = free_port("127.0.0.1");
    let flags =
        format!("TCPTRACE_ARGS=\"--web.listen-address 127.0.0.1:{port} --reconcile-interval 2\"\n");
    std::fs::write("/etc/default/tcptrace", &flags).unwrap();

    // Upgrade to a newer version of the same package.
    let scratch = Scratch::new("deb-upgrade");
    let tree = scratch.path("tree");
    must(
        "dpkg-deb",
        &[
            "--raw-extract",
            &deb.to_string_lossy(),
            &tree.to_string_lossy(),
        ],
    );
    let control = tree.join("DEBIAN/control");
    let text = read(&control).replace(
        &format!("Version: {VERSION}-1\n"),
        &format!("Version: {VERSION}-2\n"),
    );
    std::fs::write(&control, text).unwrap();
    let newer = scratch.path("newer.deb");
    must(
        "dpkg-deb",
        &[
            "--root-owner-group",
            "--build",
            &tree.to_string_lossy(),
            &newer.to_string_lossy(),
        ],
    );
    must("dpkg", &["--install", &newer.to_string_lossy()]);
    assert_eq!(dpkg_status(), format!("install ok installed {VERSION}-2"));
    assert_eq!(read(Path::new("/etc/default/tcptrace")), flags);
    assert!(!Path::new("/etc/default/tcptrace.dpkg-dist").exists());
    assert_eq!(must("id", &["-u", "tcptrace"]).trim(), uid.to_string());

    // The service as its unit runs it: unprivileged, with the unit's capabilities only, it
    // loads the program, seeds its gauges from INET_DIAG and counts its own scrapes.
    let unit = read(Path::new("/lib/systemd/system/tcptrace.service"));
    let metrics = run_as_the_unit(&unit).unwrap();
    assert!(
        sample(&metrics, "tcptrace_sockets{state=\"listen\"}").is_some_and(|v| v >= 1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "tcptrace_snapshot_errors_total"),
        Some(0.0)
    );
    assert!(
        sample(
            &metrics,
            "tcptrace_transitions_total{from=\"syn_sent\",to=\"established\"}"
        )
        .is_some_and(|v| v >= 1.0),
        "{metrics}"
    );

    // A unit that forgot CAP_PERFMON would not run: the check above depends on the unit.
    let planted = unit.replace(" CAP_PERFMON", "");
    assert_ne!(planted, unit);
    let err = run_as_the_unit(&planted).unwrap_err();
    assert!(err.contains("missing CAP_PERFMON"), "{err}");

    // Remove: the program goes, the administrator's configuration stays.
    must("dpkg", &["--remove", "tcptrace"]);
    assert!(
        dpkg_status().starts_with("deinstall ok config-files"),
        "{}",
        dpkg_status()
    );
    assert!(!Path::new("/usr/bin/tcptrace").exists());
    assert!(!Path::new("/lib/systemd/system/tcptrace.service").exists());
    assert_eq!(read(Path::new("/etc/default/tcptrace")), flags);

    // Purge: nothing of it is left.
    must("dpkg", &["--purge", "tcptrace"]);
    assert_eq!(dpkg_status(), "");
    assert!(!Path::new("/etc/default/tcptrace").exists());
    assert!(!Path::new("/usr/share/doc/tcptrace").exists());
    assert!(!user_exists("tcptrace") && !group_exists("tcptrace"));
    assert_eq!(systemd_traces(), Vec::<String>::new());
}

/// The image's config blob (via index.json and the manifest of the only tag).
fn image_config(layout: &Path) -> (Value, Value) {
    let blob = |digest: &str| -> Value {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        serde_json::from_str(&read(&layout.join("blobs/sha256").join(hex))).unwrap()
    };
    let index: Value = serde_json::from_str(&read(&layout.join("index.json"))).unwrap();
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    assert_eq!(
        manifests[0]["annotations"]["org.opencontainers.image.ref.name"],
        VERSION
    );
    let manifest = blob(manifests[0]["digest"].as_str().unwrap());
    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    (manifest, config)
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let out = must("find", &[&dir.to_string_lossy(), "-mindepth", "1"]);
    let mut paths: Vec<String> = out
        .lines()
        .map(|l| {
            l.trim_start_matches(&*dir.to_string_lossy())
                .trim_start_matches('/')
                .to_owned()
        })
        .collect();
    paths.sort();
    paths
}

#[test]
#[ignore = "needs root and target/package (cargo xtask package); run by `cargo xtask test`"]
fn oci_image_runs_the_agent_from_its_own_root() {
    require_root();
    let archive = artifact(&format!("tcptrace-{VERSION}-oci.tar"));
    let scratch = Scratch::new("oci");
    let layout = scratch.path("layout");
    std::fs::create_dir_all(&layout).unwrap();
    must(
        "tar",
        &[
            "-C",
            &layout.to_string_lossy(),
            "-xf",
            &archive.to_string_lossy(),
        ],
    );

    // Labels and the default command.
    let (manifest, config) = image_config(&layout);
    let binary = artifact(&format!("tcptrace-{VERSION}-x86_64-linux-musl"));
    let commit = must(&binary.to_string_lossy(), &["--version"])
        .lines()
        .find_map(|l| l.strip_prefix("commit:"))
        .expect("commit line")
        .trim()
        .to_owned();
    for labels in [&config["config"]["Labels"], &manifest["annotations"]] {
        assert_eq!(
            labels["org.opencontainers.image.version"], VERSION,
            "{labels}"
        );
        assert_eq!(
            labels["org.opencontainers.image.revision"],
            commit.as_str(),
            "{labels}"
        );
        assert!(
            labels["org.opencontainers.image.source"]
                .as_str()
                .is_some_and(|s| s.starts_with("https://")),
            "{labels}"
        );
    }
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/bin/tcptrace"])
    );
    assert_eq!(config["config"]["Cmd"][0], "serve");

    // The root file system holds the agent and an empty /tmp, nothing else.
    let bundle = scratch.path("bundle");
    must(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:{VERSION}", layout.display()),
            &bundle.to_string_lossy(),
        ],
    );
    let rootfs = bundle.join("rootfs");
    assert_eq!(tree(&rootfs), ["tmp", "usr", "usr/bin", "usr/bin/tcptrace"]);

    // Run it from there, as a container runtime would: its own mount namespace, /proc and
    // /sys (BTF, cgroups) mounted in, chrooted. It must see a connection made on the host.
    for dir in ["proc", "sys"] {
        std::fs::create_dir(rootfs.join(dir)).unwrap();
    }
    let port = free_port("127.0.0.1");
    let script = format!(
        "set -e; mount -t proc proc {r}/proc; mount --rbind /sys {r}/sys; \
         exec chroot {r} /usr/bin/tcptrace tail --duration 3 -o json --port {port}",
        r = rootfs.display()
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux)");
    let stderr = await_ready(&mut child, "tcptrace: tracing");
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop(server);
    let mut buf = [0u8; 1];
    assert_eq!(client.read(&mut buf).unwrap(), 0);
    drop(client);
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(20));
    let rest = stderr.join().unwrap();
    assert!(
        status.success(),
        "the agent in the image exited {status}: {rest}"
    );
    let events: Vec<Value> = BufReader::new(stdout.as_bytes())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    for (old, new) in [
        ("CLOSE", "LISTEN"),
        ("CLOSE", "SYN_SENT"),
        ("SYN_SENT", "ESTABLISHED"),
        ("SYN_RECV", "ESTABLISHED"),
        ("ESTABLISHED", "FIN_WAIT1"),
        ("ESTABLISHED", "CLOSE_WAIT"),
    ] {
        assert_eq!(
            common::seen(&events, old, new),
            1,
            "{old} -> {new} in {events:#?}"
        );
    }
    assert!(
        events
            .iter()
            .all(|e| e["local_port"] == port || e["remote_port"] == port),
        "{events:#?}"
    );
}
