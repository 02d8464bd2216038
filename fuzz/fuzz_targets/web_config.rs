//! --web.config.file YAML: any text is a configuration or one error line. Inputs naming paths
//! are skipped (a file name could be /dev/zero); inline `cert`/`key`/`client_ca` PEM is fuzzed.
#![no_main]

use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains('/') || text.contains('\\') {
        return;
    }
    // Relative file names resolve in a directory that does not exist.
    if let Err(e) = tcptrace::output::web_config::WebConfig::parse(text, Path::new("/nonexistent"))
    {
        assert!(!format!("{e:#}").contains('\n'), "one line");
    }
});
