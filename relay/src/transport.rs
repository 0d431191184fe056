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
    /// The peer floods the transport's own control messages (e.g. WebSocket pings) far over
    /// their rate limit (`RATE_LIMITED`).
    #[error("flood: {0}")]
    Flood(String),
    /// The connection was lost: it ended without a close (a TCP connection without a close
    /// frame, a QUIC connection lost or reset), or failed. Not an error of the client's.
    #[error("connection lost: {0}")]
    Io(String),
}

/// One client connection, carrying whole frames. Implemented by each edge.
///
/// `recv` must be cancel-safe: the session polls it in a `select!` with its other events.
pub trait Transport {
    /// The transport's kind.
    fn kind(&self) -> TransportKind;
    /// The next frame from the client; `None` once the client has closed cleanly (a close
    /// frame, a QUIC application close or the end of the control stream).
    fn recv(&mut self) -> impl Future<Output = Option<Result<Bytes, TransportError>>>;
    /// Refuse frames over `bytes` from the next frame on: edges start at
    /// [`switchboard_protocol::limits::MAX_HELLO_FRAME_BYTES`] (a connection that has not
    /// authenticated can make the node buffer no more), the session raises it after `Hello`.
    fn set_max_frame(&mut self, bytes: usize);
    /// Send one frame to the client.
    fn send(&mut self, frame: Bytes) -> impl Future<Output = Result<(), TransportError>>;
    /// Close the connection with the close code derived from `code` and a reason.
    fn close(self, code: ErrorCode, reason: &str) -> impl Future<Output = ()>;
}
