//! `tcptrace tail`: one line per transition, on stdout.

use std::io::{self, Write};
use std::process::ExitCode;

use crate::Shutdown;
use crate::cli::{OutputFormat, TailArgs};
use crate::format::{self, WallClock};
use crate::loader::Tracer;
use crate::output::{self, Lines};
use crate::pipeline::{Flow, Pipeline, RunOptions, Sink, StopReason};

/// Writes each transition as a table or JSON line.
pub struct TailSink<W: Write> {
    lines: Lines<W>,
    format: OutputFormat,
    wide: bool,
    clock: WallClock,
}

impl<W: Write> TailSink<W> {
    pub fn new(lines: Lines<W>, format: OutputFormat, wide: bool) -> Self {
        Self {
            lines,
            format,
            wide,
            clock: WallClock::now(),
        }
    }
}

impl<W: Write> Sink for TailSink<W> {
    fn transition(
        &mut self,
        t: &crate::event::Transition,
        cgroup: Option<&crate::cgroup::CgroupInfo>,
    ) -> io::Result<Flow> {
        let line = &mut self.lines.line;
        match self.format {
            OutputFormat::Table => {
                format::table_line(&self.clock, t, self.wide.then_some(cgroup), line)
            }
            OutputFormat::Json => format::json_line(&self.clock, t, cgroup, line),
        }
        self.lines.emit()
    }

    /// Lines reach a pipe as soon as the batch they arrived in is written, never later.
    fn batch_end(&mut self) -> io::Result<()> {
        self.lines.flush()
    }
}

pub fn run(args: TailArgs) -> anyhow::Result<ExitCode> {
    let filter = args.filter.to_filter()?;
    let (tracer, ring) = Tracer::start(&filter.kernel(), args.kernel.sizes())?;

    let runtime = crate::runtime()?;
    let shutdown = Shutdown::register(&runtime)?;
    eprintln!("tcptrace: tracing TCP state transitions (Ctrl-C to stop)");
    let Some(lines) = output::stdout_with_header(&args.out, &format::table_header(args.wide))
    else {
        return Ok(ExitCode::SUCCESS);
    };
    let sink = TailSink::new(lines, args.out.output, args.wide);
    let mut pipeline = Pipeline::new(&filter);
    if args.wide || args.out.output == OutputFormat::Json {
        pipeline.resolve_cgroups();
    }
    pipeline.subscribe(Box::new(sink));

    let stop = shutdown.wait(args.out.duration);
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
            "tcptrace: {} shown, {} filtered out ({} in kernel, {} in agent), {} lost (ring full), {} lost (recursion), {} unreadable; {} sent by the kernel",
            stats.delivered,
            kernel.filtered + stats.filtered,
            kernel.filtered,
            stats.filtered,
            kernel.ring_full,
            kernel.recursion_misses,
            stats.decode_errors + kernel.read_failed,
            kernel.sent,
        );
    }
    Ok(ExitCode::SUCCESS)
}
