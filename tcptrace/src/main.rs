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

/// `doctor`'s exit status when it could not run: UNKNOWN in the monitoring-plugin convention
/// (0 OK, 1 WARNING, 2 CRITICAL), so a script can tell "tool failed" from "problem found".
const DOCTOR_UNKNOWN: u8 = 3;

/// Whether the command line asks for `doctor`: its first word that is neither an option nor
/// the value of the global `--log-level`.
fn is_doctor(args: &[std::ffi::OsString]) -> bool {
    let mut words = args.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(word) = words.next() {
        if word == "--log-level" {
            words.next();
        } else if !word.starts_with('-') {
            return word == "doctor";
        }
    }
    false
}

fn main() -> ExitCode {
    process::fix_mmap_threshold();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let doctor = is_doctor(&args);
    let failure = if doctor {
        ExitCode::from(DOCTOR_UNKNOWN)
    } else {
        ExitCode::FAILURE
    };
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if doctor && e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(DOCTOR_UNKNOWN);
        }
        Err(e) => e.exit(),
    };
    init_logging(&cli.log);
    let log = &cli.log;
    let result = match cli.command {
        Command::Tail(args) => commands::tail::run(args, log),
        Command::Serve(args) => commands::serve::run(args, log),
        Command::Life(args) => commands::life::run(args, log),
        Command::Doctor(args) => commands::doctor::run(args, log),
        Command::Top(args) => commands::top::run(args, log),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // One line: the error and its causes, joined.
            eprintln!("tcptrace: error: {err:#}");
            failure
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_doctor_subcommand() {
        let args =
            |line: &str| -> Vec<std::ffi::OsString> { line.split(' ').map(Into::into).collect() };
        assert!(is_doctor(&args("tcptrace doctor --bogus")));
        assert!(is_doctor(&args("tcptrace --log-level debug doctor")));
        assert!(is_doctor(&args(
            "tcptrace --log-level=debug doctor -o json"
        )));
        assert!(!is_doctor(&args("tcptrace tail --comm doctor")));
        assert!(!is_doctor(&args("tcptrace --help")));
    }
}
