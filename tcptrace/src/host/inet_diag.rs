//! Snapshots of every TCP socket in the calling thread's network namespace over netlink
//! INET_DIAG (what `ss` uses), including TIME_WAIT and half-open request sockets, which the
//! tracepoint never reports.
//!
//! Hand-written rather than `netlink-packet-sock-diag`: that crate drops the TIME_WAIT expiry
//! (`idiag_expires`) that `doctor` and the TIME_WAIT gauges use, and allocates per socket; a
//! 100k-socket dump here is one list sized up front (88 bytes per socket). Messages are read
//! through `#[repr(C)]` structs mirroring `include/uapi/linux/inet_diag.h` (zerocopy, no
//! unsafe), never at numeric offsets.

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use zerocopy::byteorder::network_endian::U16 as BeU16;
use zerocopy::{FromBytes, FromZeros as _, Immutable, IntoBytes, KnownLayout};

use crate::model::snapshot::{DiagSocket, Idle, Timer};
use crate::model::tcp::{Endpoints, TcpState};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `INET_DIAG_INFO`: the attribute carrying `struct tcp_info` (full sockets only).
const INET_DIAG_INFO: u16 = 2;

/// `struct nlmsghdr` (host byte order).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid`: ports and addresses in network order, the cookie as two
/// host-order halves.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct InetDiagSockId {
    sport: BeU16,
    dport: BeU16,
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_msg`, followed by netlink attributes.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct Request {
    header: NlMsgHdr,
    body: InetDiagReqV2,
}

/// `struct nlattr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable)]
struct NlAttr {
    len: u16,
    kind: u16,
}

/// The head of `struct tcp_info` (`include/uapi/linux/tcp.h`) up to `tcpi_last_ack_recv`.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable)]
struct TcpInfoHead {
    /// `tcpi_state` .. `tcpi_delivery_rate_app_limited` and friends: eight u8 fields.
    small: [u8; 8],
    rto: u32,
    ato: u32,
    snd_mss: u32,
    rcv_mss: u32,
    unacked: u32,
    sacked: u32,
    lost: u32,
    retrans: u32,
    fackets: u32,
    last_data_sent: u32,
    last_ack_sent: u32,
    last_data_recv: u32,
    last_ack_recv: u32,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("INET_DIAG: {what}"))
}

/// Parses a `SOCK_DIAG_BY_FAMILY` response buffer into `out`, keeping the sockets `keep`
/// accepts. Returns whether the dump is complete (`NLMSG_DONE` seen). Malformed messages are
/// an error, never a panic.
pub fn parse_messages(
    buf: &[u8],
    out: &mut Vec<DiagSocket>,
    keep: &mut dyn FnMut(&DiagSocket) -> bool,
) -> io::Result<bool> {
    let mut rest = buf;
    while let Ok((header, _)) = NlMsgHdr::read_from_prefix(rest) {
        let len = header.len as usize;
        if len < size_of::<NlMsgHdr>() || len > rest.len() {
            return Err(bad("truncated message"));
        }
        let payload = &rest[size_of::<NlMsgHdr>()..len];
        match header.kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = i32::read_from_prefix(payload).map_or(0, |(e, _)| e);
                if errno != 0 {
                    // The kernel sends -errno; i32::MIN has no positive (found by fuzzing).
                    return Err(io::Error::from_raw_os_error(errno.saturating_neg()));
                }
            }
            SOCK_DIAG_BY_FAMILY => {
                let (msg, attrs) = InetDiagMsg::read_from_prefix(payload)
                    .map_err(|_| bad("short inet_diag_msg"))?;
                if let Some(s) = socket(&msg, attrs)
                    && keep(&s)
                {
                    out.push(s);
                }
            }
            _ => {}
        }
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(false)
}

/// The socket a message describes; `None` for states and families TCP sockets cannot have.
fn socket(msg: &InetDiagMsg, attrs: &[u8]) -> Option<DiagSocket> {
    let id = &msg.id;
    Some(DiagSocket {
        cookie: u64::from(id.cookie[0]) | (u64::from(id.cookie[1]) << 32),
        state: TcpState::from_kernel(msg.state)?,
        endpoints: Endpoints::from_kernel(
            u16::from(msg.family),
            &id.src,
            id.sport.get(),
            &id.dst,
            id.dport.get(),
        )?,
        timer: Timer::from_kernel(msg.timer),
        expires_ms: msg.expires,
        inode: msg.inode,
        rqueue: msg.rqueue,
        wqueue: msg.wqueue,
        idle: tcp_info(attrs),
        netns: None,
    })
}

/// Finds `INET_DIAG_INFO` among the attributes that follow `inet_diag_msg`.
fn tcp_info(mut attrs: &[u8]) -> Option<Idle> {
    while let Ok((attr, _)) = NlAttr::read_from_prefix(attrs) {
        let len = usize::from(attr.len);
        if len < size_of::<NlAttr>() || len > attrs.len() {
            return None;
        }
        if attr.kind == INET_DIAG_INFO {
            let (info, _) = TcpInfoHead::read_from_prefix(&attrs[size_of::<NlAttr>()..len]).ok()?;
            return Some(Idle::new(
                info.last_data_sent,
                info.last_data_recv,
                info.last_ack_recv,
            ));
        }
        attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    None
}

/// Dumps every TCP socket (IPv4 and IPv6) in the caller's network namespace.
pub fn dump_tcp() -> io::Result<Vec<DiagSocket>> {
    dump_tcp_where(false, 0, &mut |_| true)
}

/// The listening TCP sockets of the caller's network namespace.
pub fn dump_listeners() -> io::Result<Vec<DiagSocket>> {
    dump_tcp_where(false, 0, &mut |s| s.state == TcpState::Listen)
}

/// As [`dump_tcp`], with each full socket's idle times from `tcp_info` (costlier: the kernel
/// fills a `tcp_info` per socket).
pub fn dump_tcp_with_idle() -> io::Result<Vec<DiagSocket>> {
    dump_tcp_where(true, 0, &mut |_| true)
}

/// Dumps the TCP sockets `keep` accepts, with idle times if `info`, into a list with room for
/// `capacity` sockets up front. Sockets `keep` refuses are never stored, and a right-sized list
/// never reallocates: at 100k sockets (96 bytes each) both decide the agent's peak memory.
pub fn dump_tcp_where(
    info: bool,
    capacity: usize,
    keep: &mut dyn FnMut(&DiagSocket) -> bool,
) -> io::Result<Vec<DiagSocket>> {
    let mut sockets = Vec::with_capacity(capacity);
    dump_tcp_into(&mut sockets, info, keep)?;
    Ok(sockets)
}

/// As [`dump_tcp_where`], appending to `sockets` (of which a failed dump may leave a part).
pub fn dump_tcp_into(
    sockets: &mut Vec<DiagSocket>,
    info: bool,
    keep: &mut dyn FnMut(&DiagSocket) -> bool,
) -> io::Result<()> {
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
    // SAFETY: fd is a fresh, valid descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut buf = vec![0u8; 64 * 1024];
    for (seq, family) in [(1u32, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        send_request(&fd, seq, family, info)?;
        loop {
            // SAFETY: buf is valid and writable for buf.len() bytes.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if n == 0 || parse_messages(&buf[..n as usize], sockets, keep)? {
                break;
            }
        }
    }
    Ok(())
}

/// About how many TCP sockets a dump of this network namespace returns: the `inuse` and
/// `tw` counts of `/proc/net/sockstat` and `inuse` of `sockstat6` (request sockets are not
/// counted). None if unreadable.
pub fn tcp_socket_count() -> Option<usize> {
    let v4 = std::fs::read_to_string("/proc/thread-self/net/sockstat").ok()?;
    let v6 = std::fs::read_to_string("/proc/thread-self/net/sockstat6").unwrap_or_default();
    Some(sockstat_tcp(&v4, "TCP:") + sockstat_tcp(&v6, "TCP6:"))
}

/// `inuse` + `tw` of the line starting with `prefix` ("TCP: inuse 5 orphan 0 tw 2 alloc 9 mem 1").
pub fn sockstat_tcp(text: &str, prefix: &str) -> usize {
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
    let request = Request {
        header: NlMsgHdr {
            len: size_of::<Request>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            pid: 0,
        },
        body: InetDiagReqV2 {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            ext: if info { 1 << (INET_DIAG_INFO - 1) } else { 0 },
            pad: 0,
            states: u32::MAX,
            id: InetDiagSockId::new_zeroed(),
        },
    };
    let bytes = request.as_bytes();
    // SAFETY: an all-zero sockaddr_nl is valid; nl_family then addresses the kernel.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: `bytes` and `addr` are valid for the lengths passed.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
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
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn structs_have_the_kernel_sizes() {
        assert_eq!(size_of::<NlMsgHdr>(), 16);
        assert_eq!(size_of::<InetDiagSockId>(), 48);
        assert_eq!(size_of::<InetDiagMsg>(), 72);
        assert_eq!(size_of::<InetDiagReqV2>(), 56);
        assert_eq!(size_of::<TcpInfoHead>(), 60);
    }

    /// Fuzzing found it: an NLMSG_ERROR carrying i32::MIN overflowed the negation.
    #[test]
    fn an_error_message_with_any_errno_is_an_error() {
        let mut out = Vec::new();
        for errno in [i32::MIN, -1, 7, i32::MAX] {
            let buf = msg(NLMSG_ERROR, &errno.to_ne_bytes());
            assert!(parse_messages(&buf, &mut out, &mut |_| true).is_err());
        }
        let crash: [u8; 52] = [
            39, 0, 0, 0, 2, 0, 44, 1, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 128, 0, 75, 123, 123, 123,
            0, 0, 0, 0, 109, 138, 138, 138, 138, 138, 138, 135, 66, 138, 138, 138, 56, 59, 1, 0,
            139, 138, 138, 138, 138, 153, 47,
        ];
        assert!(parse_messages(&crash, &mut out, &mut |_| true).is_err());
    }

    fn msg(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = size_of::<NlMsgHdr>() + payload.len();
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
        assert!(tw.is_timewait());
        assert_eq!(
            tw.endpoints.local_ip,
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            (tw.endpoints.local_port, tw.endpoints.remote_port),
            (8080, 45678)
        );
        assert_eq!(
            tw.endpoints.remote_ip,
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!((tw.timer, tw.expires_ms), (Timer::TimeWait, 59_000));
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
        // A header claiming less than its own size.
        let mut tiny = msg(NLMSG_DONE, &[]);
        tiny[..4].copy_from_slice(&4u32.to_ne_bytes());
        assert!(parse_messages(&tiny, &mut out, &mut |_| true).is_err());
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
            .find(|s| s.endpoints.local_port == port && s.state == TcpState::Listen)
            .expect("listener in dump");
        assert!(found.cookie != 0 && found.inode != 0);
        assert_eq!(found.idle, None);
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let local = client.local_addr().unwrap().port();
        let sockets = dump_tcp_with_idle().unwrap();
        let est = sockets
            .iter()
            .find(|s| s.endpoints.local_port == local && s.state == TcpState::Established)
            .expect("client in dump");
        assert!(est.idle.is_some(), "{est:?}");
        let l = sockets
            .iter()
            .find(|s| s.endpoints.local_port == port && s.state == TcpState::Listen)
            .unwrap();
        assert_eq!(l.wqueue, 128, "std's listen backlog");
        assert_eq!(l.rqueue, 1, "one connection waiting to be accepted");
    }
}
