//! Ring-buffer records to [`Transition`]s: length-checked, never panicking, no unsafe code
//! (`RawTransition` is read with zerocopy).

use tcptrace_common::{DWELL_UNKNOWN, RAW_TRANSITION_SIZE, RawTransition, flags};
use zerocopy::FromBytes as _;

use crate::model::tcp::{Endpoints, TcpState};
use crate::model::transition::{Carried, Owner, Task, Transition};

/// Why a record could not be decoded (counted, never fatal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is {0} bytes, expected {RAW_TRANSITION_SIZE}")]
    Length(usize),
    #[error("unknown address family {0}")]
    Family(u16),
    #[error("unknown TCP state {0}")]
    State(u8),
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Transition, DecodeError> {
    let raw =
        RawTransition::read_from_bytes(bytes).map_err(|_| DecodeError::Length(bytes.len()))?;
    from_raw(&raw)
}

/// Interprets a record already in hand.
pub fn from_raw(raw: &RawTransition) -> Result<Transition, DecodeError> {
    let endpoints =
        Endpoints::from_kernel(raw.family, &raw.saddr, raw.sport, &raw.daddr, raw.dport)
            .ok_or(DecodeError::Family(raw.family))?;
    let old = TcpState::from_kernel(raw.oldstate).ok_or(DecodeError::State(raw.oldstate))?;
    let new = TcpState::from_kernel(raw.newstate).ok_or(DecodeError::State(raw.newstate))?;
    let owner = Task::from_kernel(raw.owner.pid_tgid, &raw.owner.comm).map(|task| Owner {
        task,
        captured_ns: raw.owner.captured_ns,
        inherited: raw.flags & flags::OWNER_INHERITED != 0,
    });
    Ok(Transition {
        ts_ns: raw.ts_ns,
        cookie: raw.cookie,
        endpoints,
        old,
        new,
        in_old_ns: (raw.in_old_ns != DWELL_UNKNOWN).then_some(raw.in_old_ns),
        owner,
        cpu: Task::from_kernel(raw.cpu_pid_tgid, &raw.cpu_comm),
        netns: (raw.netns != 0).then_some(raw.netns),
        cgroup: (raw.cgroup != 0).then_some(raw.cgroup),
        rst_received: raw.flags & flags::RST_RECEIVED != 0,
        listener: (raw.listener != 0).then_some(raw.listener),
        request_ns: (raw.request_ns != 0).then_some(raw.request_ns),
        carried: (raw.flags & flags::CLOSE_STATS != 0).then(|| {
            let c = &raw.close;
            // No RTT sample leaves srtt at 0 (`tcp_ack_update_rtt()` never ran).
            let sampled = c.srtt_us != 0;
            Carried {
                acked: c.bytes_acked,
                received: c.bytes_received,
                fin_received: c.flags & tcptrace_common::close_flags::FIN_RECEIVED != 0,
                retransmits: c.total_retrans,
                srtt_us: sampled.then_some(c.srtt_us >> 3),
                rttvar_us: sampled.then_some(c.mdev_us >> 2),
            }
        }),
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr};

    use tcptrace_common::{AF_INET, AF_INET6};

    use super::*;
    use crate::model::tcp::Family;
    use crate::testing::raw_v4;

    /// The record exactly as the kernel lays it out (little-endian), byte by byte.
    fn golden_bytes() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&5_000_000_123u64.to_le_bytes()); // ts_ns
        b.extend_from_slice(&4242u64.to_le_bytes()); // cookie
        b.extend_from_slice(&61_250u64.to_le_bytes()); // in_old_ns
        b.extend_from_slice(&((14u64 << 32) | 14).to_le_bytes()); // cpu_pid_tgid
        b.extend_from_slice(&7777u64.to_le_bytes()); // cgroup
        b.extend_from_slice(&0u64.to_le_bytes()); // listener
        b.extend_from_slice(&0u64.to_le_bytes()); // request_ns
        b.extend_from_slice(&((1234u64 << 32) | 1240).to_le_bytes()); // owner.pid_tgid
        b.extend_from_slice(&4_000_000_000u64.to_le_bytes()); // owner.captured_ns
        b.extend_from_slice(b"curl\0\0\0\0\0\0\0\0\0\0\0\0"); // owner.comm
        b.extend_from_slice(&[127, 0, 0, 1]);
        b.extend_from_slice(&[0; 12]); // saddr
        b.extend_from_slice(&[10, 1, 2, 3]);
        b.extend_from_slice(&[0; 12]); // daddr
        b.extend_from_slice(&45678u16.to_le_bytes());
        b.extend_from_slice(&8080u16.to_le_bytes());
        b.extend_from_slice(&AF_INET.to_le_bytes());
        b.extend_from_slice(&[2, 1]); // SYN_SENT -> ESTABLISHED
        b.extend_from_slice(b"ksoftirqd/0\0\0\0\0\0"); // cpu_comm
        b.extend_from_slice(&4026531840u32.to_le_bytes()); // netns
        b.extend_from_slice(&[0; 4]); // flags
        b.extend_from_slice(&[0; 32]); // close
        b
    }

    #[test]
    fn decodes_golden_bytes() {
        let bytes = golden_bytes();
        assert_eq!(bytes.len(), RAW_TRANSITION_SIZE);
        let t = decode(&bytes).unwrap();
        assert_eq!(t, from_raw(&raw_v4()).unwrap());
        assert_eq!(t.ts_ns, 5_000_000_123);
        assert_eq!(t.cookie, 4242);
        assert_eq!(t.endpoints.family, Family::Ipv4);
        assert_eq!(t.endpoints.local().to_string(), "127.0.0.1:45678");
        assert_eq!(t.endpoints.remote().to_string(), "10.1.2.3:8080");
        assert_eq!((t.old, t.new), (TcpState::SynSent, TcpState::Established));
        assert_eq!(t.in_old_ns, Some(61_250));
        let owner = t.owner.unwrap();
        let task = owner.task;
        assert_eq!((task.pid, task.comm.as_str()), (1234, "curl"));
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
            assert_eq!(decode(&bytes[..len]), Err(DecodeError::Length(len)));
        }
        let mut long = bytes;
        long.push(0);
        assert_eq!(
            decode(&long),
            Err(DecodeError::Length(RAW_TRANSITION_SIZE + 1))
        );
    }

    #[test]
    fn bad_family_or_state_is_an_error() {
        let mut raw = raw_v4();
        raw.family = 1;
        assert_eq!(from_raw(&raw), Err(DecodeError::Family(1)));
        let mut raw = raw_v4();
        raw.newstate = 0;
        assert_eq!(from_raw(&raw), Err(DecodeError::State(0)));
        let mut raw = raw_v4();
        raw.oldstate = 200;
        assert_eq!(from_raw(&raw), Err(DecodeError::State(200)));
    }

    #[test]
    fn unknown_dwell_owner_and_idle_task_are_none() {
        let mut raw = raw_v4();
        raw.in_old_ns = DWELL_UNKNOWN;
        raw.cpu_pid_tgid = 0;
        raw.owner.pid_tgid = 0;
        raw.cgroup = 0;
        raw.netns = 0;
        let t = from_raw(&raw).unwrap();
        assert_eq!(t.in_old_ns, None);
        assert_eq!(t.owner, None);
        assert_eq!(t.cpu, None);
        assert_eq!((t.cgroup, t.netns), (None, None));
        raw.owner.pid_tgid = 5 << 32;
        raw.flags = flags::OWNER_INHERITED;
        assert!(from_raw(&raw).unwrap().owner.unwrap().inherited);
        raw.in_old_ns = 0;
        assert_eq!(from_raw(&raw).unwrap().in_old_ns, Some(0));
    }

    #[test]
    fn what_a_closed_connection_carried() {
        let mut raw = raw_v4();
        raw.newstate = 7;
        assert_eq!(from_raw(&raw).unwrap().carried, None, "no flag, no figures");
        raw.flags = flags::CLOSE_STATS;
        raw.close = tcptrace_common::CloseStats {
            bytes_acked: 1 << 20,
            bytes_received: 65536,
            total_retrans: 3,
            srtt_us: 800 << 3,
            mdev_us: 100 << 2,
            flags: tcptrace_common::close_flags::FIN_RECEIVED,
        };
        let c = from_raw(&raw).unwrap().carried.unwrap();
        assert_eq!(
            (c.acked, c.rx_bytes(), c.retransmits, c.srtt_us, c.rttvar_us),
            (1 << 20, 65535, 3, Some(800), Some(100)),
            "the peer's FIN takes a sequence number, not a byte"
        );
        raw.close.srtt_us = 0;
        let c = from_raw(&raw).unwrap().carried.unwrap();
        assert_eq!((c.srtt_us, c.rttvar_us), (None, None), "never sampled");
    }

    #[test]
    fn listener_and_request_time_of_a_server_child() {
        let mut raw = raw_v4();
        assert_eq!(from_raw(&raw).unwrap().listener, None);
        raw.listener = 99;
        raw.request_ns = raw.ts_ns - 1_000_000_000;
        let t = from_raw(&raw).unwrap();
        assert_eq!(t.listener, Some(99));
        assert_eq!(t.server_handshake_ns(), Some(1_000_000_000));
        // A request time after the transition is nonsense, not a negative handshake.
        raw.request_ns = raw.ts_ns + 1;
        assert_eq!(from_raw(&raw).unwrap().server_handshake_ns(), None);
    }

    #[test]
    fn ipv6_and_v4_mapped_addresses() {
        let mut raw = raw_v4();
        raw.family = AF_INET6;
        raw.saddr = Ipv6Addr::LOCALHOST.octets();
        raw.daddr = "::ffff:192.0.2.7".parse::<Ipv6Addr>().unwrap().octets();
        let t = from_raw(&raw).unwrap();
        assert_eq!(t.endpoints.family, Family::Ipv4, "IPv4 traffic");
        assert_eq!(t.endpoints.socket_family, Family::Ipv6);
        assert_eq!(t.endpoints.local_ip, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(
            t.endpoints.remote_ip,
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }
}
