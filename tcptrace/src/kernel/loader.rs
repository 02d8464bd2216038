//! Loading and attaching the eBPF programs: offsets from BTF, filters and sizes into the
//! object, the cookie-helper fallback, and the maps the agent reads.

use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{BtfTracePoint, ProgramError};
use aya::{Ebpf, EbpfLoader};
use tcptrace_common::{
    CONFIG_GLOBAL, COUNTERS_MAP, Config, DEFAULT_RING_BYTES, EVENTS_MAP, LISTENERS_MAP,
    ListenerEntry, NESTED_SUFFIX, Owner, PORT_FILTER_MAP, PROGRAM_NAME, PROGRAM_NAME_NO_COOKIE,
    PROGRAM_NAME_STORAGE, PortSet, RESET_PROGRAM, RESET_PROGRAM_NO_COOKIE, RESET_PROGRAM_STORAGE,
    SOCKETS_MAP, TRACEPOINT, counter,
};

use crate::host::owners::ProcessName;
use crate::host::{caps, process};
use crate::kernel::btf;
use crate::kernel::error::{
    LoadError, aya_err, is_eperm, program_error, refuses_cookie_helper, refuses_socket_storage,
};
use crate::kernel::log::KernelLog;
use crate::kernel::ring::Ring;
use crate::model::filter::KernelFilter;

/// The compiled eBPF object, built by `build.rs` from the `tcptrace-ebpf` crate.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcptrace"));

/// What the user chose for the kernel side: `--ring-bytes`, `--max-sockets`, and the level
/// up to which the kernel program's own log statements run (`--log-level` when given).
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub ring_bytes: u32,
    pub max_sockets: u32,
    pub kernel_log: log::LevelFilter,
    /// Try socket storage first (false: the hash, as on kernels before 5.12).
    pub socket_storage: bool,
}

/// What a transition's `cookie` is on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// The socket cookie, as INET_DIAG reports it.
    Cookie,
    /// The program's own id (tracing programs may call `bpf_get_socket_cookie` only since Linux
    /// 5.12): the kernel's cookie for sockets INET_DIAG had dumped before the program first saw
    /// them, otherwise an id with `SYNTHETIC_ID` set that snapshots cannot know. Snapshot
    /// sockets are matched by address instead (see `model::socket_ids::SocketIds`).
    Numbered,
}

/// Where the kernel program keeps each socket's state-entry time and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keeping {
    /// In the socket itself (`BPF_MAP_TYPE_SK_STORAGE`: tracing programs may use it since
    /// Linux 5.11, and the cookie helper this variant also calls since 5.12): no lookup by
    /// key, freed with the socket, no limit (`--max-sockets` is not used).
    InSocket,
    /// In an LRU hash of `--max-sockets` entries by cookie (a 5.12+ kernel refusing the above).
    ByCookie,
    /// In that hash by socket address (before Linux 5.12).
    ByAddress,
}

impl Keeping {
    /// The nested twin of this variant's main program (see `NESTED_SUFFIX`). The address-keyed
    /// variant (before 5.12) has none: see `inet_sock_set_state_nocookie`.
    fn nested_program(self) -> Option<String> {
        let main = match self {
            Self::InSocket => PROGRAM_NAME_STORAGE,
            Self::ByCookie => PROGRAM_NAME,
            Self::ByAddress => return None,
        };
        Some(format!("{main}{NESTED_SUFFIX}"))
    }
}

/// The kernel program's listener map (`LISTENERS`): the owner it gives the children of each
/// listener. The agent writes the holders of listeners older than it, and of listeners that
/// changed hands.
pub struct ListenerMap {
    map: BpfHashMap<MapData, u64, ListenerEntry>,
}

impl ListenerMap {
    /// Names `holder` the owner of the children of the listener with INET_DIAG cookie
    /// `cookie` (id `id` in transitions), from now on (`now_ns`, kernel monotonic). A full map
    /// evicts its coldest entry; an error is only logged (children then keep the owner
    /// captured at listen(), which the agent corrects).
    pub fn set(&mut self, cookie: u64, id: u64, holder: &ProcessName, now_ns: u64) {
        let mut comm = [0u8; 16];
        let n = holder.comm.len().min(15);
        comm[..n].copy_from_slice(&holder.comm.as_bytes()[..n]);
        let pid = u64::from(holder.pid);
        let entry = ListenerEntry {
            owner: Owner {
                pid_tgid: (pid << 32) | pid,
                captured_ns: now_ns,
                comm,
            },
            id,
        };
        if let Err(e) = self.map.insert(cookie, entry, 0) {
            log::debug!("cannot register the holder of listener {cookie:#x}: {e}");
        }
    }
}

/// The loaded, attached programs and the maps the agent reads.
pub struct Tracer {
    /// Owns the programs and their links; dropping it detaches everything.
    _ebpf: Ebpf,
    ring: Option<Ring>,
    listeners: Option<ListenerMap>,
    counters: PerCpuArray<MapData, u64>,
    prog_fd: RawFd,
    identity: Identity,
}

/// Kernel-side loss and filter counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub ring_full: u64,
    pub filtered: u64,
    pub read_failed: u64,
    /// Records the program wrote to the ring buffer.
    pub sent: u64,
    /// Transitions lost because the kernel skipped the main program's run, it being already
    /// running on that CPU, and the nested program did not handle them either: the main
    /// program's `prog->aux->recursion_misses` (from its fdinfo) less [`Self::nested`]. A read
    /// that falls between a skip and its nested run counting itself (microseconds) takes that
    /// one as lost; a later read no longer does, but a counter that went up stays up.
    pub recursion_misses: u64,
    /// Transitions the nested program handled in place of the main one (see
    /// `tcptrace_common::NESTED_SUFFIX`).
    pub nested: u64,
    /// Kernel log statements that ran at an enabled level.
    pub log_attempts: u64,
}

/// Program `name` of the object, as a BTF tracepoint program.
fn btf_program<'e>(ebpf: &'e mut Ebpf, name: &str) -> Result<&'e mut BtfTracePoint, LoadError> {
    ebpf.program_mut(name)
        .ok_or_else(|| aya_err("find program")(name.into()))?
        .try_into()
        .map_err(|e: ProgramError| aya_err("open the program")(e.into()))
}

/// The kernel's BTF (`/sys/kernel/btf/vmlinux`), raw.
fn read_kernel_btf() -> Result<Vec<u8>, LoadError> {
    std::fs::read(btf::VMLINUX_BTF).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            LoadError::NoBtf {
                path: btf::VMLINUX_BTF,
            }
        } else {
            LoadError::ReadBtf {
                path: btf::VMLINUX_BTF,
                source,
            }
        }
    })
}

/// What aya needs of `kernel` to attach the `tp_btf` programs: their tracepoints' typedef ids.
fn tracepoint_btf(kernel: &btf::Btf<'_>) -> Result<aya::Btf, LoadError> {
    aya::Btf::parse(
        &kernel.typedef_ids_blob(&[
            &format!("btf_trace_{TRACEPOINT}"),
            &format!("btf_trace_{RESET_PROGRAM}"),
        ]),
        aya::Endianness::default(),
    )
    .map_err(|e| aya_err("index the kernel's tracepoint types")(e.into()))
}

/// The transitions ring, taken out of the loaded object.
fn take_ring(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>, LoadError> {
    RingBuf::try_from(
        ebpf.take_map(EVENTS_MAP)
            .ok_or_else(|| aya_err("find map")(EVENTS_MAP.into()))?,
    )
    .map_err(|e| aya_err("open the ring buffer")(e.into()))
}

/// The per-CPU counters (`tcptrace_common::counter`), taken out of the loaded object.
fn take_counters(ebpf: &mut Ebpf) -> Result<PerCpuArray<MapData, u64>, LoadError> {
    PerCpuArray::try_from(
        ebpf.take_map(COUNTERS_MAP)
            .ok_or_else(|| aya_err("find map")(COUNTERS_MAP.into()))?,
    )
    .map_err(|e| aya_err("open the counters map")(e.into()))
}

/// Counter `index` summed over CPUs; 0 when it cannot be read.
fn counter_sum(counters: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    counters
        .get(&index, 0)
        .map(|per_cpu| per_cpu.iter().sum())
        .unwrap_or(0)
}

/// Loads `program` for `tp_btf/inet_sock_set_state`, attaches it, and returns its fd.
fn load_program(program: &mut BtfTracePoint, attach_btf: &aya::Btf) -> Result<RawFd, ProgramError> {
    program.load(TRACEPOINT, attach_btf)?;
    program.attach()?;
    Ok(program.fd()?.as_fd().as_raw_fd())
}

/// The kernel wakes the agent each time another 1/8 of the ring is waiting; otherwise the agent
/// drains on its own timer ([`crate::kernel::ring::RING_POLL`]). At 200k transitions/s the
/// timer's 10 ms is ~200 KiB, far below 1/8 of the default 4 MiB ring, so wakeups at full churn
/// are rare.
const WAKEUP_FRACTION: u32 = 8;

/// The value of aya-log's `AYA_LOG_LEVEL` (`aya_log::Level` numbers, 0 = off) for a log
/// level. It is frozen in the program's read-only data, so statements above it are
/// constant-false branches the verifier removes: they cost nothing at run time.
fn kernel_log_level(level: log::LevelFilter) -> u8 {
    let level = match level.to_level() {
        None => return 0,
        Some(log::Level::Error) => aya_log::Level::Error,
        Some(log::Level::Warn) => aya_log::Level::Warn,
        Some(log::Level::Info) => aya_log::Level::Info,
        Some(log::Level::Debug) => aya_log::Level::Debug,
        Some(log::Level::Trace) => aya_log::Level::Trace,
    };
    level as u8
}

/// A benchmark floor program (`tcptrace_common::FLOOR_EMPTY_PROGRAM` or `FLOOR_RING_PROGRAM`)
/// attached alone (to the agent's default 4 MiB ring), detached when dropped. Only `cargo
/// xtask bench` loads these, to measure what any tracer of the tracepoint pays beside what
/// tcptrace does.
pub struct Floor {
    ebpf: Ebpf,
    program: String,
    counters: PerCpuArray<MapData, u64>,
}

impl Floor {
    /// Loads the object with the agent's default ring and wakeup rule, attaches `program`, and
    /// hands back the ring for the reader.
    pub fn attach(program: &str) -> Result<(Self, Ring), LoadError> {
        let btf_bytes = read_kernel_btf()?;
        let attach_btf = tracepoint_btf(&btf::Btf::parse(&btf_bytes)?)?;
        drop(btf_bytes);
        process::raise_memlock_rlimit();
        let config = Config {
            wakeup_bytes: DEFAULT_RING_BYTES / WAKEUP_FRACTION,
            ..Config::UNSET
        };
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .override_global(CONFIG_GLOBAL, &config, true)
            .map_max_entries(SOCKETS_MAP, 1)
            .load(EBPF_OBJECT)
            .map_err(|e| aya_err("load the eBPF object")(e.into()))?;
        load_program(btf_program(&mut ebpf, program)?, &attach_btf).map_err(program_error)?;
        let events = take_ring(&mut ebpf)?;
        let counters = take_counters(&mut ebpf)?;
        Ok((
            Self {
                ebpf,
                program: program.to_owned(),
                counters,
            },
            Ring::new(events, None),
        ))
    }

    /// Detaches and unloads the program (waiting for runs in flight), so that what it wrote
    /// and counted no longer changes.
    pub fn detach(&mut self) -> Result<(), LoadError> {
        btf_program(&mut self.ebpf, &self.program)?
            .unload()
            .map_err(program_error)
    }

    /// (records written, records lost to a full ring) by the ring floor so far, summed over
    /// CPUs; (0, 0) for the empty one.
    pub fn counts(&self) -> (u64, u64) {
        let sum = |index| counter_sum(&self.counters, index);
        (sum(counter::SENT), sum(counter::RING_FULL))
    }
}

impl Tracer {
    /// Resolves socket offsets from BTF, loads the programs with `filter` and `sizes`, and
    /// attaches them to `tp_btf/inet_sock_set_state` and `tp_btf/tcp_receive_reset`.
    pub fn load(filter: &KernelFilter, sizes: Sizes) -> Result<Self, LoadError> {
        // Name what is missing before the kernel answers a bare EPERM. When the sets cannot
        // be read, the kernel decides and EPERM is mapped afterwards.
        if let Some(missing) = caps::permitted().and_then(|have| caps::missing_for_load(&have)) {
            return Err(LoadError::MissingCaps(missing));
        }
        // `EbpfLoader::new()` decodes the whole kernel BTF (`Btf::from_sys_fs()`, ~25 MB at
        // peak) for CO-RE relocations, which this object has none of: let it go before
        // anything else is allocated, so that peak is not stacked on ours.
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        let btf_bytes = read_kernel_btf()?;
        let kernel = btf::Btf::parse(&btf_bytes)?;
        let offsets = kernel.sock_offsets()?;
        let attach_btf = tracepoint_btf(&kernel)?;
        drop(kernel);
        drop(btf_bytes);

        process::raise_memlock_rlimit();
        let config = Config {
            offsets,
            state_mask: filter.state_mask,
            family_mask: filter.family_mask,
            port_filters: filter.port_filters,
            netns: filter.netns,
            pids: filter.pids,
            npids: filter.npids,
            wakeup_bytes: sizes.ring_bytes / WAKEUP_FRACTION,
        };
        let log_level = kernel_log_level(sizes.kernel_log);
        loader
            .override_global(CONFIG_GLOBAL, &config, true)
            .override_global(aya_log::LEVEL, &log_level, true)
            .map_max_entries(EVENTS_MAP, sizes.ring_bytes);
        let mut open = |max_sockets: u32| -> Result<Ebpf, LoadError> {
            let mut ebpf = loader
                .map_max_entries(SOCKETS_MAP, max_sockets)
                .load(EBPF_OBJECT)
                .map_err(|e| match e {
                    aya::EbpfError::MapError(aya::maps::MapError::CreateError {
                        io_error, ..
                    }) if is_eperm(&io_error) => LoadError::NotPermitted,
                    e => aya_err("load the eBPF object")(e.into()),
                })?;
            if filter.port_filters != 0 {
                let mut ports: Array<_, PortSet> = ebpf
                    .map_mut(PORT_FILTER_MAP)
                    .ok_or_else(|| aya_err("find map")(PORT_FILTER_MAP.into()))?
                    .try_into()
                    .map_err(|e: aya::maps::MapError| {
                        aya_err("open the port filter map")(e.into())
                    })?;
                for (index, set) in &filter.port_sets {
                    ports
                        .set(*index, set.as_ref(), 0)
                        .map_err(|e| aya_err("write the port filter map")(e.into()))?;
                }
            }
            Ok(ebpf)
        };

        // Socket storage first, with a one-entry placeholder for the unused socket hash (its
        // default 65536 entries are preallocated: megabytes of locked memory). Kernels whose
        // verifier refuses socket storage or the cookie helper in tracing programs (before
        // 5.11 and 5.12: "unknown func bpf_sk_storage_get", "... bpf_get_socket_cookie") get
        // the object again with the hash at --max-sockets: the cookie variant, else the
        // numbering one.
        let storage = if sizes.socket_storage {
            let mut ebpf = open(1)?;
            match load_program(btf_program(&mut ebpf, PROGRAM_NAME_STORAGE)?, &attach_btf) {
                Ok(fd) => Some((ebpf, fd)),
                Err(e) if refuses_socket_storage(&e) || refuses_cookie_helper(&e) => {
                    log::debug!("tracing programs may not use socket storage here: a hash it is");
                    None
                }
                Err(e) => return Err(program_error(e)),
            }
        } else {
            None
        };
        let (mut ebpf, prog_fd, keeping) = match storage {
            Some((ebpf, fd)) => (ebpf, fd, Keeping::InSocket),
            None => {
                let mut ebpf = open(sizes.max_sockets)?;
                let loaded = load_program(btf_program(&mut ebpf, PROGRAM_NAME)?, &attach_btf);
                match loaded {
                    Ok(fd) => (ebpf, fd, Keeping::ByCookie),
                    Err(e) if refuses_cookie_helper(&e) => {
                        let program = btf_program(&mut ebpf, PROGRAM_NAME_NO_COOKIE)?;
                        let fd = load_program(program, &attach_btf).map_err(program_error)?;
                        log::warn!(
                            "this kernel gives tracing programs no socket cookies (Linux 5.12 does): the cookie field is tcptrace's own id, equal to `ss -e`'s cookie only for sockets older than tcptrace"
                        );
                        (ebpf, fd, Keeping::ByAddress)
                    }
                    Err(e) => return Err(program_error(e)),
                }
            }
        };
        log::debug!("socket entries kept: {keeping:?}");
        // Attached after the main program, so it runs after it: see `NESTED_SUFFIX`. Without
        // it, transitions that nest on a CPU stay recursion misses.
        if let Some(nested) = keeping.nested_program() {
            let attached = btf_program(&mut ebpf, &nested)
                .and_then(|p| load_program(p, &attach_btf).map_err(program_error));
            if let Err(e) = attached {
                log::warn!(
                    "cannot attach the nested-transition program ({e}); transitions that nest on a CPU are lost as recursion misses"
                );
            }
        }
        let identity = match keeping {
            Keeping::InSocket | Keeping::ByCookie => Identity::Cookie,
            Keeping::ByAddress => Identity::Numbered,
        };

        // The RST mark tells "reset by the peer" from "aborted here"; without it the agent
        // falls back to what transitions alone can tell.
        let reset = match keeping {
            Keeping::InSocket => RESET_PROGRAM_STORAGE,
            Keeping::ByCookie => RESET_PROGRAM,
            Keeping::ByAddress => RESET_PROGRAM_NO_COOKIE,
        };
        // RESET_PROGRAM is also the tracepoint's name.
        let attached = btf_program(&mut ebpf, reset).is_ok_and(|p| {
            p.load(RESET_PROGRAM, &attach_btf)
                .and_then(|()| p.attach())
                .is_ok()
        });
        if !attached {
            log::warn!(
                "cannot attach tcp:tcp_receive_reset; resets received are not told apart from aborts"
            );
        }

        let events = take_ring(&mut ebpf)?;
        let listeners = ebpf
            .take_map(LISTENERS_MAP)
            .and_then(|m| BpfHashMap::try_from(m).ok())
            .map(|map| ListenerMap { map });
        let counters = take_counters(&mut ebpf)?;
        let log = (log_level != 0)
            .then(|| KernelLog::take(&mut ebpf))
            .transpose()?;

        // Loading freed megabytes of small BTF allocations; hand the pages back to the system
        // instead of keeping them resident for the agent's lifetime.
        process::trim_heap();

        Ok(Self {
            _ebpf: ebpf,
            ring: Some(Ring::new(events, log)),
            listeners,
            counters,
            prog_fd,
            identity,
        })
    }

    /// What transitions' `cookie` field holds on this kernel.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// Loads and attaches, and hands back the ring buffer for the reader.
    pub fn start(filter: &KernelFilter, sizes: Sizes) -> Result<(Self, Ring), LoadError> {
        let mut tracer = Self::load(filter, sizes)?;
        let ring = tracer
            .ring
            .take()
            .ok_or_else(|| aya_err("take the ring buffer")("already taken".into()))?;
        Ok((tracer, ring))
    }

    /// The listener map, for the reader to keep current (once; `None` after).
    pub fn take_listeners(&mut self) -> Option<ListenerMap> {
        self.listeners.take()
    }

    /// Reads the counters map once, reporting failure (where [`Tracer::counters`] reads 0):
    /// tells whether map reads still work with fewer capabilities.
    pub fn probe_counters(&self) -> Result<(), aya::maps::MapError> {
        self.counters.get(&counter::SENT, 0).map(drop)
    }

    pub fn counters(&self) -> KernelCounters {
        let sum = |index| counter_sum(&self.counters, index);
        // Nested first: each nested transition was counted as a miss before it ran, so the
        // misses read after it are never fewer.
        let nested = sum(counter::NESTED);
        KernelCounters {
            ring_full: sum(counter::RING_FULL),
            filtered: sum(counter::FILTERED),
            read_failed: sum(counter::READ_FAILED),
            sent: sum(counter::SENT),
            recursion_misses: recursion_misses(self.prog_fd)
                .unwrap_or(0)
                .saturating_sub(nested),
            nested,
            log_attempts: sum(counter::LOG_ATTEMPTS),
        }
    }
}

/// Reads `recursion_misses` from the program's fdinfo (printed by `bpf_prog_show_fdinfo()`
/// since Linux 5.12; absent before, where this returns `None`).
fn recursion_misses(fd: RawFd) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    parse_fdinfo_field(&info, "recursion_misses")
}

/// The value of `key` in a /proc fdinfo file (`key:\tvalue` lines).
pub fn parse_fdinfo_field(info: &str, key: &str) -> Option<u64> {
    info.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_parsing() {
        let info = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nrun_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t17\nverified_insns:\t120\n";
        assert_eq!(parse_fdinfo_field(info, "recursion_misses"), Some(17));
        assert_eq!(parse_fdinfo_field(info, "run_cnt"), Some(0));
        assert_eq!(parse_fdinfo_field(info, "nope"), None);
    }

    #[test]
    fn kernel_log_levels_follow_the_agents() {
        assert_eq!(kernel_log_level(log::LevelFilter::Off), 0);
        assert_eq!(kernel_log_level(log::LevelFilter::Error), 1);
        assert_eq!(kernel_log_level(log::LevelFilter::Warn), 2);
        assert_eq!(kernel_log_level(log::LevelFilter::Debug), 4);
        assert_eq!(kernel_log_level(log::LevelFilter::Trace), 5);
    }
}
