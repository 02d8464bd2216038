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
/// Debian packages the tests use: `ip` (network namespaces, veth), nft (a firewall drop in a
/// test namespace), Prometheus with promtool (the exporter is scraped and linted by the real
/// thing), socat (peer processes), setpriv and sysctl; and for `cargo xtask vm-test`: QEMU, a
/// static busybox and cpio for the guests' initramfs, kmod, xz and zstd for kernel modules.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "prometheus",
    "socat",
    "util-linux",
    "procps",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
    "zstd",
];
const TRACEFS: &str = "/sys/kernel/tracing";

pub fn run() -> anyhow::Result<ExitCode> {
    rust_src()?;
    bpf_linker()?;
    tracefs()?;
    apt_packages(APT_PACKAGES)?;
    cargo_fuzz()?;
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
    fn llvm_major_from_rustc_vv() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(vv), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.0\n"), None);
    }
}
