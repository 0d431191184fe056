//! A scripted in-process WebSocket server for the unit tests: each connection runs a script
//! that reads client frames and writes server frames.

use crate::ClientConfig;
use futures_util::{SinkExt, StreamExt};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchboard_protocol::pb::{self, client_frame, server_frame, ClientFrame};
use switchboard_protocol::{decode_client_frame, encode, PROTOCOL_VERSION};
use tokio_tungstenite::tungstenite::Message;

pub(crate) type ServerWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

pub(crate) fn frame(kind: server_frame::Kind) -> Message {
    Message::Binary(encode(&pb::ServerFrame { kind: Some(kind) }))
}

pub(crate) fn welcome_frame(w: pb::Welcome) -> Message {
    frame(server_frame::Kind::Welcome(w))
}

/// A `Welcome` for session `session` on node `node-<session>`.
pub(crate) fn welcome(session: &str) -> Message {
    welcome_frame(pb::Welcome {
        protocol_version: PROTOCOL_VERSION,
        session_id: session.into(),
        node: format!("node-{session}"),
        heartbeat_ms: 15_000,
        ..Default::default()
    })
}

/// The next client frame other than a `Ping`.
pub(crate) async fn next_client_frame(ws: &mut ServerWs) -> ClientFrame {
    loop {
        match ws.next().await.expect("client went away").expect("read") {
            Message::Binary(b) => {
                let f = decode_client_frame(&b).expect("valid client frame");
                if !matches!(f.kind, Some(client_frame::Kind::Ping(_))) {
                    return f;
                }
            }
            _ => continue,
        }
    }
}

/// Read the `Hello`, answer with [`welcome`]; returns the token.
pub(crate) async fn handshake(ws: &mut ServerWs, session: &str) -> String {
    let token = match next_client_frame(ws).await.kind {
        Some(client_frame::Kind::Hello(h)) => h.token,
        other => panic!("expected Hello, got {other:?}"),
    };
    ws.send(welcome(session)).await.expect("send Welcome");
    token
}

/// Read until the client closes or goes away.
pub(crate) async fn drain(ws: &mut ServerWs) {
    while let Some(Ok(m)) = ws.next().await {
        if m.is_close() {
            break;
        }
    }
}

/// Serve one connection with `script`; returns the URL to connect to.
pub(crate) async fn serve<F, Fut>(script: F) -> String
where
    F: FnOnce(ServerWs) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        script(tokio_tungstenite::accept_async(tcp).await.unwrap()).await;
    });
    url
}

/// Serve every connection, the `n`th (0-based) with `script(n, ws)`; returns the URL and
/// the count of connections accepted so far.
pub(crate) async fn serve_each<F, Fut>(script: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(usize, ServerWs) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else { continue };
            tokio::spawn(script(n, ws));
        }
    });
    (url, accepted)
}

/// A config with short limits for tests.
pub(crate) fn config(url: String) -> ClientConfig {
    let mut config = ClientConfig::new(url, "token");
    config.connect_timeout = Duration::from_secs(5);
    config.request_timeout = Duration::from_secs(5);
    config
}
