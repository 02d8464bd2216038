//! Typed access to the kernel's `struct sock`: every read of kernel memory happens here, at the
//! offsets the agent resolved from the running kernel's BTF (`SockOffsets`).
//!
//! The fields every transition needs are read from a [`TcpSock`] with plain loads; the rest
//! (pointer chains, read at a socket's birth or a server child's handshake, and through
//! pointers the verifier does not type) with `bpf_probe_read_kernel`.

use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_probe_read_kernel,
    generated::{bpf_get_socket_cookie, bpf_skc_to_tcp_sock},
};
use tcptrace_common::{AF_INET6, CloseStats, SockOffsets, close_flags, tcp_state};

/// `cgrp_dfl_root.cgrp.kn->id`: kernfs numbers the root directory 1.
const ROOT_CGROUP_ID: u64 = 1;

/// A `struct sock *` from a tracepoint argument (never null: checked at construction).
#[derive(Clone, Copy)]
pub struct Sock(*const u8);

/// Reads a `T` at `offset` bytes into a kernel object; `None` when the kernel refuses the
/// read.
#[inline(always)]
fn read<T>(base: *const u8, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-handling path, so any
    // address is safe to pass; a bad one yields an error, not a fault.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }.ok()
}

impl Sock {
    pub fn new(ptr: *const u8) -> Option<Self> {
        (!ptr.is_null()).then_some(Self(ptr))
    }

    /// The socket as a `struct tcp_sock`, when it is a full TCP socket: `bpf_skc_to_tcp_sock()`
    /// (tracing programs may call it since Linux 5.9) checks `sk_fullsock()` and
    /// `sk_protocol == IPPROTO_TCP`. `None` for the other protocols the tracepoint fires for.
    #[inline(always)]
    pub fn tcp(self) -> Option<TcpSock> {
        // SAFETY: the helper takes any socket pointer the tracepoint handed us and returns
        // null or the same socket, typed.
        let tp = unsafe { bpf_skc_to_tcp_sock(self.as_ptr()) };
        (!tp.is_null()).then_some(TcpSock(tp as *const u8))
    }

    /// The pointer itself, for helpers that take a socket.
    #[inline(always)]
    pub fn as_ptr(self) -> *mut c_void {
        self.0.cast_mut().cast()
    }

    /// The socket's kernel address: a key only for as long as the socket lives (addresses are
    /// reused at once after it is freed).
    #[inline(always)]
    pub fn addr(self) -> u64 {
        self.0 as u64
    }

    /// `bpf_get_socket_cookie(sk)`: unique for the socket's life, kept by its timewait socket.
    /// Tracing programs may call it since Linux 5.12.
    #[inline(always)]
    pub fn cookie(self) -> u64 {
        // SAFETY: the helper takes any socket pointer the tracepoint handed us.
        unsafe { bpf_get_socket_cookie(self.0 as *mut c_void) }
    }

    /// `sk->__sk_common.skc_cookie`: the cookie if something already generated it
    /// (`sock_gen_cookie()`: INET_DIAG, SO_COOKIE), else 0 or absent.
    #[inline(always)]
    pub fn generated_cookie(self, off: &SockOffsets) -> Option<u64> {
        if off.cookie == SockOffsets::ABSENT {
            return None;
        }
        read::<u64>(self.0, off.cookie).filter(|&c| c != 0)
    }

    /// The listener a server child was cloned from, at the child's `LISTEN -> SYN_RECV` (in
    /// `inet_csk_clone_lock()`, before `__inet_inherit_port()` links the child into the bind
    /// table): the child's copy of the listener's `skc_bind_node.pprev` points at the slot
    /// holding the listener's node. Checked to be a socket that listens on the child's port in
    /// the child's namespace; `None` when anything does not fit. This tells apart listeners
    /// that share a port (SO_REUSEPORT, or different addresses), which a (namespace, port) key
    /// cannot. Only a socket bound to the same port in the same instant could be mistaken for
    /// it (it would have been inserted ahead of the listener in the bucket).
    #[inline(always)]
    pub fn listener(self, off: &SockOffsets, lport: u16, netns: u32) -> Option<Sock> {
        if off.bind_node == SockOffsets::ABSENT || off.state == SockOffsets::ABSENT {
            return None;
        }
        // struct hlist_node { struct hlist_node *next, **pprev; }
        let pprev = read::<*const u8>(self.0, off.bind_node + 8)?;
        if pprev.is_null() {
            return None;
        }
        let node = read::<*const u8>(pprev, 0)?;
        if node.is_null() {
            return None;
        }
        let listener = Sock(node.wrapping_sub(off.bind_node as usize));
        let state = read::<u8>(listener.0, off.state)?;
        let port = read::<u16>(listener.0, off.num)?;
        (state == tcp_state::LISTEN && port == lport && listener.netns(off) == netns)
            .then_some(listener)
    }

    /// When the request that became `child` sent its first SYN-ACK (CLOCK_MONOTONIC ns), read
    /// at the child's `SYN_RECV -> ESTABLISHED` from this listener's accept queue, where
    /// `inet_csk_reqsk_queue_add()` appended the request just before (`req->sk == child`
    /// proves it is that one). 0 when unknown: the request was already accepted, another
    /// request was queued meanwhile, or a SYN cookie rebuilt it without a time.
    #[inline(always)]
    pub fn request_sent_ns(self, off: &SockOffsets, child: Sock) -> u64 {
        if off.accept_tail == SockOffsets::ABSENT
            || off.req_sk == SockOffsets::ABSENT
            || off.snt_synack == SockOffsets::ABSENT
        {
            return 0;
        }
        let Some(req) = read::<*const u8>(self.0, off.accept_tail) else {
            return 0;
        };
        if req.is_null() || read::<*const u8>(req, off.req_sk) != Some(child.0) {
            return 0;
        }
        // Monotonic microseconds stay far below 2^54 for centuries: no overflow.
        read::<u64>(req, off.snt_synack).map_or(0, |us| us.wrapping_mul(1000))
    }

    /// `sk->__sk_common.skc_net.net->ns.inum`, or 0 when the offsets are unknown or a read
    /// fails.
    #[inline(always)]
    pub fn netns(self, off: &SockOffsets) -> u32 {
        if off.net == SockOffsets::ABSENT || off.net_inum == SockOffsets::ABSENT {
            return 0;
        }
        let Some(net) = read::<*const u8>(self.0, off.net) else {
            return 0;
        };
        read::<u32>(net, off.net_inum).unwrap_or(0)
    }

    /// `sk->sk_cgrp_data.cgroup->kn->id` (the cgroup v2 directory's inode), or 0 when unknown.
    #[inline(always)]
    pub fn cgroup(self, off: &SockOffsets) -> u64 {
        if off.cgroup == SockOffsets::ABSENT
            || off.cgroup_kn == SockOffsets::ABSENT
            || off.kn_id == SockOffsets::ABSENT
        {
            return 0;
        }
        let Some(cgroup) = read::<*const u8>(self.0, off.cgroup) else {
            return 0;
        };
        if off.cgroup_tagged != 0 && (cgroup.is_null() || cgroup as u64 & 3 != 0) {
            // Pre-5.15 `sock_cgroup_ptr()`: a tagged or empty value means the root cgroup.
            return ROOT_CGROUP_ID;
        }
        if cgroup.is_null() {
            return 0;
        }
        let Some(kn) = read::<*const u8>(cgroup, off.cgroup_kn) else {
            return 0;
        };
        if kn.is_null() {
            return 0;
        }
        read::<u64>(kn, off.kn_id).unwrap_or(0)
    }
}

/// A full TCP socket as the verifier knows it: a `struct tcp_sock *` typed by the kernel's BTF
/// (from [`Sock::tcp`]). Its fields are read with plain loads instead of a helper call each.
/// The verifier checks every load against the BTF layout at load time (the offsets come from
/// the frozen read-only `CONFIG`, so they are constants to it): a load must fall within one
/// member of the struct, so a wrong offset or a too-wide load fails the program's load, not a
/// read (the agent resolves the offsets from the same BTF and checks the members' widths).
/// The JIT guards each load: one that faults reads 0 (`BPF_PROBE_MEM`).
#[derive(Clone, Copy)]
pub struct TcpSock(*const u8);

impl TcpSock {
    /// The `T` at `offset` bytes into the `tcp_sock`. Volatile, so that the compiler neither
    /// merges neighbouring loads into one wider load (the verifier refuses a load that spans
    /// two fields) nor moves them.
    #[inline(always)]
    fn load<T: Copy>(self, offset: u32) -> T {
        // SAFETY: see the type: the verifier admits the load only within one member of the
        // BTF struct, and the kernel's exception table turns a fault into a 0 read; `T` is
        // plain data.
        unsafe { core::ptr::read_volatile(self.0.wrapping_add(offset as usize).cast::<T>()) }
    }

    /// `sk->__sk_common.skc_family`.
    #[inline(always)]
    pub fn family(self, off: &SockOffsets) -> u16 {
        self.load(off.family)
    }

    /// The local port, host order: `inet_sk(sk)->inet_sport`, which survives
    /// `inet_put_port()` so `-> CLOSE` events keep it; else `skc_num`.
    #[inline(always)]
    pub fn local_port(self, off: &SockOffsets) -> u16 {
        if off.inet_sport != SockOffsets::ABSENT {
            u16::from_be(self.load(off.inet_sport))
        } else {
            self.load(off.num)
        }
    }

    /// `sk->__sk_common.skc_dport`, host order.
    #[inline(always)]
    pub fn remote_port(self, off: &SockOffsets) -> u16 {
        u16::from_be(self.load(off.dport))
    }

    /// What the connection carried (see `CloseStats`), when this kernel's `tcp_sock` has the
    /// fields.
    #[inline(always)]
    pub fn close_stats(self, off: &SockOffsets) -> Option<CloseStats> {
        if off.bytes_acked == SockOffsets::ABSENT
            || off.bytes_received == SockOffsets::ABSENT
            || off.total_retrans == SockOffsets::ABSENT
            || off.srtt_us == SockOffsets::ABSENT
            || off.mdev_us == SockOffsets::ABSENT
        {
            return None;
        }
        let fin_received = off.sk_flags != SockOffsets::ABSENT
            && off.sock_done_bit < 64
            && self.load::<u64>(off.sk_flags) >> off.sock_done_bit & 1 == 1;
        Some(CloseStats {
            bytes_acked: self.load(off.bytes_acked),
            bytes_received: self.load(off.bytes_received),
            total_retrans: self.load(off.total_retrans),
            srtt_us: self.load(off.srtt_us),
            mdev_us: self.load(off.mdev_us),
            flags: if fin_received {
                close_flags::FIN_RECEIVED
            } else {
                0
            },
        })
    }

    /// Copies the local and remote addresses into `local` and `remote` (IPv4 in the first four
    /// bytes), a 4-byte word at a time (`skc_rcv_saddr` and `skc_daddr` are `__be32`, and
    /// `struct in6_addr` is four of them).
    #[inline(always)]
    pub fn read_addresses(
        self,
        off: &SockOffsets,
        family: u16,
        local: &mut [u8; 16],
        remote: &mut [u8; 16],
    ) {
        let words = |at: u32, out: &mut [u8; 16], n: u32| {
            for i in 0..n {
                let word: u32 = self.load(at + 4 * i);
                let i = i as usize * 4;
                // Constant indices after unrolling: no bounds checks.
                if let Some(dst) = out.get_mut(i..i + 4) {
                    dst.copy_from_slice(&word.to_ne_bytes());
                }
            }
        };
        if family == AF_INET6
            && off.v6_daddr != SockOffsets::ABSENT
            && off.v6_rcv_saddr != SockOffsets::ABSENT
        {
            words(off.v6_rcv_saddr, local, 4);
            words(off.v6_daddr, remote, 4);
        } else {
            words(off.rcv_saddr, local, 1);
            words(off.daddr, remote, 1);
        }
    }
}
