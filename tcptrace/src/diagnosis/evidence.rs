//! Evidence helpers the checks share: who owns a socket, how old it is in its state, groups of
//! sockets or connection ends by owner and endpoint, and which snapshot sockets a filter keeps.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use crate::diagnosis::window::{Ended, Observations, Scene};
use crate::diagnosis::{Example, Fact, Group, TOP};
use crate::host::owners::{ProcessName, SocketOwners};
use crate::model::filter::Filter;
use crate::model::snapshot::DiagSocket;
use crate::model::tcp::TcpState;
use crate::model::transition::Task;

/// Who holds a socket, by inode, when no transition told.
pub trait OwnerLookup {
    fn owner(&mut self, inode: u32) -> Option<ProcessName>;
}

impl OwnerLookup for SocketOwners {
    fn owner(&mut self, inode: u32) -> Option<ProcessName> {
        self.get(inode).cloned()
    }
}

/// Scans `/proc` on the first question only: most evaluations need no owner at all.
#[derive(Default)]
pub struct LazyOwners(Option<SocketOwners>);

impl OwnerLookup for LazyOwners {
    fn owner(&mut self, inode: u32) -> Option<ProcessName> {
        if inode == 0 {
            return None;
        }
        self.0
            .get_or_insert_with(SocketOwners::scan)
            .get(inode)
            .cloned()
    }
}

/// What a check sees: the scene, the window's observations, owners by inode, the window length.
pub(crate) struct Ctx<'a> {
    pub scene: &'a Scene<'a>,
    pub obs: &'a Observations,
    pub owners: &'a mut dyn OwnerLookup,
    /// Seconds between the baseline and the end snapshot (at least 1 ms).
    pub window_s: f64,
}

impl<'a> Ctx<'a> {
    /// The window's connection ends in this scene's namespace.
    pub fn ends(&self) -> impl Iterator<Item = &'a Ended> + use<'a> {
        let netns = self.scene.netns;
        self.obs
            .ended
            .iter()
            .filter(move |e| netns.is_none() || e.netns.is_none() || e.netns == netns)
    }

    pub fn owner(&mut self, s: &DiagSocket) -> Option<ProcessName> {
        self.obs
            .owner_of(s.cookie)
            .or_else(|| self.owners.owner(s.inode))
    }

    /// Who a finished connection belonged to: its owner, else (server sockets whose listener
    /// predates tracing) the process holding the listener on its local port.
    pub fn end_owner(&mut self, e: &Ended) -> Option<ProcessName> {
        if let Some(t) = e.owner {
            return Some(process(t));
        }
        let port = e.local.port();
        let listener = *self
            .scene
            .sockets
            .iter()
            .find(|s| s.state == TcpState::Listen && s.endpoints.local_port == port)?;
        self.owner(&listener)
    }

    /// Lower bound of the time `s` has spent in its current state, when anything tells.
    pub fn age_ns(&self, s: &DiagSocket) -> Option<u64> {
        let taken = self.scene.taken_ns;
        let from_event = self
            .obs
            .in_state_since(s.cookie, s.state)
            .map(|since| taken.saturating_sub(since));
        let base = self.scene.baseline;
        let from_baseline = (base.states.get(&s.cookie) == Some(&s.state))
            .then(|| taken.saturating_sub(base.taken_ns));
        // In CLOSE_WAIT and FIN_WAIT2 the peer has said its last word (or acknowledged ours):
        // the time since its last ACK is at most the time in the state.
        let from_info = match s.state {
            TcpState::CloseWait | TcpState::FinWait2 => {
                s.idle.map(|i| u64::from(i.last_ack_recv_ms) * 1_000_000)
            }
            _ => None,
        };
        [from_event, from_baseline, from_info]
            .into_iter()
            .flatten()
            .max()
    }

    /// How much kernel counter `name` grew over the window.
    pub fn delta(&self, name: &str) -> u64 {
        self.scene
            .counters
            .delta(&self.scene.baseline.counters, name)
    }

    /// A setting as the kernel prints it, `unknown` when unreadable.
    pub fn setting(&self, name: &str) -> String {
        self.scene
            .settings
            .get(name)
            .unwrap_or("unknown")
            .to_owned()
    }
}

/// A task as the process name findings show.
pub(crate) fn process(t: Task) -> ProcessName {
    ProcessName {
        pid: t.pid,
        comm: t.comm.as_str().to_owned(),
    }
}

/// Nanoseconds as seconds.
pub(crate) fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

pub(crate) fn owner_labels(owner: &Option<ProcessName>) -> Vec<(&'static str, Fact)> {
    match owner {
        Some(p) => vec![
            ("pid", Fact::Count(u64::from(p.pid))),
            ("comm", Fact::Text(p.comm.clone())),
        ],
        None => vec![("pid", Fact::Text("unknown".into()))],
    }
}

pub(crate) fn owner_text(owner: &Option<ProcessName>) -> String {
    match owner {
        Some(p) => format!("pid {} ({})", p.pid, p.comm),
        None => "an unknown process".to_owned(),
    }
}

/// Owner, local and remote endpoint of a group.
pub(crate) type GroupKey = (Option<ProcessName>, Option<SocketAddr>, Option<SocketAddr>);

/// The label and the endpoint of an end that [`end_groups`] groups by.
pub(crate) type EndpointKey = (&'static str, fn(&Ended) -> SocketAddr);

/// Groups keyed by owner and endpoints, largest first.
#[derive(Default)]
pub(crate) struct Grouper {
    groups: BTreeMap<GroupKey, (u64, Option<u64>)>,
}

impl Grouper {
    pub fn add(
        &mut self,
        owner: Option<ProcessName>,
        local: Option<SocketAddr>,
        remote: Option<SocketAddr>,
        age: Option<u64>,
    ) {
        let g = self
            .groups
            .entry((owner, local, remote))
            .or_insert((0, None));
        g.0 += 1;
        g.1 = g.1.max(age);
    }

    /// The largest groups, their endpoints labelled `local_key` and `remote_key`, after
    /// `extra` labels.
    pub fn top(
        self,
        local_key: &'static str,
        remote_key: &'static str,
        extra: &[(&'static str, Fact)],
    ) -> Vec<Group> {
        let mut v: Vec<_> = self.groups.into_iter().collect();
        v.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(b.1.1.cmp(&a.1.1)));
        v.into_iter()
            .take(TOP)
            .map(|((owner, local, remote), (count, oldest))| {
                let mut labels = owner_labels(&owner);
                labels.extend_from_slice(extra);
                if let Some(local) = local {
                    labels.push((local_key, Fact::Endpoint(local)));
                }
                if let Some(remote) = remote {
                    labels.push((remote_key, Fact::Endpoint(remote)));
                }
                Group {
                    labels,
                    count,
                    oldest_s: oldest.map(secs),
                }
            })
            .collect()
    }
}

pub(crate) fn group_text(g: &Group) -> String {
    let mut out = String::new();
    let mut pid = None;
    let mut comm = None;
    for (k, v) in &g.labels {
        match *k {
            "pid" => pid = Some(v.to_string()),
            "comm" => comm = Some(v.to_string()),
            _ => {
                if !out.is_empty() {
                    out.push(' ');
                }
                let _ = write!(out, "{k} {v}");
            }
        }
    }
    match (pid, comm) {
        (Some(p), Some(c)) => format!("pid {p} ({c}) {out}"),
        _ => format!("unknown process {out}"),
    }
}

/// Groups sockets (oldest first, with their ages) by owner and local endpoint, and by remote
/// endpoint too when `by_remote`; the oldest few become examples. Also returns the largest
/// group in words.
pub(crate) fn socket_groups(
    ctx: &mut Ctx<'_>,
    sockets: &[(&DiagSocket, u64)],
    by_remote: bool,
) -> (Vec<Group>, Vec<Example>, String) {
    let mut groups = Grouper::default();
    let mut examples = Vec::new();
    for &(s, age) in sockets {
        let local = s.endpoints.local();
        let remote = s.endpoints.remote();
        let owner = ctx.owner(s);
        if examples.len() < TOP {
            examples.push(Example {
                state: s.state,
                local,
                remote,
                age_s: Some(secs(age)),
                owner: owner.clone(),
            });
        }
        groups.add(owner, Some(local), by_remote.then_some(remote), Some(age));
    }
    let top = groups.top("local", "remote", &[]);
    let worst = top.first().map(group_text).unwrap_or_default();
    (top, examples, worst)
}

/// Sockets `keep` selects, aged at least `min_age_ns`, oldest first, with their ages; and how
/// many selected sockets had no known age.
pub(crate) fn aged<'s>(
    ctx: &Ctx<'_>,
    sockets: &'s [DiagSocket],
    keep: impl Fn(&DiagSocket) -> bool,
    min_age_ns: u64,
) -> (Vec<(&'s DiagSocket, u64)>, u64) {
    let mut unknown = 0;
    let mut v: Vec<_> = sockets
        .iter()
        .filter(|s| keep(s))
        .filter_map(|s| match ctx.age_ns(s) {
            Some(age) => (age >= min_age_ns).then_some((s, age)),
            None => {
                unknown += 1;
                None
            }
        })
        .collect();
    v.sort_by_key(|(_, age)| std::cmp::Reverse(*age));
    (v, unknown)
}

/// Groups window ends by owner and, when `endpoint` is given, one endpoint; largest first.
/// `extra` labels every group (e.g. which kind of end).
pub(crate) fn end_groups<'e>(
    ctx: &mut Ctx<'_>,
    ends: impl Iterator<Item = &'e Ended>,
    endpoint: Option<EndpointKey>,
    extra: &[(&'static str, Fact)],
) -> (Vec<Group>, String) {
    let mut g = Grouper::default();
    for e in ends {
        let place = endpoint.map(|(_, f)| f(e));
        g.add(ctx.end_owner(e), place, None, None);
    }
    let top = g.top(endpoint.map_or("", |(key, _)| key), "", extra);
    let worst = top.first().map(group_text).unwrap_or_default();
    (top, worst)
}

/// `30 s`, `1.5 s`, `2 min`: a threshold for a sentence.
pub fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 120.0 && s % 60.0 == 0.0 {
        format!("{} min", s / 60.0)
    } else if s.fract() == 0.0 {
        format!("{s} s")
    } else {
        format!("{s:.1} s")
    }
}

/// Keeps the snapshot sockets the filter speaks for. Owner filters judge a socket by its
/// owner, and sockets without one (TIME_WAIT, half-open) by their port's listener.
pub fn filter_sockets<'s>(
    filter: &Filter,
    sockets: &'s [DiagSocket],
    obs: &Observations,
    owners: &mut dyn OwnerLookup,
) -> Cow<'s, [DiagSocket]> {
    let by_socket = |s: &DiagSocket| filter.matches_socket(&s.endpoints, s.state);
    let by_owner = !(filter.pids.is_empty() && filter.comms.is_empty());
    // The common case keeps everything: no copy of a snapshot that may hold 100k sockets,
    // and a copy is sized exactly (collecting would double its way up).
    let kept = sockets.iter().filter(|s| by_socket(s)).count();
    if !by_owner && kept == sockets.len() {
        return Cow::Borrowed(sockets);
    }
    let mut copy = Vec::with_capacity(kept);
    copy.extend(sockets.iter().filter(|s| by_socket(s)).copied());
    let sockets = copy;
    if !by_owner {
        return Cow::Owned(sockets);
    }
    let owner_ok = |s: &DiagSocket, owners: &mut dyn OwnerLookup| {
        obs.owner_of(s.cookie)
            .or_else(|| owners.owner(s.inode))
            .is_some_and(|p| {
                (filter.pids.is_empty() || filter.pids.contains(&p.pid))
                    && (filter.comms.is_empty()
                        || filter.comms.iter().any(|c| p.comm.starts_with(c.as_str())))
            })
    };
    let listener_ports: HashSet<u16> = sockets
        .iter()
        .filter(|s| s.state == TcpState::Listen)
        .filter(|s| owner_ok(s, owners))
        .map(|s| s.endpoints.local_port)
        .collect();
    Cow::Owned(
        sockets
            .into_iter()
            .filter(|s| {
                owner_ok(s, owners)
                    || (s.inode == 0 && listener_ports.contains(&s.endpoints.local_port))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnosis::checks::support::sock;

    #[test]
    fn owner_filters_judge_sockets_by_owner_and_ownerless_ones_by_their_listener() {
        let sockets = vec![
            sock(7, TcpState::Listen, "10.0.0.1:80", "0.0.0.0:0"), // held by pid 700
            sock(8, TcpState::CloseWait, "10.0.0.1:80", "10.0.0.2:40000"), // unknown owner
            {
                let mut tw = sock(9, TcpState::TimeWait, "10.0.0.1:80", "10.0.0.2:40001");
                tw.inode = 0;
                tw
            },
            {
                let mut tw = sock(10, TcpState::TimeWait, "10.0.0.1:443", "10.0.0.2:40002");
                tw.inode = 0;
                tw
            },
        ];
        let mut owners = SocketOwners::from_pairs([(
            7,
            ProcessName {
                pid: 700,
                comm: "leaky".into(),
            },
        )]);
        let obs = Observations::new(10);
        let kept = |filter: Filter, owners: &mut SocketOwners| -> Vec<u64> {
            filter_sockets(&filter, &sockets, &obs, owners)
                .iter()
                .map(|s| s.cookie)
                .collect()
        };
        let by_pid = Filter {
            pids: vec![700],
            ..Filter::default()
        };
        assert_eq!(kept(by_pid, &mut owners), [7, 9]);
        let by_port = Filter {
            lports: vec![443],
            ..Filter::default()
        };
        assert_eq!(kept(by_port, &mut owners), [10]);
        assert_eq!(kept(Filter::default(), &mut owners).len(), 4);
    }
}
