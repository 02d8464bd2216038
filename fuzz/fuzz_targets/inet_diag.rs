//! INET_DIAG (SOCK_DIAG_BY_FAMILY) netlink responses: any buffer parses or is an error.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let _ = tcptrace::host::inet_diag::parse_messages(data, &mut out, &mut |_| true);
    // Every socket kept has endpoints that print.
    for s in &out {
        let _ = (s.endpoints.local(), s.endpoints.remote());
    }
});
