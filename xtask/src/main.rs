//! `cargo xtask`: tcptrace's chores.
//!
//! - `setup`: make a fresh machine able to build and test tcptrace (idempotent).
//! - `run -- ARGS`: build the agent and run it with ARGS.
//! - `test`: setup, formatting, clippy (host and eBPF), unit tests, root-only kernel tests.
//! - `bench`: cost and completeness under connection churn, against no tracer.
//! - `vm-test`: the kernel tests inside QEMU guests running Debian's 5.10, 6.1, 6.12 and 7.x.
//! - `package`: the static binary, the .deb and the OCI image under `target/package/`.
//! - `fuzz`: the cargo-fuzz targets, each for a bounded time.
//! - `soak`: serve under steady churn for minutes; fails on memory growth or unaccounted loss.

mod bench;
mod fuzz;
mod package;
mod setup;
mod soak;
mod test;
mod vm;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "tcptrace's build, setup and test chores"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building, packaging and testing tcptrace needs: the nightly's rust-src and
    /// bpf-linker built against the nightly's LLVM (what `run` installs), the musl target,
    /// strip and umoci (what `package` installs), then tracefs, the Debian packages the tests
    /// use and a Python venv with the Kubernetes validators.
    Setup,
    /// Build tcptrace (release) and run it, e.g. `cargo xtask run -- tail --port 443`;
    /// installs the eBPF toolchain first if it is missing, nothing else.
    Run {
        /// Arguments for tcptrace.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, `cargo fmt --check`, clippy with -D warnings (host crates and the eBPF crate),
    /// unit tests, then the integration tests against the real kernel (needs root).
    Test(test::TestArgs),
    /// Measure tcptrace's cost and completeness under loopback connection churn, side by
    /// side with no tracer (needs root); writes target/bench/result.{json,md}.
    Bench(bench::BenchArgs),
    /// Build what a fleet installs, under target/package/: the static binary
    /// (x86_64-unknown-linux-musl), a .deb with the hardened systemd unit, and an OCI image;
    /// installs the musl target, strip and umoci first if they are missing.
    Package,
    /// Boot Debian's 5.10, 6.1, 6.12 and 7.x cloud kernels in QEMU (TCG) and run tcptrace's
    /// kernel tests inside each; one PASS/FAIL line per kernel (needs root and network access
    /// to deb.debian.org the first time; kernels are cached in target/vm).
    VmTest(vm::VmArgs),
    /// Run every fuzz target (cargo-fuzz, nightly) for --seconds each; a crash fails the run
    /// and leaves its input in fuzz/artifacts/TARGET/.
    Fuzz(fuzz::FuzzArgs),
    /// Run `tcptrace serve` under steady loopback churn for --minutes, sampling its memory
    /// and CPU; fails if RSS keeps growing after the warm-up or a transition is neither
    /// delivered nor counted lost (needs root); writes target/soak/result.{json,md}.
    Soak(soak::SoakArgs),
    /// Bench helper: hold COUNT loopback connections (both ends) until stdin closes.
    #[command(hide = true)]
    HoldConnections {
        #[arg(long)]
        count: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::run(),
        Cmd::Run { args } => run(&args),
        Cmd::Test(args) => test::run(&args),
        Cmd::Bench(args) => bench::run(&args),
        Cmd::VmTest(args) => vm::run(&args),
        Cmd::Package => package::run(),
        Cmd::Fuzz(args) => fuzz::run(&args),
        Cmd::Soak(args) => soak::run(&args),
        Cmd::HoldConnections { count } => bench::hold_connections(count),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (this crate lives in `<root>/xtask`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Prints a command, runs it in the workspace root, and fails unless it succeeds.
pub fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(workspace_root());
    }
    println!("xtask: $ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    if !setup::is_ready() {
        // Only what building needs: the test tools come with `cargo xtask test` (or setup).
        println!("xtask: the eBPF toolchain is incomplete; installing it first");
        setup::steps(setup::BUILD)?;
    }
    sh(cargo().args(["build", "--release", "--package", "tcptrace"]))?;
    let bin = workspace_root().join("target/release/tcptrace");
    let status = Command::new(&bin)
        .args(args)
        .status()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}
