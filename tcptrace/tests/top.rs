//! The state diagram against the real kernel: `tcptrace top` in a real terminal (tmux: keys
//! sent with `send-keys`, the screen read with `capture-pane`), and serve's `/` page loaded in
//! headless Chromium. Known traffic in a fresh network namespace: a process that leaks 5
//! CLOSE_WAIT sockets on one port, and a bounded churn of short connections closed by the
//! client (each leaves a TIME_WAIT). Needs root, tmux and chromium (`cargo xtask setup`).
//!
//! Each test writes what it saw under the test target's tmp dir (`top/top.txt`,
//! `serve-page/serve-page.png`): the README's pictures are copies of those.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Exporter, Netns, require_root};

/// Holds 5 sockets in CLOSE_WAIT on PORT: accepts 5 connections whose clients only shut
/// down their sending side (the server sockets get the FIN and are never closed; the clients
/// wait in FIN_WAIT2), then sleeps.
const LEAKER: &str = "\
import socket, sys, time
port = int(sys.argv[1])
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(('127.0.0.1', port))
l.listen(16)
held = []
for _ in range(5):
    c = socket.create_connection(('127.0.0.1', port))
    s, _ = l.accept()
    c.shutdown(socket.SHUT_WR)
    held += [c, s]
print('leaking', flush=True)
time.sleep(300)
";

/// The leaking process, killed on drop.
struct Leaker(Child);

impl Leaker {
    fn start(ns: &Netns, port: u16) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c", LEAKER])
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (cargo xtask setup installs it)");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "leaking");
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Leaker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `n` connections to a listener in `ns`, each closed by the client first (a TIME_WAIT on the
/// client side), with `pause` between them.
fn churn(ns: &Netns, n: usize, pause: Duration) {
    ns.run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        for _ in 0..n {
            let client = TcpStream::connect(addr).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            drop(client);
            let mut buf = [0u8; 1];
            assert_eq!(std::io::Read::read(&mut server, &mut buf).unwrap(), 0);
            drop(server);
            std::thread::sleep(pause);
        }
    });
}

/// A fresh namespace whose TIME_WAIT sockets stay until their 60 s pass: Linux reuses a
/// loopback TIME_WAIT for a new connect() by default (`tcp_tw_reuse` 2), which would take
/// some of the churn's away, silently and at random.
fn namespace() -> Netns {
    let ns = Netns::bare();
    ns.exec("sysctl", &["-q", "-w", "net.ipv4.tcp_tw_reuse=0"]);
    ns
}

/// A port nothing in `ns` uses.
fn free_port_in(ns: &Netns) -> u16 {
    ns.run(|| common::free_port("127.0.0.1"))
}

/// A tmux server of this test's own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Runs `command` in a new `cols` x `rows` terminal.
    fn start(command: &str, cols: u16, rows: u16) -> Self {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmux = Self {
            socket: format!("tcptrace-test-{}-{seq}", std::process::id()),
        };
        let ok = tmux
            .cmd(&[
                "new-session",
                "-d",
                "-s",
                "top",
                "-x",
                &cols.to_string(),
                "-y",
            ])
            .arg(rows.to_string())
            .arg(command)
            .status()
            .expect("tmux (cargo xtask setup installs it)")
            .success();
        assert!(ok, "tmux new-session");
        tmux
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]).args(args);
        c
    }

    /// The screen as text.
    fn screen(&self) -> String {
        let out = self
            .cmd(&["capture-pane", "-p", "-t", "top"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Keys as tmux names them (`q`, `Enter`, `Escape`).
    fn keys(&self, keys: &[&str]) {
        let mut c = self.cmd(&["send-keys", "-t", "top"]);
        assert!(c.args(keys).status().unwrap().success());
    }

    /// Text typed as is.
    fn type_text(&self, text: &str) {
        let mut c = self.cmd(&["send-keys", "-t", "top", "-l"]);
        assert!(c.arg(text).status().unwrap().success());
    }

    /// Reads the screen until `done` holds (at most `timeout`); returns the last screen and
    /// whether it held.
    fn wait(&self, timeout: Duration, done: impl Fn(&str) -> bool) -> (String, bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return (screen, true);
            }
            if Instant::now() > deadline {
                return (screen, false);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]).status();
    }
}

/// The count a box shows: the number right after the state's name (`CLOSE_WAIT    5 3s`);
/// panel titles (`CLOSE_WAIT leakers`, `(TIME_WAIT)`) are not boxes.
fn count_in_box(screen: &str, state: &str) -> Option<u64> {
    screen.lines().find_map(|line| {
        line.match_indices(state).find_map(|(at, _)| {
            let rest = &line[at + state.len()..];
            if !rest.starts_with(' ') {
                return None;
            }
            rest.split_whitespace().next()?.parse().ok()
        })
    })
}

/// Where a test leaves what it saw.
fn out_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
#[ignore = "needs root, a BTF kernel and tmux; run by `cargo xtask test`"]
fn top_draws_the_known_sockets_in_their_boxes_filters_and_restores_the_terminal() {
    require_root();
    let ns = namespace();
    let leak_port = free_port_in(&ns);
    // The pane's command: top, then whether the terminal came back in canonical mode.
    let command = format!(
        "{BIN} top --netns-path {} --reconcile-interval 2 --close-wait-age 1; \
         echo TOP-EXITED $?; stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon; sleep 300",
        ns.path()
    );
    let tmux = Tmux::start(&command, 80, 24);
    let (screen, up) = tmux.wait(Duration::from_secs(60), |s| s.contains("tcptrace top"));
    assert!(up, "top never drew:\n{screen}");
    assert_eq!(count_in_box(&screen, "TIME_WAIT"), Some(0), "{screen}");

    let leaker = Leaker::start(&ns, leak_port);
    // 2000 short connections, spread over a few seconds so frames show them moving.
    let churning = std::thread::scope(|scope| {
        let job = scope.spawn(|| churn(&ns, 2000, Duration::from_millis(2)));
        let mut moving = String::new();
        while !job.is_finished() {
            let screen = tmux.screen();
            if count_in_box(&screen, "TIME_WAIT").is_some_and(|n| n > 0) {
                moving = screen;
            }
            std::thread::sleep(Duration::from_millis(700));
        }
        job.join().unwrap();
        moving
    });

    let leaker_row = format!("{} python3", leaker.pid());
    let expected = |s: &str| {
        count_in_box(s, "CLOSE_WAIT") == Some(5)
            && count_in_box(s, "FIN_WAIT2") == Some(5)
            && count_in_box(s, "TIME_WAIT") == Some(2000)
            && count_in_box(s, "LISTEN") == Some(1)
            && s.contains(&leaker_row)
            && s.contains("close_wait_leak")
    };
    let (screen, held) = tmux.wait(Duration::from_secs(30), expected);
    let dir = out_dir("top");
    std::fs::write(dir.join("top.txt"), &screen).unwrap();
    if !churning.is_empty() {
        std::fs::write(dir.join("top-churn.txt"), &churning).unwrap();
    }
    assert!(
        held,
        "expected 5 CLOSE_WAIT, 5 FIN_WAIT2, 2000 TIME_WAIT, 1 LISTEN, the leaker ({leaker_row}) and the close_wait_leak banner:\n{screen}"
    );
    assert_eq!(count_in_box(&screen, "ESTABLISHED"), Some(0), "{screen}");
    // The leaker is in the CLOSE_WAIT panel, with its 5 sockets on its port.
    let lines: Vec<&str> = screen.lines().collect();
    let title = lines
        .iter()
        .position(|l| l.contains("CLOSE_WAIT leakers"))
        .expect("the CLOSE_WAIT panel");
    let column = lines[title].find("CLOSE_WAIT leakers").unwrap();
    let row = lines
        .get(title + 1)
        .and_then(|l| l.get(column..))
        .unwrap_or_default();
    assert!(
        row.contains(&leaker_row) && row.contains(&format!(":{leak_port}")),
        "CLOSE_WAIT panel:\n{screen}"
    );
    assert_eq!(row.split_whitespace().next(), Some("5"), "{row}");

    // `s`, Enter on CLOSE_WAIT lists the leaked sockets, oldest first, with their owner.
    tmux.keys(&["s"]);
    let (picker, ok) = tmux.wait(Duration::from_secs(10), |s| s.contains("sockets of"));
    assert!(ok, "{picker}");
    // `j` moves down as the arrow key does; the picker points at the chosen state.
    tmux.type_text("jjjjjjj");
    let (picker, ok) = tmux.wait(Duration::from_secs(10), |s| s.contains("▶CLOSE_WAIT"));
    assert!(ok, "{picker}");
    tmux.keys(&["Enter"]);
    let (list, ok) = tmux.wait(Duration::from_secs(10), |s| {
        s.contains("CLOSE_WAIT : 5 sockets") && s.contains("5 oldest listed")
    });
    assert!(ok, "{list}");
    assert_eq!(list.matches(&leaker_row).count(), 5, "{list}");
    tmux.keys(&["Enter"]);
    let (story, ok) = tmux.wait(Duration::from_secs(10), |s| s.contains("story so far"));
    assert!(ok, "{story}");
    assert!(story.contains("closed_by      remote"), "{story}");
    assert!(story.contains("ESTABLISHED -> CLOSE_WAIT"), "{story}");
    // Back to the diagram, one key at a time (escapes sent at once read as one sequence).
    for _ in 0..3 {
        tmux.keys(&["Escape"]);
        let (_, back) = tmux.wait(Duration::from_secs(3), |s| s.contains("q quit  p pause"));
        if back {
            break;
        }
    }

    // `f`: narrow to the leaker's port. The prompt holds the current filter.
    tmux.keys(&["f"]);
    let (prompt, shown) = tmux.wait(Duration::from_secs(10), |s| {
        s.contains("filter> --netns-path")
    });
    assert!(shown, "{prompt}");
    tmux.type_text(&format!(" --lport {leak_port}"));
    tmux.keys(&["Enter"]);
    let (narrowed, ok) = tmux.wait(Duration::from_secs(60), |s| {
        count_in_box(s, "TIME_WAIT") == Some(0)
            && count_in_box(s, "FIN_WAIT2") == Some(0)
            && count_in_box(s, "CLOSE_WAIT") == Some(5)
            && count_in_box(s, "LISTEN") == Some(1)
    });
    std::fs::write(dir.join("top-filtered.txt"), &narrowed).unwrap();
    assert!(
        ok,
        "--lport {leak_port} keeps the leaker's 5 CLOSE_WAIT and its listener only:\n{narrowed}"
    );

    // `q` ends it and gives the terminal back as it was.
    tmux.keys(&["q"]);
    let (after, ok) = tmux.wait(Duration::from_secs(30), |s| {
        s.contains("TOP-EXITED") && s.lines().any(|l| l.trim().ends_with("icanon"))
    });
    assert!(ok, "{after}");
    assert!(after.contains("TOP-EXITED 0"), "{after}");
    assert!(
        after.lines().any(|l| l.trim() == "icanon"),
        "the terminal is not back in canonical mode:\n{after}"
    );
    assert!(
        !after.contains("ESTABLISHED"),
        "the diagram stayed on screen:\n{after}"
    );
    drop(leaker);
}

#[test]
#[ignore = "needs root, a BTF kernel and tmux; run by `cargo xtask test`"]
fn top_gives_the_terminal_back_on_sigterm() {
    require_root();
    let ns = namespace();
    let command = format!(
        "{BIN} top --netns-path {}; echo TOP-EXITED $?; stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon; sleep 300",
        ns.path()
    );
    let tmux = Tmux::start(&command, 100, 30);
    let (screen, up) = tmux.wait(Duration::from_secs(60), |s| s.contains("tcptrace top"));
    assert!(up, "top never drew:\n{screen}");
    // The pane runs a shell; top is its child.
    let out = tmux
        .cmd(&["list-panes", "-t", "top", "-F", "#{pane_pid}"])
        .output()
        .unwrap();
    let shell: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap();
    let top: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: kill(2) on the pid of the agent this test started.
    assert_eq!(unsafe { libc::kill(top, libc::SIGTERM) }, 0);
    let (after, ok) = tmux.wait(Duration::from_secs(30), |s| {
        s.contains("TOP-EXITED") && s.lines().any(|l| l.trim().ends_with("icanon"))
    });
    assert!(ok, "{after}");
    assert!(after.contains("TOP-EXITED 0"), "{after}");
    assert!(after.lines().any(|l| l.trim() == "icanon"), "{after}");
    assert!(
        !after.contains("ESTABLISHED"),
        "the diagram stayed on screen:\n{after}"
    );
}

/// Chromium as root, headless, with nothing reaching out (the flags the machines need).
fn chromium(profile: &std::path::Path, args: &[&str]) -> Output {
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium (cargo xtask setup installs it)");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = std::io::Read::read_to_end(&mut { stdout }, &mut s);
        s
    });
    let status = common::wait_timeout(&mut child, Duration::from_secs(90));
    Output {
        status,
        stdout: reader.join().unwrap(),
        stderr: Vec::new(),
    }
}

#[test]
#[ignore = "needs root, a BTF kernel and chromium; run by `cargo xtask test`"]
fn serves_page_shows_the_same_counts_in_headless_chromium() {
    require_root();
    let ns = namespace();
    let leak_port = free_port_in(&ns);
    let exporter = Exporter::start(&[
        "--netns-path",
        &ns.path(),
        "--reconcile-interval",
        "2",
        "--close-wait-age",
        "1",
    ]);
    let _leaker = Leaker::start(&ns, leak_port);
    churn(&ns, 200, Duration::ZERO);
    exporter.wait_metric("tcptrace_sockets{state=\"close_wait\"}", |v| v == 5.0);
    exporter.wait_metric("tcptrace_sockets{state=\"time_wait\"}", |v| v == 200.0);
    exporter.wait_metric(
        "tcptrace_finding{kind=\"close_wait_leak\",severity=\"warning\"}",
        |v| v == 5.0,
    );
    // The picture is sampled with the gauges; one more second and the page has both.
    std::thread::sleep(Duration::from_millis(1100));

    let dir = out_dir("serve-page");
    let url = format!("http://{}/", exporter.addr);
    let profile = dir.join("profile");
    let _ = std::fs::remove_dir_all(&profile);
    let dom = chromium(&profile, &["--dump-dom", &url]);
    assert!(dom.status.success(), "chromium --dump-dom failed");
    let dom = String::from_utf8_lossy(&dom.stdout);
    std::fs::write(dir.join("serve-page.html"), dom.as_bytes()).unwrap();
    for (state, n) in [
        ("CLOSE_WAIT", 5),
        ("TIME_WAIT", 200),
        ("FIN_WAIT2", 5),
        ("LISTEN", 1),
        ("ESTABLISHED", 0),
    ] {
        let needle = format!("data-state=\"{state}\" data-count=\"{n}\"");
        assert!(
            dom.contains(&needle),
            "{needle} in the page Chromium rendered:\n{dom}"
        );
    }
    assert!(dom.contains("warning close_wait_leak"), "{dom}");
    assert!(dom.contains("<svg"), "{dom}");

    // The screenshot, taken while a second, paced churn runs (its arrows move).
    let png = dir.join("serve-page.png");
    let _ = std::fs::remove_file(&png);
    let _ = std::fs::remove_dir_all(&profile);
    std::thread::scope(|scope| {
        let churning = scope.spawn(|| churn(&ns, 1500, Duration::from_millis(2)));
        std::thread::sleep(Duration::from_millis(2500));
        let shot = chromium(
            &profile,
            &[
                "--window-size=860,1180",
                &format!("--screenshot={}", png.display()),
                &url,
            ],
        );
        assert!(shot.status.success(), "chromium --screenshot failed");
        churning.join().unwrap();
    });
    let bytes = std::fs::read(&png).expect("a screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
        "not a PNG picture"
    );
    let _ = std::fs::remove_dir_all(&profile);
}
