//! `tcptrace tail`: one line per transition, on stdout.

use std::io::{self, Write};
use std::process::ExitCode;

use crate::Shutdown;
use crate::cli::{OutputFormat, TailArgs};
use crate::format::{self, WallClock};
use crate::loader::Tracer;
use crate::pipeline::{Flow, Pipeline, RunOptions, Sink, StopReason};

/// Writes each transition as a table or JSON line.
pub struct TailSink<W: Write> {
    out: W,
    format: OutputFormat,
    wide: bool,
    clock: WallClock,
    line: String,
    shown: u64,
    limit: Option<u64>,
}

impl<W: Write> TailSink<W> {
    pub fn new(out: W, format: OutputFormat, wide: bool, limit: Option<u64>) -> Self {
        Self {
            out,
            format,
            wide,
            clock: WallClock::now(),
            line: String::with_capacity(256),
            shown: 0,
            limit,
        }
    }
}

impl<W: Write> Sink for TailSink<W> {
    fn transition(
        &mut self,
        t: &crate::event::Transition,
        cgroup: Option<&crate::cgroup::CgroupInfo>,
    ) -> io::Result<Flow> {
        match self.format {
            OutputFormat::Table => {
                let wide = self.wide.then_some(cgroup);
                format::table_line(&self.clock, t, wide, &mut self.line);
            }
            OutputFormat::Json => format::json_line(&self.clock, t, cgroup, &mut self.line),
        }
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())?;
        self.shown += 1;
        if self.limit.is_some_and(|limit| self.shown >= limit) {
            self.out.flush()?;
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }

    /// Lines reach a pipe as soon as the batch they arrived in is written, never later.
    fn batch_end(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

pub fn run(args: TailArgs) -> anyhow::Result<ExitCode> {
    let filter = args.filter.to_filter()?;
    let (tracer, ring) = Tracer::start(&filter.kernel(), args.kernel.sizes())?;

    let runtime = crate::runtime()?;
    let shutdown = Shutdown::register(&runtime)?;
    eprintln!("tcptrace: tracing TCP state transitions (Ctrl-C to stop)");
    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
    if args.output == OutputFormat::Table && !args.no_header {
        let header = format::table_header(args.wide);
        if writeln!(out, "{header}")
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let sink = TailSink::new(out, args.output, args.wide, args.count);
    let mut pipeline = Pipeline::new(&filter);
    if args.wide || args.output == OutputFormat::Json {
        pipeline.resolve_cgroups();
    }
    pipeline.subscribe(Box::new(sink));

    let stop = shutdown.wait(args.duration);
    let reason = runtime.block_on(pipeline.run(ring, stop, RunOptions::default()));
    let reason = match reason {
        Ok(r) => r,
        Err(e) => return Err(anyhow::Error::new(e).context("reading transitions failed")),
    };

    let stats = pipeline.stats;
    drop(pipeline);
    let kernel = tracer.counters();
    if reason != StopReason::OutputClosed {
        eprintln!(
            "tcptrace: {} shown, {} filtered out ({} in kernel, {} in agent), {} lost (ring full), {} lost (recursion), {} unreadable",
            stats.delivered,
            kernel.filtered + stats.filtered,
            kernel.filtered,
            stats.filtered,
            kernel.ring_full,
            kernel.recursion_misses,
            stats.decode_errors + kernel.read_failed,
        );
    }
    Ok(ExitCode::SUCCESS)
}
