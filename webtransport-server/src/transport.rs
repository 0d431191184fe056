//! A WebTransport session adapted to the relay's [`Transport`]: one bidirectional control
//! stream carrying length-prefixed records, and media lanes ([`crate::lanes`]) once the
//! session is authenticated.

use crate::lanes::{LaneReader, MediaSender, CONTROL_PRIORITY};
use crate::records::Records;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use switchboard_protocol::framing::{FramingError, RecordDecoder};
use switchboard_protocol::limits::{MAX_FRAME_BYTES, MAX_HELLO_FRAME_BYTES};
use switchboard_protocol::{close_code, ErrorCode};
use switchboard_relay::metrics::LaneLabel;
use switchboard_relay::Node;
use switchboard_relay::{Incoming, Lane, MediaTag, Outgoing, Sent, Transport, TransportError, TransportKind};
use wtransport::{Connection, RecvStream, SendStream, VarInt};

/// Most bytes taken from the stream per read (quinn hands out its own buffers: no copy and
/// no per-session read buffer).
const READ_CHUNK: usize = 64 * 1024;

/// Longest close reason sent to the client, in bytes.
const MAX_REASON: usize = 256;

/// How long `close` waits for the client to acknowledge the last frames (a fatal `Error`)
/// before closing the connection, which would discard them.
const FINISH_TIMEOUT: Duration = Duration::from_secs(1);

/// A WebTransport session: its control stream, and its media lanes once authenticated.
pub struct WtTransport {
    connection: Connection,
    send: SendStream,
    control: ControlReader,
    node: Arc<Node>,
    /// Whether the node may send media on lanes (`--wt-media-lanes`).
    lanes_allowed: bool,
    /// The client's extra streams: refused until the session is authenticated, then its
    /// unidirectional streams are read as media lanes.
    streams: LaneReader,
    /// Whether datagrams from the client are read (after authentication).
    datagrams_in: bool,
    /// Set when media goes to the client on lanes.
    media_out: Option<MediaSender>,
}

impl WtTransport {
    /// Wrap an accepted session and its control stream. Streams the client opens are refused
    /// until [`Transport::open_media_lanes`]. `lanes_allowed`: whether media may be sent to
    /// the client on lanes when it asks.
    pub fn new(
        connection: Connection,
        send: SendStream,
        recv: RecvStream,
        node: Arc<Node>,
        lanes_allowed: bool,
    ) -> Self {
        let _ = send.quic_stream().set_priority(CONTROL_PRIORITY);
        Self {
            streams: LaneReader::refusing(connection.clone()),
            connection,
            send,
            control: ControlReader { recv, decoder: RecordDecoder::new(MAX_HELLO_FRAME_BYTES), eof: false },
            node,
            lanes_allowed,
            datagrams_in: false,
            media_out: None,
        }
    }

    fn lane_in(&self, lane: &'static str, frame: Bytes) -> Option<Result<Incoming, TransportError>> {
        self.node.metrics().media_lane_frames.get_or_create(&LaneLabel { lane, direction: "in" }).inc();
        Some(Ok(Incoming { frame, lane: Lane::Media }))
    }
}

/// The receiving half of the control stream.
struct ControlReader {
    recv: RecvStream,
    decoder: RecordDecoder,
    eof: bool,
}

impl ControlReader {
    /// The next record of the control stream. Cancel-safe: a chunk read is in the decoder
    /// before anything else awaits, and quinn's read_chunk is itself cancel-safe.
    async fn next(&mut self) -> Option<Result<Incoming, TransportError>> {
        loop {
            match self.decoder.next_record() {
                Ok(Some(record)) => return Some(Ok(record.into())),
                Ok(None) => {}
                Err(FramingError::TooLarge { len, .. }) => return Some(Err(TransportError::TooLarge(len))),
                Err(e) => return Some(Err(TransportError::Protocol(e.to_string()))),
            }
            if self.eof {
                return match self.decoder.finish() {
                    Ok(()) => None,
                    Err(e) => Some(Err(TransportError::Protocol(e.to_string()))),
                };
            }
            match self.recv.quic_stream_mut().read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => self.decoder.extend(&chunk.bytes),
                Ok(None) => self.eof = true,
                // The client closed the session (a close with its code): a clean end.
                Err(wtransport::quinn::ReadError::ConnectionLost(
                    wtransport::quinn::ConnectionError::ApplicationClosed(_),
                )) if self.decoder.pending() == 0 => return None,
                Err(e) => return Some(Err(TransportError::Io(e.to_string()))),
            }
        }
    }
}

impl Transport for WtTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::WebTransport
    }

    async fn recv(&mut self) -> Option<Result<Incoming, TransportError>> {
        // The control stream ends the session; lanes only ever add frames.
        let lane = tokio::select! {
            biased;
            control = self.control.next() => return control,
            datagram = self.connection.receive_datagram(), if self.datagrams_in => match datagram {
                Ok(datagram) => ("datagram", datagram.payload()),
                // The connection is gone: the control stream reports how.
                Err(_) => return self.control.next().await,
            },
            Some(frame) = self.streams.next() => ("stream", frame),
        };
        self.lane_in(lane.0, lane.1)
    }

    fn set_max_frame(&mut self, bytes: usize) {
        self.control.decoder.set_max_len(bytes);
    }

    fn open_media_lanes(&mut self, send: bool) -> bool {
        self.streams = LaneReader::reading(self.connection.clone(), MAX_FRAME_BYTES, self.node.clone());
        self.datagrams_in = true;
        if send && self.lanes_allowed {
            self.media_out = Some(MediaSender::new(self.connection.clone(), self.node.clone()));
        }
        self.media_out.is_some()
    }

    async fn send(&mut self, frame: Outgoing) -> Result<Sent, TransportError> {
        if let (Some(media_out), Some(tag)) = (self.media_out.as_mut(), frame.media) {
            return Ok(if media_out.send(frame.frame, &tag).await { Sent::Written } else { Sent::MediaDropped(tag) });
        }
        let mut records = Records::default();
        records.push(frame.frame)?;
        let mut segments = records.finish();
        self.send
            .quic_stream_mut()
            .write_all_chunks(&mut segments)
            .await
            .map_err(|e| TransportError::Io(e.to_string()))?;
        Ok(Sent::Written)
    }

    /// Frames for the control stream go to quinn in one call (one lock of the connection, one
    /// wake-up of its driver per batch rather than per frame), laid out in few segments
    /// ([`Records`]); media goes to its lanes.
    async fn send_all(
        &mut self,
        frames: &mut Vec<Outgoing>,
        dropped: &mut Vec<MediaTag>,
    ) -> Result<(), TransportError> {
        let mut records = Records::default();
        for frame in frames.drain(..) {
            if let (Some(media_out), Some(tag)) = (self.media_out.as_mut(), &frame.media) {
                if !media_out.send(frame.frame, tag).await {
                    dropped.push(tag.clone());
                }
                continue;
            }
            records.push(frame.frame)?;
        }
        if records.is_empty() {
            return Ok(());
        }
        let mut segments = records.finish();
        self.send.quic_stream_mut().write_all_chunks(&mut segments).await.map_err(|e| TransportError::Io(e.to_string()))
    }

    async fn close(mut self, code: ErrorCode, reason: &str) {
        // Let the last frames reach the client: closing the connection discards unsent data.
        let _ = tokio::time::timeout(FINISH_TIMEOUT, self.send.finish()).await;
        self.connection.close(VarInt::from_u32(close_code(code).into()), truncate(reason, MAX_REASON).as_bytes());
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn reasons_are_cut_on_char_boundaries() {
        assert_eq!(truncate("short", 256), "short");
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(truncate(&"x".repeat(300), 256).len(), 256);
    }
}
