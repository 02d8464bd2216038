//! `doctor`'s human report: the summary line, each finding with its evidence, groups,
//! examples, settings and advice, and the `--explain` text.

use std::fmt::Write as _;

use crate::diagnosis::window::Observations;
use crate::diagnosis::{Finding, Kind, STATES_EXPLAINED, Severity};
use crate::host::stack::Settings;
use crate::kernel::loader::KernelCounters;
use crate::model::snapshot::{DiagSocket, Namespace};
use crate::model::tcp::TcpState;

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
risk now).\nExit code: 0 OK (healthy or info only), 1 WARNING, 2 CRITICAL, 3 UNKNOWN (doctor could \
not run).\n",
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
    /// When the window ended (the end snapshot).
    pub time: jiff::Timestamp,
    pub findings: &'a [Finding],
    pub sockets: &'a [DiagSocket],
    /// The namespaces the snapshots covered.
    pub namespaces: &'a [Namespace],
    pub obs: &'a Observations,
    pub kernel: KernelCounters,
    pub window_s: f64,
}

static NO_SETTINGS: std::sync::LazyLock<Settings> = std::sync::LazyLock::new(Settings::default);

impl Report<'_> {
    /// The one namespace looked at, when it was one.
    pub fn netns(&self) -> Option<&Namespace> {
        match self.namespaces {
            [one] => Some(one),
            _ => None,
        }
    }

    /// The settings shown: those of the one namespace looked at, else the host's.
    pub fn settings(&self) -> &Settings {
        self.netns()
            .or_else(|| self.namespaces.iter().find(|n| n.name == "host"))
            .or(self.namespaces.first())
            .and_then(|n| n.stack.as_ref())
            .map_or(&NO_SETTINGS, |s| &s.settings)
    }

    /// What was looked at, in words: "the host" (every namespace) or one namespace.
    fn scope(&self) -> String {
        match self.netns() {
            Some(ns) if ns.name != "host" => ns.described(),
            Some(_) => "the host".to_owned(),
            None => format!("the host ({} network namespaces)", self.namespaces.len()),
        }
    }

    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    pub fn exit_code(&self) -> u8 {
        Severity::exit_code(self.worst())
    }

    /// Sockets per state, states with none left out.
    pub fn state_counts(&self) -> Vec<(TcpState, u64)> {
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
            "tcptrace doctor: watched {} for {:.1} s: {} sockets ({}), {} transitions, {} connections closed{}",
            self.scope(),
            self.window_s,
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
            let _ = writeln!(out, "\nNo problems found: {} looks healthy.", self.scope());
        }
        for f in self.findings {
            let _ = writeln!(
                out,
                "\n{:<8}  {}: {}",
                f.severity.name().to_uppercase(),
                f.kind.name(),
                f.statement
            );
            if self.netns().is_none()
                && let Some(ns) = &f.namespace
            {
                let inode = f
                    .netns
                    .map_or_else(String::new, |i| format!(" (netns {i})"));
                let _ = writeln!(out, "  in        {ns}{inode}");
            }
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
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnosis::{Example, Fact, Group};
    use crate::host::owners::ProcessName;

    fn finding(severity: Severity) -> Finding {
        Finding {
            kind: Kind::CloseWaitLeak,
            netns: None,
            namespace: None,
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

    /// A namespace named `name` whose settings are `settings`.
    fn namespace(name: &str, inode: u32, settings: &Settings) -> Namespace {
        Namespace {
            inode: Some(inode),
            name: name.into(),
            path: None,
            sockets: 0..0,
            stack: Some(crate::model::snapshot::Stack {
                counters: Default::default(),
                settings: settings.clone(),
            }),
        }
    }

    fn report<'a>(
        findings: &'a [Finding],
        obs: &'a Observations,
        namespaces: &'a [Namespace],
    ) -> Report<'a> {
        Report {
            time: jiff::Timestamp::UNIX_EPOCH,
            findings,
            sockets: &[],
            namespaces,
            obs,
            kernel: KernelCounters::default(),
            window_s: 5.0,
        }
    }

    #[test]
    fn json_report_is_valid_and_complete() {
        let obs = Observations::new(10);
        let settings = Settings::from_pairs(&[("net.ipv4.tcp_fin_timeout", "60")]);
        let findings = [finding(Severity::Critical), finding(Severity::Info)];
        let host = [namespace("host", 4026531840, &settings)];
        let r = report(&findings, &obs, &host);
        let v: serde_json::Value = serde_json::from_str(&crate::output::json::doctor(&r)).unwrap();
        assert_eq!(v["healthy"], false);
        assert_eq!(v["worst"], "critical");
        assert_eq!(v["exit_code"], 2);
        assert_eq!(v["settings"]["net.ipv4.tcp_fin_timeout"], 60);
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
        let host = [namespace("host", 4026531840, &settings)];
        let healthy = report(&[], &obs, &host);
        assert_eq!(healthy.exit_code(), 0);
        let text = healthy.text();
        assert!(text.contains("the host looks healthy"), "{text}");
        assert!(!text.contains("counts may be low"), "{text}");
        let lossy = Report {
            kernel: KernelCounters {
                recursion_misses: 3,
                ..KernelCounters::default()
            },
            ..report(&[], &obs, &host)
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
        let sick = report(&findings, &obs, &host);
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
    fn each_namespace_is_named_where_it_matters() {
        let obs = Observations::new(10);
        let settings = Settings::default();
        let blue = [namespace("blue", 7, &settings)];
        let text = report(&[], &obs, &blue).text();
        assert!(
            text.contains("watched network namespace blue for 5.0 s"),
            "{text}"
        );
        assert!(
            text.contains("network namespace blue looks healthy"),
            "{text}"
        );
        let all = [
            namespace("host", 1, &settings),
            namespace("blue", 7, &settings),
        ];
        let mut f = finding(Severity::Warning);
        f.netns = Some(7);
        f.namespace = Some("blue".into());
        let findings = [f];
        let text = report(&findings, &obs, &all).text();
        assert!(text.contains("the host (2 network namespaces)"), "{text}");
        assert!(text.contains("  in        blue (netns 7)"), "{text}");
        let v: serde_json::Value =
            serde_json::from_str(&crate::output::json::doctor(&report(&findings, &obs, &all)))
                .unwrap();
        assert_eq!(v["findings"][0]["netns"], 7);
        assert_eq!(v["findings"][0]["namespace"], "blue");
        assert_eq!(v["namespaces"][1]["name"], "blue");
        assert_eq!(v["netns"], serde_json::Value::Null);
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
