//! The receiving half of a WebSocket connection: the request payload decoded into frames.

use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame, ProtocolError};
use bytes::BytesMut;
use futures_util::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Frames from the client, decoded from the upgraded request's payload.
pub struct Incoming {
    payload: actix_web::dev::Payload,
    buf: BytesMut,
    codec: Codec,
    ended: bool,
}

impl Incoming {
    /// Decode `payload`, refusing frames over `max_frame` bytes.
    pub fn new(payload: actix_web::dev::Payload, max_frame: usize) -> Self {
        Self { payload, buf: BytesMut::new(), codec: Codec::new().max_size(max_frame), ended: false }
    }

    /// The next frame; `None` once the client's side has ended. Cancel-safe: what has been
    /// read stays in the buffer.
    pub async fn next(&mut self) -> Option<Result<Frame, ProtocolError>> {
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame, ProtocolError>>> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => {
                    if self.buf.is_empty() {
                        // Let go of the read chunk's allocation: an idle connection holds
                        // no read buffer (frames handed out keep what they need alive).
                        self.buf = BytesMut::new();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) => {}
                Err(e) => {
                    self.ended = true;
                    self.buf = BytesMut::new();
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if self.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    if self.buf.is_empty() {
                        self.buf = BytesMut::from(chunk);
                    } else {
                        self.buf.extend_from_slice(&chunk);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(ProtocolError::Io(std::io::Error::other(e.to_string())))));
                }
                Poll::Ready(None) => self.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
