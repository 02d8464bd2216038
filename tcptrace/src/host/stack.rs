//! Live facts about the TCP stack of a network namespace: its settings (`/proc/sys/net`) and
//! the kernel's TCP counters (`/proc/net/netstat`, `/proc/net/snmp`). Both are per network
//! namespace and read in the namespace of the calling thread (see [`crate::host::netns::run_in`]).

use std::collections::HashMap;

/// The sysctls `doctor` reads, in the order it prints them.
pub const SETTINGS: [&str; 13] = [
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.somaxconn",
    "net.ipv4.tcp_synack_retries",
    "net.ipv4.tcp_syn_retries",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_orphan_retries",
];

/// Sysctl values as the kernel prints them (whitespace collapsed to one space).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    values: Vec<(&'static str, String)>,
}

impl Settings {
    /// Reads [`SETTINGS`]; a setting the kernel lacks is left out.
    pub fn read() -> Self {
        let mut values = Vec::new();
        for name in SETTINGS {
            let path = format!("/proc/sys/{}", name.replace('.', "/"));
            if let Ok(text) = std::fs::read_to_string(path) {
                values.push((name, text.split_whitespace().collect::<Vec<_>>().join(" ")));
            }
        }
        Self { values }
    }

    pub fn from_pairs(pairs: &[(&'static str, &str)]) -> Self {
        Self {
            values: pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn number(&self, name: &str) -> Option<u64> {
        self.get(name)?.parse().ok()
    }

    /// `net.ipv4.ip_local_port_range` as the number of ephemeral ports it allows.
    pub fn ephemeral_ports(&self) -> Option<u64> {
        let mut it = self.get("net.ipv4.ip_local_port_range")?.split(' ');
        let lo: u64 = it.next()?.parse().ok()?;
        let hi: u64 = it.next()?.parse().ok()?;
        (hi >= lo).then(|| hi - lo + 1)
    }

    /// `name=value` for each of `names` the kernel has.
    pub fn pick(&self, names: &[&'static str]) -> Vec<(&'static str, String)> {
        names
            .iter()
            .filter_map(|n| self.get(n).map(|v| (*n, v.to_owned())))
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.values.iter().map(|(k, v)| (*k, v.as_str()))
    }
}

/// The kernel's TCP counters, keyed `TcpExt.SyncookiesSent`, `Tcp.AttemptFails`, ...
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpCounters {
    values: HashMap<String, u64>,
}

impl TcpCounters {
    /// Reads `/proc/thread-self/net/{netstat,snmp}`: the namespace of this thread, which may
    /// differ from the process's (`/proc/self/net`) inside [`crate::host::netns::run_in`]. Unreadable
    /// files leave the counters empty (every delta then reads 0).
    pub fn read() -> Self {
        let mut c = Self::default();
        for file in ["netstat", "snmp"] {
            if let Ok(text) = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")) {
                c.parse(&text);
            }
        }
        c
    }

    /// Parses the header/value line pairs of `/proc/net/netstat` and `/proc/net/snmp`
    /// (`TcpExt: A B` then `TcpExt: 1 2`), keeping the TCP groups.
    pub fn parse(&mut self, text: &str) {
        let mut lines = text.lines();
        while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
            let (Some((group, names)), Some((group2, values))) =
                (names.split_once(':'), values.split_once(':'))
            else {
                continue;
            };
            if group != group2 || !matches!(group, "Tcp" | "TcpExt") {
                continue;
            }
            for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
                // Tcp.MaxConn is -1; counters are never negative.
                if let Ok(v) = value.parse::<u64>() {
                    self.values.insert(format!("{group}.{name}"), v);
                }
            }
        }
    }

    pub fn get(&self, name: &str) -> u64 {
        self.values.get(name).copied().unwrap_or(0)
    }

    /// Reads the counters of the namespace at `path` (here when `None`).
    pub fn read_in(path: Option<&std::path::Path>) -> std::io::Result<Self> {
        crate::host::netns::run_in(path, Self::read)
    }

    /// How much `name` grew since `earlier` (0 if it did not, or is unknown).
    pub fn delta(&self, earlier: &Self, name: &str) -> u64 {
        self.get(name).saturating_sub(earlier.get(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_groups_only() {
        let mut c = TcpCounters::default();
        c.parse(
            "TcpExt: SyncookiesSent SyncookiesRecv TCPReqQFullDrop\nTcpExt: 12 3 0\n\
             IpExt: InNoRoutes\nIpExt: 5\n",
        );
        c.parse("Ip: Forwarding\nIp: 2\nTcp: RtoAlgorithm MaxConn AttemptFails\nTcp: 1 -1 7\n");
        assert_eq!(c.get("TcpExt.SyncookiesSent"), 12);
        assert_eq!(c.get("Tcp.AttemptFails"), 7);
        assert_eq!(c.get("Tcp.MaxConn"), 0);
        assert_eq!(c.get("IpExt.InNoRoutes"), 0);
        let mut later = c.clone();
        later.parse("TcpExt: SyncookiesSent\nTcpExt: 20\n");
        assert_eq!(later.delta(&c, "TcpExt.SyncookiesSent"), 8);
        assert_eq!(c.delta(&later, "TcpExt.SyncookiesSent"), 0);
    }

    #[test]
    fn settings_parse_port_range() {
        let s = Settings::from_pairs(&[
            ("net.ipv4.ip_local_port_range", "32768 60999"),
            ("net.ipv4.tcp_fin_timeout", "60"),
        ]);
        assert_eq!(s.ephemeral_ports(), Some(28_232));
        assert_eq!(s.number("net.ipv4.tcp_fin_timeout"), Some(60));
        assert_eq!(s.number("net.core.somaxconn"), None);
        assert_eq!(
            s.pick(&["net.core.somaxconn", "net.ipv4.tcp_fin_timeout"])
                .len(),
            1
        );
    }

    #[test]
    fn reads_this_hosts_settings_and_counters() {
        // Readable without privileges on any Linux host.
        let s = Settings::read();
        assert!(s.ephemeral_ports().is_some_and(|n| n > 0), "{s:?}");
        let c = TcpCounters::read();
        assert!(c.values.contains_key("Tcp.ActiveOpens"), "{c:?}");
    }
}
