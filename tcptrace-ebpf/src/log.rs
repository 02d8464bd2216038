//! The program's own log messages (aya-log), for a bug report: off unless the agent runs with
//! `--log-level` (or `RUST_LOG`). The level is frozen into read-only data at load, so the
//! verifier removes disabled statements: they cost nothing at run time.
//!
//! Every statement that runs is counted (`counter::LOG_ATTEMPTS`); the agent compares that
//! with the messages it receives, so messages a full log ring drops are counted, not silent.

/// `klog!(Debug, "format {}", args...)`: logs at `aya_log_ebpf`'s level `Debug` (or `Warn`,
/// ...) under the target `tcptrace::kernel`.
macro_rules! klog {
    ($level:ident, $($arg:tt)+) => {
        if ::aya_log_ebpf::macro_support::level_enabled(
            ::aya_log_ebpf::macro_support::Level::$level,
        ) {
            $crate::maps::bump(::tcptrace_common::counter::LOG_ATTEMPTS);
            // aya-log-ebpf 0.2's macros ignore their context argument.
            ::aya_log_ebpf::log!(
                &(),
                target: "tcptrace::kernel",
                ::aya_log_ebpf::macro_support::Level::$level,
                $($arg)+
            );
        }
    };
}

pub(crate) use klog;
