//! `syn_flood`: half-open connections piling up on a listener, a full SYN queue, SYN cookies sent or SYNs dropped.

use crate::diagnosis::evidence::Ctx;
use crate::diagnosis::{Finding, Kind, Severity, Thresholds};
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use crate::diagnosis::evidence::{owner_labels, owner_text};
use crate::diagnosis::{Example, Fact, Group, TOP};
use crate::model::snapshot::DiagSocket;
use crate::model::tcp::TcpState;

/// What the finding means and how tcptrace decides it (`doctor --explain`).
pub const EXPLAIN: &str = "Half-open connections (SYN received, SYN-ACK sent, final ACK never came) pile up \
on a listener: request sockets in SYN_RECV. Reported when a listener has at least --syn-recv \
of them or its SYN queue is full (as many as its backlog), or when the kernel sent SYN cookies \
or dropped SYNs for a full queue during the window. Many distinct source addresses point to a \
(possibly spoofed) flood; a few point to one client's trouble. With tcp_syncookies on, a full \
queue still answers every SYN with a cookie; with it off, SYNs are dropped. Sources are counted \
from the half-open sockets: SYNs answered with a cookie leave no socket, so they are counted \
(syncookies_sent) but not attributed.";

pub(crate) fn check(ctx: &mut Ctx<'_>, th: &Thresholds) -> Vec<Finding> {
    let sockets = ctx.scene.sockets;
    let cookies_sent = ctx.delta("TcpExt.SyncookiesSent");
    let queue_full_drops = ctx.delta("TcpExt.TCPReqQFullDrop");
    let listen_drops = ctx.delta("TcpExt.ListenDrops");
    let listen_overflows = ctx.delta("TcpExt.ListenOverflows");
    let syncookies = ctx.setting("net.ipv4.tcp_syncookies");
    let mut by_port: BTreeMap<u16, Vec<&DiagSocket>> = BTreeMap::new();
    for s in sockets.iter().filter(|s| s.state == TcpState::SynRecv) {
        by_port.entry(s.endpoints.local_port).or_default().push(s);
    }
    let mut findings = Vec::new();
    let settings = ctx.scene.settings.pick(&[
        "net.ipv4.tcp_syncookies",
        "net.ipv4.tcp_max_syn_backlog",
        "net.core.somaxconn",
        "net.ipv4.tcp_synack_retries",
    ]);
    let advice = |syncookies: &str| {
        let mut a = Vec::new();
        if syncookies == "0" {
            a.push(
                "Turn SYN cookies on (net.ipv4.tcp_syncookies=1): with them off, a full SYN queue \
drops legitimate clients' SYNs."
                    .to_owned(),
            );
        }
        a.push(
            "Raise the listen backlog (the application's listen() argument, capped by \
net.core.somaxconn) and net.ipv4.tcp_max_syn_backlog if legitimate bursts fill the queue."
                .to_owned(),
        );
        a.push(
            "Lower net.ipv4.tcp_synack_retries so half-open entries expire sooner; many distinct \
sources with no final ACK are typical of spoofed floods: rate-limit or filter SYNs upstream."
                .to_owned(),
        );
        a
    };
    for (port, half_open) in by_port {
        let listener = sockets
            .iter()
            .find(|s| s.state == TcpState::Listen && s.endpoints.local_port == port);
        let backlog = listener.map_or(0, |l| u64::from(l.wqueue));
        let n = half_open.len() as u64;
        let full = backlog > 0 && n >= backlog;
        if n < th.syn_recv && !full {
            continue;
        }
        let sources: HashSet<IpAddr> = half_open.iter().map(|s| s.endpoints.remote_ip).collect();
        let new = half_open
            .iter()
            .filter(|s| !ctx.scene.baseline.states.contains_key(&s.cookie))
            .count() as u64;
        let rate = (new + cookies_sent) as f64 / ctx.window_s;
        let owner = listener.and_then(|l| ctx.owner(l));
        let severity = if full || queue_full_drops > 0 {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let mut labels = owner_labels(&owner);
        labels.push(("port", Fact::Count(u64::from(port))));
        labels.push(("sources", Fact::Count(sources.len() as u64)));
        labels.push(("backlog", Fact::Count(backlog)));
        let examples = half_open
            .iter()
            .take(TOP)
            .map(|s| Example {
                state: s.state,
                local: s.endpoints.local(),
                remote: s.endpoints.remote(),
                age_s: None,
                owner: None,
            })
            .collect();
        findings.push(Finding {
            kind: Kind::SynFlood,
            netns: None,
            namespace: None,
            severity,
            statement: format!(
                "{n} half-open connection(s) on port {port} ({}) from {} distinct address(es); \
SYN queue {n}/{backlog}{}; {cookies_sent} SYN cookie(s) sent in {:.1} s",
                owner_text(&owner),
                sources.len(),
                if full { " (full)" } else { "" },
                ctx.window_s,
            ),
            count: n,
            facts: vec![
                ("half_open", Fact::Count(n)),
                ("distinct_sources", Fact::Count(sources.len() as u64)),
                ("new_in_window", Fact::Count(new)),
                ("syn_rate_per_s", Fact::Number(rate)),
                ("listen_backlog", Fact::Count(backlog)),
                (
                    "accept_queue",
                    Fact::Count(listener.map_or(0, |l| u64::from(l.rqueue))),
                ),
                ("syncookies_sent", Fact::Count(cookies_sent)),
                ("syn_queue_full_drops", Fact::Count(queue_full_drops)),
                ("listen_overflows", Fact::Count(listen_overflows)),
                ("listen_drops", Fact::Count(listen_drops)),
            ],
            top: vec![Group {
                labels,
                count: n,
                oldest_s: None,
            }],
            examples,
            settings: settings.clone(),
            advice: advice(&syncookies),
        });
    }
    if findings.is_empty() && (cookies_sent > 0 || queue_full_drops > 0) {
        findings.push(Finding {
            kind: Kind::SynFlood,
            netns: None,
            namespace: None,
            severity: if queue_full_drops > 0 {
                Severity::Critical
            } else {
                Severity::Warning
            },
            statement: format!(
                "a SYN queue overflowed during the {:.1} s window: {cookies_sent} SYN cookie(s) \
sent, {queue_full_drops} SYN(s) dropped for a full queue (no half-open sockets left to name \
the listener)",
                ctx.window_s
            ),
            count: cookies_sent + queue_full_drops,
            facts: vec![
                ("syncookies_sent", Fact::Count(cookies_sent)),
                ("syn_queue_full_drops", Fact::Count(queue_full_drops)),
                ("listen_overflows", Fact::Count(listen_overflows)),
                ("listen_drops", Fact::Count(listen_drops)),
            ],
            top: Vec::new(),
            examples: Vec::new(),
            settings,
            advice: advice(&syncookies),
        });
    }
    findings
}

#[cfg(test)]
mod tests {
    use crate::diagnosis::checks::support::*;
    use crate::diagnosis::window::{Baseline, Observations};
    use crate::diagnosis::{Fact, Kind, Severity, Thresholds};
    use crate::host::stack::TcpCounters;
    use crate::model::tcp::TcpState;

    #[test]
    fn syn_flood_on_a_full_queue_is_critical_with_sources_and_cookies() {
        let mut listener = sock(7, TcpState::Listen, "10.0.0.1:8080", "0.0.0.0:0");
        listener.wqueue = 16;
        let mut sockets = vec![listener];
        for i in 0..16u8 {
            let mut s = sock(
                100 + u64::from(i),
                TcpState::SynRecv,
                "10.0.0.1:8080",
                &format!("10.201.0.{i}:1234"),
            );
            s.inode = 0;
            sockets.push(s);
        }
        let mut before = TcpCounters::default();
        before.parse("TcpExt: SyncookiesSent\nTcpExt: 5\n");
        let mut after = TcpCounters::default();
        after.parse("TcpExt: SyncookiesSent\nTcpExt: 205\n");
        let baseline = Baseline::new(&[], 90 * S, before);
        let f = run_with(
            &sockets,
            &Observations::new(10),
            &Thresholds::default(),
            &baseline,
            &after,
        );
        assert_eq!(f.len(), 1, "{f:#?}");
        let f = &f[0];
        assert_eq!(
            (f.kind, f.severity, f.count),
            (Kind::SynFlood, Severity::Critical, 16)
        );
        assert!(f.facts.contains(&("distinct_sources", Fact::Count(16))));
        assert!(f.facts.contains(&("syncookies_sent", Fact::Count(200))));
        assert!(f.facts.contains(&("syn_rate_per_s", Fact::Number(21.6))));
        assert!(
            f.top[0]
                .labels
                .contains(&("comm", Fact::Text("leaky".into())))
        );
        // Half the queue, below --syn-recv: nothing; cookies alone still tell.
        let few = &sockets[..9];
        let flood = |after: &TcpCounters| {
            run_with(
                few,
                &Observations::new(10),
                &Thresholds::default(),
                &baseline,
                after,
            )
        };
        let f = flood(&after);
        assert_eq!(
            (f[0].kind, f[0].severity, f[0].count),
            (Kind::SynFlood, Severity::Warning, 200)
        );
        let f = run(few, &Observations::new(10), &Thresholds::default());
        assert!(f.is_empty());
        // SYNs dropped for a full queue are critical even with no listener to name.
        after.parse("TcpExt: TCPReqQFullDrop\nTcpExt: 3\n");
        let f = flood(&after);
        assert_eq!(
            (f[0].kind, f[0].severity, f[0].count),
            (Kind::SynFlood, Severity::Critical, 203)
        );
    }
}
