//! A socket as a snapshot (INET_DIAG, what `ss` uses) reports it: every TCP socket that exists,
//! including TIME_WAIT and half-open request sockets, which the tracepoint never reports.

use std::ops::Range;
use std::path::PathBuf;

use crate::host::stack::{Settings, TcpCounters};
use crate::model::tcp::{Endpoints, TcpState};

/// Idle times from `struct tcp_info` (`tcp_get_info()`), in milliseconds. For a socket in
/// CLOSE_WAIT or FIN_WAIT2 the peer has nothing more to send, so `last_ack_recv_ms` is a lower
/// bound of the time in that state. Only what the checks read is kept (8 bytes, not 12: with
/// no `uid` either, a [`DiagSocket`] is 88 bytes, 8 MB less for a million sockets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idle {
    /// Since the socket last received an ACK (`tcpi_last_ack_recv`).
    pub last_ack_recv_ms: u32,
    /// Since anything was sent or received: the least of `tcpi_last_data_sent`,
    /// `tcpi_last_data_recv` and `tcpi_last_ack_recv`.
    idle_ms: u32,
}

impl Idle {
    /// From `tcp_info`'s milliseconds since data was last sent, data was last received, and
    /// an ACK was last received.
    pub fn new(last_data_sent_ms: u32, last_data_recv_ms: u32, last_ack_recv_ms: u32) -> Self {
        Self {
            last_ack_recv_ms,
            idle_ms: last_data_sent_ms
                .min(last_data_recv_ms)
                .min(last_ack_recv_ms),
        }
    }

    /// Milliseconds since anything was sent or received.
    pub fn idle_ms(&self) -> u32 {
        self.idle_ms
    }
}

/// The timer pending on a socket (`idiag_timer`, set by `inet_diag_msg_common_fill()` and
/// `inet_sk_diag_fill()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    None,
    Retransmit,
    Keepalive,
    /// A timewait socket's timer: TIME_WAIT, or the FIN_WAIT2 substate of an orphan.
    TimeWait,
    ZeroWindowProbe,
    /// A value this reader does not know.
    Other(u8),
}

impl Timer {
    /// The kernel's number for it.
    pub fn from_kernel(n: u8) -> Self {
        match n {
            0 => Self::None,
            1 => Self::Retransmit,
            2 => Self::Keepalive,
            3 => Self::TimeWait,
            4 => Self::ZeroWindowProbe,
            n => Self::Other(n),
        }
    }
}

/// One socket as INET_DIAG reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagSocket {
    /// Same value as `bpf_get_socket_cookie()` (a TIME_WAIT socket keeps its full socket's
    /// cookie: `inet_twsk_alloc()` copies `sk_cookie`).
    pub cookie: u64,
    pub state: TcpState,
    pub endpoints: Endpoints,
    pub timer: Timer,
    /// Milliseconds until the timer fires (for TIME_WAIT: until the socket disappears).
    pub expires_ms: u32,
    /// Socket inode, 0 for sockets without a file (TIME_WAIT, request sockets, orphans).
    pub inode: u32,
    /// LISTEN: connections waiting in the accept queue; others: bytes not yet read.
    pub rqueue: u32,
    /// LISTEN: the accept backlog (`sk_max_ack_backlog`); others: bytes not yet acknowledged.
    pub wqueue: u32,
    /// From `tcp_info`, when the dump asked for it and the socket is a full socket.
    pub idle: Option<Idle>,
    /// Inode of the network namespace the socket was dumped in, `None` when unknown.
    pub netns: Option<u32>,
}

impl DiagSocket {
    /// A timewait socket: TIME_WAIT proper, or an orphan in the FIN_WAIT2 substate.
    pub fn is_timewait(&self) -> bool {
        self.state == TcpState::TimeWait || self.timer == Timer::TimeWait
    }
}

/// The TCP counters and settings of one namespace, read with its sockets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stack {
    pub counters: TcpCounters,
    pub settings: Settings,
}

/// One network namespace a snapshot covers.
#[derive(Debug, Clone, PartialEq)]
pub struct Namespace {
    /// Its inode (as `readlink /proc/PID/ns/net` and the kernel program report it), `None`
    /// when unknown.
    pub inode: Option<u32>,
    /// What a person calls it: `host` (the namespace of PID 1), the name `ip netns` gave it,
    /// or a process in it (`pid 4242 (nginx)`).
    pub name: String,
    /// A path that leads into it (`None`: the agent's own namespace).
    pub path: Option<PathBuf>,
    /// Its sockets: `Snapshot::sockets[sockets]`.
    pub sockets: Range<usize>,
    /// Its counters and settings, when the snapshot asked for them.
    pub stack: Option<Stack>,
}

impl Namespace {
    /// "network namespace blue", "network namespace 4026532177" (one known by its inode only).
    pub fn described(&self) -> String {
        let name = self.name.strip_prefix("netns ").unwrap_or(&self.name);
        format!("network namespace {name}")
    }
}

/// The TCP sockets of one or more network namespaces, dumped one namespace after the other
/// from `taken_ns` on. Transitions newer than `taken_ns` may or may not be reflected in it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Grouped by namespace, in the order of `namespaces`.
    pub sockets: Vec<DiagSocket>,
    /// Kernel monotonic ns when the first namespace's dump began.
    pub taken_ns: u64,
    /// The namespaces it covers: it says nothing about sockets of any other.
    pub namespaces: Vec<Namespace>,
    /// Namespaces that could not be dumped (gone meanwhile, or refused), and why the last
    /// one could not.
    pub failed: usize,
    pub failure: Option<String>,
}

impl Snapshot {
    /// A snapshot of one namespace `inode` holding `sockets` (tests, and single dumps).
    pub fn of(inode: Option<u32>, sockets: Vec<DiagSocket>, taken_ns: u64) -> Self {
        let namespace = Namespace {
            inode,
            name: inode.map_or_else(|| "this namespace".to_owned(), |i| format!("netns {i}")),
            path: None,
            sockets: 0..sockets.len(),
            stack: None,
        };
        Self {
            sockets,
            taken_ns,
            namespaces: vec![namespace],
            failed: 0,
            failure: None,
        }
    }

    /// Whether it speaks for the sockets of namespace `netns` (a socket of unknown namespace
    /// is judged by every snapshot).
    pub fn covers(&self, netns: Option<u32>) -> bool {
        netns.is_none()
            || self
                .namespaces
                .iter()
                .any(|n| n.inode == netns || n.inode.is_none())
    }

    /// Each namespace with its sockets.
    pub fn by_namespace(&self) -> impl Iterator<Item = (&Namespace, &[DiagSocket])> {
        self.namespaces
            .iter()
            .map(|n| (n, self.sockets.get(n.sockets.clone()).unwrap_or_default()))
    }
}
