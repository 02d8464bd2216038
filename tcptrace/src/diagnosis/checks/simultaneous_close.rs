//! `simultaneous_close`: connections both ends closed at once (informational).

use crate::diagnosis::evidence::{Ctx, end_groups};
use crate::diagnosis::window::Ended;
use crate::diagnosis::{Fact, Finding, Kind, Severity};
use crate::model::connections::ClosedBy;

/// What the finding means and how tcptrace decides it (`doctor --explain`).
pub const EXPLAIN: &str = "Both ends sent FIN at the same time (FIN_WAIT1 -> CLOSING): harmless, but both \
then hold TIME_WAIT. Informational.";

pub(crate) fn check(ctx: &mut Ctx<'_>) -> Option<Finding> {
    let both: Vec<&Ended> = ctx
        .ends()
        .filter(|e| e.closed_by == ClosedBy::Both)
        .collect();
    if both.is_empty() {
        return None;
    }
    // Both ends of a connection between two local sockets report it: count connections.
    let connections: std::collections::HashSet<_> = both
        .iter()
        .map(|e| (e.local.min(e.remote), e.local.max(e.remote)))
        .collect();
    let n = connections.len() as u64;
    let sockets = both.len() as u64;
    let (top, worst) = end_groups(
        ctx,
        both.iter().copied(),
        Some(("remote", |e| e.remote)),
        &[],
    );
    Some(Finding {
        kind: Kind::SimultaneousClose,
        netns: None,
        namespace: None,
        severity: Severity::Info,
        statement: format!(
            "{n} connection(s) closed by both ends at once (FIN_WAIT1 -> CLOSING); both ends \
then hold TIME_WAIT; most: {worst}"
        ),
        count: n,
        facts: vec![
            ("simultaneous_closes", Fact::Count(n)),
            ("sockets", Fact::Count(sockets)),
        ],
        top,
        examples: Vec::new(),
        settings: Vec::new(),
        advice: vec![
            "Harmless. If frequent, both ends likely use the same idle timeout: make one side \
close first."
                .into(),
        ],
    })
}

#[cfg(test)]
mod tests {
    use crate::diagnosis::checks::support::*;
    use crate::diagnosis::{Kind, Severity, Thresholds};

    #[test]
    fn a_connection_between_two_local_sockets_counts_once() {
        use crate::diagnosis::Fact;
        use crate::diagnosis::window::Observations;
        use crate::model::filter::Filter;
        use crate::model::tcp::TcpState::*;
        use crate::testing::step;
        let mut obs = Observations::new(10);
        // Both ends of 127.0.0.1:5000 <-> 127.0.0.1:6000 close at once.
        for (cookie, local, remote) in [(1, 5000, 6000), (2, 6000, 5000)] {
            for (i, (old, new)) in [
                (Established, FinWait1),
                (FinWait1, Closing),
                (Closing, Close),
            ]
            .into_iter()
            .enumerate()
            {
                let mut t = step(cookie, old, new)
                    .ports(local, remote)
                    .at(i as u64 + 1)
                    .done();
                t.endpoints.remote_ip = t.endpoints.local_ip;
                obs.observe(&t, &Filter::default());
            }
        }
        let f = run(&[], &obs, &Thresholds::default());
        assert_eq!(f[0].count, 1);
        assert!(f[0].facts.contains(&("sockets", Fact::Count(2))));
        assert!(
            f[0].statement.starts_with("1 connection(s)"),
            "{}",
            f[0].statement
        );
    }

    #[test]
    fn reported_whatever_the_thresholds() {
        let f = run(&[], &window_of_ends(), &Thresholds::default());
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].kind, f[0].severity, f[0].count),
            (Kind::SimultaneousClose, Severity::Info, 1)
        );
    }
}
