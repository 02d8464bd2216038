//! Per-socket state: keys and ids, births, the entry-time bookkeeping that yields each dwell,
//! owners, server children held back at LISTEN -> SYN_RECV, listener owners, RST marks.

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_smp_processor_id};
use tcptrace_common::{DWELL_UNKNOWN, ListenerEntry, Owner, SYNTHETIC_ID, SockEntry, flags};

use crate::log::klog;
use crate::maps::{CHILDREN, HeldChild, LISTENERS, NEXT_ID, SOCKETS, bump, config, storage};
use crate::record;
use crate::sock::Sock;
use crate::transition::{CLOSE, ESTABLISHED, LISTEN, SYN_RECV, Transition, state_name};

/// Where a program keeps each socket's entry, and what identifies the socket.
pub mod keying {
    /// In `SOCKETS`, by address; ids numbered here (kernels without the cookie helper).
    pub const BY_ADDR: u8 = 0;
    /// In `SOCKETS`, by cookie (Linux 5.12+).
    pub const BY_COOKIE: u8 = 1;
    /// In the socket's own storage (`SOCK_STORAGE`); the cookie, read once per life, is the id.
    pub const IN_SOCKET: u8 = 2;
}

/// The `SOCKETS` key: the socket cookie, or the socket's address. An address is reused as soon
/// as the socket is freed, which is safe only because every life of a socket starts with a
/// birth transition (see `Transition::is_birth`) that replaces whatever entry the address had.
/// Unused (0) for `IN_SOCKET`: no cookie is read until a socket's entry starts.
#[inline(always)]
pub fn key<const KEYING: u8>(sk: Sock) -> u64 {
    match KEYING {
        keying::BY_ADDR => sk.addr(),
        keying::BY_COOKIE => sk.cookie(),
        _ => 0,
    }
}

/// The id userspace sees for a socket first seen now. Without the cookie helper: the kernel's
/// cookie if one was already generated (sockets INET_DIAG has dumped, so ids match snapshots of
/// sockets older than the agent), else a per-CPU sequence with `SYNTHETIC_ID` set.
#[inline(always)]
fn new_id<const KEYING: u8>(key: u64, sk: Sock) -> u64 {
    match KEYING {
        keying::BY_COOKIE => return key,
        keying::IN_SOCKET => return sk.cookie(),
        _ => {}
    }
    if let Some(cookie) = sk.generated_cookie(&config().offsets) {
        return cookie;
    }
    // SAFETY: no preconditions; returns the current CPU's number.
    let cpu = u64::from(unsafe { bpf_get_smp_processor_id() });
    match NEXT_ID.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, valid for the whole run. Atomic fetch-and-add needs Linux
        // 5.12 and this runs before it; this program has no nested twin (see
        // `inet_sock_set_state_nocookie`), and its nesting in itself between this load and
        // store would give two sockets one id (a two-instruction window).
        Some(seq) => unsafe {
            *seq += 1;
            SYNTHETIC_ID | (cpu << 44) | (*seq & ((1 << 44) - 1))
        },
        None => SYNTHETIC_ID,
    }
}

/// The owner of a socket: the task on the CPU now.
#[inline(always)]
fn capture(t: &Transition) -> Owner {
    Owner {
        pid_tgid: t.cpu_pid_tgid,
        captured_ns: t.now,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// The `LISTENERS` key of listener `sk`: its cookie once one was generated (always, where
/// the cookie helper exists: the program asked for it at listen(); the agent's INET_DIAG dump
/// generates it for older listeners), else its address.
#[inline(always)]
fn listener_key(sk: Sock) -> u64 {
    sk.generated_cookie(&config().offsets)
        .unwrap_or_else(|| sk.addr())
}

/// LISTEN -> SYN_RECV: a server child, created by `inet_csk_clone_lock()` in softirq. On some
/// kernels (6.1) the state is set before the child gets its own cookie (`sk_cookie` is still
/// the listener's, copied by `sk_clone_lock()`), remote port and addresses, so the transition
/// is held back by socket address, with the owner of the very listener it came from (see
/// `Sock::listener`), and reported at the child's next transition (`start`).
#[inline(always)]
pub fn hold_child(t: &Transition) {
    let off = &config().offsets;
    let mut held = HeldChild {
        sock: SockEntry {
            entered_ns: t.now,
            lport: t.lport,
            netns: t.sk.netns(off),
            cgroup: t.sk.cgroup(off),
            ..SockEntry::default()
        },
        listener_addr: 0,
    };
    if let Some(listener) = t.sk.listener(off, t.lport, held.sock.netns) {
        held.listener_addr = listener.addr();
        // By cookie first (listeners the agent registered), then by address (listeners the
        // no-cookie program saw born before anything generated their cookie).
        let entry = LISTENERS
            .get_ptr(listener_key(listener))
            .or_else(|| LISTENERS.get_ptr(listener.addr()));
        match entry {
            Some(entry) => {
                // SAFETY: a live map value of plain data, copied out.
                let entry: ListenerEntry = unsafe { *entry };
                held.sock.owner = entry.owner;
                held.sock.listener = entry.id;
                held.sock.flags |= flags::OWNER_INHERITED;
            }
            None => {
                held.sock.listener = listener.generated_cookie(off).unwrap_or(0);
            }
        }
    } else {
        klog!(
            Debug,
            "no listener found for a server child on port {}",
            t.lport
        );
    }
    // An LRU map evicts the coldest entry instead of failing when full.
    if CHILDREN.insert(t.sk.addr(), held, 0).is_err() {
        klog!(Warn, "cannot hold a server child on port {}", t.lport);
    }
}

/// The socket's entry, unless this transition starts a new life (a birth never continues an
/// entry: one left under the same key, or in the socket, belongs to an earlier life).
#[inline(always)]
pub fn existing<const KEYING: u8>(t: &Transition, key: u64) -> Option<*mut SockEntry> {
    if t.is_birth() {
        None
    } else if KEYING == keying::IN_SOCKET {
        storage(t.sk, None)
    } else {
        SOCKETS.get_ptr_mut(key)
    }
}

/// Moves a known socket into its new state; returns the time it spent in the old one.
#[inline(always)]
pub fn advance(t: &Transition, e: &mut SockEntry) -> u64 {
    let dwell = t.now.wrapping_sub(e.entered_ns);
    if t.lport != 0 {
        e.lport = t.lport;
    }
    e.entered_ns = t.now;
    if t.in_owner_context() {
        e.owner = capture(t);
        e.flags &= !flags::OWNER_INHERITED;
    }
    dwell
}

/// Starts the entry of a socket first seen now into `fresh` (kept in `SOCKETS` unless it is
/// closing); returns the time it spent in the old state, unknown unless it is a server child
/// held back at LISTEN -> SYN_RECV, whose held transition is emitted first (and whose
/// `SYN_RECV -> ESTABLISHED` gets its request's first SYN-ACK time in `t.request_ns`).
#[inline(always)]
pub fn start<const KEYING: u8>(t: &mut Transition, key: u64, fresh: &mut SockEntry) -> u64 {
    let config = config();
    let off = &config.offsets;
    let child = if t.old == SYN_RECV {
        CHILDREN.get_ptr(t.sk.addr())
    } else {
        None
    };
    let mut dwell = DWELL_UNKNOWN;
    if let Some(child) = child {
        // The server child held back at LISTEN -> SYN_RECV: report that transition now that
        // the child has its own cookie, ports and peer address.
        // SAFETY: a live map value of plain data, copied out before the entry is removed.
        let held: HeldChild = unsafe { *child };
        *fresh = held.sock;
        let _ = CHILDREN.remove(t.sk.addr());
        if t.new == ESTABLISHED
            && let Some(listener) = Sock::new(held.listener_addr as *const u8)
        {
            t.request_ns = listener.request_sent_ns(off, t.sk);
        }
        fresh.id = new_id::<KEYING>(key, t.sk);
        if t.lport != 0 {
            fresh.lport = t.lport;
        }
        let born = Transition {
            now: fresh.entered_ns,
            old: LISTEN,
            new: SYN_RECV,
            request_ns: 0,
            ..*t
        };
        if let Err(index) = record::emit(config, &born, fresh, DWELL_UNKNOWN) {
            bump(index);
        }
        dwell = t.now.wrapping_sub(fresh.entered_ns);
        fresh.entered_ns = t.now;
    } else {
        if t.old == SYN_RECV {
            klog!(
                Debug,
                "server child on port {} was not held at LISTEN -> SYN_RECV (evicted?)",
                t.lport
            );
        } else if !t.is_birth() {
            klog!(
                Debug,
                "socket first seen mid-life: {} -> {} on local port {}",
                state_name(t.old),
                state_name(t.new),
                t.lport
            );
        }
        fresh.id = new_id::<KEYING>(key, t.sk);
        fresh.entered_ns = t.now;
        fresh.lport = t.lport;
        fresh.netns = t.sk.netns(off);
        fresh.cgroup = t.sk.cgroup(off);
        if t.in_owner_context() {
            fresh.owner = capture(t);
        }
    }
    if t.new != CLOSE {
        let kept = if KEYING == keying::IN_SOCKET {
            // An earlier life's entry is returned as it is: overwrite it.
            storage(t.sk, Some(fresh)).map(|entry| {
                // SAFETY: the socket's own storage, plain data. The socket's state changes are
                // serialised by its lock (a softirq finding it owned by a process defers to
                // its backlog), so no run for another transition writes it meanwhile.
                unsafe { *entry = *fresh };
            })
        } else {
            // An LRU map evicts the coldest entry instead of failing when full: this is rarer.
            SOCKETS.insert(key, *fresh, 0).ok()
        };
        if kept.is_none() {
            klog!(Warn, "cannot track a socket on local port {}", t.lport);
        }
    }
    dwell
}

/// Keeps `LISTENERS` current: a socket entering LISTEN registers its owner for the children
/// it will accept; one leaving it for CLOSE unregisters.
#[inline(always)]
pub fn track_listener(t: &Transition, sock: &SockEntry) {
    if t.new == LISTEN {
        let entry = ListenerEntry {
            owner: sock.owner,
            id: sock.id,
        };
        let _ = LISTENERS.insert(listener_key(t.sk), entry, 0);
    } else if t.old == LISTEN && t.new == CLOSE {
        let _ = LISTENERS.remove(listener_key(t.sk));
        let _ = LISTENERS.remove(t.sk.addr());
    }
}

/// Sets `flag` on a socket tcptrace already tracks, or on a server child still held back
/// (a Fast Open child can be reset while in SYN_RECV).
#[inline(always)]
pub fn mark<const KEYING: u8>(sk: *const u8, flag: u32) {
    let Some(sk) = Sock::new(sk) else {
        return;
    };
    let entry = if KEYING == keying::IN_SOCKET {
        storage(sk, None)
    } else {
        SOCKETS.get_ptr_mut(key::<KEYING>(sk))
    };
    let entry = match entry {
        Some(entry) => entry,
        None => match CHILDREN.get_ptr_mut(sk.addr()) {
            // SAFETY: a live map value; only the address of a field is taken.
            Some(held) => unsafe { &raw mut (*held).sock },
            None => return,
        },
    };
    // SAFETY: a live map value of plain data; a lost flag bit is the worst a concurrent
    // write to the same entry could do (a reset then reads as an abort).
    unsafe { (*entry).flags |= flag };
}
