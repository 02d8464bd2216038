//! The host around the kernel program: INET_DIAG snapshots, the TCP stack's counters and
//! settings, socket owners from /proc, cgroups, network namespaces, clocks and this process's
//! own settings. The only modules that call libc.

pub mod caps;
pub mod cgroup;
pub mod clock;
pub mod inet_diag;
pub mod netns;
pub mod owners;
pub mod process;
pub mod snapshot;
pub mod stack;
pub mod terminal;
