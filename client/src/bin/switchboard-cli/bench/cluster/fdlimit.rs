//! The process's descriptor limit: every connection holds one (a TCP socket for WebSocket,
//! a UDP socket for a WebTransport endpoint).

/// Descriptors kept for everything else (stdio, the runtime, resolver, files).
pub const SPARE: u64 = 256;

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; returns the limit now in force.
#[cfg(target_os = "linux")]
pub fn raise() -> std::io::Result<u64> {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `rl` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if rl.rlim_cur < rl.rlim_max {
        let raised = libc::rlimit { rlim_cur: rl.rlim_max, rlim_max: rl.rlim_max };
        // SAFETY: `raised` is a valid rlimit no higher than the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        rl = raised;
    }
    Ok(rl.rlim_cur)
}

/// Elsewhere the limit is not managed here.
#[cfg(not(target_os = "linux"))]
pub fn raise() -> std::io::Result<u64> {
    Ok(u64::MAX)
}
