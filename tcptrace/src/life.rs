//! `tcptrace life`: one line per finished connection.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use crate::Shutdown;
use crate::cgroup::CgroupInfo;
use crate::cli::{LifeArgs, OutputFormat};
use crate::connections::{Connection, ConnectionTable, Role};
use crate::event::Transition;
use crate::format::{self, WallClock};
use crate::inet_diag::DiagSocket;
use crate::loader::Tracer;
use crate::output::{self, Lines};
use crate::pipeline::{Flow, Pipeline, RunOptions, Sink, StopReason, Tick};

/// The keys of every `life` JSON line: a documented contract (README).
pub const LIFE_JSON_KEYS: [&str; 24] = [
    "time",
    "cookie",
    "family",
    "saddr",
    "sport",
    "daddr",
    "dport",
    "role",
    "pid",
    "comm",
    "netns",
    "from_start",
    "states",
    "handshake_ns",
    "established_ns",
    "close_wait_ns",
    "lifetime_ns",
    "closed_by",
    "end",
    "time_wait_ns",
    "time_wait_state",
    "time_wait_confirmed",
    "start_time",
    "end_ts_ns",
];

fn ms(ns: Option<u64>) -> String {
    ns.map_or_else(
        || "-".to_owned(),
        |ns| format!("{}.{:03}", ns / 1_000_000, ns / 1_000 % 1_000),
    )
}

fn opt_u64(v: Option<u64>) -> String {
    v.map_or_else(|| "null".to_owned(), |v| v.to_string())
}

/// When the story ended: the end of TIME_WAIT, else the close.
fn end_ns(c: &Connection) -> u64 {
    c.time_wait
        .and_then(|tw| tw.ended_ns)
        .or(c.closed_ns)
        .unwrap_or(c.opened_ns)
}

pub fn table_header() -> String {
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

pub fn table_line(clock: &WallClock, c: &Connection, out: &mut String) {
    out.clear();
    // Local time of day of the end, as in `tail`.
    let mut local = String::new();
    let _ = format::time_of_day(clock, end_ns(c), &mut local);
    let (pid, comm) = match c.owner {
        Some(t) => (t.pid.to_string(), t.comm.as_str().to_owned()),
        None => ("-".to_owned(), "-".to_owned()),
    };
    let tw = match (c.time_wait, c.time_wait_ns()) {
        (Some(tw), Some(ns)) if tw.substate != crate::state::TcpState::TimeWait => {
            format!("{}({})", ms(Some(ns)), tw.substate.name())
        }
        (Some(_), ns) => ms(ns),
        (None, _) => "-".to_owned(),
    };
    let _ = write!(
        out,
        "{local} {pid:>7} {comm:<16} {:<23} {:<23} {:<8} {:>10} {:>11} {:<9} {:<17} {:>9}",
        std::net::SocketAddr::new(c.saddr, c.sport).to_string(),
        std::net::SocketAddr::new(c.daddr, c.dport).to_string(),
        c.role.name(),
        ms(c.handshake_ns),
        ms(c.lifetime_ns()),
        c.closed_by.name(),
        c.end.map_or("-", |e| e.name()),
        tw,
    );
}

pub fn json_line(clock: &WallClock, c: &Connection, out: &mut String) {
    out.clear();
    out.push_str("{\"time\":\"");
    let _ = format::rfc3339_micros(clock.unix_ns(end_ns(c)), out);
    let _ = write!(
        out,
        "\",\"cookie\":{},\"family\":\"{}\",\"saddr\":\"{}\",\"sport\":{},\"daddr\":\"{}\",\"dport\":{},\"role\":\"{}\"",
        c.cookie,
        c.family.name(),
        c.saddr,
        c.sport,
        c.daddr,
        c.dport,
        c.role.name()
    );
    match c.owner {
        Some(t) => {
            let _ = write!(out, ",\"pid\":{},\"comm\":", t.pid);
            format::json_string(t.comm.as_str(), out);
        }
        None => out.push_str(",\"pid\":null,\"comm\":null"),
    }
    let _ = write!(
        out,
        ",\"netns\":{},\"from_start\":{},\"states\":[",
        opt_u64(c.netns.map(u64::from)),
        c.from_start
    );
    for (i, s) in c.states().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{}\"", s.name());
    }
    let tw = c.time_wait;
    let _ = write!(
        out,
        "],\"handshake_ns\":{},\"established_ns\":{},\"close_wait_ns\":{},\"lifetime_ns\":{},\"closed_by\":\"{}\",\"end\":\"{}\",\"time_wait_ns\":{},\"time_wait_state\":{},\"time_wait_confirmed\":{},\"start_time\":\"",
        opt_u64(c.handshake_ns),
        opt_u64(c.established_ns),
        opt_u64(c.close_wait_ns),
        opt_u64(c.lifetime_ns()),
        c.closed_by.name(),
        c.end.map_or("unknown", |e| e.name()),
        opt_u64(c.time_wait_ns()),
        tw.map_or_else(
            || "null".to_owned(),
            |tw| format!("\"{}\"", tw.substate.name())
        ),
        tw.map_or_else(|| "null".to_owned(), |tw| tw.confirmed.to_string()),
    );
    let _ = format::rfc3339_micros(clock.unix_ns(c.opened_ns), out);
    let _ = write!(out, "\",\"end_ts_ns\":{}}}", end_ns(c));
}

struct LifeSink<W: Write> {
    table: ConnectionTable,
    lines: Lines<W>,
    format: OutputFormat,
    clock: WallClock,
    listeners: bool,
}

impl<W: Write> LifeSink<W> {
    /// Prints every completed story; `Stop` once `--count` is reached.
    fn emit(&mut self) -> io::Result<Flow> {
        while let Some(c) = self.table.next_finished() {
            if c.role == Role::Listener && !self.listeners {
                continue;
            }
            match self.format {
                OutputFormat::Table => table_line(&self.clock, &c, &mut self.lines.line),
                OutputFormat::Json => json_line(&self.clock, &c, &mut self.lines.line),
            }
            if self.lines.emit()? == Flow::Stop {
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }
}

impl<W: Write> Sink for LifeSink<W> {
    fn transition(&mut self, t: &Transition, _: Option<&CgroupInfo>) -> io::Result<Flow> {
        self.table.apply(t);
        self.emit()
    }

    fn batch_end(&mut self) -> io::Result<()> {
        self.lines.flush()
    }

    fn tick(&mut self, tick: &Tick) {
        self.table.expire(tick.now_ns);
        // A write error here resurfaces on the next transition or flush.
        let _ = self.emit();
        let _ = self.lines.flush();
    }

    fn snapshot(&mut self, sockets: &[DiagSocket], taken_ns: u64) {
        self.table.snapshot(sockets, taken_ns);
        let _ = self.emit();
        let _ = self.lines.flush();
    }
}

pub fn run(args: LifeArgs) -> anyhow::Result<ExitCode> {
    let filter = args.filter.to_filter()?;
    let (tracer, ring) = Tracer::start(&filter.kernel(), args.kernel.sizes())?;
    let runtime = crate::runtime()?;
    let shutdown = Shutdown::register(&runtime)?;
    eprintln!("tcptrace: tracing connections (Ctrl-C to stop)");
    let Some(lines) = output::stdout_with_header(&args.out, &table_header()) else {
        return Ok(ExitCode::SUCCESS);
    };
    let mut table = ConnectionTable::new(args.max_connections as usize);
    table.skip_time_wait = args.no_time_wait;
    table.netns = crate::own_netns();
    let sink = LifeSink {
        table,
        lines,
        format: args.out.output,
        clock: WallClock::now(),
        listeners: args.listeners,
    };
    let mut pipeline = Pipeline::new(&filter);
    pipeline.identity(tracer.identity(), crate::own_netns());
    pipeline.subscribe(Box::new(sink));
    let snapshot = (!args.no_time_wait).then_some(args.snapshot_interval);
    let stop = shutdown.wait(args.out.duration);
    let reason = runtime.block_on(async {
        pipeline
            .run(
                ring,
                stop,
                RunOptions {
                    tick: Some(Duration::from_secs(1)),
                    snapshot,
                    snapshot_idle: false,
                    tracer: Some(&tracer),
                },
            )
            .await
    })?;
    let kernel = tracer.counters();
    if reason != StopReason::OutputClosed {
        eprintln!(
            "tcptrace: {} transitions, {} lost (ring full), {} lost (recursion)",
            pipeline.stats.delivered, kernel.ring_full, kernel.recursion_misses
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connections::{ClosedBy, End};
    use crate::event::tests::raw_v4;
    use crate::state::TcpState;

    fn story() -> Connection {
        let mut t = ConnectionTable::new(10);
        t.skip_time_wait = true;
        for (old, new, at, dwell) in [
            (TcpState::Close, TcpState::SynSent, 1_000_000_000u64, None),
            (
                TcpState::SynSent,
                TcpState::Established,
                1_000_040_000,
                Some(40_000),
            ),
            (
                TcpState::Established,
                TcpState::CloseWait,
                1_300_040_000,
                Some(300_000_000),
            ),
            (
                TcpState::CloseWait,
                TcpState::LastAck,
                1_350_040_000,
                Some(50_000_000),
            ),
            (
                TcpState::LastAck,
                TcpState::Close,
                1_350_100_000,
                Some(60_000),
            ),
        ] {
            let mut raw = raw_v4();
            raw.oldstate = old.number();
            raw.newstate = new.number();
            raw.ts_ns = at;
            raw.in_old_ns = dwell.unwrap_or(tcptrace_common::DWELL_UNKNOWN);
            t.apply(&Transition::from_raw(&raw).unwrap());
        }
        t.next_finished().unwrap()
    }

    #[test]
    fn json_has_exactly_the_documented_keys_and_values() {
        let c = story();
        assert_eq!((c.closed_by, c.end), (ClosedBy::Remote, Some(End::Fin)));
        let mut line = String::new();
        json_line(&WallClock::fixed(0, 0), &c, &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = LIFE_JSON_KEYS.to_vec();
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(v["role"], "client");
        assert_eq!(v["handshake_ns"], 40_000);
        assert_eq!(v["close_wait_ns"], 50_000_000);
        assert_eq!(v["lifetime_ns"], 350_100_000);
        assert_eq!(v["closed_by"], "remote");
        assert_eq!(v["end"], "fin");
        assert!(v["time_wait_ns"].is_null() && v["time_wait_state"].is_null());
        assert_eq!(v["pid"], 1234);
        assert_eq!(v["states"][1], "SYN_SENT");
    }

    #[test]
    fn table_line_lines_up_with_header() {
        let c = story();
        let mut line = String::new();
        table_line(&WallClock::fixed(0, 0), &c, &mut line);
        let header = table_header();
        for col in ["ROLE", "CLOSED_BY", "END"] {
            let at = header.find(col).unwrap();
            assert_ne!(line.as_bytes()[at], b' ', "{col} in {line}");
            assert_eq!(line.as_bytes()[at - 1], b' ', "{col} in {line}");
        }
        assert!(line.contains(" client ") && line.contains(" remote ") && line.contains(" fin "));
        assert!(line.contains("350.100"), "{line}");
    }
}
