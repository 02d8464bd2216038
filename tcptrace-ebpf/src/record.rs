//! Writing a transition into the ring buffer, and when to wake the agent.

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use aya_ebpf::helpers::bpf_get_current_comm;
use tcptrace_common::{CloseStats, Config, RawTransition, SockEntry, counter, flags};

use crate::filter;
use crate::maps::{EVENTS, bump};
use crate::transition::{CLOSE, Transition};

/// Filters, then writes one record for `t` of socket `sock`, `in_old_ns` after it entered the
/// old state, into the ring buffer, field by field (no stack copy). `Err(counter)` counts a
/// filtered or dropped record.
#[inline(always)]
pub fn emit(config: &Config, t: &Transition, sock: &SockEntry, in_old_ns: u64) -> Result<(), u32> {
    if !filter::keep(config, t, sock) {
        return Err(counter::FILTERED);
    }
    let Some(mut slot) = EVENTS.reserve::<RawTransition>(0) else {
        return Err(counter::RING_FULL);
    };
    let e = slot.as_mut_ptr();
    // The owner captured just now is the current task: its name is already in hand.
    let cpu_comm = if sock.owner.captured_ns == t.now && sock.owner.pid_tgid == t.cpu_pid_tgid {
        sock.owner.comm
    } else {
        bpf_get_current_comm().unwrap_or([0; 16])
    };
    // What the connection carried, read once, at its end.
    let close = if t.new == CLOSE {
        t.tp.close_stats(&config.offsets)
    } else {
        None
    };
    let flags = sock.flags
        | if close.is_some() {
            flags::CLOSE_STATS
        } else {
            0
        };
    // SAFETY: `e` points to a reserved, exclusively owned ring record of the right size; every
    // field is written before submit.
    unsafe {
        (&raw mut (*e).ts_ns).write(t.now);
        (&raw mut (*e).cookie).write(sock.id);
        (&raw mut (*e).in_old_ns).write(in_old_ns);
        (&raw mut (*e).cpu_pid_tgid).write(t.cpu_pid_tgid);
        (&raw mut (*e).cgroup).write(sock.cgroup);
        (&raw mut (*e).listener).write(sock.listener);
        (&raw mut (*e).request_ns).write(t.request_ns);
        (&raw mut (*e).owner).write(sock.owner);
        (&raw mut (*e).saddr).write([0; 16]);
        (&raw mut (*e).daddr).write([0; 16]);
        (&raw mut (*e).sport).write(sock.lport);
        (&raw mut (*e).dport).write(t.rport);
        (&raw mut (*e).family).write(t.family);
        (&raw mut (*e).oldstate).write(t.old as u8);
        (&raw mut (*e).newstate).write(t.new as u8);
        (&raw mut (*e).cpu_comm).write(cpu_comm);
        (&raw mut (*e).netns).write(sock.netns);
        (&raw mut (*e).flags).write(flags);
        (&raw mut (*e).close).write(close.unwrap_or(CloseStats::default()));
        t.tp.read_addresses(&config.offsets, t.family, &mut (*e).saddr, &mut (*e).daddr);
    }
    slot.submit(wakeup_flags(config.wakeup_bytes));
    bump(counter::SENT);
    Ok(())
}

/// Submit flags: wake the agent only when enough is waiting (see `Config::wakeup_bytes`).
#[inline(always)]
fn wakeup_flags(wakeup_bytes: u32) -> u64 {
    if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= u64::from(wakeup_bytes) {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}
