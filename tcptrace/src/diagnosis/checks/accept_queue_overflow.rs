//! `accept_queue_overflow`: a listener whose accept queue is full, so completed handshakes
//! are dropped until the application calls accept().

use crate::diagnosis::evidence::{Ctx, owner_labels, owner_text};
use crate::diagnosis::{Fact, Finding, Group, Kind, Severity, TOP};
use crate::model::snapshot::DiagSocket;
use crate::model::tcp::TcpState;

/// What the finding means and how tcptrace decides it (`doctor --explain`).
pub const EXPLAIN: &str = "A listener's accept queue (connections that completed the handshake \
and wait for accept()) is full: the kernel then drops the final ACK of new handshakes \
(ListenOverflows, ListenDrops), clients sit in SYN_SENT retransmitting and connect slowly or \
time out. Reported when the kernel counted listen overflows during the window, or when a \
listener's queue (Recv-Q) is beyond its backlog (Send-Q) at the end of it. The application \
accepts too slowly (blocked workers, too few of them) or its backlog is too small for its \
bursts.";

/// A listener is full when more connections wait than its backlog (`sk_acceptq_is_full()`:
/// `sk_ack_backlog > sk_max_ack_backlog`; INET_DIAG reports them as Recv-Q and Send-Q).
fn full(s: &DiagSocket) -> bool {
    s.state == TcpState::Listen && s.rqueue > s.wqueue
}

pub(crate) fn check(ctx: &mut Ctx<'_>) -> Option<Finding> {
    let overflows = ctx.delta("TcpExt.ListenOverflows");
    let drops = ctx.delta("TcpExt.ListenDrops");
    let sockets = ctx.scene.sockets;
    let mut listeners: Vec<&DiagSocket> = sockets.iter().filter(|s| full(s)).collect();
    if overflows == 0 && listeners.is_empty() {
        return None;
    }
    listeners.sort_by_key(|s| std::cmp::Reverse(s.rqueue));
    let somaxconn = ctx.setting("net.core.somaxconn");
    let mut top = Vec::new();
    let mut worst = None;
    for s in listeners.iter().take(TOP) {
        let owner = ctx.owner(s);
        let mut labels = owner_labels(&owner);
        labels.push(("listener", Fact::Endpoint(s.endpoints.local())));
        labels.push(("backlog", Fact::Count(u64::from(s.wqueue))));
        labels.push(("queue", Fact::Count(u64::from(s.rqueue))));
        if worst.is_none() {
            worst = Some(format!(
                "{} ({}) has {} waiting for accept() with a backlog of {}",
                s.endpoints.local(),
                owner_text(&owner),
                s.rqueue,
                s.wqueue
            ));
        }
        top.push(Group {
            labels,
            count: u64::from(s.rqueue),
            oldest_s: None,
        });
    }
    let statement = match worst {
        Some(worst) => format!(
            "{} listener(s) with a full accept queue, {overflows} handshake(s) dropped for it in \
{:.1} s: {worst}",
            listeners.len(),
            ctx.window_s
        ),
        None => format!(
            "{overflows} handshake(s) dropped for a full accept queue in {:.1} s (no listener's \
queue was still full at the end of the window)",
            ctx.window_s
        ),
    };
    Some(Finding {
        kind: Kind::AcceptQueueOverflow,
        netns: None,
        namespace: None,
        severity: if overflows > 0 {
            Severity::Critical
        } else {
            Severity::Warning
        },
        statement,
        count: overflows.max(listeners.len() as u64),
        facts: vec![
            ("listen_overflows", Fact::Count(overflows)),
            ("listen_drops", Fact::Count(drops)),
            ("full_listeners", Fact::Count(listeners.len() as u64)),
        ],
        top,
        examples: Vec::new(),
        settings: ctx.scene.settings.pick(&["net.core.somaxconn"]),
        advice: vec![
            "Accept faster: more workers or threads accepting, none blocked while connections \
wait (a full queue with idle CPUs means the accept loop is stuck)."
                .into(),
            format!(
                "Raise the backlog (the listen() argument, capped by net.core.somaxconn = \
{somaxconn}) to absorb bursts; raise net.core.somaxconn too if the application asks for more."
            ),
        ],
    })
}

#[cfg(test)]
mod tests {
    use crate::diagnosis::checks::support::*;
    use crate::diagnosis::window::{Baseline, Observations};
    use crate::diagnosis::{Fact, Kind, Severity, Thresholds};
    use crate::host::stack::TcpCounters;
    use crate::model::tcp::TcpState;

    fn counters(overflows: u64, drops: u64) -> TcpCounters {
        let mut c = TcpCounters::default();
        c.parse(&format!(
            "TcpExt: ListenOverflows ListenDrops\nTcpExt: {overflows} {drops}\n"
        ));
        c
    }

    #[test]
    fn a_full_queue_with_overflows_is_critical_and_names_the_listener() {
        let mut listener = sock(7, TcpState::Listen, "127.0.0.1:8080", "0.0.0.0:0");
        listener.wqueue = 1;
        listener.rqueue = 2;
        let baseline = Baseline::new(&[], 90 * S, counters(3, 3));
        let f = run_with(
            &[listener],
            &Observations::new(10),
            &Thresholds::default(),
            &baseline,
            &counters(27, 27),
        );
        let f = f
            .iter()
            .find(|f| f.kind == Kind::AcceptQueueOverflow)
            .expect("reported");
        assert_eq!((f.severity, f.count), (Severity::Critical, 24));
        assert!(f.facts.contains(&("listen_overflows", Fact::Count(24))));
        let labels = &f.top[0].labels;
        assert!(labels.contains(&("backlog", Fact::Count(1))));
        assert!(labels.contains(&("queue", Fact::Count(2))));
        assert!(labels.contains(&("comm", Fact::Text("leaky".into()))));
        assert!(
            f.statement.contains("127.0.0.1:8080 (pid 700 (leaky))"),
            "{}",
            f.statement
        );
    }

    #[test]
    fn a_queue_at_its_backlog_without_overflows_is_fine() {
        let mut listener = sock(7, TcpState::Listen, "127.0.0.1:8080", "0.0.0.0:0");
        listener.wqueue = 2;
        listener.rqueue = 2;
        let f = run(&[listener], &Observations::new(10), &Thresholds::default());
        assert!(f.iter().all(|f| f.kind != Kind::AcceptQueueOverflow));
        // Overflows alone (the queue drained since) still tell.
        let baseline = Baseline::new(&[], 90 * S, counters(0, 0));
        let f = run_with(
            &[listener],
            &Observations::new(10),
            &Thresholds::default(),
            &baseline,
            &counters(5, 5),
        );
        let f = f
            .iter()
            .find(|f| f.kind == Kind::AcceptQueueOverflow)
            .unwrap();
        assert_eq!(f.count, 5);
        assert!(f.top.is_empty());
    }
}
