//! Ring-buffer records from the kernel program: any bytes decode or fail, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(t) = tcptrace::kernel::decode::decode(data) {
        // A decoded transition is usable: its endpoints and states print.
        let _ = (
            t.endpoints.local(),
            t.endpoints.remote(),
            t.old.name(),
            t.new.name(),
        );
    }
});
