//! The state diagram drawn in terminal cells: the boxes of [`crate::output::diagram::PLACES`]
//! and the arrows [`route`] lays out, with counts, ages and rates.
//!
//! Three sizes, the largest that fits: one-line boxes (13 rows, what an 80x24 terminal has
//! room for), framed boxes (27 rows) and framed boxes with a dwell line (40 rows).

use ratatui::buffer::Buffer;
use ratatui::layout::Rect as Area;
use ratatui::style::{Color, Modifier, Style};

use crate::model::tcp::TcpState;
use crate::output::diagram::{
    ABORTS, ARROWS, Node, PLACES, Picture, ROWS, Rect, age, can_get_stuck, count, rate, route,
};

/// How big the boxes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// One line per box, one line between rows.
    Compact,
    /// Framed boxes (name in the frame, count and age inside), one line between rows.
    Framed,
    /// Framed boxes with a dwell line, two lines between rows.
    Tall,
}

impl Size {
    /// Box height and the lines between rows.
    fn metrics(self) -> (i32, i32) {
        match self {
            Self::Compact => (1, 1),
            Self::Framed => (3, 1),
            Self::Tall => (4, 2),
        }
    }

    /// Rows the diagram takes.
    pub fn height(self) -> u16 {
        let (h, gap) = self.metrics();
        (i32::from(ROWS) * h + (i32::from(ROWS) - 1) * gap) as u16
    }

    /// The largest size that fits `height` rows, if any.
    pub fn fitting(height: u16) -> Option<Self> {
        [Self::Tall, Self::Framed, Self::Compact]
            .into_iter()
            .find(|s| s.height() <= height)
    }
}

/// Columns the diagram needs at least, and uses at most.
pub const MIN_WIDTH: u16 = 64;
pub const MAX_WIDTH: u16 = 104;

/// Where each box goes in `area` at `size`.
pub struct Geometry {
    size: Size,
    area: Area,
    box_w: i32,
}

impl Geometry {
    pub fn new(area: Area, size: Size) -> Self {
        let w = i32::from(area.width.min(MAX_WIDTH));
        let box_w = (w / 4).clamp(18, 26);
        Self { size, area, box_w }
    }

    /// The box of `node`, relative to the area's top-left corner.
    pub fn rect(&self, node: Node) -> Rect {
        let p = PLACES
            .iter()
            .find(|p| p.node == node)
            .copied()
            .unwrap_or(PLACES[0]);
        let w = i32::from(self.area.width.min(MAX_WIDTH));
        let x = match p.col {
            0 => 0,
            1 => (w - self.box_w) / 2,
            _ => w - self.box_w,
        };
        let (h, gap) = self.size.metrics();
        Rect {
            x,
            y: i32::from(p.row) * (h + gap),
            w: self.box_w,
            h,
        }
    }

    /// Columns between parallel arrows.
    fn off(&self) -> i32 {
        (self.box_w / 6).max(3)
    }
}

/// Writes into a buffer area, clipping at its edges.
struct Cells<'a> {
    buf: &'a mut Buffer,
    area: Area,
}

impl Cells<'_> {
    fn put(&mut self, x: i32, y: i32, text: &str, style: Style) {
        for (i, ch) in text.chars().enumerate() {
            let cx = x + i as i32;
            if cx < 0
                || y < 0
                || cx >= i32::from(self.area.width)
                || y >= i32::from(self.area.height)
            {
                continue;
            }
            let pos = (self.area.x + cx as u16, self.area.y + y as u16);
            if let Some(cell) = self.buf.cell_mut(pos) {
                cell.set_char(ch).set_style(style);
            }
        }
    }
}

/// A side of a cell: where a line leaves it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    N,
    S,
    E,
    W,
}

/// The line glyph joining two sides of a cell.
fn glyph(a: Side, b: Side) -> char {
    use Side::*;
    match (a, b) {
        (N, S) | (S, N) => '│',
        (E, W) | (W, E) => '─',
        (N, E) | (E, N) => '└',
        (N, W) | (W, N) => '┘',
        (S, E) | (E, S) => '┌',
        (S, W) | (W, S) => '┐',
        (N, N) | (S, S) => '│',
        (E, E) | (W, W) => '─',
    }
}

/// The side of cell `(x, y)` facing its neighbour `(nx, ny)`.
fn towards((x, y): (i32, i32), (nx, ny): (i32, i32)) -> Side {
    if ny < y {
        Side::N
    } else if ny > y {
        Side::S
    } else if nx > x {
        Side::E
    } else {
        Side::W
    }
}

/// The side of a cell next to box `r` that faces the box.
fn facing((x, y): (i32, i32), r: Rect) -> Side {
    if y < r.y {
        Side::S
    } else if y >= r.bottom() {
        Side::N
    } else if x < r.x {
        Side::E
    } else {
        Side::W
    }
}

/// Every cell along a polyline, in order, each once.
fn cells(points: &[(i32, i32)]) -> Vec<(i32, i32)> {
    let mut out: Vec<(i32, i32)> = Vec::new();
    for w in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        let n = (x1 - x0).abs().max((y1 - y0).abs());
        for i in 0..=n {
            let c = (x0 + (x1 - x0).signum() * i, y0 + (y1 - y0).signum() * i);
            if out.last() != Some(&c) {
                out.push(c);
            }
        }
    }
    if out.is_empty()
        && let Some(p) = points.first()
    {
        out.push(*p);
    }
    out
}

/// Styles: hot arrows, live arrows, idle ones; boxes with sockets stuck in them.
fn arrow_style(rate: f64, hot: bool) -> Style {
    if hot {
        Style::new()
            .fg(Color::LightRed)
            .add_modifier(Modifier::BOLD)
    } else if rate > 0.0 {
        Style::new().fg(Color::White)
    } else {
        Style::new().fg(Color::DarkGray)
    }
}

/// Draws the diagram of `p` into `area` at `size`.
pub fn draw(buf: &mut Buffer, area: Area, size: Size, p: &Picture, selected: Option<Node>) {
    let geo = Geometry::new(area, size);
    let mut out = Cells { buf, area };
    for (n, a) in ARROWS.iter().enumerate() {
        let path = route(a, |node| geo.rect(node), geo.off());
        let view = p.arrow(n);
        let style = arrow_style(view.rate, view.hot);
        let cells = cells(&path.points);
        let (from, to) = (geo.rect(a.from), geo.rect(a.to));
        for (k, &c) in cells.iter().enumerate() {
            let ch = if k + 1 == cells.len() {
                match facing(c, to) {
                    Side::S => '▼',
                    Side::N => '▲',
                    Side::E => '▶',
                    Side::W => '◀',
                }
            } else {
                let prev = if k == 0 {
                    facing(c, from)
                } else {
                    towards(c, cells[k - 1])
                };
                glyph(prev, towards(c, cells[k + 1]))
            };
            out.put(c.0, c.1, &ch.to_string(), style);
        }
        let text = rate(view.rate);
        let (x, y) = path.label;
        let len = text.chars().count() as i32;
        match path.anchor {
            crate::output::diagram::Anchor::Start => out.put(x, y, &text, style),
            crate::output::diagram::Anchor::End => out.put(x - len + 1, y, &text, style),
            crate::output::diagram::Anchor::Middle => {
                out.put(x - len / 2 - 1, y, &format!(" {text} "), style);
            }
        }
    }
    for place in PLACES {
        draw_box(&mut out, &geo, place.node, p, selected == Some(place.node));
    }
}

fn draw_box(out: &mut Cells<'_>, geo: &Geometry, node: Node, p: &Picture, selected: bool) {
    let r = geo.rect(node);
    let state = node.counted();
    let view = state.map(|s| *p.state(s)).unwrap_or_default();
    let stuck = state.is_some_and(can_get_stuck) && view.count > 0;
    let mut style = match (state, stuck) {
        (None, _) => Style::new().fg(Color::Gray),
        (Some(_), true) => Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        (Some(_), false) => Style::new().fg(Color::Cyan),
    };
    if selected {
        style = style.add_modifier(Modifier::REVERSED);
    }
    let name = node.name();
    let n = state.map(|_| count(view.count)).unwrap_or_default();
    let oldest = state
        .filter(|s| can_get_stuck(*s) && view.count > 0)
        .and(view.oldest_ns)
        .map(|ns| age(ns as f64))
        .unwrap_or_default();
    let mark = state
        .and_then(|s| ABORTS.iter().find(|(a, _)| *a == s))
        .map(|(_, left)| {
            let text = format!("✕{}", rate(view.aborts_per_s));
            let style = if view.aborts_per_s > 0.0 {
                Style::new().fg(Color::LightRed)
            } else {
                Style::new().fg(Color::DarkGray)
            };
            (text, *left, style)
        });
    let inner = r.w as usize;
    match geo.size {
        Size::Compact => {
            // ` NAME     12 3m ` on one line; without the margins when that is too long.
            let right = [n.as_str(), oldest.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            let used = name.len() + right.chars().count();
            let line = if used + 3 <= inner {
                format!(" {name}{}{right} ", " ".repeat(inner - used - 2))
            } else {
                format!(
                    "{name}{}{right}",
                    " ".repeat(inner.saturating_sub(used).max(1))
                )
            };
            out.put(r.x, r.y, &line, style.add_modifier(Modifier::REVERSED));
            if let Some((text, left, st)) = mark {
                let len = text.chars().count() as i32;
                let x = if left { r.x } else { r.right() - len };
                // Below FIN_WAIT1 the line is full (the arrows to FIN_WAIT2 and CLOSING and
                // their rates): its mark goes above, where only SYN_RECV's arrow arrives.
                let y = if node == Node::State(TcpState::FinWait1) {
                    r.y - 1
                } else {
                    r.bottom()
                };
                out.put(x, y, &text, st);
            }
        }
        Size::Framed | Size::Tall => {
            let top = format!(
                "┌{name}{}┐",
                "─".repeat(inner.saturating_sub(name.len() + 2))
            );
            out.put(r.x, r.y, &top, style);
            let label = if oldest.is_empty() {
                String::new()
            } else {
                format!("oldest {oldest}")
            };
            let pad = inner.saturating_sub(n.chars().count() + label.chars().count() + 4);
            let body = format!("│ {n}{}{label} │", " ".repeat(pad));
            out.put(r.x, r.y + 1, &body, style);
            if geo.size == Size::Tall {
                let dwell = match (view.dwell_p50_ns, view.dwell_p99_ns) {
                    (Some(a), Some(b)) => format!("p50 {} p99 {}", age(a), age(b)),
                    _ => String::new(),
                };
                let pad = inner.saturating_sub(dwell.chars().count() + 4);
                out.put(
                    r.x,
                    r.y + 2,
                    &format!("│ {dwell}{} │", " ".repeat(pad)),
                    style,
                );
            }
            let bottom = format!("└{}┘", "─".repeat(inner.saturating_sub(2)));
            out.put(r.x, r.bottom() - 1, &bottom, style);
            if let Some((text, left, st)) = mark {
                let len = text.chars().count() as i32;
                let x = if left { r.x + 2 } else { r.right() - 2 - len };
                out.put(x, r.bottom() - 1, &text, st);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::diagram::{ArrowView, StateView};

    fn render(w: u16, h: u16, p: &Picture) -> Vec<String> {
        let area = Area::new(0, 0, w, h);
        let mut buf = Buffer::empty(area);
        let size = Size::fitting(h).expect("fits");
        draw(&mut buf, area, size, p, None);
        (0..h)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol().to_owned()).collect())
            .collect()
    }

    fn picture() -> Picture {
        let mut p = Picture::default();
        p.states[TcpState::CloseWait.slot()] = StateView {
            count: 5,
            oldest_ns: Some(42_000_000_000),
            ..StateView::default()
        };
        p.states[TcpState::Established.slot()].count = 1234;
        p.states[TcpState::TimeWait.slot()] = StateView {
            count: 21_300,
            oldest_ns: Some(64_000_000_000),
            ..StateView::default()
        };
        p.states[TcpState::FinWait1.slot()].aborts_per_s = 7.0;
        p.states[TcpState::Established.slot()].aborts_per_s = 3.0;
        p.arrows = (0..ARROWS.len())
            .map(|arrow| ArrowView {
                arrow,
                rate: 0.0,
                total: 0,
                hot: false,
            })
            .collect();
        let syn = ARROWS
            .iter()
            .position(|a| {
                a.from == Node::State(TcpState::Close) && a.to == Node::State(TcpState::SynSent)
            })
            .unwrap();
        p.arrows[syn].rate = 250.0;
        p
    }

    #[test]
    fn sizes_pick_the_largest_that_fits() {
        assert_eq!(Size::Compact.height(), 13);
        assert_eq!(Size::Framed.height(), 27);
        assert_eq!(Size::Tall.height(), 40);
        assert_eq!(Size::fitting(12), None);
        assert_eq!(Size::fitting(20), Some(Size::Compact));
        assert_eq!(Size::fitting(30), Some(Size::Framed));
        assert_eq!(Size::fitting(50), Some(Size::Tall));
    }

    #[test]
    fn compact_diagram_shows_counts_ages_rates_and_marks() {
        let lines = render(80, 13, &picture());
        let text = lines.join("\n");
        // CLOSE_WAIT on the right of its row, with its count and oldest age.
        let cw = lines.iter().find(|l| l.contains("CLOSE_WAIT")).unwrap();
        assert!(cw.contains("CLOSE_WAIT") && cw.contains(" 5 42s"), "{text}");
        assert!(cw.find("CLOSE_WAIT").unwrap() > 55, "{cw}");
        assert!(
            text.contains("ESTABLISHED") && text.contains("1234"),
            "{text}"
        );
        assert!(text.contains("✕3.0"), "abort mark: {text}");
        assert!(
            text.contains("TIME_WAIT  21.3k 64s"),
            "fits without margins: {text}"
        );
        // FIN_WAIT1's mark sits above its box, clear of its arrows' rates.
        let fw1 = lines.iter().position(|l| l.contains("FIN_WAIT1")).unwrap();
        assert!(lines[fw1 - 1].starts_with("✕7.0"), "{text}");
        assert!(text.contains(" 250 "), "CLOSE -> SYN_SENT rate: {text}");
        for s in [
            "LISTEN",
            "SYN_SENT",
            "SYN_RECV",
            "FIN_WAIT1",
            "FIN_WAIT2",
            "CLOSING",
            "LAST_ACK",
            "TIME_WAIT",
        ] {
            assert!(text.contains(s), "{s}: {text}");
        }
        assert!(
            text.contains('▼') && text.contains('▶') && text.contains('◀') && text.contains('▲')
        );
    }

    #[test]
    fn framed_and_tall_diagrams_show_the_same_numbers() {
        for h in [27, 40] {
            let lines = render(100, h, &picture());
            let text = lines.join("\n");
            assert!(text.contains("┌CLOSE_WAIT"), "{text}");
            assert!(text.contains("oldest 42s"), "{text}");
            assert!(text.contains("1234"));
            assert!(text.contains("250"));
        }
    }
}
