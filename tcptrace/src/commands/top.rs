//! `tcptrace top`: the TCP state machine of this host, live, in the terminal.
//!
//! Two threads, as in `serve`: the event thread owns the kernel program and runs serve's own
//! sink (the socket table seeded from a snapshot and reconciled, the metrics, doctor's
//! window, here keeping whole stories) which samples a [`crate::output::diagram::Picture`]
//! every second; the main thread owns the terminal, draws the latest picture and reads keys.
//! A new filter (`f`) starts a new event thread with that filter, seeded from a snapshot like
//! the first, and stops the old one once the new one is ready.

use std::process::ExitCode;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::{Args, Parser};
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use tokio::sync::Notify;

use crate::cli::{FilterArgs, KernelArgs, LogArgs, ThresholdArgs, parse_duration};
use crate::commands::{Shutdown, refuse_unseen_states, runtime, warn_lost_kernel_log};
use crate::diagnosis::window::Window;
use crate::host::clock::monotonic_ns;
use crate::host::snapshot::{self, Request};
use crate::kernel::loader::{KernelCounters, Tracer};
use crate::model::sockets::SocketTable;
use crate::model::tcp::TcpState;
use crate::output::metrics::{Breakdowns, Metrics, MetricsSink, window_capacity};
use crate::output::picture::{Feed, Sampler};
use crate::output::tui::terminal::Screen;
use crate::output::tui::{self, Action, App};
use crate::pipeline::{Pipeline, RunOptions, Snapshots, Stats};

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Seconds between INET_DIAG snapshots that correct the counts; doctor's findings (the
    /// banner) are evaluated at each, over the interval before it.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_duration, allow_negative_numbers = true)]
    pub reconcile_interval: Duration,

    /// Seconds of history the dwell quantiles (p50/p99 per state) cover.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_duration, allow_negative_numbers = true)]
    pub dwell_window: Duration,

    /// Sockets listed per state on `s` (the oldest).
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub list: u64,

    /// Sockets tracked for the counts (beyond this, new sockets are counted as not tracked
    /// and picked up by the next snapshot if room).
    #[arg(long, value_name = "N", default_value_t = 262_144, value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    pub max_tracked_sockets: u64,

    /// Where doctor's findings start (the banner).
    #[command(flatten)]
    pub thresholds: ThresholdArgs,

    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub kernel: KernelArgs,
}

/// The filter as typed at the `f` prompt: the CLI's filter flags.
#[derive(Debug, Parser)]
#[command(no_binary_name = true, disable_help_flag = true)]
struct FilterLine {
    #[command(flatten)]
    filter: FilterArgs,
}

/// Parses the `f` prompt's text; the error is one line.
fn parse_filter(text: &str) -> Result<FilterArgs, String> {
    FilterLine::try_parse_from(text.split_whitespace())
        .map(|l| l.filter)
        .map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad filter").to_owned();
            first.trim_start_matches("error: ").to_owned()
        })
}

/// The filter flags of `f` as a command line would give them.
fn describe(f: &FilterArgs) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut flag = |name: &str, value: String| {
        words.push(format!("--{name}"));
        words.push(value);
    };
    f.ports.iter().for_each(|p| flag("port", p.to_string()));
    f.lports.iter().for_each(|p| flag("lport", p.to_string()));
    f.rports.iter().for_each(|p| flag("rport", p.to_string()));
    f.addrs.iter().for_each(|a| flag("addr", a.to_string()));
    f.states
        .iter()
        .for_each(|s| flag("state", s.label().to_owned()));
    f.pids.iter().for_each(|p| flag("pid", p.to_string()));
    f.comms.iter().for_each(|c| flag("comm", c.clone()));
    f.cgroups.iter().for_each(|c| flag("cgroup", c.clone()));
    f.containers
        .iter()
        .for_each(|c| flag("container", c.clone()));
    if let Some(n) = f.netns {
        flag("netns", n.to_string());
    }
    if let Some(p) = &f.netns_path {
        flag("netns-path", p.display().to_string());
    }
    if f.ipv4 {
        words.push("-4".into());
    }
    if f.ipv6 {
        words.push("-6".into());
    }
    words.join(" ")
}

/// What the event thread reports when it ends.
struct Ended {
    stats: Stats,
    kernel: KernelCounters,
}

/// One traced run with one filter: its event thread and the pictures it publishes.
struct Session {
    feed: Feed,
    stop: Arc<Notify>,
    thread: Option<JoinHandle<anyhow::Result<Ended>>>,
}

/// What every session shares: the command's settings.
struct Settings<'a> {
    args: &'a TopArgs,
    log: &'a LogArgs,
}

impl Session {
    /// Loads the kernel program with `filter`, seeds the counts from a snapshot and starts
    /// sampling. Returns once the first picture holds the snapshot (or after 60 s).
    fn start(settings: &Settings<'_>, filter_args: &FilterArgs) -> anyhow::Result<Self> {
        let Settings { args, log } = settings;
        let filter = filter_args.to_filter()?;
        refuse_unseen_states(&filter, &[TcpState::NewSynRecv])?;
        // As serve: whole connections reach the sinks, which judge states and owners.
        let sockets = filter.socket_level();
        let scope = filter_args.scope(&filter)?;
        // Not `start_tracer`: `f` loads the program again with the new filter, so top keeps
        // the capabilities it was started with (it is run by a person at a terminal).
        let (mut tracer, ring) = Tracer::start(&sockets.kernel(), args.kernel.sizes(log))?;
        let tracked = args.max_tracked_sockets as usize;
        let mut pipeline = Pipeline::new(&sockets, scope.clone());
        pipeline.identity(tracer.identity());
        pipeline.listener_map(tracer.take_listeners());
        pipeline.seed_owners();
        let capacity = window_capacity(tracked);
        let mut window = Window::new(capacity, filter.clone(), args.thresholds.to_thresholds())
            .with_stories(capacity);
        match snapshot::take(&scope, Request::LISTENERS) {
            Ok(listening) => window.learn_listeners(&listening),
            Err(e) => log::warn!("cannot list the listeners: {e:#}"),
        }
        let feed = Feed::default();
        let sampler = Sampler::new(
            feed.clone(),
            args.dwell_window.as_nanos() as u64,
            args.list as usize,
            monotonic_ns(),
        );
        let (seeded_tx, seeded_rx) = std::sync::mpsc::channel();
        let sink = MetricsSink::new(
            Metrics::new(Breakdowns::default()),
            SocketTable::new(tracked, filter),
            window,
        )
        .with_diagram(sampler)
        .notify_seeded(seeded_tx);
        pipeline.subscribe(Box::new(sink));
        let stop = Arc::new(Notify::new());
        let stop_events = stop.clone();
        let reconcile = args.reconcile_interval;
        let thread = std::thread::Builder::new()
            .name("tcptrace-events".into())
            .spawn(move || {
                let rt = runtime()?;
                let shutdown = Shutdown::register(&rt)?;
                let result = rt.block_on(pipeline.run(
                    ring,
                    async {
                        tokio::select! {
                            () = stop_events.notified() => {}
                            () = shutdown.wait(None) => {}
                        }
                    },
                    RunOptions {
                        tick: Some(Duration::from_secs(1)),
                        snapshots: Snapshots::Every(reconcile),
                        snapshot_idle: true,
                        snapshot_stack: true,
                        time_wait_overflows: true,
                        tracer: Some(&tracer),
                    },
                ));
                result.context("reading transitions failed")?;
                Ok(Ended {
                    stats: pipeline.stats,
                    kernel: tracer.counters(),
                })
            })
            .context("cannot start the event thread")?;
        let mut session = Self {
            feed,
            stop,
            thread: Some(thread),
        };
        // The first frame holds the seed: TIME_WAIT and older sockets counted.
        if seeded_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            if session.finished() {
                return Err(session
                    .end()
                    .err()
                    .unwrap_or_else(|| anyhow!("tracing stopped")));
            }
            log::warn!("no INET_DIAG seed snapshot yet; counts start at 0");
        }
        Ok(session)
    }

    /// The event thread ended by itself (a signal, an error).
    fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops tracing and waits for the event thread.
    fn end(&mut self) -> anyhow::Result<Ended> {
        self.stop.notify_one();
        let thread = self
            .thread
            .take()
            .ok_or_else(|| anyhow!("tracing already stopped"))?;
        thread
            .join()
            .map_err(|_| anyhow!("the event thread panicked"))?
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.end();
        }
    }
}

/// How often the screen is redrawn (pictures change once a second; keys are read between).
const FRAME: Duration = Duration::from_millis(250);

pub fn run(args: TopArgs, log: &LogArgs) -> anyhow::Result<ExitCode> {
    tui::terminal::require()?;
    if !matches!(args.kernel.keep_caps, crate::host::caps::Keep::None) {
        log::warn!(
            "--capabilities.keep has no effect on top: it keeps its capabilities to load the \
             program again when `f` changes the filter"
        );
    }
    let settings = Settings { args: &args, log };
    let mut session = Session::start(&settings, &args.filter)?;
    eprintln!("tcptrace: tracing; drawing the state diagram (q to quit)");
    let mut screen = Screen::take()?;
    let mut app = App::new(describe(&args.filter));
    let mut frozen = session.feed.latest();
    let result = loop {
        session.feed.want(app.wanted());
        let picture = if app.paused {
            frozen.clone()
        } else {
            frozen = session.feed.latest();
            frozen.clone()
        };
        if let Err(e) = screen.terminal.draw(|f| tui::draw(f, &app, &picture)) {
            break Err(anyhow!("cannot draw on the terminal: {e}"));
        }
        if session.finished() {
            break Ok(());
        }
        match event::poll(FRAME) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => break Err(anyhow!("cannot read the terminal: {e}")),
        }
        let key = match event::read() {
            Ok(Event::Key(key)) if key.kind == KeyEventKind::Press => key,
            Ok(_) => continue,
            Err(e) => break Err(anyhow!("cannot read the terminal: {e}")),
        };
        match app.key(key, &picture) {
            Action::None => {}
            Action::Quit => break Ok(()),
            Action::Filter(text) => {
                let parsed = parse_filter(&text);
                app.status = Some(format!("loading the program with filter `{text}`…"));
                let _ = screen.terminal.draw(|f| tui::draw(f, &app, &picture));
                app.status = match parsed
                    .and_then(|f| Session::start(&settings, &f).map_err(|e| format!("{e:#}")))
                {
                    Ok(new) => {
                        let _ = session.end();
                        session = new;
                        app.filter = text;
                        app.paused = false;
                        None
                    }
                    Err(e) => Some(format!("filter not applied: {e}")),
                };
                // Warnings printed while loading went to the same terminal: paint it anew.
                let _ = screen.terminal.clear();
            }
        }
    };
    drop(screen);
    let ended = session.end();
    result?;
    let ended = ended?;
    warn_lost_kernel_log(&ended.stats, &ended.kernel);
    eprintln!(
        "tcptrace: {} transitions drawn, {} lost (ring full), {} lost (recursion), {} unreadable; {} sent by the kernel",
        ended.stats.delivered,
        ended.kernel.ring_full,
        ended.kernel.recursion_misses,
        ended.stats.decode_errors + ended.kernel.read_failed,
        ended.kernel.sent,
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_takes_the_clis_filter_flags_and_says_what_is_wrong_in_one_line() {
        let f = parse_filter("--port 9000 --comm python3 --state close_wait").unwrap();
        assert_eq!(f.ports, [9000]);
        assert_eq!(f.comms, ["python3"]);
        assert_eq!(
            describe(&f),
            "--port 9000 --state close_wait --comm python3"
        );
        assert_eq!(describe(&parse_filter("").unwrap()), "");
        let err = parse_filter("--port 70000").unwrap_err();
        assert!(err.contains("70000") && !err.contains('\n'), "{err}");
        let err = parse_filter("--bogus").unwrap_err();
        assert!(err.contains("--bogus"), "{err}");
    }
}
