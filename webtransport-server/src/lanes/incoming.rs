//! Client -> node streams: the unidirectional streams a session's client opens are read as
//! media lanes once the session is authenticated; before that, and for bidirectional streams
//! beyond the control stream always, they are refused as they arrive.

use bytes::Bytes;
use std::sync::Arc;
use switchboard_protocol::framing::{FramingError, RecordDecoder};
use switchboard_protocol::{close_code, ErrorCode};
use switchboard_relay::metrics::ReasonLabel;
use switchboard_relay::Node;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use wtransport::{Connection, RecvStream, VarInt};

/// Unidirectional streams a client may have open at once (QUIC stream limit: HTTP/3 takes
/// three of them for its control and QPACK streams).
pub(crate) const MAX_MEDIA_STREAMS: u32 = 13;

/// Frames read from streams and not yet taken by the session: past it, stream reads wait
/// and QUIC flow control pushes back on the client.
const QUEUED_FRAMES: usize = 16;

/// Bytes taken from a stream per read (quinn hands out its own buffers).
const READ_CHUNK: usize = 64 * 1024;

fn refusal_code() -> VarInt {
    VarInt::from_u32(close_code(ErrorCode::InvalidArgument).into())
}

/// Hands the session the frames of its client's media streams; owns the task that accepts
/// (or refuses) the client's extra streams, which ends with it.
pub(crate) struct LaneReader {
    frames: mpsc::Receiver<Bytes>,
    task: tokio::task::AbortHandle,
}

impl LaneReader {
    /// Refuse every stream after the control stream, so they neither queue in wtransport nor
    /// hold flow-control credit (a session that has not authenticated).
    pub(crate) fn refusing(connection: Connection) -> Self {
        let (_, frames) = mpsc::channel(1);
        let task = tokio::spawn(accept_streams(connection, None)).abort_handle();
        Self { frames, task }
    }

    /// Read unidirectional streams as media lanes, records of at most `max_frame` bytes;
    /// bidirectional streams are still refused.
    pub(crate) fn reading(connection: Connection, max_frame: usize, node: Arc<Node>) -> Self {
        let (tx, frames) = mpsc::channel(QUEUED_FRAMES);
        let task = tokio::spawn(accept_streams(connection, Some((tx, max_frame, node)))).abort_handle();
        Self { frames, task }
    }

    /// The next frame from a media stream. Cancel-safe; pending forever once refusing.
    pub(crate) async fn next(&mut self) -> Option<Bytes> {
        self.frames.recv().await
    }
}

impl Drop for LaneReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Lanes = (mpsc::Sender<Bytes>, usize, Arc<Node>);

async fn accept_streams(connection: Connection, lanes: Option<Lanes>) {
    // Dropped with this task: the readers end with the session.
    let mut readers = JoinSet::new();
    loop {
        tokio::select! {
            bi = connection.accept_bi() => match bi {
                Ok((mut send, recv)) => {
                    tracing::debug!(stream = %recv.id(), "WebTransport: refusing an extra bidirectional stream");
                    let _ = send.reset(refusal_code());
                    recv.stop(refusal_code());
                }
                Err(_) => return,
            },
            uni = connection.accept_uni() => match uni {
                Ok(recv) => match &lanes {
                    Some((tx, max_frame, node)) => {
                        readers.spawn(read_stream(recv, tx.clone(), *max_frame, node.clone()));
                    }
                    None => {
                        tracing::debug!(stream = %recv.id(), "WebTransport: refusing a unidirectional stream before Hello");
                        recv.stop(refusal_code());
                    }
                },
                Err(_) => return,
            },
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
        }
    }
}

/// Hand each record of one media stream to the session until the stream ends; a record over
/// `max_frame` or a truncated one stops the stream.
async fn read_stream(mut recv: RecvStream, tx: mpsc::Sender<Bytes>, max_frame: usize, node: Arc<Node>) {
    let mut decoder = RecordDecoder::new(max_frame);
    loop {
        loop {
            match decoder.next_record() {
                Ok(Some(record)) => {
                    if tx.send(record).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let reason = if matches!(e, FramingError::TooLarge { .. }) { "too_large" } else { "bad_record" };
                    node.metrics().media_lane_drops.get_or_create(&ReasonLabel { reason }).inc();
                    tracing::debug!(error = %e, "WebTransport: media stream refused");
                    recv.stop(refusal_code());
                    return;
                }
            }
        }
        match recv.quic_stream_mut().read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => decoder.extend(&chunk.bytes),
            // The end of the stream, or a reset (a client dropping a stale group).
            Ok(None) | Err(_) => return,
        }
    }
}
