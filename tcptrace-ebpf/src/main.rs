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
//! and number sockets themselves (before 5.12). The first two `inet_sock_set_state` variants
//! have a `_nested` twin that handles the transitions the kernel makes the main program skip.
#![no_std]
#![no_main]
// `atomic_xadd`: the BPF target's `AtomicU64` has no `fetch_add` (see `maps::bump`).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod filter;
mod floor;
mod log;
mod maps;
mod record;
mod sock;
mod sockets;
mod transition;

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use sockets::keying;
use tcptrace_common::{counter, flags};

// TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_storage(ctx: BtfTracePointContext) -> i32 {
    run_main::<{ keying::IN_SOCKET }>(&ctx)
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    run_main::<{ keying::BY_COOKIE }>(&ctx)
}

/// No nested twin. Only kernels before 5.12 load this variant; on 5.10 the nested twin caught
/// nothing in the churn test (`nested_transitions_are_handled_once_under_churn`, where 6.1
/// caught 16 per run and 7.x 1718), and with the kernel log on it made the program too large
/// for that verifier (E2BIG).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_nocookie(ctx: BtfTracePointContext) -> i32 {
    count(transition::handle::<{ keying::BY_ADDR }>(
        ctx.arg(0),
        ctx.arg(1),
        ctx.arg(2),
    ));
    0
}

// The nested programs (`tcptrace_common::NESTED_SUFFIX`), attached after their main program.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_storage_nested(ctx: BtfTracePointContext) -> i32 {
    run_nested::<{ keying::IN_SOCKET }>(&ctx)
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_nested(ctx: BtfTracePointContext) -> i32 {
    run_nested::<{ keying::BY_COOKIE }>(&ctx)
}

/// Handles the transition, marking this CPU busy meanwhile (see `maps::BUSY`). The flag is
/// cleared, not restored, at the end: where the kernel lets the main program nest in itself
/// (no `prog->active` guard for raw tracepoints on older kernels), a nested main run clears it
/// before the nested program reads it, so no transition is handled twice. The flag is per CPU:
/// whatever interrupts the main program on this CPU (a softirq), or preempts it where the
/// kernel lets probes be preempted, and fires the tracepoint finds it set. What it cannot
/// cover is the kernel's own code around the program, between the guard's increment and the
/// flag being set and after it is cleared; a main run preempted there makes other tasks'
/// transitions on this CPU skipped and lost until it runs again.
#[inline(always)]
fn run_main<const KEYING: u8>(ctx: &BtfTracePointContext) -> i32 {
    // One lookup for both writes: the handler is a subprogram, so the pointer stays in a
    // callee-saved register across it.
    let busy = maps::busy();
    if let Some(flag) = busy {
        // SAFETY: this CPU's slot of a per-CPU map value, valid for the whole run.
        unsafe { *flag = 1 };
    }
    handle_shared::<KEYING>(ctx);
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(slot) = maps::handled(tid) {
        // SAFETY: as above. Written before the flag is cleared: a nested run in this task that
        // still sees the flag set (set again by another task) also sees this.
        unsafe {
            *slot = maps::Handled {
                tid,
                states: states(ctx),
                sk: ctx.arg(0),
            }
        };
    }
    if let Some(flag) = busy {
        // SAFETY: as above.
        unsafe { *flag = 0 };
    }
    0
}

/// Handles the transition only when the main program is running on this CPU and did not
/// handle this transition itself: the kernel then skipped the main program's run for it.
/// Otherwise returns at once.
#[inline(always)]
fn run_nested<const KEYING: u8>(ctx: &BtfTracePointContext) -> i32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let mut by_main = false;
    if let Some(slot) = maps::handled(tid) {
        // SAFETY: this CPU's slot of a per-CPU map value, valid for the whole run.
        let h = unsafe { &mut *slot };
        by_main = h.tid == tid && h.sk == ctx.arg::<u64>(0) && h.states == states(ctx);
        if by_main {
            // Consumed: a later transition that happens to look the same (the same socket
            // address and states) must not match a stale entry.
            h.sk = 0;
        }
    }
    // SAFETY: as above.
    if !by_main && maps::busy().is_some_and(|flag| unsafe { *flag } != 0) {
        maps::bump(counter::NESTED);
        handle_shared::<KEYING>(ctx);
    }
    0
}

/// The transition's old and new state as `old << 8 | new` (see `maps::Handled::states`).
#[inline(always)]
fn states(ctx: &BtfTracePointContext) -> u32 {
    (ctx.arg::<u32>(1) & 0xff) << 8 | ctx.arg::<u32>(2) & 0xff
}

/// The tracepoint's transition (`sk`, old state, new state) through the shared handler.
#[inline(always)]
fn handle_shared<const KEYING: u8>(ctx: &BtfTracePointContext) {
    count(transition::handle_shared::<KEYING>(
        ctx.arg(0),
        ctx.arg(1),
        ctx.arg(2),
    ));
}

/// Counts a dropped or filtered transition (`Err(counter)`).
#[inline(always)]
fn count(handled: Result<(), u32>) {
    if let Err(index) = handled {
        maps::bump(index);
    }
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
