//! One TCP state transition of one socket, as the agent works with it (decoded from the ring
//! record by [`crate::kernel::decode`]).

use tcptrace_common::TASK_COMM_LEN;

use crate::model::tcp::{Endpoints, TcpState};

/// A task name as the kernel stores it (`task_struct::comm`): up to 16 bytes, NUL-padded, no
/// allocation. The length is not stored: connection tables keep one per socket, and 16 bytes
/// pack where 17 would not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Comm {
    bytes: [u8; TASK_COMM_LEN],
}

impl Comm {
    /// The name up to its first NUL.
    pub fn from_kernel(raw: &[u8; TASK_COMM_LEN]) -> Self {
        let mut bytes = [0; TASK_COMM_LEN];
        let len = raw.iter().position(|&b| b == 0).unwrap_or(TASK_COMM_LEN);
        bytes[..len].copy_from_slice(&raw[..len]);
        Self { bytes }
    }

    fn len(&self) -> usize {
        self.bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(TASK_COMM_LEN)
    }

    /// The name, with any invalid UTF-8 cut off at the first bad byte.
    pub fn as_str(&self) -> &str {
        let bytes = &self.bytes[..self.len()];
        match std::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes[0] == 0
    }
}

/// A task: process id (tgid) and thread name (the thread id is not kept: nothing shows it,
/// and it would grow every tracked connection by 4 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub comm: Comm,
}

impl Task {
    /// From `bpf_get_current_pid_tgid()` (tgid in the upper 32 bits) and a comm; `None` for
    /// pid 0 (the idle task, or nothing captured).
    pub fn from_kernel(pid_tgid: u64, comm: &[u8; TASK_COMM_LEN]) -> Option<Self> {
        let pid = (pid_tgid >> 32) as u32;
        (pid != 0).then(|| Self {
            pid,
            comm: Comm::from_kernel(comm),
        })
    }
}

/// The process a socket belongs to, as the kernel program captured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub task: Task,
    /// Kernel monotonic ns of the transition where it was captured.
    pub captured_ns: u64,
    /// Inherited from the listening socket (server child sockets are born in softirq), not
    /// yet confirmed by the socket's own system call.
    pub inherited: bool,
}

/// What a connection carried over its whole life, read from its `tcp_sock` when it reached
/// CLOSE (totals kept by the kernel, so also right for connections older than the agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    /// Sequence space sent and acknowledged (`tcp_sock.bytes_acked`): the data bytes, plus
    /// one for an active opener's SYN and one for an acknowledged FIN (see
    /// `Connection::tx_bytes`).
    pub acked: u64,
    /// Sequence space received (`tcp_sock.bytes_received`): the data bytes, plus one for the
    /// peer's FIN when it arrived.
    pub received: u64,
    /// The peer's FIN arrived (`SOCK_DONE`, set by `tcp_fin()`).
    pub fin_received: bool,
    /// Segments retransmitted (`tcp_sock.total_retrans`).
    pub retransmits: u32,
    /// Smoothed RTT in microseconds (`srtt_us >> 3`), `None` when no RTT was ever sampled.
    pub srtt_us: Option<u32>,
    /// RTT variation in microseconds (`mdev_us >> 2`, as `ss` and `tcp_info` report it).
    pub rttvar_us: Option<u32>,
}

impl Carried {
    /// Data bytes received: the sequence space less the peer's FIN.
    pub fn rx_bytes(&self) -> u64 {
        self.received.saturating_sub(u64::from(self.fin_received))
    }
}

/// One decoded TCP state transition (`sock:inet_sock_set_state` with `oldstate != newstate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Kernel CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns()`).
    pub ts_ns: u64,
    /// The socket's identity: its cookie (as INET_DIAG and `ss -e` report it), or on kernels
    /// without the cookie helper in tracing programs the program's own id.
    pub cookie: u64,
    pub endpoints: Endpoints,
    pub old: TcpState,
    pub new: TcpState,
    /// Time spent in `old` in ns, `None` when the socket was first seen at this transition.
    pub in_old_ns: Option<u64>,
    /// The socket's owner, `None` when unknown (never the on-CPU task by default).
    pub owner: Option<Owner>,
    /// The task on the CPU when the transition ran: in softirq (handshake completion, most
    /// peer-triggered closes) whatever task was interrupted. `None` for the idle task.
    pub cpu: Option<Task>,
    /// Network namespace inode of the socket, `None` when unknown.
    pub netns: Option<u32>,
    /// cgroup v2 id of the socket, `None` when unknown.
    pub cgroup: Option<u64>,
    /// The socket has received a RST so far in its life (`tcp:tcp_receive_reset`).
    pub rst_received: bool,
    /// For a server child: the id of the listener it came from (the `cookie` of that
    /// listener's transitions and snapshots), `None` when unknown.
    pub listener: Option<u64>,
    /// On a server child's `SYN_RECV -> ESTABLISHED`: kernel monotonic ns when the server sent
    /// its first SYN-ACK for it (`tcp_rsk(req)->snt_synack`, set by `tcp_make_synack()`); the
    /// server's handshake is `ts_ns` minus this. `None` when unknown.
    pub request_ns: Option<u64>,
    /// On `-> CLOSE`: what the connection carried (`None` on other transitions, or when the
    /// kernel's `tcp_sock` lacks the fields).
    pub carried: Option<Carried>,
}

impl Transition {
    /// How long the handshake took as the server saw it, from its first SYN-ACK to the
    /// connection being established (`None` unless this is a server child's
    /// `SYN_RECV -> ESTABLISHED` whose request the program found).
    pub fn server_handshake_ns(&self) -> Option<u64> {
        self.request_ns
            .filter(|&sent| sent <= self.ts_ns)
            .map(|sent| self.ts_ns - sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_is_cut_at_nul_and_bad_utf8() {
        let mut raw = [0u8; 16];
        raw[..3].copy_from_slice(b"abc");
        assert_eq!(Comm::from_kernel(&raw).as_str(), "abc");
        let full = *b"0123456789abcdef";
        assert_eq!(Comm::from_kernel(&full).as_str(), "0123456789abcdef");
        let mut bad = [0u8; 16];
        bad[..4].copy_from_slice(&[b'o', b'k', 0xff, b'x']);
        assert_eq!(Comm::from_kernel(&bad).as_str(), "ok");
        assert!(Comm::from_kernel(&[0; 16]).is_empty());
    }

    #[test]
    fn idle_task_is_no_task() {
        assert_eq!(Task::from_kernel(7, &[0; 16]), None);
        let t = Task::from_kernel((5 << 32) | 6, b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0").unwrap();
        assert_eq!((t.pid, t.comm.as_str()), (5, "sh"));
    }
}
