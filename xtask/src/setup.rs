//! `cargo xtask setup`: everything a fresh Debian machine needs to build and test tcptrace.
//! Each step checks before it acts, so running it twice does nothing the second time.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context as _, bail};

use crate::{cargo, sh};

/// The eBPF crate's toolchain (aya-build runs `rustup run nightly cargo build ...`).
pub const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz, from crates.io, for `cargo xtask fuzz` (run with the nightly toolchain).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Debian packages the tests use: `ip`, `ss` and `nstat` (network namespaces, veth, the
/// kernel's counters), nft (a firewall drop in a test namespace), Prometheus with promtool
/// (the exporter is scraped and linted by the real thing, the rules are checked and
/// unit-tested), socat and python3 (peer and server processes), nginx and ab (a real server
/// under a real load generator), setpriv and sysctl; for `cargo xtask vm-test`: QEMU, a static
/// busybox and cpio for the guests' initramfs, kmod, xz and zstd for kernel modules; for the
/// checks of deploy/ and the package tests: systemd-analyze, adduser and deb-systemd-helper
/// (the package's maintainer scripts), and Python's venv for the Kubernetes validators; for
/// `top`'s tests: tmux (a real terminal to drive it in) and Chromium (serve's web page loaded
/// headless, screenshot taken); for the bench's peers: libbpf-tools (tcpstates) and bpftrace.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "prometheus",
    "socat",
    "python3",
    "nginx-light",
    "apache2-utils",
    "util-linux",
    "procps",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
    "zstd",
    "systemd",
    "adduser",
    "init-system-helpers",
    "python3-venv",
    "tmux",
    "chromium",
    "libbpf-tools",
    "bpftrace",
];
/// Debian packages `cargo xtask package` uses besides dpkg-deb (dpkg is always there): strip
/// (binutils), umoci (OCI images without a daemon) and musl-gcc (musl-tools: the C that
/// rustls' `ring` compiles for the static binary).
const PACKAGE_APT_PACKAGES: &[&str] = &["binutils", "umoci", "musl-tools"];
/// Python tools for the Kubernetes manifests, in a venv under target/: kubernetes-validate
/// (Kubernetes' own schemas, `--strict`) and the Prometheus Operator's resource models, whose
/// JSON schemas check the ServiceMonitor and PrometheusRule (kubernetes-validate has no schema
/// for custom resources).
pub const PYTHON_TOOLS: &[&str] = &[
    "kubernetes-validate==1.37.0",
    "cloudcoil-models-prometheus-operator==0.80.1.0",
];
/// The venv holding PYTHON_TOOLS, relative to the workspace root.
pub const DEPLOY_VENV: &str = "target/deploy-venv";
const TRACEFS: &str = "/sys/kernel/tracing";

/// A step of setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The nightly's `rust-src` (the eBPF crate builds `core` from source).
    RustSrc,
    /// `bpf-linker`, built against the nightly's own LLVM.
    BpfLinker,
    /// The Rust target of the static binary ([`crate::package::MUSL_TARGET`]).
    MuslTarget,
    /// The Debian packages packaging uses ([`PACKAGE_APT_PACKAGES`]).
    PackageTools,
    /// tracefs mounted (tracepoint formats; the tests read them).
    Tracefs,
    /// The Debian packages the tests use ([`APT_PACKAGES`]).
    TestPackages,
    /// The venv with the Kubernetes validators ([`PYTHON_TOOLS`] in [`DEPLOY_VENV`]).
    PythonTools,
    /// cargo-fuzz ([`CARGO_FUZZ_VERSION`]), for the fuzz smoke run.
    CargoFuzz,
}

/// What building and running tcptrace needs (`cargo xtask run`).
pub const BUILD: &[Step] = &[Step::RustSrc, Step::BpfLinker];
/// What packaging needs besides (`cargo xtask package`; the tests package too).
pub const PACKAGE: &[Step] = &[Step::MuslTarget, Step::PackageTools];
/// What testing needs besides (`cargo xtask setup`, `cargo xtask test`).
pub const TEST: &[Step] = &[
    Step::Tracefs,
    Step::TestPackages,
    Step::PythonTools,
    Step::CargoFuzz,
];

fn step(step: Step) -> anyhow::Result<()> {
    match step {
        Step::RustSrc => rust_src(),
        Step::BpfLinker => bpf_linker(),
        Step::MuslTarget => musl_target(),
        Step::PackageTools => apt_packages(PACKAGE_APT_PACKAGES),
        Step::Tracefs => tracefs(),
        Step::TestPackages => apt_packages(APT_PACKAGES),
        Step::PythonTools => python_tools(),
        Step::CargoFuzz => cargo_fuzz(),
    }
}

/// Runs `steps` in order.
pub fn steps(steps: &[Step]) -> anyhow::Result<()> {
    steps.iter().try_for_each(|s| step(*s))
}

/// Everything: what building needs, then what packaging and testing need.
pub fn run() -> anyhow::Result<ExitCode> {
    steps(BUILD)?;
    steps(PACKAGE)?;
    steps(TEST)?;
    println!("xtask: setup complete");
    Ok(ExitCode::SUCCESS)
}

/// True when the eBPF object can be built without running setup.
pub fn is_ready() -> bool {
    has_rust_src() && bpf_linker_ok()
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn has_rust_src() -> bool {
    output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .is_some_and(|list| list.lines().any(|l| l.starts_with("rust-src")))
}

fn rust_src() -> anyhow::Result<()> {
    if has_rust_src() {
        println!("xtask: ok: rust-src is installed for the {NIGHTLY} toolchain");
        return Ok(());
    }
    println!("xtask: installing rust-src for {NIGHTLY} (build-std needs core's sources)");
    sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

fn bpf_linker_ok() -> bool {
    // `--version` also proves the linker can load its libLLVM.
    output(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
}

/// The nightly's LLVM major version, from `rustc -vV` ("LLVM version: 22.1.4").
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let vv = output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "-vV"]))
        .context("cannot run `rustc -vV` for the nightly toolchain; is it installed?")?;
    parse_llvm_major(&vv).context("`rustc -vV` printed no LLVM version")
}

fn parse_llvm_major(vv: &str) -> Option<u32> {
    let line = vv.lines().find(|l| l.starts_with("LLVM version:"))?;
    line.trim_start_matches("LLVM version:")
        .trim()
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// bpf-linker links against the nightly's own libLLVM, so the LLVM that generates the bitcode
/// and the one that links it are the same. cargo install needs an LLVM_PREFIX with
/// `lib/libLLVM.so`; the nightly ships `lib/libLLVM.so.<ver>-rust-<ver>`, so a prefix of
/// symlinks bridges the two. It lives under CARGO_HOME because the installed linker keeps a
/// runpath into it.
fn bpf_linker() -> anyhow::Result<()> {
    if bpf_linker_ok() {
        println!("xtask: ok: bpf-linker {BPF_LINKER_VERSION} is installed");
        return Ok(());
    }
    let sysroot =
        output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]))
            .context("cannot find the nightly toolchain's sysroot")?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&sysroot_lib)
        .with_context(|| format!("cannot list {}", sysroot_lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so"))
            })
        })
        .with_context(|| format!("no libLLVM shared library in {}", sysroot_lib.display()))?;
    let major = nightly_llvm_major()?;

    let prefix = cargo_home().join("tcptrace-llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("cannot create {}", prefix_lib.display()))?;
    let file_name = llvm.file_name().context("libLLVM path has no file name")?;
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(file_name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)
            .with_context(|| format!("cannot link {} -> {}", link.display(), llvm.display()))?;
    }
    println!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} ({}); this takes about a minute",
        llvm.display()
    );
    sh(cargo()
        .env("LLVM_PREFIX", &prefix)
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}")))?;
    if !bpf_linker_ok() {
        bail!(
            "bpf-linker was installed but `bpf-linker --version` does not work; is ~/.cargo/bin on PATH?"
        );
    }
    Ok(())
}

/// Installs cargo-fuzz at the pinned version (a minute of building, once).
pub fn cargo_fuzz() -> anyhow::Result<()> {
    if output(cargo().args(["fuzz", "--version"])).is_some_and(|v| v.contains(CARGO_FUZZ_VERSION)) {
        println!("xtask: ok: cargo-fuzz {CARGO_FUZZ_VERSION} is installed");
        return Ok(());
    }
    println!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (for `cargo xtask fuzz`)");
    sh(cargo().args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|u| u.trim() == "0")
}

fn tracefs() -> anyhow::Result<()> {
    if Path::new(TRACEFS).join("events").is_dir() {
        println!("xtask: ok: tracefs is mounted at {TRACEFS}");
        return Ok(());
    }
    if !is_root() {
        println!("xtask: skipped: tracefs is not mounted at {TRACEFS} and mounting it needs root");
        return Ok(());
    }
    println!("xtask: mounting tracefs at {TRACEFS} (tracepoint formats and bpftool use it)");
    sh(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))
}

/// The static build's target (`cargo xtask package`).
fn musl_target() -> anyhow::Result<()> {
    let target = crate::package::MUSL_TARGET;
    if output(Command::new("rustup").args(["target", "list", "--installed"]))
        .is_some_and(|list| list.lines().any(|l| l.trim() == target))
    {
        println!("xtask: ok: the Rust target {target} is installed");
        return Ok(());
    }
    println!("xtask: adding the Rust target {target} (the static binary)");
    sh(Command::new("rustup").args(["target", "add", target]))
}

/// PYTHON_TOOLS in DEPLOY_VENV, with Debian's python3 (its venv module is a Debian package).
fn python_tools() -> anyhow::Result<()> {
    let venv = crate::workspace_root().join(DEPLOY_VENV);
    let pip = venv.join("bin/pip");
    let freeze = output(Command::new(&pip).args(["freeze", "--all"])).unwrap_or_default();
    // pip spells names its own way (`cloudcoil.models.prometheus_operator==...`): compare
    // them normalized as PEP 503 does.
    let have = |req: &str| {
        freeze
            .lines()
            .any(|l| normalize_requirement(l) == normalize_requirement(req))
    };
    if PYTHON_TOOLS.iter().all(|t| have(t)) {
        println!("xtask: ok: {} in {DEPLOY_VENV}", PYTHON_TOOLS.join(" "));
        return Ok(());
    }
    if !pip.exists() {
        println!("xtask: creating a Python venv in {DEPLOY_VENV}");
        sh(Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv))?;
    }
    println!(
        "xtask: installing {} into {DEPLOY_VENV}",
        PYTHON_TOOLS.join(" ")
    );
    sh(Command::new(&pip)
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PYTHON_TOOLS))
}

/// `Name_x.y==1.0` -> `name-x-y==1.0` (PEP 503 name normalization; the version is kept).
fn normalize_requirement(req: &str) -> String {
    let (name, version) = req.trim().split_once("==").unwrap_or((req.trim(), ""));
    let mut out = String::new();
    for c in name.chars() {
        let c = if matches!(c, '-' | '_' | '.') {
            '-'
        } else {
            c.to_ascii_lowercase()
        };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    format!("{out}=={version}")
}

fn apt_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        println!("xtask: ok: Debian packages present: {}", packages.join(" "));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}; install them with: sudo apt-get install -y {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    println!("xtask: installing Debian packages: {}", missing.join(" "));
    sh(Command::new("apt-get").args(["update", "-q"]))?;
    sh(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn building_needs_no_test_or_package_tools() {
        for s in [
            Step::Tracefs,
            Step::TestPackages,
            Step::PythonTools,
            Step::MuslTarget,
            Step::PackageTools,
        ] {
            assert!(!BUILD.contains(&s), "{s:?} in BUILD");
        }
        for s in BUILD.iter().chain(PACKAGE).chain(TEST) {
            let lists = [BUILD, PACKAGE, TEST];
            assert_eq!(
                lists.iter().filter(|l| l.contains(s)).count(),
                1,
                "{s:?} in exactly one list"
            );
        }
        // The package tools are not test packages installed twice.
        assert!(
            PACKAGE_APT_PACKAGES
                .iter()
                .all(|p| !APT_PACKAGES.contains(p))
        );
    }

    #[test]
    fn llvm_major_from_rustc_vv() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(vv), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.0\n"), None);
    }

    #[test]
    fn pip_names_compare_normalized() {
        assert_eq!(
            normalize_requirement("cloudcoil.models.prometheus_operator==0.80.1.0"),
            normalize_requirement("cloudcoil-models-prometheus-operator==0.80.1.0")
        );
        assert_ne!(
            normalize_requirement("kubernetes-validate==1.36.0"),
            normalize_requirement("kubernetes-validate==1.37.0")
        );
    }
}
