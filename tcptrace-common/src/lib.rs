//! Types shared by the tcptrace eBPF program and the userspace agent.
//!
//! Every type here is `#[repr(C)]` with explicit padding so both sides agree on the byte layout
//! without relying on compiler-inserted holes. Userspace gets `aya::Pod` impls with the `user`
//! feature.
#![no_std]

/// Length of `task_struct::comm` (`TASK_COMM_LEN` in `include/linux/sched.h`).
pub const TASK_COMM_LEN: usize = 16;

/// `RawTransition::in_old_ns` when the socket was first seen at this transition, so the time it
/// spent in the old state is unknown (it is never reported as 0).
pub const DWELL_UNKNOWN: u64 = u64::MAX;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// TCP states as Linux numbers them (`include/net/tcp_states.h`): the values of
/// `sock:inet_sock_set_state`'s `oldstate`/`newstate` and of INET_DIAG's `idiag_state`. Defined
/// here once; the kernel program compares them as `i32`, the agent names them.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    /// The state a socket is created in and ends in.
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    /// Request sockets (half-open connections); the tracepoint never reports it.
    pub const NEW_SYN_RECV: u8 = 12;
}

/// Name of the global holding [`Config`] in the eBPF object.
pub const CONFIG_GLOBAL: &str = "CONFIG";
/// Map names in the eBPF object.
pub const EVENTS_MAP: &str = "EVENTS";
pub const SOCKETS_MAP: &str = "SOCKETS";
pub const LISTENERS_MAP: &str = "LISTENERS";
pub const COUNTERS_MAP: &str = "COUNTERS";
pub const PORT_FILTER_MAP: &str = "PORT_FILTER";
/// Name of the program attached to `tp_btf/inet_sock_set_state`.
pub const PROGRAM_NAME: &str = "inet_sock_set_state";
/// The same program for kernels whose tracing programs may not call `bpf_get_socket_cookie`
/// (before Linux 5.12): sockets keyed by address, numbered by the program.
pub const PROGRAM_NAME_NO_COOKIE: &str = "inet_sock_set_state_nocookie";
/// The same program keeping each socket's entry in the socket (`BPF_MAP_TYPE_SK_STORAGE`),
/// tried first: tracing programs may use socket storage since Linux 5.11.
pub const PROGRAM_NAME_STORAGE: &str = "inet_sock_set_state_storage";
/// The RST marker of the socket-storage variant.
pub const RESET_PROGRAM_STORAGE: &str = "tcp_receive_reset_storage";
pub const TRACEPOINT: &str = "inet_sock_set_state";
/// Appended to a main program's name, the name of its nested program: a second program on the
/// same tracepoint that acts only while the main one is running on its CPU. The kernel skips
/// a program's run when that program is already running on the CPU (`__bpf_trace_run()`,
/// `prog->active`: a recursion miss), but that guard is per program, so the nested program
/// runs and handles the transition the main one had to skip.
pub const NESTED_SUFFIX: &str = "_nested";
/// Program that marks sockets that received a RST (optional: the agent degrades without it).
/// There is no "sent" counterpart: aborts (`tcp_disconnect()`, close() with unread data) set
/// CLOSE before they send their RST, so a send-side mark would come after the transition.
pub const RESET_PROGRAM: &str = "tcp_receive_reset";
/// [`RESET_PROGRAM`] for kernels without the cookie helper in tracing programs.
pub const RESET_PROGRAM_NO_COOKIE: &str = "tcp_receive_reset_nocookie";
/// The benchmark's floor programs on `tp_btf/inet_sock_set_state`, which the agent never loads:
/// one that does nothing (the cost of being attached), and one that only streams a record
/// through `EVENTS` as tcptrace's program does (reserve, timestamp, submit with the same wakeup
/// rule): the least any tracer that streams every transition pays.
pub const FLOOR_EMPTY_PROGRAM: &str = "bench_floor_empty";
/// See [`FLOOR_EMPTY_PROGRAM`].
pub const FLOOR_RING_PROGRAM: &str = "bench_floor_ring";
/// Socket ids the program numbers itself (no kernel cookie) have this bit set; kernel cookies
/// are a counter from 1 and never reach it.
pub const SYNTHETIC_ID: u64 = 1 << 63;

/// Default ring buffer size in bytes (must be a power-of-two multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;
/// Default capacity of the per-socket LRU map.
pub const DEFAULT_MAX_SOCKETS: u32 = 65_536;
/// Capacity of the listener map (one entry per listening socket).
pub const MAX_LISTENERS: u32 = 16_384;
/// How many `--pid` values the kernel-side filter holds.
pub const MAX_PID_FILTER: usize = 8;

/// `RawTransition::flags` and `SockEntry::flags` bits.
pub mod flags {
    /// The owner was inherited from the listening socket (server child sockets are created in
    /// softirq) and not yet confirmed by the socket's own process-context transition.
    pub const OWNER_INHERITED: u32 = 1;
    /// The socket received a RST (`tcp:tcp_receive_reset`, fired in `tcp_reset()` before the
    /// socket moves to CLOSE).
    pub const RST_RECEIVED: u32 = 2;
    /// `RawTransition::close` holds what the connection carried (a `-> CLOSE` transition on a
    /// kernel whose `tcp_sock` has those fields).
    pub const CLOSE_STATS: u32 = 4;
}

/// Indices into the per-CPU `COUNTERS` array.
pub mod counter {
    /// `bpf_ringbuf_reserve` failed: the ring was full and the event was dropped.
    pub const RING_FULL: u32 = 0;
    /// The event was dropped by a kernel-side filter.
    pub const FILTERED: u32 = 1;
    /// A read of a socket field the record needs failed; the event was dropped. The program
    /// reads those fields with plain loads now, which read 0 on a fault instead of failing, so
    /// it stays 0; kept so the other indices, and the agent's sum of losses, stay as they are.
    pub const READ_FAILED: u32 = 2;
    /// Records written to the ring buffer: what the agent must end up reading.
    pub const SENT: u32 = 3;
    /// Kernel log statements that ran at an enabled level (aya-log); the agent compares them
    /// with the messages it received to count the ones lost to a full log ring.
    pub const LOG_ATTEMPTS: u32 = 4;
    /// Transitions the nested program handled ([`NESTED_SUFFIX`](crate::NESTED_SUFFIX)): the
    /// main program was already running on that CPU when a softirq fired the tracepoint
    /// again, so the kernel skipped its run and counted a recursion miss.
    pub const NESTED: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 6;
}

/// Indices into the `PORT_FILTER` array: one port bitmap per filter kind.
pub mod port_filter {
    /// Either end of the connection must match (`--port`).
    pub const ANY: u32 = 0;
    /// The local port must match (`--lport`).
    pub const LOCAL: u32 = 1;
    /// The remote port must match (`--rport`).
    pub const REMOTE: u32 = 2;
    /// Number of bitmaps.
    pub const COUNT: u32 = 3;
}

/// A set of TCP ports as a 65536-bit bitmap (8 KiB), one map value.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PortSet {
    pub bits: [u64; 1024],
}

impl core::fmt::Debug for PortSet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let count: u32 = self.bits.iter().map(|w| w.count_ones()).sum();
        write!(f, "PortSet({count} ports)")
    }
}

impl PortSet {
    pub const EMPTY: Self = Self { bits: [0; 1024] };

    pub fn insert(&mut self, port: u16) {
        self.bits[usize::from(port >> 6)] |= 1 << (port & 63);
    }

    #[inline(always)]
    pub fn contains(&self, port: u16) -> bool {
        // `port >> 6` is at most 1023, so the index is always in bounds.
        (self.bits[usize::from(port >> 6)] >> (port & 63)) & 1 == 1
    }
}

/// Where the fields the program reads live inside `struct sock`, resolved in userspace from the
/// running kernel's BTF (`/sys/kernel/btf/vmlinux`): Rust eBPF has no CO-RE relocations, so
/// compile-time offsets would break on the next kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `sk->__sk_common.skc_family` (u16).
    pub family: u32,
    /// `sk->__sk_common.skc_num` (u16, host order: the local port).
    pub num: u32,
    /// `sk->__sk_common.skc_dport` (u16, network order: the remote port).
    pub dport: u32,
    /// `sk->__sk_common.skc_rcv_saddr` (local IPv4 address).
    pub rcv_saddr: u32,
    /// `sk->__sk_common.skc_daddr` (remote IPv4 address).
    pub daddr: u32,
    /// `sk->__sk_common.skc_v6_rcv_saddr`, or [`SockOffsets::ABSENT`] on kernels built without
    /// IPv6.
    pub v6_rcv_saddr: u32,
    /// `sk->__sk_common.skc_v6_daddr`, or [`SockOffsets::ABSENT`].
    pub v6_daddr: u32,
    /// `sk->__sk_common.skc_net.net` (a `struct net *`), or [`SockOffsets::ABSENT`].
    pub net: u32,
    /// `net->ns.inum`: the network namespace inode, or [`SockOffsets::ABSENT`].
    pub net_inum: u32,
    /// `sk->sk_cgrp_data.cgroup` (a `struct cgroup *`, Linux 5.15+), or [`SockOffsets::ABSENT`].
    pub cgroup: u32,
    /// `cgroup->kn` (a `struct kernfs_node *`).
    pub cgroup_kn: u32,
    /// `kn->id` (u64: the cgroup directory's inode on 64-bit).
    pub kn_id: u32,
    /// `((struct inet_sock *)sk)->inet_sport` (network order). Unlike `skc_num` it survives
    /// `inet_put_port()`, so `-> CLOSE` events (a refused connect included) keep the local
    /// port. [`SockOffsets::ABSENT`] falls back to `num`.
    pub inet_sport: u32,
    /// `sk->__sk_common.skc_cookie` (atomic64): the socket cookie once something asked for it
    /// (`sock_gen_cookie()`: INET_DIAG, SO_COOKIE), 0 before. Read only by the no-cookie program.
    pub cookie: u32,
    /// 1 when `cgroup` is the pre-5.15 `sk_cgrp_data.val`: a `struct cgroup *` when its low two
    /// bits are clear and it is not 0, else the root cgroup (`sock_cgroup_ptr()`).
    pub cgroup_tagged: u32,
    /// `sk->__sk_common.skc_state` (u8).
    pub state: u32,
    /// `sk->__sk_common.skc_bind_node` (a `struct hlist_node`: `next`, then `pprev`). A server
    /// child is a copy of its listener (`sk_clone_lock()` copies this member), so until
    /// `__inet_inherit_port()` links the child in, the child's `pprev` still points at the
    /// slot that points at the listener's node: the way from a child to the very listener it
    /// came from. [`SockOffsets::ABSENT`] when unknown.
    pub bind_node: u32,
    /// `((struct inet_connection_sock *)sk)->icsk_accept_queue.rskq_accept_tail`: the request
    /// most recently queued for accept() (`inet_csk_reqsk_queue_add()`).
    pub accept_tail: u32,
    /// `request_sock.sk`: the child a queued request completed into.
    pub req_sk: u32,
    /// `tcp_request_sock.snt_synack` (u64, microseconds of CLOCK_MONOTONIC): when the first
    /// SYN-ACK was sent (`tcp_make_synack()` sets it once).
    pub snt_synack: u32,
    /// `tcp_sock.bytes_acked` (u64, RFC 4898 tcpEStatsAppHCThruOctetsAcked, Linux 4.1+): bytes
    /// sent and acknowledged by the peer.
    pub bytes_acked: u32,
    /// `tcp_sock.bytes_received` (u64, RFC 4898 tcpEStatsAppHCThruOctetsReceived, 4.1+).
    pub bytes_received: u32,
    /// `tcp_sock.total_retrans` (u32): segments retransmitted over the connection's life.
    pub total_retrans: u32,
    /// `tcp_sock.srtt_us` (u32): the smoothed RTT in microseconds, shifted left by 3.
    pub srtt_us: u32,
    /// `tcp_sock.mdev_us` (u32): the RTT's mean deviation in microseconds, shifted left by 2.
    pub mdev_us: u32,
    /// `sk->sk_flags` (`__sk_common.skc_flags`, unsigned long), and the bit of `SOCK_DONE` in
    /// it (`enum sock_flags`, from BTF): `tcp_fin()` sets it when the peer's FIN arrives.
    pub sk_flags: u32,
    pub sock_done_bit: u32,
}

impl SockOffsets {
    pub const ABSENT: u32 = u32::MAX;

    /// Nothing resolved: the object's compile-time value, always overridden at load.
    pub const UNRESOLVED: Self = Self {
        family: 0,
        num: 0,
        dport: 0,
        rcv_saddr: 0,
        daddr: 0,
        v6_rcv_saddr: Self::ABSENT,
        v6_daddr: Self::ABSENT,
        net: Self::ABSENT,
        net_inum: Self::ABSENT,
        cgroup: Self::ABSENT,
        cgroup_kn: Self::ABSENT,
        kn_id: Self::ABSENT,
        inet_sport: Self::ABSENT,
        cookie: Self::ABSENT,
        cgroup_tagged: 0,
        state: Self::ABSENT,
        bind_node: Self::ABSENT,
        accept_tail: Self::ABSENT,
        req_sk: Self::ABSENT,
        snt_synack: Self::ABSENT,
        bytes_acked: Self::ABSENT,
        bytes_received: Self::ABSENT,
        total_retrans: Self::ABSENT,
        srtt_us: Self::ABSENT,
        mdev_us: Self::ABSENT,
        sk_flags: Self::ABSENT,
        sock_done_bit: Self::ABSENT,
    };
}

impl Config {
    /// No filters, offsets unresolved: the object's compile-time value.
    pub const UNSET: Self = Self {
        offsets: SockOffsets::UNRESOLVED,
        state_mask: 0,
        family_mask: 0,
        port_filters: 0,
        netns: 0,
        pids: [0; MAX_PID_FILTER],
        npids: 0,
        wakeup_bytes: 0,
    };
}

/// Load-time configuration of the eBPF program, written by userspace into the program's
/// read-only data before load (`EbpfLoader::override_global`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub offsets: SockOffsets,
    /// Bit `1 << state` set for every state a transition must touch (old or new) to be kept;
    /// 0 keeps every state.
    pub state_mask: u32,
    /// Bit 0: keep IPv4 sockets, bit 1: keep IPv6 sockets; 0 keeps both.
    pub family_mask: u32,
    /// Bit `1 << port_filter::X` set for every active port bitmap.
    pub port_filters: u32,
    /// Keep only sockets of this network namespace inode; 0 keeps all.
    pub netns: u32,
    /// Keep only sockets owned by one of the first `npids` process ids (tgid).
    pub pids: [u32; MAX_PID_FILTER],
    pub npids: u32,
    /// Wake the agent only when the bytes waiting in the ring reach a multiple of this: a
    /// record that does is submitted with `BPF_RB_FORCE_WAKEUP`, every other one with
    /// `BPF_RB_NO_WAKEUP`, and the agent drains on a short timer as well. A wakeup per record
    /// costs an `irq_work` (a self-IPI) and a reader context switch, which at high churn is
    /// most of the program's cost. 0: never wake (the timer alone).
    pub wakeup_bytes: u32,
}

pub const FAMILY_MASK_V4: u32 = 1;
pub const FAMILY_MASK_V6: u32 = 2;

/// The process that owns a socket, captured at a transition that runs in its context.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(
        zerocopy::FromBytes,
        zerocopy::IntoBytes,
        zerocopy::KnownLayout,
        zerocopy::Immutable
    )
)]
pub struct Owner {
    /// `bpf_get_current_pid_tgid()` at capture (tgid in the upper 32 bits); 0 = unknown.
    pub pid_tgid: u64,
    /// `bpf_ktime_get_ns()` at capture.
    pub captured_ns: u64,
    /// `comm` of the capturing thread.
    pub comm: [u8; TASK_COMM_LEN],
}

/// What the program remembers per socket, keyed by socket cookie (or, without the cookie
/// helper, by socket address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockEntry {
    /// The socket's identity for userspace ([`RawTransition::cookie`]): its cookie, or without
    /// the cookie helper an id given when the socket was first seen (see [`SYNTHETIC_ID`]).
    pub id: u64,
    /// `bpf_ktime_get_ns()` when the socket entered its current state.
    pub entered_ns: u64,
    /// cgroup v2 id of the socket (`sk->sk_cgrp_data.cgroup->kn->id`), read once: a socket's
    /// cgroup is fixed when it is created (`cgroup_sk_alloc()`).
    pub cgroup: u64,
    pub owner: Owner,
    /// Network namespace inode, read once (a socket never changes namespace).
    pub netns: u32,
    /// Last non-zero local port seen: on `-> CLOSE` events `skc_num` has already been cleared
    /// (`inet_put_port()` runs before `tcp_set_state(sk, TCP_CLOSE)` in `tcp_done()`).
    pub lport: u16,
    pub _pad: u16,
    pub flags: u32,
    pub _pad2: u32,
    /// For a server child: the id of the listener it came from ([`ListenerEntry::id`]), 0 when
    /// unknown. The agent names the child's owner after that listener's current holder.
    pub listener: u64,
}

/// A listening socket in the `LISTENERS` map, keyed by its cookie (or, for a listener whose
/// cookie was never generated on a kernel without the cookie helper, by its address: cookies
/// count up from 1 and never reach kernel addresses).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerEntry {
    /// The process its children are attributed to until their own process acts on them:
    /// captured at listen(), or written by the agent for listeners older than it (the holder
    /// `/proc/PID/fd` names) and when the holder changes (a handed-off listener).
    pub owner: Owner,
    /// The listener's id in transitions ([`RawTransition::cookie`] of its `-> LISTEN`).
    pub id: u64,
}

/// What a connection carried, read from its `struct tcp_sock` at its `-> CLOSE` transition:
/// totals over the connection's whole life (also for connections older than the agent).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(
        zerocopy::FromBytes,
        zerocopy::IntoBytes,
        zerocopy::KnownLayout,
        zerocopy::Immutable
    )
)]
pub struct CloseStats {
    /// Sequence space sent and acknowledged by the peer (`tcp_sock.bytes_acked`): the data
    /// bytes, plus one for an active opener's SYN and one for an acknowledged FIN.
    pub bytes_acked: u64,
    /// Sequence space received in order (`tcp_sock.bytes_received`): the data bytes, plus
    /// one for the peer's FIN ([`close_flags::FIN_RECEIVED`]).
    pub bytes_received: u64,
    /// Segments retransmitted (`tcp_sock.total_retrans`).
    pub total_retrans: u32,
    /// Smoothed RTT, microseconds << 3 (`tcp_sock.srtt_us`); 0 when no RTT was sampled.
    pub srtt_us: u32,
    /// RTT mean deviation, microseconds << 2 (`tcp_sock.mdev_us`).
    pub mdev_us: u32,
    /// [`close_flags`] bits.
    pub flags: u32,
}

/// `CloseStats::flags` bits.
pub mod close_flags {
    /// The peer's FIN arrived (`SOCK_DONE` in `sk->sk_flags`): `bytes_received` counts its
    /// sequence number, which carries no byte.
    pub const FIN_RECEIVED: u32 = 1;
}

/// One state transition, as written to the ring buffer by the kernel program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(
        zerocopy::FromBytes,
        zerocopy::IntoBytes,
        zerocopy::KnownLayout,
        zerocopy::Immutable
    )
)]
pub struct RawTransition {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the transition.
    pub ts_ns: u64,
    /// Socket cookie (`bpf_get_socket_cookie`): the socket's identity, also reported by
    /// INET_DIAG. Kernels without the cookie helper in tracing programs give the program's own
    /// id instead (the kernel's cookie when one was already generated, else [`SYNTHETIC_ID`]
    /// set), unique across reuse of the socket's memory.
    pub cookie: u64,
    /// Nanoseconds spent in `oldstate`, or [`DWELL_UNKNOWN`].
    pub in_old_ns: u64,
    /// `bpf_get_current_pid_tgid()`: the task on the CPU (tgid in the upper 32 bits). In
    /// softirq this is whatever task was interrupted, not the socket's owner.
    pub cpu_pid_tgid: u64,
    /// cgroup v2 id of the socket, 0 when unknown.
    pub cgroup: u64,
    /// For a server child: the id of the listener it came from, 0 when unknown.
    pub listener: u64,
    /// On a server child's `SYN_RECV -> ESTABLISHED`: CLOCK_MONOTONIC ns when its request sent
    /// the first SYN-ACK (`tcp_rsk(req)->snt_synack`, set by `tcp_make_synack()`), so the
    /// handshake as the server saw it is `ts_ns - request_ns`. 0 when unknown (another
    /// transition, a SYN cookie, or a request the program could not find).
    pub request_ns: u64,
    /// The socket's owner (`pid_tgid == 0` when unknown).
    pub owner: Owner,
    /// Local address: IPv4 in the first 4 bytes, or IPv6 (network order).
    pub saddr: [u8; 16],
    /// Remote address, same layout.
    pub daddr: [u8; 16],
    /// Local port, host order.
    pub sport: u16,
    /// Remote port, host order.
    pub dport: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    pub oldstate: u8,
    pub newstate: u8,
    /// `comm` of the task on the CPU, NUL-padded.
    pub cpu_comm: [u8; TASK_COMM_LEN],
    /// Inode of the socket's network namespace (as in `/proc/PID/ns/net`), 0 when unknown.
    pub netns: u32,
    pub flags: u32,
    /// On `-> CLOSE` (with [`flags::CLOSE_STATS`]): what the connection carried.
    pub close: CloseStats,
}

/// Size of one ring-buffer record.
pub const RAW_TRANSITION_SIZE: usize = size_of::<RawTransition>();

const _: () = assert!(RAW_TRANSITION_SIZE == 184);
const _: () = assert!(size_of::<Config>() == 164);
const _: () = assert!(size_of::<SockEntry>() == 80);
const _: () = assert!(size_of::<ListenerEntry>() == 40);

// All these types are `#[repr(C)]`, `Copy`, contain only integers and integer arrays, and have
// no implicit padding (checked by the size assertions above): any bit pattern is a valid value.
#[cfg(feature = "user")]
mod pod {
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::SockEntry {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::PortSet {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RawTransition {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ListenerEntry {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Owner {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::CloseStats {}
}
