//! `cargo xtask package`: what a fleet installs, under `target/package/`:
//!
//! - `tcptrace-VERSION-x86_64-linux-musl`: the agent, statically linked (runs on any
//!   distribution and in an image with nothing else in it);
//! - `tcptrace_VERSION-1_amd64.deb`: that binary, the systemd unit, the `tcptrace` user,
//!   `/etc/default/tcptrace`, the `--help` text; built with Debian's own `dpkg-deb`;
//! - `tcptrace-VERSION-oci.tar`: an OCI image layout (`skopeo copy oci-archive:...`,
//!   `podman load`) holding only the binary and an empty /tmp; built with umoci, no daemon.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context as _, bail};

use crate::{cargo, display, sh, workspace_root};

pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// Debian revision of the package built from this source.
const DEB_REVISION: &str = "1";
/// Where the image says its source lives (also the README's).
const SOURCE: &str = "https://github.com/tcptrace/tcptrace";

/// The files `cargo xtask package` wrote.
#[derive(Debug)]
pub struct Artifacts {
    pub binary: PathBuf,
    pub deb: PathBuf,
    pub oci: PathBuf,
}

pub fn run() -> anyhow::Result<ExitCode> {
    let a = package()?;
    for path in [&a.binary, &a.deb, &a.oci] {
        let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        println!(
            "xtask: wrote {} ({:.1} MB)",
            path.display(),
            size as f64 / 1e6
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn out_dir() -> PathBuf {
    workspace_root().join("target/package")
}

/// Builds the static binary, then the .deb and the OCI image around it.
pub fn package() -> anyhow::Result<Artifacts> {
    let root = workspace_root();
    let out = out_dir();
    // What building needs if it is missing, and what packaging needs (each step checks first).
    if !crate::setup::is_ready() {
        crate::setup::steps(crate::setup::BUILD)?;
    }
    crate::setup::steps(crate::setup::PACKAGE)?;
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let built = build_static()?;
    let version = env!("CARGO_PKG_VERSION");
    let binary = out.join(format!("tcptrace-{version}-x86_64-linux-musl"));
    let _ = fs::remove_file(&binary);
    // Symbols only: a release build has no debug info, and the eBPF object inside is data.
    sh(Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&binary)
        .arg(&built))?;
    let commit = commit_of(&binary)?;
    update_prometheus_rule(&root)?;
    let deb = build_deb(&root, &out, &binary, version)?;
    let oci = build_oci(&out, &binary, version, &commit)?;
    Ok(Artifacts { binary, deb, oci })
}

fn build_static() -> anyhow::Result<PathBuf> {
    // rustls' `ring` compiles C for the target: Debian's musl-tools names its compiler
    // `musl-gcc`, not the `x86_64-linux-musl-gcc` cc-rs looks for.
    sh(cargo()
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
        .args([
            "build",
            "--release",
            "--package",
            "tcptrace",
            "--target",
            MUSL_TARGET,
        ]))?;
    Ok(workspace_root().join(format!("target/{MUSL_TARGET}/release/tcptrace")))
}

/// The commit `tcptrace --version` names (the one build.rs recorded).
fn commit_of(binary: &Path) -> anyhow::Result<String> {
    let text = output(Command::new(binary).arg("--version"))?;
    parse_commit(&text).with_context(|| format!("`{} --version` names no commit", binary.display()))
}

fn parse_commit(version_text: &str) -> Option<String> {
    version_text
        .lines()
        .find_map(|l| l.strip_prefix("commit:"))
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {}", display(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", display(cmd), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn write(path: &Path, contents: impl AsRef<[u8]>, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    // -n: no name or time stamp in the header, so the package is the same for the same input.
    let mut child = Command::new("gzip")
        .args(["-9n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start gzip")?;
    let mut stdin = child.stdin.take().context("gzip stdin")?;
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().context("gzip")?;
    feeder
        .join()
        .map_err(|_| anyhow::anyhow!("gzip feeder panicked"))??;
    if !out.status.success() {
        bail!("gzip failed ({})", out.status);
    }
    Ok(out.stdout)
}

/// `tcptrace --help` and every subcommand's `--help`, for /usr/share/doc.
fn help_text(binary: &Path) -> anyhow::Result<String> {
    let mut text = output(Command::new(binary).arg("--help"))?;
    for sub in ["tail", "life", "doctor", "serve"] {
        let _ = write!(text, "\n\n{}\n\n", "=".repeat(72));
        text.push_str(&output(Command::new(binary).args([sub, "--help"]))?);
    }
    Ok(text)
}

/// The package's version: the workspace's, with the Debian revision.
pub fn deb_version(version: &str) -> String {
    format!("{version}-{DEB_REVISION}")
}

fn build_deb(root: &Path, out: &Path, binary: &Path, version: &str) -> anyhow::Result<PathBuf> {
    let deploy = root.join("deploy");
    let read =
        |p: &str| fs::read(deploy.join(p)).with_context(|| format!("cannot read deploy/{p}"));
    let stage = out.join("deb-root");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    let bin_bytes = fs::read(binary)?;
    write(&stage.join("usr/bin/tcptrace"), &bin_bytes, 0o755)?;
    write(
        &stage.join("lib/systemd/system/tcptrace.service"),
        read("systemd/tcptrace.service")?,
        0o644,
    )?;
    write(
        &stage.join("etc/default/tcptrace"),
        read("debian/default")?,
        0o644,
    )?;
    let doc = stage.join("usr/share/doc/tcptrace");
    write(&doc.join("copyright"), read("debian/copyright")?, 0o644)?;
    write(
        &doc.join("README.md.gz"),
        gzip(&fs::read(root.join("README.md"))?)?,
        0o644,
    )?;
    write(
        &doc.join("tcptrace.txt.gz"),
        // From the staged copy: clap names the program after the file it runs as.
        gzip(help_text(&stage.join("usr/bin/tcptrace"))?.as_bytes())?,
        0o644,
    )?;

    // Installed-Size in KiB, and md5sums of every file outside DEBIAN/.
    let mut files = Vec::new();
    collect_files(&stage, &stage, &mut files)?;
    files.sort();
    let mut md5sums = String::new();
    let mut bytes = 0u64;
    for rel in &files {
        let path = stage.join(rel);
        bytes += fs::metadata(&path)?.len();
        let sum = output(Command::new("md5sum").arg(&path))?;
        let hash = sum.split_whitespace().next().context("md5sum output")?;
        let _ = writeln!(md5sums, "{hash}  {}", rel.display());
    }
    let control = String::from_utf8(read("debian/control")?)?
        .replace("@VERSION@", &deb_version(version))
        .replace("@INSTALLED_SIZE@", &bytes.div_ceil(1024).to_string());
    let debian = stage.join("DEBIAN");
    write(&debian.join("control"), control, 0o644)?;
    write(&debian.join("md5sums"), md5sums, 0o644)?;
    write(&debian.join("conffiles"), read("debian/conffiles")?, 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        write(
            &debian.join(script),
            read(&format!("debian/{script}"))?,
            0o755,
        )?;
    }
    let deb = out.join(format!("tcptrace_{}_amd64.deb", deb_version(version)));
    sh(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    fs::remove_dir_all(&stage)?;
    Ok(deb)
}

fn collect_files(base: &Path, dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(base, &path, files)?;
        } else {
            files.push(path.strip_prefix(base)?.to_path_buf());
        }
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An OCI image layout with one layer (/usr/bin/tcptrace and an empty /tmp for the verifier
/// log), `tcptrace serve` on all addresses as the default command, and the standard
/// version/source/revision labels, packed as one tar.
fn build_oci(out: &Path, binary: &Path, version: &str, commit: &str) -> anyhow::Result<PathBuf> {
    let layout = out.join("oci");
    let stage = out.join("oci-root");
    for dir in [&layout, &stage] {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
    }
    write(&stage.join("usr/bin/tcptrace"), fs::read(binary)?, 0o755)?;
    fs::create_dir_all(stage.join("tmp"))?;
    fs::set_permissions(stage.join("tmp"), fs::Permissions::from_mode(0o1777))?;

    let image = format!("{}:{version}", layout.display());
    let umoci = |args: &[&str]| {
        let mut cmd = Command::new("umoci");
        cmd.args(args);
        // Without root, umoci keeps ownership in the layer's metadata instead of chown.
        if !is_root() && matches!(args.first(), Some(&"insert")) {
            cmd.arg("--rootless");
        }
        sh(&mut cmd)
    };
    umoci(&["init", "--layout", &layout.to_string_lossy()])?;
    umoci(&["new", "--image", &image])?;
    umoci(&["insert", "--image", &image, &stage.to_string_lossy(), "/"])?;
    let labels = [
        ("org.opencontainers.image.title", "tcptrace"),
        ("org.opencontainers.image.version", version),
        ("org.opencontainers.image.revision", commit),
        ("org.opencontainers.image.source", SOURCE),
        ("org.opencontainers.image.licenses", "MIT OR Apache-2.0"),
    ];
    let mut config: Vec<String> = [
        "config",
        "--image",
        &image,
        "--os",
        "linux",
        "--architecture",
        "amd64",
        "--config.entrypoint",
        "/usr/bin/tcptrace",
        "--config.cmd",
        "serve",
        "--config.cmd",
        "--web.listen-address=0.0.0.0:9850",
        "--config.exposedports",
        "9850/tcp",
    ]
    .map(str::to_owned)
    .to_vec();
    for (key, value) in labels {
        config.push("--config.label".into());
        config.push(format!("{key}={value}"));
        config.push("--manifest.annotation".into());
        config.push(format!("{key}={value}"));
    }
    umoci(&config.iter().map(String::as_str).collect::<Vec<_>>())?;
    umoci(&["gc", "--layout", &layout.to_string_lossy()])?;
    fs::remove_dir_all(&stage)?;

    let tar = out.join(format!("tcptrace-{version}-oci.tar"));
    sh(Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-C",
        ])
        .arg(&layout)
        .arg("-cf")
        .arg(&tar)
        .arg("."))?;
    Ok(tar)
}

const RULES: &str = "deploy/prometheus/tcptrace.rules.yml";
const PROMETHEUS_RULE: &str = "deploy/kubernetes/prometheusrule.yaml";

/// The PrometheusRule resource carrying the rules file's groups, for the Prometheus Operator.
pub fn prometheus_rule_manifest(rules: &str) -> anyhow::Result<String> {
    let groups = rules
        .find("\ngroups:")
        .map(|i| &rules[i + 1..])
        .context("the rules file has no top-level `groups:`")?;
    let mut out = format!(
        "# Generated from {RULES} by `cargo xtask package`: edit that file, not this one.\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  name: tcptrace\n  namespace: tcptrace\n  labels:\n    app.kubernetes.io/name: tcptrace\n\
         spec:\n"
    );
    for line in groups.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "  {line}");
        }
    }
    Ok(out)
}

/// Regenerates deploy/kubernetes/prometheusrule.yaml when the rules changed.
fn update_prometheus_rule(root: &Path) -> anyhow::Result<()> {
    let rules =
        fs::read_to_string(root.join(RULES)).with_context(|| format!("cannot read {RULES}"))?;
    let manifest = prometheus_rule_manifest(&rules)?;
    let path = root.join(PROMETHEUS_RULE);
    if fs::read_to_string(&path).ok().as_deref() != Some(manifest.as_str()) {
        fs::write(&path, manifest).with_context(|| format!("cannot write {PROMETHEUS_RULE}"))?;
        println!("xtask: regenerated {PROMETHEUS_RULE} from {RULES}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_from_version_text() {
        let text = "tcptrace 0.1.0\ncommit:  9a80c2ec5081\nkernels: Linux 5.10 or newer\n";
        assert_eq!(parse_commit(text).as_deref(), Some("9a80c2ec5081"));
        assert_eq!(parse_commit("tcptrace 0.1.0\n"), None);
        assert_eq!(deb_version("0.1.0"), "0.1.0-1");
    }

    #[test]
    fn prometheus_rule_manifest_is_current() {
        let root = workspace_root();
        let rules = fs::read_to_string(root.join(RULES)).unwrap();
        let committed = fs::read_to_string(root.join(PROMETHEUS_RULE)).unwrap();
        assert!(
            committed == prometheus_rule_manifest(&rules).unwrap(),
            "{PROMETHEUS_RULE} is stale: run `cargo xtask package` to regenerate it from {RULES}"
        );
    }

    #[test]
    fn prometheus_rule_manifest_indents_the_groups_under_spec() {
        let m = prometheus_rule_manifest("# c\ngroups:\n  - name: g\n\n    rules: []\n").unwrap();
        assert!(
            m.ends_with("spec:\n  groups:\n    - name: g\n\n      rules: []\n"),
            "{m}"
        );
        assert!(prometheus_rule_manifest("rules: []\n").is_err());
    }
}
