//! `tcptrace top`'s screen: the state diagram, the side panels, the findings banner, and the
//! views its keys open (a state's sockets, a socket's story, the filter prompt, help).
//!
//! [`App`] is the view's state and key handling (pure, tested with ratatui's test backend);
//! [`draw`] renders a [`Picture`] with it; [`terminal`] owns the real terminal.

pub mod diagram;
pub mod terminal;

use ratatui::Frame;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::Rect as Area;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};

use crate::model::tcp::TcpState;
use crate::output::diagram::{COUNTED, Node, Picture, age, count, rate};
use diagram::{MIN_WIDTH, Size};

/// What the screen shows besides the diagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The diagram and its panels alone.
    Diagram,
    /// Choosing a state (`s`): index into [`COUNTED`].
    PickState(usize),
    /// A state's sockets, oldest first, with one selected.
    Sockets {
        state: TcpState,
        index: usize,
    },
    /// A socket's story (by cookie: the list moves on while the story is open).
    Story {
        state: TcpState,
        index: usize,
        cookie: u64,
    },
    /// Editing the filter (`f`).
    Filter(String),
    Help,
}

/// What a key asks the command to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing for the command to do (the view changed, or not).
    None,
    /// Stop tracing and give the terminal back.
    Quit,
    /// Trace again with this filter (the CLI's filter flags, e.g. `--port 80 --comm nginx`).
    Filter(String),
}

/// The view's state between frames.
#[derive(Debug, Clone)]
pub struct App {
    /// What is open over the diagram.
    pub mode: Mode,
    /// The picture on screen stays as it was (`p`); tracing goes on.
    pub paused: bool,
    /// The filter in force, as typed (empty: everything).
    pub filter: String,
    /// A one-line message for the bottom line (a bad filter, a restart).
    pub status: Option<String>,
}

impl App {
    pub fn new(filter: String) -> Self {
        Self {
            mode: Mode::Diagram,
            paused: false,
            filter,
            status: None,
        }
    }

    /// Handles one key; `p` is the picture on screen (socket lists move within it).
    pub fn key(&mut self, key: KeyEvent, p: &Picture) -> Action {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        let up = matches!(key.code, KeyCode::Up | KeyCode::Char('k'));
        let down = matches!(key.code, KeyCode::Down | KeyCode::Char('j'));
        match self.mode.clone() {
            Mode::Filter(mut text) => {
                match key.code {
                    KeyCode::Enter => {
                        self.mode = Mode::Diagram;
                        return Action::Filter(text.trim().to_owned());
                    }
                    KeyCode::Esc => self.mode = Mode::Diagram,
                    KeyCode::Backspace => {
                        text.pop();
                        self.mode = Mode::Filter(text);
                    }
                    KeyCode::Char(c) => {
                        text.push(c);
                        self.mode = Mode::Filter(text);
                    }
                    _ => {}
                }
                return Action::None;
            }
            Mode::Help => {
                self.mode = Mode::Diagram;
                return if key.code == KeyCode::Char('q') {
                    Action::Quit
                } else {
                    Action::None
                };
            }
            Mode::PickState(i) => match key.code {
                KeyCode::Enter => {
                    self.mode = Mode::Sockets {
                        state: COUNTED[i],
                        index: 0,
                    }
                }
                KeyCode::Esc => self.mode = Mode::Diagram,
                _ if up => {
                    self.mode = Mode::PickState(i.checked_sub(1).unwrap_or(COUNTED.len() - 1))
                }
                _ if down || key.code == KeyCode::Char('s') => {
                    self.mode = Mode::PickState((i + 1) % COUNTED.len())
                }
                KeyCode::Char('q') => return Action::Quit,
                _ => {}
            },
            Mode::Sockets { state, index } => {
                let n = p.sockets_in(state).len();
                match key.code {
                    KeyCode::Enter if n > 0 => {
                        let cookie = p.sockets_in(state)[index.min(n - 1)].cookie;
                        self.mode = Mode::Story {
                            state,
                            index,
                            cookie,
                        }
                    }
                    KeyCode::Esc => self.mode = Mode::PickState(pick_index(state)),
                    _ if up => {
                        self.mode = Mode::Sockets {
                            state,
                            index: index.saturating_sub(1),
                        }
                    }
                    _ if down => {
                        self.mode = Mode::Sockets {
                            state,
                            index: (index + 1).min(n.saturating_sub(1)),
                        }
                    }
                    KeyCode::Char('q') => return Action::Quit,
                    KeyCode::Char('p') => self.paused = !self.paused,
                    _ => {}
                }
            }
            Mode::Story { state, index, .. } => match key.code {
                KeyCode::Char('q') => return Action::Quit,
                _ => self.mode = Mode::Sockets { state, index },
            },
            Mode::Diagram => match key.code {
                KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
                KeyCode::Char('p') => self.paused = !self.paused,
                KeyCode::Char('f') => self.mode = Mode::Filter(self.filter.clone()),
                KeyCode::Char('s') => self.mode = Mode::PickState(0),
                KeyCode::Char('?') | KeyCode::Char('h') => self.mode = Mode::Help,
                _ => {}
            },
        }
        Action::None
    }

    /// The state whose sockets the view shows, or is about to (the one picked): the
    /// sampler lists only that one.
    pub fn wanted(&self) -> Option<TcpState> {
        match &self.mode {
            Mode::PickState(i) => Some(COUNTED[*i]),
            Mode::Sockets { state, .. } | Mode::Story { state, .. } => Some(*state),
            _ => None,
        }
    }

    /// The box to highlight on the diagram.
    fn selected(&self) -> Option<Node> {
        match &self.mode {
            Mode::PickState(i) => Some(Node::State(COUNTED[*i])),
            Mode::Sockets { state, .. } | Mode::Story { state, .. } => Some(Node::State(*state)),
            _ => None,
        }
    }
}

fn pick_index(state: TcpState) -> usize {
    COUNTED.iter().position(|s| *s == state).unwrap_or(0)
}

/// The one-line help at the bottom.
const KEYS: &str = "q quit  p pause  f filter  s sockets  ? help";

/// What `?` shows.
pub const HELP: &str = "\
tcptrace top: the TCP state machine of this host, live.

Boxes are the kernel's TCP states: sockets in each now, and for the states sockets get
stuck in (SYN_SENT, SYN_RECV, CLOSE_WAIT, FIN_WAIT2, LAST_ACK, TIME_WAIT) the age of the
oldest. Arrows are transitions per second over the last second, the busiest in red.
✕N on a box: moves straight to CLOSE per second (connect failures, aborts, resets).
The client's path runs down the right, the server's down the left; the active close
(FIN_WAIT1, FIN_WAIT2) on the left, the passive close (CLOSE_WAIT, LAST_ACK) on the right.

Counts start from an INET_DIAG snapshot (TIME_WAIT included) and are corrected at each
reconcile; 'lost' and 'corrected' say what the kernel skipped and a snapshot fixed.
The banner shows tcptrace doctor's findings at the last reconcile.

Keys: q quit   p pause/resume   f filter (the CLI's flags, e.g. --port 80 --comm nginx;
      empty: everything)   s pick a state, Enter to list its sockets (oldest first),
      Enter on a socket for its story   Esc back   ? this help";

/// Draws everything: header, banner, diagram, panels, the open view, the bottom line.
pub fn draw(frame: &mut Frame<'_>, app: &App, p: &Picture) {
    let area = frame.area();
    if area.height < 16 || area.width < MIN_WIDTH {
        let text = format!(
            "tcptrace top needs at least {MIN_WIDTH}x16 (this terminal: {}x{})",
            area.width, area.height
        );
        frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
        return;
    }
    let header = Area::new(area.x, area.y, area.width, 1);
    let banner = Area::new(area.x, area.y + 1, area.width, 1);
    let bottom = Area::new(area.x, area.y + area.height - 1, area.width, 1);
    let body = Area::new(area.x, area.y + 2, area.width, area.height - 3);
    frame.render_widget(Paragraph::new(header_line(app, p, area.width)), header);
    frame.render_widget(Paragraph::new(banner_line(p)), banner);
    frame.render_widget(Paragraph::new(bottom_line(app)), bottom);

    // Diagram beside the panels when there is room for both, else above them.
    let size = Size::fitting(body.height).unwrap_or(Size::Compact);
    let side = body.width >= diagram::MAX_WIDTH + 36;
    let (dia, panels) = if side {
        let dw = diagram::MAX_WIDTH;
        (
            Area::new(body.x, body.y, dw, body.height),
            Area::new(body.x + dw + 2, body.y, body.width - dw - 2, body.height),
        )
    } else {
        let h = size.height().min(body.height);
        (
            Area::new(body.x, body.y, body.width, h),
            Area::new(
                body.x,
                body.y + h + 1,
                body.width,
                body.height.saturating_sub(h + 1),
            ),
        )
    };
    diagram::draw(frame.buffer_mut(), dia, size, p, app.selected());
    if panels.height > 0 {
        draw_panels(frame, panels, p, side);
    }
    match &app.mode {
        Mode::PickState(i) => draw_pick(frame, body, p, *i),
        Mode::Sockets { state, index } => draw_sockets(frame, body, p, *state, *index),
        Mode::Story {
            state,
            index,
            cookie,
        } => {
            draw_sockets(frame, body, p, *state, *index);
            draw_story(frame, body, p, *state, *cookie);
        }
        Mode::Help => draw_help(frame, body),
        Mode::Diagram | Mode::Filter(_) => {}
    }
}

/// The top line: the time and the filter on the left, what the picture may miss on the
/// right (always shown: a long filter is cut instead).
fn header_line(app: &App, p: &Picture, width: u16) -> Line<'static> {
    let g = p.gaps;
    let lost = g.lost_ring_full + g.lost_recursion + g.unreadable;
    let gap_style = if lost > 0 {
        Style::new().fg(Color::LightRed)
    } else {
        Style::new().fg(Color::DarkGray)
    };
    let right = format!(" lost {lost} corrected {}", g.corrections);
    let mut spans = vec![
        Span::styled("tcptrace top ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!("{} ", p.time)),
    ];
    if app.paused {
        spans.push(Span::styled(
            "PAUSED ",
            Style::new().fg(Color::Black).bg(Color::Yellow),
        ));
    }
    if !p.seeded {
        spans.push(Span::styled("seeding ", Style::new().fg(Color::Yellow)));
    }
    let filter = if app.filter.is_empty() {
        "all"
    } else {
        app.filter.as_str()
    };
    let used: usize = spans.iter().map(|s| s.content.chars().count()).sum();
    let room = usize::from(width).saturating_sub(used + right.chars().count());
    let mut left: String = format!("filter: {filter}").chars().collect();
    if left.chars().count() > room {
        left = left
            .chars()
            .take(room.saturating_sub(1))
            .collect::<String>()
            + "…";
    }
    let pad = room.saturating_sub(left.chars().count());
    spans.push(Span::raw(left));
    spans.push(Span::raw(" ".repeat(pad)));
    spans.push(Span::styled(right, gap_style));
    Line::from(spans)
}

fn banner_line(p: &Picture) -> Line<'static> {
    let Some(f) = p.findings.first() else {
        return Line::styled(
            "no findings (doctor's checks, at each reconcile)",
            Style::new().fg(Color::DarkGray),
        );
    };
    let style = match f.severity {
        "critical" => Style::new()
            .fg(Color::White)
            .bg(Color::Red)
            .add_modifier(Modifier::BOLD),
        "warning" => Style::new().fg(Color::Black).bg(Color::Yellow),
        _ => Style::new().fg(Color::Cyan),
    };
    let more = match p.findings.len() {
        1 => String::new(),
        n => format!(" (+{} more)", n - 1),
    };
    Line::styled(
        format!(
            "{} {}: {}{more}",
            f.severity.to_ascii_uppercase(),
            f.kind,
            f.statement
        ),
        style,
    )
}

fn bottom_line(app: &App) -> Line<'static> {
    if let Mode::Filter(text) = &app.mode {
        return Line::from(vec![
            Span::styled("filter> ", Style::new().fg(Color::Yellow)),
            Span::raw(format!("{text}_")),
            Span::styled(
                "   e.g. --port 80 --comm nginx; Enter applies, Esc cancels",
                Style::new().fg(Color::DarkGray),
            ),
        ]);
    }
    if let Some(status) = &app.status {
        return Line::styled(status.clone(), Style::new().fg(Color::Yellow));
    }
    let hint = match app.mode {
        Mode::PickState(_) => "↑↓ state  Enter its sockets  Esc back",
        Mode::Sockets { .. } => "↑↓ socket  Enter its story  Esc back",
        Mode::Story { .. } => "any key: back",
        _ => KEYS,
    };
    Line::styled(hint, Style::new().fg(Color::DarkGray))
}

/// The panel lines: dwell, owners in trouble, gaps.
fn panel_sections(p: &Picture) -> (Vec<Line<'static>>, Vec<Line<'static>>) {
    let title = |t: String| Line::styled(t, Style::new().add_modifier(Modifier::BOLD));
    let mut dwell = vec![title(format!("DWELL p50/p99 ({:.0}s)", p.dwell_window_s))];
    for s in COUNTED {
        let v = p.state(s);
        if let (Some(a), Some(b)) = (v.dwell_p50_ns, v.dwell_p99_ns) {
            dwell.push(Line::raw(format!(
                "{:<11} {:>5} {:>5}",
                s.name(),
                age(a),
                age(b)
            )));
        }
    }
    if dwell.len() == 1 {
        dwell.push(Line::styled(
            "no socket left a state yet",
            Style::new().fg(Color::DarkGray),
        ));
    }
    let g = p.gaps;
    dwell.push(title("GAPS".to_owned()));
    dwell.push(Line::raw(format!(
        "lost: ring {} recursion {} bad {}",
        g.lost_ring_full, g.lost_recursion, g.unreadable
    )));
    dwell.push(Line::raw(format!(
        "corrected {} ({} reconciles)",
        g.corrections, g.reconciles
    )));
    dwell.push(Line::raw(format!("not drawn {}/s", rate(p.other_per_s))));
    let mut owners = Vec::new();
    for panel in &p.owners {
        if panel.rows.is_empty() {
            continue;
        }
        owners.push(title(panel.title.to_owned()));
        for r in &panel.rows {
            let oldest = r.oldest_ns.map(|ns| age(ns as f64)).unwrap_or_default();
            owners.push(Line::raw(format!(
                "{:>5} {:<16.16} {:<15} {:>5}",
                count(r.count),
                r.owner,
                r.endpoint,
                oldest
            )));
        }
    }
    if owners.is_empty() && !p.owners.is_empty() {
        owners.push(title("OWNERS".to_owned()));
        owners.push(Line::styled(
            "no CLOSE_WAIT, TIME_WAIT, SYN_RECV or failed connects",
            Style::new().fg(Color::DarkGray),
        ));
    }
    (dwell, owners)
}

fn draw_panels(frame: &mut Frame<'_>, area: Area, p: &Picture, side: bool) {
    let (dwell, owners) = panel_sections(p);
    if side {
        let mut lines = owners;
        lines.push(Line::raw(""));
        lines.extend(dwell);
        frame.render_widget(Paragraph::new(lines), area);
    } else {
        // Owners are what an incident needs: they get the wider half.
        let left = area.width * 2 / 5;
        frame.render_widget(
            Paragraph::new(dwell),
            Area::new(area.x, area.y, left.saturating_sub(1), area.height),
        );
        frame.render_widget(
            Paragraph::new(owners),
            Area::new(area.x + left, area.y, area.width - left, area.height),
        );
    }
}

/// A centred popup of at most `w` x `h` inside `area`, cleared.
fn popup(frame: &mut Frame<'_>, area: Area, w: u16, h: u16, title: String) -> Area {
    let w = w.min(area.width);
    let h = h.min(area.height);
    let r = Area::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    frame.render_widget(Clear, r);
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner = block.inner(r);
    frame.render_widget(block, r);
    inner
}

fn draw_pick(frame: &mut Frame<'_>, area: Area, p: &Picture, index: usize) {
    let inner = popup(
        frame,
        area,
        30,
        COUNTED.len() as u16 + 2,
        " sockets of ".to_owned(),
    );
    let lines: Vec<Line<'_>> = COUNTED
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let pointer = if i == index { '▶' } else { ' ' };
            let text = format!("{pointer}{:<12}{:>8}", s.name(), count(p.state(*s).count));
            if i == index {
                Line::styled(text, Style::new().add_modifier(Modifier::REVERSED))
            } else {
                Line::raw(text)
            }
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_sockets(frame: &mut Frame<'_>, area: Area, p: &Picture, state: TcpState, index: usize) {
    let rows = p.sockets_in(state);
    let title = format!(
        " {} : {} sockets, {} oldest listed ",
        state.name(),
        count(p.state(state).count),
        rows.len()
    );
    let inner = popup(
        frame,
        area,
        area.width.saturating_sub(4),
        area.height,
        title,
    );
    let mut lines = vec![Line::styled(
        format!("{:>6} {:<20} {:<24} {}", "AGE", "OWNER", "LOCAL", "REMOTE"),
        Style::new().add_modifier(Modifier::BOLD),
    )];
    let visible = usize::from(inner.height.saturating_sub(1));
    let first = index.saturating_sub(visible.saturating_sub(1));
    for (i, r) in rows.iter().enumerate().skip(first).take(visible) {
        let text = format!(
            "{}{:>5} {:<20} {:<24} {}",
            if i == index { '▶' } else { ' ' },
            r.age_ns.map_or("-".to_owned(), |ns| age(ns as f64)),
            r.owner,
            r.local,
            r.remote
        );
        lines.push(if i == index {
            Line::styled(text, Style::new().add_modifier(Modifier::REVERSED))
        } else {
            Line::raw(text)
        });
    }
    if !p.lists(state) {
        lines.push(Line::styled(
            "listing at the next sample (each second)…",
            Style::new().fg(Color::DarkGray),
        ));
    } else if rows.is_empty() {
        lines.push(Line::styled(
            "no socket in this state",
            Style::new().fg(Color::DarkGray),
        ));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_story(frame: &mut Frame<'_>, area: Area, p: &Picture, state: TcpState, cookie: u64) {
    let Some(row) = p.sockets_in(state).iter().find(|r| r.cookie == cookie) else {
        let inner = popup(frame, area, 60, 3, " story so far ".to_owned());
        let text = format!("socket {cookie} is no longer among the oldest in {state}");
        frame.render_widget(Paragraph::new(text), inner);
        return;
    };
    let mut lines: Vec<Line<'_>> = row
        .story
        .map(|c| crate::output::picture::story(&c, p.now_ns))
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| Line::raw(format!("{k:<15}{v}")))
        .collect();
    if lines.is_empty() {
        lines.push(Line::raw(format!("cookie         {}", row.cookie)));
        lines.push(Line::raw(format!("owner          {}", row.owner)));
        lines.push(Line::raw(format!("local          {}", row.local)));
        lines.push(Line::raw(format!("remote         {}", row.remote)));
        lines.push(Line::styled(
            "no transition of this socket seen yet: it is known from snapshots only",
            Style::new().fg(Color::DarkGray),
        ));
    }
    let h = lines.len() as u16 + 2;
    let inner = popup(
        frame,
        area,
        76,
        h,
        " story so far (life's fields) ".to_owned(),
    );
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), inner);
}

fn draw_help(frame: &mut Frame<'_>, area: Area) {
    let h = HELP.lines().count() as u16 + 2;
    let inner = popup(frame, area, 92, h, " help (any key closes) ".to_owned());
    frame.render_widget(Paragraph::new(HELP).wrap(Wrap { trim: false }), inner);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::diagram::{FindingLine, OwnerPanel, OwnerRow, SocketRow, StateView};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::KeyEventKind;

    /// A server socket that took the peer's FIN: in CLOSE_WAIT.
    fn story() -> crate::model::connections::Connection {
        use crate::model::connections::ConnectionTable;
        use crate::testing::step;
        let mut table = ConnectionTable::new(10);
        table.apply(&step(7, TcpState::Listen, TcpState::SynRecv).at(1).done());
        table.apply(
            &step(7, TcpState::SynRecv, TcpState::Established)
                .at(2)
                .done(),
        );
        table.apply(
            &step(7, TcpState::Established, TcpState::CloseWait)
                .at(3)
                .done(),
        );
        *table.live(7).expect("live")
    }

    fn picture() -> Picture {
        let mut p = Picture {
            time: "12:00:00".into(),
            seeded: true,
            dwell_window_s: 60.0,
            ..Picture::default()
        };
        p.states[TcpState::CloseWait.slot()] = StateView {
            count: 5,
            oldest_ns: Some(42_000_000_000),
            dwell_p50_ns: Some(2e6),
            dwell_p99_ns: Some(9e6),
            ..StateView::default()
        };
        p.states[TcpState::TimeWait.slot()].count = 31;
        p.findings.push(FindingLine {
            severity: "warning",
            kind: "close_wait_leak",
            statement: "5 sockets in CLOSE_WAIT on port 9000".into(),
        });
        p.owners.push(OwnerPanel {
            title: "CLOSE_WAIT leakers",
            state: TcpState::CloseWait,
            rows: vec![OwnerRow {
                owner: "4242 leaky".into(),
                endpoint: ":9000".into(),
                count: 5,
                oldest_ns: Some(42_000_000_000),
            }],
        });
        p.listed = Some((
            TcpState::CloseWait,
            (0..5)
                .map(|i| SocketRow {
                    cookie: 100 + i,
                    age_ns: Some(42_000_000_000 - i * 1_000_000_000),
                    owner: "4242 leaky".into(),
                    local: "127.0.0.1:9000".into(),
                    remote: format!("127.0.0.1:5000{i}"),
                    story: Some(story()),
                })
                .collect(),
        ));
        p
    }

    fn screen(w: u16, h: u16, app: &App, p: &Picture) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, app, p)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_owned())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn key(app: &mut App, p: &Picture, code: KeyCode) -> Action {
        app.key(
            KeyEvent {
                code,
                modifiers: KeyModifiers::NONE,
                kind: KeyEventKind::Press,
                state: ratatui::crossterm::event::KeyEventState::NONE,
            },
            p,
        )
    }

    #[test]
    fn fits_80x24_with_diagram_banner_panels_and_keys() {
        let p = picture();
        let s = screen(80, 24, &App::new(String::new()), &p);
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines[0].starts_with("tcptrace top 12:00:00"), "{s}");
        assert!(lines[1].contains("WARNING close_wait_leak"), "{s}");
        assert!(lines[23].contains("q quit"), "{s}");
        for state in [
            "CLOSE_WAIT",
            "TIME_WAIT",
            "ESTABLISHED",
            "SYN_SENT",
            "LISTEN",
            "LAST_ACK",
        ] {
            assert!(s.contains(state), "{state}: {s}");
        }
        assert!(s.contains("CLOSE_WAIT leakers"), "{s}");
        assert!(s.contains("4242 leaky") && s.contains(":9000"), "{s}");
        assert!(s.contains("DWELL"), "{s}");
        assert!(lines.iter().all(|l| l.chars().count() == 80));
    }

    #[test]
    fn larger_terminals_get_framed_boxes_and_side_panels() {
        let p = picture();
        let s = screen(160, 50, &App::new("--port 9000".into()), &p);
        assert!(s.contains("┌CLOSE_WAIT"), "{s}");
        assert!(s.contains("oldest 42s"), "{s}");
        assert!(s.contains("p50 2.0ms p99 9.0ms"), "{s}");
        assert!(s.contains("filter: --port 9000"));
        // The panels sit beside the diagram.
        let leak = s
            .lines()
            .find(|l| l.contains("CLOSE_WAIT leakers"))
            .unwrap();
        assert!(leak.find("CLOSE_WAIT leakers").unwrap() > 100, "{leak}");
        let s = screen(120, 40, &App::new(String::new()), &p);
        assert!(s.contains("┌CLOSE_WAIT"), "{s}");
    }

    #[test]
    fn too_small_says_so() {
        let s = screen(50, 10, &App::new(String::new()), &picture());
        assert!(s.contains("needs at least 64x16"), "{s}");
    }

    #[test]
    fn keys_pick_a_state_list_its_sockets_and_show_a_story() {
        let p = picture();
        let mut app = App::new(String::new());
        assert_eq!(key(&mut app, &p, KeyCode::Char('s')), Action::None);
        let cw = pick_index(TcpState::CloseWait);
        for _ in 0..cw {
            key(&mut app, &p, KeyCode::Down);
        }
        assert_eq!(app.mode, Mode::PickState(cw));
        key(&mut app, &p, KeyCode::Enter);
        assert_eq!(
            app.mode,
            Mode::Sockets {
                state: TcpState::CloseWait,
                index: 0
            }
        );
        let s = screen(80, 24, &app, &p);
        assert!(s.contains("CLOSE_WAIT : 5 sockets"), "{s}");
        assert!(s.contains("42s") && s.contains("127.0.0.1:50000"), "{s}");
        key(&mut app, &p, KeyCode::Down);
        key(&mut app, &p, KeyCode::Enter);
        assert_eq!(
            app.mode,
            Mode::Story {
                state: TcpState::CloseWait,
                index: 1,
                cookie: 101
            }
        );
        let s = screen(80, 24, &app, &p);
        assert!(s.contains("closed_by      remote"), "{s}");
        // What it carried follows; this story's transitions carried no counters.
        let s = screen(100, 40, &app, &p);
        assert!(s.contains("tx_bytes       -"), "{s}");
        key(&mut app, &p, KeyCode::Esc);
        key(&mut app, &p, KeyCode::Esc);
        key(&mut app, &p, KeyCode::Esc);
        assert_eq!(app.mode, Mode::Diagram);
        assert_eq!(key(&mut app, &p, KeyCode::Char('q')), Action::Quit);
    }

    #[test]
    fn filter_prompt_edits_and_applies_pause_toggles_help_opens() {
        let p = picture();
        let mut app = App::new("--port 1".into());
        key(&mut app, &p, KeyCode::Char('f'));
        for _ in 0..1 {
            key(&mut app, &p, KeyCode::Backspace);
        }
        for c in "9000".chars() {
            key(&mut app, &p, KeyCode::Char(c));
        }
        // 'q' while typing is text, not quit.
        assert_eq!(key(&mut app, &p, KeyCode::Char('q')), Action::None);
        key(&mut app, &p, KeyCode::Backspace);
        assert!(screen(80, 24, &app, &p).contains("filter> --port 9000_"));
        assert_eq!(
            key(&mut app, &p, KeyCode::Enter),
            Action::Filter("--port 9000".into())
        );
        key(&mut app, &p, KeyCode::Char('p'));
        assert!(app.paused);
        assert!(screen(80, 24, &app, &p).contains("PAUSED"));
        key(&mut app, &p, KeyCode::Char('?'));
        assert!(screen(100, 30, &app, &p).contains("Keys: q quit"));
        key(&mut app, &p, KeyCode::Char('x'));
        assert_eq!(app.mode, Mode::Diagram);
        let ctrl_c = KeyEvent {
            code: KeyCode::Char('c'),
            modifiers: KeyModifiers::CONTROL,
            kind: KeyEventKind::Press,
            state: ratatui::crossterm::event::KeyEventState::NONE,
        };
        assert_eq!(app.key(ctrl_c, &p), Action::Quit);
    }
}
