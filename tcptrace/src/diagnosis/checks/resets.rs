//! `resets`: connections ended by a reset in the window, aborted here or reset by the peer.

use crate::diagnosis::Fact;
use crate::diagnosis::evidence::Ctx;
use crate::diagnosis::evidence::end_groups;
use crate::diagnosis::window::Ended;
use crate::diagnosis::{Finding, Kind, Severity, Thresholds};
use crate::model::connections::End;

/// What the finding means and how tcptrace decides it (`doctor --explain`).
pub const EXPLAIN: &str = "Connections that ended by a reset instead of the FIN exchange, at least --resets \
of them during the window. Aborted here: this host sent the RST (SO_LINGER with timeout 0, \
close() with unread data, a retransmission or keepalive give-up, ss -K). Reset by the peer: a \
RST arrived (the peer aborted, crashed or restarted, or a middlebox lost the connection).";

pub(crate) fn check(ctx: &mut Ctx<'_>, th: &Thresholds) -> Option<Finding> {
    let sent: Vec<&Ended> = ctx.ends().filter(|e| e.end == End::Aborted).collect();
    let received: Vec<&Ended> = ctx.ends().filter(|e| e.end == End::RstReceived).collect();
    let n = (sent.len() + received.len()) as u64;
    if n == 0 || n < th.resets {
        return None;
    }
    let (mut top, worst_sent) = end_groups(
        ctx,
        sent.iter().copied(),
        Some(("local", |e| e.local)),
        &[("kind", Fact::Text("aborted_here".into()))],
    );
    let (top_received, worst_received) = end_groups(
        ctx,
        received.iter().copied(),
        Some(("remote", |e| e.remote)),
        &[("kind", Fact::Text("reset_by_peer".into()))],
    );
    top.extend(top_received);
    let mut most = Vec::new();
    if !sent.is_empty() {
        most.push(format!("aborts by {worst_sent}"));
    }
    if !received.is_empty() {
        most.push(format!("resets to {worst_received}"));
    }
    Some(Finding {
        kind: Kind::Resets,
        netns: None,
        namespace: None,
        severity: Severity::Warning,
        statement: format!(
            "{n} connection(s) ended by a reset in {:.1} s: {} aborted here (RST sent), {} reset \
by the peer; most: {}",
            ctx.window_s,
            sent.len(),
            received.len(),
            most.join("; ")
        ),
        count: n,
        facts: vec![
            ("aborted_here", Fact::Count(sent.len() as u64)),
            ("reset_by_peer", Fact::Count(received.len() as u64)),
            ("out_rsts", Fact::Count(ctx.delta("Tcp.OutRsts"))),
            ("estab_resets", Fact::Count(ctx.delta("Tcp.EstabResets"))),
            (
                "abort_on_close",
                Fact::Count(ctx.delta("TcpExt.TCPAbortOnClose")),
            ),
            (
                "abort_on_data",
                Fact::Count(ctx.delta("TcpExt.TCPAbortOnData")),
            ),
            (
                "abort_on_linger",
                Fact::Count(ctx.delta("TcpExt.TCPAbortOnLinger")),
            ),
            (
                "abort_on_timeout",
                Fact::Count(ctx.delta("TcpExt.TCPAbortOnTimeout")),
            ),
        ],
        top,
        examples: Vec::new(),
        settings: Vec::new(),
        advice: vec![
            "Aborted here: SO_LINGER with a 0 timeout (counted in TCPAbortOnData), close() with \
unread data (TCPAbortOnClose), or a retransmission/keepalive give-up (TCPAbortOnTimeout); fix \
the application or the path accordingly."
                .into(),
            "Reset by the peer: the peer aborted, crashed or restarted, or a middlebox (NAT, \
load balancer, firewall) lost the connection's state."
                .into(),
        ],
    })
}

#[cfg(test)]
mod tests {
    use crate::diagnosis::checks::support::*;
    use crate::diagnosis::{Fact, Kind};

    #[test]
    fn aborts_here_and_resets_by_the_peer() {
        let f = run(&[], &window_of_ends(), &low_thresholds());
        let f = f.iter().find(|f| f.kind == Kind::Resets).unwrap();
        assert_eq!(f.count, 3);
        assert!(f.facts.contains(&("aborted_here", Fact::Count(2))));
        assert!(f.facts.contains(&("reset_by_peer", Fact::Count(1))));
    }
}
