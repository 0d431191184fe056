//! `bare-broadcast`: the baseline for Switchboard's fan-out benchmarks. A WebSocket server
//! with no auth, no protobuf and no NATS: every binary message a client sends is copied to
//! every other client. What Switchboard adds costs whatever it measures below this.
//!
//! Like Switchboard, each connection has a bounded outbound queue (frames are dropped, not
//! buffered without bound, when a client cannot keep up).

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(about = "Bare WebSocket broadcast server (benchmark baseline; loopback only)")]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:9001")]
    addr: std::net::SocketAddr,
    /// Outbound queue per connection, in frames.
    #[arg(long, default_value_t = 1024)]
    queue: usize,
}

type Peers = Arc<Mutex<Vec<(u64, mpsc::Sender<Message>)>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    eprintln!("bare-broadcast listening on {}", listener.local_addr()?);
    let peers: Peers = Arc::default();
    let next_id = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (peers, id, queue) = (peers.clone(), next_id.fetch_add(1, Ordering::Relaxed), args.queue);
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
            let (mut sink, mut stream) = ws.split();
            let (tx, mut rx) = mpsc::channel::<Message>(queue);
            peers.lock().unwrap_or_else(|e| e.into_inner()).push((id, tx));
            let writer = tokio::spawn(async move {
                // Write everything queued, then flush once: one syscall for a burst.
                while let Some(m) = rx.recv().await {
                    if sink.feed(m).await.is_err() {
                        return;
                    }
                    while let Ok(m) = rx.try_recv() {
                        if sink.feed(m).await.is_err() {
                            return;
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
            });
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Binary(b) = msg {
                    let targets: Vec<mpsc::Sender<Message>> = peers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .filter(|(p, _)| *p != id)
                        .map(|(_, tx)| tx.clone())
                        .collect();
                    for tx in targets {
                        let _ = tx.try_send(Message::Binary(b.clone()));
                    }
                }
            }
            peers.lock().unwrap_or_else(|e| e.into_inner()).retain(|(p, _)| *p != id);
            writer.abort();
        });
    }
}
