use std::process::ExitCode;

use clap::Parser as _;
use tcptrace::cli::{Cli, Command};

fn main() -> ExitCode {
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
