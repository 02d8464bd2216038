//! Everything tcptrace shows: tables and JSON lines on stdout, doctor's report, Prometheus
//! metrics and the HTTP endpoint that serves them, and the live state diagram (`diagram` the
//! model, `picture` its samples, `tui` for `top`, `svg` for serve's web page).

pub mod diagram;
pub mod http;
pub mod json;
pub mod metrics;
pub mod picture;
pub mod report;
pub mod svg;
pub mod table;
pub mod time;
pub mod tui;
pub mod web_config;

#[cfg(test)]
mod golden_tests;

use std::io::{self, Write};

use crate::pipeline::Flow;

/// How line-printing commands (`tail`, `life`) write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for a terminal.
    Table,
    /// One JSON object per line (keys documented in the README).
    Json,
}

/// Result lines on a writer: one reusable buffer, a line limit, flush per batch, and a closed
/// pipe reported as `BrokenPipe` so the command can end quietly.
pub struct Lines<W: Write> {
    out: W,
    /// The line being built; callers write into it, then call [`Lines::emit`].
    pub line: Vec<u8>,
    shown: u64,
    limit: Option<u64>,
}

impl<W: Write> Lines<W> {
    pub fn new(out: W, limit: Option<u64>) -> Self {
        Self {
            out,
            line: Vec::with_capacity(512),
            shown: 0,
            limit,
        }
    }

    /// Writes `self.line` and a newline; `Stop` once the limit is reached.
    pub fn emit(&mut self) -> io::Result<Flow> {
        self.line.push(b'\n');
        self.out.write_all(&self.line)?;
        self.shown += 1;
        if self.limit.is_some_and(|limit| self.shown >= limit) {
            self.out.flush()?;
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Buffered stdout with `header` written first (`None`: no header). `None` when stdout is
/// already closed.
pub fn stdout_with_header(
    header: Option<&str>,
    limit: Option<u64>,
) -> Option<Lines<io::BufWriter<io::Stdout>>> {
    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
    if let Some(header) = header {
        writeln!(out, "{header}").and_then(|()| out.flush()).ok()?;
    }
    Some(Lines::new(out, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_stops_and_flushes() {
        let mut lines = Lines::new(Vec::new(), Some(2));
        lines.line.push(b'a');
        assert_eq!(lines.emit().unwrap(), Flow::Continue);
        lines.line.clear();
        lines.line.push(b'b');
        assert_eq!(lines.emit().unwrap(), Flow::Stop);
        assert_eq!(lines.out, b"a\nb\n");
    }
}
