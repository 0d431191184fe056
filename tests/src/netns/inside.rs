//! Running code of this test process inside a host's network namespace.
//!
//! The network namespace is a per-thread attribute: a dedicated thread `setns()`s into the
//! host's namespace and runs the closure (or a current-thread tokio runtime for a future).
//! Every socket made on that thread belongs to the host's namespace for its whole life, even
//! when used afterwards from another thread, so a test can make sockets "on" a host and drive
//! them from its own runtime.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;

/// Move the calling thread into the namespace `ns` (`/run/netns/<ns>`).
fn enter(ns: &str) -> std::io::Result<()> {
    let file = File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: a valid namespace descriptor; CLONE_NEWNET affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Run `f` on a fresh thread inside `ns` and return its result (a panic in `f` is re-raised).
pub(crate) fn within<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            enter(ns).unwrap_or_else(|e| panic!("entering network namespace {ns}: {e}"));
            f()
        });
        handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Run the future made by `make` on a dedicated thread inside `ns` (its own current-thread
/// runtime: everything it connects or binds, spawned tasks included, is on the host).
pub(crate) async fn run<T, F, Fut>(ns: &str, make: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let ns = ns.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || {
            enter(&ns).unwrap_or_else(|e| panic!("entering network namespace {ns}: {e}"));
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
            let _ = tx.send(rt.block_on(make()));
        })
        .expect("spawning a thread");
    match rx.await {
        Ok(v) => v,
        // The thread ended without an answer: it panicked; re-raise its panic here.
        Err(_) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread sends before it ends"),
        },
    }
}
