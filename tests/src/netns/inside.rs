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

/// A tokio runtime living on a thread inside a host's namespace, for clients that must stay
/// on the host for their whole life (a [`ReconnectingClient`](switchboard_client::ReconnectingClient)
/// opens new connections long after it was made). Futures given to [`HostRuntime::spawn`]
/// run there; the handles they return may be used from any runtime (their sockets are the
/// host's). Dropping it stops the runtime: every task on it ends, connections close.
pub struct HostRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostRuntime {
    pub(crate) fn start(ns: &str) -> std::io::Result<Self> {
        let ns = ns.to_owned();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(format!("netns-rt-{ns}")).spawn(move || {
            let made = enter(&ns).and_then(|()| tokio::runtime::Builder::new_current_thread().enable_all().build());
            match made {
                Ok(rt) => {
                    let _ = ready_tx.send(Ok(rt.handle().clone()));
                    // Drives every spawned task until the owner stops it.
                    let _ = rt.block_on(stopped);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
        let handle = ready_rx.recv().map_err(|_| std::io::Error::other("the runtime thread ended"))??;
        Ok(Self { handle, stop: Some(stop), thread: Some(thread) })
    }

    /// Run `fut` on the host's runtime.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }

    /// The runtime's handle.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for HostRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
