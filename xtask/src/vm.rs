//! `cargo xtask vm-test`: tcptrace's kernel tests inside QEMU guests that run the kernels
//! production hosts run, from Debian's own packages.
//!
//! For each kernel series: resolve the newest image through Debian's meta package with a
//! private apt configuration (the host's sources and package state stay untouched), download
//! and unpack it into a cache under `target/vm/`, then boot it under TCG with an initramfs
//! holding busybox, the host tools the tests call (with their shared libraries), the kernel's
//! own modules for veth and nftables, and the integration-test binaries with the agent. The
//! guest's init runs the tests and powers off; the host reads the verdict from the console.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{cargo, display, sh, workspace_root};

const DEBIAN: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A kernel series and where Debian ships it.
struct Series {
    name: &'static str,
    /// (archive, suite) pairs for the private sources.list.
    sources: &'static [(&'static str, &'static str)],
    /// Meta package that depends on the newest image of the series.
    meta: &'static str,
}

const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        sources: &[(DEBIAN, "bullseye"), (SECURITY, "bullseye-security")],
        meta: "linux-image-cloud-amd64",
    },
    Series {
        name: "6.1",
        sources: &[(DEBIAN, "bookworm"), (SECURITY, "bookworm-security")],
        meta: "linux-image-cloud-amd64",
    },
    Series {
        name: "6.12",
        sources: &[(DEBIAN, "bookworm"), (SECURITY, "bookworm-security")],
        meta: "linux-image-6.12-cloud-amd64",
    },
    Series {
        name: "7.x",
        sources: &[(DEBIAN, "sid")],
        meta: "linux-image-cloud-amd64",
    },
];

/// The series `cargo xtask test` boots: the oldest supported one (the program variant without
/// the cookie helper) and the one Debian stable runs.
pub const QUICK_SERIES: &[&str] = &["5.10", "6.1"];

/// Integration-test binaries run in guests, and tests left out with the reason. The deploy,
/// package and fleet binaries (dpkg, umoci, three agents with Prometheus) run on the host only.
const FULL_TESTS: &[&str] = &["tail", "owner", "stories", "serve", "doctor"];
const QUICK_TESTS: &[&str] = &["tail", "owner"];
/// (test name, why it does not run in a guest); the closing summary names them.
const NOT_IN_GUESTS: &[(&str, &str)] = &[
    (
        "prometheus_sees_exactly_n_handshakes_and_the_time_wait_sockets",
        "runs a Prometheus server",
    ),
    ("promtool_lints_a_live_scrape_clean", "runs promtool"),
];

/// Host tools the tests (and the guest's init) call; copied with their shared libraries.
const GUEST_TOOLS: &[&str] = &["ip", "ss", "nft", "socat", "setpriv", "sysctl", "dash"];
/// Kernel modules the tests need: INET_DIAG for TCP (snapshots, `ss -K`; hosts load it on
/// demand with modprobe, guests have none), veth pairs, nftables rules and their `numgen`
/// and `counter` expressions (every Nth segment dropped and counted). Built-ins are skipped.
const GUEST_MODULES: &[&str] = &["tcp_diag", "veth", "nf_tables", "nft_numgen", "nft_counter"];
/// Of those, the ones later kernels merged into another module (nft_counter: separate in
/// 5.10, part of nf_tables by 6.1): absent there, and not needed.
const MERGED_LATER: &[&str] = &["nft_counter"];

/// Marker the guest prints last: `<MARKER> <exit status>`.
const MARKER: &str = "vm-test: exit status";

#[derive(Args, Clone)]
pub struct VmArgs {
    /// Kernel series to boot (repeat for several): 5.10, 6.1, 6.12, 7.x. Default: all.
    #[arg(long = "kernel", value_name = "SERIES", value_parser = ["5.10", "6.1", "6.12", "7.x"])]
    pub kernels: Vec<String>,
    /// Only the tail and owner tests (what `cargo xtask test` runs).
    #[arg(long)]
    pub quick: bool,
    /// Only these test binaries (repeat for several); overrides --quick's set.
    #[arg(long = "test", value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(FULL_TESTS))]
    pub tests: Vec<String>,
    /// Run the tests this many times in each guest (to catch a flaky test); the first failing
    /// round fails the guest.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
    /// Resolve and download the kernels again instead of using the cache in target/vm.
    #[arg(long)]
    pub refresh: bool,
    /// Guests booted at once (each gets two emulated CPUs and 1 GiB).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub jobs: u32,
    /// Give up on a guest after this many seconds (TCG runs the verifier 20-60x slower).
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
}

impl VmArgs {
    /// The short matrix inside `cargo xtask test`.
    pub fn quick() -> Self {
        Self {
            kernels: QUICK_SERIES.iter().map(|s| (*s).to_owned()).collect(),
            quick: true,
            tests: Vec::new(),
            repeat: 1,
            refresh: false,
            jobs: 2,
            timeout: 1800,
        }
    }
}

/// What one guest run came to.
struct Outcome {
    series: &'static str,
    release: String,
    passed: bool,
    summary: String,
    /// libtest's `failures:` sections (panic messages of the failed tests), bounded.
    details: Vec<String>,
}

/// At most this many lines of failure details per guest are printed.
const MAX_DETAIL_LINES: usize = 200;

pub fn run(args: &VmArgs) -> anyhow::Result<ExitCode> {
    Ok(if matrix(args)? {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Boots every selected kernel; true when all passed.
pub fn matrix(args: &VmArgs) -> anyhow::Result<bool> {
    let series: Vec<&'static Series> = if args.kernels.is_empty() {
        SERIES.iter().collect()
    } else {
        SERIES
            .iter()
            .filter(|s| args.kernels.iter().any(|k| k == s.name))
            .collect()
    };
    for tool in [
        "qemu-system-x86_64",
        "busybox",
        "cpio",
        "depmod",
        "modprobe",
    ] {
        if which(tool).is_none() {
            bail!("{tool} is missing: run `cargo xtask setup` (as root) first");
        }
    }
    let vm_dir = target_dir().join("vm");
    fs::create_dir_all(&vm_dir)?;
    let mut chosen: Vec<&str> = Vec::new();
    for name in &args.tests {
        if !chosen.contains(&name.as_str()) {
            chosen.push(name);
        }
    }
    let tests = if !chosen.is_empty() {
        &chosen[..]
    } else if args.quick {
        QUICK_TESTS
    } else {
        FULL_TESTS
    };
    let binaries = build_tests(tests)?;
    let common = vm_dir.join("common.cpio");
    build_common_initramfs(&vm_dir.join("root"), &common, &binaries, args.repeat)?;

    let mut kernels = Vec::new();
    let mut outcomes = Vec::new();
    for s in &series {
        match fetch_kernel(s, &vm_dir.join(s.name), args.refresh) {
            Ok(kernel) => kernels.push((*s, kernel)),
            Err(e) => outcomes.push(Outcome {
                series: s.name,
                release: "?".into(),
                passed: false,
                summary: format!("cannot get the kernel: {e:#}"),
                details: Vec::new(),
            }),
        }
    }
    for chunk in kernels.chunks(args.jobs as usize) {
        let mut running = Vec::new();
        for (s, kernel) in chunk {
            let initrd = vm_dir.join(s.name).join("initrd.cpio");
            build_kernel_initramfs(kernel, &common, &initrd)?;
            let log = vm_dir.join(s.name).join("console.log");
            println!(
                "xtask: booting {} ({}); console in {}",
                s.name,
                kernel.release,
                log.display()
            );
            running.push((*s, kernel, boot(kernel, &initrd, &log)?, log));
        }
        for (s, kernel, guest, log) in running {
            outcomes.push(await_guest(s, kernel, guest, &log, args.timeout)?);
        }
    }
    let passed = outcomes.iter().filter(|o| o.passed).count();
    let failed = outcomes.len() - passed;
    // Why a test failed, from the guest's console, so a CI log alone explains it.
    for o in outcomes.iter().filter(|o| !o.details.is_empty()) {
        println!("\n--- {} failures ---", o.series);
        for line in &o.details {
            println!("{line}");
        }
    }
    println!();
    for o in &outcomes {
        println!(
            "{} {} ({}): {}",
            if o.passed { "PASS" } else { "FAIL" },
            o.series,
            o.release,
            o.summary
        );
    }
    if tests.contains(&"serve") {
        for (test, why) in NOT_IN_GUESTS {
            println!("not run in guests: {test} ({why}; runs on the host)");
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// Test binaries and the agent they start, as built by `cargo test --no-run`.
struct TestBinaries {
    /// (test name, executable)
    tests: Vec<(String, PathBuf)>,
    /// The agent binary, at the path compiled into the tests (`CARGO_BIN_EXE_tcptrace`).
    agent: PathBuf,
}

fn build_tests(names: &[&str]) -> anyhow::Result<TestBinaries> {
    let mut cmd = cargo();
    cmd.current_dir(workspace_root()).args([
        "test",
        "--no-run",
        "--package",
        "tcptrace",
        "--message-format",
        "json",
    ]);
    for name in names {
        cmd.args(["--test", name]);
    }
    println!("xtask: $ {}", display(&cmd));
    let out = cmd.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("`{}` failed ({})", display(&cmd), out.status);
    }
    let mut tests = Vec::new();
    let mut agent = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (Some(exe), Some(name)) = (json_str(line, "executable"), target_name(line)) else {
            continue;
        };
        if line.contains(r#""kind":["bin"]"#) && name == "tcptrace" {
            agent = Some(PathBuf::from(exe));
        } else if line.contains(r#""kind":["test"]"#) && names.contains(&name.as_str()) {
            tests.push((name, PathBuf::from(exe)));
        }
    }
    let agent = agent.context("cargo reported no tcptrace binary")?;
    if tests.len() != names.len() {
        bail!(
            "cargo reported {} of the {} test binaries",
            tests.len(),
            names.len()
        );
    }
    tests.sort_by_key(|(name, _)| names.iter().position(|n| n == name));
    Ok(TestBinaries { tests, agent })
}

/// The string value of `"key":"..."` in one line of cargo's JSON (paths and names only:
/// no escapes to undo).
fn json_str(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let len = line[start..].find('"')?;
    Some(line[start..start + len].to_owned())
}

/// The `target.name` of a compiler-artifact line.
fn target_name(line: &str) -> Option<String> {
    let target = &line[line.find("\"target\":{")?..];
    json_str(target, "name")
}

/// Builds the part of the initramfs every kernel shares.
fn build_common_initramfs(
    stage: &Path,
    out: &Path,
    binaries: &TestBinaries,
    repeat: u32,
) -> anyhow::Result<()> {
    if stage.exists() {
        fs::remove_dir_all(stage)?;
    }
    for dir in [
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib64",
        "busybox",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "etc",
        "root",
        "modules",
    ] {
        fs::create_dir_all(stage.join(dir))?;
    }
    // Debian's merged /usr: /bin, /sbin and /lib* are links into /usr.
    for (link, to) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        std::os::unix::fs::symlink(to, stage.join(link))?;
    }
    let busybox = which("busybox").context("busybox")?;
    fs::copy(&busybox, stage.join("busybox/busybox"))?;
    // Tests run `sh -c` and `ip`: dash and iproute2's ip, never busybox's applets.
    let mut libs = BTreeSet::new();
    for tool in GUEST_TOOLS {
        let path =
            which(tool).with_context(|| format!("{tool} is missing: run `cargo xtask setup`"))?;
        install(stage, &path)?;
        libs.extend(shared_libraries(&path)?);
    }
    let dash = fs::canonicalize(which("dash").context("dash")?)?;
    std::os::unix::fs::symlink(&dash, stage.join("usr/bin/sh"))?;
    for (_, exe) in &binaries.tests {
        strip_into(stage, exe)?;
        libs.extend(shared_libraries(exe)?);
    }
    strip_into(stage, &binaries.agent)?;
    libs.extend(shared_libraries(&binaries.agent)?);
    for lib in libs {
        install(stage, &lib)?;
    }
    fs::write(
        stage.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    )?;
    fs::write(stage.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    fs::write(
        stage.join("etc/hosts"),
        "127.0.0.1 localhost\n::1 localhost\n",
    )?;
    let init = stage.join("init");
    let ip = fs::canonicalize(which("ip").context("ip")?)?;
    fs::write(&init, init_script(&ip, &binaries.tests, repeat))?;
    set_mode(&init, 0o755)?;
    cpio(stage, out)
}

/// The guest's /init: mount what the tests expect, load modules, run the tests (`repeat`
/// rounds), power off.
fn init_script(ip: &Path, tests: &[(String, PathBuf)], repeat: u32) -> String {
    let skips: String = NOT_IN_GUESTS
        .iter()
        .map(|(name, _)| format!(" --skip {name}"))
        .collect();
    let ip = ip.display();
    // A checkout under /tmp puts the test binaries there: a tmpfs over /tmp would hide them,
    // and the initramfs root is writable anyway.
    let tmp = if tests.iter().any(|(_, exe)| exe.starts_with("/tmp")) {
        ""
    } else {
        "mount -t tmpfs tmpfs /tmp\n"
    };
    let mut s = format!(
        r#"#!/busybox/busybox sh
/busybox/busybox --install -s /busybox
export PATH=/usr/sbin:/usr/bin:/busybox HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
{tmp}mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
for m in $(cat /modules/order 2>/dev/null); do insmod /modules/$m || echo "vm-test: insmod $m failed"; done
{ip} link set lo up
echo "vm-test: kernel $(uname -r)"
cd /tmp
status=0
round=0
while [ $round -lt {repeat} ] && [ $status = 0 ]; do
round=$((round + 1))
"#,
    );
    for (name, exe) in tests {
        s.push_str(&format!(
            "echo \"vm-test: running {name} (round $round)\"\n{} --ignored --test-threads 1{skips} || status=1\n",
            exe.display()
        ));
    }
    s.push_str("done\n");
    s.push_str(&format!("echo \"{MARKER} $status\"\npoweroff -f\n"));
    s
}

/// Copies the host file `path` into `stage` at its real path, with a link from `path` when
/// that differs (`/lib64/ld-linux-x86-64.so.2`, `/usr/sbin/ip`, ...).
fn install(stage: &Path, path: &Path) -> anyhow::Result<()> {
    let real = fs::canonicalize(path)?;
    let inside = |p: &Path| stage.join(p.strip_prefix("/").unwrap_or(p));
    let target = inside(&real);
    if !target.exists() {
        fs::create_dir_all(target.parent().context("file path")?)?;
        fs::copy(&real, &target)
            .with_context(|| format!("cannot copy {} into the initramfs", real.display()))?;
    }
    let link = inside(path);
    if link.symlink_metadata().is_err() && !link.exists() {
        fs::create_dir_all(link.parent().context("file path")?)?;
        std::os::unix::fs::symlink(&real, &link)?;
    }
    Ok(())
}

/// Copies a Rust binary to the same path inside `stage` without its debug info.
fn strip_into(stage: &Path, exe: &Path) -> anyhow::Result<()> {
    let target = stage.join(exe.strip_prefix("/").unwrap_or(exe));
    fs::create_dir_all(target.parent().context("binary path")?)?;
    let ok = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(exe)
        .arg(&target)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        fs::copy(exe, &target)?;
    }
    Ok(())
}

/// The shared libraries `exe` loads, the dynamic loader included (from `ldd`).
fn shared_libraries(exe: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(exe).output()?;
    // A static binary: "not a dynamic executable", exit status 1.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Packs `stage` into a newc cpio archive (the format the kernel unpacks as initramfs).
fn cpio(stage: &Path, out: &Path) -> anyhow::Result<()> {
    let file = fs::File::create(out)?;
    sh(Command::new("sh")
        .current_dir(stage)
        .args([
            "-c",
            "find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc",
        ])
        .stdout(file))
}

/// An unpacked kernel package.
struct Kernel {
    release: String,
    vmlinuz: PathBuf,
    /// Root the packages were unpacked into (for depmod/modprobe -d).
    root: PathBuf,
}

/// Resolves, downloads and unpacks the series' newest cloud kernel, or reuses the cache.
fn fetch_kernel(series: &Series, dir: &Path, refresh: bool) -> anyhow::Result<Kernel> {
    let root = dir.join("root");
    if refresh && root.exists() {
        fs::remove_dir_all(&root)?;
    }
    if let Some(kernel) = unpacked_kernel(&root)? {
        println!(
            "xtask: ok: kernel {} ({}) cached",
            series.name, kernel.release
        );
        return Ok(kernel);
    }
    let apt = PrivateApt::new(&dir.join("apt"), series.sources)?;
    apt.update()?;
    let packages = apt.image_packages(series.meta)?;
    println!(
        "xtask: kernel {}: {} -> {}",
        series.name,
        series.meta,
        packages.join(" ")
    );
    let debs = dir.join("debs");
    if debs.exists() {
        fs::remove_dir_all(&debs)?;
    }
    fs::create_dir_all(&debs)?;
    apt.download(&packages, &debs)?;
    fs::create_dir_all(&root)?;
    for deb in fs::read_dir(&debs)? {
        let deb = deb?.path();
        sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    fs::remove_dir_all(&debs)?;
    unpacked_kernel(&root)?.with_context(|| {
        format!(
            "no /boot/vmlinuz-* in the packages of {} ({})",
            series.meta,
            packages.join(" ")
        )
    })
}

/// The kernel unpacked under `root`, if there is one: `/boot/vmlinuz-<release>`, or since
/// Debian 14 `/usr/lib/modules/<release>/vmlinuz`.
fn unpacked_kernel(root: &Path) -> anyhow::Result<Option<Kernel>> {
    let mut found = None;
    if let Ok(entries) = fs::read_dir(root.join("boot")) {
        for entry in entries {
            let path = entry?.path();
            if let Some(release) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("vmlinuz-"))
            {
                found = Some((release.to_owned(), path.clone()));
            }
        }
    }
    if found.is_none()
        && let Ok(entries) = fs::read_dir(root.join("usr/lib/modules"))
    {
        for entry in entries {
            let dir = entry?.path();
            let image = dir.join("vmlinuz");
            if let (true, Some(release)) =
                (image.is_file(), dir.file_name().and_then(|n| n.to_str()))
            {
                found = Some((release.to_owned(), image));
            }
        }
    }
    let Some((release, vmlinuz)) = found else {
        return Ok(None);
    };
    // Modules under /usr/lib only; depmod and modprobe -d look under /lib.
    if !root.join("lib").exists() && root.join("usr/lib/modules").exists() {
        std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
    }
    Ok(Some(Kernel {
        release,
        vmlinuz,
        root: root.to_owned(),
    }))
}

/// apt with its own sources, lists, cache and (empty) package state under one directory.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn new(dir: &Path, sources: &[(&str, &str)]) -> anyhow::Result<Self> {
        for sub in [
            "etc/sources.list.d",
            "etc/preferences.d",
            "etc/apt.conf.d",
            "state/lists/partial",
            "cache/archives/partial",
        ] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let list: String = sources
            .iter()
            .map(|(archive, suite)| format!("deb [signed-by={KEYRING}] {archive} {suite} main\n"))
            .collect();
        fs::write(dir.join("etc/sources.list"), list)?;
        fs::write(dir.join("status"), "")?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn command(&self, program: &str) -> Command {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        let mut cmd = Command::new(program);
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        for (key, value) in [
            ("Dir::Etc", d("etc")),
            ("Dir::Etc::SourceList", d("etc/sources.list")),
            ("Dir::Etc::SourceParts", d("etc/sources.list.d")),
            ("Dir::Etc::Parts", d("etc/apt.conf.d")),
            ("Dir::Etc::PreferencesParts", d("etc/preferences.d")),
            ("Dir::State", d("state")),
            ("Dir::State::Lists", d("state/lists")),
            ("Dir::State::status", d("status")),
            ("Dir::Cache", d("cache")),
            ("APT::Architecture", "amd64".into()),
            ("APT::Architectures", "amd64".into()),
            ("APT::Sandbox::User", "root".into()),
            ("Acquire::Languages", "none".into()),
            ("Debug::NoLocking", "1".into()),
        ] {
            cmd.arg("-o").arg(format!("{key}={value}"));
        }
        cmd
    }

    fn update(&self) -> anyhow::Result<()> {
        sh(self.command("apt-get").args(["-q", "update"]))
    }

    /// The packages that make up the kernel `meta` points to: every `linux-image-*`,
    /// `linux-binary-*` and `linux-modules-*` reached through its dependencies (sid splits
    /// the image into binary and modules packages).
    fn image_packages(&self, meta: &str) -> anyhow::Result<Vec<String>> {
        let mut found = BTreeSet::new();
        let mut queue = vec![meta.to_owned()];
        while let Some(package) = queue.pop() {
            let out = self
                .command("apt-cache")
                .args([
                    "depends",
                    "--no-recommends",
                    "--no-suggests",
                    "--no-conflicts",
                    "--no-breaks",
                    "--no-replaces",
                    "--no-enhances",
                    &package,
                ])
                .output()?;
            if !out.status.success() {
                bail!(
                    "apt-cache depends {package}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let Some(dep) = line
                    .trim()
                    .trim_start_matches('|')
                    .strip_prefix("Depends: ")
                else {
                    continue;
                };
                let dep = dep.trim();
                let kernel_part = ["linux-image-", "linux-binary-", "linux-modules-"]
                    .iter()
                    .any(|p| dep.starts_with(p))
                    && dep.chars().any(|c| c.is_ascii_digit())
                    && !dep.ends_with("-dbg");
                if kernel_part && found.insert(dep.to_owned()) {
                    queue.push(dep.to_owned());
                }
            }
        }
        if found.is_empty() {
            bail!("{meta} depends on no kernel image");
        }
        Ok(found.into_iter().collect())
    }

    fn download(&self, packages: &[String], into: &Path) -> anyhow::Result<()> {
        sh(self
            .command("apt-get")
            .current_dir(into)
            .args(["-q", "download"])
            .args(packages))
    }
}

/// The kernel's part of the initramfs: the modules the tests need, decompressed, in load
/// order; appended to the common part (the kernel unpacks concatenated archives).
fn build_kernel_initramfs(kernel: &Kernel, common: &Path, out: &Path) -> anyhow::Result<()> {
    let stage = out.with_extension("d");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    fs::create_dir_all(stage.join("modules"))?;
    sh(Command::new("depmod")
        .arg("-b")
        .arg(&kernel.root)
        .arg(&kernel.release))?;
    let mut order = Vec::new();
    for module in GUEST_MODULES {
        let out = Command::new("modprobe")
            .arg("-d")
            .arg(&kernel.root)
            .args(["-S", &kernel.release, "--show-depends", module])
            .output()?;
        if !out.status.success() && MERGED_LATER.contains(module) {
            continue;
        }
        if !out.status.success() {
            bail!(
                "kernel {} has no module {module}: {}",
                kernel.release,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "insmod /path/x.ko.xz" or "builtin x"
            let Some(path) = line.strip_prefix("insmod ") else {
                continue;
            };
            let path = PathBuf::from(path.split_whitespace().next().unwrap_or(path));
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split(".ko").next())
                .context("module file name")?
                .to_owned();
            let file = format!("{name}.ko");
            if order.contains(&file) {
                continue;
            }
            decompress_module(&path, &stage.join("modules").join(&file))?;
            order.push(file);
        }
    }
    fs::write(stage.join("modules/order"), order.join("\n") + "\n")?;
    let own = out.with_extension("modules.cpio");
    cpio(&stage, &own)?;
    let mut initrd = fs::File::create(out)?;
    for part in [common, own.as_path()] {
        std::io::copy(&mut fs::File::open(part)?, &mut initrd)?;
    }
    initrd.flush()?;
    Ok(())
}

fn decompress_module(src: &Path, dest: &Path) -> anyhow::Result<()> {
    let name = src.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => {
            fs::copy(src, dest)?;
        }
        Some(tool) => {
            let out = fs::File::create(dest)?;
            sh(Command::new(tool).arg("-dc").arg(src).stdout(out))?;
        }
    }
    Ok(())
}

/// A booting guest and its console lines.
struct Guest {
    child: Child,
    lines: mpsc::Receiver<String>,
    started: Instant,
}

fn boot(kernel: &Kernel, initrd: &Path, log: &Path) -> anyhow::Result<Guest> {
    let mut cmd = Command::new("qemu-system-x86_64");
    // /dev/kvm exists on these hosts but cannot run stock kernels: software emulation.
    // `-cpu max`: every feature TCG emulates (crc32c-intel wants SSE4.2).
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2"])
        .args(["-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", display(&cmd)))?;
    let (tx, rx) = mpsc::channel();
    let mut log_file = fs::File::create(log)?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let line = line.trim_end_matches('\r').to_owned();
            let _ = writeln!(log_file, "{line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx2.send(format!("qemu: {line}")).is_err() {
                break;
            }
        }
    });
    Ok(Guest {
        child,
        lines: rx,
        started: Instant::now(),
    })
}

/// Follows a guest to its end marker, power-off or timeout, and judges it.
fn await_guest(
    series: &'static Series,
    kernel: &Kernel,
    mut guest: Guest,
    log: &Path,
    timeout: u64,
) -> anyhow::Result<Outcome> {
    let deadline = guest.started + Duration::from_secs(timeout);
    let mut status = None;
    let mut passed = 0u64;
    let mut failures = Vec::new();
    let mut qemu_errors = Vec::new();
    let mut details = Vec::new();
    let mut in_failures = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match guest.lines.recv_timeout(left) {
            Ok(line) => {
                // libtest prints `failures:`, each failed test's output, then `test result:`.
                if line.trim_end() == "failures:" {
                    in_failures = true;
                } else if line.starts_with("test result:") || line.starts_with("vm-test: running") {
                    in_failures = false;
                }
                if in_failures && details.len() < MAX_DETAIL_LINES {
                    details.push(line.clone());
                }
                if let Some(rest) = line.strip_prefix(MARKER) {
                    status = rest.trim().parse::<i32>().ok();
                } else if let Some(name) = line
                    .strip_prefix("test ")
                    .and_then(|l| l.strip_suffix(" ... FAILED"))
                {
                    failures.push(name.to_owned());
                } else if line.starts_with("test ") && line.ends_with(" ... ok") {
                    passed += 1;
                } else if let Some(msg) = line.strip_prefix("qemu: ") {
                    qemu_errors.push(msg.to_owned());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = guest.child.kill();
                break;
            }
        }
    }
    let _ = guest.child.wait();
    let secs = guest.started.elapsed().as_secs();
    let (ok, summary) = match status {
        Some(0) if failures.is_empty() && passed > 0 => {
            (true, format!("{passed} tests passed in {secs} s"))
        }
        Some(_) => (
            false,
            format!(
                "{} failed, {passed} passed in {secs} s: {}; console in {}",
                failures.len().max(1),
                if failures.is_empty() {
                    "a test binary failed to run".to_owned()
                } else {
                    failures.join(", ")
                },
                log.display()
            ),
        ),
        None if guest.started.elapsed() >= Duration::from_secs(timeout) => (
            false,
            format!(
                "timed out after {secs} s ({passed} passed); console in {}",
                log.display()
            ),
        ),
        None => (
            false,
            format!(
                "the guest stopped before the tests finished ({passed} passed){}; console in {}",
                qemu_errors
                    .first()
                    .map(|e| format!(", qemu: {e}"))
                    .unwrap_or_default(),
                log.display()
            ),
        ),
    };
    Ok(Outcome {
        series: series.name,
        release: kernel.release.clone(),
        passed: ok,
        summary,
        details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cargo_artifact_lines() {
        let line = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/tcptrace#0.1.0","manifest_path":"/w/tcptrace/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"tail","src_path":"/w/tcptrace/tests/tail.rs","edition":"2024","doc":false,"doctest":false,"test":true},"profile":{"opt_level":"0"},"features":[],"filenames":["/w/target/debug/deps/tail-0f1e"],"executable":"/w/target/debug/deps/tail-0f1e","fresh":true}"#;
        assert_eq!(target_name(line).as_deref(), Some("tail"));
        assert_eq!(
            json_str(line, "executable").as_deref(),
            Some("/w/target/debug/deps/tail-0f1e")
        );
        assert_eq!(json_str(line, "nope"), None);
    }

    #[test]
    fn init_runs_every_test_binary_and_reports_its_status() {
        let script = init_script(
            Path::new("/usr/bin/ip"),
            &[
                ("tail".into(), PathBuf::from("/w/t/tail-1")),
                ("owner".into(), PathBuf::from("/w/t/owner-2")),
            ],
            3,
        );
        assert!(script.starts_with("#!/busybox/busybox sh\n"));
        assert!(script.contains("\n/usr/bin/ip link set lo up\n"));
        assert!(script.contains("/w/t/tail-1 --ignored --test-threads 1 --skip "));
        assert!(script.contains("/w/t/owner-2 --ignored"));
        assert!(script.contains("while [ $round -lt 3 ] && [ $status = 0 ]; do\n"));
        assert!(script.contains(&format!("echo \"{MARKER} $status\"")));
        assert!(script.trim_end().ends_with("poweroff -f"));
    }

    #[test]
    fn every_series_is_selectable() {
        let names: Vec<&str> = SERIES.iter().map(|s| s.name).collect();
        assert_eq!(names, ["5.10", "6.1", "6.12", "7.x"]);
        for quick in QUICK_SERIES {
            assert!(names.contains(quick));
        }
    }
}
