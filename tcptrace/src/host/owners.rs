//! Which process holds a socket, from `/proc/PID/fd` (what `ss -p` does): the owner of sockets
//! that existed before tcptrace started, and of listeners whose holder changed (a listener
//! handed to a worker, or inherited across fork) where no transition says so.
//!
//! Several processes often hold one socket: nginx keeps every listener open in its master and
//! in the worker that accepts from it, systemd keeps the sockets it activates a service with,
//! a forked child keeps its parent's descriptors. tcptrace names the holder furthest down the
//! process tree (a holder no other holder descends from), the one doing the work, and of
//! several such the lowest pid.

use std::collections::HashMap;

/// A process by pid and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessName {
    pub pid: u32,
    pub comm: String,
}

/// Socket inode -> the process tcptrace names as holding it. Each process is stored once (a
/// host holds hundreds of thousands of sockets, in far fewer processes).
#[derive(Debug, Default)]
pub struct SocketOwners {
    by_inode: HashMap<u32, u32>,
    processes: Vec<ProcessName>,
}

/// A process seen during a scan: its name and parent (`/proc/PID/stat`).
struct Seen {
    comm: String,
    ppid: u32,
}

/// How far up the process tree a holder's ancestors are followed (deeper trees are rare; a
/// cycle is impossible but a bound keeps a racing scan finite).
const MAX_DEPTH: usize = 64;

impl SocketOwners {
    /// Scans every process's descriptors. Processes that exit meanwhile or deny access are
    /// skipped. On a host with 180k sockets held by ten processes a scan took 1.1 s (procfs
    /// reads each descriptor's link and mode; a bare readlink walk took 0.8 s): it runs off the
    /// reading path, once at start and for the occasional look at a listener.
    pub fn scan() -> Self {
        Self::scan_where(|_| true, None)
    }

    /// As [`SocketOwners::scan`], keeping only the sockets whose inode `wanted` accepts (a look
    /// at a few listeners needs no table of every socket on the host), and with `within`, only
    /// reading the descriptors of those processes and their descendants (a listener's new
    /// holders are the workers its owner forked: reading one `stat` per process is far cheaper
    /// than every descriptor of every process).
    pub fn scan_where(wanted: impl Fn(u32) -> bool, within: Option<&[u32]>) -> Self {
        // (inode, pid) pairs in one list: per-socket lists would be one allocation per socket.
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        let mut seen: HashMap<u32, Seen> = HashMap::new();
        let Ok(processes) = procfs::process::all_processes() else {
            return Self::default();
        };
        let processes: Vec<procfs::process::Process> = processes.flatten().collect();
        let subtree = within.map(|roots| descendants(&processes, roots));
        for process in &processes {
            let pid = process.pid() as u32;
            if subtree.as_ref().is_some_and(|pids| !pids.contains(&pid)) {
                continue;
            }
            let Ok(fds) = process.fd() else {
                continue;
            };
            let mut holds = false;
            for fd in fds.flatten() {
                if let procfs::process::FDTarget::Socket(inode) = fd.target
                    && wanted(inode as u32)
                {
                    pairs.push((inode as u32, pid));
                    holds = true;
                }
            }
            if holds && let Ok(stat) = process.stat() {
                seen.insert(
                    pid,
                    Seen {
                        comm: stat.comm,
                        ppid: stat.ppid as u32,
                    },
                );
            }
        }
        pairs.sort_unstable();
        let mut owners = Self::default();
        let mut index: HashMap<u32, u32> = HashMap::new();
        for holders in pairs.chunk_by(|a, b| a.0 == b.0) {
            let inode = holders[0].0;
            let pids: Vec<u32> = holders.iter().map(|&(_, pid)| pid).collect();
            let pid = preferred(&pids, &mut |pid| parent(&mut seen, pid));
            let Some(p) = seen.get(&pid) else { continue };
            let i = *index.entry(pid).or_insert_with(|| {
                owners.processes.push(ProcessName {
                    pid,
                    comm: p.comm.clone(),
                });
                (owners.processes.len() - 1) as u32
            });
            owners.by_inode.insert(inode, i);
        }
        owners
    }

    pub fn from_pairs(pairs: impl IntoIterator<Item = (u32, ProcessName)>) -> Self {
        let mut owners = Self::default();
        for (inode, p) in pairs {
            owners.processes.push(p);
            owners
                .by_inode
                .insert(inode, (owners.processes.len() - 1) as u32);
        }
        owners
    }

    pub fn get(&self, inode: u32) -> Option<&ProcessName> {
        let i = *(inode != 0).then(|| self.by_inode.get(&inode)).flatten()?;
        self.processes.get(i as usize)
    }

    pub fn len(&self) -> usize {
        self.by_inode.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_inode.is_empty()
    }
}

/// `roots` and every process below them.
fn descendants(
    processes: &[procfs::process::Process],
    roots: &[u32],
) -> std::collections::HashSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in processes {
        if let Ok(stat) = p.stat() {
            children
                .entry(stat.ppid as u32)
                .or_default()
                .push(p.pid() as u32);
        }
    }
    let mut found: std::collections::HashSet<u32> = roots.iter().copied().collect();
    let mut todo: Vec<u32> = roots.to_vec();
    while let Some(pid) = todo.pop() {
        for &child in children.get(&pid).map_or(&[][..], Vec::as_slice) {
            if found.insert(child) {
                todo.push(child);
            }
        }
    }
    found
}

/// The parent of `pid`, reading `/proc/PID/stat` for processes the scan has not seen (those
/// between two holders); `None` at the top or when the process is gone.
fn parent(seen: &mut HashMap<u32, Seen>, pid: u32) -> Option<u32> {
    if let Some(p) = seen.get(&pid) {
        return (p.ppid != 0).then_some(p.ppid);
    }
    let stat = procfs::process::Process::new(pid as i32)
        .ok()?
        .stat()
        .ok()?;
    let ppid = stat.ppid as u32;
    seen.insert(
        pid,
        Seen {
            comm: stat.comm,
            ppid,
        },
    );
    (ppid != 0).then_some(ppid)
}

/// Of the processes holding one socket, the one furthest down the process tree: a holder none
/// of the others descends from, the lowest such pid. `pids` is never empty.
fn preferred(pids: &[u32], parent: &mut dyn FnMut(u32) -> Option<u32>) -> u32 {
    let lowest = pids.iter().copied().min().unwrap_or(0);
    if pids.len() < 2 {
        return lowest;
    }
    // Every holder that is an ancestor of another holder is passed over.
    let mut ancestors = std::collections::HashSet::new();
    for &pid in pids {
        let mut at = pid;
        for _ in 0..MAX_DEPTH {
            let Some(up) = parent(at) else { break };
            if pids.contains(&up) {
                ancestors.insert(up);
            }
            at = up;
        }
    }
    pids.iter()
        .copied()
        .filter(|pid| !ancestors.contains(pid))
        .min()
        .unwrap_or(lowest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_furthest_down_the_tree_is_named() {
        // 1 (systemd) -> 100 (nginx master) -> 101, 102 (workers); 1 -> 200 (launcher)
        // -> 300 (a shell) -> 301 (worker).
        let tree: HashMap<u32, u32> = [(100, 1), (101, 100), (102, 100), (200, 1), (300, 200)]
            .into_iter()
            .chain([(301, 300)])
            .collect();
        let mut parent = |pid: u32| tree.get(&pid).copied();
        assert_eq!(
            preferred(&[100, 101], &mut parent),
            101,
            "master and worker"
        );
        assert_eq!(preferred(&[102, 100, 101], &mut parent), 101, "two workers");
        assert_eq!(
            preferred(&[1, 301], &mut parent),
            301,
            "through a non-holder"
        );
        assert_eq!(
            preferred(&[200, 100], &mut parent),
            100,
            "unrelated: lowest"
        );
        assert_eq!(preferred(&[7], &mut parent), 7);
    }

    #[test]
    fn a_scan_within_a_subtree_reads_only_those_processes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let inode = crate::host::inet_diag::dump_tcp()
            .unwrap()
            .into_iter()
            .find(|s| s.endpoints.local_port == port)
            .unwrap()
            .inode;
        let me = std::process::id();
        let mine = SocketOwners::scan_where(|i| i == inode, Some(&[me]));
        assert_eq!(mine.get(inode).map(|p| p.pid), Some(me));
        assert_eq!(mine.len(), 1);
        // PID 1 is no descendant of this process: nothing of it is read.
        let elsewhere = SocketOwners::scan_where(|i| i == inode, Some(&[1 << 22]));
        assert!(elsewhere.is_empty());
    }

    #[test]
    fn finds_a_socket_of_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sock = crate::host::inet_diag::dump_tcp()
            .unwrap()
            .into_iter()
            .find(|s| s.endpoints.local_port == port)
            .unwrap();
        let owners = SocketOwners::scan();
        let me = owners
            .get(sock.inode)
            .expect("this process holds the listener");
        assert_eq!(me.pid, std::process::id());
        assert!(!me.comm.is_empty());
        assert_eq!(owners.get(0), None);
    }
}
