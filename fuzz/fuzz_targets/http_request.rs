//! What the endpoint parses itself once hyper has read a request head: the Authorization
//! header (basic credentials) and the route. hyper's own parser is fuzzed upstream.
#![no_main]

use tcptrace::output::http::route;
use tcptrace::output::web_config::basic_credentials;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((user, password)) = basic_credentials(data) {
        assert!(!user.contains(':'));
        let _ = password;
    }
    let text = String::from_utf8_lossy(data);
    let (method, path) = text.split_once(' ').unwrap_or((&text, "/"));
    if let Ok(method) = hyper_method(method) {
        let _ = route(&method, path, "/metrics");
    }
});

fn hyper_method(s: &str) -> Result<tcptrace::output::http::Method, ()> {
    s.parse().map_err(|_| ())
}
