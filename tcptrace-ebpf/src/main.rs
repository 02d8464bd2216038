//! tcptrace's kernel side: one program on `tp_btf/inet_sock_set_state`.
//!
//! For every TCP state transition it works out how long the socket spent in the state it leaves
//! (per-socket entry timestamps in an LRU hash keyed by socket cookie), applies the cheap
//! filters, and streams one [`RawTransition`] through a ring buffer. Nothing here may panic:
//! every failure is counted in `COUNTERS` and the event is dropped.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_buf, generated::bpf_get_socket_cookie,
    },
    macros::{btf_tracepoint, map},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use tcptrace_common::{
    AF_INET, AF_INET6, Config, DEFAULT_MAX_SOCKETS, DEFAULT_RING_BYTES, DWELL_UNKNOWN,
    FAMILY_MASK_V4, FAMILY_MASK_V6, IPPROTO_TCP, PortSet, RawTransition, SockEntry, SockOffsets,
    TCP_CLOSE, counter, port_filter,
};

/// Written by userspace before load; all-zero offsets are never used because the loader always
/// overrides this value.
#[unsafe(no_mangle)]
static CONFIG: Global<Config> = Global::new(Config {
    offsets: SockOffsets {
        family: 0,
        num: 0,
        dport: 0,
        rcv_saddr: 0,
        daddr: 0,
        v6_rcv_saddr: SockOffsets::ABSENT,
        v6_daddr: SockOffsets::ABSENT,
        protocol_word: 0,
        protocol_shift: 0,
        protocol_mask: 0,
        net: SockOffsets::ABSENT,
        net_inum: SockOffsets::ABSENT,
    },
    state_mask: 0,
    family_mask: 0,
    port_filters: 0,
    _pad: 0,
});

/// Transitions for userspace. Size set at load (`--ring-bytes`).
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Cookie -> when the socket entered its current state. Size set at load (`--max-sockets`).
#[map(name = "SOCKETS")]
static SOCKETS: LruHashMap<u64, SockEntry> = LruHashMap::with_max_entries(DEFAULT_MAX_SOCKETS, 0);

/// Per-CPU loss and filter counters, see `tcptrace_common::counter`.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Port bitmaps for `--port`, `--lport`, `--rport`, see `tcptrace_common::port_filter`.
#[map(name = "PORT_FILTER")]
static PORT_FILTER: Array<PortSet> = Array::with_max_entries(port_filter::COUNT, 0);

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    if let Err(index) = try_inet_sock_set_state(&ctx) {
        bump(index);
    }
    0
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(count) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot and the program does not nest on one CPU (nesting is a recursion miss),
        // so a plain increment is race-free.
        unsafe { *count += 1 };
    }
}

/// Reads a `T` at `offset` bytes into the socket.
#[inline(always)]
fn read<T>(sk: *const u8, offset: u32) -> Result<T, u32> {
    unsafe { bpf_probe_read_kernel(sk.wrapping_add(offset as usize).cast::<T>()) }
        .map_err(|_| counter::READ_FAILED)
}

/// Returns `Err(counter)` to count a dropped event, `Ok(())` otherwise (including events that
/// are not TCP, which are not counted).
#[inline(always)]
fn try_inet_sock_set_state(ctx: &BtfTracePointContext) -> Result<(), u32> {
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    let sk: *const u8 = ctx.arg(0);
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    let config = CONFIG.load();
    let off = config.offsets;

    // The tracepoint fires for every inet protocol (inet_sk_set_state / inet_sk_state_store).
    let protocol_word: u32 = read(sk, off.protocol_word)?;
    if (protocol_word >> off.protocol_shift) & off.protocol_mask != IPPROTO_TCP {
        return Ok(());
    }

    let now = unsafe { bpf_ktime_get_ns() };
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    let family: u16 = read(sk, off.family)?;
    let mut lport: u16 = read(sk, off.num)?;
    let dport = u16::from_be(read::<u16>(sk, off.dport)?);

    let in_old_ns = match SOCKETS.get_ptr_mut(cookie) {
        Some(entry) => {
            let entry = unsafe { &mut *entry };
            let dwell = now.wrapping_sub(entry.entered_ns);
            if lport == 0 {
                lport = entry.lport;
            } else {
                entry.lport = lport;
            }
            if newstate == TCP_CLOSE {
                // The socket's story ends here; free the slot for the next one.
                let _ = SOCKETS.remove(cookie);
            } else {
                entry.entered_ns = now;
            }
            dwell
        }
        None => {
            if newstate != TCP_CLOSE {
                let entry = SockEntry {
                    entered_ns: now,
                    lport,
                    _pad: [0; 6],
                };
                // An LRU map evicts the coldest entry instead of failing when full.
                let _ = SOCKETS.insert(cookie, entry, 0);
            }
            DWELL_UNKNOWN
        }
    };

    if !keep(&config, family, oldstate, newstate, lport, dport) {
        return Err(counter::FILTERED);
    }

    let Some(mut slot) = EVENTS.reserve::<RawTransition>(0) else {
        return Err(counter::RING_FULL);
    };
    let event = slot.write(RawTransition {
        ts_ns: now,
        cookie,
        in_old_ns,
        pid_tgid: bpf_get_current_pid_tgid(),
        saddr: [0; 16],
        daddr: [0; 16],
        sport: lport,
        dport,
        family,
        oldstate: oldstate as u8,
        newstate: newstate as u8,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        netns: netns_inum(sk, &off),
        flags: 0,
    });
    // A failed address read leaves zeros; the transition itself is still worth reporting.
    unsafe {
        if family == AF_INET6 && off.v6_daddr != SockOffsets::ABSENT {
            let _ = bpf_probe_read_kernel_buf(
                sk.wrapping_add(off.v6_rcv_saddr as usize),
                &mut event.saddr,
            );
            let _ =
                bpf_probe_read_kernel_buf(sk.wrapping_add(off.v6_daddr as usize), &mut event.daddr);
        } else {
            let _ = bpf_probe_read_kernel_buf(
                sk.wrapping_add(off.rcv_saddr as usize),
                &mut event.saddr[..4],
            );
            let _ = bpf_probe_read_kernel_buf(
                sk.wrapping_add(off.daddr as usize),
                &mut event.daddr[..4],
            );
        }
    }
    slot.submit(0);
    Ok(())
}

/// `sk->__sk_common.skc_net.net->ns.inum`, or 0 when the offsets are unknown or a read fails.
#[inline(always)]
fn netns_inum(sk: *const u8, off: &SockOffsets) -> u32 {
    if off.net == SockOffsets::ABSENT || off.net_inum == SockOffsets::ABSENT {
        return 0;
    }
    let Ok(net) = read::<*const u8>(sk, off.net) else {
        return 0;
    };
    read::<u32>(net, off.net_inum).unwrap_or(0)
}

/// The kernel-side filters: state, family and ports. Address (CIDR) filters run in userspace.
#[inline(always)]
fn keep(config: &Config, family: u16, old: i32, new: i32, lport: u16, rport: u16) -> bool {
    if config.state_mask != 0 {
        let touched = (1u32 << (old as u32 & 31)) | (1u32 << (new as u32 & 31));
        if config.state_mask & touched == 0 {
            return false;
        }
    }
    if config.family_mask != 0 {
        let bit = match family {
            AF_INET => FAMILY_MASK_V4,
            AF_INET6 => FAMILY_MASK_V6,
            _ => 0,
        };
        if config.family_mask & bit == 0 {
            return false;
        }
    }
    let filters = config.port_filters;
    if filters != 0 {
        if filters & (1 << port_filter::ANY) != 0 {
            match PORT_FILTER.get(port_filter::ANY) {
                Some(set) if set.contains(lport) || set.contains(rport) => {}
                _ => return false,
            }
        }
        if filters & (1 << port_filter::LOCAL) != 0 {
            match PORT_FILTER.get(port_filter::LOCAL) {
                Some(set) if set.contains(lport) => {}
                _ => return false,
            }
        }
        if filters & (1 << port_filter::REMOTE) != 0 {
            match PORT_FILTER.get(port_filter::REMOTE) {
                Some(set) if set.contains(rport) => {}
                _ => return false,
            }
        }
    }
    true
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
