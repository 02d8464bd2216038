//! The /proc files the agent parses itself: fdinfo, sockstat, netstat/snmp counters,
//! mountinfo, status (socket fd links are read through the procfs crate). The first byte picks the parser; the rest is the file.
#![no_main]

use tcptrace::host::{caps, cgroup, inet_diag, stack};
use tcptrace::kernel::loader;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 5 {
        0 => {
            let _ = loader::parse_fdinfo_field(&text, "recursion_misses");
        }
        1 => {
            let _ = inet_diag::sockstat_tcp(&text, "TCP:");
            let _ = inet_diag::sockstat_tcp(&text, "TCP6:");
        }
        2 => {
            let mut counters = stack::TcpCounters::default();
            counters.parse(&text);
            let earlier = stack::TcpCounters::default();
            let _ = counters.delta(&earlier, "ListenDrops");
        }
        3 => {
            let _ = cgroup::parse_cgroup2_mount(&text);
        }
        _ => {
            let _ = caps::parse_threads(&text);
        }
    }
});
