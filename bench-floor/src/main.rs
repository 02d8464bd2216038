//! The floor `cargo xtask bench` measures tcptrace against. `tcptrace-bench-floor empty`
//! attaches a program that does nothing to `tp_btf/inet_sock_set_state`; `tcptrace-bench-floor
//! ring` one that only streams a record per transition, which this process drains as the agent
//! does (woken by the kernel, and on the agent's timer) without decoding. Runs until SIGINT,
//! then prints, in `tcptrace tail`'s words, how many records it read and how many the program
//! wrote and lost to a full ring.

use std::process::ExitCode;

use tcptrace::kernel::loader::Floor;
use tcptrace::kernel::ring::RING_POLL;
use tcptrace_common::{FLOOR_EMPTY_PROGRAM, FLOOR_RING_PROGRAM};

fn main() -> ExitCode {
    let program = match std::env::args().nth(1).as_deref() {
        Some("empty") => FLOOR_EMPTY_PROGRAM,
        Some("ring") => FLOOR_RING_PROGRAM,
        _ => {
            eprintln!("usage: tcptrace-bench-floor empty|ring");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tcptrace-bench-floor: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(drain(program)) {
        Ok(Counts {
            read,
            sent,
            ring_full,
        }) => {
            eprintln!(
                "tcptrace-bench-floor: {read} shown, {sent} sent by the kernel, {ring_full} lost (ring full)"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tcptrace-bench-floor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the floor did while attached.
struct Counts {
    /// Records this process read from the ring.
    read: u64,
    /// Records the program wrote, and those it could not (ring full).
    sent: u64,
    ring_full: u64,
}

/// Attaches `program` and reads the records it writes until SIGINT.
async fn drain(program: &str) -> anyhow::Result<Counts> {
    let (mut floor, ring) = Floor::attach(program)?;
    let mut ring = ring.into_async()?;
    let mut poll = tokio::time::interval(RING_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    let mut read = 0u64;
    loop {
        tokio::select! {
            biased;
            stopped = &mut stop => {
                stopped?;
                break;
            }
            ready = ring.readable_mut() => {
                let mut ready = ready?;
                while ready.get_inner_mut().next_record().is_some() {
                    read += 1;
                }
                ready.clear_ready();
            }
            _ = poll.tick() => {
                while ring.get_mut().next_record().is_some() {
                    read += 1;
                }
            }
        }
    }
    // Detached first, so the last drain reads everything the counts say was written.
    floor.detach()?;
    while ring.get_mut().next_record().is_some() {
        read += 1;
    }
    let (sent, ring_full) = floor.counts();
    Ok(Counts {
        read,
        sent,
        ring_full,
    })
}
