//! tcptrace's agent. Data flows `kernel` (load, ring, decode) -> `pipeline` (filter, fan out)
//! -> sinks built on `model` (socket table, connection stories) and `diagnosis` (findings)
//! -> `output` (tables, JSON, report, metrics, HTTP). `host` is everything read from the
//! system around the kernel program; `commands` wire these together per subcommand.
//!
//! Pure logic is unit-tested without root; kernel and host I/O stay in `kernel` and `host`.

pub mod cli;
pub mod commands;
pub mod diagnosis;
pub mod host;
pub mod kernel;
pub mod model;
pub mod output;
pub mod pipeline;

#[cfg(test)]
mod testing;
