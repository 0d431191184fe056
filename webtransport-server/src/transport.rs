//! A WebTransport session's control stream adapted to the relay's [`Transport`]: one
//! bidirectional stream carrying length-prefixed records.

use bytes::Bytes;
use std::time::Duration;
use switchboard_protocol::framing::{FramingError, RecordDecoder};
use switchboard_protocol::{close_code, limits::MAX_HELLO_FRAME_BYTES, ErrorCode};
use switchboard_relay::{Transport, TransportError, TransportKind};
use wtransport::{Connection, RecvStream, SendStream, VarInt};

/// Most bytes taken from the stream per read (quinn hands out its own buffers: no copy and
/// no per-session read buffer).
const READ_CHUNK: usize = 64 * 1024;

/// Longest close reason sent to the client, in bytes.
const MAX_REASON: usize = 256;

/// How long `close` waits for the client to acknowledge the last frames (a fatal `Error`)
/// before closing the connection, which would discard them.
const FINISH_TIMEOUT: Duration = Duration::from_secs(1);

/// Stream error code for streams beyond the control stream (reset / stop-sending).
fn extra_stream_code() -> VarInt {
    VarInt::from_u32(close_code(ErrorCode::InvalidArgument).into())
}

/// A WebTransport session's control stream.
pub struct WtTransport {
    connection: Connection,
    send: SendStream,
    recv: RecvStream,
    decoder: RecordDecoder,
    eof: bool,
    /// The task refusing further streams; ends with the session.
    refuser: tokio::task::AbortHandle,
}

impl WtTransport {
    /// Wrap an accepted session and its control stream. Streams the client opens later
    /// are refused for as long as this value lives.
    pub fn new(connection: Connection, send: SendStream, recv: RecvStream) -> Self {
        let refuser = tokio::spawn(refuse_extra_streams(connection.clone())).abort_handle();
        Self { connection, send, recv, decoder: RecordDecoder::new(MAX_HELLO_FRAME_BYTES), eof: false, refuser }
    }
}

impl Drop for WtTransport {
    fn drop(&mut self) {
        self.refuser.abort();
    }
}

/// Accept and immediately stop every stream after the control stream, so they neither
/// queue in wtransport nor hold flow-control credit.
async fn refuse_extra_streams(connection: Connection) {
    loop {
        tokio::select! {
            bi = connection.accept_bi() => match bi {
                Ok((mut send, recv)) => {
                    tracing::debug!(stream = %recv.id(), "WebTransport: refusing an extra bidirectional stream");
                    let _ = send.reset(extra_stream_code());
                    recv.stop(extra_stream_code());
                }
                Err(_) => return,
            },
            uni = connection.accept_uni() => match uni {
                Ok(recv) => {
                    tracing::debug!(stream = %recv.id(), "WebTransport: refusing a unidirectional stream");
                    recv.stop(extra_stream_code());
                }
                Err(_) => return,
            },
        }
    }
}

impl Transport for WtTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::WebTransport
    }

    async fn recv(&mut self) -> Option<Result<Bytes, TransportError>> {
        loop {
            // Cancel-safe: a chunk read is in the decoder before anything else awaits, and
            // quinn's read_chunk is itself cancel-safe.
            match self.decoder.next_record() {
                Ok(Some(record)) => return Some(Ok(record)),
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

    fn set_max_frame(&mut self, bytes: usize) {
        self.decoder.set_max_len(bytes);
    }

    async fn send(&mut self, frame: Bytes) -> Result<(), TransportError> {
        let len = u32::try_from(frame.len()).map_err(|_| TransportError::TooLarge(frame.len()))?;
        // The prefix and the frame go out as two chunks: the frame (possibly shared by many
        // recipients) is not copied.
        let mut chunks = [Bytes::copy_from_slice(&len.to_be_bytes()), frame];
        self.send.quic_stream_mut().write_all_chunks(&mut chunks).await.map_err(|e| TransportError::Io(e.to_string()))
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
