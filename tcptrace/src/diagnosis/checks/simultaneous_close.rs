//! `simultaneous_close`: connections both ends closed at once (informational).

use crate::diagnosis::evidence::{Ctx, end_groups};
use crate::diagnosis::window::Ended;
use crate::diagnosis::{Fact, Finding, Kind, Severity};
use crate::model::connections::ClosedBy;

/// What the finding means and how tcptrace decides it (`doctor --explain`).
pub const EXPLAIN: &str = "Both ends sent FIN at the same time (FIN_WAIT1 -> CLOSING): harmless, but both \
then hold TIME_WAIT. Informational.";

pub(crate) fn check(ctx: &mut Ctx<'_>) -> Option<Finding> {
    let obs = ctx.obs;
    let both: Vec<&Ended> = obs
        .ended
        .iter()
        .filter(|e| e.closed_by == ClosedBy::Both)
        .collect();
    if both.is_empty() {
        return None;
    }
    let n = both.len() as u64;
    let (top, worst) = end_groups(
        ctx,
        both.iter().copied(),
        Some(("remote", |e| e.remote)),
        &[],
    );
    Some(Finding {
        kind: Kind::SimultaneousClose,
        severity: Severity::Info,
        statement: format!(
            "{n} connection(s) closed by both ends at once (FIN_WAIT1 -> CLOSING); both ends \
then hold TIME_WAIT; most: {worst}"
        ),
        count: n,
        facts: vec![("simultaneous_closes", Fact::Count(n))],
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
    fn reported_whatever_the_thresholds() {
        let f = run(&[], &window_of_ends(), &Thresholds::default());
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].kind, f[0].severity, f[0].count),
            (Kind::SimultaneousClose, Severity::Info, 1)
        );
    }
}
