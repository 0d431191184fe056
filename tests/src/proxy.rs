//! A loopback TCP proxy that can cut the link it carries without closing it: a network
//! partition as the two ends see it. While partitioned, bytes stay where they are (nothing
//! is read, so the senders' socket buffers fill as they would with TCP retransmitting into
//! a dead route) and new connections are accepted but not forwarded; on heal everything
//! flows again. Ends that gave up meanwhile close their sockets, and the proxy closes the
//! other side.

use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A partitionable proxy from a free loopback port to `target`; stops when dropped.
pub struct Partition {
    port: u16,
    cut: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Partition {
    /// Listen on a free loopback port, forwarding to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let cut = Arc::new(watch::channel(false).0);
        let target = target.to_string();
        let state = cut.clone();
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                // Reap finished links so the set holds only live ones.
                while links.try_join_next().is_some() {}
                links.spawn(link(inbound, target.clone(), state.subscribe()));
            }
        });
        Partition { port, cut, task }
    }

    /// The proxy's URL for a NATS client (`nats://127.0.0.1:<port>`).
    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Cut the link: nothing passes either way until [`heal`](Self::heal).
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Let bytes and connections through again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Wait until the link is not cut.
async fn open(state: &mut watch::Receiver<bool>) {
    let _ = state.wait_for(|cut| !*cut).await;
}

async fn link(inbound: TcpStream, target: String, mut state: watch::Receiver<bool>) {
    open(&mut state).await;
    let Ok(outbound) = TcpStream::connect(&target).await else { return };
    let (a_read, a_write) = inbound.into_split();
    let (b_read, b_write) = outbound.into_split();
    // Either direction ending ends both (the JoinSet drops the other half's task).
    let mut pumps = tokio::task::JoinSet::new();
    pumps.spawn(pump(a_read, b_write, state.clone()));
    pumps.spawn(pump(b_read, a_write, state));
    pumps.join_next().await;
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        open(&mut state).await;
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Cut while waiting for bytes: stop reading until healed.
            _ = state.wait_for(|cut| *cut) => continue,
        };
        // Bytes read just before a cut are held back until the heal, as in-flight
        // segments would be.
        open(&mut state).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
