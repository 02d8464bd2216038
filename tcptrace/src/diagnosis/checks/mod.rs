//! One file per finding kind: what it means (`EXPLAIN`, shown by `doctor --explain`), how it
//! is decided (`check`), and its tests.

pub mod accept_queue_overflow;
pub mod close_wait_leak;
pub mod connect_failures;
pub mod fin_wait2_stuck;
pub mod long_idle_established;
pub mod resets;
pub mod simultaneous_close;
pub mod syn_flood;
pub mod time_wait_pressure;

#[cfg(test)]
pub(crate) mod support;
