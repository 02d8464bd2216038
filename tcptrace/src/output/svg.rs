//! serve's `/` page: the state diagram of [`crate::output::diagram`] as inline SVG, with the
//! same counts, ages, rates and findings `top` shows. Plain HTML and SVG text: no script, no
//! external asset; the page reloads itself every [`REFRESH_S`] seconds.

use std::fmt::Write as _;

use crate::output::diagram::{
    ABORTS, ARROWS, Anchor, Node, PLACES, Picture, Rect, age, can_get_stuck, count, rate, route,
};

/// Seconds between reloads of the page.
pub const REFRESH_S: u32 = 5;

/// Pixels: each box's size, the distance between parallel arrows, and the grid.
const BOX_W: i32 = 180;
const BOX_H: i32 = 78;
const OFF: i32 = 26;
const COL_X: [i32; 3] = [20, 320, 620];
const ROW_PITCH: i32 = 112;
const TOP: i32 = 16;
const WIDTH: i32 = 820;
const HEIGHT: i32 = TOP + 6 * ROW_PITCH + BOX_H + 44;

fn rect(node: Node) -> Rect {
    let p = PLACES
        .iter()
        .find(|p| p.node == node)
        .copied()
        .unwrap_or(PLACES[0]);
    Rect {
        x: COL_X[usize::from(p.col)],
        y: TOP + i32::from(p.row) * ROW_PITCH,
        w: BOX_W,
        h: BOX_H,
    }
}

/// Escapes text for HTML and SVG.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The diagram alone, as an `<svg>` element. Each box is a `<g class="state">` with
/// `data-state` (the kernel's name) and `data-count` (sockets now); each arrow a `<g
/// class="arrow">` with `data-from`, `data-to` and `data-rate` (per second).
pub fn diagram(p: &Picture) -> String {
    let mut s = String::with_capacity(16 * 1024);
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" font-family=\"monospace\" role=\"img\" aria-label=\"TCP state diagram\">\n\
         <defs><marker id=\"head\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerUnits=\"userSpaceOnUse\" markerWidth=\"11\" markerHeight=\"11\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"context-stroke\"/></marker></defs>\n\
         <rect width=\"100%\" height=\"100%\" fill=\"#fcfcfa\"/>\n"
    );
    for (n, a) in ARROWS.iter().enumerate() {
        let path = route(a, rect, OFF);
        let view = p.arrow(n);
        let (stroke, width) = if view.hot {
            ("#c0392b", 3)
        } else if view.rate > 0.0 {
            ("#34495e", 2)
        } else {
            ("#b0b7bf", 1)
        };
        let dash = if a.standard {
            ""
        } else {
            " stroke-dasharray=\"5 3\""
        };
        let mut d = String::new();
        for (i, (x, y)) in path.points.iter().enumerate() {
            let _ = write!(d, "{}{x},{y}", if i == 0 { "M" } else { " L" });
        }
        let (lx, ly, anchor) = match path.anchor {
            Anchor::Start => (path.label.0 + 6, path.label.1 + 4, "start"),
            Anchor::End => (path.label.0 - 6, path.label.1 + 4, "end"),
            Anchor::Middle => (path.label.0, path.label.1 - 6, "middle"),
        };
        let _ = writeln!(
            s,
            "<g class=\"arrow\" data-from=\"{}\" data-to=\"{}\" data-rate=\"{:.2}\"><title>{} -&gt; {}: {}; {} since start</title>\
             <path d=\"{d}\" fill=\"none\" stroke=\"{stroke}\" stroke-width=\"{width}\"{dash} marker-end=\"url(#head)\"/>\
             <text x=\"{lx}\" y=\"{ly}\" text-anchor=\"{anchor}\" font-size=\"13\" fill=\"{stroke}\">{}/s</text></g>",
            a.from.name(),
            a.to.name(),
            view.rate,
            a.from.name(),
            a.to.name(),
            escape(a.event),
            view.total,
            rate(view.rate),
        );
    }
    for place in PLACES {
        let r = rect(place.node);
        let state = place.node.counted();
        let view = state.map(|s| *p.state(s)).unwrap_or_default();
        let stuck = state.is_some_and(can_get_stuck) && view.count > 0;
        let fill = if stuck { "#fdebd0" } else { "#eef3f8" };
        let _ = write!(
            s,
            "<g class=\"state\" data-state=\"{}\" data-count=\"{}\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"6\" fill=\"{fill}\" stroke=\"#34495e\" stroke-width=\"1.5\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"14\" font-weight=\"bold\" fill=\"#1b2631\">{}</text>",
            place.node.name(),
            view.count,
            r.x,
            r.y,
            r.w,
            r.h,
            r.x + 8,
            r.y + 18,
            place.node.name()
        );
        if let Some(st) = state {
            let _ = write!(
                s,
                "<text class=\"count\" x=\"{}\" y=\"{}\" font-size=\"20\" text-anchor=\"end\" fill=\"#1b2631\">{}</text>",
                r.right() - 8,
                r.y + 22,
                count(view.count)
            );
            let line = |s: &mut String, dy: i32, text: &str| {
                let _ = write!(
                    s,
                    "<text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"#566573\">{}</text>",
                    r.x + 8,
                    r.y + dy,
                    escape(text)
                );
            };
            if can_get_stuck(st)
                && let Some(ns) = view.oldest_ns.filter(|_| view.count > 0)
            {
                line(&mut s, 38, &format!("oldest {}", age(ns as f64)));
            }
            if let (Some(p50), Some(p99)) = (view.dwell_p50_ns, view.dwell_p99_ns) {
                line(&mut s, 54, &format!("p50 {} p99 {}", age(p50), age(p99)));
            }
            if let Some((_, left)) = ABORTS.iter().find(|(a, _)| *a == st) {
                let (x, anchor) = if *left {
                    (r.x + 8, "start")
                } else {
                    (r.right() - 8, "end")
                };
                let color = if view.aborts_per_s > 0.0 {
                    "#c0392b"
                } else {
                    "#b0b7bf"
                };
                let _ = write!(
                    s,
                    "<text class=\"abort\" x=\"{x}\" y=\"{}\" font-size=\"12\" text-anchor=\"{anchor}\" fill=\"{color}\">✕ {}/s to CLOSE</text>",
                    r.bottom() - 7,
                    rate(view.aborts_per_s)
                );
            }
        }
        s.push_str("</g>\n");
    }
    let _ = writeln!(
        s,
        "<text x=\"{x}\" y=\"{}\" font-size=\"12\" fill=\"#566573\">arrows: transitions per second over the last {:.0} s; p50/p99: time spent in the state over {:.0} s</text>\n\
         <text x=\"{x}\" y=\"{}\" font-size=\"12\" fill=\"#566573\">✕: moves straight to CLOSE (failed connects, aborts, resets), which RFC 793's figure has no arrow for</text>",
        HEIGHT - 24,
        p.interval_s,
        p.dwell_window_s,
        HEIGHT - 8,
        x = COL_X[0],
    );
    s.push_str("</svg>\n");
    s
}

/// The whole `/` page: the diagram, the active findings, what the agent lost or corrected,
/// and a link to the metrics at `telemetry_path`.
pub fn page(p: &Picture, telemetry_path: &str) -> Vec<u8> {
    let mut s = String::with_capacity(24 * 1024);
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <title>tcptrace: TCP states on this host</title>\
         <style>body{{font-family:monospace;margin:1em;background:#fcfcfa;color:#1b2631}}\
         .critical{{color:#c0392b;font-weight:bold}}.warning{{color:#b9770e;font-weight:bold}}.info{{color:#566573}}</style>\
         </head><body>\n<h1>tcptrace: TCP states on this host</h1>\n<p>at {} (the page reloads every {REFRESH_S} s); {}</p>\n",
        escape(&p.time),
        if p.seeded {
            "counts seeded from a snapshot and kept by transitions"
        } else {
            "waiting for the first snapshot: counts start from zero"
        }
    );
    s.push_str(&diagram(p));
    s.push_str("<h2>Findings</h2>\n");
    if p.findings.is_empty() {
        s.push_str("<p id=\"findings\">none active (evaluated at each reconcile, as <code>tcptrace doctor</code> would)</p>\n");
    } else {
        s.push_str("<ul id=\"findings\">\n");
        for f in &p.findings {
            let _ = writeln!(
                s,
                "<li class=\"{0}\">{0} {1}: {2}</li>",
                f.severity,
                f.kind,
                escape(&f.statement)
            );
        }
        s.push_str("</ul>\n");
    }
    let g = p.gaps;
    let _ = write!(
        s,
        "<h2>Gaps</h2>\n<p id=\"gaps\">lost: {ring} (ring full), {rec} (recursion), {bad} unreadable; {corr} reconcile corrections over {rc} snapshots, {failed} failed; {untracked} sockets not tracked; {other:.1} transitions/s not drawn</p>\n\
         <p><a href=\"{path}\">{path}</a></p>\n</body></html>\n",
        ring = g.lost_ring_full,
        rec = g.lost_recursion,
        bad = g.unreadable,
        corr = g.corrections,
        rc = g.reconciles,
        failed = g.snapshot_errors,
        untracked = g.untracked,
        other = p.other_per_s,
        path = escape(telemetry_path),
    );
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tcp::TcpState;
    use crate::output::diagram::{FindingLine, StateView};

    fn picture() -> Picture {
        let mut p = Picture {
            time: "12:00:00".into(),
            interval_s: 1.0,
            dwell_window_s: 60.0,
            seeded: true,
            ..Picture::default()
        };
        p.states[TcpState::CloseWait.slot()] = StateView {
            count: 5,
            oldest_ns: Some(125_000_000_000),
            ..StateView::default()
        };
        p.states[TcpState::TimeWait.slot()].count = 12_345;
        p.findings.push(FindingLine {
            severity: "warning",
            kind: "close_wait_leak",
            statement: "5 sockets <stuck>".into(),
        });
        p
    }

    #[test]
    fn boxes_carry_their_state_and_count_and_the_page_has_no_script() {
        let page = String::from_utf8(page(&picture(), "/metrics")).unwrap();
        assert!(page.contains("data-state=\"CLOSE_WAIT\" data-count=\"5\""));
        assert!(page.contains(">oldest 2m<"));
        assert!(page.contains("data-state=\"TIME_WAIT\" data-count=\"12345\""));
        assert!(page.contains(">12.3k<"));
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(page.contains("warning close_wait_leak: 5 sockets &lt;stuck&gt;"));
        assert!(
            page.contains("lost: 0 (ring full), 0 (recursion)"),
            "{page}"
        );
        assert!(page.contains("href=\"/metrics\""));
        assert!(!page.contains("<script"));
        // One group per box, one per arrow.
        assert_eq!(page.matches("class=\"state\"").count(), PLACES.len());
        assert_eq!(page.matches("class=\"arrow\"").count(), ARROWS.len());
    }

    #[test]
    fn every_box_fits_in_the_picture() {
        for p in PLACES {
            let r = rect(p.node);
            assert!(r.x >= 0 && r.right() <= WIDTH && r.y >= 0 && r.bottom() + 20 <= HEIGHT);
        }
    }
}
