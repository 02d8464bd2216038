//! Shared fixtures of the checks' tests.

use crate::diagnosis::evidence::OwnerLookup;
use crate::diagnosis::window::{Baseline, Observations, Scene};
use crate::diagnosis::{Finding, Thresholds, diagnose};
use crate::host::owners::{ProcessName, SocketOwners};
use crate::host::stack::{Settings, TcpCounters};
use crate::model::filter::Filter;
use crate::model::snapshot::{DiagSocket, Idle};
use crate::model::tcp::TcpState;
use crate::model::transition::Transition;

pub const S: u64 = 1_000_000_000;

/// A snapshot socket; its inode is its cookie (pid 700, `leaky`, holds inode 7).
pub fn sock(cookie: u64, state: TcpState, local: &str, remote: &str) -> DiagSocket {
    crate::testing::diag(cookie, state, local, remote)
}

/// tcp_info idle times: last data sent, last data received, last ACK received (ms).
pub fn idle(sent: u32, recv: u32, ack: u32) -> Option<Idle> {
    Some(Idle::new(sent, recv, ack))
}

pub fn settings() -> Settings {
    Settings::from_pairs(&[
        ("net.ipv4.ip_local_port_range", "40000 40999"),
        ("net.ipv4.tcp_fin_timeout", "60"),
        ("net.ipv4.tcp_max_tw_buckets", "100000"),
        ("net.ipv4.tcp_syncookies", "1"),
    ])
}

/// Pid 700 (`leaky`) holds the socket with inode 7.
pub fn owners() -> impl OwnerLookup {
    SocketOwners::from_pairs([(
        7,
        ProcessName {
            pid: 700,
            comm: "leaky".into(),
        },
    )])
}

/// Every check over `sockets` at 100 s, with an empty baseline.
pub fn run(sockets: &[DiagSocket], obs: &Observations, th: &Thresholds) -> Vec<Finding> {
    run_with(
        sockets,
        obs,
        th,
        &Baseline::default(),
        &TcpCounters::default(),
    )
}

pub fn run_with(
    sockets: &[DiagSocket],
    obs: &Observations,
    th: &Thresholds,
    baseline: &Baseline,
    counters: &TcpCounters,
) -> Vec<Finding> {
    let settings = settings();
    let scene = Scene {
        netns: Some(4026531840),
        sockets,
        taken_ns: 100 * S,
        counters,
        settings: &settings,
        baseline,
    };
    diagnose(&scene, obs, &mut owners(), th)
}

/// A transition after 1 µs in the old state.
pub fn transition(cookie: u64, old: TcpState, new: TcpState, at: u64, rst: bool) -> Transition {
    crate::testing::step(cookie, old, new)
        .at(at)
        .dwell(Some(1_000))
        .rst(rst)
        .done()
}

/// A window with three refused connects, one timed out, two aborted here, one reset by the
/// peer and one simultaneous close.
pub fn window_of_ends() -> Observations {
    use TcpState::*;
    let mut obs = Observations::new(100);
    let mut at = S;
    let mut next = |obs: &mut Observations, cookie, path: &[(TcpState, TcpState, bool)]| {
        for (old, new, rst) in path {
            at += 10_000_000;
            obs.observe(
                &transition(cookie, *old, *new, at, *rst),
                &Filter::default(),
            );
        }
    };
    for c in 0..3 {
        next(
            &mut obs,
            c,
            &[(Close, SynSent, false), (SynSent, Close, true)],
        );
    }
    // A SYN_SENT that lasted over a second without RST: timed out.
    obs.observe(
        &transition(10, Close, SynSent, 2 * S, false),
        &Filter::default(),
    );
    let mut late = transition(10, SynSent, Close, 5 * S, false);
    late.in_old_ns = Some(3 * S);
    obs.observe(&late, &Filter::default());
    for c in 20..22 {
        next(
            &mut obs,
            c,
            &[
                (Close, SynSent, false),
                (SynSent, Established, false),
                (Established, Close, false),
            ],
        );
    }
    next(
        &mut obs,
        30,
        &[
            (Close, SynSent, false),
            (SynSent, Established, false),
            (Established, Close, true),
        ],
    );
    next(
        &mut obs,
        40,
        &[
            (Close, SynSent, false),
            (SynSent, Established, false),
            (Established, FinWait1, false),
            (FinWait1, Closing, false),
            (Closing, Close, false),
        ],
    );
    obs
}

/// Thresholds low enough for [`window_of_ends`] to show every event-derived finding.
pub fn low_thresholds() -> Thresholds {
    Thresholds {
        connect_failures: 4,
        resets: 3,
        ..Thresholds::default()
    }
}
