//! The JSON contracts of `tail`, `life` and `doctor`, compared byte for byte with golden
//! files recorded from the previous (hand-written) writers. `GOLDEN_WRITE=1 cargo test golden`
//! rewrites them; a diff in review then shows every change to an output contract.

use std::fmt::Write as _;
use std::net::Ipv6Addr;
use std::path::PathBuf;

use tcptrace_common::{AF_INET6, DWELL_UNKNOWN, RawTransition, flags};

use jiff::tz::TimeZone;

use crate::diagnosis::window::{Baseline, Observations, Scene};
use crate::diagnosis::{self, Thresholds};
use crate::host::owners::{ProcessName, SocketOwners};
use crate::host::stack::{Settings, TcpCounters};
use crate::kernel::loader::KernelCounters;
use crate::model::cgroup::CgroupInfo;
use crate::model::connections::ConnectionTable;
use crate::model::filter::Filter;
use crate::model::snapshot::{DiagSocket, Idle, Namespace, Stack, Timer};
use crate::model::tcp::{Family, TcpState};
use crate::output::json;
use crate::output::report::Report;
use crate::output::time::WallClock;
use crate::testing::{raw_transition, raw_v4};

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

/// Monotonic 0 == 2026-11-21T07:00:00Z.
fn clock() -> WallClock {
    WallClock::fixed(1_795_244_400_000_000_000, TimeZone::UTC)
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("GOLDEN_WRITE").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (GOLDEN_WRITE=1 records it)", path.display()));
    for (i, (a, e)) in actual.lines().zip(expected.lines()).enumerate() {
        assert_eq!(a, e, "{name} line {}", i + 1);
    }
    assert_eq!(actual.lines().count(), expected.lines().count(), "{name}");
}

fn step(raw: &RawTransition, old: TcpState, new: TcpState, ts_ns: u64) -> RawTransition {
    RawTransition {
        oldstate: old.number(),
        newstate: new.number(),
        ts_ns,
        ..*raw
    }
}

/// Transitions covering every field shape: owners known and unknown, the idle task, unknown
/// dwell, IPv6 and v4-mapped addresses, names that need escaping, every state.
fn tail_corpus() -> Vec<(RawTransition, Option<CgroupInfo>)> {
    let base = raw_v4();
    let mut out = vec![(
        base,
        Some(CgroupInfo {
            path: "/system.slice/nginx.service".into(),
            container: Some("nginx.service".into()),
        }),
    )];
    let mut unknown = step(&base, TcpState::Close, TcpState::SynSent, 7 * S + 1);
    unknown.in_old_ns = DWELL_UNKNOWN;
    unknown.owner.pid_tgid = 0;
    unknown.cpu_pid_tgid = 0;
    unknown.netns = 0;
    unknown.cgroup = 0;
    unknown.sport = 0;
    out.push((unknown, None));
    let mut v6 = step(&base, TcpState::Listen, TcpState::SynRecv, 8 * S + 999);
    v6.family = AF_INET6;
    v6.saddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
    v6.daddr = "::ffff:192.0.2.7".parse::<Ipv6Addr>().unwrap().octets();
    v6.flags = flags::OWNER_INHERITED;
    out.push((
        v6,
        Some(CgroupInfo {
            path: "/kubepods/pod1/0123456789abcdef0123456789abcdef".into(),
            container: Some("0123456789abcdef0123456789abcdef".into()),
        }),
    ));
    let mut escaped = step(&base, TcpState::Established, TcpState::CloseWait, 9 * S);
    escaped.owner.comm = *b"a\"b\\c\x01\t\n\x1f\xc3\xa9\0\0\0\0\0";
    escaped.cpu_comm = *b"ksoftirqd/1\0\0\0\0\0";
    escaped.in_old_ns = 0;
    escaped.flags = flags::RST_RECEIVED;
    out.push((
        escaped,
        Some(CgroupInfo {
            path: "/user.slice/\"quoted\"".into(),
            container: None,
        }),
    ));
    for (i, &(old, new)) in [
        (TcpState::FinWait1, TcpState::FinWait2),
        (TcpState::FinWait2, TcpState::Close),
        (TcpState::CloseWait, TcpState::LastAck),
        (TcpState::LastAck, TcpState::Close),
        (TcpState::FinWait1, TcpState::Closing),
        (TcpState::Closing, TcpState::Close),
        (TcpState::Close, TcpState::Listen),
        (TcpState::SynSent, TcpState::Close),
    ]
    .iter()
    .enumerate()
    {
        let mut t = step(&base, old, new, 10 * S + i as u64 * 123_456_789);
        t.in_old_ns = u64::MAX - 1;
        t.cookie = u64::MAX - i as u64;
        out.push((t, None));
    }
    out
}

#[test]
fn tail_json_lines_match_the_golden_file() {
    let mut all = String::new();
    let mut line = Vec::new();
    for (raw, cgroup) in tail_corpus() {
        let t = raw_transition(&raw);
        json::transition(&clock(), &t, cgroup.as_ref(), &mut line).unwrap();
        all.push_str(std::str::from_utf8(&line).unwrap());
        all.push('\n');
    }
    golden("tail.jsonl", &all);
}

/// Feeds `(old, new, at_ms, rst)` steps for one socket, each dwell the time since the last; a
/// server child's request sent its first SYN-ACK at 0 ms; every `-> CLOSE` carries what the
/// kernel keeps (a failed connect: nothing, and no RTT).
fn feed(
    table: &mut ConnectionTable,
    raw: &RawTransition,
    steps: &[(TcpState, TcpState, u64, bool)],
) {
    let mut prev: Option<u64> = None;
    for &(old, new, at, rst) in steps {
        let mut r = step(raw, old, new, S + at * MS);
        r.in_old_ns = prev.map_or(DWELL_UNKNOWN, |p| (at - p) * MS);
        if rst {
            r.flags |= flags::RST_RECEIVED;
        }
        if (old, new) == (TcpState::SynRecv, TcpState::Established) {
            r.request_ns = S;
        }
        if new == TcpState::Close {
            r.flags |= flags::CLOSE_STATS;
            if old != TcpState::SynSent {
                r.close = tcptrace_common::CloseStats {
                    bytes_acked: at * 1000 + 17,
                    bytes_received: at * 100,
                    total_retrans: u32::from(rst),
                    srtt_us: 57 << 3,
                    mdev_us: 21 << 2,
                    flags: tcptrace_common::close_flags::FIN_RECEIVED,
                };
            }
        }
        prev = Some(at);
        table.apply(&raw_transition(&r));
    }
}

fn diag(cookie: u64, state: TcpState, local: &str, remote: &str) -> DiagSocket {
    crate::testing::diag(cookie, state, local, remote)
}

#[test]
fn life_json_lines_match_the_golden_file() {
    use TcpState::*;
    let mut table = ConnectionTable::new(100);
    table.wait_time_wait = true;
    let base = raw_v4();
    let with = |cookie: u64| {
        let mut r = base;
        r.cookie = cookie;
        r
    };
    // Client, active close; its TIME_WAIT confirmed by one snapshot, ended by the next.
    feed(
        &mut table,
        &with(1),
        &[
            (Close, SynSent, 0, false),
            (SynSent, Established, 1, false),
            (Established, FinWait1, 301, false),
            (FinWait1, FinWait2, 302, false),
            (FinWait2, Close, 303, false),
        ],
    );
    // Server child, passive close, slow application.
    let mut server = with(2);
    server.owner.comm = *b"srv \"x\"\0\0\0\0\0\0\0\0\0";
    feed(
        &mut table,
        &server,
        &[
            (Listen, SynRecv, 0, false),
            (SynRecv, Established, 1, false),
            (Established, CloseWait, 101, false),
            (CloseWait, LastAck, 151, false),
            (LastAck, Close, 152, false),
        ],
    );
    // Refused, timed out, aborted, reset by the peer, first seen mid-life, unknown owner.
    feed(
        &mut table,
        &with(3),
        &[(Close, SynSent, 0, false), (SynSent, Close, 0, true)],
    );
    feed(
        &mut table,
        &with(4),
        &[(Close, SynSent, 0, false), (SynSent, Close, 3000, false)],
    );
    feed(
        &mut table,
        &with(5),
        &[
            (Close, SynSent, 0, false),
            (SynSent, Established, 2, false),
            (Established, Close, 50, false),
        ],
    );
    feed(
        &mut table,
        &with(6),
        &[
            (Listen, SynRecv, 0, false),
            (SynRecv, Established, 1, false),
            (Established, Close, 9, true),
        ],
    );
    let mut anon = with(7);
    anon.owner.pid_tgid = 0;
    anon.family = AF_INET6;
    anon.saddr = Ipv6Addr::LOCALHOST.octets();
    anon.daddr = "::ffff:10.0.0.9".parse::<Ipv6Addr>().unwrap().octets();
    anon.netns = 0;
    feed(
        &mut table,
        &anon,
        &[(CloseWait, LastAck, 0, false), (LastAck, Close, 1, false)],
    );
    // Simultaneous close: its TIME_WAIT is an orphan's FIN_WAIT2 substate, then expires.
    feed(
        &mut table,
        &with(8),
        &[
            (Close, SynSent, 0, false),
            (SynSent, Established, 1, false),
            (Established, FinWait1, 2, false),
            (FinWait1, Closing, 3, false),
            (Closing, Close, 4, false),
        ],
    );
    let mut tw = diag(1, TimeWait, "127.0.0.1:45678", "10.1.2.3:8080");
    tw.expires_ms = 59_000;
    let mut orphan = diag(8, FinWait2, "127.0.0.1:45678", "10.1.2.3:8080");
    orphan.timer = Timer::TimeWait;
    orphan.expires_ms = 30_000;
    table.snapshot(&crate::testing::snap(&[tw, orphan], 2 * S));
    table.snapshot(&crate::testing::snap(&[orphan], 3 * S));
    table.expire(200 * S);
    // One more active close, still in TIME_WAIT when tracing stops.
    feed(
        &mut table,
        &with(9),
        &[
            (Established, FinWait1, 199_000, false),
            (FinWait1, FinWait2, 199_001, false),
            (FinWait2, Close, 199_002, false),
        ],
    );
    table.flush(210 * S);
    let mut all = String::new();
    let mut line = Vec::new();
    while let Some(c) = table.next_finished() {
        json::connection(&clock(), &c, &mut line).unwrap();
        all.push_str(std::str::from_utf8(&line).unwrap());
        all.push('\n');
    }
    golden("life.jsonl", &all);
}

#[test]
fn doctor_json_matches_the_golden_file() {
    use TcpState::*;
    let mut listener = diag(7, Listen, "10.0.0.1:8080", "0.0.0.0:0");
    listener.wqueue = 4;
    let mut sockets = vec![listener];
    for i in 0..4u16 {
        let mut s = diag(
            100 + u64::from(i),
            SynRecv,
            "10.0.0.1:8080",
            &format!("10.201.0.{i}:1234"),
        );
        s.inode = 0;
        sockets.push(s);
    }
    let mut leak = diag(9, CloseWait, "[::1]:9090", "[::1]:40000");
    leak.endpoints.family = Family::Ipv6;
    leak.idle = Some(Idle::new(0, 45_000, 45_000));
    sockets.push(leak);
    for i in 0..12u16 {
        sockets.push(diag(
            200 + u64::from(i),
            TimeWait,
            &format!("10.0.0.1:{}", 40_000 + i),
            "10.0.0.9:5432",
        ));
    }
    let mut obs = Observations::new(100);
    let base = raw_v4();
    for c in 0..11u64 {
        let mut r = base;
        r.cookie = 1000 + c;
        obs.observe(
            &raw_transition(&step(&r, Close, SynSent, 91 * S)),
            &Filter::default(),
        );
        let mut fail = step(&r, SynSent, Close, 92 * S);
        fail.flags = flags::RST_RECEIVED;
        obs.observe(&raw_transition(&fail), &Filter::default());
    }
    let mut before = TcpCounters::default();
    before.parse("TcpExt: SyncookiesSent TCPReqQFullDrop\nTcpExt: 5 0\n");
    let mut after = TcpCounters::default();
    after.parse("TcpExt: SyncookiesSent TCPReqQFullDrop\nTcpExt: 205 2\n");
    let settings = Settings::from_pairs(&[
        ("net.ipv4.ip_local_port_range", "40000 40019"),
        ("net.ipv4.tcp_fin_timeout", "60"),
        ("net.ipv4.tcp_syncookies", "1"),
        ("net.ipv4.tcp_syn_retries", "6"),
        ("net.core.somaxconn", "4096"),
    ]);
    let baseline = Baseline::new(&[], 90 * S, before);
    let scene = Scene {
        netns: Some(4026531840),
        sockets: &sockets,
        taken_ns: 100 * S,
        counters: &after,
        settings: &settings,
        baseline: &baseline,
    };
    let mut owners = SocketOwners::from_pairs([(
        7,
        ProcessName {
            pid: 700,
            comm: "web\\1".into(),
        },
    )]);
    let mut findings = diagnosis::diagnose(&scene, &obs, &mut owners, &Thresholds::default());
    // As the window names them.
    for f in &mut findings {
        f.netns = Some(4026531840);
        f.namespace = Some("host".into());
    }
    let host = [Namespace {
        inode: Some(4026531840),
        name: "host".into(),
        path: None,
        sockets: 0..sockets.len(),
        stack: Some(Stack {
            counters: after.clone(),
            settings: settings.clone(),
        }),
    }];
    let report = Report {
        time: clock().timestamp(100 * S),
        findings: &findings,
        sockets: &sockets,
        namespaces: &host,
        obs: &obs,
        kernel: KernelCounters {
            ring_full: 1,
            recursion_misses: 2,
            ..KernelCounters::default()
        },
        window_s: 10.0,
    };
    let mut all = json::doctor(&report);
    let blue = [Namespace {
        inode: Some(4026532999),
        name: "blue".into(),
        path: None,
        sockets: 0..0,
        stack: None,
    }];
    let healthy = Report {
        time: clock().timestamp(0),
        findings: &[],
        sockets: &[],
        namespaces: &blue,
        obs: &Observations::new(1),
        kernel: KernelCounters::default(),
        window_s: 0.25,
    };
    let _ = write!(all, "{}", json::doctor(&healthy));
    golden("doctor.json", &all);
    golden("doctor.txt", &report.text());
}

/// Every golden record is valid against the output's published JSON schema (`docs/schema`),
/// whose objects allow no other keys and require all of theirs: the docs and the writers agree.
#[test]
fn golden_records_follow_the_published_schemas() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/schema");
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    };
    let base = "https://github.com/tcptrace/tcptrace/docs/schema/v2/";
    let registry = jsonschema::Registry::new()
        .add(format!("{base}common.json"), read("common.json"))
        .unwrap()
        .prepare()
        .unwrap();
    for (schema, golden) in [
        ("tail.json", "tail.jsonl"),
        ("life.json", "life.jsonl"),
        ("doctor.json", "doctor.json"),
    ] {
        let validator = jsonschema::options()
            .with_registry(&registry)
            .build(&read(schema))
            .unwrap_or_else(|e| panic!("{schema}: {e}"));
        let text = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/golden")
                .join(golden),
        )
        .unwrap();
        for line in text.lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&record)
                .map(|e| e.to_string())
                .collect();
            assert!(
                errors.is_empty(),
                "{golden} against {schema}: {errors:?}\n{line}"
            );
            // A planted unknown key is caught.
            let mut extra = record.clone();
            extra["unexpected"] = 1.into();
            assert!(!validator.is_valid(&extra), "{schema} allows unknown keys");
        }
    }
}
