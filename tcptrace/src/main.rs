use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use tcptrace::cli::{Cli, Command, LogArgs};
use tcptrace::commands;
use tcptrace::host::process;

/// Diagnostics go to stderr as `tcptrace: LEVEL: message` (kernel messages marked `kernel:`):
/// tcptrace's own (and its kernel program's) up to `--log-level`, libraries' warnings; or
/// whatever `RUST_LOG` selects when the flag is not given.
fn init_logging(args: &LogArgs) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(log::LevelFilter::Warn);
    match (args.log_level, std::env::var("RUST_LOG")) {
        (Some(level), _) => {
            builder.filter_module("tcptrace", level.filter());
        }
        (None, Ok(directives)) => {
            builder.parse_filters(&directives);
        }
        (None, Err(_)) => {}
    }
    builder.format(|out, record| {
        let level = match record.level() {
            log::Level::Warn => "warning".to_owned(),
            level => level.as_str().to_ascii_lowercase(),
        };
        let kernel = if record.target() == "tcptrace::kernel" {
            "kernel: "
        } else {
            ""
        };
        writeln!(out, "tcptrace: {level}: {kernel}{}", record.args())
    });
    builder.init();
}

fn main() -> ExitCode {
    process::fix_mmap_threshold();
    let cli = Cli::parse();
    init_logging(&cli.log);
    let log = &cli.log;
    let result = match cli.command {
        Command::Tail(args) => commands::tail::run(args, log),
        Command::Serve(args) => commands::serve::run(args, log),
        Command::Life(args) => commands::life::run(args, log),
        Command::Doctor(args) => commands::doctor::run(args, log),
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
