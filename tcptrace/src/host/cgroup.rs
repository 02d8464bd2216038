//! cgroup id -> cgroup path and container id.
//!
//! The kernel program reports the socket's cgroup v2 id (`sk->sk_cgrp_data.cgroup->kn->id`),
//! which is the inode number of the cgroup's directory in the cgroup2 filesystem. The agent
//! walks that filesystem to map ids to paths, caches the result, and rescans when it meets an
//! id it does not know: at once for an id never missed before (a container that just started;
//! at most one scan per [`NEW_ID_GAP`]), at most once a second for an id a scan already missed
//! (a cgroup removed before it was seen).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::cgroup::{CgroupInfo, container_id};

/// Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones), from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_cgroup2_mount(&mountinfo)
}

/// The cgroup2 mount point in a /proc/PID/mountinfo text.
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // id parent major:minor root mountpoint options ... - fstype source superopts
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mountpoint = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mountpoint.replace("\\040", " ")))
    })
}

/// Caches cgroup id -> info for the cgroup2 hierarchy.
pub struct CgroupResolver {
    root: Option<PathBuf>,
    /// Each cgroup seen, with the number of the last scan that found it.
    cache: HashMap<u64, (Arc<CgroupInfo>, u64)>,
    /// Ids a scan did not find (removed before they were seen, or not cgroup2 ids).
    missed: HashSet<u64>,
    /// When the last scan ended, and how long it took.
    last_scan: Option<(Instant, Duration)>,
    scans: u64,
}

/// How often an id a scan already missed may cause another scan.
const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// The least time between two scans, so a burst of new ids costs at most 100 walks a second;
/// at least ten times the last walk's length, so walks take at most a tenth of the time.
pub const NEW_ID_GAP: Duration = Duration::from_millis(10);
/// Bound the walk on hosts with very many cgroups.
const MAX_CGROUPS: usize = 100_000;
/// Missed ids remembered at most (further ones count as new, within [`NEW_ID_GAP`]).
const MAX_MISSED: usize = 10_000;
/// Removed cgroups kept (their sockets may still change state and name their old path);
/// beyond this many, the ones gone longest are forgotten.
const MAX_REMOVED: usize = 4096;

impl CgroupResolver {
    pub fn new() -> Self {
        Self::with_root(cgroup2_mount())
    }

    pub fn with_root(root: Option<PathBuf>) -> Self {
        Self {
            root,
            cache: HashMap::new(),
            missed: HashSet::new(),
            last_scan: None,
            scans: 0,
        }
    }

    /// The info for `id`, rescanning the hierarchy when the id is new; `None` when the id
    /// is not (or no longer) in the hierarchy, or a scan for it is not yet due.
    pub fn resolve(&mut self, id: u64) -> Option<Arc<CgroupInfo>> {
        if let Some((info, _)) = self.cache.get(&id) {
            return Some(info.clone());
        }
        let due = match self.last_scan {
            None => true,
            Some((ended, took)) if self.missed.contains(&id) => {
                ended.elapsed() >= RESCAN_EVERY.max(10 * took)
            }
            Some((ended, took)) => ended.elapsed() >= NEW_ID_GAP.max(10 * took),
        };
        if !due {
            return None;
        }
        self.scan();
        let found = self.cache.get(&id).map(|(info, _)| info.clone());
        if found.is_none() && self.missed.len() < MAX_MISSED {
            self.missed.insert(id);
        }
        found
    }

    fn scan(&mut self) {
        let started = Instant::now();
        self.walk();
        let ended = Instant::now();
        self.last_scan = Some((ended, ended - started));
    }

    fn walk(&mut self) {
        self.scans += 1;
        let scan = self.scans;
        let Some(root) = self.root.clone() else {
            return;
        };
        let mut live = HashSet::new();
        let mut stack = vec![root.clone()];
        let mut seen = 0;
        while let Some(dir) = stack.pop() {
            seen += 1;
            if seen > MAX_CGROUPS {
                break;
            }
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let rel = relative(&root, &dir);
            live.insert(meta.ino());
            self.cache
                .entry(meta.ino())
                .or_insert_with(|| {
                    let info = CgroupInfo {
                        container: container_id(&rel),
                        path: rel,
                    };
                    (Arc::new(info), scan)
                })
                .1 = scan;
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        if self.cache.len() > live.len() + MAX_REMOVED {
            // Forget the removed cgroups gone longest, down to half the allowance.
            let mut removed: Vec<(u64, u64)> = self
                .cache
                .iter()
                .filter(|(_, (_, seen))| *seen != scan)
                .map(|(id, (_, seen))| (*seen, *id))
                .collect();
            removed.sort_unstable();
            let forget = removed.len().saturating_sub(MAX_REMOVED / 2);
            for (_, id) in &removed[..forget] {
                self.cache.remove(id);
                if self.missed.len() < MAX_MISSED {
                    self.missed.insert(*id);
                }
            }
        }
        self.missed.retain(|id| !live.contains(id));
    }
}

impl Default for CgroupResolver {
    fn default() -> Self {
        Self::new()
    }
}

fn relative(root: &Path, dir: &Path) -> String {
    match dir.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() => "/".to_owned(),
        Ok(rel) => format!("/{}", rel.display()),
        Err(_) => dir.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c0e1b7d4e5f8a6b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f";

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                      36 25 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let v1_only = "36 25 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(parse_cgroup2_mount(v1_only), None);
    }

    #[test]
    fn resolves_ids_by_walking_a_hierarchy() {
        let root =
            std::env::temp_dir().join(format!("tcptrace-cgroup-test-{}", std::process::id()));
        let leaf = root.join("system.slice").join(format!("docker-{ID}.scope"));
        std::fs::create_dir_all(&leaf).unwrap();
        let leaf_ino = std::fs::metadata(&leaf).unwrap().ino();
        let root_ino = std::fs::metadata(&root).unwrap().ino();
        let mut r = CgroupResolver::with_root(Some(root.clone()));
        let info = r.resolve(leaf_ino).unwrap();
        assert_eq!(info.path, format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(info.container.as_deref(), Some(ID));
        assert_eq!(r.resolve(root_ino).unwrap().path, "/");
        // An id a scan missed does not trigger another scan more than once a second...
        r.last_scan = None;
        assert!(r.resolve(u64::MAX).is_none());
        assert!(r.missed.contains(&u64::MAX));
        let later = root.join("new");
        std::fs::create_dir(&later).unwrap();
        let later_ino = std::fs::metadata(&later).unwrap().ino();
        r.last_scan = Some((Instant::now() - NEW_ID_GAP, Duration::ZERO));
        assert!(r.resolve(u64::MAX).is_none());
        assert!(
            !r.cache.contains_key(&later_ino),
            "no rescan for a missed id"
        );
        // ...but a new id (a cgroup created since the last scan) is looked for at once.
        r.last_scan = Some((Instant::now() - NEW_ID_GAP, Duration::ZERO));
        assert_eq!(r.resolve(later_ino).unwrap().path, "/new");
        // A long walk pushes the next one back by ten times its length.
        r.last_scan = Some((Instant::now() - NEW_ID_GAP, Duration::from_secs(1)));
        assert!(r.resolve(u64::MAX - 2).is_none());
        assert!(!r.missed.contains(&(u64::MAX - 2)), "not scanned for");
        // A removed cgroup keeps its path: its sockets may still change state.
        std::fs::remove_dir(&later).unwrap();
        r.last_scan = None;
        assert!(r.resolve(u64::MAX - 1).is_none());
        assert_eq!(r.resolve(later_ino).unwrap().path, "/new");
        std::fs::remove_dir_all(&root).unwrap();
        assert!(CgroupResolver::with_root(None).resolve(1).is_none());
    }
}
