//! cgroup v2 paths -> container id or systemd service.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data)
        && let Some(id) = tcptrace::model::cgroup::container_id(path)
    {
        assert!(!id.is_empty());
    }
});
