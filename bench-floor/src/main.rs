//! The floor `cargo xtask bench` measures tcptrace against. `tcptrace-bench-floor empty`
//! attaches a program that does nothing to `tp_btf/inet_sock_set_state`; `tcptrace-bench-floor
//! ring` one that only streams a record per transition, which this process drains as the agent
//! does (woken by the kernel, and on the agent's timer) without decoding. Runs until SIGINT,
//! then prints how many records it read.

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
        Ok(read) => {
            eprintln!("tcptrace-bench-floor: {read} records read");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tcptrace-bench-floor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Attaches `program` and counts the records it writes until SIGINT.
async fn drain(program: &str) -> anyhow::Result<u64> {
    let (_floor, ring) = Floor::attach(program)?;
    let mut ring = ring.into_async()?;
    let mut poll = tokio::time::interval(RING_POLL);
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    let mut read = 0u64;
    loop {
        tokio::select! {
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
    while ring.get_mut().next_record().is_some() {
        read += 1;
    }
    Ok(read)
}
