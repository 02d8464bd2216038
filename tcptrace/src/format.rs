//! Rendering transitions: the aligned terminal table and JSON lines.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use crate::cgroup::CgroupInfo;
use crate::event::Transition;

/// Converts kernel CLOCK_MONOTONIC timestamps (`bpf_ktime_get_ns`) to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, sampled once at start.
    realtime_minus_mono_ns: i128,
    /// Local time zone offset from UTC at start, for the table's time column.
    utc_offset_s: i64,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; both clocks exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl WallClock {
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        let mono2 = clock_ns(libc::CLOCK_MONOTONIC);
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        let secs = (real / 1_000_000_000) as libc::time_t;
        // SAFETY: valid pointers; localtime_r is thread-safe and honours TZ.
        let utc_offset_s = if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
            0
        } else {
            tm.tm_gmtoff
        };
        Self {
            realtime_minus_mono_ns: real - (mono + mono2) / 2,
            utc_offset_s,
        }
    }

    /// A clock with a fixed offset, for tests.
    pub fn fixed(realtime_minus_mono_ns: i128, utc_offset_s: i64) -> Self {
        Self {
            realtime_minus_mono_ns,
            utc_offset_s,
        }
    }

    pub fn unix_ns(&self, mono_ns: u64) -> i128 {
        i128::from(mono_ns) + self.realtime_minus_mono_ns
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-21T07:41:02.123456Z`.
pub fn rfc3339_micros(unix_ns: i128, out: &mut impl fmt::Write) -> fmt::Result {
    let micros = unix_ns.div_euclid(1_000);
    let secs = micros.div_euclid(1_000_000) as i64;
    let frac = micros.rem_euclid(1_000_000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    write!(
        out,
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// Local time of day with microseconds, e.g. `07:41:02.123456`.
pub fn time_of_day(clock: &WallClock, mono_ns: u64, out: &mut impl fmt::Write) -> fmt::Result {
    let local_us = (clock.unix_ns(mono_ns) / 1_000) + i128::from(clock.utc_offset_s) * 1_000_000;
    let secs = local_us.div_euclid(1_000_000);
    let frac = local_us.rem_euclid(1_000_000);
    let sod = secs.rem_euclid(86_400);
    write!(
        out,
        "{:02}:{:02}:{:02}.{frac:06}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// Milliseconds with microsecond precision, e.g. `0.061`, `300.412`.
fn millis(ns: u64) -> impl fmt::Display {
    struct Millis(u64);
    impl fmt::Display for Millis {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let us = self.0 / 1_000;
            let s = format_args!("{}.{:03}", us / 1_000, us % 1_000);
            // Honour width/alignment from the caller.
            f.pad(&s.to_string())
        }
    }
    Millis(ns)
}

/// `addr:port`, IPv6 in brackets (v4-mapped addresses were already unmapped by the decoder).
fn endpoint(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

const ADDR_WIDTH: usize = 23;

/// The header line of the table; `wide` adds the namespace and container columns.
pub fn table_header(wide: bool) -> String {
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
        let _ = write!(h, " {:>10} {:<16} CGROUP", "NETNS", "CONTAINER");
    }
    h
}

/// One table line (without the newline). PID and COMM are the socket's owner, `-` when
/// unknown; `cgroup` is only used by the wide form.
pub fn table_line(
    clock: &WallClock,
    t: &Transition,
    wide: Option<Option<&CgroupInfo>>,
    out: &mut String,
) {
    out.clear();
    let _ = time_of_day(clock, t.ts_ns, out);
    let (pid, comm) = match &t.owner {
        Some(owner) => (Some(owner.task.pid), owner.task.comm.as_str()),
        None => (None, "-"),
    };
    let _ = match pid {
        Some(pid) => write!(out, " {pid:>7}"),
        None => write!(out, " {:>7}", "-"),
    };
    let local = endpoint(t.saddr, t.sport).to_string();
    let remote = endpoint(t.daddr, t.dport).to_string();
    let _ = write!(
        out,
        " {comm:<16} {local:<w$} {remote:<w$} {:>11} -> {:<11}",
        t.old,
        t.new,
        w = ADDR_WIDTH
    );
    let _ = match t.in_old_ns {
        Some(ns) => write!(out, " {:>11}", millis(ns)),
        None => write!(out, " {:>11}", "-"),
    };
    if let Some(cgroup) = wide {
        let _ = match t.netns {
            Some(ns) => write!(out, " {ns:>10}"),
            None => write!(out, " {:>10}", "-"),
        };
        // Container ids are shown short, as docker does; service names whole.
        let container = cgroup
            .and_then(|c| c.container.as_deref())
            .map_or("-", |id| match id.get(..12) {
                Some(short) if id.bytes().all(|b| b.is_ascii_hexdigit()) => short,
                _ => id,
            });
        let path = cgroup.map_or("-", |c| c.path.as_str());
        let _ = write!(out, " {container:<16} {path}");
    }
}

/// Writes `s` as a JSON string literal.
pub fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The keys of every JSON line, in order: a documented contract (README).
pub const JSON_KEYS: [&str; 18] = [
    "time",
    "ts_ns",
    "cookie",
    "family",
    "saddr",
    "sport",
    "daddr",
    "dport",
    "old",
    "new",
    "in_old_ns",
    "pid",
    "comm",
    "cpu_pid",
    "cpu_comm",
    "netns",
    "cgroup",
    "container",
];

fn json_opt_str(s: Option<&str>, out: &mut String) {
    match s {
        Some(s) => json_string(s, out),
        None => out.push_str("null"),
    }
}

/// One JSON object (without the newline). Keys are a documented contract: see README.
pub fn json_line(clock: &WallClock, t: &Transition, cgroup: Option<&CgroupInfo>, out: &mut String) {
    out.clear();
    out.push_str("{\"time\":\"");
    let _ = rfc3339_micros(clock.unix_ns(t.ts_ns), out);
    let _ = write!(
        out,
        "\",\"ts_ns\":{},\"cookie\":{},\"family\":\"{}\",\"saddr\":\"{}\",\"sport\":{},\"daddr\":\"{}\",\"dport\":{},\"old\":\"{}\",\"new\":\"{}\",\"in_old_ns\":",
        t.ts_ns,
        t.cookie,
        t.family.name(),
        t.saddr,
        t.sport,
        t.daddr,
        t.dport,
        t.old.name(),
        t.new.name(),
    );
    let _ = match t.in_old_ns {
        Some(ns) => write!(out, "{ns}"),
        None => write!(out, "null"),
    };
    for (key, task) in [("", t.owner.map(|o| o.task)), ("cpu_", t.cpu)] {
        match task {
            Some(task) => {
                let _ = write!(out, ",\"{key}pid\":{},\"{key}comm\":", task.pid);
                json_string(task.comm.as_str(), out);
            }
            None => {
                let _ = write!(out, ",\"{key}pid\":null,\"{key}comm\":null");
            }
        }
    }
    let _ = match t.netns {
        Some(ns) => write!(out, ",\"netns\":{ns}"),
        None => write!(out, ",\"netns\":null"),
    };
    out.push_str(",\"cgroup\":");
    json_opt_str(cgroup.map(|c| c.path.as_str()), out);
    out.push_str(",\"container\":");
    json_opt_str(cgroup.and_then(|c| c.container.as_deref()), out);
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::raw_v4;
    use crate::state::TcpState;
    use tcptrace_common::{AF_INET6, DWELL_UNKNOWN};

    fn clock() -> WallClock {
        // Monotonic 0 == 2026-11-21T07:00:00Z; local time is UTC+1.
        WallClock::fixed(1_795_244_400_000_000_000, 3600)
    }

    #[test]
    fn rfc3339_known_instants() {
        let mut s = String::new();
        rfc3339_micros(0, &mut s).unwrap();
        assert_eq!(s, "1970-01-01T00:00:00.000000Z");
        s.clear();
        rfc3339_micros(951_782_400_123_456_789, &mut s).unwrap(); // leap day 2000
        assert_eq!(s, "2000-02-29T00:00:00.123456Z");
        s.clear();
        rfc3339_micros(1_795_244_400_000_000_000, &mut s).unwrap();
        assert_eq!(s, "2026-11-21T07:00:00.000000Z");
        s.clear();
        rfc3339_micros(-1_000, &mut s).unwrap();
        assert_eq!(s, "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn millis_keeps_microseconds() {
        assert_eq!(millis(61_250).to_string(), "0.061");
        assert_eq!(millis(300_412_999).to_string(), "300.412");
        assert_eq!(millis(0).to_string(), "0.000");
        assert_eq!(format!("{:>8}", millis(1_500_000)), "   1.500");
    }

    #[test]
    fn table_line_is_aligned_with_header() {
        let t = Transition::from_raw(&raw_v4()).unwrap();
        let mut line = String::new();
        table_line(&clock(), &t, None, &mut line);
        assert_eq!(
            line,
            "08:00:05.000000    1234 curl             127.0.0.1:45678         10.1.2.3:8080              SYN_SENT -> ESTABLISHED       0.061"
        );
        let header = table_header(false);
        assert_eq!(
            header.find("PID").map(|i| i + 3),
            line.find("1234").map(|i| i + 4)
        );
        assert_eq!(header.find("IN_OLD_MS").map(|i| i + 9), Some(line.len()));
        assert_eq!(header.find("NEW"), line.find("ESTABLISHED"));
    }

    #[test]
    fn table_line_unknowns_and_ipv6() {
        let mut raw = raw_v4();
        raw.in_old_ns = DWELL_UNKNOWN;
        raw.owner.pid_tgid = 0;
        raw.family = AF_INET6;
        raw.saddr = std::net::Ipv6Addr::LOCALHOST.octets();
        raw.daddr = std::net::Ipv6Addr::LOCALHOST.octets();
        raw.oldstate = TcpState::Listen.number();
        raw.newstate = TcpState::SynRecv.number();
        let t = Transition::from_raw(&raw).unwrap();
        let mut line = String::new();
        table_line(&clock(), &t, None, &mut line);
        assert!(line.contains("       - -    "), "{line}");
        assert!(line.contains("[::1]:45678"), "{line}");
        assert!(line.contains("LISTEN -> SYN_RECV"), "{line}");
        assert!(line.ends_with("           -"), "{line}");
    }

    #[test]
    fn wide_table_shows_namespace_container_and_cgroup() {
        let t = Transition::from_raw(&raw_v4()).unwrap();
        let cg = CgroupInfo {
            path: "/system.slice/docker-0123456789abcdef0123.scope".into(),
            container: Some("0123456789abcdef0123".into()),
        };
        let mut line = String::new();
        table_line(&clock(), &t, Some(Some(&cg)), &mut line);
        assert!(
            line.ends_with(
                " 4026531840 0123456789ab     /system.slice/docker-0123456789abcdef0123.scope"
            ),
            "{line}"
        );
        let header = table_header(true);
        assert_eq!(header.find("CONTAINER"), line.find("0123456789ab "));
        table_line(&clock(), &t, Some(None), &mut line);
        assert!(line.ends_with(" 4026531840 -                -"), "{line}");
    }

    #[test]
    fn json_line_has_exactly_the_documented_keys() {
        let t = Transition::from_raw(&raw_v4()).unwrap();
        let mut line = String::new();
        let cg = CgroupInfo {
            path: "/system.slice/nginx.service".into(),
            container: Some("nginx.service".into()),
        };
        json_line(&clock(), &t, Some(&cg), &mut line);
        assert_eq!(
            line,
            r#"{"time":"2026-11-21T07:00:05.000000Z","ts_ns":5000000123,"cookie":4242,"family":"ipv4","saddr":"127.0.0.1","sport":45678,"daddr":"10.1.2.3","dport":8080,"old":"SYN_SENT","new":"ESTABLISHED","in_old_ns":61250,"pid":1234,"comm":"curl","cpu_pid":14,"cpu_comm":"ksoftirqd/0","netns":4026531840,"cgroup":"/system.slice/nginx.service","container":"nginx.service"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = JSON_KEYS.to_vec();
        expected.sort_unstable();
        assert_eq!(keys, expected, "serde_json sorts keys");
    }

    #[test]
    fn json_nulls_and_escaping() {
        let mut raw = raw_v4();
        raw.in_old_ns = DWELL_UNKNOWN;
        raw.owner.comm = *b"a\"b\\c\x01\0\0\0\0\0\0\0\0\0\0";
        let t = Transition::from_raw(&raw).unwrap();
        let mut line = String::new();
        json_line(&clock(), &t, None, &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v["in_old_ns"].is_null());
        assert!(v["cgroup"].is_null() && v["container"].is_null());
        assert_eq!(v["comm"], "a\"b\\c\u{1}");
        raw.owner.pid_tgid = 0;
        let t = Transition::from_raw(&raw).unwrap();
        json_line(&clock(), &t, None, &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v["pid"].is_null() && v["comm"].is_null());
        assert_eq!(
            v["cpu_comm"], "ksoftirqd/0",
            "the on-CPU task is kept apart"
        );
    }
}
