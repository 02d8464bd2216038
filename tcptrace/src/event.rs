//! Decoding ring-buffer records into [`Transition`]s: length-checked, never panicking.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tcptrace_common::{
    AF_INET, AF_INET6, DWELL_UNKNOWN, RAW_TRANSITION_SIZE, RawTransition, TASK_COMM_LEN, flags,
};

use crate::state::TcpState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        }
    }
}

/// A task name as the kernel stores it: up to 16 bytes, NUL-padded, no allocation. The length
/// is not stored: connection tables keep one per socket, and 16 bytes pack where 17 would not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comm {
    bytes: [u8; TASK_COMM_LEN],
}

impl Comm {
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

/// A task: process id (tgid), thread id and thread name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub comm: Comm,
}

impl Task {
    fn from_kernel(pid_tgid: u64, comm: &[u8; TASK_COMM_LEN]) -> Option<Self> {
        let pid = (pid_tgid >> 32) as u32;
        (pid != 0).then(|| Self {
            pid,
            tid: pid_tgid as u32,
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

/// One decoded TCP state transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Kernel CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub cookie: u64,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub old: TcpState,
    pub new: TcpState,
    /// Time spent in `old`, `None` when the socket was first seen at this transition.
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
    /// The socket has received a RST (so far in its life).
    pub rst_received: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is {0} bytes, expected {RAW_TRANSITION_SIZE}")]
    Length(usize),
    #[error("unknown address family {0}")]
    Family(u16),
    #[error("unknown TCP state {0}")]
    State(u8),
}

/// Shows a v4-mapped IPv6 address (`::ffff:a.b.c.d`, used by dual-stack sockets talking IPv4)
/// as the IPv4 address it is.
fn unmap(addr: Ipv6Addr) -> IpAddr {
    match addr.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(addr),
    }
}

impl Transition {
    /// Decodes one ring-buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != RAW_TRANSITION_SIZE {
            return Err(DecodeError::Length(bytes.len()));
        }
        // SAFETY: the length is checked above, RawTransition is plain integers (any bit pattern
        // is valid), and read_unaligned makes no alignment assumption about the ring memory.
        let raw: RawTransition = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        Self::from_raw(&raw)
    }

    pub fn from_raw(raw: &RawTransition) -> Result<Self, DecodeError> {
        let (family, saddr, daddr) = match raw.family {
            AF_INET => {
                let s: [u8; 4] = [raw.saddr[0], raw.saddr[1], raw.saddr[2], raw.saddr[3]];
                let d: [u8; 4] = [raw.daddr[0], raw.daddr[1], raw.daddr[2], raw.daddr[3]];
                (
                    Family::Ipv4,
                    IpAddr::V4(Ipv4Addr::from(s)),
                    IpAddr::V4(Ipv4Addr::from(d)),
                )
            }
            AF_INET6 => (
                Family::Ipv6,
                unmap(Ipv6Addr::from(raw.saddr)),
                unmap(Ipv6Addr::from(raw.daddr)),
            ),
            other => return Err(DecodeError::Family(other)),
        };
        let old = TcpState::from_kernel(raw.oldstate).ok_or(DecodeError::State(raw.oldstate))?;
        let new = TcpState::from_kernel(raw.newstate).ok_or(DecodeError::State(raw.newstate))?;
        let owner = Task::from_kernel(raw.owner.pid_tgid, &raw.owner.comm).map(|task| Owner {
            task,
            captured_ns: raw.owner.captured_ns,
            inherited: raw.flags & flags::OWNER_INHERITED != 0,
        });
        Ok(Self {
            ts_ns: raw.ts_ns,
            cookie: raw.cookie,
            family,
            saddr,
            sport: raw.sport,
            daddr,
            dport: raw.dport,
            old,
            new,
            in_old_ns: (raw.in_old_ns != DWELL_UNKNOWN).then_some(raw.in_old_ns),
            owner,
            cpu: Task::from_kernel(raw.cpu_pid_tgid, &raw.cpu_comm),
            netns: (raw.netns != 0).then_some(raw.netns),
            cgroup: (raw.cgroup != 0).then_some(raw.cgroup),
            rst_received: raw.flags & flags::RST_RECEIVED != 0,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn raw_v4() -> RawTransition {
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
        }
    }

    /// The record exactly as the kernel lays it out (little-endian), byte by byte.
    fn golden_bytes() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&5_000_000_123u64.to_le_bytes()); // ts_ns
        b.extend_from_slice(&4242u64.to_le_bytes()); // cookie
        b.extend_from_slice(&61_250u64.to_le_bytes()); // in_old_ns
        b.extend_from_slice(&((14u64 << 32) | 14).to_le_bytes()); // cpu_pid_tgid
        b.extend_from_slice(&7777u64.to_le_bytes()); // cgroup
        b.extend_from_slice(&((1234u64 << 32) | 1240).to_le_bytes()); // owner.pid_tgid
        b.extend_from_slice(&4_000_000_000u64.to_le_bytes()); // owner.captured_ns
        b.extend_from_slice(b"curl\0\0\0\0\0\0\0\0\0\0\0\0"); // owner.comm
        b.extend_from_slice(&[127, 0, 0, 1]);
        b.extend_from_slice(&[0; 12]); // saddr
        b.extend_from_slice(&[10, 1, 2, 3]);
        b.extend_from_slice(&[0; 12]); // daddr
        b.extend_from_slice(&45678u16.to_le_bytes());
        b.extend_from_slice(&8080u16.to_le_bytes());
        b.extend_from_slice(&2u16.to_le_bytes()); // AF_INET
        b.extend_from_slice(&[2, 1]); // SYN_SENT -> ESTABLISHED
        b.extend_from_slice(b"ksoftirqd/0\0\0\0\0\0"); // cpu_comm
        b.extend_from_slice(&4026531840u32.to_le_bytes()); // netns
        b.extend_from_slice(&[0; 4]); // flags
        b
    }

    #[test]
    fn decodes_golden_bytes() {
        let bytes = golden_bytes();
        assert_eq!(bytes.len(), RAW_TRANSITION_SIZE);
        let t = Transition::decode(&bytes).unwrap();
        assert_eq!(t.ts_ns, 5_000_000_123);
        assert_eq!(t.cookie, 4242);
        assert_eq!(t.family, Family::Ipv4);
        assert_eq!(t.saddr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(t.daddr, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!((t.sport, t.dport), (45678, 8080));
        assert_eq!((t.old, t.new), (TcpState::SynSent, TcpState::Established));
        assert_eq!(t.in_old_ns, Some(61_250));
        let owner = t.owner.unwrap();
        let task = owner.task;
        assert_eq!(
            (task.pid, task.tid, task.comm.as_str()),
            (1234, 1240, "curl")
        );
        assert_eq!((owner.captured_ns, owner.inherited), (4_000_000_000, false));
        let cpu = t.cpu.unwrap();
        assert_eq!((cpu.pid, cpu.comm.as_str()), (14, "ksoftirqd/0"));
        assert_eq!(t.netns, Some(4026531840));
        assert_eq!(t.cgroup, Some(7777));
    }

    #[test]
    fn short_long_and_empty_records_are_errors() {
        let bytes = golden_bytes();
        for len in [0, 1, 8, RAW_TRANSITION_SIZE - 1] {
            assert_eq!(
                Transition::decode(&bytes[..len]),
                Err(DecodeError::Length(len))
            );
        }
        let mut long = bytes;
        long.push(0);
        assert_eq!(
            Transition::decode(&long),
            Err(DecodeError::Length(RAW_TRANSITION_SIZE + 1))
        );
    }

    #[test]
    fn bad_family_or_state_is_an_error() {
        let mut raw = raw_v4();
        raw.family = 1;
        assert_eq!(Transition::from_raw(&raw), Err(DecodeError::Family(1)));
        let mut raw = raw_v4();
        raw.newstate = 0;
        assert_eq!(Transition::from_raw(&raw), Err(DecodeError::State(0)));
        let mut raw = raw_v4();
        raw.oldstate = 200;
        assert_eq!(Transition::from_raw(&raw), Err(DecodeError::State(200)));
    }

    #[test]
    fn unknown_dwell_owner_and_idle_task_are_none() {
        let mut raw = raw_v4();
        raw.in_old_ns = DWELL_UNKNOWN;
        raw.cpu_pid_tgid = 0;
        raw.owner.pid_tgid = 0;
        raw.cgroup = 0;
        raw.netns = 0;
        let t = Transition::from_raw(&raw).unwrap();
        assert_eq!(t.in_old_ns, None);
        assert_eq!(t.owner, None);
        assert_eq!(t.cpu, None);
        assert_eq!((t.cgroup, t.netns), (None, None));
        raw.owner.pid_tgid = 5 << 32;
        raw.flags = flags::OWNER_INHERITED;
        assert!(Transition::from_raw(&raw).unwrap().owner.unwrap().inherited);
        raw.in_old_ns = 0;
        assert_eq!(Transition::from_raw(&raw).unwrap().in_old_ns, Some(0));
    }

    #[test]
    fn ipv6_and_v4_mapped_addresses() {
        let mut raw = raw_v4();
        raw.family = AF_INET6;
        raw.saddr = "::1".parse::<Ipv6Addr>().unwrap().octets();
        raw.daddr = "::ffff:192.0.2.7".parse::<Ipv6Addr>().unwrap().octets();
        let t = Transition::from_raw(&raw).unwrap();
        assert_eq!(t.family, Family::Ipv6);
        assert_eq!(t.saddr, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(t.daddr, "192.0.2.7".parse::<IpAddr>().unwrap());
    }

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
}
