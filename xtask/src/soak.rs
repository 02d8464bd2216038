//! `cargo xtask soak --minutes N`: `tcptrace serve` under a steady, bounded loopback churn for
//! N minutes, its resident memory and CPU sampled every second.
//!
//! It fails when memory keeps growing after the warm-up (the least-squares slope of RSS over
//! the samples after it, above `--max-slope-kib`), or when transitions go unaccounted for:
//! every record the kernel wrote must be read, no more transitions delivered than the 10 per
//! connection loopback churn makes, and delivered + lost (ring full) + recursion misses
//! (counted for every program run, on any port: an upper bound) must reach those 10 per
//! connection within 0.01 % (the kernel was seen to skip a state 4 times in 240,061). The
//! warm-up spans TIME_WAIT (60 s): the tables grow until the first connections' timewait
//! entries expire.
//! Results go to `target/soak/result.{json,md}`.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::bench::{cpu_seconds, field, free_port, http_get, read_proc, sample};
use crate::{cargo, sh, workspace_root};

#[derive(Args, Clone)]
pub struct SoakArgs {
    /// How long to churn.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Connections per second (each 10 transitions; the client closes first).
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Seconds excluded from the memory slope (TIME_WAIT fills the tables for the first 60).
    #[arg(long, default_value_t = 75)]
    pub warmup: u64,
    /// Largest RSS slope after the warm-up that passes, in KiB per minute.
    #[arg(long, default_value_t = 512.0)]
    pub max_slope_kib: f64,
}

impl SoakArgs {
    /// The short soak `cargo xtask test` runs. 45 s of samples after the warm-up give a
    /// noisier slope than a long soak (two 2-minute runs measured 64 and 479 KiB/min), so the
    /// bound is 1 MiB/min: at 12,000 connections a minute, a leak of 90 bytes per connection.
    pub fn smoke() -> Self {
        Self {
            minutes: 2.0,
            rate: 200,
            warmup: 75,
            max_slope_kib: 1024.0,
        }
    }
}

/// Least-squares slope of `y` over `x`.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Paced churn until `stop`: `rate` connections per second to `port`, client closes first.
/// Returns once the server side has closed every connection made (or after 10 s), so that
/// every connection counted has all its 10 transitions.
fn churn(
    port: u16,
    rate: u64,
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    std::thread::spawn(move || {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let handled = Arc::new(AtomicU64::new(0));
        let served = handled.clone();
        // Detached: the listener stays open (its LISTEN -> CLOSE is not in the count).
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 1];
                let _ = s.read(&mut buf);
                drop(s);
                served.fetch_add(1, Ordering::Relaxed);
            }
        });
        let start = Instant::now();
        let mut n: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            // Pace: connection n is due at n / rate seconds.
            let due = Duration::from_secs_f64(n as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            let s = TcpStream::connect(("127.0.0.1", port))?;
            drop(s);
            n += 1;
            made.store(n, Ordering::Relaxed);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while handled.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })
}

pub fn run(args: &SoakArgs) -> anyhow::Result<ExitCode> {
    sh(cargo().args(["build", "--release", "--package", "tcptrace"]))?;
    let bin = workspace_root().join("target/release/tcptrace");
    let port = free_port()?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let mut child = Command::new(&bin)
        .args([
            "serve",
            "--port",
            &port.to_string(),
            "--web.listen-address",
            &addr,
        ])
        .args(["--reconcile-interval", "5"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let pid = child.id();
    let mut stderr = std::io::BufReader::new(child.stderr.take().context("stderr")?);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line)?;
    if !line.starts_with("tcptrace: tracing") {
        bail!("tcptrace did not start: {line}");
    }
    let stderr_thread = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });

    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    println!(
        "xtask: soak: {} connections/s for {:.1} min (warm-up {} s), serve pid {pid}",
        args.rate, args.minutes, args.warmup
    );
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let churner = churn(port, args.rate, stop.clone(), made.clone());
    let start = Instant::now();
    let cpu0 = cpu_seconds(pid).unwrap_or(0.0);
    let mut samples: Vec<(f64, f64)> = Vec::new();
    while start.elapsed() < duration {
        std::thread::sleep(Duration::from_secs(1));
        let rss = field(&read_proc(pid, "status"), "VmRSS").context("the agent exited")?;
        samples.push((start.elapsed().as_secs_f64(), rss as f64));
        if samples.len().is_multiple_of(30) {
            println!(
                "xtask: soak: {:>4.0} s, {} connections, RSS {} KiB",
                start.elapsed().as_secs_f64(),
                made.load(Ordering::Relaxed),
                rss
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    churner
        .join()
        .map_err(|_| anyhow::anyhow!("churn thread panicked"))??;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu0;
    let connections = made.load(Ordering::Relaxed);
    // Let the agent read what is left and publish its counters (once a second).
    let expected = connections * 10 + 1;
    let deadline = Instant::now() + Duration::from_secs(15);
    let metrics = loop {
        std::thread::sleep(Duration::from_millis(1100));
        let m = http_get(&addr, "/metrics").context("scrape failed")?;
        let sent = sample(&m, "tcptrace_kernel_events_total").unwrap_or(0);
        let read = sample(&m, "tcptrace_events_processed_total").unwrap_or(0)
            + sample(&m, "tcptrace_decode_errors_total").unwrap_or(0);
        if (sent == read && read >= expected) || Instant::now() > deadline {
            break m;
        }
    };
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let status = child.wait()?;
    let rest = stderr_thread.join().unwrap_or_default();

    let get = |series: &str| sample(&metrics, series).unwrap_or(0);
    let sent = get("tcptrace_kernel_events_total");
    let processed = get("tcptrace_events_processed_total");
    let decode_errors = get("tcptrace_decode_errors_total");
    let ring_full = get("tcptrace_lost_events_total{reason=\"ring_full\"}");
    let recursion = get("tcptrace_lost_events_total{reason=\"recursion\"}");
    let after: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(t, _)| *t >= args.warmup as f64)
        .map(|(t, rss)| (t / 60.0, *rss))
        .collect();
    let slope_kib = slope(&after);
    let rss_max = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    let rss_warm = after.first().map_or(0.0, |s| s.1);
    let rss_end = samples.last().map_or(0.0, |s| s.1);

    let mut md = String::new();
    let _ = writeln!(
        md,
        "Soak: {:.1} min of {} connections/s ({connections} connections, {} transitions expected on the port) under `tcptrace serve --reconcile-interval 5`.\n",
        elapsed / 60.0,
        args.rate,
        expected
    );
    let _ = writeln!(md, "| measure | value |\n|---|---|");
    let _ = writeln!(
        md,
        "| RSS after warm-up ({} s) / at end / max | {:.1} / {:.1} / {:.1} MiB |",
        args.warmup,
        rss_warm / 1024.0,
        rss_end / 1024.0,
        rss_max / 1024.0
    );
    let _ = writeln!(
        md,
        "| RSS slope after warm-up (least squares, {} samples) | {} KiB/min (limit {}) |",
        after.len(),
        slope_kib.map_or("-".into(), |s| format!("{s:.1}")),
        args.max_slope_kib
    );
    let _ = writeln!(
        md,
        "| agent CPU | {:.1} % of one core |",
        cpu / elapsed * 100.0
    );
    let _ = writeln!(
        md,
        "| kernel sent / read (+ unreadable) | {sent} / {processed} (+{decode_errors}) |"
    );
    let _ = writeln!(
        md,
        "| delivered / lost ring full / recursion misses (all ports) | {processed} / {ring_full} / {recursion} |"
    );
    print!("\n{md}");
    let out = workspace_root().join("target/soak");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("result.md"), &md)?;
    let json = serde_json::json!({
        "minutes": elapsed / 60.0,
        "rate": args.rate,
        "connections": connections,
        "expected_transitions": expected,
        "kernel_sent": sent,
        "processed": processed,
        "decode_errors": decode_errors,
        "lost_ring_full": ring_full,
        "lost_recursion": recursion,
        "rss_kib_after_warmup": rss_warm,
        "rss_kib_end": rss_end,
        "rss_kib_max": rss_max,
        "rss_slope_kib_per_min": slope_kib,
        "cpu_percent": cpu / elapsed * 100.0,
        "samples": samples,
    });
    std::fs::write(
        out.join("result.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::io::stdout().flush()?;

    if !status.success() {
        bail!("serve exited with {status}: {rest}");
    }
    if sent != processed + decode_errors {
        bail!(
            "the kernel sent {sent} records but the agent read {processed} (+{decode_errors} unreadable)"
        );
    }
    // Nothing invented. The model's 10 transitions per connection is what loopback churn
    // almost always does, but soaks saw 4 of 240,061 short with nothing lost (the kernel may
    // skip a state, as the bench notes), so a shortfall beyond the counted losses is
    // tolerated up to 0.01 % and reported; a larger one fails.
    let accounted = processed + ring_full + recursion;
    let shortfall = expected.saturating_sub(accounted);
    if processed > expected || shortfall * 10_000 > expected {
        bail!(
            "transitions unaccounted for: {expected} expected, {processed} delivered, {ring_full} lost (ring full), {recursion} recursion misses"
        );
    }
    if shortfall > 0 {
        println!(
            "xtask: soak: {shortfall} of {expected} modelled transitions neither delivered nor counted lost, while every record the kernel sent was read: the kernel skipped states the model expects"
        );
    }
    match slope_kib {
        None => bail!("too few samples after the warm-up for a slope (soak longer than --warmup)"),
        Some(s) if s > args.max_slope_kib => bail!(
            "RSS keeps growing after the warm-up: {s:.1} KiB/min (limit {})",
            args.max_slope_kib
        ),
        Some(_) => {}
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_noise() {
        let line: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 3.0 * f64::from(i) + 7.0))
            .collect();
        assert!((slope(&line).unwrap() - 3.0).abs() < 1e-9);
        let flat = [(0.0, 5.0), (1.0, 6.0), (2.0, 5.0), (3.0, 6.0)];
        assert!(slope(&flat).unwrap().abs() < 0.5);
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }
}
