//! A WebTransport session's control stream adapted to the relay's [`Transport`]: one
//! bidirectional stream carrying length-prefixed records.

use bytes::Bytes;
use switchboard_protocol::framing::{encode_record, FramingError, RecordDecoder};
use switchboard_protocol::{close_code, limits::MAX_FRAME_BYTES, ErrorCode};
use switchboard_relay::{Transport, TransportError, TransportKind};
use wtransport::{Connection, RecvStream, SendStream, VarInt};

/// Bytes read from the stream per call.
const READ_CHUNK: usize = 16 * 1024;

/// A WebTransport session's control stream.
pub struct WtTransport {
    connection: Connection,
    send: SendStream,
    recv: RecvStream,
    decoder: RecordDecoder,
    buf: Box<[u8]>,
    eof: bool,
}

impl WtTransport {
    /// Wrap an accepted session and its control stream.
    pub fn new(connection: Connection, send: SendStream, recv: RecvStream) -> Self {
        Self {
            connection,
            send,
            recv,
            decoder: RecordDecoder::new(MAX_FRAME_BYTES),
            buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
            eof: false,
        }
    }
}

impl Transport for WtTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::WebTransport
    }

    async fn recv(&mut self) -> Option<Result<Bytes, TransportError>> {
        loop {
            // Cancel-safe: bytes read are kept in the decoder before anything else awaits.
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
            match self.recv.read(&mut self.buf).await {
                Ok(Some(n)) => self.decoder.extend(&self.buf[..n]),
                Ok(None) => self.eof = true,
                Err(e) => return Some(Err(TransportError::Io(e.to_string()))),
            }
        }
    }

    async fn send(&mut self, frame: Bytes) -> Result<(), TransportError> {
        self.send.write_all(&encode_record(&frame)).await.map_err(|e| TransportError::Io(e.to_string()))
    }

    async fn close(mut self, code: ErrorCode, reason: &str) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.send.finish()).await;
        let reason = &reason.as_bytes()[..reason.len().min(256)];
        self.connection.close(VarInt::from_u32(close_code(code).into()), reason);
    }
}
