//! The command line as a user meets it, without root: filters that can never match are
//! refused with one line that says why and what to use instead, before anything is loaded.

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_tcptrace");

/// Runs tcptrace with `args`: exit status and stderr.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tcptrace");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Refused: exit status `code`, stderr one line (clap adds a usage hint after a parse error,
/// so only its first line is compared) that contains every `needle`.
fn refused(args: &[&str], code: i32, needles: &[&str]) {
    let (status, stderr) = run(args);
    assert_eq!(status, Some(code), "{args:?}: {stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    for needle in needles {
        assert!(first.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn states_the_tracepoint_never_reports_are_refused_with_what_to_use_instead() {
    refused(
        &["tail", "--state", "time_wait"],
        1,
        &["time_wait", "never reports", "doctor", "fin_wait2,closing"],
    );
    refused(
        &["tail", "--state", "established,new_syn_recv"],
        1,
        &["new_syn_recv", "doctor"],
    );
    refused(&["life", "--state", "new_syn_recv"], 1, &["never reports"]);
}

#[test]
fn port_zero_and_overlong_comms_can_never_match() {
    for flag in ["--port", "--lport", "--rport"] {
        refused(&["tail", flag, "0"], 2, &["port 0"]);
    }
    refused(
        &["tail", "--comm", "a-name-longer-than-15"],
        1,
        &["--comm", "15", "a-name-longer-t"],
    );
    // 15 bytes is the longest name the kernel keeps: accepted (the run then fails for want of
    // privileges or succeeds as root; either way not for the filter).
    let (_, stderr) = run(&["tail", "--comm", "exactly15bytes!", "--duration", "0.1"]);
    assert!(!stderr.contains("--comm"), "{stderr}");
}

#[test]
fn a_network_namespace_no_one_has_is_refused() {
    refused(
        &["tail", "--netns", "1"],
        1,
        &["--netns 1", "no network namespace"],
    );
    refused(&["doctor", "--netns", "1"], 3, &["no network namespace"]);
}

#[test]
fn a_pid_that_does_not_exist_yet_is_a_warning_not_an_error() {
    // pid_max is at most 4194304 (PID_MAX_LIMIT): this pid cannot exist now.
    let (_, stderr) = run(&["tail", "--pid", "4194305", "--duration", "0.1"]);
    assert!(
        stderr.contains("tcptrace: warning: no process has pid 4194305 now"),
        "{stderr}"
    );
}
