//! Snapshots of every TCP socket in this network namespace over netlink INET_DIAG (what `ss`
//! uses), including TIME_WAIT and half-open request sockets, which the tracepoint never reports.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use crate::event::Family;
use crate::state::TcpState;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDR_LEN: usize = 16;
/// `struct inet_diag_msg` without its trailing attributes.
const INET_DIAG_MSG_LEN: usize = 72;
/// `INET_DIAG_INFO`: the attribute carrying `struct tcp_info` (full sockets only).
const INET_DIAG_INFO: u16 = 2;
/// `tcp_info` up to and including `tcpi_last_ack_recv`.
const TCP_INFO_IDLE_LEN: usize = 60;

/// Idle times from `struct tcp_info` (`tcp_get_info()`): milliseconds since this socket last
/// sent data, received data, and received an ACK. For a socket in CLOSE_WAIT or FIN_WAIT2 the
/// peer has nothing more to send, so `last_ack_recv` is a lower bound of the time in that state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idle {
    pub last_data_sent_ms: u32,
    pub last_data_recv_ms: u32,
    pub last_ack_recv_ms: u32,
}

impl Idle {
    /// Milliseconds since anything was sent or received.
    pub fn idle_ms(&self) -> u32 {
        self.last_data_sent_ms
            .min(self.last_data_recv_ms)
            .min(self.last_ack_recv_ms)
    }
}

/// One socket as INET_DIAG reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagSocket {
    /// Same value as `bpf_get_socket_cookie()` (a TIME_WAIT socket keeps its full socket's
    /// cookie: `inet_twsk_alloc()` copies `sk_cookie`).
    pub cookie: u64,
    pub state: TcpState,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// `idiag_timer`: 0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero-window probe.
    pub timer: u8,
    /// Milliseconds until the timer fires (for TIME_WAIT: until the socket disappears).
    pub expires_ms: u32,
    pub uid: u32,
    /// Socket inode, 0 for sockets without a file (TIME_WAIT, request sockets, orphans).
    pub inode: u32,
    /// LISTEN: connections waiting in the accept queue; others: bytes not yet read.
    pub rqueue: u32,
    /// LISTEN: the accept backlog (`sk_max_ack_backlog`); others: bytes not yet acknowledged.
    pub wqueue: u32,
    /// From `tcp_info`, when the dump asked for it and the socket is a full socket.
    pub idle: Option<Idle>,
}

/// Parses a `SOCK_DIAG_BY_FAMILY` response buffer into `out`, keeping the sockets `keep`
/// accepts. Returns whether the dump is complete (`NLMSG_DONE` seen). Malformed messages are
/// an error, never a panic.
pub fn parse_messages(
    buf: &[u8],
    out: &mut Vec<DiagSocket>,
    keep: &mut dyn FnMut(&DiagSocket) -> bool,
) -> io::Result<bool> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("INET_DIAG: {what}"));
    let mut at = 0;
    while at + NLMSG_HDR_LEN <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
        if len < NLMSG_HDR_LEN || at + len > buf.len() {
            return Err(bad("truncated message"));
        }
        let payload = &buf[at + NLMSG_HDR_LEN..at + len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                    .unwrap_or(0);
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(-errno));
                }
            }
            SOCK_DIAG_BY_FAMILY => {
                if payload.len() < INET_DIAG_MSG_LEN {
                    return Err(bad("short inet_diag_msg"));
                }
                if let Some(s) = parse_msg(payload)
                    && keep(&s)
                {
                    out.push(s);
                }
            }
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Ok(false)
}

fn parse_msg(p: &[u8]) -> Option<DiagSocket> {
    let family = p[0];
    let state = TcpState::from_kernel(p[1])?;
    let be16 = |at: usize| u16::from_be_bytes([p[at], p[at + 1]]);
    let ne32 = |at: usize| u32::from_ne_bytes(p[at..at + 4].try_into().unwrap());
    // struct inet_diag_sockid at 4: sport, dport, src[16], dst[16], if, cookie[2]
    let addr = |at: usize| -> Option<IpAddr> {
        match i32::from(family) {
            libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
                p[at],
                p[at + 1],
                p[at + 2],
                p[at + 3],
            ))),
            libc::AF_INET6 => {
                let octets: [u8; 16] = p[at..at + 16].try_into().ok()?;
                let v6 = Ipv6Addr::from(octets);
                Some(match v6.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(v6),
                })
            }
            _ => None,
        }
    };
    Some(DiagSocket {
        idle: parse_info(&p[INET_DIAG_MSG_LEN..]),
        rqueue: ne32(56),
        wqueue: ne32(60),
        cookie: u64::from(ne32(44)) | (u64::from(ne32(48)) << 32),
        state,
        family: if i32::from(family) == libc::AF_INET {
            Family::Ipv4
        } else {
            Family::Ipv6
        },
        saddr: addr(8)?,
        sport: be16(4),
        daddr: addr(24)?,
        dport: be16(6),
        timer: p[2],
        expires_ms: ne32(52),
        uid: ne32(64),
        inode: ne32(68),
    })
}

/// Finds `INET_DIAG_INFO` among the attributes that follow `inet_diag_msg`.
fn parse_info(mut attrs: &[u8]) -> Option<Idle> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        let body = &attrs[4..len];
        if kind == INET_DIAG_INFO && body.len() >= TCP_INFO_IDLE_LEN {
            let ne32 = |at: usize| u32::from_ne_bytes(body[at..at + 4].try_into().unwrap());
            // struct tcp_info: tcpi_last_data_sent at 44, _last_data_recv at 52, _last_ack_recv at 56.
            return Some(Idle {
                last_data_sent_ms: ne32(44),
                last_data_recv_ms: ne32(52),
                last_ack_recv_ms: ne32(56),
            });
        }
        attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
    }
    None
}

/// Dumps every TCP socket (IPv4 and IPv6) in the caller's network namespace.
pub fn dump_tcp() -> io::Result<Vec<DiagSocket>> {
    dump_tcp_where(false, 0, &mut |_| true)
}

/// As [`dump_tcp`], with each full socket's idle times from `tcp_info` (costlier: the kernel
/// fills a `tcp_info` per socket).
pub fn dump_tcp_with_idle() -> io::Result<Vec<DiagSocket>> {
    dump_tcp_where(true, 0, &mut |_| true)
}

/// Dumps the TCP sockets `keep` accepts, with idle times if `info`, into a list with room for
/// `capacity` sockets up front. Sockets `keep` refuses are never stored, and a right-sized list
/// never reallocates: at 100k sockets (88 bytes each) both decide the agent's peak memory.
pub fn dump_tcp_where(
    info: bool,
    capacity: usize,
    keep: &mut dyn FnMut(&DiagSocket) -> bool,
) -> io::Result<Vec<DiagSocket>> {
    // SAFETY: plain socket(2) call; the fd is owned immediately below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut sockets = Vec::with_capacity(capacity);
    let mut buf = vec![0u8; 64 * 1024];
    for (seq, family) in [(1u32, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        send_request(&fd, seq, family, info)?;
        loop {
            // SAFETY: buf is valid for buf.len() bytes.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if n == 0 || parse_messages(&buf[..n as usize], &mut sockets, keep)? {
                break;
            }
        }
    }
    Ok(sockets)
}

/// About how many TCP sockets a dump of this network namespace returns: the `inuse` and
/// `tw` counts of `/proc/net/sockstat` and `inuse` of `sockstat6` (request sockets are not
/// counted). None if unreadable.
pub fn tcp_socket_count() -> Option<usize> {
    let v4 = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let v6 = std::fs::read_to_string("/proc/net/sockstat6").unwrap_or_default();
    Some(sockstat_tcp(&v4, "TCP:") + sockstat_tcp(&v6, "TCP6:"))
}

/// `inuse` + `tw` of the line starting with `prefix` ("TCP: inuse 5 orphan 0 tw 2 alloc 9 mem 1").
fn sockstat_tcp(text: &str, prefix: &str) -> usize {
    let Some(line) = text.lines().find(|l| l.starts_with(prefix)) else {
        return 0;
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "inuse" || w[0] == "tw")
        .filter_map(|w| w[1].parse::<usize>().ok())
        .sum()
}

fn send_request(fd: &OwnedFd, seq: u32, family: u8, info: bool) -> io::Result<()> {
    const REQ_LEN: usize = NLMSG_HDR_LEN + 56;
    let mut req = [0u8; REQ_LEN];
    req[0..4].copy_from_slice(&(REQ_LEN as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // struct inet_diag_req_v2: family, protocol, ext, pad, states, sockid (zero: all)
    req[16] = family;
    req[17] = libc::IPPROTO_TCP as u8;
    if info {
        req[18] = 1 << (INET_DIAG_INFO - 1);
    }
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
    // SAFETY: req is a valid buffer; the kernel is the destination (zeroed sockaddr_nl).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDR_LEN + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn diag_v4(state: u8, cookie: u64) -> Vec<u8> {
        let mut p = vec![libc::AF_INET as u8, state, 3, 0];
        p.extend_from_slice(&8080u16.to_be_bytes());
        p.extend_from_slice(&45678u16.to_be_bytes());
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&[10, 0, 0, 9]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&0u32.to_ne_bytes()); // if
        p.extend_from_slice(&(cookie as u32).to_ne_bytes());
        p.extend_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        for v in [59_000u32, 0, 0, 1000, 0] {
            p.extend_from_slice(&v.to_ne_bytes()); // expires rqueue wqueue uid inode
        }
        p.extend_from_slice(&[8, 0, 1, 0, 0, 0, 0, 0]); // an attribute, ignored
        p
    }

    #[test]
    fn parses_idle_times_from_tcp_info() {
        let mut p = diag_v4(8, 5);
        let mut info = vec![0u8; 104];
        info[44..48].copy_from_slice(&7_000u32.to_ne_bytes());
        info[52..56].copy_from_slice(&9_000u32.to_ne_bytes());
        info[56..60].copy_from_slice(&8_000u32.to_ne_bytes());
        p.extend_from_slice(&((4 + info.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        p.extend_from_slice(&info);
        let mut out = Vec::new();
        parse_messages(&msg(SOCK_DIAG_BY_FAMILY, &p), &mut out, &mut |_| true).unwrap();
        let idle = out[0].idle.expect("tcp_info parsed");
        assert_eq!(idle.last_ack_recv_ms, 8_000);
        assert_eq!(idle.idle_ms(), 7_000);
        // A truncated attribute is ignored, not read past.
        let mut cut = diag_v4(8, 5);
        cut.extend_from_slice(&200u16.to_ne_bytes());
        cut.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        cut.extend_from_slice(&[0; 16]);
        let mut out = Vec::new();
        parse_messages(&msg(SOCK_DIAG_BY_FAMILY, &cut), &mut out, &mut |_| true).unwrap();
        assert_eq!(out[0].idle, None);
    }

    #[test]
    fn parses_sockets_until_done() {
        let mut buf = msg(SOCK_DIAG_BY_FAMILY, &diag_v4(6, 0x1_0000_0002));
        buf.extend(msg(SOCK_DIAG_BY_FAMILY, &diag_v4(10, 7)));
        let mut out = Vec::new();
        assert!(!parse_messages(&buf, &mut out, &mut |_| true).unwrap());
        buf.extend(msg(NLMSG_DONE, &[0; 4]));
        out.clear();
        assert!(parse_messages(&buf, &mut out, &mut |_| true).unwrap());
        assert_eq!(out.len(), 2);
        let tw = out[0];
        assert_eq!(tw.cookie, 0x1_0000_0002);
        assert_eq!(tw.state, TcpState::TimeWait);
        assert_eq!(tw.saddr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((tw.sport, tw.dport), (8080, 45678));
        assert_eq!(tw.daddr, "10.0.0.9".parse::<IpAddr>().unwrap());
        assert_eq!((tw.timer, tw.expires_ms, tw.uid), (3, 59_000, 1000));
        assert_eq!(out[1].state, TcpState::Listen);
        // Sockets `keep` refuses are never stored.
        out.clear();
        let mut listeners = |s: &DiagSocket| s.state == TcpState::Listen;
        assert!(parse_messages(&buf, &mut out, &mut listeners).unwrap());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].cookie, 7);
    }

    #[test]
    fn sockstat_counts_tcp_sockets_in_use_and_in_time_wait() {
        let v4 =
            "sockets: used 290\nTCP: inuse 5 orphan 0 tw 2 alloc 9 mem 1\nUDP: inuse 3 mem 2\n";
        assert_eq!(sockstat_tcp(v4, "TCP:"), 7);
        assert_eq!(sockstat_tcp("TCP6: inuse 4\nUDP6: inuse 1\n", "TCP6:"), 4);
        assert_eq!(sockstat_tcp("", "TCP:"), 0);
    }

    #[test]
    fn tcp_socket_count_sees_a_listener_of_this_process() {
        let listeners: Vec<_> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        // Other tests open and close sockets meanwhile: only a lower bound holds.
        let count = tcp_socket_count().expect("/proc/net/sockstat");
        assert!(count >= listeners.len(), "{count}");
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let good = msg(SOCK_DIAG_BY_FAMILY, &diag_v4(1, 1));
        let mut out = Vec::new();
        // Length field pointing past the buffer.
        assert!(parse_messages(&good[..good.len() - 8], &mut out, &mut |_| true).is_err());
        // A payload shorter than inet_diag_msg.
        assert!(
            parse_messages(&msg(SOCK_DIAG_BY_FAMILY, &[0; 10]), &mut out, &mut |_| true).is_err()
        );
        // A netlink error carries the errno.
        let err = parse_messages(
            &msg(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes()),
            &mut out,
            &mut |_| true,
        )
        .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        // Trailing bytes shorter than a header are ignored.
        assert!(!parse_messages(&[0; 5], &mut out, &mut |_| true).unwrap());
        // Unknown states are skipped.
        let mut out = Vec::new();
        parse_messages(
            &msg(SOCK_DIAG_BY_FAMILY, &diag_v4(99, 1)),
            &mut out,
            &mut |_| true,
        )
        .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn dump_sees_a_listener_of_this_process() {
        // INET_DIAG needs no privileges for this namespace's sockets.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sockets = dump_tcp().unwrap();
        let found = sockets
            .iter()
            .find(|s| s.sport == port && s.state == TcpState::Listen)
            .expect("listener in dump");
        assert!(found.cookie != 0 && found.inode != 0);
        assert_eq!(found.idle, None);
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let local = client.local_addr().unwrap().port();
        let sockets = dump_tcp_with_idle().unwrap();
        let est = sockets
            .iter()
            .find(|s| s.sport == local && s.state == TcpState::Established)
            .expect("client in dump");
        assert!(est.idle.is_some(), "{est:?}");
        let l = sockets
            .iter()
            .find(|s| s.sport == port && s.state == TcpState::Listen)
            .unwrap();
        assert_eq!(l.wqueue, 128, "std's listen backlog");
        assert_eq!(l.rqueue, 1, "one connection waiting to be accepted");
    }
}
