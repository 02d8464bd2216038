//! `cargo xtask fuzz`: every fuzz target in `fuzz/` under cargo-fuzz (libFuzzer) on the
//! nightly toolchain, each for a bounded time; `cargo xtask test` runs a short round of each.
//!
//! Built without a sanitizer and with debug assertions (`-s none -a`): tcptrace's parsers are
//! safe Rust over `zerocopy`, so what a run can find is panics, arithmetic overflow and hangs;
//! AddressSanitizer would double the build for no parser that uses `unsafe`. The corpus lives
//! in `target/fuzz/corpus/TARGET` (kept between runs, never committed); a crash is written to
//! `fuzz/artifacts/TARGET/` and fails the run: turn it into a unit test.

use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{display, workspace_root};

/// The targets in `fuzz/Cargo.toml`, and what each feeds.
pub const TARGETS: &[(&str, &str)] = &[
    ("ring_record", "ring-buffer records (kernel::decode)"),
    ("inet_diag", "INET_DIAG netlink responses"),
    ("btf", "the kernel's BTF and the struct sock lookups"),
    (
        "proc_files",
        "fdinfo, sockstat, netstat/snmp, mountinfo, fd links, status",
    ),
    ("cgroup_path", "cgroup paths -> container ids"),
    ("web_config", "--web.config.file YAML"),
    (
        "http_request",
        "Authorization headers and routes after hyper",
    ),
    (
        "cli_values",
        "command lines: filters, addresses, capabilities",
    ),
];

/// Seconds per target in `cargo xtask test`.
pub const SMOKE_SECONDS: u64 = 10;

#[derive(Args, Clone)]
pub struct FuzzArgs {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 300)]
    pub seconds: u64,
    /// Only these targets (repeatable); default: all.
    #[arg(long = "target", value_name = "NAME")]
    pub targets: Vec<String>,
}

pub fn run(args: &FuzzArgs) -> anyhow::Result<ExitCode> {
    crate::setup::cargo_fuzz()?;
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.iter().map(|(t, _)| *t).collect()
    } else {
        for t in &args.targets {
            if !TARGETS.iter().any(|(name, _)| name == t) {
                bail!(
                    "no fuzz target {t} (targets: {})",
                    TARGETS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        args.targets.iter().map(String::as_str).collect()
    };
    let results = fuzz(&targets, args.seconds)?;
    println!("\nxtask: fuzz results ({} s per target):", args.seconds);
    for (target, execs) in &results {
        println!("  {target:<14} {execs:>12} executions, no crash");
    }
    Ok(ExitCode::SUCCESS)
}

fn cargo_fuzz() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace_root())
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .args(["run", crate::setup::NIGHTLY, "cargo", "fuzz"]);
    cmd
}

/// Builds every target once, then runs each for `seconds`; returns (target, executions).
pub fn fuzz(targets: &[&str], seconds: u64) -> anyhow::Result<Vec<(String, u64)>> {
    let started = Instant::now();
    crate::sh(cargo_fuzz().args(["build", "--fuzz-dir", "fuzz", "-s", "none", "-a"]))?;
    println!(
        "xtask: fuzz targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let mut results = Vec::new();
    for target in targets {
        let corpus = workspace_root().join("target/fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("cannot create {}", corpus.display()))?;
        let mut cmd = cargo_fuzz();
        cmd.args(["run", "--fuzz-dir", "fuzz", "-s", "none", "-a", target])
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-print_final_stats=1",
                "-timeout=10",
                "-rss_limit_mb=2048",
            ])
            .stdin(Stdio::null());
        println!("xtask: $ {}", display(&cmd));
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {}", display(&cmd)))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "fuzz target {target} failed ({}); the input is in fuzz/artifacts/{target}/:\n{}",
                out.status,
                tail.join("\n")
            );
        }
        let execs = executions(&stderr).with_context(|| {
            format!("fuzz target {target}: libFuzzer printed no final stats:\n{stderr}")
        })?;
        if execs == 0 {
            bail!("fuzz target {target} ran no input");
        }
        println!("xtask: fuzz {target}: {execs} executions in {seconds} s, no crash");
        results.push(((*target).to_owned(), execs));
    }
    Ok(results)
}

/// `stat::number_of_executed_units: N` from libFuzzer's final stats.
fn executions(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        l.strip_prefix("stat::number_of_executed_units:")
            .and_then(|v| v.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_stats_are_read() {
        let stderr = "INFO: Seed: 1\n#2 INITED\nstat::number_of_executed_units: 123456\nstat::average_exec_per_sec:     12345\n";
        assert_eq!(executions(stderr), Some(123_456));
        assert_eq!(executions("nothing"), None);
    }

    #[test]
    fn every_target_is_in_the_fuzz_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("fuzz/Cargo.toml")).unwrap();
        for (target, _) in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{target}"
            );
        }
        assert_eq!(manifest.matches("[[bin]]").count(), TARGETS.len());
    }
}
