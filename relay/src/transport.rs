//! The seam between a transport adapter (WebSocket, WebTransport) and the session.

use bytes::Bytes;
use std::future::Future;
use switchboard_protocol::ErrorCode;

/// Which transport a session uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// WebSocket (actix-web).
    WebSocket,
    /// WebTransport over QUIC (wtransport).
    WebTransport,
}

impl TransportKind {
    /// Metric label / log field.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::WebSocket => "websocket",
            TransportKind::WebTransport => "webtransport",
        }
    }
}

/// A transport failure as seen by the session.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer sent a frame over the size limit.
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    /// The peer broke the transport's framing rules (e.g. a text WebSocket message, a
    /// truncated record).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The connection failed.
    #[error("connection error: {0}")]
    Io(String),
}

/// One client connection, carrying whole frames. Implemented by each edge.
///
/// `recv` must be cancel-safe: the session polls it in a `select!` with its other events.
pub trait Transport {
    /// The transport's kind.
    fn kind(&self) -> TransportKind;
    /// The next frame from the client; `None` once the client has closed.
    fn recv(&mut self) -> impl Future<Output = Option<Result<Bytes, TransportError>>>;
    /// Send one frame to the client.
    fn send(&mut self, frame: Bytes) -> impl Future<Output = Result<(), TransportError>>;
    /// Close the connection with the close code derived from `code` and a reason.
    fn close(self, code: ErrorCode, reason: &str) -> impl Future<Output = ()>;
}
