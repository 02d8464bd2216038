//! Test fixtures shared by the unit tests: records, transitions and snapshot sockets.

use tcptrace_common::{AF_INET, DWELL_UNKNOWN, RawTransition, flags};

use crate::kernel::decode::from_raw;
use crate::model::snapshot::{DiagSocket, Snapshot, Timer};
use crate::model::tcp::{Endpoints, TcpState};
use crate::model::transition::Transition;

/// `curl` (pid 1234) at 127.0.0.1:45678 -> 10.1.2.3:8080, SYN_SENT -> ESTABLISHED after
/// 61.25 µs, on ksoftirqd/0's CPU, in netns 4026531840 and cgroup 7777.
pub fn raw_v4() -> RawTransition {
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"curl");
    let mut saddr = [0u8; 16];
    saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let mut daddr = [0u8; 16];
    daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
    let mut cpu_comm = [0u8; 16];
    cpu_comm[..11].copy_from_slice(b"ksoftirqd/0");
    RawTransition {
        ts_ns: 5_000_000_123,
        cookie: 4242,
        in_old_ns: 61_250,
        cpu_pid_tgid: (14u64 << 32) | 14,
        cgroup: 7777,
        listener: 0,
        request_ns: 0,
        owner: tcptrace_common::Owner {
            pid_tgid: (1234u64 << 32) | 1240,
            captured_ns: 4_000_000_000,
            comm,
        },
        saddr,
        daddr,
        sport: 45678,
        dport: 8080,
        family: AF_INET,
        oldstate: 2,
        newstate: 1,
        cpu_comm,
        netns: 4026531840,
        flags: 0,
        close: tcptrace_common::CloseStats::default(),
    }
}

/// The transition a record describes.
pub fn raw_transition(raw: &RawTransition) -> Transition {
    from_raw(raw).expect("a valid test record")
}

/// A transition of socket `cookie` built from [`raw_v4`]: `step(1, Close, SynSent).at(ns)...`.
pub struct Step(pub RawTransition);

pub fn step(cookie: u64, old: TcpState, new: TcpState) -> Step {
    let mut raw = raw_v4();
    raw.cookie = cookie;
    raw.oldstate = old.number();
    raw.newstate = new.number();
    Step(raw)
}

impl Step {
    /// At kernel time `ts_ns`.
    pub fn at(mut self, ts_ns: u64) -> Self {
        self.0.ts_ns = ts_ns;
        self
    }

    /// After `dwell` ns in the old state (`None`: unknown).
    pub fn dwell(mut self, dwell: Option<u64>) -> Self {
        self.0.in_old_ns = dwell.unwrap_or(DWELL_UNKNOWN);
        self
    }

    /// The socket has received a RST.
    pub fn rst(mut self, rst: bool) -> Self {
        if rst {
            self.0.flags |= flags::RST_RECEIVED;
        }
        self
    }

    pub fn netns(mut self, netns: u32) -> Self {
        self.0.netns = netns;
        self
    }

    /// A server child of listener `listener` whose request sent its first SYN-ACK at
    /// `request_ns` (0: unknown).
    pub fn child_of(mut self, listener: u64, request_ns: u64) -> Self {
        self.0.listener = listener;
        self.0.request_ns = request_ns;
        self
    }

    /// Ends with what the connection carried: `tx`/`rx` bytes, `retrans` segments, an RTT of
    /// `rtt_us`.
    pub fn carried(mut self, tx: u64, rx: u64, retrans: u32, rtt_us: u32) -> Self {
        self.0.flags |= flags::CLOSE_STATS;
        self.0.close = tcptrace_common::CloseStats {
            bytes_acked: tx,
            bytes_received: rx,
            total_retrans: retrans,
            srtt_us: rtt_us << 3,
            mdev_us: (rtt_us / 4) << 2,
            flags: tcptrace_common::close_flags::FIN_RECEIVED,
        };
        self
    }

    /// Local and remote ports.
    pub fn ports(mut self, local: u16, remote: u16) -> Self {
        self.0.sport = local;
        self.0.dport = remote;
        self
    }

    pub fn done(self) -> Transition {
        raw_transition(&self.0)
    }
}

/// A snapshot socket `local` -> `remote` in `state`, with inode `cookie` (0 for sockets
/// without a file), in [`raw_v4`]'s namespace; TIME_WAIT sockets carry the TIME_WAIT timer.
pub fn diag(cookie: u64, state: TcpState, local: &str, remote: &str) -> DiagSocket {
    let l: std::net::SocketAddr = local.parse().expect("local ip:port");
    let r: std::net::SocketAddr = remote.parse().expect("remote ip:port");
    let family = if l.is_ipv4() {
        crate::model::tcp::Family::Ipv4
    } else {
        crate::model::tcp::Family::Ipv6
    };
    DiagSocket {
        cookie,
        state,
        endpoints: Endpoints {
            family,
            socket_family: family,
            local_ip: l.ip(),
            local_port: l.port(),
            remote_ip: r.ip(),
            remote_port: r.port(),
        },
        timer: if state == TcpState::TimeWait {
            Timer::TimeWait
        } else {
            Timer::None
        },
        expires_ms: 0,
        inode: cookie as u32,
        rqueue: 0,
        wqueue: 0,
        idle: None,
        netns: Some(4026531840),
    }
}

/// A snapshot of [`raw_v4`]'s namespace holding `sockets`, taken at `taken_ns`.
pub fn snap(sockets: &[DiagSocket], taken_ns: u64) -> Snapshot {
    Snapshot::of(Some(4026531840), sockets.to_vec(), taken_ns)
}
