//! Matching INET_DIAG sockets to the ids transitions carry when those ids are not socket
//! cookies (`kernel::loader::Identity::Numbered`, kernels before 5.12).
//!
//! There the program numbers a socket itself unless the kernel had generated its cookie before
//! the program first saw it, so a snapshot's cookie and a transition's id name the same socket
//! only for sockets older than the agent. Within one network namespace a socket's addresses
//! and ports identify it, so each snapshot socket takes the id of the last transition seen
//! with its addresses; sockets no transition named keep their cookie.

use std::collections::{HashMap, HashSet};

use crate::model::snapshot::{DiagSocket, Snapshot};
use crate::model::tcp::{Endpoints, TIME_WAIT_NS, TcpState};
use crate::model::transition::Transition;

#[derive(Debug, Clone, Copy)]
struct Seen {
    id: u64,
    at_ns: u64,
    /// Closed into a timewait socket, which keeps the endpoints (and shows in snapshots) for up
    /// to `TIME_WAIT_NS`.
    time_wait: bool,
}

/// (Namespace, endpoints) -> id, for the live and timewait sockets. Bounded without snapshots
/// too: a close forgets its socket, and timewait entries older than `TIME_WAIT_NS` go whenever
/// the map has doubled since it was last pruned.
#[derive(Debug)]
pub struct SocketIds {
    by_endpoints: HashMap<(Option<u32>, Endpoints), Seen>,
    prune_at: usize,
}

/// Below this many entries the map is never pruned.
const PRUNE_FLOOR: usize = 1024;

impl Default for SocketIds {
    fn default() -> Self {
        Self::new()
    }
}

impl SocketIds {
    pub fn new() -> Self {
        Self {
            by_endpoints: HashMap::new(),
            prune_at: PRUNE_FLOOR,
        }
    }

    pub fn observe(&mut self, t: &Transition) {
        // CLOSE -> SYN_SENT fires before `inet_hash_connect()` picks the local port: no
        // snapshot can show those endpoints.
        if t.endpoints.local_port == 0 {
            return;
        }
        let key = (t.netns, t.endpoints);
        let time_wait = match (t.old, t.new) {
            // tcp_time_wait(): a timewait socket takes over the endpoints.
            (TcpState::FinWait2 | TcpState::Closing, TcpState::Close) => true,
            (_, TcpState::Close) => {
                if self
                    .by_endpoints
                    .get(&key)
                    .is_some_and(|s| s.id == t.cookie)
                {
                    self.by_endpoints.remove(&key);
                }
                return;
            }
            _ => false,
        };
        let seen = Seen {
            id: t.cookie,
            at_ns: t.ts_ns,
            time_wait,
        };
        self.by_endpoints.insert(key, seen);
        if self.by_endpoints.len() >= self.prune_at {
            let now = t.ts_ns;
            self.by_endpoints
                .retain(|_, s| !s.time_wait || s.at_ns.saturating_add(TIME_WAIT_NS) > now);
            self.prune_at = (2 * self.by_endpoints.len()).max(PRUNE_FLOOR);
        }
    }

    /// Gives each socket of a snapshot the id of its transitions, then forgets endpoints of
    /// the namespaces it covers that it no longer has and no transition named since.
    pub fn translate(&mut self, snapshot: &mut Snapshot) {
        let mut present = HashSet::with_capacity(snapshot.sockets.len());
        for s in snapshot.sockets.iter_mut() {
            let key = (s.netns, s.endpoints);
            if let Some(seen) = self.by_endpoints.get(&key) {
                s.cookie = seen.id;
            }
            present.insert(key);
        }
        let taken_ns = snapshot.taken_ns;
        self.by_endpoints.retain(|key, seen| {
            seen.at_ns >= taken_ns || present.contains(key) || !snapshot.covers(key.0)
        });
    }

    /// The ids of some sockets (a partial dump: nothing is forgotten).
    pub fn ids(&self, sockets: &[DiagSocket]) -> Vec<u64> {
        sockets
            .iter()
            .map(|s| {
                self.by_endpoints
                    .get(&(s.netns, s.endpoints))
                    .map_or(s.cookie, |seen| seen.id)
            })
            .collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_endpoints.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TcpState::*;

    fn t(id: u64, sport: u16, dport: u16, netns: u32, at_ns: u64) -> Transition {
        step(id, sport, SynSent, Established, netns, at_ns, dport)
    }

    fn step(
        id: u64,
        sport: u16,
        old: TcpState,
        new: TcpState,
        netns: u32,
        at_ns: u64,
        dport: u16,
    ) -> Transition {
        crate::testing::step(id, old, new)
            .ports(sport, dport)
            .netns(netns)
            .at(at_ns)
            .done()
    }

    fn diag(cookie: u64, sport: u16, dport: u16) -> DiagSocket {
        let mut s = crate::testing::diag(
            cookie,
            Established,
            &format!("127.0.0.1:{sport}"),
            &format!("10.1.2.3:{dport}"),
        );
        s.netns = Some(7);
        s
    }

    /// A snapshot of namespace 7 taken at `taken_ns`.
    fn translate(ids: &mut SocketIds, sockets: &mut [DiagSocket], taken_ns: u64) {
        let mut snap = Snapshot::of(Some(7), sockets.to_vec(), taken_ns);
        ids.translate(&mut snap);
        sockets.copy_from_slice(&snap.sockets);
    }

    #[test]
    fn snapshot_sockets_take_the_id_of_their_transitions() {
        let mut ids = SocketIds::new();
        ids.observe(&t(1 << 63 | 5, 40000, 80, 7, 100));
        // Same endpoints in another namespace: ignored.
        ids.observe(&t(1 << 63 | 6, 40001, 80, 8, 100));
        // Before the local port is known: nothing to match.
        ids.observe(&t(1 << 63 | 9, 0, 80, 7, 100));
        let mut snap = [diag(11, 40000, 80), diag(12, 40001, 80), diag(13, 0, 80)];
        translate(&mut ids, &mut snap, 200);
        assert_eq!(snap[0].cookie, 1 << 63 | 5);
        assert_eq!(
            snap[1].cookie, 12,
            "never seen here: keeps the kernel's cookie"
        );
        assert_eq!(snap[2].cookie, 13);
        assert_eq!(ids.ids(&snap[..1]), [1 << 63 | 5]);
    }

    #[test]
    fn a_snapshot_of_one_namespace_keeps_what_others_told() {
        let mut ids = SocketIds::new();
        ids.observe(&t(41, 40000, 80, 8, 100));
        let mut snap = [diag(99, 40001, 80)];
        translate(&mut ids, &mut snap, 200);
        assert_eq!(ids.len(), 1, "namespace 8 was not in the snapshot");
    }

    #[test]
    fn forgets_endpoints_gone_from_a_snapshot_unless_seen_since() {
        let mut ids = SocketIds::new();
        ids.observe(&t(21, 40000, 80, 7, 100));
        ids.observe(&t(22, 40001, 80, 7, 100));
        ids.observe(&t(23, 40002, 80, 7, 300));
        let mut snap = [diag(99, 40000, 80)];
        translate(&mut ids, &mut snap, 200);
        assert_eq!(snap[0].cookie, 21);
        // 40001 vanished before the snapshot; 40002 was seen after it was taken.
        assert_eq!(ids.len(), 2);
        let mut later = [diag(98, 40001, 80)];
        translate(&mut ids, &mut later, 400);
        assert_eq!(later[0].cookie, 98);
        assert_eq!(ids.len(), 0);
    }

    #[test]
    fn a_reused_four_tuple_takes_the_newest_socket() {
        let mut ids = SocketIds::new();
        ids.observe(&t(31, 40000, 80, 7, 100));
        ids.observe(&t(32, 40000, 80, 7, 150));
        let mut snap = [diag(99, 40000, 80)];
        translate(&mut ids, &mut snap, 200);
        assert_eq!(snap[0].cookie, 32);
    }

    #[test]
    fn closes_forget_and_time_waits_expire_without_snapshots() {
        let mut ids = SocketIds::new();
        ids.observe(&step(1, 40000, Established, CloseWait, 7, 0, 80));
        ids.observe(&step(1, 40000, LastAck, Close, 7, 1, 80));
        assert_eq!(ids.len(), 0, "a plain close forgets its socket");
        ids.observe(&step(2, 40001, FinWait2, Close, 7, 0, 80));
        assert_eq!(ids.len(), 1, "a timewait socket keeps the endpoints");
        // Enough later sockets to trigger a prune, 60 s on: the timewait entry goes, live
        // sockets stay however old their last transition.
        ids.observe(&step(3, 40002, SynSent, Established, 7, 0, 80));
        for port in 0..PRUNE_FLOOR as u16 {
            ids.observe(&step(
                10,
                50000 + port,
                SynSent,
                Established,
                7,
                TIME_WAIT_NS,
                80,
            ));
        }
        let mut snap = [diag(99, 40001, 80), diag(98, 40002, 80)];
        translate(&mut ids, &mut snap, 0);
        assert_eq!((snap[0].cookie, snap[1].cookie), (99, 3));
    }
}
