//! Why the kernel program could not be loaded or attached, as one line a user can act on.

use std::io;
use std::path::PathBuf;

use aya::programs::ProgramError;
use tcptrace_common::{PROGRAM_NAME, TRACEPOINT};

use crate::kernel::btf::BtfError;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Capabilities checked before loading: the message names the missing ones.
    #[error("{0}")]
    MissingCaps(String),
    #[error(
        "permission denied by the kernel: loading needs root, or the CAP_BPF and CAP_PERFMON capabilities (with them, a kernel lockdown or security module may refuse it)"
    )]
    NotPermitted,
    #[error(
        "this kernel exposes no BTF ({path} is missing): tcptrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf { path: &'static str },
    #[error("cannot read the kernel's BTF at {path}: {source}")]
    ReadBtf {
        path: &'static str,
        source: io::Error,
    },
    #[error("cannot find the layout of struct sock in the kernel's BTF: {0}")]
    SockLayout(#[from] BtfError),
    #[error(
        "this kernel has no BTF tracepoint sock:{TRACEPOINT} (needs Linux 5.5 or newer with BTF): {0}"
    )]
    TracepointMissing(String),
    #[error(
        "the kernel verifier rejected program {PROGRAM_NAME} ({source}); verifier log written to {}",
        log.display()
    )]
    Verifier { source: io::Error, log: PathBuf },
    #[error("cannot {what}: {source}")]
    Aya {
        what: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Wraps an aya error with what tcptrace was doing.
pub fn aya_err(
    what: &'static str,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> LoadError {
    move |source| LoadError::Aya { what, source }
}

/// Whether an OS error means "not allowed".
pub fn is_eperm(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

/// A program load or attach error, as the user can act on it.
pub fn program_error(e: ProgramError) -> LoadError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            if is_eperm(&io_error) && log.trim().is_empty() {
                LoadError::NotPermitted
            } else {
                LoadError::Verifier {
                    source: io_error,
                    log: write_verifier_log(&log),
                }
            }
        }
        ProgramError::Btf(e) => LoadError::TracepointMissing(e.to_string()),
        ProgramError::SyscallError(ref s) if is_eperm(&s.io_error) => LoadError::NotPermitted,
        e => aya_err("load and attach to tp_btf/inet_sock_set_state")(e.into()),
    }
}

/// Whether the verifier refused the program for calling the cookie helper (tracing programs
/// may call it since Linux 5.12: "unknown func bpf_get_socket_cookie#46" before).
pub fn refuses_cookie_helper(e: &ProgramError) -> bool {
    matches!(e, ProgramError::LoadError { verifier_log, .. }
        if verifier_log.to_string().contains("bpf_get_socket_cookie"))
}

/// Whether the verifier refused the program for using socket storage (tracing programs may
/// since Linux 5.11: "unknown func bpf_sk_storage_get#107" before).
pub fn refuses_socket_storage(e: &ProgramError) -> bool {
    matches!(e, ProgramError::LoadError { verifier_log, .. }
        if verifier_log.to_string().contains("bpf_sk_storage"))
}

fn write_verifier_log(log: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("tcptrace-verifier-{}.log", std::process::id()));
    match std::fs::write(&path, log) {
        Ok(()) => path,
        Err(e) => PathBuf::from(format!("nowhere ({}: {e})", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_one_actionable_line() {
        let errs = [
            LoadError::NotPermitted.to_string(),
            LoadError::NoBtf {
                path: crate::kernel::btf::VMLINUX_BTF,
            }
            .to_string(),
            LoadError::TracepointMissing("unknown BTF type".into()).to_string(),
            LoadError::Verifier {
                source: io::Error::from_raw_os_error(libc::EINVAL),
                log: "/tmp/x.log".into(),
            }
            .to_string(),
        ];
        for e in &errs {
            assert!(!e.contains('\n'), "{e}");
        }
        assert!(errs[0].contains("CAP_PERFMON"));
        assert!(errs[1].contains("CONFIG_DEBUG_INFO_BTF"));
        assert!(errs[3].contains("/tmp/x.log"));
    }
}
