//! The seam between a transport adapter (WebSocket, WebTransport) and the session.

use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
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

/// Where a media frame comes from: one room and one sending session, shared by every copy of
/// one bus event (one allocation per event, not per receiver).
#[derive(Debug, PartialEq, Eq)]
pub struct MediaOrigin {
    /// The room the frame was sent to.
    pub room: String,
    /// The sending session.
    pub session: String,
}

/// What a transport may need to know about a media frame to choose its lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaTag {
    /// Room and sender.
    pub origin: Arc<MediaOrigin>,
    /// The sender's track.
    pub track: u32,
    /// A keyframe starts a new group.
    pub keyframe: bool,
}

/// One encoded `ServerFrame` on its way to the client.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The encoded frame (shared by every recipient).
    pub frame: Bytes,
    /// Set for `Media` frames.
    pub media: Option<MediaTag>,
}

impl From<Bytes> for Outgoing {
    fn from(frame: Bytes) -> Self {
        Self { frame, media: None }
    }
}

/// What became of a sent frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Handed to the connection.
    Written,
    /// A media frame the transport dropped rather than wait (its lane was blocked or over its
    /// bound): the receiver needs a keyframe of this sender's track.
    MediaDropped(MediaTag),
}

/// The path a frame from the client came by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// The ordered control stream (a WebSocket connection, a WebTransport control stream).
    Control,
    /// A media lane (a QUIC datagram or unidirectional stream): `Media` and
    /// `KeyframeRequest` only.
    Media,
}

/// One frame from the client.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The encoded `ClientFrame`.
    pub frame: Bytes,
    /// Where it came from.
    pub lane: Lane,
}

impl From<Bytes> for Incoming {
    fn from(frame: Bytes) -> Self {
        Self { frame, lane: Lane::Control }
    }
}

/// One client connection, carrying whole frames. Implemented by each edge.
///
/// `recv` must be cancel-safe: the session polls it in a `select!` with its other events.
pub trait Transport {
    /// The transport's kind.
    fn kind(&self) -> TransportKind;
    /// The next frame from the client; `None` once the client has closed cleanly (a close
    /// frame, a QUIC application close or the end of the control stream).
    fn recv(&mut self) -> impl Future<Output = Option<Result<Incoming, TransportError>>>;
    /// Refuse frames over `bytes` from the next frame on: edges start at
    /// [`switchboard_protocol::limits::MAX_HELLO_FRAME_BYTES`] (a connection that has not
    /// authenticated can make the node buffer no more), the session raises it after `Hello`.
    fn set_max_frame(&mut self, bytes: usize);
    /// The session is authenticated: accept media lanes from the client from now on (where
    /// the transport has any), and send media on them if `send` (the client asked for it).
    /// Returns whether media will be sent on lanes (told to the client in `Welcome`).
    fn open_media_lanes(&mut self, send: bool) -> bool {
        let _ = send;
        false
    }
    /// Send one frame to the client.
    fn send(&mut self, frame: Outgoing) -> impl Future<Output = Result<Sent, TransportError>>;
    /// Send `frames` (drained) in order; the tags of media frames the transport dropped go to
    /// `dropped`. One by one unless the edge can hand a batch to its connection at once.
    fn send_all(
        &mut self,
        frames: &mut Vec<Outgoing>,
        dropped: &mut Vec<MediaTag>,
    ) -> impl Future<Output = Result<(), TransportError>> {
        async move {
            for frame in frames.drain(..) {
                if let Sent::MediaDropped(tag) = self.send(frame).await? {
                    dropped.push(tag);
                }
            }
            Ok(())
        }
    }
    /// Close the connection with the close code derived from `code` and a reason.
    fn close(self, code: ErrorCode, reason: &str) -> impl Future<Output = ()>;
}
