//! Writing a transition into the ring buffer, and when to wake the agent.

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use aya_ebpf::helpers::bpf_get_current_comm;
use tcptrace_common::{
    CloseStats, Config, RAW_TRANSITION_SIZE, RawTransition, SockEntry, counter, flags,
};

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

/// Bytes a record takes in the ring: the record and the ring's 8-byte header, rounded up to 8.
const RECORD_SPAN: u64 = (RAW_TRANSITION_SIZE as u64 + 8).next_multiple_of(8);

/// How far past a multiple of `Config::wakeup_bytes` the data waiting may be for a record to
/// still wake the agent: other CPUs' reservations can move it past the multiple between this
/// record's reservation and the query.
const WAKEUP_WINDOW: u64 = 16 * RECORD_SPAN;

/// Submit flags: wake the agent when the data waiting reaches a multiple of
/// `Config::wakeup_bytes`, not for every record past it. Each forced wakeup queues an
/// `irq_work`, raised with a self-IPI (an APIC write, which a virtual machine traps), and
/// until the agent runs and drains, every record past the threshold would force one: a churn
/// profile showed a fifth of the program's samples in that APIC write. A wakeup this misses
/// (more CPUs than the window reserving at once) costs at most the agent's own drain period.
#[inline(always)]
pub fn wakeup_flags(wakeup_bytes: u32) -> u64 {
    let waiting = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    let step = u64::from(wakeup_bytes);
    match waiting.checked_rem(step) {
        Some(past) if waiting >= step && past < WAKEUP_WINDOW => u64::from(BPF_RB_FORCE_WAKEUP),
        _ => u64::from(BPF_RB_NO_WAKEUP),
    }
}
