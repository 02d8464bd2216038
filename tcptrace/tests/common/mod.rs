//! Helpers for tests that run the real agent against the real kernel (root only).
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_tcptrace");

/// Line tcptrace prints on stderr once the program is attached.
pub const READY: &str = "tcptrace: tracing";

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
        require_root();
        let mut child = Command::new(BIN)
            .args(["tail", "--output", "json"])
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
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        // The verifier can be slow on a busy machine; the ready line comes after attach.
        while !first.starts_with(READY) {
            first.clear();
            let n = stderr.read_line(&mut first).expect("read stderr");
            assert!(
                n > 0 && Instant::now() < deadline,
                "tcptrace exited before attaching: {first}"
            );
        }
        let stderr_thread = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stderr.read_to_string(&mut rest);
            rest
        });
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
            match self.lines.recv_timeout(left) {
                Ok(v) => self.events.push(v),
                Err(RecvTimeoutError::Timeout) => return done(&self.events),
                Err(RecvTimeoutError::Disconnected) => return done(&self.events),
            }
        }
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

/// Waits for `child`, killing it (and failing) after `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tcptrace did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that is free on `ip` right now (picked by the kernel, then released), so that the
/// test can start the agent before the listener exists and see its CLOSE -> LISTEN.
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a: SocketAddr| a.port())
        .expect("bind to port 0")
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

/// `["CLOSE->LISTEN", ...]` for a socket's events.
pub fn transitions(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{}->{}",
                e["old"].as_str().unwrap(),
                e["new"].as_str().unwrap()
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
        .filter(|e| e["old"] == old && e["new"] == new)
        .count()
}
