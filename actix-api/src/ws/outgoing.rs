//! The sending half of a WebSocket connection.
//!
//! The session encodes each frame straight into one shared buffer, and the HTTP response
//! body hands that buffer to actix-http whole whenever the connection can take more. A
//! burst of frames therefore costs one wake-up of the connection and one socket write, and
//! an idle connection holds no buffer and no channel (actix-ws kept a 32-slot channel per
//! connection and moved every frame through it on its own).

use actix_http::ws::{CloseReason, OpCode, Parser};
use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tokio::sync::Notify;

/// Encoded bytes waiting for the socket beyond which `send` waits for the body to take
/// them (the session's write timeout then catches a client that stopped reading). Small:
/// frames are copied in here per connection, while behind it the session's queue holds
/// them shared between all recipients.
const HIGH_WATER: usize = 32 * 1024;

/// Initial capacity of the buffer for a burst: most bursts fit without a reallocation.
const BURST_CAPACITY: usize = 4096;

/// Longest close reason a control frame can carry (125 bytes minus the code).
const MAX_CLOSE_REASON: usize = 123;

/// The connection is gone or closing: nothing more can be sent.
#[derive(Debug, thiserror::Error)]
#[error("the WebSocket connection is closed")]
pub struct Closed;

#[derive(Default)]
struct State {
    buf: BytesMut,
    /// A close frame is queued: the body ends once it is taken.
    closing: bool,
    /// The response body was dropped (the connection ended).
    gone: bool,
}

/// Shared between the session (writer) and the response body (reader).
#[derive(Default)]
pub struct Outgoing {
    state: Mutex<State>,
    /// Wakes the body when the buffer goes from empty to non-empty, or closes.
    body: AtomicWaker,
    /// Wakes writers waiting for room when the body takes the buffer.
    drained: Notify,
}

impl Outgoing {
    /// A new buffer and the response body reading it.
    pub fn new() -> (Arc<Self>, Body) {
        let out = Arc::new(Self::default());
        (out.clone(), Body(out))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Encode one frame if the connection is open; returns whether the body must be woken.
    fn append(st: &mut State, op: OpCode, payload: &[u8]) -> bool {
        let was_empty = st.buf.is_empty();
        if st.buf.capacity() == 0 {
            st.buf.reserve(BURST_CAPACITY.max(payload.len() + 14));
        }
        Parser::write_message(&mut st.buf, payload, op, true, false);
        was_empty
    }

    /// Append the frame if there is room: `Some(Ok)` when queued, `Some(Err)` when the
    /// connection is closed, `None` when the buffer is above [`HIGH_WATER`].
    pub fn try_append(&self, op: OpCode, payload: &[u8]) -> Option<Result<(), Closed>> {
        let mut st = self.lock();
        if st.gone || st.closing {
            return Some(Err(Closed));
        }
        if st.buf.len() >= HIGH_WATER {
            return None;
        }
        let wake = Self::append(&mut st, op, payload);
        drop(st);
        if wake {
            self.body.wake();
        }
        Some(Ok(()))
    }

    /// Queue one data frame, waiting while more than [`HIGH_WATER`] bytes are unsent.
    pub async fn send(&self, op: OpCode, payload: &[u8]) -> Result<(), Closed> {
        // The common case takes one lock and no waiter registration.
        if let Some(done) = self.try_append(op, payload) {
            return done;
        }
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            // Registered before the check, so a drain between the check and the wait wakes us.
            drained.as_mut().enable();
            if let Some(done) = self.try_append(op, payload) {
                return done;
            }
            drained.await;
        }
    }

    /// Queue a close frame; the connection ends once it is written.
    pub fn close(&self, mut reason: CloseReason) {
        if let Some(d) = reason.description.as_mut() {
            if d.len() > MAX_CLOSE_REASON {
                let mut end = MAX_CLOSE_REASON;
                while !d.is_char_boundary(end) {
                    end -= 1;
                }
                d.truncate(end);
            }
        }
        let mut st = self.lock();
        if st.gone || st.closing {
            return;
        }
        Parser::write_close(&mut st.buf, Some(reason), false);
        st.closing = true;
        drop(st);
        self.body.wake();
        self.drained.notify_waiters();
    }
}

/// The response body of an upgraded connection: the encoded frames, as they come.
pub struct Body(Arc<Outgoing>);

impl futures_util::Stream for Body {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let out = &self.0;
        let mut st = out.lock();
        if !st.buf.is_empty() {
            // Taken whole: an idle connection keeps no buffer.
            let chunk = std::mem::take(&mut st.buf).freeze();
            drop(st);
            out.drained.notify_waiters();
            return Poll::Ready(Some(Ok(chunk)));
        }
        if st.closing {
            return Poll::Ready(None);
        }
        // Registered under the lock: a writer appending after this sees an empty buffer
        // and wakes us.
        out.body.register(cx.waker());
        Poll::Pending
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        self.0.lock().gone = true;
        self.0.drained.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn a_burst_is_taken_as_one_chunk_and_the_buffer_released() {
        let (out, mut body) = Outgoing::new();
        out.send(OpCode::Binary, b"one").await.unwrap();
        out.send(OpCode::Binary, b"two").await.unwrap();
        let chunk = body.next().await.unwrap().unwrap();
        // Two unmasked binary frames: 0x82, length, payload.
        assert_eq!(&chunk[..], b"\x82\x03one\x82\x03two");
        assert_eq!(out.lock().buf.capacity(), 0);
    }

    #[tokio::test]
    async fn a_writer_waits_above_the_high_water_mark_until_the_body_drains() {
        let (out, mut body) = Outgoing::new();
        let big = vec![0u8; HIGH_WATER];
        out.send(OpCode::Binary, &big).await.unwrap();
        let waiting = tokio::spawn({
            let out = out.clone();
            async move { out.send(OpCode::Binary, b"later").await }
        });
        // Let the writer run until it parks.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "the second frame waits for room");
        let first = body.next().await.unwrap().unwrap();
        assert!(!first.ends_with(b"later"), "the waiting frame was not appended above the mark");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap().unwrap();
        assert_eq!(&body.next().await.unwrap().unwrap()[..], b"\x82\x05later");
    }

    #[tokio::test]
    async fn close_ends_the_body_after_the_close_frame_and_refuses_more() {
        let (out, mut body) = Outgoing::new();
        out.close(CloseReason { code: actix_http::ws::CloseCode::Normal, description: Some("é".repeat(100)) });
        let chunk = body.next().await.unwrap().unwrap();
        assert_eq!(chunk[0], 0x88, "a close frame");
        assert!(chunk.len() <= 2 + 125, "control frames carry at most 125 bytes");
        assert!(body.next().await.is_none());
        assert!(out.send(OpCode::Binary, b"x").await.is_err());
    }

    #[tokio::test]
    async fn a_dropped_body_fails_writers() {
        let (out, body) = Outgoing::new();
        drop(body);
        assert!(out.send(OpCode::Binary, b"x").await.is_err());
    }
}
