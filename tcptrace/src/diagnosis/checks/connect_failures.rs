//! `connect_failures`: outgoing connects that failed in the window: refused, timed out,
//! abandoned, or without a free local port.

use crate::diagnosis::evidence::Ctx;
use crate::diagnosis::{Finding, Kind, Severity, Thresholds};
use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::diagnosis::evidence::end_groups;
use crate::diagnosis::window::Ended;
use crate::diagnosis::{Fact, Group, TOP};
use crate::model::connections::{End, Role};

/// What the finding means and how tcptrace decides it (`doctor --explain`).
pub const EXPLAIN: &str = "Outgoing connects that went SYN_SENT -> CLOSE during the window, at least \
--connect-failures of them. Refused: the peer answered the SYN with a RST (nothing listens, or \
a firewall rejects). Timed out: no answer at all until tcp_syn_retries ran out (a firewall \
dropping, a route or host down). Abandoned: the application gave up before the kernel did \
(non-blocking connect with its own timeout). No local port: connect() failed with EADDRNOTAVAIL \
before sending a SYN, every local port towards that destination being taken (TIME_WAIT \
included): the ephemeral port range (ip_local_port_range) is exhausted.";

pub(crate) fn check(ctx: &mut Ctx<'_>, th: &Thresholds) -> Option<Finding> {
    let failed: Vec<&Ended> = ctx
        .ends()
        .filter(|e| {
            e.role == Role::Client
                && matches!(
                    e.end,
                    End::Refused | End::Timeout | End::HandshakeAborted | End::PortsExhausted
                )
        })
        .collect();
    let count = |end: End| failed.iter().filter(|e| e.end == end).count() as u64;
    let (refused, timeout, abandoned, no_port) = (
        count(End::Refused),
        count(End::Timeout),
        count(End::HandshakeAborted),
        count(End::PortsExhausted),
    );
    let n = failed.len() as u64;
    if n == 0 || n < th.connect_failures {
        return None;
    }
    // Per destination: how many of each kind.
    let mut dest: BTreeMap<SocketAddr, [u64; 4]> = BTreeMap::new();
    for e in &failed {
        let c = dest.entry(e.remote).or_default();
        match e.end {
            End::Refused => c[0] += 1,
            End::Timeout => c[1] += 1,
            End::PortsExhausted => c[3] += 1,
            _ => c[2] += 1,
        }
    }
    let mut dest: Vec<_> = dest.into_iter().collect();
    dest.sort_by_key(|(_, c)| std::cmp::Reverse(c.iter().sum::<u64>()));
    let (by_owner, _) = end_groups(ctx, failed.iter().copied(), None, &[]);
    let mut top: Vec<Group> = dest
        .iter()
        .take(TOP)
        .map(|(addr, c)| Group {
            labels: vec![
                ("remote", Fact::Endpoint(*addr)),
                ("refused", Fact::Count(c[0])),
                ("timed_out", Fact::Count(c[1])),
                ("no_local_port", Fact::Count(c[3])),
                ("abandoned", Fact::Count(c[2])),
            ],
            count: c.iter().sum(),
            oldest_s: None,
        })
        .collect();
    top.extend(by_owner);
    let (worst_dest, worst_n) = (dest[0].0, dest[0].1.iter().sum::<u64>());
    let mut advice = Vec::new();
    if refused > 0 {
        advice.push(
            "Refused: nothing listens at the destination (service down, wrong port or address) \
or a firewall rejects; clients should back off instead of retrying at once."
                .into(),
        );
    }
    if timeout > 0 {
        advice.push(format!(
            "Timed out: SYNs get no answer (a firewall dropping, a route or host down); each \
attempt blocks until net.ipv4.tcp_syn_retries ({retries}) runs out{}, so give clients a \
connect timeout.",
            // SYN retransmissions back off from 1 s, doubling: 1 + 2 + ... + 2^retries.
            ctx.scene
                .settings
                .number("net.ipv4.tcp_syn_retries")
                .filter(|r| *r < 30)
                .map_or_else(String::new, |r| format!(" (about {} s)", (2u64 << r) - 1)),
            retries = ctx.setting("net.ipv4.tcp_syn_retries"),
        ));
    }
    if no_port > 0 {
        advice.push(format!(
            "No local port: every port of net.ipv4.ip_local_port_range ({}) towards the \
destination is taken, most likely by TIME_WAIT: reuse connections (keep-alive, a pool), set \
net.ipv4.tcp_tw_reuse=1, or widen the range.",
            ctx.setting("net.ipv4.ip_local_port_range")
        ));
    }
    if abandoned > 0 {
        advice.push(
            "Abandoned: the application gave up on a connect still in progress (its own connect \
timeout is shorter than the handshake took)."
                .into(),
        );
    }
    Some(Finding {
        kind: Kind::ConnectFailures,
        netns: None,
        namespace: None,
        severity: Severity::Warning,
        statement: format!(
            "{n} outgoing connect(s) failed in {:.1} s: {refused} refused (RST), {timeout} timed \
out (no answer), {abandoned} abandoned, {no_port} without a free local port; most to \
{worst_dest} ({worst_n})",
            ctx.window_s
        ),
        count: n,
        facts: vec![
            ("failed", Fact::Count(n)),
            ("refused", Fact::Count(refused)),
            ("timed_out", Fact::Count(timeout)),
            ("abandoned", Fact::Count(abandoned)),
            ("no_local_port", Fact::Count(no_port)),
            ("attempt_fails", Fact::Count(ctx.delta("Tcp.AttemptFails"))),
        ],
        top,
        examples: Vec::new(),
        settings: ctx
            .scene
            .settings
            .pick(&["net.ipv4.tcp_syn_retries", "net.ipv4.ip_local_port_range"]),
        advice,
    })
}

#[cfg(test)]
mod tests {
    use crate::diagnosis::checks::support::*;
    use crate::diagnosis::{Fact, Kind, Severity, Thresholds};

    #[test]
    fn refused_and_timed_out_connects_of_the_window() {
        let f = run(&[], &window_of_ends(), &low_thresholds());
        let f = f.iter().find(|f| f.kind == Kind::ConnectFailures).unwrap();
        assert_eq!((f.count, f.severity), (4, Severity::Warning));
        assert!(f.facts.contains(&("refused", Fact::Count(3))));
        assert!(f.facts.contains(&("timed_out", Fact::Count(1))));
        assert!(f.facts.contains(&("abandoned", Fact::Count(0))));
        assert!(
            f.statement.contains("4 outgoing connect(s) failed"),
            "{}",
            f.statement
        );
        // The default threshold wants more.
        let f = run(&[], &window_of_ends(), &Thresholds::default());
        assert!(f.iter().all(|f| f.kind != Kind::ConnectFailures));
    }
}
