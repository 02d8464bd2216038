//! TCP vocabulary: states (numbered as Linux numbers them, see `tcptrace_common::tcp_state`),
//! address families, a socket's endpoints, and the kernel timers tcptrace reasons with.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::LazyLock;

use tcptrace_common::{AF_INET, AF_INET6, tcp_state};

/// `TCP_TIMEWAIT_LEN` (include/net/tcp.h): how long Linux keeps a TIME_WAIT socket, in ns.
pub const TIME_WAIT_NS: u64 = 60_000_000_000;
/// `TCP_TIMEOUT_INIT` (include/net/tcp.h): when the first SYN is retransmitted, in ns.
pub const SYN_RETRANSMIT_NS: u64 = 1_000_000_000;

/// A TCP state. `name()` is the upper-case name `ss`-style tools and the tcp-states literature
/// use (`SYN_SENT`); `label()` its lower-case form for Prometheus labels (`syn_sent`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, strum::IntoStaticStr, serde::Serialize,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
#[serde(into = "&'static str")]
#[repr(u8)]
pub enum TcpState {
    Established = tcp_state::ESTABLISHED,
    SynSent = tcp_state::SYN_SENT,
    SynRecv = tcp_state::SYN_RECV,
    FinWait1 = tcp_state::FIN_WAIT1,
    FinWait2 = tcp_state::FIN_WAIT2,
    TimeWait = tcp_state::TIME_WAIT,
    Close = tcp_state::CLOSE,
    CloseWait = tcp_state::CLOSE_WAIT,
    LastAck = tcp_state::LAST_ACK,
    Listen = tcp_state::LISTEN,
    Closing = tcp_state::CLOSING,
    NewSynRecv = tcp_state::NEW_SYN_RECV,
}

/// One slot per kernel state number (0 unused): tables indexed by [`TcpState::number`].
pub const STATE_SLOTS: usize = 13;

impl TcpState {
    /// Every state, in kernel number order.
    pub const ALL: [Self; 12] = [
        Self::Established,
        Self::SynSent,
        Self::SynRecv,
        Self::FinWait1,
        Self::FinWait2,
        Self::TimeWait,
        Self::Close,
        Self::CloseWait,
        Self::LastAck,
        Self::Listen,
        Self::Closing,
        Self::NewSynRecv,
    ];

    /// The state with kernel number `n`, if there is one.
    pub fn from_kernel(n: u8) -> Option<Self> {
        Self::ALL.get(usize::from(n).checked_sub(1)?).copied()
    }

    /// The kernel's number for this state.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// This state's slot in a table of [`STATE_SLOTS`].
    pub fn slot(self) -> usize {
        usize::from(self.number())
    }

    /// Upper-case name, e.g. `SYN_SENT`.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// Lower-case name, e.g. `syn_sent` (Prometheus label values).
    pub fn label(self) -> &'static str {
        static LABELS: LazyLock<Vec<String>> = LazyLock::new(|| {
            TcpState::ALL
                .iter()
                .map(|s| s.name().to_ascii_lowercase())
                .collect()
        });
        &LABELS[self.slot() - 1]
    }
}

impl std::fmt::Display for TcpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// A `--state` value that names no TCP state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown TCP state `{0}` (expected one of: {list})", list = state_list())]
pub struct UnknownState(pub String);

fn state_list() -> String {
    let names: Vec<&str> = TcpState::ALL.iter().map(|s| s.name()).collect();
    names.join(", ")
}

impl FromStr for TcpState {
    type Err = UnknownState;

    /// Accepts the canonical names in any case, with `-` or `_`, and the common spellings
    /// `ESTAB` (ss), `FIN_WAIT_1`, `SYN_RECEIVED`, `CLOSED`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let squash = |s: &str| -> String {
            s.chars()
                .filter(|c| *c != '_' && *c != '-')
                .map(|c| c.to_ascii_uppercase())
                .collect()
        };
        let wanted = squash(s);
        let alias = match wanted.as_str() {
            "ESTAB" => Some(Self::Established),
            "SYNRECEIVED" => Some(Self::SynRecv),
            "CLOSED" => Some(Self::Close),
            _ => None,
        };
        alias
            .or_else(|| {
                Self::ALL
                    .into_iter()
                    .find(|state| squash(state.name()) == wanted)
            })
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::IntoStaticStr, serde::Serialize)]
#[strum(serialize_all = "lowercase")]
#[serde(into = "&'static str")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// `ipv4` or `ipv6`.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// The family of a kernel `AF_*` number, if TCP can have it.
    pub fn from_kernel(af: u16) -> Option<Self> {
        match af {
            AF_INET => Some(Self::Ipv4),
            AF_INET6 => Some(Self::Ipv6),
            _ => None,
        }
    }
}

/// Where a socket's two ends are: this socket's (local) address and port, and its peer's.
///
/// The kernel reports addresses as 16 bytes (IPv4 in the first four for `AF_INET`); an
/// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, a dual-stack socket talking IPv4) is shown as
/// the IPv4 address it is. `family` is the family of the traffic: IPv4 for a dual-stack
/// (`AF_INET6`) socket talking IPv4, whose own family [`Endpoints::socket_family`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoints {
    /// The family of the traffic.
    pub family: Family,
    /// The socket's own address family (`AF_INET6` for a dual-stack socket talking IPv4).
    pub socket_family: Family,
    pub local_ip: IpAddr,
    pub local_port: u16,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
}

impl Endpoints {
    /// From kernel address bytes (network order) and host-order ports. `None` for a family
    /// TCP cannot have.
    pub fn from_kernel(
        af: u16,
        local: &[u8; 16],
        local_port: u16,
        remote: &[u8; 16],
        remote_port: u16,
    ) -> Option<Self> {
        let socket_family = Family::from_kernel(af)?;
        let ip = |bytes: &[u8; 16]| match socket_family {
            Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
            Family::Ipv6 => {
                let v6 = Ipv6Addr::from(*bytes);
                v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
            }
        };
        let (local_ip, remote_ip) = (ip(local), ip(remote));
        // Either end mapped means IPv4 traffic (before connect() binds, the local end is `::`).
        let family = if local_ip.is_ipv4() || remote_ip.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        };
        Some(Self {
            family,
            socket_family,
            local_ip,
            local_port,
            remote_ip,
            remote_port,
        })
    }

    /// `ip:port` of this socket (IPv6 in brackets when displayed).
    pub fn local(&self) -> SocketAddr {
        SocketAddr::new(self.local_ip, self.local_port)
    }

    /// `ip:port` of the peer.
    pub fn remote(&self) -> SocketAddr {
        SocketAddr::new(self.remote_ip, self.remote_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_numbers_round_trip() {
        for state in TcpState::ALL {
            assert_eq!(TcpState::from_kernel(state.number()), Some(state));
        }
        assert_eq!(TcpState::from_kernel(0), None);
        assert_eq!(TcpState::from_kernel(13), None);
        assert_eq!(TcpState::from_kernel(2), Some(TcpState::SynSent));
        assert_eq!(TcpState::from_kernel(7), Some(TcpState::Close));
    }

    #[test]
    fn names_and_labels() {
        let names: Vec<&str> = TcpState::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "ESTABLISHED",
                "SYN_SENT",
                "SYN_RECV",
                "FIN_WAIT1",
                "FIN_WAIT2",
                "TIME_WAIT",
                "CLOSE",
                "CLOSE_WAIT",
                "LAST_ACK",
                "LISTEN",
                "CLOSING",
                "NEW_SYN_RECV"
            ]
        );
        assert_eq!(TcpState::FinWait1.label(), "fin_wait1");
        assert_eq!(TcpState::NewSynRecv.label(), "new_syn_recv");
        assert_eq!(
            serde_json::to_string(&TcpState::CloseWait).unwrap(),
            "\"CLOSE_WAIT\""
        );
        assert_eq!(Family::Ipv6.name(), "ipv6");
    }

    #[test]
    fn names_parse_back_in_any_spelling() {
        for state in TcpState::ALL {
            assert_eq!(state.name().parse::<TcpState>(), Ok(state));
            assert_eq!(state.name().to_lowercase().parse::<TcpState>(), Ok(state));
        }
        assert_eq!("fin-wait-1".parse(), Ok(TcpState::FinWait1));
        assert_eq!("time_wait".parse(), Ok(TcpState::TimeWait));
        assert_eq!("closed".parse(), Ok(TcpState::Close));
        assert_eq!("estab".parse(), Ok(TcpState::Established));
        assert_eq!("syn-received".parse(), Ok(TcpState::SynRecv));
        let err = "SYN".parse::<TcpState>().unwrap_err();
        assert!(err.to_string().contains("SYN_SENT"), "{err}");
    }

    #[test]
    fn display_pads_for_columns() {
        assert_eq!(format!("{:<12}|", TcpState::Listen), "LISTEN      |");
    }

    #[test]
    fn endpoints_from_kernel_bytes_unmap_ipv4_in_ipv6() {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[10, 1, 2, 3]);
        let e = Endpoints::from_kernel(AF_INET, &v4, 80, &v4, 4000).unwrap();
        assert_eq!(e.local().to_string(), "10.1.2.3:80");
        let mapped = "::ffff:192.0.2.7".parse::<Ipv6Addr>().unwrap().octets();
        let one = Ipv6Addr::LOCALHOST.octets();
        let e = Endpoints::from_kernel(AF_INET6, &one, 1, &one, 2).unwrap();
        assert_eq!((e.family, e.socket_family), (Family::Ipv6, Family::Ipv6));
        assert_eq!(e.local().to_string(), "[::1]:1");
        // A dual-stack socket talking IPv4: IPv4 traffic on an IPv6 socket.
        let e = Endpoints::from_kernel(AF_INET6, &mapped, 1, &mapped, 2).unwrap();
        assert_eq!((e.family, e.socket_family), (Family::Ipv4, Family::Ipv6));
        assert_eq!(e.remote().to_string(), "192.0.2.7:2");
        // connect() to an IPv4 peer before the local end is bound.
        let any = Ipv6Addr::UNSPECIFIED.octets();
        let e = Endpoints::from_kernel(AF_INET6, &any, 0, &mapped, 2).unwrap();
        assert_eq!(e.family, Family::Ipv4);
        assert!(Endpoints::from_kernel(1, &v4, 0, &v4, 0).is_none());
    }
}
