//! Typed access to the kernel's `struct sock`: every read of kernel memory happens here, at the
//! offsets the agent resolved from the running kernel's BTF (`SockOffsets`).

use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_probe_read_kernel, bpf_probe_read_kernel_buf, generated::bpf_get_socket_cookie,
};
use tcptrace_common::{
    AF_INET6, CloseStats, IPPROTO_TCP, SockOffsets, close_flags, counter, tcp_state,
};

/// `cgrp_dfl_root.cgrp.kn->id`: kernfs numbers the root directory 1.
const ROOT_CGROUP_ID: u64 = 1;

/// A `struct sock *` from a tracepoint argument (never null: checked at construction).
#[derive(Clone, Copy)]
pub struct Sock(*const u8);

/// Reads a `T` at `offset` bytes into a kernel object; `Err(READ_FAILED)` when the kernel
/// refuses the read.
#[inline(always)]
fn read<T>(base: *const u8, offset: u32) -> Result<T, u32> {
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-handling path, so any
    // address is safe to pass; a bad one yields an error, not a fault.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
        .map_err(|_| counter::READ_FAILED)
}

impl Sock {
    pub fn new(ptr: *const u8) -> Option<Self> {
        (!ptr.is_null()).then_some(Self(ptr))
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
        read::<u64>(self.0, off.cookie).ok().filter(|&c| c != 0)
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
        let pprev = read::<*const u8>(self.0, off.bind_node + 8).ok()?;
        if pprev.is_null() {
            return None;
        }
        let node = read::<*const u8>(pprev, 0).ok()?;
        if node.is_null() {
            return None;
        }
        let listener = Sock(node.wrapping_sub(off.bind_node as usize));
        let state = read::<u8>(listener.0, off.state).ok()?;
        let port = read::<u16>(listener.0, off.num).ok()?;
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
        let Ok(req) = read::<*const u8>(self.0, off.accept_tail) else {
            return 0;
        };
        if req.is_null() || read::<*const u8>(req, off.req_sk).ok() != Some(child.0) {
            return 0;
        }
        // Monotonic microseconds stay far below 2^54 for centuries: no overflow.
        read::<u64>(req, off.snt_synack).map_or(0, |us| us.wrapping_mul(1000))
    }

    /// What the connection carried (see `CloseStats`), when this kernel's `tcp_sock` has the
    /// fields; reads that fail leave zeros.
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
            && read::<u64>(self.0, off.sk_flags).is_ok_and(|f| f >> off.sock_done_bit & 1 == 1);
        Some(CloseStats {
            bytes_acked: read(self.0, off.bytes_acked).unwrap_or(0),
            bytes_received: read(self.0, off.bytes_received).unwrap_or(0),
            total_retrans: read(self.0, off.total_retrans).unwrap_or(0),
            srtt_us: read(self.0, off.srtt_us).unwrap_or(0),
            mdev_us: read(self.0, off.mdev_us).unwrap_or(0),
            flags: if fin_received {
                close_flags::FIN_RECEIVED
            } else {
                0
            },
        })
    }

    /// Whether `sk->sk_protocol` is TCP (the tracepoint fires for every inet protocol).
    #[inline(always)]
    pub fn is_tcp(self, off: &SockOffsets) -> Result<bool, u32> {
        let word: u32 = read(self.0, off.protocol_word)?;
        Ok((word >> off.protocol_shift) & off.protocol_mask == IPPROTO_TCP)
    }

    /// `sk->__sk_common.skc_family`.
    #[inline(always)]
    pub fn family(self, off: &SockOffsets) -> Result<u16, u32> {
        read(self.0, off.family)
    }

    /// The local port, host order: `inet_sk(sk)->inet_sport`, which survives
    /// `inet_put_port()` so `-> CLOSE` events keep it; else `skc_num`.
    #[inline(always)]
    pub fn local_port(self, off: &SockOffsets) -> Result<u16, u32> {
        if off.inet_sport != SockOffsets::ABSENT {
            Ok(u16::from_be(read::<u16>(self.0, off.inet_sport)?))
        } else {
            read(self.0, off.num)
        }
    }

    /// `sk->__sk_common.skc_dport`, host order.
    #[inline(always)]
    pub fn remote_port(self, off: &SockOffsets) -> Result<u16, u32> {
        Ok(u16::from_be(read::<u16>(self.0, off.dport)?))
    }

    /// `sk->__sk_common.skc_net.net->ns.inum`, or 0 when the offsets are unknown or a read
    /// fails.
    #[inline(always)]
    pub fn netns(self, off: &SockOffsets) -> u32 {
        if off.net == SockOffsets::ABSENT || off.net_inum == SockOffsets::ABSENT {
            return 0;
        }
        let Ok(net) = read::<*const u8>(self.0, off.net) else {
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
        let Ok(cgroup) = read::<*const u8>(self.0, off.cgroup) else {
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

    /// Copies the local and remote addresses into `local` and `remote` (IPv4 in the first four
    /// bytes). A failed read leaves zeros: the transition itself is still worth reporting.
    #[inline(always)]
    pub fn read_addresses(
        self,
        off: &SockOffsets,
        family: u16,
        local: &mut [u8; 16],
        remote: &mut [u8; 16],
    ) {
        let at = |offset: u32| self.0.wrapping_add(offset as usize);
        // Constant lengths in each branch: the slices need no bounds checks.
        if family == AF_INET6 && off.v6_daddr != SockOffsets::ABSENT {
            // SAFETY: bpf_probe_read_kernel_buf copies through the kernel's fault-handling
            // path into buffers we own; a bad address yields an error, not a fault.
            unsafe {
                let _ = bpf_probe_read_kernel_buf(at(off.v6_rcv_saddr), local);
                let _ = bpf_probe_read_kernel_buf(at(off.v6_daddr), remote);
            }
        } else {
            // SAFETY: as above.
            unsafe {
                let _ = bpf_probe_read_kernel_buf(at(off.rcv_saddr), &mut local[..4]);
                let _ = bpf_probe_read_kernel_buf(at(off.daddr), &mut remote[..4]);
            }
        }
    }
}
