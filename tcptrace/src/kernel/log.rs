//! The kernel program's own log messages (aya-log), routed into the agent's log.
//!
//! Statements run only up to the level frozen into the program at load (see
//! `Sizes::kernel_log`); each one that runs is counted in the kernel, each message that
//! arrives is counted here, and the difference is what a full log ring dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aya::Ebpf;
use aya_log::EbpfLogger;

use crate::kernel::error::{LoadError, aya_err};

/// Forwards records to the process's logger and counts them.
struct Counted {
    received: Arc<AtomicU64>,
}

impl log::Log for Counted {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        log::logger().enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        self.received.fetch_add(1, Ordering::Relaxed);
        log::logger().log(record);
    }

    fn flush(&self) {
        log::logger().flush();
    }
}

/// The reader of the program's log ring (`AYA_LOGS`).
pub struct KernelLog {
    logger: EbpfLogger<Counted>,
    received: Arc<AtomicU64>,
}

impl KernelLog {
    /// Takes the log ring out of the loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        let received = Arc::new(AtomicU64::new(0));
        let logger = EbpfLogger::init_with_logger(
            ebpf,
            Counted {
                received: received.clone(),
            },
        )
        .map_err(|e| aya_err("open the kernel log ring")(e.into()))?;
        Ok(Self { logger, received })
    }

    /// Logs every message waiting in the ring.
    pub fn drain(&mut self) {
        self.logger.flush();
    }

    /// Messages received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}
