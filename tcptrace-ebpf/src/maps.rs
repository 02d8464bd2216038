//! The program's maps and its load-time configuration.

use core::ffi::c_void;
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use crate::sock::Sock;
use aya_ebpf::{
    Global,
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    btf_maps::SkStorage,
    helpers::generated::bpf_sk_storage_get,
    macros::{btf_map, map},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use tcptrace_common::{
    Config, DEFAULT_MAX_SOCKETS, DEFAULT_RING_BYTES, ListenerEntry, MAX_LISTENERS, PortSet,
    SockEntry, counter, port_filter,
};

/// Written by userspace before load; all-zero offsets are never used because the loader always
/// overrides this value.
#[unsafe(no_mangle)]
static CONFIG: Global<Config> = Global::new(Config::UNSET);

/// Transitions for userspace ([`RawTransition`] records). Size set at load (`--ring-bytes`).
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Cookie (or socket address, without the cookie helper) -> when the socket entered its
/// current state, and who owns it. Size set at load (`--max-sockets`).
#[map(name = "SOCKETS")]
pub static SOCKETS: LruHashMap<u64, SockEntry> =
    LruHashMap::with_max_entries(DEFAULT_MAX_SOCKETS, 0);

/// Each socket's entry kept in the socket itself (the `_storage` programs): no lookup by key,
/// no size limit, freed with the socket (`bpf_sk_storage_free()`).
#[btf_map(name = "SOCK_STORAGE")]
static SOCK_STORAGE: SkStorage<SockEntry> = SkStorage::new();

/// `sk`'s entry in `SOCK_STORAGE`: the existing one, or, with `init`, a new one holding it
/// (an existing one is returned unchanged). `None` when there is none, or it cannot be made.
#[inline(always)]
pub fn storage(sk: Sock, init: Option<&mut SockEntry>) -> Option<*mut SockEntry> {
    let map = (&raw const SOCK_STORAGE).cast_mut().cast::<c_void>();
    let (value, flags) = match init {
        Some(v) => (
            core::ptr::from_mut(v).cast::<c_void>(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        ),
        None => (core::ptr::null_mut(), 0),
    };
    // SAFETY: `map` is this program's socket-storage map; `sk` is the tracepoint's socket
    // (a BTF pointer the verifier checks); `value` is null or a live `SockEntry` the helper
    // copies from.
    let entry = unsafe { bpf_sk_storage_get(map, sk.as_ptr(), value, flags) };
    (!entry.is_null()).then_some(entry.cast::<SockEntry>())
}

/// Each listening socket, by its cookie (or address, see `ListenerEntry`) -> its owner and id,
/// for the children it accepts. Written here at listen() and by the agent for listeners older
/// than it or handed to another process.
#[map(name = "LISTENERS")]
pub static LISTENERS: LruHashMap<u64, ListenerEntry> =
    LruHashMap::with_max_entries(MAX_LISTENERS, 0);

/// A server child between LISTEN -> SYN_RECV and its next transition.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct HeldChild {
    pub sock: SockEntry,
    /// The kernel address of the listener it came from (0 when unknown): its accept queue
    /// holds the child's request at SYN_RECV -> ESTABLISHED.
    pub listener_addr: u64,
}

/// Server children between LISTEN -> SYN_RECV and their next transition, by socket address
/// (see `sockets::hold_child`). Normally they stay microseconds: the child is created by the
/// handshake's final ACK and moves on in the same softirq.
#[map(name = "CHILDREN")]
pub static CHILDREN: LruHashMap<u64, HeldChild> =
    LruHashMap::with_max_entries(MAX_HELD_CHILDREN, 0);

/// Children held at once: only a burst of handshakes completing on many CPUs in the same
/// instant, or Fast Open children waiting in SYN_RECV, occupy it.
const MAX_HELD_CHILDREN: u32 = 16_384;

/// Per-CPU loss and filter counters, see `tcptrace_common::counter`.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per CPU: 1 while the main program runs on that CPU, else 0. The nested program acts only
/// when it reads 1: it was then fired by something that interrupted (a softirq) or preempted
/// the main program on this CPU, whose own run the kernel skipped.
#[map(name = "BUSY")]
static BUSY: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's busy flag (see `BUSY`); `None` only if the lookup failed.
#[inline(always)]
pub fn busy() -> Option<*mut u32> {
    BUSY.get_ptr_mut(0)
}

/// The transition the main program last finished in a task on this CPU, for the nested
/// program's run for the same transition, which follows in the same task.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Handled {
    /// The task's thread id (`bpf_get_current_pid_tgid()`'s low half).
    pub tid: u32,
    /// `old << 8 | new`.
    pub states: u32,
    /// The socket's address; 0 once the nested program consumed the entry.
    pub sk: u64,
}

/// Slots of `HANDLED` per CPU; a task uses slot `tid % HANDLED_SLOTS`.
const HANDLED_SLOTS: u32 = 64;

/// Per CPU, per task slot: what the main program just handled. Where probes can be preempted, a
/// task can be preempted between the main and the nested program's runs for its transition
/// while another task's main run sets the busy flag; the nested program then finds its own
/// task's transition here and leaves it alone instead of handling it a second time. Per task
/// (not one per CPU), because other tasks' pairs of runs may come in between.
#[map(name = "HANDLED")]
static HANDLED: PerCpuArray<Handled> = PerCpuArray::with_max_entries(HANDLED_SLOTS, 0);

/// This CPU's `HANDLED` slot for thread `tid`; `None` only if the lookup failed.
#[inline(always)]
pub fn handled(tid: u32) -> Option<*mut Handled> {
    HANDLED.get_ptr_mut(tid % HANDLED_SLOTS)
}

/// Per-CPU sequence for socket ids the no-cookie programs give (see `SYNTHETIC_ID`).
#[map(name = "NEXT_ID")]
pub static NEXT_ID: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Port bitmaps for `--port`, `--lport`, `--rport`, see `tcptrace_common::port_filter`.
#[map(name = "PORT_FILTER")]
pub static PORT_FILTER: Array<PortSet> = Array::with_max_entries(port_filter::COUNT, 0);

/// The configuration in read-only data. Fields are read through a pointer the compiler cannot
/// see through, so it never folds in the compile-time defaults (userspace rewrites them before
/// load), and the 164-byte struct is never copied onto the 512-byte BPF stack.
#[inline(always)]
pub fn config() -> &'static Config {
    // SAFETY: a volatile read of the address of a static: always valid.
    let ptr: *const Global<Config> = unsafe { core::ptr::read_volatile(&&raw const CONFIG) };
    // SAFETY: `Global<T>` is `repr(transparent)` over `T`, and the static lives for the whole
    // program.
    unsafe { &*ptr.cast::<Config>() }
}

/// Adds one to per-CPU counter `index`.
#[inline(always)]
pub fn bump(index: u32) {
    if let Some(count) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a valid, aligned per-CPU map value for the program's whole run. The add is
        // atomic (BPF `lock xadd`, any kernel; the result is unused, so no BPF_FETCH, which
        // needs 5.12) because the nested program may interrupt the main one on this CPU
        // between a plain load and store. `AtomicU64` has no `fetch_add` on the BPF target.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(count, 1) };
    }
}
