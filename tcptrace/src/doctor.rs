//! `tcptrace doctor`: snapshot, watch transitions for a while, snapshot again, and report the
//! TCP pathologies found ([`crate::diagnosis`]) with evidence and advice.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use crate::Shutdown;
use crate::cli::{DoctorArgs, DoctorFormat};
use crate::diagnosis::{
    self, Baseline, Fact, Finding, Kind, LazyOwners, Observations, STATES_EXPLAINED, Scene,
    Severity,
};
use crate::format::json_string;
use crate::host::{Settings, TcpCounters};
use crate::inet_diag::{self, DiagSocket};
use crate::loader::{KernelCounters, Tracer};
use crate::pipeline::{Pipeline, RunOptions, monotonic_ns};
use crate::state::TcpState;

/// Sockets the observations remember at once.
const OBSERVED_SOCKETS: usize = 262_144;

/// A snapshot of one namespace: its sockets, counters and settings, read together.
pub struct Snapshot {
    pub sockets: Vec<DiagSocket>,
    pub taken_ns: u64,
    pub counters: TcpCounters,
    pub settings: Settings,
}

impl Snapshot {
    /// Takes it in the namespace at `netns` (here when `None`).
    pub fn take(netns: Option<&Path>, idle: bool) -> anyhow::Result<Self> {
        let result = crate::in_netns(netns, || {
            let taken_ns = monotonic_ns();
            let sockets = if idle {
                inet_diag::dump_tcp_with_idle()
            } else {
                inet_diag::dump_tcp()
            };
            sockets.map(|sockets| Self {
                sockets,
                taken_ns,
                counters: TcpCounters::read(),
                settings: Settings::read(),
            })
        });
        let where_ = netns.map_or_else(String::new, |p| format!(" in {}", p.display()));
        result
            .with_context(|| format!("cannot enter the network namespace{where_}"))?
            .with_context(|| format!("INET_DIAG socket dump{where_} failed"))
    }
}

/// A path to the namespace with inode `inode`: some process's `/proc/PID/ns/net`.
fn netns_path_of(inode: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        e.file_name().to_str()?.parse::<u32>().ok()?;
        let path = e.path().join("ns/net");
        (std::fs::metadata(&path).ok()?.ino() as u32 == inode).then_some(path)
    })
}

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    if args.explain {
        print!("{}", explain());
        return Ok(ExitCode::SUCCESS);
    }
    let filter = args.filter.to_filter()?;
    let netns_path = match (&args.filter.netns_path, filter.netns) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(inode)) if Some(inode) != crate::own_netns() => {
            Some(netns_path_of(inode).with_context(|| {
                format!("no process is in network namespace {inode}; pass --netns-path instead")
            })?)
        }
        _ => None,
    };
    let thresholds = args.thresholds.to_thresholds();
    let (tracer, ring) = Tracer::start(&filter.kernel(), args.kernel.sizes())?;
    let runtime = crate::runtime()?;
    let shutdown = Shutdown::register(&runtime)?;
    let start = Snapshot::take(netns_path.as_deref(), false)?;
    eprintln!(
        "tcptrace: watching TCP for {} (Ctrl-C to stop early)",
        diagnosis::human(args.duration)
    );
    let mut obs = Observations::new(OBSERVED_SOCKETS);
    let mut pipeline = Pipeline::new(&filter);
    pipeline.identity(tracer.identity(), filter.netns.or_else(crate::own_netns));
    pipeline.subscribe(Box::new(&mut obs));
    runtime
        .block_on(pipeline.run(
            ring,
            shutdown.wait(Some(args.duration)),
            RunOptions::default(),
        ))
        .context("reading transitions failed")?;
    let mut end = Snapshot::take(netns_path.as_deref(), true)?;
    pipeline.match_ids(&mut end.sockets, end.taken_ns);
    drop(pipeline);
    let kernel = tracer.counters();

    let mut owners = LazyOwners::default();
    let baseline = Baseline::new(
        &diagnosis::filter_sockets(&filter, &start.sockets, &obs, &mut owners),
        start.taken_ns,
        start.counters,
    );
    let sockets = diagnosis::filter_sockets(&filter, &end.sockets, &obs, &mut owners);
    let scene = Scene {
        sockets: &sockets,
        taken_ns: end.taken_ns,
        counters: &end.counters,
        settings: &end.settings,
        baseline: &baseline,
    };
    let findings = diagnosis::diagnose(&scene, &obs, &mut owners, &thresholds);
    let report = Report {
        findings: &findings,
        sockets: &sockets,
        settings: &end.settings,
        obs: &obs,
        kernel,
        window_s: (end.taken_ns.saturating_sub(start.taken_ns)) as f64 / 1e9,
        netns: filter.netns.or_else(crate::own_netns),
    };
    let text = match args.output {
        DoctorFormat::Text => report.text(),
        DoctorFormat::Json => report.json(),
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(anyhow::Error::new(e).context("cannot write the report"));
    }
    Ok(ExitCode::from(report.exit_code()))
}

/// `doctor --explain`: the states and every finding, in words.
pub fn explain() -> String {
    let mut out = String::from("TCP states (as tcptrace and ss name them):\n");
    for (state, meaning) in STATES_EXPLAINED {
        let _ = writeln!(out, "  {state:<12} {meaning}");
    }
    out.push_str("\nFindings (kind, then how tcptrace decides and what it means):\n");
    for kind in Kind::ALL {
        let _ = write!(out, "\n{}\n{}", kind.name(), wrap(kind.explain(), 2, 92));
    }
    out.push_str(
        "\nSeverities: info (worth knowing), warning (a problem to fix), critical (service at \
risk now).\nExit code: 0 healthy or info only, 1 warnings, 2 critical.\n",
    );
    out
}

/// `k=v k=v ...` for the text report.
fn key_values<V: std::fmt::Display>(pairs: &[(&str, V)]) -> String {
    let words: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    words.join(" ")
}

fn wrap(text: &str, indent: usize, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent + line.len() + 1 + word.len() > width {
            let _ = writeln!(out, "{:indent$}{line}", "");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        let _ = writeln!(out, "{:indent$}{line}", "");
    }
    out
}

/// A finished diagnosis, ready to print.
pub struct Report<'a> {
    pub findings: &'a [Finding],
    pub sockets: &'a [DiagSocket],
    pub settings: &'a Settings,
    pub obs: &'a Observations,
    pub kernel: KernelCounters,
    pub window_s: f64,
    pub netns: Option<u32>,
}

impl Report<'_> {
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    pub fn exit_code(&self) -> u8 {
        Severity::exit_code(self.worst())
    }

    fn state_counts(&self) -> Vec<(TcpState, u64)> {
        TcpState::ALL
            .iter()
            .map(|&st| {
                (
                    st,
                    self.sockets.iter().filter(|s| s.state == st).count() as u64,
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Why counts may be low, when they may be.
    fn incomplete(&self) -> String {
        let mut why = Vec::new();
        match self.kernel.ring_full + self.kernel.recursion_misses {
            0 => {}
            n => why.push(format!("{n} transitions lost in the kernel")),
        }
        match self.obs.evicted() {
            0 => {}
            n => why.push(format!(
                "{n} connections dropped from the full connection table"
            )),
        }
        match self.obs.ended_overflow {
            0 => {}
            n => why.push(format!("{n} connection ends beyond what one window keeps")),
        }
        if why.is_empty() {
            String::new()
        } else {
            format!(" ({}: counts may be low)", why.join(", "))
        }
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let states: Vec<String> = self
            .state_counts()
            .iter()
            .map(|(st, n)| format!("{} {n}", st.name()))
            .collect();
        let _ = writeln!(
            out,
            "tcptrace doctor: watched {:.1} s{}: {} sockets ({}), {} transitions, {} connections closed{}",
            self.window_s,
            self.netns
                .map_or_else(String::new, |n| format!(" in netns {n}")),
            self.sockets.len(),
            if states.is_empty() {
                "none".to_owned()
            } else {
                states.join(", ")
            },
            self.obs.transitions,
            self.obs.closed,
            self.incomplete()
        );
        if self.findings.iter().all(|f| f.severity == Severity::Info) {
            out.push_str("\nNo problems found: the host looks healthy.\n");
        }
        for f in self.findings {
            let _ = writeln!(
                out,
                "\n{:<8}  {}: {}",
                f.severity.name().to_uppercase(),
                f.kind.name(),
                f.statement
            );
            let _ = writeln!(out, "  evidence  {}", key_values(&f.facts));
            for g in &f.top {
                let oldest = g
                    .oldest_s
                    .map_or_else(String::new, |s| format!(" oldest_s={s:.1}"));
                let _ = writeln!(
                    out,
                    "  top       {} count={}{oldest}",
                    key_values(&g.labels),
                    g.count
                );
            }
            for e in &f.examples {
                let owner = e
                    .owner
                    .as_ref()
                    .map_or_else(String::new, |p| format!(" pid={} comm={}", p.pid, p.comm));
                let age = e
                    .age_s
                    .map_or_else(String::new, |a| format!(" age_s={a:.1}"));
                let _ = writeln!(
                    out,
                    "  example   {} {} -> {}{age}{owner}",
                    e.state.name(),
                    e.local,
                    e.remote
                );
            }
            if !f.settings.is_empty() {
                let _ = writeln!(out, "  settings  {}", key_values(&f.settings));
            }
            for a in &f.advice {
                let _ = write!(
                    out,
                    "  advice    {}",
                    wrap(a, 0, 80).replace('\n', "\n            ")
                );
                while out.ends_with(' ') {
                    out.pop();
                }
            }
        }
        let count = |sev| self.findings.iter().filter(|f| f.severity == sev).count();
        let _ = writeln!(
            out,
            "\n{} critical, {} warning, {} info (exit code {})",
            count(Severity::Critical),
            count(Severity::Warning),
            count(Severity::Info),
            self.exit_code()
        );
        out
    }

    pub fn json(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "{{\"healthy\":{},\"worst\":",
            self.worst().is_none_or(|s| s == Severity::Info)
        );
        match self.worst() {
            Some(s) => json_string(s.name(), &mut out),
            None => out.push_str("null"),
        }
        let _ = write!(
            out,
            ",\"exit_code\":{},\"window_s\":{:.3},\"netns\":{},\"summary\":{{\"sockets\":{},\"states\":{{",
            self.exit_code(),
            self.window_s,
            self.netns
                .map_or_else(|| "null".to_owned(), |n| n.to_string()),
            self.sockets.len()
        );
        json_fields(
            self.state_counts()
                .into_iter()
                .map(|(st, n)| (st.name(), n)),
            &mut out,
            |n, out| {
                let _ = write!(out, "{n}");
            },
        );
        let _ = write!(
            out,
            "}},\"transitions\":{},\"connections_closed\":{},\"lost_ring_full\":{},\"lost_recursion\":{},\"connections_evicted\":{},\"ends_not_kept\":{}}},\"settings\":{{",
            self.obs.transitions,
            self.obs.closed,
            self.kernel.ring_full,
            self.kernel.recursion_misses,
            self.obs.evicted(),
            self.obs.ended_overflow,
        );
        json_fields(self.settings.iter(), &mut out, json_string);
        out.push_str("},\"findings\":[");
        json_items(self.findings, &mut out, finding_json);
        out.push_str("]}\n");
        out
    }
}

/// `"key":value` pairs, comma-separated, each value written by `value`.
fn json_fields<K: AsRef<str>, V>(
    pairs: impl IntoIterator<Item = (K, V)>,
    out: &mut String,
    mut value: impl FnMut(V, &mut String),
) {
    for (i, (k, v)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(k.as_ref(), out);
        out.push(':');
        value(v, out);
    }
}

/// The items, comma-separated, each written by `item`.
fn json_items<T>(
    items: impl IntoIterator<Item = T>,
    out: &mut String,
    mut item: impl FnMut(T, &mut String),
) {
    for (i, t) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        item(t, out);
    }
}

fn fact_json(v: &Fact, out: &mut String) {
    match v {
        Fact::Count(n) => {
            let _ = write!(out, "{n}");
        }
        Fact::Number(x) => {
            let _ = write!(out, "{x:.3}");
        }
        Fact::Text(t) => json_string(t, out),
    }
}

fn facts_json(facts: &[(&'static str, Fact)], out: &mut String) {
    json_fields(facts.iter().map(|(k, v)| (k, v)), out, fact_json);
}

fn finding_json(f: &Finding, out: &mut String) {
    out.push_str("{\"kind\":");
    json_string(f.kind.name(), out);
    out.push_str(",\"severity\":");
    json_string(f.severity.name(), out);
    out.push_str(",\"statement\":");
    json_string(&f.statement, out);
    let _ = write!(out, ",\"count\":{},\"evidence\":{{", f.count);
    facts_json(&f.facts, out);
    out.push_str("},\"top\":[");
    json_items(&f.top, out, |g, out| {
        out.push('{');
        facts_json(&g.labels, out);
        let _ = write!(out, ",\"count\":{}", g.count);
        if let Some(s) = g.oldest_s {
            let _ = write!(out, ",\"oldest_s\":{s:.3}");
        }
        out.push('}');
    });
    out.push_str("],\"examples\":[");
    json_items(&f.examples, out, |e, out| {
        let _ = write!(
            out,
            "{{\"state\":\"{}\",\"local\":\"{}\",\"remote\":\"{}\",\"age_s\":",
            e.state.name(),
            e.local,
            e.remote
        );
        match e.age_s {
            Some(a) => {
                let _ = write!(out, "{a:.3}");
            }
            None => out.push_str("null"),
        }
        match &e.owner {
            Some(p) => {
                let _ = write!(out, ",\"pid\":{},\"comm\":", p.pid);
                json_string(&p.comm, out);
            }
            None => out.push_str(",\"pid\":null,\"comm\":null"),
        }
        out.push('}');
    });
    out.push_str("],\"settings\":{");
    json_fields(f.settings.iter().map(|(k, v)| (k, v)), out, |v, out| {
        json_string(v, out)
    });
    out.push_str("},\"advice\":[");
    json_items(&f.advice, out, |a, out| json_string(a, out));
    out.push_str("]}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnosis::{Example, Group};
    use crate::procfs::ProcessName;

    fn finding(severity: Severity) -> Finding {
        Finding {
            kind: Kind::CloseWaitLeak,
            severity,
            statement: "3 socket(s) in \"CLOSE_WAIT\"".into(),
            count: 3,
            facts: vec![
                ("oldest_s", Fact::Number(45.0)),
                ("over_threshold", Fact::Count(3)),
            ],
            top: vec![Group {
                labels: vec![("pid", Fact::Count(7)), ("comm", Fact::Text("srv".into()))],
                count: 3,
                oldest_s: Some(45.0),
            }],
            examples: vec![Example {
                state: TcpState::CloseWait,
                local: "127.0.0.1:80".parse().unwrap(),
                remote: "127.0.0.1:40000".parse().unwrap(),
                age_s: Some(45.0),
                owner: Some(ProcessName {
                    pid: 7,
                    comm: "srv".into(),
                }),
            }],
            settings: vec![("net.ipv4.tcp_fin_timeout", "60".into())],
            advice: vec!["close it".into()],
        }
    }

    fn report<'a>(
        findings: &'a [Finding],
        obs: &'a Observations,
        settings: &'a Settings,
    ) -> Report<'a> {
        Report {
            findings,
            sockets: &[],
            settings,
            obs,
            kernel: KernelCounters::default(),
            window_s: 5.0,
            netns: Some(4026531840),
        }
    }

    #[test]
    fn json_report_is_valid_and_complete() {
        let obs = Observations::new(10);
        let settings = Settings::from_pairs(&[("net.ipv4.tcp_fin_timeout", "60")]);
        let findings = [finding(Severity::Critical), finding(Severity::Info)];
        let r = report(&findings, &obs, &settings);
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(v["healthy"], false);
        assert_eq!(v["worst"], "critical");
        assert_eq!(v["exit_code"], 2);
        assert_eq!(v["settings"]["net.ipv4.tcp_fin_timeout"], "60");
        assert_eq!(v["summary"]["ends_not_kept"], 0);
        assert_eq!(v["summary"]["connections_evicted"], 0);
        let f = &v["findings"][0];
        assert_eq!(f["kind"], "close_wait_leak");
        assert_eq!(f["statement"], "3 socket(s) in \"CLOSE_WAIT\"");
        assert_eq!(f["evidence"]["over_threshold"], 3);
        assert_eq!(f["top"][0]["comm"], "srv");
        assert_eq!(f["examples"][0]["pid"], 7);
        assert_eq!(f["examples"][0]["state"], "CLOSE_WAIT");
        assert_eq!(f["advice"][0], "close it");
    }

    #[test]
    fn text_report_says_healthy_or_lists_findings_with_exit_code() {
        let obs = Observations::new(10);
        let settings = Settings::default();
        let healthy = report(&[], &obs, &settings);
        assert_eq!(healthy.exit_code(), 0);
        let text = healthy.text();
        assert!(text.contains("the host looks healthy"), "{text}");
        assert!(!text.contains("counts may be low"), "{text}");
        let lossy = Report {
            kernel: KernelCounters {
                recursion_misses: 3,
                ..KernelCounters::default()
            },
            ..report(&[], &obs, &settings)
        };
        assert!(
            lossy
                .text()
                .contains("(3 transitions lost in the kernel: counts may be low)")
        );
        assert!(
            text.contains("0 critical, 0 warning, 0 info (exit code 0)"),
            "{text}"
        );
        let findings = [finding(Severity::Warning)];
        let sick = report(&findings, &obs, &settings);
        let text = sick.text();
        assert_eq!(sick.exit_code(), 1);
        assert!(!text.contains("healthy"), "{text}");
        assert!(
            text.contains("WARNING   close_wait_leak: 3 socket(s)"),
            "{text}"
        );
        assert!(
            text.contains("top       pid=7 comm=srv count=3 oldest_s=45.0"),
            "{text}"
        );
        assert!(
            text.contains(
                "example   CLOSE_WAIT 127.0.0.1:80 -> 127.0.0.1:40000 age_s=45.0 pid=7 comm=srv"
            ),
            "{text}"
        );
    }

    #[test]
    fn explain_covers_every_kind() {
        let text = explain();
        for kind in Kind::ALL {
            assert!(
                text.contains(&format!("\n{}\n", kind.name())),
                "{}",
                kind.name()
            );
        }
        assert!(text.lines().all(|l| l.len() <= 100), "wrapped");
    }
}
