use std::process::ExitCode;

use clap::Parser as _;
use tcptrace::cli::{Cli, Command};

/// glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), after
/// which snapshot lists and table resizes are carved from the heap, and their freed pages stay
/// resident. A fixed threshold keeps every block of 1 MiB or more in its own mapping: returned
/// to the kernel when freed, and resident only as far as it is filled.
fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn main() -> ExitCode {
    fix_mmap_threshold();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tail(args) => tcptrace::tail::run(args),
        Command::Serve(args) => tcptrace::serve::run(args),
        Command::Life(args) => tcptrace::life::run(args),
        Command::Doctor(args) => tcptrace::doctor::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // One line: the error and its causes, joined.
            eprintln!("tcptrace: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
