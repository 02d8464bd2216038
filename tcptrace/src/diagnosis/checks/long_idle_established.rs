//! `long_idle_established`: ESTABLISHED connections idle for long with keepalive off: ghost candidates (informational).

use crate::diagnosis::Fact;
use crate::diagnosis::evidence::Ctx;
use crate::diagnosis::evidence::{human, secs, socket_groups};
use crate::diagnosis::{Finding, Kind, Severity, Thresholds};
use crate::model::snapshot::{DiagSocket, Timer};
use crate::model::tcp::TcpState;

/// What the finding means and how tcptrace decides it (`doctor --explain`).
pub const EXPLAIN: &str = "ESTABLISHED connections with no traffic for longer than --idle-age and no \
keepalive timer (SO_KEEPALIVE off, nothing in flight). If the peer vanished without FIN or RST \
(host crash, NAT or firewall state expired), such a socket stays ESTABLISHED forever: a ghost \
candidate. Idle pools look the same, hence informational.";

pub(crate) fn check(ctx: &mut Ctx<'_>, th: &Thresholds) -> Option<Finding> {
    let min_ms = th.idle_age.as_millis() as u64;
    let mut idle: Vec<(&DiagSocket, u64)> = ctx
        .scene
        .sockets
        .iter()
        .filter(|s| s.state == TcpState::Established && s.timer == Timer::None)
        .filter_map(|s| {
            let ms = u64::from(s.idle?.idle_ms());
            (ms >= min_ms).then_some((s, ms * 1_000_000))
        })
        .collect();
    if idle.is_empty() {
        return None;
    }
    idle.sort_by_key(|(_, ns)| std::cmp::Reverse(*ns));
    let n = idle.len() as u64;
    let (top, examples, worst) = socket_groups(ctx, &idle, true);
    Some(Finding {
        kind: Kind::LongIdleEstablished,
        netns: None,
        namespace: None,
        severity: Severity::Info,
        statement: format!(
            "{n} ESTABLISHED connection(s) idle for over {} with keepalive off: if the peer is \
gone they stay forever (ghost candidates); most: {worst}",
            human(th.idle_age)
        ),
        count: n,
        facts: vec![
            ("idle_without_keepalive", Fact::Count(n)),
            ("longest_idle_s", Fact::Number(secs(idle[0].1))),
            ("threshold_s", Fact::Number(th.idle_age.as_secs_f64())),
        ],
        top,
        examples,
        settings: ctx.scene.settings.pick(&[
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_keepalive_intvl",
            "net.ipv4.tcp_keepalive_probes",
        ]),
        advice: vec![
            "Enable SO_KEEPALIVE on long-lived connections (the kernel probes after \
net.ipv4.tcp_keepalive_time idle seconds) or give the application an idle timeout."
                .into(),
        ],
    })
}

#[cfg(test)]
mod tests {
    use crate::diagnosis::checks::support::*;
    use crate::diagnosis::window::Observations;
    use crate::diagnosis::{Kind, Severity, Thresholds};
    use crate::model::snapshot::Timer;
    use crate::model::tcp::TcpState;

    #[test]
    fn idle_established_without_keepalive_is_a_ghost_candidate() {
        let mut ghost = sock(7, TcpState::Established, "10.0.0.1:40000", "10.0.0.2:80");
        ghost.idle = idle(4_000_000, 4_000_000, 4_000_000);
        let mut keepalive = ghost;
        keepalive.cookie = 8;
        keepalive.timer = Timer::Keepalive;
        let f = run(
            &[ghost, keepalive],
            &Observations::new(10),
            &Thresholds::default(),
        );
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].kind, f[0].severity, f[0].count),
            (Kind::LongIdleEstablished, Severity::Info, 1)
        );
        assert_eq!(Severity::exit_code(Some(f[0].severity)), 0);
    }
}
