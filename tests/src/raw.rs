//! A raw WebSocket peer speaking the wire protocol by hand, for tests that must send what
//! a well-behaved client never would (garbage, oversized frames, forged tokens).

use crate::WAIT;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use switchboard_protocol::pb::{client_frame, server_frame, ClientFrame, Hello, ServerFrame};
use switchboard_protocol::{decode_server_frame, encode, PROTOCOL_VERSION};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the server sent next.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // test helper: size does not matter
pub enum Received {
    /// A server frame.
    Frame(server_frame::Kind),
    /// The server closed the connection with this close code.
    Closed(Option<u16>),
}

/// A raw WebSocket connection.
pub struct RawWs {
    ws: Ws,
}

impl RawWs {
    /// Connect to `url` (`ws://.../ws`).
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = crate::within(WAIT, "WebSocket connect", tokio_tungstenite::connect_async(url))
            .await
            .expect("WebSocket handshake");
        Self { ws }
    }

    /// Send raw bytes as one binary message.
    pub async fn send_bytes(&mut self, bytes: impl Into<Bytes>) {
        self.ws.send(Message::Binary(bytes.into())).await.expect("sending");
    }

    /// Send a client frame.
    pub async fn send(&mut self, id: u64, kind: client_frame::Kind) {
        self.send_bytes(encode(&ClientFrame { id, kind: Some(kind) })).await;
    }

    /// Send `Hello` with `token`.
    pub async fn hello(&mut self, token: &str) {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            token: token.into(),
            client: "raw-test".into(),
            ..Default::default()
        };
        self.send(1, client_frame::Kind::Hello(hello)).await;
    }

    /// The next frame or close (pings and pongs skipped), within the default wait.
    pub async fn next(&mut self) -> Received {
        self.next_within(WAIT).await
    }

    /// The next frame or close, within `limit`.
    pub async fn next_within(&mut self, limit: std::time::Duration) -> Received {
        crate::within(limit, "a server frame", async {
            loop {
                match self.ws.next().await {
                    None => return Received::Closed(None),
                    Some(Err(_)) => return Received::Closed(None),
                    Some(Ok(Message::Binary(b))) => {
                        let ServerFrame { kind } = decode_server_frame(&b).expect("server frame decodes");
                        return Received::Frame(kind.expect("server frame has a kind"));
                    }
                    Some(Ok(Message::Close(c))) => return Received::Closed(c.map(|c| u16::from(c.code))),
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await
    }

    /// The next frame, panicking on close.
    pub async fn frame(&mut self) -> server_frame::Kind {
        match self.next().await {
            Received::Frame(f) => f,
            Received::Closed(c) => panic!("connection closed ({c:?}) while a frame was expected"),
        }
    }

    /// Skip frames until the connection closes; return the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            if let Received::Closed(c) = self.next().await {
                return c;
            }
        }
    }

    /// Send any WebSocket message (text, ping, close, ...).
    pub async fn send_message(&mut self, message: Message) {
        self.ws.send(message).await.expect("sending");
    }

    /// Send any WebSocket message, returning a failure (the connection closed) instead of
    /// panicking.
    pub async fn try_send_message(&mut self, message: Message) -> Result<(), String> {
        self.ws.send(message).await.map_err(|e| e.to_string())
    }

    /// The next WebSocket message as it is (pings, pongs and closes included).
    pub async fn next_message(&mut self) -> Option<Message> {
        crate::within(WAIT, "a WebSocket message", self.ws.next()).await.and_then(Result::ok)
    }

    /// Send a normal close.
    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }

    /// Hello with `token` and expect `Welcome`.
    pub async fn authenticated(url: &str, token: &str) -> (Self, switchboard_protocol::pb::Welcome) {
        let mut ws = Self::connect(url).await;
        ws.hello(token).await;
        match ws.frame().await {
            server_frame::Kind::Welcome(w) => (ws, w),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }
}
