//! `tcptrace doctor`: snapshot, watch transitions for a while, snapshot again, and report the
//! TCP pathologies found ([`crate::diagnosis`]) with evidence and advice.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use crate::cli::{FilterArgs, KernelArgs, LogArgs, ThresholdArgs, parse_duration};
use crate::commands::{Shutdown, needs, runtime, start_tracer, warn_lost_kernel_log};
use crate::diagnosis::evidence::{LazyOwners, human};
use crate::diagnosis::window::Window;
use crate::host::snapshot::{self, Request};
use crate::output::json;
use crate::output::report::{Report, explain};
use crate::output::time::WallClock;
use crate::pipeline::{Pipeline, RunOptions};

/// Connections a doctor window remembers at once.
const OBSERVED_SOCKETS: usize = 262_144;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DoctorFormat {
    /// Findings as indented text.
    Text,
    /// One JSON object (keys documented in the README).
    Json,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Seconds to watch transitions between the two snapshots (fractions allowed).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_duration, allow_negative_numbers = true)]
    pub duration: std::time::Duration,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = DoctorFormat::Text)]
    pub output: DoctorFormat,

    /// Explain every TCP state and finding kind, then exit (needs no privileges).
    #[arg(long)]
    pub explain: bool,

    #[command(flatten)]
    pub thresholds: ThresholdArgs,

    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub kernel: KernelArgs,
}

pub fn run(args: DoctorArgs, log: &LogArgs) -> anyhow::Result<ExitCode> {
    if args.explain {
        print!("{}", explain());
        return Ok(ExitCode::SUCCESS);
    }
    let filter = args.filter.to_filter()?;
    // The namespace asked for, else every namespace on the host, each judged on its own.
    let scope = args.filter.scope(&filter)?;
    // Findings judge whole connections: every transition of the selected sockets arrives.
    let sockets = filter.socket_level();
    let (mut tracer, ring) = start_tracer(&sockets, &args.kernel, log, &needs(&scope, true))?;
    let runtime = runtime()?;
    let shutdown = Shutdown::register(&runtime)?;
    let mut window = Window::new(OBSERVED_SOCKETS, filter, args.thresholds.to_thresholds());
    let stack = Request {
        stack: true,
        ..Request::SOCKETS
    };
    let mut start = snapshot::take(&scope, stack)?;
    let mut pipeline = Pipeline::new(&sockets, scope.clone());
    pipeline.identity(tracer.identity());
    pipeline.listener_map(tracer.take_listeners());
    pipeline.match_ids(&mut start);
    pipeline.seed_owners_from(&start);
    window.restart(&start);
    eprintln!(
        "tcptrace: watching TCP in {} for {} (Ctrl-C to stop early)",
        namespaces(&start),
        human(args.duration)
    );
    pipeline.subscribe(Box::new(&mut window));
    runtime
        .block_on(pipeline.run(
            ring,
            shutdown.wait(Some(args.duration)),
            RunOptions::default(),
        ))
        .context("reading transitions failed")?;
    let mut end = snapshot::take(
        &scope,
        Request {
            idle: true,
            ..stack
        },
    )?;
    pipeline.match_ids(&mut end);
    let stats = pipeline.stats;
    drop(pipeline);
    let kernel = tracer.counters();
    warn_lost_kernel_log(&stats, &kernel);

    let evaluation = window
        .evaluate(&end, &mut LazyOwners::default())
        .context("the diagnosis window was never started")?;
    let report = Report {
        time: WallClock::now().timestamp(end.taken_ns),
        findings: &evaluation.findings,
        sockets: &evaluation.sockets,
        namespaces: &end.namespaces,
        obs: window.observations(),
        kernel,
        window_s: (end.taken_ns.saturating_sub(start.taken_ns)) as f64 / 1e9,
    };
    let text = match args.output {
        DoctorFormat::Text => report.text(),
        DoctorFormat::Json => json::doctor(&report),
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(anyhow::Error::new(e).context("cannot write the report"));
    }
    Ok(ExitCode::from(report.exit_code()))
}

/// "netns blue", or "12 network namespaces".
fn namespaces(s: &crate::model::snapshot::Snapshot) -> String {
    match s.namespaces.as_slice() {
        [one] => one.described(),
        all => format!("{} network namespaces", all.len()),
    }
}
