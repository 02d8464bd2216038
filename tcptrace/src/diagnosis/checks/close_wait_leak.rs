//! `close_wait_leak`: sockets stuck in CLOSE_WAIT, where the application never called close().

use crate::diagnosis::Fact;
use crate::diagnosis::evidence::Ctx;
use crate::diagnosis::evidence::{aged, human, secs, socket_groups};
use crate::diagnosis::{Finding, Kind, Severity, Thresholds};
use crate::model::tcp::TcpState;

/// What the finding means and how tcptrace decides it (`doctor --explain`).
pub const EXPLAIN: &str = "Sockets sit in CLOSE_WAIT longer than --close-wait-age. The peer sent its FIN; \
the kernel acknowledged it and now waits for this application to call close(). The kernel \
never times CLOSE_WAIT out, so a socket stays until the process closes it or exits: this is a \
bug in the application (a code path that stops using a connection without closing it), never \
a network or kernel problem. Age: the time since the socket entered CLOSE_WAIT when tcptrace \
saw it, else at least the time since the peer's last segment (tcp_info).";

pub(crate) fn check(ctx: &mut Ctx<'_>, th: &Thresholds) -> Option<Finding> {
    let min = th.close_wait_age.as_nanos() as u64;
    let sockets = ctx.scene.sockets;
    let total = sockets
        .iter()
        .filter(|s| s.state == TcpState::CloseWait)
        .count() as u64;
    let (old, unknown) = aged(ctx, sockets, |s| s.state == TcpState::CloseWait, min);
    if old.is_empty() {
        return None;
    }
    let (top, examples, worst) = socket_groups(ctx, &old, false);
    let n = old.len() as u64;
    let oldest = secs(old[0].1);
    let severity = if n >= 100 {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Some(Finding {
        kind: Kind::CloseWaitLeak,
        netns: None,
        namespace: None,
        severity,
        statement: format!(
            "{n} socket(s) in CLOSE_WAIT for over {}: the peer closed and the application never \
called close() (a leak in the application); most: {worst}",
            human(th.close_wait_age)
        ),
        count: n,
        facts: vec![
            ("close_wait_total", Fact::Count(total)),
            ("over_threshold", Fact::Count(n)),
            ("age_unknown", Fact::Count(unknown)),
            ("oldest_s", Fact::Number(oldest)),
            ("threshold_s", Fact::Number(th.close_wait_age.as_secs_f64())),
        ],
        top,
        examples,
        settings: Vec::new(),
        advice: vec![
            "Fix the application: every path that stops using a connection (errors, timeouts, \
early returns, a response body never read to the end) must close() it."
                .into(),
            "The kernel never times CLOSE_WAIT out: these sockets (and their file descriptors) \
stay until the process closes them or exits; restarting it only hides the leak."
                .into(),
        ],
    })
}

#[cfg(test)]
mod tests {
    use crate::diagnosis::checks::support::*;
    use crate::diagnosis::window::{Baseline, Observations};
    use crate::diagnosis::{Fact, Kind, Severity, Thresholds};
    use crate::host::stack::TcpCounters;
    use crate::model::filter::Filter;
    use crate::model::tcp::TcpState;

    #[test]
    fn close_wait_ages_come_from_tcp_info_baseline_or_events_and_name_the_owner() {
        let mut old = sock(7, TcpState::CloseWait, "10.0.0.1:8080", "10.0.0.2:40000");
        old.idle = idle(0, 45_000, 45_000);
        let young = sock(8, TcpState::CloseWait, "10.0.0.1:8080", "10.0.0.2:40001");
        let in_baseline = sock(9, TcpState::CloseWait, "10.0.0.1:9090", "10.0.0.2:40002");
        let from_event = sock(10, TcpState::CloseWait, "10.0.0.1:9090", "10.0.0.2:40003");
        let mut obs = Observations::new(100);
        obs.observe(
            &transition(
                10,
                TcpState::Established,
                TcpState::CloseWait,
                50 * S,
                false,
            ),
            &Filter::default(),
        );
        let baseline = Baseline::new(&[in_baseline], 60 * S, TcpCounters::default());
        let f = run_with(
            &[old, young, in_baseline, from_event],
            &obs,
            &Thresholds::default(),
            &baseline,
            &TcpCounters::default(),
        );
        assert_eq!(f.len(), 1, "{f:#?}");
        let f = &f[0];
        assert_eq!(
            (f.kind, f.severity, f.count),
            (Kind::CloseWaitLeak, Severity::Warning, 3)
        );
        // Oldest first: 50 s (event), 45 s (tcp_info), 40 s (baseline).
        let ages: Vec<_> = f.examples.iter().map(|e| e.age_s.unwrap()).collect();
        assert_eq!(ages, [50.0, 45.0, 40.0]);
        assert_eq!(
            f.examples[0].owner.as_ref().unwrap().pid,
            1234,
            "event owner"
        );
        assert_eq!(
            f.examples[1].owner.as_ref().unwrap().comm,
            "leaky",
            "procfs owner"
        );
        assert!(
            f.statement
                .contains("3 socket(s) in CLOSE_WAIT for over 30 s"),
            "{}",
            f.statement
        );
        assert!(f.facts.contains(&("age_unknown", Fact::Count(1))));
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        let mut s = sock(7, TcpState::CloseWait, "[::1]:8080", "[fe80::1]:40000");

        s.idle = idle(0, 60_000, 60_000);
        let f = run(&[s], &Observations::new(10), &Thresholds::default());
        assert!(
            f[0].top[0]
                .labels
                .contains(&("local", Fact::Endpoint("[::1]:8080".parse().unwrap())))
        );
        assert!(
            f[0].statement.ends_with("local [::1]:8080"),
            "{}",
            f[0].statement
        );
    }
}
