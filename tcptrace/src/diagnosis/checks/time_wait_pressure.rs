//! `time_wait_pressure`: TIME_WAIT sockets holding a large share of the ephemeral port range between one client and one server, or of `tcp_max_tw_buckets`.

use crate::diagnosis::evidence::Ctx;
use crate::diagnosis::{Finding, Kind, Severity, Thresholds};
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use crate::diagnosis::{Fact, Group, TOP};
use crate::model::snapshot::DiagSocket;
use crate::model::tcp::TcpState;

/// What the finding means and how tcptrace decides it (`doctor --explain`).
pub const EXPLAIN: &str = "The side that closes first keeps each connection in TIME_WAIT for 60 s \
(TCP_TIMEWAIT_LEN; tcp_fin_timeout does not change it). A TIME_WAIT socket still occupies its \
four-tuple, so between one client address and one server ip:port at most \
ip_local_port_range ports can be in use at once: past that, connect() fails with \
EADDRNOTAVAIL. The finding reports, per client address and server endpoint, the share of the \
ephemeral range held in TIME_WAIT, which side closed first (the one holding TIME_WAIT), and the \
total against tcp_max_tw_buckets (beyond it the kernel destroys TIME_WAIT sockets early and \
counts TCPTimeWaitOverflow).";

pub(crate) fn check(ctx: &mut Ctx<'_>, th: &Thresholds) -> Option<Finding> {
    let sockets = ctx.scene.sockets;
    let settings = ctx.scene.settings;
    // Timewait sockets: TIME_WAIT proper and the orphaned FIN_WAIT2 substate (timer 3).
    let tw: Vec<&DiagSocket> = sockets.iter().filter(|s| s.is_timewait()).collect();
    if tw.is_empty() {
        return None;
    }
    let listening: HashSet<u16> = sockets
        .iter()
        .filter(|s| s.state == TcpState::Listen)
        .map(|s| s.endpoints.local_port)
        .collect();
    let range = settings.ephemeral_ports().unwrap_or(28_232).max(1);
    // (client address, server endpoint, server closed first) -> count
    let mut pairs: BTreeMap<(IpAddr, SocketAddr, bool), u64> = BTreeMap::new();
    for s in &tw {
        let key = if listening.contains(&s.endpoints.local_port) {
            (s.endpoints.remote_ip, s.endpoints.local(), true)
        } else {
            (s.endpoints.local_ip, s.endpoints.remote(), false)
        };
        *pairs.entry(key).or_default() += 1;
    }
    let mut pairs: Vec<_> = pairs.into_iter().collect();
    pairs.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let ((client, server, server_first), worst) = pairs[0];
    let share = worst as f64 * 100.0 / range as f64;
    let total = tw.len() as u64;
    let max_tw = settings.number("net.ipv4.tcp_max_tw_buckets");
    let bucket_pct = max_tw.map(|m| total as f64 * 100.0 / m.max(1) as f64);
    let overflow = ctx.delta("TcpExt.TCPTimeWaitOverflow");
    let severity = if share >= 90.0 || overflow > 0 || bucket_pct.is_some_and(|p| p >= 90.0) {
        Severity::Critical
    } else if share >= th.time_wait_share || bucket_pct.is_some_and(|p| p >= 50.0) {
        Severity::Warning
    } else {
        return None;
    };
    let closer = if server_first { "server" } else { "client" };
    let top = pairs
        .iter()
        .take(TOP)
        .map(|((client, server, server_first), n)| Group {
            labels: vec![
                ("client", Fact::Addr(*client)),
                ("server", Fact::Endpoint(*server)),
                (
                    "closed_first",
                    Fact::Text(if *server_first { "server" } else { "client" }.into()),
                ),
                (
                    "port_range_pct",
                    Fact::Number(*n as f64 * 100.0 / range as f64),
                ),
            ],
            count: *n,
            oldest_s: None,
        })
        .collect();
    let mut advice = Vec::new();
    if server_first {
        advice.push(format!(
            "The server at {server} closes first, so TIME_WAIT lands on its side: let clients \
close (HTTP keep-alive, a client idle timeout shorter than the server's) or reuse connections."
        ));
    } else {
        advice.push(format!(
            "This host opens and closes a connection per request to {server}: reuse connections \
(keep-alive, a connection pool)."
        ));
        advice.push(
            "net.ipv4.tcp_tw_reuse=1 lets new outgoing connections take over TIME_WAIT ports \
safely (needs TCP timestamps); tcp_tw_recycle no longer exists (removed in Linux 4.12)."
                .into(),
        );
    }
    advice.push(format!(
        "Widening net.ipv4.ip_local_port_range ({}) gives each client/server pair more ports.",
        ctx.setting("net.ipv4.ip_local_port_range")
    ));
    let mut facts = vec![
        ("time_wait_total", Fact::Count(total)),
        ("worst_pair", Fact::Count(worst)),
        ("worst_pair_port_range_pct", Fact::Number(share)),
        ("ephemeral_ports", Fact::Count(range)),
        ("tw_overflow", Fact::Count(overflow)),
    ];
    if let Some(p) = bucket_pct {
        facts.push(("max_tw_buckets_pct", Fact::Number(p)));
    }
    Some(Finding {
        kind: Kind::TimeWaitPressure,
        netns: None,
        namespace: None,
        severity,
        statement: format!(
            "{total} socket(s) in TIME_WAIT; {worst} between client {client} and server {server} \
hold {share:.1}% of the {range}-port ephemeral range (the {closer} closes first)"
        ),
        count: total,
        facts,
        top,
        examples: Vec::new(),
        settings: settings.pick(&[
            "net.ipv4.tcp_tw_reuse",
            "net.ipv4.tcp_max_tw_buckets",
            "net.ipv4.ip_local_port_range",
        ]),
        advice,
    })
}

#[cfg(test)]
mod tests {
    use crate::diagnosis::checks::support::*;
    use crate::diagnosis::window::Observations;
    use crate::diagnosis::{Fact, Kind, Severity, Thresholds};
    use crate::model::tcp::TcpState;

    #[test]
    fn time_wait_share_of_the_port_range_per_pair_and_who_closed_first() {
        let mut sockets = vec![sock(1, TcpState::Listen, "10.0.0.1:80", "0.0.0.0:0")];
        // 400 server-side TIME_WAITs from one client: 40% of a 1000-port range.
        for i in 0..400u16 {
            sockets.push(sock(
                100 + u64::from(i),
                TcpState::TimeWait,
                "10.0.0.1:80",
                &format!("10.0.0.2:{}", 40_000 + i),
            ));
        }
        // 10 client-side ones elsewhere.
        for i in 0..10u16 {
            sockets.push(sock(
                1000 + u64::from(i),
                TcpState::TimeWait,
                &format!("10.0.0.1:{}", 40_000 + i),
                "10.0.0.9:5432",
            ));
        }
        let obs = Observations::new(100);
        let f = run(&sockets, &obs, &Thresholds::default());
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].kind, f[0].severity, f[0].count),
            (Kind::TimeWaitPressure, Severity::Warning, 410)
        );
        let g = &f[0].top[0];
        assert_eq!(g.count, 400);
        assert!(
            g.labels
                .contains(&("closed_first", Fact::Text("server".into())))
        );
        assert!(
            g.labels
                .contains(&("server", Fact::Endpoint("10.0.0.1:80".parse().unwrap())))
        );
        assert!(
            f[0].statement.contains("40.0% of the 1000-port"),
            "{}",
            f[0].statement
        );
        // Below the share: nothing.
        let th = Thresholds {
            time_wait_share: 50.0,
            ..Thresholds::default()
        };
        assert!(run(&sockets, &obs, &th).is_empty());
    }
}
