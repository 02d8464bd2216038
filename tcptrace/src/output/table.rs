//! Aligned terminal tables, one line per transition (`tail`) or per connection (`life`), that
//! fit the terminal: 100 columns unless `$COLUMNS` or the terminal says otherwise. Columns
//! have a least and a largest width; the room left over widens addresses first, then names,
//! then the time's precision; columns marked optional are left out when even the least widths
//! do not fit. Long cells are cut where they stay readable (an address keeps its port), so
//! rows stay aligned. `--wide` shows everything at full width.
//!
//! Hand-written: the table crates (comfy-table, tabled) lay out a whole table from all its
//! rows; a live stream needs the widths fixed before the first row.

use std::fmt;
use std::io::Write as _;

use crate::model::cgroup::CgroupInfo;
use crate::model::connections::Connection;
use crate::model::tcp::TcpState;
use crate::model::transition::Transition;
use crate::output::time::{TimeFormat, WallClock};

/// The width a table gets when nothing tells (not a terminal, no `$COLUMNS`).
pub const DEFAULT_WIDTH: usize = 100;

/// Milliseconds from ns, at most 8 characters: `0.061`, `300.412`, `61234.5`; honours width
/// and alignment.
pub struct Millis(pub u64);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0 / 1_000;
        let text = if us < 10_000_000 {
            format!("{}.{:03}", us / 1_000, us % 1_000)
        } else if us < 1_000_000_000 {
            format!("{}.{}", us / 1_000, us % 1_000 / 100)
        } else {
            (us / 1_000).to_string()
        };
        f.pad(&text)
    }
}

/// Milliseconds, or `-` when unknown.
fn millis_or_dash(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".to_owned(), |ns| Millis(ns).to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// How a cell longer than its column is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Keep the start, end with `…` (names).
    End,
    /// Keep the port and both ends of the address, `…` in the middle (`ip:port`).
    Address,
}

/// One column: header, least and largest width, how it aligns and is cut, and whether it may
/// be left out when the table is narrow (`Some(order)`: lower orders go first).
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub header: &'static str,
    pub min: usize,
    pub max: usize,
    pub align: Align,
    pub cut: Cut,
    pub optional: Option<u8>,
}

impl Column {
    const fn new(header: &'static str, min: usize, max: usize, align: Align) -> Self {
        Self {
            header,
            min,
            max,
            align,
            cut: Cut::End,
            optional: None,
        }
    }

    const fn address(header: &'static str) -> Self {
        Self {
            cut: Cut::Address,
            ..Self::new(header, 17, 47, Align::Left)
        }
    }

    const fn optional(self, order: u8) -> Self {
        Self {
            optional: Some(order),
            ..self
        }
    }
}

/// The widths chosen for a table: `None` for a column left out.
#[derive(Debug, Clone)]
pub struct Layout {
    columns: Vec<Column>,
    widths: Vec<Option<usize>>,
}

impl Layout {
    /// Lays `columns` out in `width` characters (single spaces between), or at their largest
    /// when `width` is `None`. The room left over goes to the groups of `grow` (column
    /// indices) in order, shared evenly within a group, each column up to its max.
    pub fn new(columns: &[Column], width: Option<usize>, grow: &[&[usize]]) -> Self {
        let mut widths: Vec<Option<usize>> = columns
            .iter()
            .map(|c| Some(if width.is_some() { c.min } else { c.max }))
            .collect();
        if let Some(width) = width {
            let used = |widths: &[Option<usize>]| -> usize {
                let shown: Vec<usize> = widths.iter().flatten().copied().collect();
                shown.iter().sum::<usize>() + shown.len().saturating_sub(1)
            };
            // Leave optional columns out, lowest order first, until the least widths fit.
            let mut optional: Vec<usize> = (0..columns.len())
                .filter(|&i| columns[i].optional.is_some())
                .collect();
            optional.sort_by_key(|&i| columns[i].optional);
            for i in optional {
                if used(&widths) <= width {
                    break;
                }
                widths[i] = None;
            }
            let mut room = width.saturating_sub(used(&widths));
            for group in grow {
                // One character at a time around the group, while any column can take one.
                while room > 0 {
                    let mut grew = false;
                    for &i in *group {
                        if let (Some(w), Some(c)) = (widths[i], columns.get(i))
                            && w < c.max
                            && room > 0
                        {
                            widths[i] = Some(w + 1);
                            room -= 1;
                            grew = true;
                        }
                    }
                    if !grew {
                        break;
                    }
                }
            }
        }
        Self {
            columns: columns.to_vec(),
            widths,
        }
    }

    /// The width of column `i`, `None` when left out.
    pub fn width(&self, i: usize) -> Option<usize> {
        self.widths.get(i).copied().flatten()
    }

    /// The header line.
    pub fn header(&self) -> String {
        let cells: Vec<String> = self.columns.iter().map(|c| c.header.to_owned()).collect();
        let mut out = Vec::new();
        self.row(&cells, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Writes one row of `cells` (one per column, left-out ones skipped) into `out`, replacing
    /// it. The last column is not padded.
    pub fn row(&self, cells: &[String], out: &mut Vec<u8>) {
        out.clear();
        let shown: Vec<(usize, usize)> = self
            .widths
            .iter()
            .enumerate()
            .filter_map(|(i, w)| Some((i, (*w)?)))
            .collect();
        for (n, &(i, width)) in shown.iter().enumerate() {
            let column = &self.columns[i];
            let last = n + 1 == shown.len();
            let text = cells.get(i).map_or("", String::as_str);
            // The last column has nothing after it to misalign: never cut. Right-aligned cells
            // are numbers (and state names, which fit): a cut number would be a wrong one, so
            // a longer one pushes the rest of its row instead.
            let cell = if last && column.align == Align::Left || column.align == Align::Right {
                text.to_owned()
            } else {
                fit(text, width, column.cut)
            };
            if n > 0 {
                out.push(b' ');
            }
            let _ = match (column.align, last) {
                (Align::Right, _) => write!(out, "{cell:>width$}"),
                (Align::Left, true) => write!(out, "{cell}"),
                (Align::Left, false) => write!(out, "{cell:<width$}"),
            };
        }
    }
}

/// `text` cut to at most `width` characters, as `cut` says.
fn fit(text: &str, width: usize, cut: Cut) -> String {
    let len = text.chars().count();
    if len <= width || width == 0 {
        return text.to_owned();
    }
    match cut {
        Cut::End => {
            let mut s: String = text.chars().take(width.saturating_sub(1)).collect();
            s.push('…');
            s
        }
        Cut::Address => {
            // `host:port`: keep the port, and as much of the host's two ends as fits.
            let (host, port) = text.rsplit_once(':').unwrap_or((text, ""));
            let tail_len = port.chars().count() + 1;
            let room = width.saturating_sub(tail_len + 1);
            if port.is_empty() || room < 2 {
                return fit(text, width, Cut::End);
            }
            let head: String = host.chars().take(room - room / 2).collect();
            let tail: String = host.chars().skip(host.chars().count() - room / 2).collect();
            format!("{head}…{tail}:{port}")
        }
    }
}

/// The width the table gets: `$COLUMNS`, else the terminal's, else [`DEFAULT_WIDTH`].
pub fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&c: &usize| c > 0)
        .or_else(crate::host::terminal::stdout_columns)
        .unwrap_or(DEFAULT_WIDTH)
}

/// The time column for `format`: time of day shrinks from microseconds to milliseconds.
fn time_column(format: TimeFormat) -> Column {
    let width = format.width();
    match format {
        TimeFormat::Time => Column::new("TIME", 12, 15, Align::Left),
        _ => Column::new("TIME", width, width, Align::Left),
    }
}

/// `tail`'s table.
pub struct TransitionTable {
    layout: Layout,
    clock: WallClock,
    time: TimeFormat,
    wide: bool,
}

const TIME: usize = 0;
const COMM: usize = 2;
const LOCAL: usize = 3;
const REMOTE: usize = 4;

impl TransitionTable {
    /// A table for `width` columns (`None`: `--wide`, everything at full width, with the
    /// network namespace, container and cgroup).
    pub fn new(clock: WallClock, time: TimeFormat, width: Option<usize>) -> Self {
        let mut columns = vec![
            time_column(time),
            Column::new("PID", 7, 7, Align::Right),
            Column::new("COMM", 8, 15, Align::Left),
            Column::address("LOCAL"),
            Column::address("REMOTE"),
            Column::new("FROM", 11, 11, Align::Right),
            Column::new("TO", 11, 11, Align::Left),
            Column::new("DWELL_MS", 8, 8, Align::Right),
        ];
        if width.is_none() {
            columns.extend([
                Column::new("NETNS", 10, 10, Align::Right),
                Column::new("CONTAINER", 16, 16, Align::Left),
                Column::new("CGROUP", 6, 6, Align::Left),
            ]);
        }
        Self {
            layout: Layout::new(&columns, width, &[&[LOCAL, REMOTE], &[COMM], &[TIME]]),
            clock,
            time,
            wide: width.is_none(),
        }
    }

    pub fn header(&self) -> String {
        self.layout.header()
    }

    /// One line (without the newline) into `out`. PID and COMM are the socket's owner, `-`
    /// when unknown; `cgroup` shows in the wide form.
    pub fn line(&self, t: &Transition, cgroup: Option<&CgroupInfo>, out: &mut Vec<u8>) {
        let (pid, comm) = match &t.owner {
            Some(owner) => (owner.task.pid.to_string(), owner.task.comm.as_str()),
            None => ("-".to_owned(), "-"),
        };
        let micros = self.layout.width(TIME).is_some_and(|w| w >= 15);
        let mut cells = vec![
            self.time.show(&self.clock, t.ts_ns, micros),
            pid,
            comm.to_owned(),
            t.endpoints.local().to_string(),
            t.endpoints.remote().to_string(),
            t.old.name().to_owned(),
            t.new.name().to_owned(),
            millis_or_dash(t.in_old_ns),
        ];
        if self.wide {
            cells.push(t.netns.map_or_else(|| "-".to_owned(), |ns| ns.to_string()));
            // Container ids are shown short, as docker does; service names whole.
            let container = cgroup
                .and_then(|c| c.container.as_deref())
                .map_or("-", |id| match id.get(..12) {
                    Some(short) if id.bytes().all(|b| b.is_ascii_hexdigit()) => short,
                    _ => id,
                });
            cells.push(container.to_owned());
            cells.push(cgroup.map_or("-", |c| c.path.as_str()).to_owned());
        }
        self.layout.row(&cells, out);
    }
}

/// `life`'s table.
pub struct ConnectionTable {
    layout: Layout,
    clock: WallClock,
    time: TimeFormat,
}

impl ConnectionTable {
    /// A table for `width` columns (`None`: everything at full width). When narrow, the RTT,
    /// the retransmissions, the TIME_WAIT, the handshake, the bytes and then the end time are
    /// left out before anything is cut.
    pub fn new(clock: WallClock, time: TimeFormat, width: Option<usize>) -> Self {
        let columns = [
            time_column(time).optional(6),
            Column::new("PID", 7, 7, Align::Right),
            Column::new("COMM", 8, 15, Align::Left),
            Column::address("LOCAL"),
            Column::address("REMOTE"),
            Column::new("ROLE", 8, 8, Align::Left),
            Column::new("HS_MS", 8, 8, Align::Right).optional(3),
            Column::new("LIFE_MS", 8, 8, Align::Right),
            Column::new("TX_KB", 7, 10, Align::Right).optional(5),
            Column::new("RX_KB", 7, 10, Align::Right).optional(4),
            Column::new("RETRANS", 7, 7, Align::Right).optional(1),
            Column::new("RTT_MS", 7, 8, Align::Right).optional(0),
            Column::new("CLOSED_BY", 9, 9, Align::Left),
            Column::new("END", 17, 17, Align::Left),
            Column::new("TW_MS", 8, 20, Align::Right).optional(2),
        ];
        Self {
            layout: Layout::new(
                &columns,
                width,
                &[&[LOCAL, REMOTE], &[COMM], &[14], &[TIME]],
            ),
            clock,
            time,
        }
    }

    pub fn header(&self) -> String {
        self.layout.header()
    }

    /// One line (without the newline) into `out`; the time is when the connection closed.
    pub fn line(&self, c: &Connection, out: &mut Vec<u8>) {
        let (pid, comm) = match &c.owner {
            Some(t) => (t.pid.to_string(), t.comm.as_str()),
            None => ("-".to_owned(), "-"),
        };
        // `wait`: a TIME_WAIT follows, not measured (see `life --time-wait`); `>N`: tracing
        // stopped N ms into it; a FIN_WAIT2 suffix marks an orphan's timewait substate.
        let tw = match (c.time_wait, c.time_wait_ns()) {
            (None, _) => "-".to_owned(),
            (Some(_), None) => "wait".to_owned(),
            (Some(tw), Some(ns)) => {
                let cut = if tw.complete { "" } else { ">" };
                let substate = if tw.substate == TcpState::TimeWait {
                    String::new()
                } else {
                    format!("({})", tw.substate.name())
                };
                format!("{cut}{}{substate}", Millis(ns))
            }
        };
        let micros = self.layout.width(TIME).is_some_and(|w| w >= 15);
        let cells = [
            self.time
                .show(&self.clock, c.closed_ns.unwrap_or(c.state_since_ns), micros),
            pid,
            comm.to_owned(),
            c.endpoints.local().to_string(),
            c.endpoints.remote().to_string(),
            c.role.name().to_owned(),
            millis_or_dash(c.handshake_ns),
            millis_or_dash(c.lifetime_ns()),
            c.tx_bytes().map_or("-".into(), kib),
            c.rx_bytes().map_or("-".into(), kib),
            c.carried.map_or("-".into(), |x| x.retransmits.to_string()),
            millis_or_dash(
                c.carried
                    .and_then(|x| x.srtt_us)
                    .map(|us| u64::from(us) * 1000),
            ),
            c.closed_by.name().to_owned(),
            c.end.map_or("-", |e| e.name()).to_owned(),
            tw,
        ];
        self.layout.row(&cells, out);
    }
}

/// Bytes as KiB with one decimal, so a short exchange (1000 B: `1.0`) does not read as 0; a
/// few bytes show as `<0.1`, never as `0.0`.
fn kib(bytes: u64) -> String {
    let k = bytes as f64 / 1024.0;
    if bytes > 0 && k < 0.05 {
        "<0.1".to_owned()
    } else {
        format!("{k:.1}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kib_never_shows_traffic_as_zero() {
        assert_eq!(kib(0), "0.0");
        assert_eq!(kib(5), "<0.1");
        assert_eq!(kib(1000), "1.0");
        assert_eq!(kib(1_048_576), "1024.0");
    }

    use jiff::tz::TimeZone;
    use tcptrace_common::{AF_INET6, DWELL_UNKNOWN};

    use super::*;
    use crate::model::connections::ConnectionTable as Stories;
    use crate::testing::{raw_transition, raw_v4, step};

    fn clock() -> WallClock {
        // Monotonic 0 == 2026-11-21T07:00:00Z; local time is UTC+1.
        WallClock::fixed(
            1_795_244_400_000_000_000,
            TimeZone::fixed(jiff::tz::offset(1)),
        )
    }

    fn line(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn tail(width: Option<usize>) -> TransitionTable {
        TransitionTable::new(clock(), TimeFormat::Time, width)
    }

    #[test]
    fn millis_keeps_microseconds_and_fits_eight_columns() {
        assert_eq!(Millis(61_250).to_string(), "0.061");
        assert_eq!(Millis(300_412_999).to_string(), "300.412");
        assert_eq!(Millis(0).to_string(), "0.000");
        assert_eq!(format!("{:>8}", Millis(1_500_000)), "   1.500");
        assert_eq!(Millis(61_234_567_890).to_string(), "61234.5");
        assert_eq!(Millis(7_200_000_000_000).to_string(), "7200000");
        assert!(Millis(u64::MAX).to_string().len() <= 14);
    }

    #[test]
    fn a_100_column_terminal_gets_100_column_lines() {
        let table = tail(Some(100));
        let t = raw_transition(&raw_v4());
        let row = line(|out| table.line(&t, None, out));
        assert_eq!(
            row,
            "08:00:05.000    1234 curl     127.0.0.1:45678    10.1.2.3:8080         SYN_SENT ESTABLISHED    0.061"
        );
        let header = table.header();
        assert!(header.chars().count() <= 100, "{header}");
        assert!(row.chars().count() <= 100, "{row}");
        for col in ["LOCAL", "REMOTE", "TO"] {
            let at = header.find(col).unwrap();
            assert_ne!(row.as_bytes()[at], b' ', "{col}: {row}");
        }
        assert_eq!(
            header.find("PID").map(|i| i + 3),
            row.find("1234").map(|i| i + 4)
        );
        assert_eq!(header.find("DWELL_MS").map(|i| i + 8), Some(row.len()));
    }

    #[test]
    fn a_wider_terminal_gets_microseconds_and_whole_addresses() {
        let mut raw = raw_v4();
        raw.family = AF_INET6;
        raw.saddr = "2001:db8:85a3::8a2e:370:7334"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        raw.daddr = std::net::Ipv6Addr::LOCALHOST.octets();
        let t = raw_transition(&raw);
        for width in [80, 100, 120, 160, 200] {
            let table = tail(Some(width));
            let row = line(|out| table.line(&t, None, out));
            let header = table.header();
            // Every row fits, and stays aligned with the header whatever the address.
            assert!(row.chars().count() <= width.max(98), "{width}: {row}");
            let dwell = header.find("DWELL_MS").unwrap() + "DWELL_MS".len();
            assert_eq!(row.chars().count(), dwell, "{width}: {row}");
            let long = "[2001:db8:85a3::8a2e:370:7334]:45678";
            // Whole once the address columns can take its 36 characters (98 + 2 x 19).
            assert_eq!(row.contains(long), width >= 136, "{width}: {row}");
            assert!(row.contains(":45678"), "the port always stays: {row}");
        }
        let wide = tail(Some(200));
        let row = line(|out| wide.line(&t, None, out));
        assert!(row.starts_with("08:00:05.000000 "), "{row}");
    }

    #[test]
    fn unknowns_are_dashes() {
        let mut raw = raw_v4();
        raw.in_old_ns = DWELL_UNKNOWN;
        raw.owner.pid_tgid = 0;
        let t = raw_transition(&raw);
        let row = line(|out| tail(Some(100)).line(&t, None, out));
        assert!(row.contains("       - -    "), "{row}");
        assert!(row.ends_with("       -"), "{row}");
    }

    #[test]
    fn wide_table_shows_namespace_container_and_cgroup() {
        let table = tail(None);
        let t = raw_transition(&raw_v4());
        let cg = CgroupInfo {
            path: "/system.slice/docker-0123456789abcdef0123.scope".into(),
            container: Some("0123456789abcdef0123".into()),
        };
        let row = line(|out| table.line(&t, Some(&cg), out));
        assert!(
            row.ends_with(
                " 4026531840 0123456789ab     /system.slice/docker-0123456789abcdef0123.scope"
            ),
            "{row}"
        );
        let header = table.header();
        assert_eq!(header.find("CONTAINER"), row.find("0123456789ab "));
        let none = line(|out| table.line(&t, None, out));
        assert!(none.ends_with(" 4026531840 -                -"), "{none}");
    }

    #[test]
    fn numbers_are_never_cut() {
        let columns = [
            Column::new("NAME", 4, 4, Align::Left),
            Column::new("MS", 8, 8, Align::Right),
            Column::new("END", 3, 3, Align::Left),
        ];
        let layout = Layout::new(&columns, Some(20), &[]);
        let mut out = Vec::new();
        let cells = [
            "long-name".to_owned(),
            ">3339.821".to_owned(),
            "fin".to_owned(),
        ];
        layout.row(&cells, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "lon… >3339.821 fin");
    }

    #[test]
    fn cells_are_cut_where_they_stay_readable() {
        assert_eq!(fit("kworker/u8:3", 8, Cut::End), "kworker…");
        assert_eq!(fit("curl", 8, Cut::End), "curl");
        let cut = fit("[2001:db8:85a3::8a2e:370:7334]:8080", 20, Cut::Address);
        assert_eq!(cut.chars().count(), 20, "{cut}");
        assert!(
            cut.starts_with("[2001") && cut.ends_with("7334]:8080"),
            "{cut}"
        );
    }

    fn story() -> Connection {
        let mut table = Stories::new(10);
        use TcpState::*;
        for (old, new, at, dwell) in [
            (Close, SynSent, 1_000_000_000u64, None),
            (SynSent, Established, 1_000_040_000, Some(40_000)),
            (Established, CloseWait, 1_300_040_000, Some(300_000_000)),
            (CloseWait, LastAck, 1_350_040_000, Some(50_000_000)),
            (LastAck, Close, 1_350_100_000, Some(60_000)),
        ] {
            table.apply(&step(1, old, new).at(at).dwell(dwell).done());
        }
        table.next_finished().unwrap()
    }

    #[test]
    fn connection_lines_fit_by_leaving_out_what_matters_least() {
        let c = story();
        for width in [100, 160] {
            let table = ConnectionTable::new(clock(), TimeFormat::Time, Some(width));
            let row = line(|out| table.line(&c, out));
            let header = table.header();
            assert!(row.chars().count() <= width, "{width}: {row}");
            for col in ["ROLE", "CLOSED_BY", "END", "LIFE_MS"] {
                let at = header.find(col).unwrap();
                assert_ne!(row.as_bytes()[at], b' ', "{col} in {row}");
                assert_eq!(row.as_bytes()[at - 1], b' ', "{col} in {row}");
            }
            assert!(row.contains(" client ") && row.contains(" remote ") && row.contains(" fin"));
            assert!(row.contains("350.100"), "{row}");
            assert_eq!(header.contains("HS_MS"), width > 100, "{header}");
        }
    }
}
