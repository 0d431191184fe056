//! The receiving half of a WebSocket connection: the request payload decoded into frames.
//!
//! Frames are cut out of the payload by their headers first ([`FrameSplitter`]): a header
//! announcing more than the limit is refused when it arrives, and at most one frame within the
//! limit (plus its header) is ever buffered. actix-http's codec then decodes each whole frame
//! (it compares the length with its own limit only once the whole frame is buffered).

use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame, ProtocolError};
use bytes::BytesMut;
use futures_util::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use switchboard_protocol::websocket::{FrameSplitter, SplitError};

/// Why no more frames can be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A frame's header announced more than the limit (refused at the header).
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// The announced payload length.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The bytes are not valid WebSocket framing.
    #[error("{0}")]
    Protocol(ProtocolError),
    /// The connection ended without a close frame, or failed.
    #[error("connection lost: {0}")]
    Lost(String),
}

/// Frames from the client, decoded from the upgraded request's payload.
pub struct Incoming {
    payload: actix_web::dev::Payload,
    /// The part of the last chunk read that the frames have not taken yet (frames are split
    /// off it without a copy).
    chunk: BytesMut,
    splitter: FrameSplitter,
    codec: Codec,
    ended: bool,
}

impl Incoming {
    /// Decode `payload`, refusing frames over `max_frame` bytes.
    pub fn new(payload: actix_web::dev::Payload, max_frame: usize) -> Self {
        Self {
            payload,
            chunk: BytesMut::new(),
            splitter: FrameSplitter::new(max_frame),
            // The splitter enforces the limit; the codec's must not be lower.
            codec: Codec::new().max_size(usize::MAX),
            ended: false,
        }
    }

    /// Change the largest frame accepted, from the next frame on.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.splitter.set_max_payload(max_frame);
    }

    /// The next frame; `None` once the client has closed cleanly. Cancel-safe: what has been
    /// read stays buffered.
    pub async fn next(&mut self) -> Option<Result<Frame, ReadError>> {
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }

    fn fail(&mut self, e: ReadError) -> Poll<Option<Result<Frame, ReadError>>> {
        self.ended = true;
        self.chunk = BytesMut::new();
        Poll::Ready(Some(Err(e)))
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame, ReadError>>> {
        loop {
            match self.splitter.next_frame(&mut self.chunk) {
                Ok(Some(mut whole)) => {
                    return match self.codec.decode(&mut whole) {
                        Ok(Some(frame)) => Poll::Ready(Some(Ok(frame))),
                        // A whole frame always decodes to a frame or an error.
                        Ok(None) => {
                            self.fail(ReadError::Protocol(ProtocolError::Io(std::io::Error::other("incomplete frame"))))
                        }
                        Err(e) => self.fail(ReadError::Protocol(e)),
                    };
                }
                Ok(None) => {}
                Err(SplitError::TooLarge { len, max }) => return self.fail(ReadError::TooLarge { len, max }),
            }
            // The chunk is used up: let go of its allocation (an idle connection holds no
            // read buffer; frames handed out keep what they need alive).
            self.chunk = BytesMut::new();
            if self.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.payload).poll_next(cx) {
                // Without a copy when the chunk is not shared (actix-http hands out its own).
                Poll::Ready(Some(Ok(chunk))) => self.chunk = BytesMut::from(chunk),
                Poll::Ready(Some(Err(e))) => return self.fail(ReadError::Lost(e.to_string())),
                // The TCP connection ended without a close frame (a close frame ends the
                // session before the payload does).
                Poll::Ready(None) => {
                    return self.fail(ReadError::Lost("the connection ended without a close frame".into()))
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
