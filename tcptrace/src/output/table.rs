//! Aligned terminal tables: one line per transition (`tail`) or per connection (`life`).

use std::fmt;
use std::io::Write as _;

use crate::model::cgroup::CgroupInfo;
use crate::model::connections::Connection;
use crate::model::tcp::TcpState;
use crate::model::transition::Transition;
use crate::output::time::WallClock;

/// Milliseconds with microsecond precision, e.g. `0.061`, `300.412`; honours width and
/// alignment.
pub struct Millis(pub u64);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0 / 1_000;
        f.pad(&format!("{}.{:03}", us / 1_000, us % 1_000))
    }
}

/// Milliseconds, or `-` when unknown.
fn millis_or_dash(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".to_owned(), |ns| Millis(ns).to_string())
}

const ADDR_WIDTH: usize = 23;

/// The header of `tail`'s table; `wide` adds the namespace and container columns.
pub fn transition_header(wide: bool) -> String {
    let mut h = format!(
        "{:<15} {:>7} {:<16} {:<w$} {:<w$} {:>11}    {:<11} {:>11}",
        "TIME",
        "PID",
        "COMM",
        "LOCAL",
        "REMOTE",
        "OLD",
        "NEW",
        "IN_OLD_MS",
        w = ADDR_WIDTH
    );
    if wide {
        h.push_str(&format!(" {:>10} {:<16} CGROUP", "NETNS", "CONTAINER"));
    }
    h
}

/// One `tail` line (without the newline), replacing `out`. PID and COMM are the socket's
/// owner, `-` when unknown; `wide` carries the cgroup for the wide form.
pub fn transition_line(
    clock: &WallClock,
    t: &Transition,
    wide: Option<Option<&CgroupInfo>>,
    out: &mut Vec<u8>,
) {
    out.clear();
    let (pid, comm) = match &t.owner {
        Some(owner) => (owner.task.pid.to_string(), owner.task.comm.as_str()),
        None => ("-".to_owned(), "-"),
    };
    let _ = write!(
        out,
        "{} {pid:>7} {comm:<16} {:<w$} {:<w$} {:>11} -> {:<11} {:>11}",
        clock.time_of_day(t.ts_ns),
        t.endpoints.local().to_string(),
        t.endpoints.remote().to_string(),
        t.old,
        t.new,
        millis_or_dash(t.in_old_ns),
        w = ADDR_WIDTH
    );
    if let Some(cgroup) = wide {
        let netns = t.netns.map_or_else(|| "-".to_owned(), |ns| ns.to_string());
        // Container ids are shown short, as docker does; service names whole.
        let container = cgroup
            .and_then(|c| c.container.as_deref())
            .map_or("-", |id| match id.get(..12) {
                Some(short) if id.bytes().all(|b| b.is_ascii_hexdigit()) => short,
                _ => id,
            });
        let path = cgroup.map_or("-", |c| c.path.as_str());
        let _ = write!(out, " {netns:>10} {container:<16} {path}");
    }
}

/// The header of `life`'s table.
pub fn connection_header() -> String {
    format!(
        "{:<15} {:>7} {:<16} {:<23} {:<23} {:<8} {:>10} {:>11} {:<9} {:<17} {:>9}",
        "TIME",
        "PID",
        "COMM",
        "LOCAL",
        "REMOTE",
        "ROLE",
        "HS_MS",
        "LIFE_MS",
        "CLOSED_BY",
        "END",
        "TW_MS"
    )
}

/// One `life` line (without the newline), replacing `out`: the time is when the story ended.
pub fn connection_line(clock: &WallClock, c: &Connection, out: &mut Vec<u8>) {
    out.clear();
    let (pid, comm) = match &c.owner {
        Some(t) => (t.pid.to_string(), t.comm.as_str()),
        None => ("-".to_owned(), "-"),
    };
    // `wait`: a TIME_WAIT follows, not measured (see `life --time-wait`); `>N`: tracing
    // stopped N ms into it; a FIN_WAIT2 suffix marks an orphan's timewait substate.
    let tw = match (c.time_wait, c.time_wait_ns()) {
        (None, _) => "-".to_owned(),
        (Some(_), None) => "wait".to_owned(),
        (Some(tw), Some(ns)) => {
            let cut = if tw.complete { "" } else { ">" };
            let substate = if tw.substate == TcpState::TimeWait {
                String::new()
            } else {
                format!("({})", tw.substate.name())
            };
            format!("{cut}{}{substate}", Millis(ns))
        }
    };
    let _ = write!(
        out,
        "{} {pid:>7} {comm:<16} {:<23} {:<23} {:<8} {:>10} {:>11} {:<9} {:<17} {:>9}",
        clock.time_of_day(c.end_ns()),
        c.endpoints.local().to_string(),
        c.endpoints.remote().to_string(),
        c.role.name(),
        millis_or_dash(c.handshake_ns),
        millis_or_dash(c.lifetime_ns()),
        c.closed_by.name(),
        c.end.map_or("-", |e| e.name()),
        tw,
    );
}

#[cfg(test)]
mod tests {
    use jiff::tz::TimeZone;
    use tcptrace_common::{AF_INET6, DWELL_UNKNOWN};

    use super::*;
    use crate::model::connections::ConnectionTable;
    use crate::testing::{raw_transition, raw_v4, step};

    fn clock() -> WallClock {
        // Monotonic 0 == 2026-11-21T07:00:00Z; local time is UTC+1.
        WallClock::fixed(
            1_795_244_400_000_000_000,
            TimeZone::fixed(jiff::tz::offset(1)),
        )
    }

    fn line(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn millis_keeps_microseconds() {
        assert_eq!(Millis(61_250).to_string(), "0.061");
        assert_eq!(Millis(300_412_999).to_string(), "300.412");
        assert_eq!(Millis(0).to_string(), "0.000");
        assert_eq!(format!("{:>8}", Millis(1_500_000)), "   1.500");
    }

    #[test]
    fn transition_line_is_aligned_with_header() {
        let t = raw_transition(&raw_v4());
        let line = line(|out| transition_line(&clock(), &t, None, out));
        assert_eq!(
            line,
            "08:00:05.000000    1234 curl             127.0.0.1:45678         10.1.2.3:8080              SYN_SENT -> ESTABLISHED       0.061"
        );
        let header = transition_header(false);
        assert_eq!(
            header.find("PID").map(|i| i + 3),
            line.find("1234").map(|i| i + 4)
        );
        assert_eq!(header.find("IN_OLD_MS").map(|i| i + 9), Some(line.len()));
        assert_eq!(header.find("NEW"), line.find("ESTABLISHED"));
    }

    #[test]
    fn transition_line_unknowns_and_ipv6() {
        let mut raw = raw_v4();
        raw.in_old_ns = DWELL_UNKNOWN;
        raw.owner.pid_tgid = 0;
        raw.family = AF_INET6;
        raw.saddr = std::net::Ipv6Addr::LOCALHOST.octets();
        raw.daddr = std::net::Ipv6Addr::LOCALHOST.octets();
        raw.oldstate = TcpState::Listen.number();
        raw.newstate = TcpState::SynRecv.number();
        let t = raw_transition(&raw);
        let line = line(|out| transition_line(&clock(), &t, None, out));
        assert!(line.contains("       - -    "), "{line}");
        assert!(line.contains("[::1]:45678"), "{line}");
        assert!(line.contains("LISTEN -> SYN_RECV"), "{line}");
        assert!(line.ends_with("           -"), "{line}");
    }

    #[test]
    fn wide_table_shows_namespace_container_and_cgroup() {
        let t = raw_transition(&raw_v4());
        let cg = CgroupInfo {
            path: "/system.slice/docker-0123456789abcdef0123.scope".into(),
            container: Some("0123456789abcdef0123".into()),
        };
        let wide = line(|out| transition_line(&clock(), &t, Some(Some(&cg)), out));
        assert!(
            wide.ends_with(
                " 4026531840 0123456789ab     /system.slice/docker-0123456789abcdef0123.scope"
            ),
            "{wide}"
        );
        let header = transition_header(true);
        assert_eq!(header.find("CONTAINER"), wide.find("0123456789ab "));
        let none = line(|out| transition_line(&clock(), &t, Some(None), out));
        assert!(none.ends_with(" 4026531840 -                -"), "{none}");
    }

    #[test]
    fn connection_line_lines_up_with_header() {
        let mut table = ConnectionTable::new(10);
        use TcpState::*;
        for (old, new, at, dwell) in [
            (Close, SynSent, 1_000_000_000u64, None),
            (SynSent, Established, 1_000_040_000, Some(40_000)),
            (Established, CloseWait, 1_300_040_000, Some(300_000_000)),
            (CloseWait, LastAck, 1_350_040_000, Some(50_000_000)),
            (LastAck, Close, 1_350_100_000, Some(60_000)),
        ] {
            table.apply(&step(1, old, new).at(at).dwell(dwell).done());
        }
        let c = table.next_finished().unwrap();
        let line = line(|out| connection_line(&WallClock::fixed(0, TimeZone::UTC), &c, out));
        let header = connection_header();
        for col in ["ROLE", "CLOSED_BY", "END"] {
            let at = header.find(col).unwrap();
            assert_ne!(line.as_bytes()[at], b' ', "{col} in {line}");
            assert_eq!(line.as_bytes()[at - 1], b' ', "{col} in {line}");
        }
        assert!(line.contains(" client ") && line.contains(" remote ") && line.contains(" fin "));
        assert!(line.contains("350.100"), "{line}");
    }
}
