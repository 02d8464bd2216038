//! Owners the kernel program cannot capture: it names a socket's owner only at transitions its
//! process causes (connect, listen, close, shutdown), and a server child after the listener it
//! came from. That leaves out sockets older than tcptrace, listeners older than tcptrace (their
//! children), and listeners whose holder changed without a transition: handed to a worker
//! (socket activation, inetd, a binary upgrade) or shared with the workers a server forks.
//!
//! The book fills those gaps from `/proc` (see [`crate::host::owners`]): the holders of every
//! socket when tracing starts, and a listener's holder again a second after it starts
//! listening (servers fork their workers after listen()) and whenever the process it names has
//! exited. A child's owner is its listener's current holder; a process that has exited is never
//! named (the owner is then unknown until the next look).

use std::collections::HashMap;

use crate::host::owners::{ProcessName, SocketOwners};
use crate::model::CookieMap;
use crate::model::snapshot::DiagSocket;
use crate::model::tcp::TcpState;
use crate::model::transition::{Comm, Owner, Task, Transition};

/// A listener's holder is looked up this long after it starts listening.
pub const SETTLE_NS: u64 = 1_000_000_000;
/// A closed listener's holder is kept this long: its queued children are reset by that close
/// and reported just after it.
const CLOSED_KEPT_NS: u64 = 10_000_000_000;

/// Whether a process was running at a given time.
pub trait Liveness {
    /// From now on, learn when `pid` exits.
    fn watch(&mut self, pid: u32);
    /// Whether `pid` was running at kernel monotonic time `at_ns` (as far as known: a process
    /// not known to have exited by then was).
    fn alive_at(&mut self, pid: u32, at_ns: u64) -> bool;
}

#[derive(Debug, Clone, Copy)]
struct Listener {
    /// Its namespace and port, for children the kernel program met only after they were
    /// born (they carry no listener id).
    netns: Option<u32>,
    port: u16,
    holder: Option<Task>,
    /// When `holder` was learned (kernel monotonic ns).
    learned_ns: u64,
    /// When its LISTEN -> CLOSE was seen.
    closed_ns: Option<u64>,
    /// Look its holder up in `/proc` from this time on.
    look_at: Option<u64>,
}

/// A holder change the kernel program's listener map should learn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerUpdate {
    /// The listener's INET_DIAG cookie (the map's key).
    pub cookie: u64,
    /// Its id in transitions.
    pub id: u64,
    pub holder: ProcessName,
}

/// Listener holders and the holders of sockets older than the trace.
#[derive(Debug, Default)]
pub struct OwnerBook {
    listeners: HashMap<u64, Listener>,
    /// Sockets that existed when tracing started: cookie -> index into `holders`.
    older: CookieMap<u32>,
    holders: Vec<Task>,
}

fn task(p: &ProcessName) -> Task {
    let mut comm = [0u8; 16];
    let n = p.comm.len().min(15);
    comm[..n].copy_from_slice(&p.comm.as_bytes()[..n]);
    Task {
        pid: p.pid,
        comm: Comm::from_kernel(&comm),
    }
}

impl OwnerBook {
    /// Learns the holders of the sockets of a snapshot taken when tracing started (ids
    /// already those of transitions): listeners for their children, other sockets for
    /// themselves. Returns what the kernel's listener map should learn.
    pub fn seed(
        &mut self,
        sockets: &[DiagSocket],
        ids: &[u64],
        owners: &SocketOwners,
        now_ns: u64,
        live: &mut dyn Liveness,
    ) -> Vec<ListenerUpdate> {
        let mut updates = Vec::new();
        let mut index: HashMap<u32, u32> = HashMap::new();
        for (s, &id) in sockets.iter().zip(ids) {
            let Some(holder) = owners.get(s.inode) else {
                continue;
            };
            if s.state == TcpState::Listen {
                live.watch(holder.pid);
                self.listeners.insert(
                    id,
                    Listener {
                        netns: s.netns,
                        port: s.endpoints.local_port,
                        holder: Some(task(holder)),
                        learned_ns: now_ns,
                        closed_ns: None,
                        look_at: None,
                    },
                );
                updates.push(ListenerUpdate {
                    cookie: s.cookie,
                    id,
                    holder: holder.clone(),
                });
            } else {
                let i = *index.entry(holder.pid).or_insert_with(|| {
                    self.holders.push(task(holder));
                    (self.holders.len() - 1) as u32
                });
                self.older.insert(id, i);
            }
        }
        updates
    }

    /// Whether some listener's holder is due to be looked up at `now_ns`.
    pub fn look_due(&self, now_ns: u64) -> bool {
        self.listeners
            .values()
            .any(|l| l.closed_ns.is_none() && l.look_at.is_some_and(|at| at <= now_ns))
    }

    /// Where to look for the holders of the listeners due at `now_ns`: below their current
    /// holders (the workers a server forks after listen()), or `None` when some due listener
    /// has no live holder to start from (a handed-off listener: anyone may hold it now).
    pub fn look_roots(&self, now_ns: u64, live: &mut dyn Liveness) -> Option<Vec<u32>> {
        let mut roots = Vec::new();
        for l in self.listeners.values() {
            if l.closed_ns.is_some() || l.look_at.is_none_or(|at| at > now_ns) {
                continue;
            }
            let holder = l.holder.filter(|h| live.alive_at(h.pid, now_ns))?;
            if !roots.contains(&holder.pid) {
                roots.push(holder.pid);
            }
        }
        Some(roots)
    }

    /// Takes in a fresh look at the listeners (`listeners` from a dump, `ids` their ids in
    /// transitions): each listener due gets the holder `/proc` names now (or none). Returns
    /// the changes for the kernel's listener map.
    pub fn looked(
        &mut self,
        listeners: &[DiagSocket],
        ids: &[u64],
        owners: &SocketOwners,
        now_ns: u64,
        live: &mut dyn Liveness,
    ) -> Vec<ListenerUpdate> {
        let mut updates = Vec::new();
        for (s, &id) in listeners.iter().zip(ids) {
            let Some(l) = self.listeners.get_mut(&id) else {
                continue;
            };
            if l.look_at.is_none_or(|at| at > now_ns) {
                continue;
            }
            l.look_at = None;
            let holder = owners.get(s.inode);
            if let Some(h) = holder {
                live.watch(h.pid);
            }
            let new = holder.map(task);
            if new.map(|t| t.pid) != l.holder.map(|t| t.pid) {
                l.holder = new;
                l.learned_ns = now_ns;
                if let Some(holder) = holder {
                    updates.push(ListenerUpdate {
                        cookie: s.cookie,
                        id,
                        holder: holder.clone(),
                    });
                }
            }
        }
        // A listener due that the dump no longer lists is closing: nothing to look at.
        for l in self.listeners.values_mut() {
            if l.look_at.is_some_and(|at| at <= now_ns) {
                l.look_at = None;
            }
        }
        updates
    }

    /// Process `pid` had exited by `at_ns`: the listeners it held are looked at again.
    pub fn exited(&mut self, pid: u32, at_ns: u64) {
        for l in self.listeners.values_mut() {
            if l.holder.is_some_and(|h| h.pid == pid) && l.closed_ns.is_none() {
                l.look_at = Some(l.look_at.map_or(at_ns, |at| at.min(at_ns)));
            }
        }
    }

    /// Forgets closed listeners whose children have had time to report.
    pub fn expire(&mut self, now_ns: u64) {
        self.listeners
            .retain(|_, l| l.closed_ns.is_none_or(|c| now_ns < c + CLOSED_KEPT_NS));
    }

    /// Names the owner of `t` where the kernel could not, or named a listener's holder that
    /// may have changed since.
    pub fn resolve(&mut self, t: &mut Transition, live: &mut dyn Liveness) {
        match (t.old, t.new) {
            (_, TcpState::Listen) => {
                if let Some(o) = t.owner {
                    live.watch(o.task.pid);
                }
                self.listeners.insert(
                    t.cookie,
                    Listener {
                        netns: t.netns,
                        port: t.endpoints.local_port,
                        holder: t.owner.map(|o| o.task),
                        learned_ns: t.ts_ns,
                        closed_ns: None,
                        // The process that called listen() may fork the workers that accept.
                        look_at: Some(t.ts_ns + SETTLE_NS),
                    },
                );
            }
            (TcpState::Listen, TcpState::Close) => {
                if let Some(l) = self.listeners.get_mut(&t.cookie) {
                    l.closed_ns = Some(t.ts_ns);
                }
            }
            _ => {}
        }
        if t.owner.is_none_or(|o| o.inherited) {
            if let Some(id) = t.listener {
                t.owner = self.listener_holder(id, t, live);
            } else if t.owner.is_none() {
                if let Some(&i) = self.older.get(&t.cookie) {
                    t.owner = self.holders.get(i as usize).map(|&task| Owner {
                        task,
                        captured_ns: t.ts_ns,
                        inherited: false,
                    });
                } else if t.in_old_ns.is_none() {
                    t.owner = self.port_holder(t, live);
                }
            } else if let Some(o) = t.owner
                && !live.alive_at(o.task.pid, t.ts_ns)
            {
                t.owner = None;
            }
        }
        if t.new == TcpState::Close {
            self.older.swap_remove(&t.cookie);
        }
    }

    /// The live holder of listener `id` for its child `t`, learning the listener if the book
    /// did not know it (its `-> LISTEN` was filtered out or lost).
    fn listener_holder(
        &mut self,
        id: u64,
        t: &Transition,
        live: &mut dyn Liveness,
    ) -> Option<Owner> {
        let kernel = t.owner.map(|o| o.task);
        let l = self.listeners.entry(id).or_insert(Listener {
            netns: t.netns,
            port: t.endpoints.local_port,
            holder: kernel,
            learned_ns: t.ts_ns,
            closed_ns: None,
            look_at: Some(t.ts_ns),
        });
        let holder = l.holder?;
        if !live.alive_at(holder.pid, t.ts_ns) {
            // Gone before this transition: someone else holds the listener now (or nobody).
            if l.closed_ns.is_none() && l.look_at.is_none() {
                l.look_at = Some(t.ts_ns);
            }
            return None;
        }
        Some(Owner {
            task: holder,
            captured_ns: l.learned_ns,
            inherited: true,
        })
    }

    /// For a socket first met mid-life with no owner and no listener id (a server child born
    /// before tracing, still in its listener's accept queue or reset by its close): the holder
    /// of the listeners on its namespace and local port, when they all have the same one.
    fn port_holder(&self, t: &Transition, live: &mut dyn Liveness) -> Option<Owner> {
        let port = t.endpoints.local_port;
        let mut holders = self
            .listeners
            .values()
            .filter(|l| l.port == port && port != 0 && l.netns == t.netns)
            .map(|l| l.holder);
        let first = holders.next()??;
        if holders.any(|h| h.map(|h| h.pid) != Some(first.pid)) {
            return None;
        }
        live.alive_at(first.pid, t.ts_ns).then_some(Owner {
            task: first,
            captured_ns: t.ts_ns,
            inherited: true,
        })
    }

    /// Listeners the book knows (tests and diagnostics).
    pub fn listeners(&self) -> usize {
        self.listeners.len()
    }

    /// Sockets older than the trace whose holder the book keeps.
    pub fn older_sockets(&self) -> usize {
        self.older.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{diag, step};
    use TcpState::*;

    const S: u64 = 1_000_000_000;

    fn name(pid: u32, comm: &str) -> ProcessName {
        ProcessName {
            pid,
            comm: comm.into(),
        }
    }

    fn owner_pid(t: &Transition) -> Option<u32> {
        t.owner.map(|o| o.task.pid)
    }

    /// Processes and the time each exited by (none: still running).
    #[derive(Default)]
    struct Exits(HashMap<u32, u64>);

    impl Liveness for Exits {
        fn watch(&mut self, _pid: u32) {}
        fn alive_at(&mut self, pid: u32, at_ns: u64) -> bool {
            self.0.get(&pid).is_none_or(|&by| at_ns < by)
        }
    }

    #[test]
    fn children_of_an_older_listener_name_its_holder() {
        let mut book = OwnerBook::default();
        let mut listener = diag(10, Listen, "0.0.0.0:80", "0.0.0.0:0");
        listener.inode = 77;
        let conn = diag(11, Established, "10.0.0.1:80", "10.0.0.2:5000");
        let owners = SocketOwners::from_pairs([(77, name(300, "nginx")), (11, name(301, "w"))]);
        let mut live = Exits::default();
        let updates = book.seed(&[listener, conn], &[10, 11], &owners, S, &mut live);
        assert_eq!(
            updates,
            [ListenerUpdate {
                cookie: 10,
                id: 10,
                holder: name(300, "nginx")
            }]
        );
        // A child of listener 10 whose owner the kernel did not know.
        let mut child = step(20, Listen, SynRecv).child_of(10, 0).done();
        child.owner = None;
        book.resolve(&mut child, &mut live);
        assert_eq!(owner_pid(&child), Some(300));
        assert!(child.owner.unwrap().inherited);
        assert_eq!(child.owner.unwrap().task.comm.as_str(), "nginx");
        // The older connection's softirq transition names its holder.
        let mut cw = step(11, Established, CloseWait).done();
        cw.owner = None;
        book.resolve(&mut cw, &mut live);
        assert_eq!(owner_pid(&cw), Some(301));
        // Its close forgets it.
        let mut close = step(11, LastAck, Close).done();
        close.owner = None;
        book.resolve(&mut close, &mut live);
        assert_eq!(book.older_sockets(), 0);
    }

    #[test]
    fn a_handed_off_listener_never_names_the_exited_launcher() {
        let mut book = OwnerBook::default();
        // The launcher (pid 50) listens; the kernel names it.
        let mut listen = step(10, Close, Listen).at(S).done();
        listen.owner.as_mut().unwrap().task.pid = 50;
        let mut live = Exits::default();
        book.resolve(&mut listen, &mut live);
        assert!(!book.look_due(S + SETTLE_NS - 1));
        assert!(book.look_due(S + SETTLE_NS));
        // A child it accepted before it exited (at 1.5 s) names it, even when read later.
        live.0.insert(50, S + S / 2);
        book.exited(50, S + S / 2);
        let mut early = step(19, Listen, SynRecv).at(S + 1).child_of(10, 0).done();
        early.owner.as_mut().unwrap().inherited = true;
        early.owner.as_mut().unwrap().task.pid = 50;
        book.resolve(&mut early, &mut live);
        assert_eq!(owner_pid(&early), Some(50));
        // A child after its exit, with the launcher as the kernel's inherited owner: nobody.
        let mut child = step(20, Listen, SynRecv).at(2 * S).child_of(10, 0).done();
        child.owner.as_mut().unwrap().task.pid = 50;
        child.owner.as_mut().unwrap().inherited = true;
        book.resolve(&mut child, &mut live);
        assert_eq!(owner_pid(&child), None, "never an exited process");
        assert!(book.look_due(S + S / 2));
        // The look finds the worker (pid 51) holding it.
        let mut l = diag(10, Listen, "0.0.0.0:80", "0.0.0.0:0");
        l.inode = 5;
        let updates = book.looked(
            &[l],
            &[10],
            &SocketOwners::from_pairs([(5, name(51, "worker"))]),
            2 * S,
            &mut live,
        );
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].holder.pid, 51);
        let mut child = step(21, Listen, SynRecv).at(3 * S).child_of(10, 0).done();
        child.owner.as_mut().unwrap().task.pid = 50;
        child.owner.as_mut().unwrap().inherited = true;
        book.resolve(&mut child, &mut live);
        assert_eq!(owner_pid(&child), Some(51));
        assert!(!book.look_due(3 * S));
    }

    #[test]
    fn listeners_sharing_a_port_keep_their_own_holders() {
        let mut book = OwnerBook::default();
        let mut live = Exits::default();
        for (id, pid) in [(10, 100), (11, 200)] {
            let mut listen = step(id, Close, Listen).done();
            listen.owner.as_mut().unwrap().task.pid = pid;
            book.resolve(&mut listen, &mut live);
        }
        for (child, listener, pid) in [(20, 10, 100), (21, 11, 200), (22, 10, 100)] {
            let mut t = step(child, Listen, SynRecv).child_of(listener, 0).done();
            t.owner.as_mut().unwrap().inherited = true;
            book.resolve(&mut t, &mut live);
            assert_eq!(owner_pid(&t), Some(pid), "child {child}");
        }
    }

    #[test]
    fn a_closed_listeners_holder_names_the_children_its_close_resets() {
        let mut book = OwnerBook::default();
        let mut live = Exits::default();
        let mut l = diag(10, Listen, "0.0.0.0:80", "0.0.0.0:0");
        l.inode = 5;
        book.seed(
            &[l],
            &[10],
            &SocketOwners::from_pairs([(5, name(60, "srv"))]),
            S,
            &mut live,
        );
        let mut close = step(10, Listen, Close).at(2 * S).done();
        book.resolve(&mut close, &mut live);
        let mut reset = step(20, Established, Close)
            .at(2 * S)
            .child_of(10, 0)
            .done();
        reset.owner = None;
        book.resolve(&mut reset, &mut live);
        assert_eq!(owner_pid(&reset), Some(60));
        book.expire(2 * S + CLOSED_KEPT_NS);
        assert_eq!(book.listeners(), 0);
    }

    #[test]
    fn children_born_before_tracing_take_their_ports_listener_holder_when_unambiguous() {
        let mut book = OwnerBook::default();
        let mut live = Exits::default();
        let mut l = diag(10, Listen, "127.0.0.1:8080", "0.0.0.0:0");
        l.inode = 5;
        let owners = SocketOwners::from_pairs([(5, name(60, "srv"))]);
        book.seed(&[l], &[10], &owners, S, &mut live);
        // A queued child reset by its listener's close: first met at its end.
        let mut reset = step(30, Established, Close)
            .at(2 * S)
            .ports(8080, 5000)
            .dwell(None)
            .done();
        reset.owner = None;
        book.resolve(&mut reset, &mut live);
        assert_eq!(owner_pid(&reset), Some(60));
        // Another namespace's socket on the same port, or a socket met from its start: not it.
        let mut other = step(31, Established, Close)
            .ports(8080, 5001)
            .dwell(None)
            .netns(7)
            .done();
        other.owner = None;
        book.resolve(&mut other, &mut live);
        assert_eq!(owner_pid(&other), None);
        // A second listener on the port with another holder: ambiguous, nobody.
        let mut l2 = diag(11, Listen, "127.0.0.2:8080", "0.0.0.0:0");
        l2.inode = 6;
        let owners = SocketOwners::from_pairs([(6, name(61, "other"))]);
        book.seed(&[l2], &[11], &owners, S, &mut live);
        let mut reset = step(32, Established, Close)
            .ports(8080, 5002)
            .dwell(None)
            .done();
        reset.owner = None;
        book.resolve(&mut reset, &mut live);
        assert_eq!(owner_pid(&reset), None);
    }

    #[test]
    fn an_owner_the_process_confirmed_is_kept() {
        let mut book = OwnerBook::default();
        let mut gone = Exits([(1234, 0)].into_iter().collect());
        let mut t = step(20, Established, FinWait1).child_of(10, 0).done();
        book.resolve(&mut t, &mut gone);
        assert_eq!(owner_pid(&t), Some(1234), "captured by its own close()");
    }
}
