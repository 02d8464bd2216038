//! `fin_wait2_stuck`: half-closed sockets the application still holds, waiting in FIN_WAIT2 for a FIN that never comes.

use crate::diagnosis::evidence::Ctx;
use crate::diagnosis::{Finding, Kind, Severity, Thresholds};
use std::time::Duration;

use crate::diagnosis::Fact;
use crate::diagnosis::evidence::{aged, human, secs, socket_groups};
use crate::model::snapshot::{DiagSocket, Timer};
use crate::model::tcp::TcpState;

/// What the finding means and how tcptrace decides it (`doctor --explain`).
pub const EXPLAIN: &str = "This side closed (or shut down) its sending direction, the peer acknowledged the \
FIN, and the peer never sent its own. An orphaned socket (closed by the application) is \
reaped after tcp_fin_timeout; a socket the application still holds after shutdown(SHUT_WR) \
waits in FIN_WAIT2 forever. Reported: held FIN_WAIT2 sockets older than --fin-wait2-age \
(default: tcp_fin_timeout).";

pub(crate) fn check(ctx: &mut Ctx<'_>, th: &Thresholds) -> Option<Finding> {
    let fin_timeout = ctx
        .scene
        .settings
        .number("net.ipv4.tcp_fin_timeout")
        .unwrap_or(60);
    let threshold = th.fin_wait2_age.unwrap_or(Duration::from_secs(fin_timeout));
    let sockets = ctx.scene.sockets;
    // Held sockets only: orphans are timewait sockets (timer 3) that tcp_fin_timeout reaps.
    let held = |s: &DiagSocket| s.state == TcpState::FinWait2 && s.timer != Timer::TimeWait;
    let orphans = sockets
        .iter()
        .filter(|s| s.state == TcpState::FinWait2 && s.timer == Timer::TimeWait)
        .count() as u64;
    let (old, unknown) = aged(ctx, sockets, held, threshold.as_nanos() as u64);
    if old.is_empty() {
        return None;
    }
    let n = old.len() as u64;
    let (top, examples, worst) = socket_groups(ctx, &old, true);
    Some(Finding {
        kind: Kind::FinWait2Stuck,
        netns: None,
        namespace: None,
        severity: Severity::Warning,
        statement: format!(
            "{n} socket(s) half-closed and waiting in FIN_WAIT2 for over {}: the peer never sent \
its FIN and the application still holds them; most: {worst}",
            human(threshold)
        ),
        count: n,
        facts: vec![
            ("over_threshold", Fact::Count(n)),
            ("age_unknown", Fact::Count(unknown)),
            ("oldest_s", Fact::Number(secs(old[0].1))),
            ("orphaned_fin_wait2", Fact::Count(orphans)),
            ("threshold_s", Fact::Number(threshold.as_secs_f64())),
        ],
        top,
        examples,
        settings: ctx.scene.settings.pick(&["net.ipv4.tcp_fin_timeout"]),
        advice: vec![
            format!(
                "tcp_fin_timeout ({fin_timeout} s) reaps only orphaned sockets; a socket the \
application keeps after shutdown(SHUT_WR) waits for the peer's FIN forever: give the \
application a read timeout and close() it."
            ),
            "On the peer, the matching socket sits in CLOSE_WAIT: the peer application never \
closes its side (see close_wait_leak there)."
                .into(),
        ],
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::diagnosis::checks::support::*;
    use crate::diagnosis::window::Observations;
    use crate::diagnosis::{Fact, Kind, Thresholds};
    use crate::model::snapshot::Timer;
    use crate::model::tcp::TcpState;

    #[test]
    fn held_fin_wait2_is_stuck_orphans_are_not() {
        let mut held = sock(7, TcpState::FinWait2, "10.0.0.1:40000", "10.0.0.2:80");
        held.idle = idle(90_000, 90_000, 90_000);
        let mut orphan = held;
        orphan.cookie = 8;
        orphan.timer = Timer::TimeWait;
        let f = run(
            &[held, orphan],
            &Observations::new(10),
            &Thresholds::default(),
        );
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].kind, f[0].count), (Kind::FinWait2Stuck, 1));
        assert!(f[0].facts.contains(&("orphaned_fin_wait2", Fact::Count(1))));
        assert_eq!(f[0].examples[0].owner.as_ref().unwrap().pid, 700);
        let th = Thresholds {
            fin_wait2_age: Some(Duration::from_secs(120)),
            ..Thresholds::default()
        };
        assert!(run(&[held], &Observations::new(10), &th).is_empty());
    }
}
