//! `tcptrace doctor`: snapshot, watch transitions for a while, snapshot again, and report the
//! TCP pathologies found ([`crate::diagnosis`]) with evidence and advice.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use crate::cli::{FilterArgs, KernelArgs, LogArgs, ThresholdArgs, parse_duration};
use crate::commands::{Shutdown, runtime, start_tracer, warn_lost_kernel_log};
use crate::diagnosis::evidence::{LazyOwners, human};
use crate::diagnosis::window::{View, Window};
use crate::host::caps;
use crate::host::netns;
use crate::host::snapshot::NamespaceSnapshot;
use crate::output::json;
use crate::output::report::{Report, explain};
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
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_duration)]
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

fn view(s: &NamespaceSnapshot) -> View<'_> {
    View {
        sockets: &s.sockets,
        taken_ns: s.taken_ns,
        counters: &s.counters,
        settings: &s.settings,
    }
}

pub fn run(args: DoctorArgs, log: &LogArgs) -> anyhow::Result<ExitCode> {
    if args.explain {
        print!("{}", explain());
        return Ok(ExitCode::SUCCESS);
    }
    let filter = args.filter.to_filter()?;
    let netns_path = match (&args.filter.netns_path, filter.netns) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(inode)) if Some(inode) != netns::own() => {
            Some(netns::path_of(inode).with_context(|| {
                format!("no process is in network namespace {inode}; pass --netns-path instead")
            })?)
        }
        _ => None,
    };
    // Owners of sockets no transition told come from /proc/PID/fd; another namespace's
    // snapshots are taken from a thread that enters it.
    let mut needs = caps::OWNERS.to_vec();
    if netns_path.is_some() {
        needs.push(caps::ENTER_NETNS);
    }
    let (tracer, ring) = start_tracer(&filter, &args.kernel, log, &needs)?;
    let runtime = runtime()?;
    let shutdown = Shutdown::register(&runtime)?;
    let mut window = Window::new(
        OBSERVED_SOCKETS,
        filter.clone(),
        args.thresholds.to_thresholds(),
    );
    let start = NamespaceSnapshot::take(netns_path.as_deref(), false)?;
    window.restart(&view(&start));
    eprintln!(
        "tcptrace: watching TCP for {} (Ctrl-C to stop early)",
        human(args.duration)
    );
    let mut pipeline = Pipeline::new(&filter);
    pipeline.identity(tracer.identity(), filter.netns.or_else(netns::own));
    pipeline.subscribe(Box::new(&mut window));
    runtime
        .block_on(pipeline.run(
            ring,
            shutdown.wait(Some(args.duration)),
            RunOptions::default(),
        ))
        .context("reading transitions failed")?;
    let mut end = NamespaceSnapshot::take(netns_path.as_deref(), true)?;
    pipeline.match_ids(&mut end.sockets, end.taken_ns);
    let stats = pipeline.stats;
    drop(pipeline);
    let kernel = tracer.counters();
    warn_lost_kernel_log(&stats, &kernel);

    let evaluation = window
        .evaluate(&view(&end), &mut LazyOwners::default())
        .context("the diagnosis window was never started")?;
    let report = Report {
        findings: &evaluation.findings,
        sockets: &evaluation.sockets,
        settings: &end.settings,
        obs: window.observations(),
        kernel,
        window_s: (end.taken_ns.saturating_sub(start.taken_ns)) as f64 / 1e9,
        netns: filter.netns.or_else(netns::own),
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
