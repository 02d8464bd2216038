//! The TCP state diagram as `top` and serve's web page draw it, and what one picture of it
//! shows.
//!
//! The layout is the classic one of RFC 793 (figure 6): CLOSE at the top, LISTEN below it, the
//! server's SYN_RECV on the left and the client's SYN_SENT on the right, ESTABLISHED in the
//! middle, the active close (FIN_WAIT1, FIN_WAIT2) down the left, the passive close
//! (CLOSE_WAIT, LAST_ACK) down the right, CLOSING between them, TIME_WAIT at the bottom and a
//! second CLOSE where the close paths end. Boxes sit on a grid of 3 columns and 7 rows; each
//! arrow has a route kind that both renderers (terminal cells, SVG pixels) turn into a
//! polyline with [`route`], so the two pictures are the same picture.
//!
//! Arrows the kernel takes that the standard diagram has no arrow for (a state straight to
//! CLOSE: aborts, connect failures, handshakes given up) are drawn as a `✕` mark on the
//! box they leave, with their rate.

use crate::model::tcp::TcpState;

/// A box of the diagram: a TCP state, or the CLOSE the close paths end in (the kernel's CLOSE
/// is one state; the diagram draws it twice, at the top where sockets start and at the bottom
/// right where orderly closes end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    State(TcpState),
    /// CLOSE at the end of the close paths.
    Closed,
}

impl Node {
    /// The name the box shows (kernel state names).
    pub fn name(self) -> &'static str {
        match self {
            Self::State(s) => s.name(),
            Self::Closed => "CLOSE",
        }
    }

    /// The state whose sockets the box counts, if it counts any (CLOSE holds none).
    pub fn counted(self) -> Option<TcpState> {
        match self {
            Self::State(TcpState::Close) | Self::Closed => None,
            Self::State(s) => Some(s),
        }
    }
}

/// Where a box sits: column 0 (left, server and active close), 1 (middle), 2 (right, client
/// and passive close); rows 0 (top) to 6 (bottom).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub node: Node,
    pub col: u8,
    pub row: u8,
}

/// Columns and rows of the grid.
pub const COLS: u8 = 3;
pub const ROWS: u8 = 7;

/// Every box, top to bottom.
pub const PLACES: [Place; 12] = [
    place(TcpState::Close, 1, 0),
    place(TcpState::Listen, 1, 1),
    place(TcpState::SynRecv, 0, 2),
    place(TcpState::SynSent, 2, 2),
    place(TcpState::Established, 1, 3),
    place(TcpState::FinWait1, 0, 4),
    place(TcpState::CloseWait, 2, 4),
    place(TcpState::FinWait2, 0, 5),
    place(TcpState::Closing, 1, 5),
    place(TcpState::LastAck, 2, 5),
    place(TcpState::TimeWait, 1, 6),
    Place {
        node: Node::Closed,
        col: 2,
        row: 6,
    },
];

const fn place(state: TcpState, col: u8, row: u8) -> Place {
    Place {
        node: Node::State(state),
        col,
        row,
    }
}

/// The states a box counts, in the order panels list them (the ten INET_DIAG reports).
pub const COUNTED: [TcpState; 10] = [
    TcpState::Listen,
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::Established,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::Closing,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::TimeWait,
];

/// States where sockets get stuck: their boxes show the age of the oldest socket.
pub const STUCK: [TcpState; 6] = [
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::CloseWait,
    TcpState::FinWait2,
    TcpState::LastAck,
    TcpState::TimeWait,
];

/// Whether `state`'s box shows its oldest socket's age.
pub fn can_get_stuck(state: TcpState) -> bool {
    STUCK.contains(&state)
}

/// What an arrow counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Transitions the kernel reports (`sock:inet_sock_set_state`), from and to.
    Transition(TcpState, TcpState),
    /// TIME_WAIT sockets that expired (the kernel reports no transition out of TIME_WAIT:
    /// counted when the socket table drops them).
    TimeWaitExpiry,
}

/// How an arrow runs from one box to another (see [`route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Straight down from the bottom of one box to the top of the next, `dx` offsets right
    /// of the centre.
    Down(i8),
    /// Straight up, `dx` offsets right of the centre.
    Up(i8),
    /// Sideways between two boxes of one row.
    Across,
    /// Out of the box's side towards the target's column, then down into its top.
    SideThenDown,
    /// Down from the bottom (`dx` offsets right of the centre), then sideways into the
    /// target's side.
    DownThenSide(i8),
    /// Down from the bottom (`dx` offsets right of the centre), across the gap below, and
    /// down into the target's top.
    DownAcrossDown(i8),
}

/// One arrow of the diagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrow {
    pub from: Node,
    pub to: Node,
    pub source: Source,
    pub route: Route,
    /// Part of RFC 793's diagram (else: a move only the Linux kernel's diagram has).
    pub standard: bool,
    /// What makes a socket take it, in the diagram's words.
    pub event: &'static str,
}

const fn arrow(
    from: TcpState,
    to: TcpState,
    route: Route,
    standard: bool,
    event: &'static str,
) -> Arrow {
    Arrow {
        from: Node::State(from),
        to: Node::State(to),
        source: Source::Transition(from, to),
        route,
        standard,
        event,
    }
}

/// Every arrow drawn as a line. TIME_WAIT is entered when the kernel hands a FIN_WAIT2 or
/// CLOSING socket to a timewait socket (it reports `-> CLOSE` there).
pub const ARROWS: [Arrow; 17] = [
    arrow(
        TcpState::Close,
        TcpState::Listen,
        Route::Down(-1),
        true,
        "listen()",
    ),
    arrow(
        TcpState::Listen,
        TcpState::Close,
        Route::Up(1),
        true,
        "close() of a listener",
    ),
    arrow(
        TcpState::Close,
        TcpState::SynSent,
        Route::SideThenDown,
        true,
        "connect(): SYN sent",
    ),
    arrow(
        TcpState::Listen,
        TcpState::SynRecv,
        Route::SideThenDown,
        true,
        "SYN received, SYN-ACK sent (the child socket is made at the final ACK)",
    ),
    arrow(
        TcpState::SynSent,
        TcpState::SynRecv,
        Route::Across,
        true,
        "simultaneous open: SYN received",
    ),
    arrow(
        TcpState::SynRecv,
        TcpState::Established,
        Route::DownThenSide(1),
        true,
        "final ACK received",
    ),
    arrow(
        TcpState::SynSent,
        TcpState::Established,
        Route::DownThenSide(-1),
        true,
        "SYN-ACK received, ACK sent",
    ),
    arrow(
        TcpState::SynRecv,
        TcpState::FinWait1,
        Route::Down(-1),
        true,
        "close() before the handshake ended",
    ),
    arrow(
        TcpState::Established,
        TcpState::FinWait1,
        Route::DownThenSide(-1),
        true,
        "close(): FIN sent (active close)",
    ),
    arrow(
        TcpState::Established,
        TcpState::CloseWait,
        Route::DownThenSide(1),
        true,
        "FIN received (passive close)",
    ),
    arrow(
        TcpState::FinWait1,
        TcpState::FinWait2,
        Route::Down(-1),
        true,
        "ACK of our FIN received",
    ),
    arrow(
        TcpState::FinWait1,
        TcpState::Closing,
        Route::DownAcrossDown(1),
        true,
        "FIN received before the ACK of ours (simultaneous close)",
    ),
    Arrow {
        from: Node::State(TcpState::FinWait2),
        to: Node::State(TcpState::TimeWait),
        source: Source::Transition(TcpState::FinWait2, TcpState::Close),
        route: Route::DownThenSide(0),
        standard: true,
        event: "FIN received: a timewait socket takes over",
    },
    Arrow {
        from: Node::State(TcpState::Closing),
        to: Node::State(TcpState::TimeWait),
        source: Source::Transition(TcpState::Closing, TcpState::Close),
        route: Route::Down(0),
        standard: true,
        event: "ACK of our FIN received: a timewait socket takes over",
    },
    arrow(
        TcpState::CloseWait,
        TcpState::LastAck,
        Route::Down(0),
        true,
        "close(): FIN sent",
    ),
    Arrow {
        from: Node::State(TcpState::LastAck),
        to: Node::Closed,
        source: Source::Transition(TcpState::LastAck, TcpState::Close),
        route: Route::Down(0),
        standard: true,
        event: "ACK of our FIN received",
    },
    Arrow {
        from: Node::State(TcpState::TimeWait),
        to: Node::Closed,
        source: Source::TimeWaitExpiry,
        route: Route::Across,
        standard: true,
        event: "2 MSL (60 s on Linux) passed",
    },
];

/// The boxes whose moves straight to CLOSE are drawn as a `✕` mark with their rate (moves the
/// standard diagram has no arrow for: connect failures, handshakes given up, aborts), and
/// which end of the box's bottom edge the mark sits at (left: `true`), clear of the arrows
/// leaving the box. A listener's close, and the closes after FIN_WAIT2, CLOSING and LAST_ACK,
/// are arrows.
pub const ABORTS: [(TcpState, bool); 5] = [
    (TcpState::SynSent, false),
    (TcpState::SynRecv, true),
    (TcpState::Established, false),
    (TcpState::FinWait1, true),
    (TcpState::CloseWait, false),
];

/// A rectangle in whatever unit a renderer draws in (terminal cells, pixels): `x`, `y` its
/// top-left corner, `w`, `h` its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub h: i32,
}

impl Rect {
    /// The column of the centre.
    pub fn cx(&self) -> i32 {
        self.x + self.w / 2
    }

    /// The row of the middle.
    pub fn cy(&self) -> i32 {
        self.y + self.h / 2
    }

    /// The first column right of the box.
    pub fn right(&self) -> i32 {
        self.x + self.w
    }

    /// The first row below the box.
    pub fn bottom(&self) -> i32 {
        self.y + self.h
    }
}

/// Where an arrow's rate label goes: a point, and whether the text starts there (`Start`),
/// ends there (`End`) or is centred on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

/// An arrow as a polyline: from the first unit outside the box it leaves to the last unit
/// before the box it enters (where the arrowhead goes), with its label's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub points: Vec<(i32, i32)>,
    pub label: (i32, i32),
    pub anchor: Anchor,
}

/// The polyline of `arrow` between the boxes `rect` places, with parallel arrows `off` units
/// apart. The same function serves both renderers: with cells the points are the cells to
/// draw, with pixels the corners of an SVG path.
pub fn route(arrow: &Arrow, rect: impl Fn(Node) -> Rect, off: i32) -> Path {
    let (f, t) = (rect(arrow.from), rect(arrow.to));
    let dx = |d: i8| i32::from(d) * off;
    let side_of = |x: i32| if t.cx() > x { t.x - 1 } else { t.right() };
    match arrow.route {
        Route::Down(d) => {
            let x = f.cx() + dx(d);
            let (y0, y1) = (f.bottom(), t.y - 1);
            let (label, anchor) = if d < 0 {
                ((x - 2, (y0 + y1) / 2), Anchor::End)
            } else {
                ((x + 2, (y0 + y1) / 2), Anchor::Start)
            };
            Path {
                points: vec![(x, y0), (x, y1)],
                label,
                anchor,
            }
        }
        Route::Up(d) => {
            let x = f.cx() + dx(d);
            let (y0, y1) = (f.y - 1, t.bottom());
            Path {
                points: vec![(x, y0), (x, y1)],
                label: (x + 2, (y0 + y1) / 2),
                anchor: Anchor::Start,
            }
        }
        Route::Across => {
            let y = f.cy();
            let (x0, x1) = if t.cx() < f.cx() {
                (f.x - 1, t.right())
            } else {
                (f.right(), t.x - 1)
            };
            Path {
                points: vec![(x0, y), (x1, y)],
                label: ((x0 + x1) / 2, y),
                anchor: Anchor::Middle,
            }
        }
        Route::SideThenDown => {
            let y = f.cy();
            let x0 = if t.cx() < f.cx() { f.x - 1 } else { f.right() };
            Path {
                points: vec![(x0, y), (t.cx(), y), (t.cx(), t.y - 1)],
                label: ((x0 + t.cx()) / 2, y),
                anchor: Anchor::Middle,
            }
        }
        Route::DownThenSide(d) => {
            let x = f.cx() + dx(d);
            let y = t.cy();
            let x1 = side_of(x);
            Path {
                points: vec![(x, f.bottom()), (x, y), (x1, y)],
                label: ((x + x1) / 2, y),
                anchor: Anchor::Middle,
            }
        }
        Route::DownAcrossDown(d) => {
            let x = f.cx() + dx(d);
            let (y0, y1) = (f.bottom(), t.y - 1);
            let y = y0 + (y1 - y0) / 2;
            Path {
                points: vec![(x, y0), (x, y), (t.cx(), y), (t.cx(), y1)],
                label: ((x + t.cx()) / 2, y),
                anchor: Anchor::Middle,
            }
        }
    }
}

/// What one state's box shows.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StateView {
    /// Sockets in the state now.
    pub count: u64,
    /// Age in the state of the oldest socket whose entry time is known, in ns.
    pub oldest_ns: Option<u64>,
    /// Median and 99th percentile of the time sockets spent in the state before leaving it,
    /// over the dwell window, in ns (`None` when no socket left it in the window).
    pub dwell_p50_ns: Option<f64>,
    pub dwell_p99_ns: Option<f64>,
    /// Moves straight to CLOSE from this state (aborts, failures), per second.
    pub aborts_per_s: f64,
}

/// What one arrow shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArrowView {
    /// Index into [`ARROWS`].
    pub arrow: usize,
    /// Per second, over the last interval.
    pub rate: f64,
    /// Since the agent started.
    pub total: u64,
    /// Among the busiest arrows now.
    pub hot: bool,
}

/// Counts that say whether the picture misses anything (since the agent started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gaps {
    /// Transitions lost because the ring buffer was full.
    pub lost_ring_full: u64,
    /// Program runs the kernel skipped (recursion).
    pub lost_recursion: u64,
    /// Records the agent could not decode or the kernel could not read.
    pub unreadable: u64,
    /// Tracked sockets a snapshot found in another state than transitions said (missed
    /// transitions), corrected.
    pub corrections: u64,
    /// Snapshots compared with the tracked sockets, and snapshots that failed.
    pub reconciles: u64,
    pub snapshot_errors: u64,
    /// Sockets not tracked because the table was full.
    pub untracked: u64,
}

/// One of doctor's findings, as the banner shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindingLine {
    /// `critical`, `warning` or `info`.
    pub severity: &'static str,
    /// doctor's kind, e.g. `close_wait_leak`.
    pub kind: &'static str,
    pub statement: String,
}

/// A group of sockets or events with one owner and endpoint (a panel row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRow {
    /// `pid comm`, or `-` when unknown.
    pub owner: String,
    /// The port or endpoint that ties the group together, e.g. `:8080` or `10.0.0.1:443`.
    pub endpoint: String,
    pub count: u64,
    /// The oldest socket's age in its state, in ns (sockets only).
    pub oldest_ns: Option<u64>,
}

/// Who is responsible for one kind of trouble.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerPanel {
    /// e.g. `CLOSE_WAIT leakers`.
    pub title: &'static str,
    /// The state the panel is about (its box is the one to look at).
    pub state: TcpState,
    /// Most first.
    pub rows: Vec<OwnerRow>,
}

/// One socket in a state, for the list `top` shows on `s`.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketRow {
    pub cookie: u64,
    /// Time in the state, in ns (a lower bound for sockets only snapshots have seen).
    pub age_ns: Option<u64>,
    pub owner: String,
    pub local: String,
    pub remote: String,
    /// Its story so far (`life`'s fields: see [`crate::output::picture::story`]), when a
    /// transition of it was seen.
    pub story: Option<crate::model::connections::Connection>,
}

/// Everything one frame of the diagram shows, sampled from the agent's sinks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Picture {
    /// Wall-clock time of the sample, `HH:MM:SS`.
    pub time: String,
    /// Kernel monotonic ns of the sample (stories' times count to it).
    pub now_ns: u64,
    /// Seconds the rates are over.
    pub interval_s: f64,
    /// Seconds the dwell quantiles are over.
    pub dwell_window_s: f64,
    /// The socket gauges hold the first snapshot (before that, counts start from zero).
    pub seeded: bool,
    /// Indexed by [`TcpState::slot`].
    pub states: [StateView; crate::model::tcp::STATE_SLOTS],
    /// One per [`ARROWS`] entry, same order.
    pub arrows: Vec<ArrowView>,
    /// Transitions per second no arrow or mark shows.
    pub other_per_s: f64,
    pub gaps: Gaps,
    /// doctor's findings at the last evaluation, most severe first.
    pub findings: Vec<FindingLine>,
    /// Owners of the states that signal trouble (`top` only).
    pub owners: Vec<OwnerPanel>,
    /// The oldest sockets of the state the view asked for, oldest first (`top` only).
    pub listed: Option<(TcpState, Vec<SocketRow>)>,
}

impl Picture {
    /// What `state`'s box shows.
    pub fn state(&self, state: TcpState) -> &StateView {
        &self.states[state.slot()]
    }

    /// What `arrow` (an index into [`ARROWS`]) shows; zero before the first sample.
    pub fn arrow(&self, arrow: usize) -> ArrowView {
        self.arrows.get(arrow).copied().unwrap_or(ArrowView {
            arrow,
            rate: 0.0,
            total: 0,
            hot: false,
        })
    }

    /// The oldest sockets in `state`, oldest first, if they were listed.
    pub fn sockets_in(&self, state: TcpState) -> &[SocketRow] {
        match &self.listed {
            Some((listed, rows)) if *listed == state => rows,
            _ => &[],
        }
    }

    /// Whether `state`'s sockets were listed in this picture.
    pub fn lists(&self, state: TcpState) -> bool {
        self.listed.as_ref().is_some_and(|(s, _)| *s == state)
    }
}

/// A count in at most 5 characters: `999`, `12.3k`, `123k`, `1.2M`.
pub fn count(n: u64) -> String {
    if n < 10_000 {
        return n.to_string();
    }
    let mut value = n as f64;
    for unit in ["k", "M", "G", "T", "P", "E"] {
        value /= 1000.0;
        if value < 99.95 {
            return format!("{value:.1}{unit}");
        }
        if value < 999.5 {
            return format!("{value:.0}{unit}");
        }
    }
    format!("{value:.0}E")
}

/// A rate per second in at most 5 characters: `0`, `0.2`, `12`, `12.3k`.
pub fn rate(per_s: f64) -> String {
    if per_s <= 0.0 {
        "0".to_owned()
    } else if per_s < 9.95 {
        format!("{per_s:.1}")
    } else {
        count(per_s.round() as u64)
    }
}

/// A duration in ns in at most 5 characters: `45µs`, `1.2ms`, `340ms`, `12s`, `5m`, `3h`.
pub fn age(ns: f64) -> String {
    let s = ns / 1e9;
    if ns < 1e3 {
        format!("{ns:.0}ns")
    } else if ns < 1e6 {
        format!("{:.0}µs", ns / 1e3)
    } else if ns < 1e7 {
        format!("{:.1}ms", ns / 1e6)
    } else if ns < 1e9 {
        format!("{:.0}ms", ns / 1e6)
    } else if s < 100.0 {
        format!("{s:.0}s")
    } else if s < 6000.0 {
        format!("{:.0}m", s / 60.0)
    } else if s < 360_000.0 {
        format!("{:.0}h", s / 3600.0)
    } else {
        format!("{:.0}d", s / 86400.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn place_of(node: Node) -> Place {
        *PLACES.iter().find(|p| p.node == node).expect("placed")
    }

    #[test]
    fn eleven_states_each_once_and_no_two_boxes_share_a_cell() {
        let states: HashSet<TcpState> = PLACES
            .iter()
            .filter_map(|p| match p.node {
                Node::State(s) => Some(s),
                Node::Closed => None,
            })
            .collect();
        assert_eq!(states.len(), 11, "every state but NEW_SYN_RECV");
        assert!(!states.contains(&TcpState::NewSynRecv));
        let cells: HashSet<(u8, u8)> = PLACES.iter().map(|p| (p.col, p.row)).collect();
        assert_eq!(cells.len(), PLACES.len());
        assert!(PLACES.iter().all(|p| p.col < COLS && p.row < ROWS));
        // The classic shape: client right, server left, TIME_WAIT at the bottom.
        assert_eq!(place_of(Node::State(TcpState::SynSent)).col, 2);
        assert_eq!(place_of(Node::State(TcpState::SynRecv)).col, 0);
        assert_eq!(place_of(Node::State(TcpState::TimeWait)).row, ROWS - 1);
        for s in COUNTED {
            assert!(states.contains(&s));
        }
    }

    #[test]
    fn the_kernels_own_moves_are_drawn() {
        let has = |from, to| {
            ARROWS
                .iter()
                .any(|a| a.source == Source::Transition(from, to))
        };
        assert!(has(TcpState::FinWait1, TcpState::Closing));
        let marked = |s| ABORTS.iter().any(|(m, _)| *m == s);
        assert!(marked(TcpState::Established), "aborts");
        assert!(marked(TcpState::SynSent), "connect failures");
        // No move to CLOSE is both an arrow and a mark.
        for a in ARROWS {
            if let Source::Transition(from, TcpState::Close) = a.source {
                assert!(!marked(from), "{from}");
            }
        }
    }

    /// Boxes in cells as the compact terminal layout places them.
    fn cell_rect(node: Node) -> Rect {
        let p = place_of(node);
        let centres = [10, 40, 70];
        Rect {
            x: centres[usize::from(p.col)] - 10,
            y: i32::from(p.row) * 2,
            w: 20,
            h: 1,
        }
    }

    #[test]
    fn routes_start_and_end_outside_the_boxes_they_join_and_never_cross_another_box() {
        for a in &ARROWS {
            let path = route(a, cell_rect, 3);
            let inside = |r: Rect, (x, y): (i32, i32)| {
                x >= r.x && x < r.right() && y >= r.y && y < r.bottom()
            };
            // Every cell along the polyline.
            let mut cells = Vec::new();
            for w in path.points.windows(2) {
                let ((x0, y0), (x1, y1)) = (w[0], w[1]);
                assert!(x0 == x1 || y0 == y1, "{a:?}: orthogonal segments");
                let n = (x1 - x0).abs().max((y1 - y0).abs());
                for i in 0..=n {
                    cells.push((x0 + (x1 - x0).signum() * i, y0 + (y1 - y0).signum() * i));
                }
            }
            for p in PLACES {
                let r = cell_rect(p.node);
                assert!(
                    cells.iter().all(|c| !inside(r, *c)),
                    "{} -> {} crosses {}",
                    a.from.name(),
                    a.to.name(),
                    p.node.name()
                );
            }
            // The arrowhead is next to the box it enters.
            let end = *path.points.last().unwrap();
            let t = cell_rect(a.to);
            let next_to = (end.1 == t.y - 1 || end.1 == t.bottom())
                && (t.x..t.right()).contains(&end.0)
                || (end.0 == t.x - 1 || end.0 == t.right()) && (t.y..t.bottom()).contains(&end.1);
            assert!(next_to, "{a:?} ends at {end:?}, box {t:?}");
        }
    }

    #[test]
    fn numbers_fit_in_five_characters() {
        assert_eq!(count(0), "0");
        assert_eq!(count(9999), "9999");
        assert_eq!(count(12_345), "12.3k");
        assert_eq!(count(123_456), "123k");
        assert_eq!(count(1_234_567), "1.2M");
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(0.25), "0.2");
        assert_eq!(rate(12.4), "12");
        assert_eq!(rate(15_300.0), "15.3k");
        assert_eq!(age(45_000.0), "45µs");
        assert_eq!(age(1_200_000.0), "1.2ms");
        assert_eq!(age(340e6), "340ms");
        assert_eq!(age(12e9), "12s");
        assert_eq!(age(300e9), "5m");
        assert_eq!(age(3.0 * 3600e9), "3h");
        for n in [0, 5, 99_999, 999_999, u64::MAX / 2] {
            assert!(count(n).chars().count() <= 5, "{n}");
        }
    }
}
