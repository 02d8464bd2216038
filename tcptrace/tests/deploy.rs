//! The files in `deploy/`, checked by the real tools: `promtool check rules` and `promtool test
//! rules` (Prometheus rules and the dashboard's queries), `systemd-analyze verify` and
//! `security` (the unit), `kubernetes-validate --strict` and the Prometheus Operator's models
//! (the manifests). Each check also runs on a copy with a planted mistake and must fail there.
//! No root needed, but the tools `cargo xtask setup` installs; `cargo xtask test` runs these
//! with `--ignored`.

mod deploykit;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use deploykit::{
    Scratch, dashboard_problems, dashboard_queries, deploy, project_dashboard, project_rules,
    promtool, queries_as_rules, read, run, text, venv_tool,
};

fn check_rules(path: &Path) -> (bool, String) {
    let out = promtool(&["check", "rules", &path.to_string_lossy()]);
    (out.status.success(), text(&out))
}

fn test_rules(path: &Path) -> (bool, String) {
    let out = promtool(&["test", "rules", &path.to_string_lossy()]);
    (out.status.success(), text(&out))
}

/// Copies of the rules and their tests in a scratch directory, with `edit` applied to each.
fn planted(
    scratch: &Scratch,
    rules_edit: impl Fn(&str) -> String,
    tests_edit: impl Fn(&str) -> String,
) -> std::path::PathBuf {
    let rules = read(&deploy("prometheus/tcptrace.rules.yml"));
    let tests = read(&deploy("prometheus/tcptrace.rules.test.yml"));
    let (edited_rules, edited_tests) = (rules_edit(&rules), tests_edit(&tests));
    assert!(
        edited_rules != rules || edited_tests != tests,
        "the planted mistake did not apply"
    );
    scratch.write("tcptrace.rules.yml", &edited_rules);
    scratch.write("tcptrace.rules.test.yml", &edited_tests)
}

/// Alerts of the rules file that lack a test case where they fire and one where they do not.
fn untested_alerts(rules_yaml: &str, tests_yaml: &str) -> Vec<String> {
    let tests = yaml_rust2::YamlLoader::load_from_str(tests_yaml).expect("tests YAML");
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for case in tests[0]["tests"].as_vec().expect("tests") {
        for t in case["alert_rule_test"].as_vec().into_iter().flatten() {
            let name = t["alertname"].as_str().expect("alertname").to_owned();
            if t["exp_alerts"].as_vec().is_some_and(|a| !a.is_empty()) {
                fires.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    deploykit::rules(rules_yaml)
        .into_iter()
        .filter_map(|r| r.alert)
        .filter(|a| !fires.contains(a) || !quiet.contains(a))
        .collect()
}

#[test]
#[ignore = "needs the tools `cargo xtask setup` installs; run by `cargo xtask test`"]
fn prometheus_rules_pass_promtool_and_every_alert_is_tested() {
    let (ok, report) = check_rules(&deploy("prometheus/tcptrace.rules.yml"));
    assert!(ok && report.contains("SUCCESS"), "{report}");
    let (ok, report) = test_rules(&deploy("prometheus/tcptrace.rules.test.yml"));
    assert!(ok && report.contains("SUCCESS"), "{report}");
    let untested = untested_alerts(
        &read(&deploy("prometheus/tcptrace.rules.yml")),
        &read(&deploy("prometheus/tcptrace.rules.test.yml")),
    );
    assert!(
        untested.is_empty(),
        "alerts without a firing and a quiet test: {untested:?}"
    );
    assert!(
        project_rules().iter().filter(|r| r.alert.is_some()).count() >= 7,
        "the rules lost alerts"
    );
}

#[test]
#[ignore = "needs the tools `cargo xtask setup` installs; run by `cargo xtask test`"]
fn promtool_catches_planted_rule_mistakes() {
    // A PromQL syntax error.
    let scratch = Scratch::new("rules-syntax");
    planted(
        &scratch,
        |r| {
            r.replacen(
                "(rate(tcptrace_transitions_total",
                "(rate((tcptrace_transitions_total",
                1,
            )
        },
        str::to_owned,
    );
    let (ok, report) = check_rules(&scratch.path("tcptrace.rules.yml"));
    assert!(!ok, "promtool accepted a syntax error: {report}");

    // A test expecting the leak on the wrong host.
    let scratch = Scratch::new("rules-expectation");
    let tests = planted(&scratch, str::to_owned, |t| {
        t.replacen(
            "instance: a:9850\n              kind: close_wait_leak",
            "instance: b:9850\n              kind: close_wait_leak",
            1,
        )
    });
    let (ok, report) = test_rules(&tests);
    assert!(!ok, "promtool passed a wrong expectation: {report}");

    // The CLOSE_WAIT alert without its pending period fires too early for its test.
    let scratch = Scratch::new("rules-for");
    let tests = planted(
        &scratch,
        |r| {
            r.replacen(
                "kind=\"close_wait_leak\"} > 0\n        for: 5m",
                "kind=\"close_wait_leak\"} > 0\n        for: 1m",
                1,
            )
        },
        str::to_owned,
    );
    let (ok, report) = test_rules(&tests);
    assert!(
        !ok,
        "promtool passed an alert that fires too early: {report}"
    );

    // An alert nobody tests.
    let rules = read(&deploy("prometheus/tcptrace.rules.yml")).replacen(
        "      - alert: TcptraceAgentDown",
        "      - alert: TcptraceUntested\n        expr: vector(1)\n      - alert: TcptraceAgentDown",
        1,
    );
    let untested = untested_alerts(&rules, &read(&deploy("prometheus/tcptrace.rules.test.yml")));
    assert_eq!(untested, ["TcptraceUntested"]);
}

/// A root for `systemd-analyze --root`: the host's system units (for the targets the unit
/// names), `unit` as tcptrace.service, and the agent as /usr/bin/tcptrace.
fn systemd_root(unit: &str) -> Scratch {
    let scratch = Scratch::new("systemd-root");
    let units = scratch.path("usr/lib/systemd/system");
    std::fs::create_dir_all(units.parent().unwrap()).unwrap();
    let ok = std::process::Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(&units)
        .status()
        .unwrap()
        .success();
    assert!(ok, "copy the system units (Debian package `systemd`)");
    std::os::unix::fs::symlink("usr/lib", scratch.path("lib")).unwrap();
    scratch.write("usr/lib/systemd/system/tcptrace.service", unit);
    let bin = scratch.path("usr/bin/tcptrace");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_tcptrace"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    // ExecReload's /bin/kill, as a merged-/usr Debian has it (procps).
    std::os::unix::fs::symlink("usr/bin", scratch.path("bin")).unwrap();
    std::fs::copy("/usr/bin/kill", scratch.path("usr/bin/kill")).unwrap();
    scratch
}

fn systemd_analyze(args: &[&str]) -> (bool, String) {
    let out = run(
        "systemd-analyze",
        args,
        "Debian package `systemd`; `cargo xtask setup` installs it",
    );
    (out.status.success(), text(&out))
}

fn verify(unit: &str) -> (bool, String) {
    let root = systemd_root(unit);
    systemd_analyze(&[
        "verify",
        &format!("--root={}", root.0.display()),
        "tcptrace.service",
    ])
}

/// The overall exposure level `systemd-analyze security` gives the unit, e.g. "3.3 OK".
fn exposure(unit: &str) -> String {
    let root = systemd_root(unit);
    let (ok, report) = systemd_analyze(&[
        "security",
        "--offline=true",
        &format!("--root={}", root.0.display()),
        "--no-pager",
        "tcptrace.service",
    ]);
    assert!(ok, "{report}");
    report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for tcptrace.service:"))
        .map(|(_, level)| level.trim().to_owned())
        .unwrap_or_else(|| panic!("no exposure level in: {report}"))
}

#[test]
#[ignore = "needs the tools `cargo xtask setup` installs; run by `cargo xtask test`"]
fn systemd_unit_verifies_clean_and_is_hardened() {
    let unit = read(&deploy("systemd/tcptrace.service"));
    let (ok, report) = verify(&unit);
    assert!(
        ok && report.trim().is_empty(),
        "systemd-analyze verify: {report}"
    );
    let level = exposure(&unit);
    assert!(
        level.contains("OK") || level.contains("SAFE"),
        "exposure {level}"
    );

    // A misspelt directive is reported (systemd ignores it, so the unit would run unhardened).
    let (_, report) = verify(&unit.replacen("ProtectHome=yes", "ProtectHom=yes", 1));
    assert!(report.contains("Unknown key"), "{report}");
    // Without the sandboxing, the exposure is no longer OK.
    let bare: String = unit
        .lines()
        .filter(|l| {
            !l.starts_with("Protect") && !l.starts_with("Restrict") && !l.starts_with("Private")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let level = exposure(&bare);
    assert!(
        !level.contains("OK") && !level.contains("SAFE"),
        "exposure {level}"
    );
}

fn kubernetes_validate(files: &[&Path]) -> (bool, String) {
    let tool = venv_tool("kubernetes-validate");
    let mut args = vec!["--strict".to_owned(), "--quiet".to_owned()];
    args.extend(files.iter().map(|f| f.to_string_lossy().into_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&tool.to_string_lossy(), &args, "run `cargo xtask setup`");
    (out.status.success(), text(&out))
}

fn check_monitoring(files: &[&Path]) -> (bool, String) {
    let python = venv_tool("python");
    let script = deploykit::root().join("xtask/py/check_monitoring_resources.py");
    let mut args = vec![script.to_string_lossy().into_owned()];
    args.extend(files.iter().map(|f| f.to_string_lossy().into_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&python.to_string_lossy(), &args, "run `cargo xtask setup`");
    (out.status.success(), text(&out))
}

#[test]
#[ignore = "needs the tools `cargo xtask setup` installs; run by `cargo xtask test`"]
fn kubernetes_manifests_validate_strictly() {
    let workloads = deploy("kubernetes/tcptrace.yaml");
    let monitoring = [
        deploy("kubernetes/servicemonitor.yaml"),
        deploy("kubernetes/prometheusrule.yaml"),
    ];
    // Every manifest is checked by one of the two validators.
    let mut listed: Vec<String> = std::fs::read_dir(deploy("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "prometheusrule.yaml",
            "servicemonitor.yaml",
            "tcptrace.yaml"
        ]
    );

    let (ok, report) = kubernetes_validate(&[&workloads]);
    assert!(
        ok && report.trim().is_empty(),
        "kubernetes-validate: {report}"
    );
    let (ok, report) = check_monitoring(&[&monitoring[0], &monitoring[1]]);
    assert!(ok && report.trim().is_empty(), "{report}");

    // Planted typos: a misspelt DaemonSet field, a misspelt relabeling field, a rule
    // without its expression's key.
    let scratch = Scratch::new("kubernetes");
    let typo = |path: &Path, from: &str, to: &str, name: &str| {
        let text = read(path);
        assert!(text.contains(from), "{from} not in {}", path.display());
        scratch.write(name, &text.replacen(from, to, 1))
    };
    let ds = typo(&workloads, "hostPID: true", "hostPid: true", "ds.yaml");
    let (ok, report) = kubernetes_validate(&[&ds]);
    assert!(!ok && report.contains("hostPid"), "{report}");
    let sm = typo(&monitoring[0], "targetLabel:", "targetLable:", "sm.yaml");
    let (ok, report) = check_monitoring(&[&sm]);
    assert!(!ok && report.contains("targetLable"), "{report}");
    let pr = typo(
        &monitoring[1],
        "          expr: ",
        "          exp: ",
        "pr.yaml",
    );
    let (ok, report) = check_monitoring(&[&pr]);
    assert!(!ok && report.contains("exp"), "{report}");
    // A built-in kind is not a monitoring resource: the checker does not wave it through.
    let (ok, report) = check_monitoring(&[&workloads]);
    assert!(!ok && report.contains("Namespace"), "{report}");
}

#[test]
#[ignore = "needs the tools `cargo xtask setup` installs; run by `cargo xtask test`"]
fn dashboard_queries_pass_promtool_and_its_structure_is_sound() {
    let dashboard = project_dashboard();
    let problems = dashboard_problems(&dashboard);
    assert!(problems.is_empty(), "{problems:#?}");
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let scratch = Scratch::new("dashboard");
    let (ok, report) = check_rules(&scratch.write("queries.yml", &queries_as_rules(&queries)));
    assert!(ok, "the dashboard's queries as rules: {report}");

    // A broken query fails promtool.
    let mut broken = queries;
    broken[3].1.push(')');
    let (ok, report) = check_rules(&scratch.write("broken.yml", &queries_as_rules(&broken)));
    assert!(!ok, "promtool accepted {}: {report}", broken[3].1);

    // A repeated panel id and a missing datasource variable are found.
    let mut bad = dashboard;
    let panels = bad["panels"].as_array_mut().unwrap();
    let first = panels[1]["id"].clone();
    panels[2]["id"] = first;
    bad["templating"]["list"]
        .as_array_mut()
        .unwrap()
        .retain(|v| v["name"] != "datasource");
    let problems = dashboard_problems(&bad);
    assert!(
        problems.iter().any(|p| p.contains("repeats"))
            && problems.iter().any(|p| p.contains("datasource variable")),
        "{problems:#?}"
    );
}
