//! `tcptrace tail`: one line per transition, on stdout.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Args;

use crate::cli::{FilterArgs, KernelArgs, LogArgs, OutputArgs};
use crate::commands::{
    Shutdown, needs, refuse_unseen_states, runtime, start_tracer, warn_lost_kernel_log,
};
use crate::model::cgroup::CgroupInfo;
use crate::model::filter::Filter;
use crate::model::tcp::TcpState;
use crate::model::transition::Transition;
use crate::output::table::{self, TransitionTable};
use crate::output::time::WallClock;
use crate::output::{Lines, OutputFormat, json, stdout_with_header};
use crate::pipeline::{Flow, Pipeline, RunOptions, Sink, StopReason};

#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub out: OutputArgs,

    /// Everything at full width, with the socket's network namespace, container and cgroup
    /// (the table otherwise fits $COLUMNS, the terminal, or 100 columns).
    #[arg(short, long)]
    pub wide: bool,

    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub kernel: KernelArgs,
}

/// How `tail` writes each transition.
pub enum Format {
    Table(TransitionTable),
    Json { clock: WallClock },
}

/// Writes each transition as a table or JSON line.
pub struct TailSink<W: Write> {
    lines: Lines<W>,
    format: Format,
    /// Transitions to show when the pipeline delivers whole sockets (`serve --tail`).
    only: Option<Filter>,
}

impl<W: Write> TailSink<W> {
    pub fn new(lines: Lines<W>, format: Format) -> Self {
        Self {
            lines,
            format,
            only: None,
        }
    }

    /// Shows only the transitions `filter`'s event parts select (states, owners).
    pub fn only(mut self, filter: Filter) -> Self {
        self.only = Some(filter);
        self
    }
}

impl<W: Write> Sink for TailSink<W> {
    fn transition(&mut self, t: &Transition, cgroup: Option<&CgroupInfo>) -> io::Result<Flow> {
        if self.only.as_ref().is_some_and(|f| !f.matches_event(t)) {
            return Ok(Flow::Continue);
        }
        let line = &mut self.lines.line;
        match &self.format {
            Format::Table(table) => table.line(t, cgroup, line),
            Format::Json { clock } => json::transition(clock, t, cgroup, line)?,
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
    refuse_unseen_states(&filter, &[TcpState::TimeWait, TcpState::NewSynRecv])?;
    let scope = args.filter.scope(&filter)?;
    let (mut tracer, ring) = start_tracer(&filter, &args.kernel, log, &needs(&scope, false))?;

    let runtime = runtime()?;
    let shutdown = Shutdown::register(&runtime)?;
    let mut pipeline = Pipeline::new(&filter, scope);
    pipeline.identity(tracer.identity());
    pipeline.listener_map(tracer.take_listeners());
    // Owners of the sockets that exist already are known before the user is told to start.
    pipeline.seed_owners();
    eprintln!("tcptrace: tracing TCP state transitions (Ctrl-C to stop)");
    let width = (!args.wide).then(table::terminal_width);
    let format = match args.out.output {
        OutputFormat::Table => Format::Table(TransitionTable::new(
            WallClock::now(),
            args.out.time_format,
            width,
        )),
        OutputFormat::Json => Format::Json {
            clock: WallClock::now(),
        },
    };
    let header = match &format {
        Format::Table(table) => table.header(),
        Format::Json { .. } => String::new(),
    };
    let Some(lines) = stdout_with_header(args.out.header(&header), args.out.count) else {
        return Ok(ExitCode::SUCCESS);
    };
    let sink = TailSink::new(lines, format);
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
            "tcptrace: {} shown, {} filtered out ({} in kernel, {} in agent), {} lost (ring full), {} lost (recursion), {} unreadable; {} sent by the kernel; {} caught by the nested program",
            stats.delivered,
            kernel.filtered + stats.filtered,
            kernel.filtered,
            stats.filtered,
            kernel.ring_full,
            kernel.recursion_misses,
            stats.decode_errors + kernel.read_failed,
            kernel.sent,
            kernel.nested,
        );
    }
    Ok(ExitCode::SUCCESS)
}
