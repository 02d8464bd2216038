//! The JSON contracts of `tail`, `life` and `doctor`: each record is a `#[derive(Serialize)]`
//! struct whose fields, in order, are the documented keys (README), written by serde_json.

use std::io;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;
use serde::ser::{SerializeMap as _, Serializer};

use crate::diagnosis::{Example, Fact, Finding, Group, Kind, Severity};
use crate::model::cgroup::CgroupInfo;
use crate::model::connections::{ClosedBy, Connection, Role};
use crate::model::tcp::{Family, TcpState};
use crate::model::transition::{Task, Transition};
use crate::output::report::Report;
use crate::output::time::{Rfc3339, WallClock};

/// One `tail -o json` line.
#[derive(Serialize)]
struct TransitionRecord<'a> {
    time: Rfc3339,
    ts_ns: u64,
    cookie: u64,
    family: Family,
    socket_family: Family,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
    old: TcpState,
    new: TcpState,
    in_old_ns: Option<u64>,
    pid: Option<u32>,
    comm: Option<&'a str>,
    cpu_pid: Option<u32>,
    cpu_comm: Option<&'a str>,
    netns: Option<u32>,
    cgroup: Option<&'a str>,
    container: Option<&'a str>,
}

/// Writes one `tail` JSON object (without the newline) to `out`, replacing it.
pub fn transition(
    clock: &WallClock,
    t: &Transition,
    cgroup: Option<&CgroupInfo>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    out.clear();
    let task = |task: Option<Task>| task.map(|t| (t.pid, t.comm));
    let (pid, comm) = task(t.owner.map(|o| o.task)).unzip();
    let (cpu_pid, cpu_comm) = task(t.cpu).unzip();
    let e = &t.endpoints;
    let record = TransitionRecord {
        time: clock.rfc3339(t.ts_ns),
        ts_ns: t.ts_ns,
        cookie: t.cookie,
        family: e.family,
        socket_family: e.socket_family,
        saddr: e.local_ip,
        sport: e.local_port,
        daddr: e.remote_ip,
        dport: e.remote_port,
        old: t.old,
        new: t.new,
        in_old_ns: t.in_old_ns,
        pid,
        comm: comm.as_ref().map(|c| c.as_str()),
        cpu_pid,
        cpu_comm: cpu_comm.as_ref().map(|c| c.as_str()),
        netns: t.netns,
        cgroup: cgroup.map(|c| c.path.as_str()),
        container: cgroup.and_then(|c| c.container.as_deref()),
    };
    serde_json::to_writer(out, &record).map_err(io::Error::from)
}

/// The states a connection went through, as a JSON list.
struct States<'a>(&'a Connection);

impl Serialize for States<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.states())
    }
}

/// One `life -o json` line.
#[derive(Serialize)]
struct ConnectionRecord<'a> {
    time: Rfc3339,
    cookie: u64,
    family: Family,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
    role: Role,
    pid: Option<u32>,
    comm: Option<&'a str>,
    netns: Option<u32>,
    from_start: bool,
    states: States<'a>,
    handshake_ns: Option<u64>,
    established_ns: Option<u64>,
    close_wait_ns: Option<u64>,
    lifetime_ns: Option<u64>,
    closed_by: ClosedBy,
    end: &'static str,
    time_wait_ns: Option<u64>,
    time_wait_state: Option<TcpState>,
    time_wait_confirmed: Option<bool>,
    time_wait_ended: Option<bool>,
    start_time: Option<Rfc3339>,
    end_ts_ns: u64,
}

/// Writes one `life` JSON object (without the newline) to `out`, replacing it.
pub fn connection(clock: &WallClock, c: &Connection, out: &mut Vec<u8>) -> io::Result<()> {
    out.clear();
    let e = &c.endpoints;
    let record = ConnectionRecord {
        time: clock.rfc3339(c.end_ns()),
        cookie: c.cookie,
        family: e.family,
        saddr: e.local_ip,
        sport: e.local_port,
        daddr: e.remote_ip,
        dport: e.remote_port,
        role: c.role,
        pid: c.owner.map(|t| t.pid),
        comm: c.owner.as_ref().map(|t| t.comm.as_str()),
        netns: c.netns,
        from_start: c.from_start,
        states: States(c),
        handshake_ns: c.handshake_ns,
        established_ns: c.established_ns,
        close_wait_ns: c.close_wait_ns,
        lifetime_ns: c.lifetime_ns(),
        closed_by: c.closed_by,
        end: c.end.map_or("unknown", |e| e.name()),
        time_wait_ns: c.time_wait_ns(),
        time_wait_state: c.time_wait.map(|tw| tw.substate),
        time_wait_confirmed: c.time_wait.map(|tw| tw.confirmed),
        time_wait_ended: c.time_wait.map(|tw| tw.complete),
        start_time: c.start_ns().map(|ns| clock.rfc3339(ns)),
        end_ts_ns: c.end_ns(),
    };
    serde_json::to_writer(out, &record).map_err(io::Error::from)
}

/// A fractional number (seconds, percentages, rates) with three decimals; `null` when not
/// finite (JSON has no NaN or infinity).
#[derive(Debug, Clone, Copy)]
struct Fixed3(f64);

impl Serialize for Fixed3 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.0.is_finite() {
            return s.serialize_none();
        }
        let token = serde_json::value::RawValue::from_string(format!("{:.3}", self.0))
            .map_err(serde::ser::Error::custom)?;
        token.serialize(s)
    }
}

impl Serialize for Fact {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Count(n) => s.serialize_u64(*n),
            Self::Number(x) => Fixed3(*x).serialize(s),
            Self::Text(t) => s.serialize_str(t),
        }
    }
}

/// `(name, value)` pairs as a JSON object, in order.
struct Pairs<'a, V>(&'a [(&'static str, V)]);

impl<V: Serialize> Serialize for Pairs<'_, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl Serialize for Group {
    /// The labels, then `count` and, when known, `oldest_s`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (k, v) in &self.labels {
            map.serialize_entry(k, v)?;
        }
        map.serialize_entry("count", &self.count)?;
        if let Some(oldest) = self.oldest_s {
            map.serialize_entry("oldest_s", &Fixed3(oldest))?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct ExampleRecord<'a> {
    state: TcpState,
    local: SocketAddr,
    remote: SocketAddr,
    age_s: Option<Fixed3>,
    pid: Option<u32>,
    comm: Option<&'a str>,
}

impl Serialize for Example {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ExampleRecord {
            state: self.state,
            local: self.local,
            remote: self.remote,
            age_s: self.age_s.map(Fixed3),
            pid: self.owner.as_ref().map(|p| p.pid),
            comm: self.owner.as_ref().map(|p| p.comm.as_str()),
        }
        .serialize(s)
    }
}

#[derive(Serialize)]
struct FindingRecord<'a> {
    kind: Kind,
    severity: Severity,
    statement: &'a str,
    count: u64,
    evidence: Pairs<'a, Fact>,
    top: &'a [Group],
    examples: &'a [Example],
    settings: Pairs<'a, String>,
    advice: &'a [String],
}

impl Serialize for Finding {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        FindingRecord {
            kind: self.kind,
            severity: self.severity,
            statement: &self.statement,
            count: self.count,
            evidence: Pairs(&self.facts),
            top: &self.top,
            examples: &self.examples,
            settings: Pairs(&self.settings),
            advice: &self.advice,
        }
        .serialize(s)
    }
}

/// Sockets per state, as `{"STATE": count}`.
struct StateCounts(Vec<(TcpState, u64)>);

impl Serialize for StateCounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(state, n)| (state.name(), n)))
    }
}

#[derive(Serialize)]
struct Summary {
    sockets: usize,
    states: StateCounts,
    transitions: u64,
    connections_closed: u64,
    lost_ring_full: u64,
    lost_recursion: u64,
    connections_evicted: u64,
    ends_not_kept: u64,
}

/// Settings as `{"name": "value"}`, in the order they were read.
struct Settings<'a>(&'a crate::host::stack::Settings);

impl Serialize for Settings<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter())
    }
}

#[derive(Serialize)]
struct DoctorRecord<'a> {
    healthy: bool,
    worst: Option<Severity>,
    exit_code: u8,
    window_s: Fixed3,
    netns: Option<u32>,
    summary: Summary,
    settings: Settings<'a>,
    findings: &'a [Finding],
}

/// `doctor -o json`: one object and a newline.
pub fn doctor(r: &Report<'_>) -> String {
    let obs = r.obs;
    let record = DoctorRecord {
        healthy: r.worst().is_none_or(|s| s == Severity::Info),
        worst: r.worst(),
        exit_code: r.exit_code(),
        window_s: Fixed3(r.window_s),
        netns: r.netns,
        summary: Summary {
            sockets: r.sockets.len(),
            states: StateCounts(r.state_counts()),
            transitions: obs.transitions,
            connections_closed: obs.closed,
            lost_ring_full: r.kernel.ring_full,
            lost_recursion: r.kernel.recursion_misses,
            connections_evicted: obs.evicted(),
            ends_not_kept: obs.ended_overflow,
        },
        settings: Settings(r.settings),
        findings: r.findings,
    };
    // Serializing our own records to a String cannot fail (no I/O, no non-string keys).
    let mut out = serde_json::to_string(&record).unwrap_or_default();
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_three_decimals_and_non_finite_ones_are_null() {
        let v = |x: f64| serde_json::to_string(&Fixed3(x)).unwrap();
        assert_eq!(v(45.0), "45.000");
        assert_eq!(v(21.6), "21.600");
        assert_eq!(v(f64::NAN), "null");
        assert_eq!(v(f64::INFINITY), "null");
        let facts = [
            ("n", Fact::Count(3)),
            ("x", Fact::Number(f64::NAN)),
            ("t", Fact::Text("a\"b".into())),
        ];
        let json = serde_json::to_string(&Pairs(&facts)).unwrap();
        assert_eq!(json, r#"{"n":3,"x":null,"t":"a\"b"}"#);
        serde_json::from_str::<serde_json::Value>(&json).unwrap();
    }
}
