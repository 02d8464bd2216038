//! One diagnosis window: from a snapshot (the baseline) through the transitions observed, to
//! the next snapshot, where the findings are evaluated. `doctor` runs one window; `serve` one
//! per reconcile interval, each starting where the last ended. Both use [`Window`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use crate::diagnosis::evidence::{OwnerLookup, filter_sockets, process};
use crate::diagnosis::{Finding, Thresholds, diagnose};
use crate::host::owners::ProcessName;
use crate::host::stack::{Settings, TcpCounters};
use crate::model::CookieMap;
use crate::model::cgroup::CgroupInfo;
use crate::model::connections::{CloseTracker, ClosedBy, Connection, ConnectionTable, End, Role};
use crate::model::filter::Filter;
use crate::model::snapshot::{DiagSocket, Snapshot, Stack};
use crate::model::tcp::TcpState;
use crate::model::transition::{Task, Transition};
use crate::pipeline::{Flow, Sink};

/// Connection ends kept per window for the event-derived findings.
const ENDED_CAP: usize = 65_536;

/// A connection that ended in a way a finding may report.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ended {
    pub end: End,
    pub closed_by: ClosedBy,
    pub role: Role,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub owner: Option<Task>,
    pub netns: Option<u32>,
}

/// How the live connections are kept: as briefs (what findings need, a quarter of a story:
/// `serve`, `doctor`), or as whole stories, TIME_WAIT included, for a view that shows them
/// (`top`). Both report the same closes.
enum Tracker {
    Briefs(CloseTracker),
    Stories(ConnectionTable),
}

impl Tracker {
    fn apply(&mut self, t: &Transition) -> Option<Connection> {
        match self {
            Self::Briefs(b) => b.apply(t),
            Self::Stories(s) => {
                let closed = s.apply(t);
                // Finished stories are not printed anywhere: only live ones are looked at.
                while s.next_finished().is_some() {}
                closed
            }
        }
    }

    /// The owner, state and entry time of a live connection.
    fn live(&self, cookie: u64) -> Option<(Option<Task>, TcpState, u64)> {
        match self {
            Self::Briefs(b) => b
                .live(cookie)
                .map(|b| (b.owner(), b.state, b.state_since_ns)),
            Self::Stories(s) => s.live(cookie).map(|c| (c.owner, c.state, c.state_since_ns)),
        }
    }
}

/// What the transitions of a window told: the live connections (when each entered its state,
/// who owns it) and the connections that ended badly.
pub struct Observations {
    connections: Tracker,
    pub(crate) ended: Vec<Ended>,
    /// Transitions seen in this window.
    pub transitions: u64,
    /// Connections that closed in this window (every end).
    pub closed: u64,
    /// Ends beyond what one window keeps (still counted in `closed`).
    pub ended_overflow: u64,
}

impl Observations {
    pub fn new(capacity: usize) -> Self {
        Self {
            connections: Tracker::Briefs(CloseTracker::new(capacity)),
            ended: Vec::new(),
            transitions: 0,
            closed: 0,
            ended_overflow: 0,
        }
    }

    /// Applies a transition of a socket the filter's socket-level parts selected; returns the
    /// connection it closed, if any. Only what the rest of `filter` selects is counted: events
    /// by [`Filter::matches_event`], closed connections by [`Filter::matches_story`].
    pub fn observe(&mut self, t: &Transition, filter: &Filter) -> Option<Connection> {
        if filter.matches_event(t) {
            self.transitions += 1;
        }
        let closed = self.connections.apply(t);
        if let Some(c) = closed.filter(|c| filter.matches_story(c)) {
            self.closed += 1;
            let notable = c.closed_by == ClosedBy::Both
                || matches!(
                    c.end,
                    Some(
                        End::Refused
                            | End::Timeout
                            | End::HandshakeAborted
                            | End::PortsExhausted
                            | End::Aborted
                            | End::RstReceived
                    )
                );
            if notable {
                if self.ended.len() < ENDED_CAP {
                    self.ended.push(Ended {
                        end: c.end.unwrap_or(End::Aborted),
                        closed_by: c.closed_by,
                        role: c.role,
                        local: c.endpoints.local(),
                        remote: c.endpoints.remote(),
                        owner: c.owner,
                        netns: c.netns,
                    });
                } else {
                    self.ended_overflow += 1;
                }
            }
        }
        closed
    }

    /// Keeps whole stories (TIME_WAIT included) instead of briefs, for [`Observations::story`].
    pub fn keep_stories(&mut self, capacity: usize) {
        let mut table = ConnectionTable::new(capacity);
        table.wait_time_wait = true;
        self.connections = Tracker::Stories(table);
    }

    /// Learns what a snapshot of every socket tells about the connections to come: its
    /// listeners (a socket first seen later on a listening port is a server); with stories,
    /// which TIME_WAITs are over.
    pub fn learn(&mut self, snapshot: &Snapshot) {
        match &mut self.connections {
            Tracker::Briefs(b) => b.snapshot(snapshot),
            Tracker::Stories(s) => {
                s.snapshot(snapshot);
                while s.next_finished().is_some() {}
            }
        }
    }

    /// Learns the listeners of a snapshot of listeners only.
    pub fn learn_listeners(&mut self, snapshot: &Snapshot) {
        match &mut self.connections {
            Tracker::Briefs(b) => b.snapshot(snapshot),
            Tracker::Stories(s) => s.learn_listeners(snapshot),
        }
    }

    /// Ends the TIME_WAITs of stories no snapshot could speak for (their 60 s passed).
    pub fn expire(&mut self, now_ns: u64) {
        if let Tracker::Stories(s) = &mut self.connections {
            s.expire(now_ns);
            while s.next_finished().is_some() {}
        }
    }

    /// The story so far of a socket that is open or in TIME_WAIT (only when keeping stories).
    pub fn story(&self, cookie: u64) -> Option<&Connection> {
        match &self.connections {
            Tracker::Briefs(_) => None,
            Tracker::Stories(s) => s.story(cookie),
        }
    }

    /// Connections dropped from the bounded table before they finished.
    pub fn evicted(&self) -> u64 {
        match &self.connections {
            Tracker::Briefs(b) => b.evicted,
            Tracker::Stories(s) => s.evicted,
        }
    }

    /// Starts a new window: forgets ends and counts, keeps what is known of live sockets.
    pub fn new_window(&mut self) {
        self.ended.clear();
        self.transitions = 0;
        self.closed = 0;
        self.ended_overflow = 0;
    }

    /// The owner transitions reported for a live socket.
    pub fn owner_of(&self, cookie: u64) -> Option<ProcessName> {
        self.connections.live(cookie)?.0.map(process)
    }

    /// When a live socket entered `state`, if a transition into it was seen.
    pub(crate) fn in_state_since(&self, cookie: u64, state: TcpState) -> Option<u64> {
        let (_, now, since) = self.connections.live(cookie)?;
        (now == state).then_some(since)
    }
}

/// What a finding compares against from the start of the window: counters, and which
/// sockets were already in a state whose age matters.
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    pub taken_ns: u64,
    pub counters: TcpCounters,
    pub(crate) states: CookieMap<TcpState>,
}

impl Baseline {
    pub fn new(sockets: &[DiagSocket], taken_ns: u64, counters: TcpCounters) -> Self {
        let states = sockets
            .iter()
            .filter(|s| {
                matches!(
                    s.state,
                    TcpState::CloseWait | TcpState::FinWait2 | TcpState::SynRecv
                )
            })
            .map(|s| (s.cookie, s.state))
            .collect();
        Self {
            taken_ns,
            counters,
            states,
        }
    }
}

/// Everything [`diagnose`] looks at in one namespace, as of the end of the window.
pub struct Scene<'a> {
    /// The namespace (its inode), `None` when unknown.
    pub netns: Option<u32>,
    /// Its sockets in the snapshot taken at the end of the window.
    pub sockets: &'a [DiagSocket],
    pub taken_ns: u64,
    pub counters: &'a TcpCounters,
    pub settings: &'a Settings,
    pub baseline: &'a Baseline,
}

/// What the end of a window found.
#[derive(Debug)]
pub struct Evaluation<'s> {
    /// Most severe first, each naming its namespace.
    pub findings: Vec<Finding>,
    /// The end snapshot's sockets the filter kept.
    pub sockets: Cow<'s, [DiagSocket]>,
}

/// Observations between two snapshots, and the findings they add up to, namespace by
/// namespace.
pub struct Window {
    obs: Observations,
    /// Per namespace, from the snapshot that started the window.
    baselines: HashMap<Option<u32>, Baseline>,
    started_ns: Option<u64>,
    filter: Filter,
    thresholds: Thresholds,
}

static NO_STACK: std::sync::LazyLock<Stack> = std::sync::LazyLock::new(Stack::default);

impl Window {
    /// A window remembering at most `capacity` live connections, judging what `filter` keeps
    /// by `thresholds`.
    pub fn new(capacity: usize, filter: Filter, thresholds: Thresholds) -> Self {
        Self {
            obs: Observations::new(capacity),
            baselines: HashMap::new(),
            started_ns: None,
            filter,
            thresholds,
        }
    }

    /// Applies a transition of a socket the filter's socket-level parts selected (see
    /// [`Filter::socket_level`]); returns the connection it closed if the filter selects it.
    pub fn observe(&mut self, t: &Transition) -> Option<Connection> {
        self.obs
            .observe(t, &self.filter)
            .filter(|c| self.filter.matches_story(c))
    }

    /// Keeps every live connection's whole story, TIME_WAIT included (see
    /// [`Window::story`]); findings stay the same.
    pub fn with_stories(mut self, capacity: usize) -> Self {
        self.obs.keep_stories(capacity);
        self
    }

    /// Learns the listening ports a snapshot shows.
    pub fn learn_listeners(&mut self, snapshot: &Snapshot) {
        self.obs.learn_listeners(snapshot);
    }

    /// Time passes (kernel monotonic ns): stories' TIME_WAITs no snapshot ended end by the
    /// 60 s rule.
    pub fn tick(&mut self, now_ns: u64) {
        self.obs.expire(now_ns);
    }

    /// The story so far of an open socket or one in TIME_WAIT, when keeping stories.
    pub fn story(&self, cookie: u64) -> Option<&Connection> {
        self.obs.story(cookie)
    }

    /// What the window judges by.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    pub fn observations(&self) -> &Observations {
        &self.obs
    }

    /// The findings of the window that ends at `end`, in every namespace it covers; `None`
    /// before [`Window::restart`] ever started one. A namespace the window's start did not
    /// cover is judged from the end alone (no counter grew in it, no state aged).
    pub fn evaluate<'s>(
        &self,
        end: &'s Snapshot,
        owners: &mut dyn OwnerLookup,
    ) -> Option<Evaluation<'s>> {
        let started_ns = self.started_ns?;
        let sockets = filter_sockets(&self.filter, &end.sockets, &self.obs, owners);
        let mut findings = Vec::new();
        // Filtering keeps the snapshot's order, so each namespace's sockets stay together.
        let mut at = 0;
        for ns in &end.namespaces {
            let len = sockets[at..]
                .iter()
                .take_while(|s| s.netns == ns.inode)
                .count();
            let mine = &sockets[at..at + len];
            at += len;
            let stack = ns.stack.as_ref().unwrap_or(&NO_STACK);
            let fresh;
            let baseline = match self.baselines.get(&ns.inode) {
                Some(b) => b,
                None => {
                    fresh = Baseline {
                        taken_ns: started_ns,
                        counters: stack.counters.clone(),
                        states: CookieMap::default(),
                    };
                    &fresh
                }
            };
            let scene = Scene {
                netns: ns.inode,
                sockets: mine,
                taken_ns: end.taken_ns,
                counters: &stack.counters,
                settings: &stack.settings,
                baseline,
            };
            for mut f in diagnose(&scene, &self.obs, owners, &self.thresholds) {
                f.netns = ns.inode;
                f.namespace = Some(ns.name.clone());
                findings.push(f);
            }
        }
        findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(b.count.cmp(&a.count)));
        Some(Evaluation { findings, sockets })
    }

    /// Starts the next window at `start`: each namespace's counters and the states whose ages
    /// matter become its baseline (the filter need not apply: the baseline is only looked up by
    /// the cookies of sockets the end snapshot keeps), and the window's ends and counts reset.
    pub fn restart(&mut self, start: &Snapshot) {
        self.baselines.clear();
        for (ns, sockets) in start.by_namespace() {
            let counters = ns
                .stack
                .as_ref()
                .map(|s| s.counters.clone())
                .unwrap_or_default();
            self.baselines
                .insert(ns.inode, Baseline::new(sockets, start.taken_ns, counters));
        }
        self.started_ns = Some(start.taken_ns);
        self.obs.learn(start);
        self.obs.new_window();
    }
}

impl Sink for Window {
    fn transition(&mut self, t: &Transition, _: Option<&CgroupInfo>) -> io::Result<Flow> {
        self.observe(t);
        Ok(Flow::Continue)
    }
}
