//! One `inet_sock_set_state` event, handled in named steps: read what the tracepoint gives,
//! hold back server children, find or start the socket's entry, keep the listener owners,
//! emit the record, forget closed sockets.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use tcptrace_common::{SockEntry, tcp_state};

use crate::log::klog;
use crate::maps::{SOCKETS, config};
use crate::record;
use crate::sock::{Sock, TcpSock};
use crate::sockets;

pub const ESTABLISHED: i32 = tcp_state::ESTABLISHED as i32;
pub const SYN_SENT: i32 = tcp_state::SYN_SENT as i32;
pub const SYN_RECV: i32 = tcp_state::SYN_RECV as i32;
pub const FIN_WAIT1: i32 = tcp_state::FIN_WAIT1 as i32;
pub const CLOSE: i32 = tcp_state::CLOSE as i32;
pub const CLOSE_WAIT: i32 = tcp_state::CLOSE_WAIT as i32;
pub const LAST_ACK: i32 = tcp_state::LAST_ACK as i32;
pub const LISTEN: i32 = tcp_state::LISTEN as i32;
/// The highest state number the kernel defines.
const MAX_STATE: i32 = tcp_state::NEW_SYN_RECV as i32;

/// The kernel's name of a state, for log messages.
#[inline(always)]
pub fn state_name(state: i32) -> &'static str {
    match state as u8 {
        tcp_state::ESTABLISHED => "ESTABLISHED",
        tcp_state::SYN_SENT => "SYN_SENT",
        tcp_state::SYN_RECV => "SYN_RECV",
        tcp_state::FIN_WAIT1 => "FIN_WAIT1",
        tcp_state::FIN_WAIT2 => "FIN_WAIT2",
        tcp_state::TIME_WAIT => "TIME_WAIT",
        tcp_state::CLOSE => "CLOSE",
        tcp_state::CLOSE_WAIT => "CLOSE_WAIT",
        tcp_state::LAST_ACK => "LAST_ACK",
        tcp_state::LISTEN => "LISTEN",
        tcp_state::CLOSING => "CLOSING",
        tcp_state::NEW_SYN_RECV => "NEW_SYN_RECV",
        _ => "?",
    }
}

/// What the tracepoint and the socket say about one transition, read once.
#[derive(Clone, Copy)]
pub struct Transition {
    pub sk: Sock,
    /// The same socket, for plain loads of its fields.
    pub tp: TcpSock,
    /// `bpf_ktime_get_ns()` at the transition.
    pub now: u64,
    pub old: i32,
    pub new: i32,
    pub family: u16,
    /// Local port, host order (0 before connect() picked one).
    pub lport: u16,
    /// Remote port, host order.
    pub rport: u16,
    /// `bpf_get_current_pid_tgid()`: the task on the CPU.
    pub cpu_pid_tgid: u64,
    /// See `RawTransition::request_ns`; set by `sockets::start`.
    pub request_ns: u64,
}

impl Transition {
    /// Reads the transition of `sk` from `old` to `new`; `None` when it is not one tcptrace
    /// reports (not TCP, or a state set again: `tcp_set_state()` also fires when a close()
    /// after shutdown() keeps FIN_WAIT1).
    #[inline(always)]
    fn read(sk: Sock, old: i32, new: i32) -> Option<Self> {
        if old == new {
            return None;
        }
        let tp = sk.tcp()?;
        let off = &config().offsets;
        if !(1..=MAX_STATE).contains(&old) || !(1..=MAX_STATE).contains(&new) {
            klog!(Warn, "unexpected TCP state numbers {} -> {}", old, new);
        }
        Some(Self {
            sk,
            tp,
            // SAFETY: no preconditions; reads the monotonic clock.
            now: unsafe { bpf_ktime_get_ns() },
            old,
            new,
            family: tp.family(off),
            lport: tp.local_port(off),
            rport: tp.remote_port(off),
            cpu_pid_tgid: bpf_get_current_pid_tgid(),
            request_ns: 0,
        })
    }

    /// Transitions that only the socket's own process causes, from a system call: connect()
    /// (`tcp_v4_connect`/`tcp_v6_connect` set SYN_SENT), listen() (`inet_csk_listen_start`),
    /// close()/shutdown() (`tcp_close_state` sets FIN_WAIT1 or LAST_ACK; a listener's
    /// `tcp_close` sets CLOSE, also when its last holder exits). Everything else may run in
    /// softirq on behalf of whichever task was interrupted. The idle task (pid 0) never owns a
    /// socket.
    #[inline(always)]
    pub fn in_owner_context(&self) -> bool {
        matches!(
            (self.old, self.new),
            (CLOSE, SYN_SENT)
                | (_, LISTEN)
                | (LISTEN, CLOSE)
                | (ESTABLISHED | SYN_RECV, FIN_WAIT1)
                | (CLOSE_WAIT, LAST_ACK)
        ) && self.cpu_pid_tgid >> 32 != 0
    }

    /// connect() or listen() on a closed socket: a new life of the socket. (Server children
    /// are born at LISTEN -> SYN_RECV, see `sockets::hold_child`.)
    #[inline(always)]
    pub fn is_birth(&self) -> bool {
        self.old == CLOSE
    }
}

/// Handles one event; `Err(counter)` counts a dropped or filtered record.
#[inline(always)]
pub fn handle<const KEYING: u8>(sk: *const u8, old: i32, new: i32) -> Result<(), u32> {
    let Some(sk) = Sock::new(sk) else {
        return Ok(());
    };
    let Some(mut t) = Transition::read(sk, old, new) else {
        return Ok(());
    };
    if (old, new) == (LISTEN, SYN_RECV) {
        sockets::hold_child(&t);
        return Ok(());
    }
    let key = sockets::key::<KEYING>(sk);
    // Either the map's entry or, for a socket seen for the first time, one on the stack.
    let mut fresh = SockEntry::default();
    let existing = sockets::existing::<KEYING>(&t, key);
    let in_old_ns = match existing {
        Some(entry) => {
            // SAFETY: a live map value of plain data; the socket's state changes are
            // serialised by its lock, so no run for another transition writes it meanwhile.
            sockets::advance(&t, unsafe { &mut *entry })
        }
        None => sockets::start::<KEYING>(&mut t, key, &mut fresh),
    };
    let sock: &SockEntry = match existing {
        // SAFETY: as above; only read from here on.
        Some(entry) => unsafe { &*entry },
        None => &fresh,
    };
    sockets::track_listener(&t, sock);
    let result = record::emit(config(), &t, sock, in_old_ns);
    if new == CLOSE && existing.is_some() && KEYING != sockets::keying::IN_SOCKET {
        // The socket's story ends here; free the slot for the next one. (Socket storage is
        // freed with the socket, and a next life starts with a birth that overwrites it.)
        let _ = SOCKETS.remove(key);
    }
    result
}

/// [`handle`] as one BPF subprogram, called by both the main and the nested program of a
/// keying. Inlined into both, the compiler outlines the log closures inside it and, to pass
/// them a `Transition`, splits its socket pointer into halves, which the verifier refuses
/// ("pointer arithmetic with >>= operator prohibited").
#[inline(never)]
pub fn handle_shared<const KEYING: u8>(sk: *const u8, old: i32, new: i32) -> Result<(), u32> {
    handle::<KEYING>(sk, old, new)
}
