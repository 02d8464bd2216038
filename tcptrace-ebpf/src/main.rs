//! tcptrace's kernel side: programs on `tp_btf/inet_sock_set_state` and
//! `tp_btf/tcp_receive_reset`.
//!
//! For every TCP state transition the program works out how long the socket spent in the state
//! it leaves (per-socket entry timestamps in an LRU hash keyed by socket cookie), applies the
//! cheap filters, and streams one `RawTransition` through a ring buffer. Nothing here may
//! panic: every failure is counted in `COUNTERS` and the event is dropped.
//!
//! Each program exists twice: tracing programs may call `bpf_get_socket_cookie` only since
//! Linux 5.12 (`bpf_get_socket_ptr_cookie_proto`), so the `_nocookie` variants key sockets by
//! address and number them themselves; the loader picks the variant the kernel accepts.
#![no_std]
#![no_main]

mod filter;
mod log;
mod maps;
mod record;
mod sock;
mod sockets;
mod transition;

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tcptrace_common::flags;

// TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    if let Err(index) = transition::handle::<true>(ctx.arg(0), ctx.arg(1), ctx.arg(2)) {
        maps::bump(index);
    }
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_nocookie(ctx: BtfTracePointContext) -> i32 {
    if let Err(index) = transition::handle::<false>(ctx.arg(0), ctx.arg(1), ctx.arg(2)) {
        maps::bump(index);
    }
    0
}

/// `tcp:tcp_receive_reset(struct sock *sk)`: fires in `tcp_reset()`, before the socket moves
/// to CLOSE, so the CLOSE transition can say "reset by the peer".
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    sockets::mark::<true>(ctx.arg(0), flags::RST_RECEIVED);
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset_nocookie(ctx: BtfTracePointContext) -> i32 {
    sockets::mark::<false>(ctx.arg(0), flags::RST_RECEIVED);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // No code path may panic (the verifier would reject the program); this only satisfies
    // `no_std`.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
