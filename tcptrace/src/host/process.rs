//! This process's own settings: memory allocator tuning, resource limits, signal dispositions.

/// glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), after
/// which snapshot lists and table resizes are carved from the heap, and their freed pages stay
/// resident. A fixed threshold keeps every block of 1 MiB or more in its own mapping: returned
/// to the kernel when freed, and resident only as far as it is filled.
pub fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Hands freed heap pages back to the system (after the one-time BTF work at load).
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; no pointer is invalidated.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it where that is allowed.
pub fn raise_memlock_rlimit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to a properly initialised rlimit.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

/// An exporter keeps running on SIGHUP (it reloads its web config): until `serve` installs its
/// own handler, the signal is ignored instead of ending the process.
pub fn ignore_sighup() {
    // SAFETY: installs SIG_IGN for SIGHUP; no handler code runs, nothing is shared.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// Raises the soft open-file limit to the hard one (as Go does at start): an exporter's
/// connections are file descriptors. Returns the soft limit in force.
pub fn raise_nofile_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit the call fills.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: valid pointer to a properly initialised rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Some(limit.rlim_cur)
}
