//! `tcptrace tail`: one line per transition, on stdout.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Args;

use crate::cli::{FilterArgs, KernelArgs, LogArgs, OutputArgs};
use crate::commands::{Shutdown, runtime, start_tracer, warn_lost_kernel_log};
use crate::model::cgroup::CgroupInfo;
use crate::model::transition::Transition;
use crate::output::time::WallClock;
use crate::output::{Lines, OutputFormat, json, stdout_with_header, table};
use crate::pipeline::{Flow, Pipeline, RunOptions, Sink, StopReason};

#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub out: OutputArgs,

    /// Table with the socket's network namespace, container and cgroup.
    #[arg(short, long)]
    pub wide: bool,

    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub kernel: KernelArgs,
}

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
    fn transition(&mut self, t: &Transition, cgroup: Option<&CgroupInfo>) -> io::Result<Flow> {
        let line = &mut self.lines.line;
        match self.format {
            OutputFormat::Table => {
                table::transition_line(&self.clock, t, self.wide.then_some(cgroup), line)
            }
            OutputFormat::Json => json::transition(&self.clock, t, cgroup, line)?,
        }
        self.lines.emit()
    }

    /// Lines reach a pipe as soon as the batch they arrived in is written, never later.
    fn batch_end(&mut self) -> io::Result<()> {
        self.lines.flush()
    }
}

pub fn run(args: TailArgs, log: &LogArgs) -> anyhow::Result<ExitCode> {
    let filter = args.filter.to_filter()?;
    let (tracer, ring) = start_tracer(&filter, &args.kernel, log, &[])?;

    let runtime = runtime()?;
    let shutdown = Shutdown::register(&runtime)?;
    eprintln!("tcptrace: tracing TCP state transitions (Ctrl-C to stop)");
    let header = table::transition_header(args.wide);
    let Some(lines) = stdout_with_header(args.out.header(&header), args.out.count) else {
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
    warn_lost_kernel_log(&stats, &kernel);
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
