//! tcptrace's kernel side: one program on `tp_btf/inet_sock_set_state`.
//!
//! For every TCP state transition it works out how long the socket spent in the state it leaves
//! (per-socket entry timestamps in an LRU hash keyed by socket cookie), applies the cheap
//! filters, and streams one [`RawTransition`] through a ring buffer. Nothing here may panic:
//! every failure is counted in `COUNTERS` and the event is dropped.
//!
//! Each program exists twice: tracing programs may call `bpf_get_socket_cookie` only since
//! Linux 5.12 (`bpf_get_socket_ptr_cookie_proto`), so the `_nocookie` variants key sockets by
//! address and number them themselves; the loader picks the variant the kernel accepts.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    Global,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf, generated::bpf_get_socket_cookie,
    },
    macros::{btf_tracepoint, map},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use tcptrace_common::{
    AF_INET, AF_INET6, Config, DEFAULT_MAX_SOCKETS, DEFAULT_RING_BYTES, DWELL_UNKNOWN,
    FAMILY_MASK_V4, FAMILY_MASK_V6, IPPROTO_TCP, ListenKey, MAX_LISTENERS, MAX_PID_FILTER, Owner,
    PortSet, RawTransition, SYNTHETIC_ID, SockEntry, SockOffsets, TCP_CLOSE, counter, flags,
    port_filter,
};

/// Written by userspace before load; all-zero offsets are never used because the loader always
/// overrides this value.
#[unsafe(no_mangle)]
static CONFIG: Global<Config> = Global::new(Config::UNSET);

/// Transitions for userspace. Size set at load (`--ring-bytes`).
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Cookie (or socket address, without the cookie helper) -> when the socket entered its
/// current state, and who owns it. Size set at load (`--max-sockets`).
#[map(name = "SOCKETS")]
static SOCKETS: LruHashMap<u64, SockEntry> = LruHashMap::with_max_entries(DEFAULT_MAX_SOCKETS, 0);

/// (netns, port) of each listening socket -> its owner, for the children it accepts.
#[map(name = "LISTENERS")]
static LISTENERS: LruHashMap<ListenKey, Owner> = LruHashMap::with_max_entries(MAX_LISTENERS, 0);

/// Server children between LISTEN -> SYN_RECV and their next transition, by socket address
/// (see `hold_child`). Normally they stay microseconds: the child is created by the handshake's
/// final ACK and moves on in the same softirq.
#[map(name = "CHILDREN")]
static CHILDREN: LruHashMap<u64, SockEntry> = LruHashMap::with_max_entries(MAX_HELD_CHILDREN, 0);

/// Children held at once: only a burst of handshakes completing on many CPUs in the same
/// instant, or Fast Open children waiting in SYN_RECV, occupy it.
const MAX_HELD_CHILDREN: u32 = 16_384;

/// Per-CPU loss and filter counters, see `tcptrace_common::counter`.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per-CPU sequence for socket ids the no-cookie programs give (see `SYNTHETIC_ID`).
#[map(name = "NEXT_ID")]
static NEXT_ID: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Port bitmaps for `--port`, `--lport`, `--rport`, see `tcptrace_common::port_filter`.
#[map(name = "PORT_FILTER")]
static PORT_FILTER: Array<PortSet> = Array::with_max_entries(port_filter::COUNT, 0);

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;
const TCP_LISTEN: i32 = 10;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    if let Err(index) = try_inet_sock_set_state::<true>(&ctx) {
        bump(index);
    }
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_nocookie(ctx: BtfTracePointContext) -> i32 {
    if let Err(index) = try_inet_sock_set_state::<false>(&ctx) {
        bump(index);
    }
    0
}

/// `tcp:tcp_receive_reset(struct sock *sk)`: fires in `tcp_reset()`, before the socket moves
/// to CLOSE, so the CLOSE transition can say "reset by the peer".
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    mark::<true>(ctx.arg(0), flags::RST_RECEIVED);
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset_nocookie(ctx: BtfTracePointContext) -> i32 {
    mark::<false>(ctx.arg(0), flags::RST_RECEIVED);
    0
}

/// Sets `flag` on a socket tcptrace already tracks, or on a server child still held back
/// (a Fast Open child can be reset while in SYN_RECV).
#[inline(always)]
fn mark<const COOKIE: bool>(sk: *const u8, flag: u32) {
    if sk.is_null() {
        return;
    }
    let entry = match SOCKETS.get_ptr_mut(socket_key::<COOKIE>(sk)) {
        Some(entry) => entry,
        None => match CHILDREN.get_ptr_mut(sk as u64) {
            Some(entry) => entry,
            None => return,
        },
    };
    unsafe { (*entry).flags |= flag };
}

/// The `SOCKETS` key: the socket cookie, or the socket's address. An address is reused as soon
/// as the socket is freed, which is safe only because every life of a socket starts with a
/// birth transition (see `is_birth`) that replaces whatever entry the address had.
#[inline(always)]
fn socket_key<const COOKIE: bool>(sk: *const u8) -> u64 {
    if COOKIE {
        unsafe { bpf_get_socket_cookie(sk as *mut c_void) }
    } else {
        sk as u64
    }
}

/// The id userspace sees for a socket first seen now. Without the cookie helper: the kernel's
/// cookie if one was already generated (sockets INET_DIAG has dumped, so ids match snapshots of
/// sockets older than the agent), else a per-CPU sequence with `SYNTHETIC_ID` set.
#[inline(always)]
fn new_id<const COOKIE: bool>(key: u64, sk: *const u8, off: &SockOffsets) -> u64 {
    if COOKIE {
        return key;
    }
    if off.cookie != SockOffsets::ABSENT
        && let Ok(cookie) = read::<u64>(sk, off.cookie)
        && cookie != 0
    {
        return cookie;
    }
    let cpu = u64::from(unsafe { bpf_get_smp_processor_id() });
    match NEXT_ID.get_ptr_mut(0) {
        Some(seq) => unsafe {
            // Per-CPU slot, no nesting on one CPU: a plain increment is race-free.
            *seq += 1;
            SYNTHETIC_ID | (cpu << 44) | (*seq & ((1 << 44) - 1))
        },
        None => SYNTHETIC_ID,
    }
}

/// Transitions that start a new life of a socket: connect() or listen() on a closed socket.
/// (Server children are born at LISTEN -> SYN_RECV, see `hold_child`.)
#[inline(always)]
fn is_birth(old: i32) -> bool {
    old == TCP_CLOSE
}

/// LISTEN -> SYN_RECV: a server child, created by `inet_csk_clone_lock()` in softirq. On some
/// kernels (6.1) the state is set before the child gets its own cookie (`sk_cookie` is still
/// the listener's, copied by `sk_clone_lock()`), remote port and addresses, so the transition
/// is held back by socket address, with the listener's owner, and reported at the child's
/// next transition.
#[inline(always)]
fn hold_child(sk: *const u8, now: u64, lport: u16, off: &SockOffsets) {
    let mut child = SockEntry {
        entered_ns: now,
        lport,
        netns: netns_inum(sk, off),
        cgroup: cgroup_id(sk, off),
        ..SockEntry::default()
    };
    let key = ListenKey {
        netns: child.netns,
        port: lport,
        _pad: 0,
    };
    if let Some(owner) = LISTENERS.get_ptr(key) {
        child.owner = unsafe { *owner };
        child.flags |= flags::OWNER_INHERITED;
    }
    // An LRU map evicts the coldest entry instead of failing when full.
    let _ = CHILDREN.insert(sk as u64, child, 0);
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(count) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot and the program does not nest on one CPU (nesting is a recursion miss),
        // so a plain increment is race-free.
        unsafe { *count += 1 };
    }
}

/// Reads a `T` at `offset` bytes into a kernel object.
#[inline(always)]
fn read<T>(base: *const u8, offset: u32) -> Result<T, u32> {
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
        .map_err(|_| counter::READ_FAILED)
}

/// Transitions that only the socket's own process causes, from a system call: connect()
/// (`tcp_v4_connect`/`tcp_v6_connect` set SYN_SENT), listen() (`inet_csk_listen_start`),
/// close()/shutdown() (`tcp_close_state` sets FIN_WAIT1 or LAST_ACK). Everything else may run
/// in softirq on behalf of whichever task was interrupted.
#[inline(always)]
fn in_owner_context(old: i32, new: i32) -> bool {
    matches!(
        (old, new),
        (TCP_CLOSE, TCP_SYN_SENT)
            | (_, TCP_LISTEN)
            | (TCP_ESTABLISHED | TCP_SYN_RECV, TCP_FIN_WAIT1)
            | (TCP_CLOSE_WAIT, TCP_LAST_ACK)
    )
}

/// The configuration in read-only data. Fields are read through a pointer the compiler cannot
/// see through, so it never folds in the compile-time defaults (userspace rewrites them before
/// load), and the 128-byte struct is never copied onto the 512-byte BPF stack.
#[inline(always)]
fn config() -> &'static Config {
    let ptr: *const Global<Config> = unsafe { core::ptr::read_volatile(&&raw const CONFIG) };
    // `Global<T>` is `repr(transparent)` over `T`.
    unsafe { &*ptr.cast::<Config>() }
}

/// Returns `Err(counter)` to count a dropped event, `Ok(())` otherwise (including events that
/// are not TCP, which are not counted).
#[inline(always)]
fn try_inet_sock_set_state<const COOKIE: bool>(ctx: &BtfTracePointContext) -> Result<(), u32> {
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    let sk: *const u8 = ctx.arg(0);
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    let config = config();
    let off = &config.offsets;

    // The tracepoint fires for every inet protocol (inet_sk_set_state / inet_sk_state_store).
    let protocol_word: u32 = read(sk, off.protocol_word)?;
    if (protocol_word >> off.protocol_shift) & off.protocol_mask != IPPROTO_TCP {
        return Ok(());
    }
    // tcp_set_state() also fires when a state is set again (close() after shutdown() keeps
    // FIN_WAIT1 via tcp_close_state()): not a transition, and the socket's entry time stays.
    if oldstate == newstate {
        return Ok(());
    }

    let now = unsafe { bpf_ktime_get_ns() };
    let key = socket_key::<COOKIE>(sk);
    let family: u16 = read(sk, off.family)?;
    let lport: u16 = if off.inet_sport != SockOffsets::ABSENT {
        u16::from_be(read::<u16>(sk, off.inet_sport)?)
    } else {
        read(sk, off.num)?
    };
    let dport = u16::from_be(read::<u16>(sk, off.dport)?);
    let cpu_pid_tgid = bpf_get_current_pid_tgid();
    // The idle task (pid 0) never owns a socket.
    let capture = in_owner_context(oldstate, newstate) && cpu_pid_tgid >> 32 != 0;

    if (oldstate, newstate) == (TCP_LISTEN, TCP_SYN_RECV) {
        hold_child(sk, now, lport, off);
        return Ok(());
    }

    // Either the map's entry or, for a socket seen for the first time, one on the stack. A
    // birth never continues an entry: one left under the same key belongs to an earlier life
    // whose close was missed.
    let mut fresh = SockEntry::default();
    let existing = if is_birth(oldstate) {
        None
    } else {
        SOCKETS.get_ptr_mut(key)
    };
    let (in_old_ns, known) = match existing {
        Some(entry) => {
            let e = unsafe { &mut *entry };
            let dwell = now.wrapping_sub(e.entered_ns);
            if lport != 0 {
                e.lport = lport;
            }
            e.entered_ns = now;
            if capture {
                e.owner.pid_tgid = cpu_pid_tgid;
                e.owner.captured_ns = now;
                e.owner.comm = bpf_get_current_comm().unwrap_or([0; 16]);
                e.flags &= !flags::OWNER_INHERITED;
            }
            (dwell, Some(entry))
        }
        None => {
            let mut dwell = DWELL_UNKNOWN;
            let child = if oldstate == TCP_SYN_RECV {
                CHILDREN.get_ptr(sk as u64)
            } else {
                None
            };
            if let Some(child) = child {
                // The server child held back at LISTEN -> SYN_RECV: report that transition
                // now that the child has its own cookie, ports and peer address.
                fresh = unsafe { *child };
                let _ = CHILDREN.remove(sk as u64);
                fresh.id = new_id::<COOKIE>(key, sk, off);
                if lport != 0 {
                    fresh.lport = lport;
                }
                if let Err(index) = emit(
                    config,
                    &fresh,
                    sk,
                    fresh.entered_ns,
                    DWELL_UNKNOWN,
                    cpu_pid_tgid,
                    family,
                    TCP_LISTEN,
                    TCP_SYN_RECV,
                    dport,
                ) {
                    bump(index);
                }
                dwell = now.wrapping_sub(fresh.entered_ns);
                fresh.entered_ns = now;
            } else {
                fresh.id = new_id::<COOKIE>(key, sk, off);
                fresh.entered_ns = now;
                fresh.lport = lport;
                fresh.netns = netns_inum(sk, off);
                fresh.cgroup = cgroup_id(sk, off);
                if capture {
                    fresh.owner.pid_tgid = cpu_pid_tgid;
                    fresh.owner.captured_ns = now;
                    fresh.owner.comm = bpf_get_current_comm().unwrap_or([0; 16]);
                }
            }
            if newstate != TCP_CLOSE {
                // An LRU map evicts the coldest entry instead of failing when full.
                let _ = SOCKETS.insert(key, fresh, 0);
            }
            (dwell, None)
        }
    };
    let sock: &SockEntry = match known {
        Some(entry) => unsafe { &*entry },
        None => &fresh,
    };

    if newstate == TCP_LISTEN || oldstate == TCP_LISTEN {
        let key = ListenKey {
            netns: sock.netns,
            port: sock.lport,
            _pad: 0,
        };
        if newstate == TCP_LISTEN {
            let _ = LISTENERS.insert(key, sock.owner, 0);
        } else if newstate == TCP_CLOSE {
            let _ = LISTENERS.remove(key);
        }
    }

    let result = emit(
        config,
        sock,
        sk,
        now,
        in_old_ns,
        cpu_pid_tgid,
        family,
        oldstate,
        newstate,
        dport,
    );
    if newstate == TCP_CLOSE && known.is_some() {
        // The socket's story ends here; free the slot for the next one.
        let _ = SOCKETS.remove(key);
    }
    result
}

/// Filters, then writes one record into the ring buffer, field by field (no stack copy).
#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "one call site; keeps the hot path flat"
)]
fn emit(
    config: &Config,
    sock: &SockEntry,
    sk: *const u8,
    now: u64,
    in_old_ns: u64,
    cpu_pid_tgid: u64,
    family: u16,
    oldstate: i32,
    newstate: i32,
    dport: u16,
) -> Result<(), u32> {
    if !keep(config, sock, family, oldstate, newstate, dport) {
        return Err(counter::FILTERED);
    }
    let Some(mut slot) = EVENTS.reserve::<RawTransition>(0) else {
        return Err(counter::RING_FULL);
    };
    let off = &config.offsets;
    let e = slot.as_mut_ptr();
    // SAFETY: `e` points to a reserved, exclusively owned ring record of the right size; every
    // field is written before submit.
    unsafe {
        (&raw mut (*e).ts_ns).write(now);
        (&raw mut (*e).cookie).write(sock.id);
        (&raw mut (*e).in_old_ns).write(in_old_ns);
        (&raw mut (*e).cpu_pid_tgid).write(cpu_pid_tgid);
        (&raw mut (*e).cgroup).write(sock.cgroup);
        (&raw mut (*e).owner).write(sock.owner);
        (&raw mut (*e).saddr).write([0; 16]);
        (&raw mut (*e).daddr).write([0; 16]);
        (&raw mut (*e).sport).write(sock.lport);
        (&raw mut (*e).dport).write(dport);
        (&raw mut (*e).family).write(family);
        (&raw mut (*e).oldstate).write(oldstate as u8);
        (&raw mut (*e).newstate).write(newstate as u8);
        // The owner captured just now is the current task: its name is already in hand.
        let cpu_comm = if sock.owner.captured_ns == now && sock.owner.pid_tgid == cpu_pid_tgid {
            sock.owner.comm
        } else {
            bpf_get_current_comm().unwrap_or([0; 16])
        };
        (&raw mut (*e).cpu_comm).write(cpu_comm);
        (&raw mut (*e).netns).write(sock.netns);
        (&raw mut (*e).flags).write(sock.flags);
        // A failed address read leaves zeros; the transition itself is still worth reporting.
        if family == AF_INET6 && off.v6_daddr != SockOffsets::ABSENT {
            let _ = bpf_probe_read_kernel_buf(
                sk.wrapping_add(off.v6_rcv_saddr as usize),
                &mut (*e).saddr,
            );
            let _ =
                bpf_probe_read_kernel_buf(sk.wrapping_add(off.v6_daddr as usize), &mut (*e).daddr);
        } else {
            let _ = bpf_probe_read_kernel_buf(
                sk.wrapping_add(off.rcv_saddr as usize),
                &mut (&mut (*e).saddr)[..4],
            );
            let _ = bpf_probe_read_kernel_buf(
                sk.wrapping_add(off.daddr as usize),
                &mut (&mut (*e).daddr)[..4],
            );
        }
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

/// `cgrp_dfl_root.cgrp.kn->id`: kernfs numbers the root directory 1.
const ROOT_CGROUP_ID: u64 = 1;

/// `sk->sk_cgrp_data.cgroup->kn->id`, or 0 when unknown.
#[inline(always)]
fn cgroup_id(sk: *const u8, off: &SockOffsets) -> u64 {
    if off.cgroup == SockOffsets::ABSENT
        || off.cgroup_kn == SockOffsets::ABSENT
        || off.kn_id == SockOffsets::ABSENT
    {
        return 0;
    }
    let Ok(cgroup) = read::<*const u8>(sk, off.cgroup) else {
        return 0;
    };
    if off.cgroup_tagged != 0 && (cgroup.is_null() || cgroup as u64 & 3 != 0) {
        // Pre-5.15 `sock_cgroup_ptr()`: a tagged or empty value means the root cgroup.
        return ROOT_CGROUP_ID;
    }
    if cgroup.is_null() {
        return 0;
    }
    let Ok(kn) = read::<*const u8>(cgroup, off.cgroup_kn) else {
        return 0;
    };
    if kn.is_null() {
        return 0;
    }
    read::<u64>(kn, off.kn_id).unwrap_or(0)
}

/// The kernel-side filters: state, family, ports, namespace and owner. Address (CIDR), comm
/// and cgroup filters run in userspace.
#[inline(always)]
fn keep(config: &Config, sock: &SockEntry, family: u16, old: i32, new: i32, rport: u16) -> bool {
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
    if config.netns != 0 && config.netns != sock.netns {
        return false;
    }
    if config.npids != 0 {
        let tgid = (sock.owner.pid_tgid >> 32) as u32;
        let mut found = false;
        let mut i = 0;
        while i < MAX_PID_FILTER {
            if (i as u32) < config.npids && config.pids[i] == tgid {
                found = true;
            }
            i += 1;
        }
        if !found {
            return false;
        }
    }
    let lport = sock.lport;
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
