//! `sb-netem`: the delay and jitter half of the impaired-network harness (`switchboard_tests::netns`).
//!
//! This kernel has no `netem` qdisc, so delay is made in userspace: an iptables rule hands each
//! packet of one direction of one link to NFQUEUE queue `--queue`; this program takes it, holds
//! its verdict for `delay ± jitter` (uniform) and then accepts it. Packets leave in the order they
//! came (a packet is never released before the one queued ahead of it): jitter never reorders a
//! link's packets, as on a real path whose delay varies but whose packets stay in order. The
//! queue is bounded (`--limit` packets held): when full, a new packet is dropped and counted.
//!
//! The rule is installed WITHOUT `--queue-bypass`: while no consumer is bound, the kernel drops
//! the packets instead of letting them pass unimpaired into a measurement.
//!
//! It runs until SIGTERM/SIGINT, then prints what it did on stderr and exits.

use anyhow::{bail, Context};
use clap::Parser;
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Delay and jitter for one NFQUEUE queue (the impaired-network harness)")]
struct Args {
    /// NFQUEUE queue number to bind.
    #[arg(long)]
    queue: u16,
    /// One-way delay, microseconds.
    #[arg(long, default_value_t = 0)]
    delay_us: u64,
    /// Jitter, microseconds: each packet's delay is uniform in [delay - jitter, delay + jitter].
    #[arg(long, default_value_t = 0)]
    jitter_us: u64,
    /// Packets held at most; a packet arriving when full is dropped (and counted).
    #[arg(long, default_value_t = 4096)]
    limit: usize,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.jitter_us <= args.delay_us, "jitter must not exceed the delay");
    anyhow::ensure!(args.limit > 0, "--limit must be positive");
    // SAFETY: the handler only stores to an atomic; no SA_RESTART, so ppoll returns EINTR.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as *const () as usize;
        for sig in [libc::SIGTERM, libc::SIGINT] {
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }

    // nfq does not expose its socket; it is the lowest free descriptor when opened (this
    // program is single-threaded), so note that number first and check it afterwards.
    let expected = lowest_free_fd()?;
    let mut queue = nfq::Queue::open().context("opening an NFQUEUE socket (needs CAP_NET_ADMIN)")?;
    let fd = expected;
    check_netlink(fd)?;
    queue.bind(args.queue).with_context(|| format!("binding NFQUEUE {}", args.queue))?;
    // Metadata only: the packet id is all a verdict needs.
    queue.set_copy_range(args.queue, 0)?;
    queue.set_queue_max_len(args.queue, u32::try_from(args.limit).unwrap_or(u32::MAX))?;
    queue.set_fail_open(args.queue, false)?;
    queue.set_nonblocking(true);
    eprintln!(
        "sb-netem: queue {} delay {}us jitter {}us limit {}",
        args.queue, args.delay_us, args.jitter_us, args.limit
    );

    let (delay, jitter) = (args.delay_us as i64, args.jitter_us as i64);
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::with_capacity(args.limit.min(1024));
    let (mut passed, mut dropped) = (0u64, 0u64);
    let mut last_release = Instant::now();
    while !STOP.load(Ordering::Relaxed) {
        // Take everything that has arrived.
        loop {
            match queue.recv() {
                Ok(mut msg) => {
                    let now = Instant::now();
                    if held.len() >= args.limit {
                        msg.set_verdict(nfq::Verdict::Drop);
                        queue.verdict(msg)?;
                        dropped += 1;
                        continue;
                    }
                    let us = delay + if jitter > 0 { fastrand::i64(-jitter..=jitter) } else { 0 };
                    // In order: never before the packet ahead of it.
                    let release = (now + Duration::from_micros(us.max(0) as u64)).max(last_release);
                    last_release = release;
                    held.push_back((release, msg));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => break,
                Err(e) => return Err(e).context("receiving from NFQUEUE"),
            }
        }
        // Release what is due.
        let now = Instant::now();
        while held.front().is_some_and(|(at, _)| *at <= now) {
            let (_, mut msg) = held.pop_front().expect("front checked");
            msg.set_verdict(nfq::Verdict::Accept);
            queue.verdict(msg)?;
            passed += 1;
        }
        // Sleep until the next packet is due or one arrives (at most 100 ms, to see STOP).
        let wait = held.front().map_or(Duration::from_millis(100), |(at, _)| at.saturating_duration_since(now));
        wait_readable(fd, wait.min(Duration::from_millis(100)))?;
    }
    eprintln!(
        "sb-netem: queue {}: passed {passed}, dropped (queue full) {dropped}, held at exit {}",
        args.queue,
        held.len()
    );
    Ok(())
}

fn lowest_free_fd() -> anyhow::Result<RawFd> {
    // SAFETY: plain descriptor calls on a descriptor this function owns.
    unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if fd < 0 {
            bail!("open /dev/null: {}", std::io::Error::last_os_error());
        }
        libc::close(fd);
        Ok(fd)
    }
}

fn check_netlink(fd: RawFd) -> anyhow::Result<()> {
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `domain`.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN, (&mut domain as *mut libc::c_int).cast(), &mut len)
    };
    if rc != 0 || domain != libc::AF_NETLINK {
        bail!("descriptor {fd} is not the NFQUEUE netlink socket");
    }
    Ok(())
}

fn wait_readable(fd: RawFd, wait: Duration) -> anyhow::Result<()> {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ts = libc::timespec { tv_sec: wait.as_secs() as libc::time_t, tv_nsec: wait.subsec_nanos() as libc::c_long };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask change.
    let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            bail!("ppoll: {err}");
        }
    }
    Ok(())
}
