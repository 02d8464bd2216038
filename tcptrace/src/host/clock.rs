//! The kernel's clocks: `CLOCK_MONOTONIC` (what `bpf_ktime_get_ns()` reads, so every `ts_ns`)
//! and its offset to wall-clock time.

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; both clocks exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Kernel CLOCK_MONOTONIC now, in ns.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC now, in ns: added to a kernel timestamp it gives Unix time.
/// Sampled between two monotonic reads so the error is at most half the gap.
pub fn realtime_offset_ns() -> i128 {
    let mono = clock_ns(libc::CLOCK_MONOTONIC);
    let real = clock_ns(libc::CLOCK_REALTIME);
    let mono2 = clock_ns(libc::CLOCK_MONOTONIC);
    real - (mono + mono2) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_turns_monotonic_into_unix_time() {
        let unix = i128::from(monotonic_ns()) + realtime_offset_ns();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        assert!((now - unix).abs() < 1_000_000_000, "{now} vs {unix}");
    }
}
