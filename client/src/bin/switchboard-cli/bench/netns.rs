//! Running part of the load generator inside another network namespace (the impaired-network
//! lab's client hosts, `deploy/netns-lab`).
//!
//! The network namespace is a per-thread attribute: a dedicated thread `setns()`s into the
//! namespace and runs a current-thread tokio runtime there. Every socket made on that thread
//! (a WebSocket's TCP socket, a WebTransport endpoint's UDP socket) belongs to that namespace
//! for its whole life, and the client tasks spawned on that runtime stay on that thread.
//! Needs CAP_SYS_ADMIN (root), as the lab does.

use anyhow::Context;
use std::future::Future;

/// `/run/netns/<name>` for a name as `ip netns` lists it, or the path itself.
fn path(ns: &str) -> String {
    if ns.starts_with('/') {
        ns.to_owned()
    } else {
        format!("/run/netns/{ns}")
    }
}

/// Move the calling thread into the network namespace `ns`.
#[cfg(target_os = "linux")]
fn enter(ns: &str) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let p = path(ns);
    let file = std::fs::File::open(&p).with_context(|| format!("opening network namespace {p}"))?;
    // SAFETY: a valid namespace descriptor; CLONE_NEWNET affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("entering network namespace {p} (root?)"));
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn enter(ns: &str) -> anyhow::Result<()> {
    anyhow::bail!("network namespaces ({}) need Linux", path(ns))
}

/// Run the future made by `make` on a new thread inside the network namespace `ns`, with its
/// own current-thread runtime; its output (or why the thread could not run it) arrives on
/// the returned channel.
pub fn spawn_in<T, F, Fut>(ns: &str, make: F) -> anyhow::Result<tokio::sync::oneshot::Receiver<anyhow::Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let ns = ns.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || {
            let out = enter(&ns).and_then(|()| {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(make())
            });
            let _ = tx.send(out);
        })
        .context("spawning a network-namespace thread")?;
    Ok(rx)
}
