//! `tcptrace life`: one line per finished connection.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::cli::{FilterArgs, KernelArgs, LogArgs, OutputArgs, parse_duration};
use crate::commands::{
    Shutdown, needs, refuse_unseen_states, runtime, start_tracer, warn_lost_kernel_log,
};
use crate::host::snapshot::{self, Request};
use crate::model::cgroup::CgroupInfo;
use crate::model::connections::{ConnectionTable, DISCARD_WINDOW_NS, Role};
use crate::model::filter::Filter;
use crate::model::snapshot::Snapshot;
use crate::model::tcp::TcpState;
use crate::model::transition::Transition;
use crate::output::time::WallClock;
use crate::output::{Lines, OutputFormat, json, stdout_with_header, table};
use crate::pipeline::{Flow, Pipeline, RunOptions, Sink, Snapshots, StopReason, Tick};

#[derive(Debug, Args)]
pub struct LifeArgs {
    #[command(flatten)]
    pub out: OutputArgs,

    /// Print an actively closed connection when its TIME_WAIT ends (up to 60 s later), with
    /// how long it lasted, instead of at its close. At exit the ones still waiting are
    /// printed with their TIME_WAIT so far.
    #[arg(long)]
    pub time_wait: bool,

    /// The default: print each connection when its socket closes.
    #[arg(long, hide = true, conflicts_with = "time_wait")]
    pub no_time_wait: bool,

    /// With --time-wait: seconds between INET_DIAG snapshots that confirm and end TIME_WAIT.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_duration, allow_negative_numbers = true)]
    pub snapshot_interval: Duration,

    /// Connections tracked at once; when full, a sixteenth of the table (the connections opened
    /// longest ago) is dropped and counted.
    #[arg(long, value_name = "N", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(16..=16_777_216))]
    pub max_connections: u64,

    /// Also print listening sockets when they close.
    #[arg(long)]
    pub listeners: bool,

    /// Every column at full width (the table otherwise fits $COLUMNS, the terminal, or 100
    /// columns, leaving out the RTT, retransmission, TIME_WAIT, handshake, byte and time
    /// columns, in that order, when it must).
    #[arg(short, long)]
    pub wide: bool,

    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub kernel: KernelArgs,
}

/// Prints finished stories the filter selects (whole connections: see
/// [`Filter::matches_story`]), and counts what it printed and what was left at exit.
struct LifeSink<W: Write> {
    table: ConnectionTable,
    lines: Lines<W>,
    format: OutputFormat,
    clock: WallClock,
    rows: table::ConnectionTable,
    listeners: bool,
    filter: Filter,
    printed: u64,
    /// Printed at exit with their TIME_WAIT so far.
    cut_short: u64,
    /// Not closed at exit, so not printed.
    open_at_exit: u64,
}

impl<W: Write> LifeSink<W> {
    /// Prints every completed story; `Stop` once `--count` is reached.
    fn emit(&mut self) -> io::Result<Flow> {
        while let Some(c) = self.table.next_finished() {
            if c.role == Role::Listener && !self.listeners || !self.filter.matches_story(&c) {
                continue;
            }
            match self.format {
                OutputFormat::Table => self.rows.line(&c, &mut self.lines.line),
                OutputFormat::Json => json::connection(&self.clock, &c, &mut self.lines.line)?,
            }
            self.printed += 1;
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

    fn snapshot(&mut self, snapshot: &Snapshot) {
        self.table.snapshot(snapshot);
        let _ = self.emit();
        let _ = self.lines.flush();
    }

    /// Nothing waiting is dropped: TIME_WAITs still running are printed as they stand.
    fn finish(&mut self, now_ns: u64) -> io::Result<()> {
        self.open_at_exit = self.table.open() as u64;
        let before = self.printed;
        self.table.flush(now_ns);
        self.emit()?;
        self.cut_short = self.printed - before;
        self.lines.flush()
    }
}

pub fn run(args: LifeArgs, log: &LogArgs) -> anyhow::Result<ExitCode> {
    let filter = args.filter.to_filter()?;
    refuse_unseen_states(&filter, &[TcpState::NewSynRecv])?;
    // Whole connections: the kernel and the pipeline keep every transition of the sockets the
    // filter's socket-level parts select; states and owners are judged per story.
    let sockets = filter.socket_level();
    let scope = args.filter.scope(&filter)?;
    let (mut tracer, ring) = start_tracer(&sockets, &args.kernel, log, &needs(&scope, false))?;
    let runtime = runtime()?;
    let shutdown = Shutdown::register(&runtime)?;
    let rows = table::ConnectionTable::new(
        WallClock::now(),
        args.out.time_format,
        (!args.wide).then(table::terminal_width),
    );
    let header = rows.header();
    let Some(lines) = stdout_with_header(args.out.header(&header), args.out.count) else {
        return Ok(ExitCode::SUCCESS);
    };
    let mut table = ConnectionTable::new(args.max_connections as usize);
    table.wait_time_wait = args.time_wait;
    // Attached first, then listed: a listener is in the list or its CLOSE -> LISTEN is in the
    // ring, so the roles of sockets older than tcptrace are known from their first transition.
    match snapshot::take(&scope, Request::LISTENERS) {
        Ok(listeners) => table.learn_listeners(&listeners),
        Err(e) => log::warn!("cannot list the listeners: {e:#}"),
    }
    let mut sink = LifeSink {
        table,
        lines,
        format: args.out.output,
        clock: WallClock::now(),
        rows,
        listeners: args.listeners,
        filter,
        printed: 0,
        cut_short: 0,
        open_at_exit: 0,
    };
    let mut pipeline = Pipeline::new(&sockets, scope);
    pipeline.identity(tracer.identity());
    pipeline.listener_map(tracer.take_listeners());
    // Owners of the sockets that exist already are known before the user is told to start.
    pipeline.seed_owners();
    eprintln!("tcptrace: tracing connections (Ctrl-C to stop)");
    pipeline.subscribe(Box::new(&mut sink));
    // With --time-wait, snapshots confirm and end each TIME_WAIT.
    let snapshots = if args.time_wait {
        Snapshots::Every(args.snapshot_interval)
    } else {
        Snapshots::Never
    };
    let stop = shutdown.wait(args.out.duration);
    let reason = runtime.block_on(async {
        pipeline
            .run(
                ring,
                stop,
                RunOptions {
                    tick: Some(Duration::from_secs(1)),
                    snapshots,
                    tracer: Some(&tracer),
                    ..RunOptions::default()
                },
            )
            .await
    });
    let stats = pipeline.stats;
    // The pipeline borrows the sink: gone before the sink is read (or dropped on error).
    drop(pipeline);
    let reason = reason?;
    let kernel = tracer.counters();
    warn_lost_kernel_log(&stats, &kernel);
    if reason != StopReason::OutputClosed {
        eprintln!(
            "tcptrace: {} connections printed ({} of them at exit, with their TIME_WAIT so far), {} still open (not printed), {} evicted; {} transitions, {} lost (ring full), {} lost (recursion)",
            sink.printed,
            sink.cut_short,
            sink.open_at_exit,
            sink.table.evicted,
            stats.delivered,
            kernel.ring_full,
            kernel.recursion_misses
        );
        if sink.table.discarded > 0 {
            eprintln!(
                "tcptrace: {} server children were discarded by the kernel at birth (SYN_RECV -> CLOSE within {} ms: lost the race for their request socket); not connections, not printed",
                sink.table.discarded,
                DISCARD_WINDOW_NS / 1_000_000
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
