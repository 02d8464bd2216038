//! Snapshots of the TCP sockets of the namespaces tcptrace traces: every namespace on the host,
//! or the one it was pointed at. Each namespace is dumped from inside it (INET_DIAG answers
//! for the namespace of the netlink socket's creator, `/proc/thread-self/net` and
//! `/proc/sys/net` for the reading thread's), one after the other on one thread that moves
//! between them with setns(2).

use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::host::clock::monotonic_ns;
use crate::host::inet_diag;
use crate::host::netns;
use crate::host::stack::{Settings, TcpCounters};
use crate::model::snapshot::{DiagSocket, Namespace, Snapshot, Stack};

/// Which network namespaces snapshots cover: exactly those transitions come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every network namespace a path leads to (see [`netns::all`]).
    All,
    /// The namespace at this path (`/run/netns/NAME`, `/proc/PID/ns/net`), with its inode.
    One { path: PathBuf, inode: u32 },
    /// The agent's own namespace.
    Own,
}

impl Scope {
    /// For a trace of namespace `netns` (`None`: every namespace), entered through `path`
    /// when given. Fails for an inode no path leads to.
    pub fn of(netns: Option<u32>, path: Option<&Path>) -> anyhow::Result<Self> {
        Ok(match (netns, path) {
            (Some(inode), Some(path)) => Self::One {
                path: path.to_owned(),
                inode,
            },
            (Some(inode), None) if Some(inode) == netns::own() => Self::Own,
            (Some(inode), None) => Self::One {
                path: netns::path_of(inode).with_context(|| {
                    format!("no process is in network namespace {inode}; pass --netns-path instead")
                })?,
                inode,
            },
            (None, _) => Self::All,
        })
    }

    /// The one namespace it covers, when it covers one.
    pub fn netns(&self) -> Option<u32> {
        match self {
            Self::All => None,
            Self::One { inode, .. } => Some(*inode),
            Self::Own => netns::own(),
        }
    }
}

/// What to dump.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// Each full socket's idle times (`tcp_info`; costlier).
    pub idle: bool,
    /// Each namespace's TCP counters and settings.
    pub stack: bool,
    /// Only listening sockets.
    pub listeners_only: bool,
    /// Which sockets to keep (applied while parsing, so refused sockets are never stored).
    pub keep: Option<&'a (dyn Fn(&DiagSocket) -> bool + Sync)>,
}

impl Request<'_> {
    pub const SOCKETS: Self = Self {
        idle: false,
        stack: false,
        listeners_only: false,
        keep: None,
    };
    pub const LISTENERS: Self = Self {
        listeners_only: true,
        ..Self::SOCKETS
    };
}

/// Takes a snapshot of `scope`. A namespace that cannot be entered or dumped (it went away
/// since it was listed) is left out and counted in `failed`; it fails only when no namespace
/// could be dumped.
pub fn take(scope: &Scope, request: Request<'_>) -> anyhow::Result<Snapshot> {
    let own = netns::own();
    let host = netns::inode_of(Path::new("/proc/1/ns/net")).ok();
    let named = |inode: u32, path: &Path| {
        if Some(inode) == host {
            "host".to_owned()
        } else {
            name_of(path)
        }
    };
    // The agent's own namespace is dumped without setns(2): that needs CAP_SYS_ADMIN, which a
    // least-privilege agent may not have.
    let targets: Vec<(Option<u32>, Option<PathBuf>, String)> = match scope {
        Scope::Own => vec![(own, None, own_name(own, host))],
        Scope::One { inode, .. } if Some(*inode) == own => vec![(own, None, own_name(own, host))],
        Scope::One { path, inode } => vec![(Some(*inode), Some(path.clone()), name_of(path))],
        Scope::All => {
            let mut targets: Vec<_> = netns::all()
                .into_iter()
                .map(|(inode, path)| {
                    let name = named(inode, &path);
                    if Some(inode) == own {
                        (Some(inode), None, name)
                    } else {
                        (Some(inode), Some(path), name)
                    }
                })
                .collect();
            // The own namespace first: it is dumped where the thread starts, before any
            // setns moves it.
            targets.sort_by_key(|(_, path, _)| path.is_some());
            targets
        }
    };
    let taken_ns = monotonic_ns();
    let started = std::time::Instant::now();
    let (mut snapshot, last_error) = std::thread::scope(|s| {
        s.spawn(|| dump_each(&targets, request))
            .join()
            .unwrap_or_else(|_| {
                (
                    Snapshot::default(),
                    Some(anyhow::anyhow!("the snapshot thread panicked")),
                )
            })
    });
    snapshot.taken_ns = taken_ns;
    log::debug!(
        "snapshot of {} network namespaces ({} sockets, {} not dumped) in {:.1} ms",
        snapshot.namespaces.len(),
        snapshot.sockets.len(),
        snapshot.failed,
        started.elapsed().as_secs_f64() * 1e3
    );
    match last_error {
        Some(e) if snapshot.namespaces.is_empty() => Err(e),
        Some(e) => {
            snapshot.failure = Some(format!("{e:#}"));
            Ok(snapshot)
        }
        None => Ok(snapshot),
    }
}

/// Dumps each namespace in turn on the calling thread (which it moves between namespaces:
/// call it on a thread of its own).
fn dump_each(
    targets: &[(Option<u32>, Option<PathBuf>, String)],
    request: Request<'_>,
) -> (Snapshot, Option<anyhow::Error>) {
    let mut snapshot = Snapshot::default();
    let mut last_error = None;
    for (inode, path, name) in targets {
        if let Some(path) = path {
            let entered = std::fs::File::open(path).and_then(|ns| {
                // SAFETY: setns on a valid namespace fd; it moves only this thread, which
                // `take` started for the purpose.
                match unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
            if let Err(e) = entered {
                snapshot.failed += 1;
                let hint = if e.raw_os_error() == Some(libc::EPERM) {
                    " (entering another network namespace needs CAP_SYS_ADMIN)"
                } else {
                    ""
                };
                last_error = Some(anyhow::Error::new(e).context(format!(
                    "cannot enter the network namespace {}{hint}",
                    path.display()
                )));
                continue;
            }
        }
        let start = snapshot.sockets.len();
        let expected = inet_diag::tcp_socket_count().unwrap_or(0);
        let capacity = if request.listeners_only {
            0
        } else {
            expected + expected / 16 + 64
        };
        snapshot.sockets.reserve(capacity);
        let listeners_only = request.listeners_only;
        let keep = request.keep;
        let dumped = inet_diag::dump_tcp_into(
            &mut snapshot.sockets,
            request.idle,
            &mut |s: &DiagSocket| {
                (!listeners_only || s.state == crate::model::tcp::TcpState::Listen)
                    && keep.is_none_or(|keep| keep(s))
            },
        );
        if let Err(e) = dumped {
            snapshot.sockets.truncate(start);
            snapshot.failed += 1;
            last_error = Some(
                anyhow::Error::new(e).context(format!("INET_DIAG socket dump failed in {name}")),
            );
            continue;
        }
        for s in &mut snapshot.sockets[start..] {
            s.netns = *inode;
        }
        snapshot.namespaces.push(Namespace {
            inode: *inode,
            name: name.clone(),
            path: path.clone(),
            sockets: start..snapshot.sockets.len(),
            stack: request.stack.then(|| Stack {
                counters: TcpCounters::read(),
                settings: Settings::read(),
            }),
        });
    }
    (snapshot, last_error)
}

/// The agent's own namespace's name: `host` when it is PID 1's.
fn own_name(own: Option<u32>, host: Option<u32>) -> String {
    if own.is_some() && own == host {
        "host".to_owned()
    } else {
        own.map_or_else(|| "this namespace".to_owned(), |i| format!("netns {i}"))
    }
}

/// A name for the namespace at `path`: `NAME` for `/run/netns/NAME`, `pid N (comm)` for
/// `/proc/N/ns/net`, else the path.
fn name_of(path: &Path) -> String {
    let parts: Vec<&str> = path.iter().filter_map(|p| p.to_str()).collect();
    match parts.as_slice() {
        ["/", "run" | "var", .., "netns", name] => (*name).to_owned(),
        ["/", "proc", pid, "ns", "net"] => {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("pid {pid} ({})", comm.trim_end())
        }
        _ => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_named_as_people_call_them() {
        assert_eq!(name_of(Path::new("/run/netns/blue")), "blue");
        assert_eq!(name_of(Path::new("/var/run/netns/blue")), "blue");
        let me = std::process::id();
        let name = name_of(Path::new(&format!("/proc/{me}/ns/net")));
        assert!(name.starts_with(&format!("pid {me} (")), "{name}");
        assert_eq!(name_of(Path::new("/x/y")), "/x/y");
    }

    #[test]
    fn a_snapshot_of_every_namespace_includes_this_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let snap = take(&Scope::All, Request::LISTENERS).unwrap();
        let me = netns::own();
        let ns = snap
            .namespaces
            .iter()
            .find(|n| n.inode == me)
            .expect("this namespace");
        let mine = &snap.sockets[ns.sockets.clone()];
        assert!(
            mine.iter()
                .any(|s| s.endpoints.local_port == port && s.netns == me)
        );
        assert!(
            snap.sockets
                .iter()
                .all(|s| s.state == crate::model::tcp::TcpState::Listen)
        );
        assert!(snap.covers(me));
        let own = take(&Scope::Own, Request::SOCKETS).unwrap();
        assert_eq!(own.namespaces.len(), 1);
    }
}
