//! tcptrace's kernel side: programs on `tp_btf/inet_sock_set_state` and
//! `tp_btf/tcp_receive_reset`.
//!
//! For every TCP state transition the program works out how long the socket spent in the state
//! it leaves (per-socket entry timestamps in an LRU hash keyed by socket cookie), applies the
//! cheap filters, and streams one `RawTransition` through a ring buffer. Nothing here may
//! panic: every failure is counted in `COUNTERS` and the event is dropped.
//!
//! Each program exists three times, and the loader picks the first the kernel accepts: the
//! `_storage` variants keep each socket's entry in the socket itself (`BPF_MAP_TYPE_SK_STORAGE`;
//! tracing programs may use it since Linux 5.11, and `bpf_get_socket_cookie` since 5.12); the
//! plain ones keep it in an LRU hash by cookie; the `_nocookie` ones key that hash by address
//! and number sockets themselves (before 5.12).
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
use sockets::keying;
use tcptrace_common::flags;

// TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_storage(ctx: BtfTracePointContext) -> i32 {
    if let Err(index) =
        transition::handle::<{ keying::IN_SOCKET }>(ctx.arg(0), ctx.arg(1), ctx.arg(2))
    {
        maps::bump(index);
    }
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    if let Err(index) =
        transition::handle::<{ keying::BY_COOKIE }>(ctx.arg(0), ctx.arg(1), ctx.arg(2))
    {
        maps::bump(index);
    }
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_nocookie(ctx: BtfTracePointContext) -> i32 {
    if let Err(index) =
        transition::handle::<{ keying::BY_ADDR }>(ctx.arg(0), ctx.arg(1), ctx.arg(2))
    {
        maps::bump(index);
    }
    0
}

/// `tcp:tcp_receive_reset(struct sock *sk)`: fires in `tcp_reset()`, before the socket moves
/// to CLOSE, so the CLOSE transition can say "reset by the peer".
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    sockets::mark::<{ keying::BY_COOKIE }>(ctx.arg(0), flags::RST_RECEIVED);
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset_storage(ctx: BtfTracePointContext) -> i32 {
    sockets::mark::<{ keying::IN_SOCKET }>(ctx.arg(0), flags::RST_RECEIVED);
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset_nocookie(ctx: BtfTracePointContext) -> i32 {
    sockets::mark::<{ keying::BY_ADDR }>(ctx.arg(0), flags::RST_RECEIVED);
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
