//! Which transitions to keep. State, family and port filters are compiled into the kernel
//! program's configuration (dropped events never cross the ring buffer); address filters run in
//! the agent.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use tcptrace_common::{FAMILY_MASK_V6, MAX_PID_FILTER, PortSet, port_filter};

use crate::model::cgroup::CgroupInfo;
use crate::model::connections::Connection;
use crate::model::tcp::{Endpoints, Family, TcpState};
use crate::model::transition::{Task, Transition};

/// An address block such as `10.0.0.0/8` or `fd00::/8`; a bare address is a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address or CIDR `{0}` (examples: 10.0.0.0/8, 127.0.0.1, ::1, fd00::/8)")]
pub struct BadCidr(String);

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadCidr(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
            if prefix == 0 {
                0
            } else {
                bits >> (width - prefix)
            }
        }
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32)
                    == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128)
                    == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// Everything the user asked to keep. Empty lists mean "no restriction".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Either end's port is one of these.
    pub ports: Vec<u16>,
    pub lports: Vec<u16>,
    pub rports: Vec<u16>,
    /// Either end's address is in one of these blocks.
    pub addrs: Vec<Cidr>,
    pub ipv4_only: bool,
    pub ipv6_only: bool,
    /// The transition leaves or enters one of these states.
    pub states: Vec<TcpState>,
    /// The socket's owner is one of these processes (in the kernel; at most 8).
    pub pids: Vec<u32>,
    /// The owner's command name starts with one of these (in the agent).
    pub comms: Vec<String>,
    /// The socket is in this network namespace (inode; in the kernel).
    pub netns: Option<u32>,
    /// The socket's cgroup path starts with one of these (in the agent).
    pub cgroups: Vec<String>,
    /// The socket's container id starts with one of these (in the agent).
    pub containers: Vec<String>,
}

/// The kernel-side part of a [`Filter`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelFilter {
    pub state_mask: u32,
    pub family_mask: u32,
    pub port_filters: u32,
    /// `(index into PORT_FILTER, bitmap)` for each active port filter.
    pub port_sets: Vec<(u32, Box<PortSet>)>,
    pub netns: u32,
    pub pids: [u32; MAX_PID_FILTER],
    pub npids: u32,
}

impl Filter {
    pub fn kernel(&self) -> KernelFilter {
        let state_mask = self.states.iter().fold(0u32, |m, s| m | (1 << s.number()));
        // IPv4 traffic also runs on dual-stack IPv6 sockets, which the kernel cannot tell apart
        // without reading addresses: `-4` is judged in the agent; an IPv4 socket never carries
        // IPv6, so `-6` drops those in the kernel (and the agent drops the mapped ones).
        let family_mask = match (self.ipv4_only, self.ipv6_only) {
            (false, true) => FAMILY_MASK_V6,
            _ => 0,
        };
        let mut port_filters = 0;
        let mut port_sets = Vec::new();
        for (index, ports) in [
            (port_filter::ANY, &self.ports),
            (port_filter::LOCAL, &self.lports),
            (port_filter::REMOTE, &self.rports),
        ] {
            if ports.is_empty() {
                continue;
            }
            let mut set = Box::new(PortSet::EMPTY);
            for &p in ports {
                set.insert(p);
            }
            port_filters |= 1 << index;
            port_sets.push((index, set));
        }
        let mut pids = [0; MAX_PID_FILTER];
        for (slot, pid) in pids.iter_mut().zip(&self.pids) {
            *slot = *pid;
        }
        KernelFilter {
            state_mask,
            family_mask,
            port_filters,
            port_sets,
            netns: self.netns.unwrap_or(0),
            pids,
            npids: self.pids.len().min(MAX_PID_FILTER) as u32,
        }
    }

    /// True when the filter keeps every socket of the namespace(s) it covers.
    pub fn is_whole_namespace(&self) -> bool {
        *self
            == Self {
                netns: self.netns,
                ..Self::default()
            }
    }

    /// True when some part of the filter can only be applied in the agent.
    pub fn has_agent_part(&self) -> bool {
        !self.addrs.is_empty()
            || !self.comms.is_empty()
            || self.ipv4_only
            || self.ipv6_only
            || self.needs_cgroup()
    }

    /// True when the filter needs the socket's cgroup path or container.
    pub fn needs_cgroup(&self) -> bool {
        !self.cgroups.is_empty() || !self.containers.is_empty()
    }

    /// True when a socket from a snapshot (which has no owner or cgroup) can be judged.
    pub fn judges_snapshots(&self) -> bool {
        self.pids.is_empty() && self.comms.is_empty() && !self.needs_cgroup()
    }

    /// The whole filter but the cgroup part, as the kernel and agent apply it together.
    pub fn matches(&self, t: &Transition) -> bool {
        self.matches_event(t)
            && self.matches_endpoints(&t.endpoints)
            && self.netns.is_none_or(|ns| t.netns == Some(ns))
    }

    /// The parts about one transition rather than the socket: its states and, as known at
    /// that moment, the socket's owner.
    pub fn matches_event(&self, t: &Transition) -> bool {
        (self.states.is_empty() || self.states.contains(&t.old) || self.states.contains(&t.new))
            && self.matches_owner(t.owner.map(|o| o.task))
    }

    fn matches_owner(&self, owner: Option<Task>) -> bool {
        (self.pids.is_empty() || owner.is_some_and(|o| self.pids.contains(&o.pid)))
            && (self.comms.is_empty()
                || owner.is_some_and(|o| {
                    self.comms
                        .iter()
                        .any(|c| o.comm.as_str().starts_with(c.as_str()))
                }))
    }

    /// The filter for whole connections (`life`, connection metrics): only the parts that
    /// hold for a socket's whole life (endpoints, namespace, cgroup), so a connection's
    /// every transition arrives; the rest is [`Filter::matches_story`]'s.
    pub fn socket_level(&self) -> Self {
        Self {
            states: Vec::new(),
            pids: Vec::new(),
            comms: Vec::new(),
            ..self.clone()
        }
    }

    /// Whether a whole connection is selected: it went through one of the states (TIME_WAIT
    /// included when it followed), and its owner (the last one known) is one asked for.
    pub fn matches_story(&self, c: &Connection) -> bool {
        (self.states.is_empty() || c.states().any(|s| self.states.contains(&s)))
            && self.matches_owner(c.owner)
    }

    /// The cgroup part of the filter, given what is known of the socket's cgroup.
    pub fn matches_cgroup(&self, info: Option<&CgroupInfo>) -> bool {
        (self.cgroups.is_empty()
            || info.is_some_and(|i| self.cgroups.iter().any(|c| in_cgroup(&i.path, c))))
            && (self.containers.is_empty()
                || info
                    .and_then(|i| i.container.as_deref())
                    .is_some_and(|id| self.containers.iter().any(|c| id.starts_with(c.as_str()))))
    }

    /// The filter applied to a socket from a snapshot, in `state`.
    pub fn matches_socket(&self, endpoints: &Endpoints, state: TcpState) -> bool {
        (self.states.is_empty() || self.states.contains(&state))
            && self.matches_endpoints(endpoints)
    }

    /// Whether any part of the filter is about a socket's addresses, ports or family (the
    /// parts that hold for the socket's whole life).
    pub fn constrains_endpoints(&self) -> bool {
        self.ipv4_only
            || self.ipv6_only
            || !(self.ports.is_empty()
                && self.lports.is_empty()
                && self.rports.is_empty()
                && self.addrs.is_empty())
    }

    /// The filter's address, port and family parts, applied to a socket.
    pub fn matches_endpoints(&self, e: &Endpoints) -> bool {
        let any = |list: &[u16], p: u16| list.is_empty() || list.contains(&p);
        let family_ok = match (self.ipv4_only, self.ipv6_only) {
            (true, false) => e.family == Family::Ipv4,
            (false, true) => e.family == Family::Ipv6,
            _ => true,
        };
        family_ok
            && (self.ports.is_empty()
                || self.ports.contains(&e.local_port)
                || self.ports.contains(&e.remote_port))
            && any(&self.lports, e.local_port)
            && any(&self.rports, e.remote_port)
            && (self.addrs.is_empty()
                || self
                    .addrs
                    .iter()
                    .any(|c| c.contains(e.local_ip) || c.contains(e.remote_ip)))
    }
}

/// Whether cgroup `path` is `prefix` or lies below it, comparing whole path components:
/// `/system.slice/nginx.service` holds `/system.slice/nginx.service/worker` but not
/// `/system.slice/nginx.service-canary`. A trailing `/` on `prefix` changes nothing.
fn in_cgroup(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::raw_transition;

    fn t() -> Transition {
        // 127.0.0.1:45678 -> 10.1.2.3:8080, SYN_SENT -> ESTABLISHED, ipv4
        raw_transition(&crate::testing::raw_v4())
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.255.0.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let host: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(host.to_string(), "127.0.0.1/32");
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let v6: Cidr = "[fd00::]/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_filter_keeps_everything_and_needs_no_kernel_work() {
        let f = Filter::default();
        assert!(f.matches(&t()));
        assert_eq!(f.kernel(), KernelFilter::default());
        assert!(!f.has_agent_part());
    }

    #[test]
    fn port_filters() {
        let either = Filter {
            ports: vec![8080],
            ..Default::default()
        };
        assert!(either.matches(&t()));
        let local = Filter {
            lports: vec![8080],
            ..Default::default()
        };
        assert!(!local.matches(&t()));
        let remote = Filter {
            rports: vec![8080, 9],
            ..Default::default()
        };
        assert!(remote.matches(&t()));
        let k = remote.kernel();
        assert_eq!(k.port_filters, 1 << port_filter::REMOTE);
        let (index, set) = &k.port_sets[0];
        assert_eq!(*index, port_filter::REMOTE);
        assert!(set.contains(8080) && set.contains(9) && !set.contains(8081));
    }

    #[test]
    fn state_and_family_filters() {
        let syn = Filter {
            states: vec!["syn_sent".parse().unwrap()],
            ..Default::default()
        };
        assert!(syn.matches(&t()));
        assert_eq!(syn.kernel().state_mask, 1 << 2);
        let listen = Filter {
            states: vec![TcpState::Listen],
            ..Default::default()
        };
        assert!(!listen.matches(&t()));
        let v6 = Filter {
            ipv6_only: true,
            ..Default::default()
        };
        assert!(!v6.matches(&t()));
        assert_eq!(v6.kernel().family_mask, FAMILY_MASK_V6);
        let both = Filter {
            ipv4_only: true,
            ipv6_only: true,
            ..Default::default()
        };
        assert!(both.matches(&t()));
        assert_eq!(both.kernel().family_mask, 0);
        // IPv4 over a dual-stack IPv6 socket is IPv4: judged in the agent.
        let mut raw = crate::testing::raw_v4();
        raw.family = tcptrace_common::AF_INET6;
        raw.saddr = "::ffff:127.0.0.1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        raw.daddr = "::ffff:10.1.2.3"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let dual = raw_transition(&raw);
        let v4 = Filter {
            ipv4_only: true,
            ..Default::default()
        };
        assert_eq!(v4.kernel().family_mask, 0);
        assert!(v4.has_agent_part());
        assert!(v4.matches(&dual) && !v6.matches(&dual));
    }

    #[test]
    fn owner_namespace_and_cgroup_filters() {
        let f = Filter {
            pids: vec![1234],
            netns: Some(4026531840),
            ..Default::default()
        };
        assert!(f.matches(&t()));
        assert!(!f.has_agent_part());
        let k = f.kernel();
        assert_eq!((k.npids, k.pids[0], k.netns), (1, 1234, 4026531840));
        assert!(!f.judges_snapshots());
        let other = Filter {
            pids: vec![1],
            ..Default::default()
        };
        assert!(!other.matches(&t()));
        let mut unknown = t();
        unknown.owner = None;
        assert!(!f.matches(&unknown), "unknown owner never matches a --pid");
        let comm = Filter {
            comms: vec!["cu".into()],
            ..Default::default()
        };
        assert!(comm.matches(&t()) && comm.has_agent_part());
        let comm = Filter {
            comms: vec!["nginx".into()],
            ..Default::default()
        };
        assert!(!comm.matches(&t()));

        let cg = Filter {
            cgroups: vec!["/system.slice/".into()],
            containers: vec!["3f2a".into()],
            ..Default::default()
        };
        assert!(cg.needs_cgroup());
        let info = CgroupInfo {
            path: "/system.slice/docker-3f2a.scope".into(),
            container: Some("3f2a9c".into()),
        };
        assert!(cg.matches_cgroup(Some(&info)));
        assert!(!cg.matches_cgroup(None));
        let elsewhere = CgroupInfo {
            path: "/user.slice".into(),
            container: None,
        };
        assert!(!cg.matches_cgroup(Some(&elsewhere)));
        assert!(Filter::default().matches_cgroup(None));
    }

    #[test]
    fn cgroup_prefix_compares_whole_path_components() {
        assert!(in_cgroup(
            "/system.slice/nginx.service",
            "/system.slice/nginx.service"
        ));
        assert!(in_cgroup(
            "/system.slice/nginx.service/w",
            "/system.slice/nginx.service/"
        ));
        assert!(!in_cgroup(
            "/system.slice/nginx.service-canary",
            "/system.slice/nginx.service"
        ));
        assert!(!in_cgroup("/test-12", "/test-1"));
        assert!(in_cgroup("/", "/") && in_cgroup("/user.slice", "/"));
    }

    #[test]
    fn address_filter_is_agent_side_and_checks_either_end() {
        let f = Filter {
            addrs: vec!["10.1.0.0/16".parse().unwrap()],
            ..Default::default()
        };
        assert!(f.has_agent_part());
        assert!(f.matches(&t()));
        let f = Filter {
            addrs: vec!["192.168.0.0/16".parse().unwrap()],
            ..Default::default()
        };
        assert!(!f.matches(&t()));
    }
}
