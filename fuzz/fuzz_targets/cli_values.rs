//! Command lines: NUL-separated arguments through the whole parser (filters: CIDR, ports,
//! states, pids, durations; listen addresses, capabilities, sizes). Errors, never panics.
#![no_main]

use clap::Parser as _;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let args = std::iter::once("tcptrace").chain(text.split('\0'));
    let _ = tcptrace::cli::Cli::try_parse_from(args);
    for value in text.split('\0') {
        let _ = value.parse::<tcptrace::model::filter::Cidr>();
        let _ = value.parse::<tcptrace::model::tcp::TcpState>();
        let _ = value.parse::<tcptrace::commands::serve::ListenAddress>();
        let _ = value.parse::<tcptrace::host::caps::Keep>();
        let _ = tcptrace::cli::parse_duration(value);
        let _ = tcptrace::cli::parse_percent(value);
    }
});
