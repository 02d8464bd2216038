//! Writing result lines to stdout: one reusable buffer, a line limit, flush per batch, and a
//! closed pipe reported as `BrokenPipe` so the command can end quietly.

use std::io::{self, Write};

use crate::cli::{OutputArgs, OutputFormat};
use crate::pipeline::Flow;

pub struct Lines<W: Write> {
    out: W,
    /// The line being built; callers format into it, then call [`Lines::emit`].
    pub line: String,
    shown: u64,
    limit: Option<u64>,
}

impl<W: Write> Lines<W> {
    pub fn new(out: W, limit: Option<u64>) -> Self {
        Self {
            out,
            line: String::with_capacity(512),
            shown: 0,
            limit,
        }
    }

    /// Writes `self.line` and a newline; `Stop` once the limit is reached.
    pub fn emit(&mut self) -> io::Result<Flow> {
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())?;
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

/// Buffered stdout with the table header written first (unless `--no-header`, or JSON).
/// `None` when stdout is already closed.
pub fn stdout_with_header(
    args: &OutputArgs,
    header: &str,
) -> Option<Lines<io::BufWriter<io::Stdout>>> {
    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
    if args.output == OutputFormat::Table && !args.no_header {
        writeln!(out, "{header}").and_then(|()| out.flush()).ok()?;
    }
    Some(Lines::new(out, args.count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_stops_and_flushes() {
        let mut lines = Lines::new(Vec::new(), Some(2));
        lines.line.push('a');
        assert_eq!(lines.emit().unwrap(), Flow::Continue);
        lines.line.clear();
        lines.line.push('b');
        assert_eq!(lines.emit().unwrap(), Flow::Stop);
        assert_eq!(lines.out, b"a\nb\n");
    }
}
