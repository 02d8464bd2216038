//! Helpers for the checks of `deploy/`: the real tools (promtool, systemd-analyze,
//! kubernetes-validate) run on the project's files and on copies with a planted mistake.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The workspace root (this crate lives in `<root>/tcptrace`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn deploy(rel: &str) -> PathBuf {
    root().join("deploy").join(rel)
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Self {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("tcptrace-{what}-{}-{seq}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a tool; `program` missing is a clear failure naming what installs it.
pub fn run(program: &str, args: &[&str], installed_by: &str) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}); {installed_by}"))
}

/// stdout and stderr of a finished tool, for messages and "prints nothing" checks.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn promtool(args: &[&str]) -> Output {
    run(
        "promtool",
        args,
        "Debian package `prometheus`; `cargo xtask setup` installs it",
    )
}

/// A tool from the venv `cargo xtask setup` creates (kubernetes-validate, python).
pub fn venv_tool(name: &str) -> PathBuf {
    let path = root().join("target/deploy-venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask setup`",
        path.display()
    );
    path
}

// ---------------------------------------------------------------------------------------------
// PromQL

/// Every metric name an expression selects (`foo`, `foo{...}`, `{__name__="foo"}`).
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    use promql_parser::parser::{Expr, VectorSelector};
    fn selector(vs: &VectorSelector, out: &mut BTreeSet<String>) {
        if let Some(name) = &vs.name {
            out.insert(name.clone());
        }
        for m in &vs.matchers.matchers {
            if m.name == "__name__" {
                out.insert(m.value.clone());
            }
        }
    }
    fn walk(e: &Expr, out: &mut BTreeSet<String>) {
        match e {
            Expr::Aggregate(a) => {
                walk(&a.expr, out);
                if let Some(p) = &a.param {
                    walk(p, out);
                }
            }
            Expr::Unary(u) => walk(&u.expr, out),
            Expr::Binary(b) => {
                walk(&b.lhs, out);
                walk(&b.rhs, out);
            }
            Expr::Paren(p) => walk(&p.expr, out),
            Expr::Subquery(s) => walk(&s.expr, out),
            Expr::VectorSelector(vs) => selector(vs, out),
            Expr::MatrixSelector(m) => selector(&m.vs, out),
            Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, out)),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }
    let expr = promql_parser::parser::parse(expr)?;
    let mut out = BTreeSet::new();
    walk(&expr, &mut out);
    Ok(out)
}

/// Metric families in a text exposition, with the series names a histogram or summary
/// adds (`_bucket`, `_sum`, `_count`).
pub fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        names.insert(name.to_owned());
        if kind == "histogram" || kind == "summary" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

// ---------------------------------------------------------------------------------------------
// The rules file

/// A rule of a Prometheus rules file: (record or alert name, expr).
pub struct Rule {
    pub record: Option<String>,
    pub alert: Option<String>,
    pub expr: String,
}

pub fn rules(yaml: &str) -> Vec<Rule> {
    let docs = yaml_rust2::YamlLoader::load_from_str(yaml).expect("rules YAML");
    let mut out = Vec::new();
    for group in docs[0]["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            out.push(Rule {
                record: rule["record"].as_str().map(str::to_owned),
                alert: rule["alert"].as_str().map(str::to_owned),
                expr: rule["expr"].as_str().expect("expr").to_owned(),
            });
        }
    }
    out
}

pub fn project_rules() -> Vec<Rule> {
    rules(&read(&deploy("prometheus/tcptrace.rules.yml")))
}

// ---------------------------------------------------------------------------------------------
// The dashboard

/// Every panel, rows' nested panels included.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// (panel title, query) with Grafana's variables replaced by values PromQL accepts.
pub fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((
                    p["title"].as_str().unwrap_or("?").to_owned(),
                    substitute(expr),
                ));
            }
        }
    }
    out
}

/// `$__rate_interval` and friends as a fixed range; `$job` as the rules' job; every other
/// variable as a regex that matches anything.
pub fn substitute(expr: &str) -> String {
    let mut s = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("\"$job\"", "\"tcptrace\"");
    for var in ["$instance", "$state"] {
        s = s.replace(var, ".*");
    }
    s
}

/// What is wrong with the dashboard's structure (empty when nothing).
pub fn dashboard_problems(dashboard: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let vars = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    match var("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        _ => problems.push("no Prometheus datasource variable named `datasource`".into()),
    }
    match var("instance") {
        Some(v) if v["type"] == "query" && v["includeAll"] == true => {}
        _ => problems.push("no `instance` query variable with an All option".into()),
    }
    let mut ids = BTreeSet::new();
    for p in panels(dashboard) {
        let title = p["title"].as_str().unwrap_or("?");
        match p["id"].as_u64() {
            Some(id) if !ids.insert(id) => {
                problems.push(format!("panel id {id} repeats ({title})"))
            }
            Some(_) => {}
            None => problems.push(format!("panel `{title}` has no id")),
        }
        if p["type"] == "row" {
            continue;
        }
        if p["datasource"]["uid"] != "${datasource}" {
            problems.push(format!(
                "panel `{title}` does not use the datasource variable"
            ));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel `{title}` has no query"));
        }
        for t in targets {
            if t["datasource"]["uid"] != "${datasource}" {
                problems.push(format!(
                    "a query of `{title}` does not use the datasource variable"
                ));
            }
        }
    }
    problems
}

/// Metric names the dashboard or the rules use that are neither exported by tcptrace
/// (`exported`), nor recorded by the project's rules, nor Prometheus' own `up`.
pub fn unknown_metrics(
    queries: &[(String, String)],
    exported: &BTreeSet<String>,
    recorded: &BTreeSet<String>,
) -> Vec<String> {
    let mut unknown = Vec::new();
    for (title, expr) in queries {
        let names = metric_names(expr).unwrap_or_else(|e| panic!("`{title}`: {expr}: {e}"));
        for name in names {
            if name != "up" && !exported.contains(&name) && !recorded.contains(&name) {
                unknown.push(format!("{title}: {name}"));
            }
        }
    }
    unknown
}

pub fn project_dashboard() -> Value {
    serde_json::from_str(&read(&deploy("grafana/tcptrace.json"))).expect("dashboard JSON")
}

/// The dashboard's queries as a rules file of recording rules, for `promtool check rules`.
pub fn queries_as_rules(queries: &[(String, String)]) -> String {
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        // A JSON string is a valid YAML double-quoted scalar.
        let quoted = serde_json::to_string(expr).unwrap();
        yaml.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {quoted}\n"
        ));
    }
    yaml
}
