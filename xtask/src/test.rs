//! `cargo xtask test`: the README's test command and what CI runs.

use std::process::{Command, ExitCode};

use anyhow::bail;
use clap::Args;

use crate::{cargo, sh, workspace_root};

#[derive(Args)]
pub struct TestArgs {
    /// Skip `cargo xtask setup` (the toolchain is known to be ready).
    #[arg(long)]
    no_setup: bool,
    /// Stop after the unit tests: no root-only tests against the kernel.
    #[arg(long)]
    unit_only: bool,
}

pub fn run(args: &TestArgs) -> anyhow::Result<ExitCode> {
    if !args.no_setup {
        crate::setup::run()?;
    }
    sh(cargo().args(["fmt", "--all", "--", "--check"]))?;
    sh(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "tcptrace-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    clippy_ebpf()?;
    sh(cargo().args(["test", "--workspace", "--exclude", "tcptrace-ebpf"]))?;
    if args.unit_only {
        return Ok(ExitCode::SUCCESS);
    }
    if !is_root() {
        bail!(
            "the integration tests load eBPF programs and create network namespaces: run `sudo -E cargo xtask test` (or `cargo xtask test --unit-only`)"
        );
    }
    // A short benchmark run: proves `cargo xtask bench` works and that the agent reads every
    // record the kernel sends under churn (timing goals are not asserted here).
    crate::bench::run(&crate::bench::BenchArgs::smoke())?;
    // The static binary, the .deb and the OCI image: tests/package.rs installs and runs them.
    crate::package::run()?;
    // The kernel tests are ignored, with a reason, by plain `cargo test` (they need root);
    // so are the checks of deploy/ (they need the tools setup installs), the package tests
    // and the three-agent fleet test with Prometheus.
    sh(cargo().args([
        "test",
        "--package",
        "tcptrace",
        "--test",
        "*",
        "--",
        "--ignored",
        "--test-threads",
        "2",
    ]))?;
    // Every fuzz target for a few seconds: the decoders still reject garbage without panicking.
    let started = std::time::Instant::now();
    let targets: Vec<&str> = crate::fuzz::TARGETS.iter().map(|(t, _)| *t).collect();
    crate::fuzz::fuzz(&targets, crate::fuzz::SMOKE_SECONDS)?;
    println!(
        "xtask: fuzz smoke took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // A short soak: memory flat after the warm-up, every transition accounted for.
    let started = std::time::Instant::now();
    crate::soak::run(&crate::soak::SoakArgs::smoke())?;
    println!(
        "xtask: soak smoke took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // The same kernel tests inside VMs running other kernels: the oldest supported series
    // and Debian stable's (`cargo xtask vm-test` runs the full matrix).
    if !crate::vm::matrix(&crate::vm::VmArgs::quick())? {
        bail!("the kernel tests failed in a VM (see the FAIL lines above)");
    }
    Ok(ExitCode::SUCCESS)
}

/// The eBPF crate only builds for the bpf target, with the nightly toolchain and `core` built
/// from source; it gets its own clippy pass.
fn clippy_ebpf() -> anyhow::Result<()> {
    let root = workspace_root();
    sh(Command::new("rustup")
        .current_dir(root.join("tcptrace-ebpf"))
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        )
        .args([
            "run",
            crate::setup::NIGHTLY,
            "cargo",
            "clippy",
            "--package",
            "tcptrace-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(root.join("target/ebpf-clippy"))
        .args(["--", "-D", "warnings", "-C", "panic=abort"]))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
