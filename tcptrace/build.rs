//! Builds the eBPF object from `tcptrace-ebpf` with the nightly toolchain (aya-build) so the
//! agent can embed it with `include_bytes_aligned!`, and records the git commit for
//! `tcptrace --version`.
use std::process::Command;

fn main() -> anyhow::Result<()> {
    // The shared types are compiled into the eBPF object too.
    println!("cargo:rerun-if-changed=../tcptrace-common/src");
    git_commit();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tcptrace-ebpf",
            root_dir: "../tcptrace-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

/// `TCPTRACE_GIT_COMMIT`: set by the builder (a source tarball has no .git), else the checkout's
/// HEAD, else "unknown". Rebuilt when HEAD or the branch it points to moves.
fn git_commit() {
    println!("cargo:rerun-if-env-changed=TCPTRACE_GIT_COMMIT");
    let commit = std::env::var("TCPTRACE_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let head = git(&["rev-parse", "--git-path", "HEAD"])?;
            println!("cargo:rerun-if-changed={head}");
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                // Only files that exist: cargo reruns a script whose watched file is missing on
                // every build. A checkout has the loose ref or packed-refs or both; a commit on
                // a branch that was only packed writes a new loose ref, which the reflog of
                // HEAD (appended on every move) catches.
                for path in [branch.as_str(), "packed-refs", "logs/HEAD"] {
                    if let Some(p) = git(&["rev-parse", "--git-path", path])
                        && std::path::Path::new(&p).exists()
                    {
                        println!("cargo:rerun-if-changed={p}");
                    }
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TCPTRACE_GIT_COMMIT={commit}");
}
