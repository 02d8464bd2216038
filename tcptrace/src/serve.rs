//! `tcptrace serve`: the Prometheus exporter.
//!
//! Two threads: the event thread owns the kernel program, reads the ring, updates metrics and
//! the socket table, and publishes gauges every second; the main thread serves HTTP. A scrape
//! only gathers and encodes, so it never delays event processing.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use tokio::sync::Notify;

use crate::Shutdown;
use crate::cli::{OutputFormat, ServeArgs};
use crate::http::{self, Site};
use crate::loader::Tracer;
use crate::metrics::{Metrics, MetricsSink};
use crate::pipeline::{Pipeline, RunOptions, StopReason};
use crate::sockets::SocketTable;
use crate::tail::TailSink;

fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                " (another exporter or tcptrace is using it; pick another with --web.listen-address)"
            }
            std::io::ErrorKind::AddrNotAvailable => " (no local interface has that address)",
            _ => "",
        };
        anyhow!("cannot listen on {addr}: {e}{hint}")
    })?;
    listener
        .set_nonblocking(true)
        .context("cannot make the listening socket non-blocking")?;
    Ok(listener)
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let filter = args.filter.to_filter()?;
    // A busy port is the likeliest mistake: report it before loading anything.
    let listener = bind(args.listen_address)?;
    let (tracer, ring) = Tracer::start(&filter.kernel(), args.kernel.sizes())?;

    let metrics = Metrics::new();
    let table = SocketTable::new(
        args.max_tracked_sockets as usize,
        crate::own_netns(),
        filter.clone(),
    );
    let mut pipeline = Pipeline::new(&filter);
    pipeline.identity(tracer.identity(), crate::own_netns());
    let (seeded_tx, seeded_rx) = std::sync::mpsc::channel();
    pipeline.subscribe(Box::new(
        MetricsSink::new(metrics.clone(), table)
            .with_findings(args.thresholds.to_thresholds(), filter)
            .notify_seeded(seeded_tx),
    ));
    if args.tail {
        let lines = crate::output::Lines::new(std::io::LineWriter::new(std::io::stdout()), None);
        pipeline.subscribe(Box::new(TailSink::new(lines, OutputFormat::Table, false)));
    }

    let stop = Arc::new(Notify::new());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let reconcile = args.reconcile_interval;
    let stop_events = stop.clone();
    let events = std::thread::Builder::new()
        .name("tcptrace-events".into())
        .spawn(move || {
            let result = crate::runtime().and_then(|rt| {
                rt.block_on(pipeline.run(
                    ring,
                    stop_events.notified(),
                    RunOptions {
                        tick: Some(Duration::from_secs(1)),
                        snapshot: Some(reconcile),
                        snapshot_idle: true,
                        tracer: Some(&tracer),
                    },
                ))
                .map_err(anyhow::Error::from)
            });
            let _ = done_tx.send(());
            result
        })
        .context("cannot start the event thread")?;

    // Serve only once the gauges hold the seed snapshot: a scrape must never report an empty
    // host just because the agent has only started.
    if seeded_rx.recv_timeout(Duration::from_secs(60)).is_err() {
        eprintln!("tcptrace: warning: no INET_DIAG seed snapshot yet; socket gauges start at 0");
    }
    let path = args.telemetry_path.clone();
    let site = Site {
        telemetry_path: args.telemetry_path,
        render: Box::new(move || metrics.render()),
    };
    let runtime = crate::runtime()?;
    let shutdown = Shutdown::register(&runtime)?;
    eprintln!(
        "tcptrace: tracing; serving metrics on http://{}{path} (Ctrl-C to stop)",
        args.listen_address
    );
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tokio::select! {
            () = http::serve(listener, site) => {}
            () = shutdown.wait(None) => {}
            _ = done_rx => {}
        }
        anyhow::Ok(())
    })?;
    stop.notify_one();
    let reason = events
        .join()
        .map_err(|_| anyhow!("the event thread panicked"))??;
    if reason == StopReason::OutputClosed {
        eprintln!("tcptrace: stdout closed; stopped");
    }
    Ok(ExitCode::SUCCESS)
}
