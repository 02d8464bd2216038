//! The benchmark's floor (`tcptrace_common::FLOOR_EMPTY_PROGRAM`, `FLOOR_RING_PROGRAM`): what
//! any tracer of this tracepoint pays, measured beside tcptrace's own program by `cargo xtask
//! bench`. The agent never loads these.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use tcptrace_common::{RawTransition, counter};

use crate::maps::{EVENTS, bump, config};
use crate::record::wakeup_flags;

/// Being attached and run: nothing else.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn bench_floor_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// Streaming a record per transition and nothing more: reserve a record of tcptrace's size,
/// write the time and the states, submit it with tcptrace's wakeup rule, and count it in
/// `COUNTERS` (sent, or lost to a full ring) as tcptrace's program does.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn bench_floor_ring(ctx: BtfTracePointContext) -> i32 {
    let Some(mut slot) = EVENTS.reserve::<RawTransition>(0) else {
        bump(counter::RING_FULL);
        return 0;
    };
    let e = slot.as_mut_ptr();
    // SAFETY: `e` points to a reserved, exclusively owned ring record of the right size; the
    // reader only counts records and reads none of the fields left unwritten.
    unsafe {
        (&raw mut (*e).ts_ns).write(bpf_ktime_get_ns());
        (&raw mut (*e).oldstate).write(ctx.arg::<u32>(1) as u8);
        (&raw mut (*e).newstate).write(ctx.arg::<u32>(2) as u8);
    }
    slot.submit(wakeup_flags(config().wakeup_bytes));
    bump(counter::SENT);
    0
}
