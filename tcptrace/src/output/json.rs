//! The JSON contracts of `tail`, `life` and `doctor`: each record is a `#[derive(Serialize)]`
//! struct whose fields, in order, are the documented keys (README), written by serde_json.

use std::io;
use std::net::IpAddr;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

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
    local_addr: IpAddr,
    local_port: u16,
    remote_addr: IpAddr,
    remote_port: u16,
    from: TcpState,
    to: TcpState,
    dwell_ns: Option<u64>,
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
        local_addr: e.local_ip,
        local_port: e.local_port,
        remote_addr: e.remote_ip,
        remote_port: e.remote_port,
        from: t.old,
        to: t.new,
        dwell_ns: t.in_old_ns,
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
    start_time: Option<Rfc3339>,
    end_time: Rfc3339,
    end_ts_ns: u64,
    cookie: u64,
    family: Family,
    socket_family: Family,
    local_addr: IpAddr,
    local_port: u16,
    remote_addr: IpAddr,
    remote_port: u16,
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
    tx_bytes: Option<u64>,
    rx_bytes: Option<u64>,
    retransmits: Option<u32>,
    srtt_us: Option<u32>,
    rttvar_us: Option<u32>,
    closed_by: ClosedBy,
    end: &'static str,
    time_wait_state: Option<TcpState>,
    time_wait_ns: Option<u64>,
    time_wait_confirmed: Option<bool>,
    time_wait_ended: Option<bool>,
}

/// Writes one `life` JSON object (without the newline) to `out`, replacing it.
pub fn connection(clock: &WallClock, c: &Connection, out: &mut Vec<u8>) -> io::Result<()> {
    out.clear();
    let e = &c.endpoints;
    let end_ns = c.closed_ns.unwrap_or(c.state_since_ns);
    let record = ConnectionRecord {
        start_time: c.start_ns().map(|ns| clock.rfc3339(ns)),
        end_time: clock.rfc3339(end_ns),
        end_ts_ns: end_ns,
        cookie: c.cookie,
        family: e.family,
        socket_family: e.socket_family,
        local_addr: e.local_ip,
        local_port: e.local_port,
        remote_addr: e.remote_ip,
        remote_port: e.remote_port,
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
        tx_bytes: c.tx_bytes(),
        rx_bytes: c.rx_bytes(),
        retransmits: c.carried.map(|x| x.retransmits),
        srtt_us: c.carried.and_then(|x| x.srtt_us),
        rttvar_us: c.carried.and_then(|x| x.rttvar_us),
        closed_by: c.closed_by,
        end: c.end.map_or("unknown", |e| e.name()),
        time_wait_state: c.time_wait.map(|tw| tw.substate),
        time_wait_ns: c.time_wait_ns(),
        time_wait_confirmed: c.time_wait.map(|tw| tw.confirmed),
        time_wait_ended: c.time_wait.map(|tw| tw.complete),
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

/// `(name, value)` pairs as one JSON object, in order. An address is `NAME_addr`; an
/// endpoint is `NAME_addr` and `NAME_port`, a string and a number.
struct Facts<'a>(&'a [(&'static str, Fact)]);

impl Facts<'_> {
    fn write<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        for (key, value) in self.0 {
            match value {
                Fact::Count(n) => map.serialize_entry(key, n)?,
                Fact::Number(x) => map.serialize_entry(key, &Fixed3(*x))?,
                Fact::Text(t) => map.serialize_entry(key, t)?,
                Fact::Addr(a) => map.serialize_entry(&format!("{key}_addr"), a)?,
                Fact::Endpoint(e) => {
                    map.serialize_entry(&format!("{key}_addr"), &e.ip())?;
                    map.serialize_entry(&format!("{key}_port"), &e.port())?;
                }
            }
        }
        Ok(())
    }
}

impl Serialize for Facts<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        self.write(&mut map)?;
        map.end()
    }
}

impl Serialize for Group {
    /// The labels, then `count` and, when known, `oldest_s`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        Facts(&self.labels).write(&mut map)?;
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
    local_addr: IpAddr,
    local_port: u16,
    remote_addr: IpAddr,
    remote_port: u16,
    age_s: Option<Fixed3>,
    pid: Option<u32>,
    comm: Option<&'a str>,
}

impl Serialize for Example {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ExampleRecord {
            state: self.state,
            local_addr: self.local.ip(),
            local_port: self.local.port(),
            remote_addr: self.remote.ip(),
            remote_port: self.remote.port(),
            age_s: self.age_s.map(Fixed3),
            pid: self.owner.as_ref().map(|p| p.pid),
            comm: self.owner.as_ref().map(|p| p.comm.as_str()),
        }
        .serialize(s)
    }
}

/// A kernel setting's value: a number (`60`), numbers (`[32768, 60999]`), else the text.
struct SettingValue<'a>(&'a str);

impl Serialize for SettingValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let numbers: Option<Vec<i64>> = self.0.split_whitespace().map(|w| w.parse().ok()).collect();
        match numbers.as_deref() {
            Some([n]) => s.serialize_i64(*n),
            Some(ns) if !ns.is_empty() => s.collect_seq(ns),
            _ => s.serialize_str(self.0),
        }
    }
}

/// Settings as `{"name": value}`, in order.
struct Settings<'a>(Vec<(&'a str, &'a str)>);

impl Serialize for Settings<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|&(k, v)| (k, SettingValue(v))))
    }
}

#[derive(Serialize)]
struct FindingRecord<'a> {
    kind: Kind,
    netns: Option<u32>,
    namespace: Option<&'a str>,
    severity: Severity,
    statement: &'a str,
    count: u64,
    evidence: Facts<'a>,
    top: &'a [Group],
    examples: &'a [Example],
    settings: Settings<'a>,
    advice: &'a [String],
}

impl Serialize for Finding {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        FindingRecord {
            kind: self.kind,
            netns: self.netns,
            namespace: self.namespace.as_deref(),
            severity: self.severity,
            statement: &self.statement,
            count: self.count,
            evidence: Facts(&self.facts),
            top: &self.top,
            examples: &self.examples,
            settings: Settings(
                self.settings
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect(),
            ),
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

#[derive(Serialize)]
struct DoctorRecord<'a> {
    time: Rfc3339,
    healthy: bool,
    worst: Option<Severity>,
    exit_code: u8,
    window_s: Fixed3,
    /// The namespace looked at, when it was one.
    netns: Option<u32>,
    namespaces: Vec<NamespaceRecord<'a>>,
    summary: Summary,
    settings: Settings<'a>,
    findings: &'a [Finding],
}

#[derive(Serialize)]
struct NamespaceRecord<'a> {
    netns: Option<u32>,
    name: &'a str,
    sockets: usize,
}

/// `doctor -o json`: one object and a newline.
pub fn doctor(r: &Report<'_>) -> String {
    let obs = r.obs;
    let record = DoctorRecord {
        time: Rfc3339(r.time),
        healthy: r.worst().is_none_or(|s| s == Severity::Info),
        worst: r.worst(),
        exit_code: r.exit_code(),
        window_s: Fixed3(r.window_s),
        netns: r.netns().and_then(|n| n.inode),
        namespaces: r
            .namespaces
            .iter()
            .map(|n| NamespaceRecord {
                netns: n.inode,
                name: &n.name,
                sockets: n.sockets.len(),
            })
            .collect(),
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
        settings: Settings(r.settings().iter().collect()),
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
            ("client", Fact::Addr("10.0.0.2".parse().unwrap())),
            ("server", Fact::Endpoint("[::1]:80".parse().unwrap())),
        ];
        let json = serde_json::to_string(&Facts(&facts)).unwrap();
        assert_eq!(
            json,
            r#"{"n":3,"x":null,"t":"a\"b","client_addr":"10.0.0.2","server_addr":"::1","server_port":80}"#
        );
        serde_json::from_str::<serde_json::Value>(&json).unwrap();
    }

    #[test]
    fn settings_are_numbers_where_they_are() {
        let v = |text: &str| serde_json::to_string(&SettingValue(text)).unwrap();
        assert_eq!(v("60"), "60");
        assert_eq!(v("32768\t60999"), "[32768,60999]");
        assert_eq!(v("-1"), "-1");
        assert_eq!(v("reno cubic"), "\"reno cubic\"");
        assert_eq!(v(""), "\"\"");
    }
}
