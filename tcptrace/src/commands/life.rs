//! `tcptrace life`: one line per finished connection.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::cli::{FilterArgs, KernelArgs, LogArgs, OutputArgs, parse_duration};
use crate::commands::{Shutdown, runtime, start_tracer, warn_lost_kernel_log};
use crate::host::netns;
use crate::model::cgroup::CgroupInfo;
use crate::model::connections::{ConnectionTable, Role};
use crate::model::snapshot::DiagSocket;
use crate::model::transition::Transition;
use crate::output::time::WallClock;
use crate::output::{Lines, OutputFormat, json, stdout_with_header, table};
use crate::pipeline::{Flow, Pipeline, RunOptions, Sink, StopReason, Tick};

#[derive(Debug, Args)]
pub struct LifeArgs {
    #[command(flatten)]
    pub out: OutputArgs,

    /// Print a connection when its socket closes, without waiting for its TIME_WAIT to end.
    #[arg(long)]
    pub no_time_wait: bool,

    /// Seconds between INET_DIAG snapshots that confirm and end TIME_WAIT.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_duration)]
    pub snapshot_interval: Duration,

    /// Connections tracked at once; beyond this the oldest is dropped (and counted).
    #[arg(long, value_name = "N", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(16..=16_777_216))]
    pub max_connections: u64,

    /// Also print listening sockets when they close.
    #[arg(long)]
    pub listeners: bool,

    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub kernel: KernelArgs,
}

struct LifeSink<W: Write> {
    table: ConnectionTable,
    lines: Lines<W>,
    format: OutputFormat,
    clock: WallClock,
    listeners: bool,
}

impl<W: Write> LifeSink<W> {
    /// Prints every completed story; `Stop` once `--count` is reached.
    fn emit(&mut self) -> io::Result<Flow> {
        while let Some(c) = self.table.next_finished() {
            if c.role == Role::Listener && !self.listeners {
                continue;
            }
            match self.format {
                OutputFormat::Table => {
                    table::connection_line(&self.clock, &c, &mut self.lines.line)
                }
                OutputFormat::Json => json::connection(&self.clock, &c, &mut self.lines.line)?,
            }
            if self.lines.emit()? == Flow::Stop {
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }
}

impl<W: Write> Sink for LifeSink<W> {
    fn transition(&mut self, t: &Transition, _: Option<&CgroupInfo>) -> io::Result<Flow> {
        self.table.apply(t);
        self.emit()
    }

    fn batch_end(&mut self) -> io::Result<()> {
        self.lines.flush()
    }

    fn tick(&mut self, tick: &Tick) {
        self.table.expire(tick.now_ns);
        // A write error here resurfaces on the next transition or flush.
        let _ = self.emit();
        let _ = self.lines.flush();
    }

    fn snapshot(&mut self, sockets: &[DiagSocket], taken_ns: u64) {
        self.table.snapshot(sockets, taken_ns);
        let _ = self.emit();
        let _ = self.lines.flush();
    }
}

pub fn run(args: LifeArgs, log: &LogArgs) -> anyhow::Result<ExitCode> {
    let filter = args.filter.to_filter()?;
    let (tracer, ring) = start_tracer(&filter, &args.kernel, log, &[])?;
    let runtime = runtime()?;
    let shutdown = Shutdown::register(&runtime)?;
    eprintln!("tcptrace: tracing connections (Ctrl-C to stop)");
    let header = table::connection_header();
    let Some(lines) = stdout_with_header(args.out.header(&header), args.out.count) else {
        return Ok(ExitCode::SUCCESS);
    };
    let mut table = ConnectionTable::new(args.max_connections as usize);
    table.skip_time_wait = args.no_time_wait;
    table.netns = netns::own();
    let sink = LifeSink {
        table,
        lines,
        format: args.out.output,
        clock: WallClock::now(),
        listeners: args.listeners,
    };
    let mut pipeline = Pipeline::new(&filter);
    pipeline.identity(tracer.identity(), netns::own());
    pipeline.subscribe(Box::new(sink));
    let snapshot = (!args.no_time_wait).then_some(args.snapshot_interval);
    let stop = shutdown.wait(args.out.duration);
    let reason = runtime.block_on(async {
        pipeline
            .run(
                ring,
                stop,
                RunOptions {
                    tick: Some(Duration::from_secs(1)),
                    snapshot,
                    snapshot_idle: false,
                    tracer: Some(&tracer),
                },
            )
            .await
    })?;
    let kernel = tracer.counters();
    warn_lost_kernel_log(&pipeline.stats, &kernel);
    if reason != StopReason::OutputClosed {
        eprintln!(
            "tcptrace: {} transitions, {} lost (ring full), {} lost (recursion)",
            pipeline.stats.delivered, kernel.ring_full, kernel.recursion_misses
        );
    }
    Ok(ExitCode::SUCCESS)
}
