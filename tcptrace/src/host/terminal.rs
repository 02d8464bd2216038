//! The terminal stdout writes to, if any.

use std::os::fd::AsRawFd as _;

/// Columns of the terminal on stdout; `None` when stdout is not a terminal.
pub fn stdout_columns() -> Option<usize> {
    let stdout = std::io::stdout();
    // SAFETY: an all-zero winsize is valid; TIOCGWINSZ fills it for a terminal and fails for
    // anything else, leaving it untouched.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a valid pointer to a winsize, as TIOCGWINSZ expects.
    let rc = unsafe { libc::ioctl(stdout.as_raw_fd(), libc::TIOCGWINSZ, &raw mut size) };
    (rc == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
}
