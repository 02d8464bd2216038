//! The ring buffers the kernel program writes: transitions (`EVENTS`) and, when enabled, its
//! log messages. The reader waits on the transitions ring's epoll readiness and also drains
//! both on a short timer, since the program wakes it only each time another 1/8 of the ring
//! waits.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use aya::maps::{MapData, RingBuf, ring_buf::RingBufItem};
use tokio::io::unix::AsyncFd;

use crate::kernel::log::KernelLog;

/// How often the reader drains the ring without being woken. The kernel submits records
/// without a wakeup except when another 1/8 of the ring is waiting (`Config::wakeup_bytes`),
/// so this bounds how late a record is shown at low rates.
pub const RING_POLL: Duration = Duration::from_millis(10);

/// The transitions ring and the kernel log.
pub struct Ring {
    events: RingBuf<MapData>,
    log: Option<KernelLog>,
}

impl Ring {
    pub fn new(events: RingBuf<MapData>, log: Option<KernelLog>) -> Self {
        Self { events, log }
    }

    /// The next record waiting, if any.
    pub fn next_record(&mut self) -> Option<RingBufItem<'_>> {
        self.events.next()
    }

    /// Logs the kernel's messages waiting in its log ring.
    pub fn drain_log(&mut self) {
        if let Some(log) = &mut self.log {
            log.drain();
        }
    }

    /// Kernel log messages received so far (`None` when kernel logging is off).
    pub fn log_received(&self) -> Option<u64> {
        self.log.as_ref().map(KernelLog::received)
    }

    /// Registers the ring with the async runtime's reactor.
    pub fn into_async(self) -> io::Result<AsyncFd<Self>> {
        // SAFETY: `Ring` owns the ring buffer's map fd, keeps it open and unchanged for its
        // whole life, and `as_raw_fd` always returns that same fd.
        unsafe { AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.events.as_raw_fd()
    }
}
