//! A snapshot of one network namespace: its TCP sockets, counters and settings, read together
//! from inside the namespace.

use std::path::Path;

use anyhow::Context as _;

use crate::host::clock::monotonic_ns;
use crate::host::inet_diag;
use crate::host::netns;
use crate::host::stack::{Settings, TcpCounters};
use crate::model::snapshot::DiagSocket;

/// Sockets, counters and settings of one namespace at `taken_ns` (kernel monotonic).
pub struct NamespaceSnapshot {
    pub sockets: Vec<DiagSocket>,
    pub taken_ns: u64,
    pub counters: TcpCounters,
    pub settings: Settings,
}

impl NamespaceSnapshot {
    /// Takes it in the namespace at `netns` (here when `None`); with `idle`, each full socket
    /// carries its idle times (`tcp_info`).
    pub fn take(netns: Option<&Path>, idle: bool) -> anyhow::Result<Self> {
        let result = netns::run_in(netns, || {
            let taken_ns = monotonic_ns();
            let sockets = if idle {
                inet_diag::dump_tcp_with_idle()
            } else {
                inet_diag::dump_tcp()
            };
            sockets.map(|sockets| Self {
                sockets,
                taken_ns,
                counters: TcpCounters::read(),
                settings: Settings::read(),
            })
        });
        let where_ = netns.map_or_else(String::new, |p| format!(" in {}", p.display()));
        result
            .with_context(|| format!("cannot enter the network namespace{where_}"))?
            .with_context(|| format!("INET_DIAG socket dump{where_} failed"))
    }
}
