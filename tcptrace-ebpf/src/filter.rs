//! The kernel-side filters: state, family, ports, namespace and owner. Address (CIDR), comm
//! and cgroup filters run in userspace.

use tcptrace_common::{
    AF_INET, AF_INET6, Config, FAMILY_MASK_V4, FAMILY_MASK_V6, MAX_PID_FILTER, SockEntry,
    port_filter,
};

use crate::maps::PORT_FILTER;
use crate::transition::Transition;

/// Whether the user's filters keep transition `t` of socket `sock`.
#[inline(always)]
pub fn keep(config: &Config, t: &Transition, sock: &SockEntry) -> bool {
    states(config, t.old, t.new)
        && family(config, t.family)
        && (config.netns == 0 || config.netns == sock.netns)
        && owner(config, sock)
        && ports(config, sock.lport, t.rport)
}

/// `--state`: the transition leaves or enters a wanted state.
#[inline(always)]
fn states(config: &Config, old: i32, new: i32) -> bool {
    if config.state_mask == 0 {
        return true;
    }
    let touched = (1u32 << (old as u32 & 31)) | (1u32 << (new as u32 & 31));
    config.state_mask & touched != 0
}

/// `-4` / `-6`.
#[inline(always)]
fn family(config: &Config, family: u16) -> bool {
    if config.family_mask == 0 {
        return true;
    }
    let bit = match family {
        AF_INET => FAMILY_MASK_V4,
        AF_INET6 => FAMILY_MASK_V6,
        _ => 0,
    };
    config.family_mask & bit != 0
}

/// `--pid`: the socket's owner is one of the listed processes.
#[inline(always)]
fn owner(config: &Config, sock: &SockEntry) -> bool {
    if config.npids == 0 {
        return true;
    }
    let tgid = (sock.owner.pid_tgid >> 32) as u32;
    let mut found = false;
    let mut i = 0;
    while i < MAX_PID_FILTER {
        if (i as u32) < config.npids && config.pids[i] == tgid {
            found = true;
        }
        i += 1;
    }
    found
}

/// `--port`, `--lport`, `--rport`.
#[inline(always)]
fn ports(config: &Config, lport: u16, rport: u16) -> bool {
    let filters = config.port_filters;
    if filters == 0 {
        return true;
    }
    if filters & (1 << port_filter::ANY) != 0 {
        match PORT_FILTER.get(port_filter::ANY) {
            Some(set) if set.contains(lport) || set.contains(rport) => {}
            _ => return false,
        }
    }
    if filters & (1 << port_filter::LOCAL) != 0 {
        match PORT_FILTER.get(port_filter::LOCAL) {
            Some(set) if set.contains(lport) => {}
            _ => return false,
        }
    }
    if filters & (1 << port_filter::REMOTE) != 0 {
        match PORT_FILTER.get(port_filter::REMOTE) {
            Some(set) if set.contains(rport) => {}
            _ => return false,
        }
    }
    true
}
