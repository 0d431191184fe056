//! Node -> client lanes: QUIC datagrams (one whole `ServerFrame` each) and the unidirectional
//! streams the node opens (one group of one track each, length-prefixed records), read into
//! one bounded queue of raw frames for the connection's reader.

use super::Lane;
use bytes::Bytes;
use switchboard_protocol::framing::RecordDecoder;
use switchboard_protocol::limits::MAX_FRAME_BYTES;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use wtransport::{Connection, RecvStream, VarInt};

/// Group streams read at once. The node keeps at most 64 open per session; the QUIC stream
/// limit the client announces ([`super::transport_config`]) makes the node wait beyond it,
/// and a stream past it anyway is stopped.
pub(crate) const MAX_GROUP_STREAMS: usize = 64;

/// Frames read from lanes and not yet taken by the reader: past it, datagrams wait in
/// quinn's bounded receive buffer (the oldest dropped when full) and streams in QUIC flow
/// control.
const QUEUED_FRAMES: usize = 64;

/// Bytes taken from a stream per read (quinn hands out its own buffers).
const READ_CHUNK: usize = 64 * 1024;

/// Stream error code for a group stream this client refuses (too many, or a record over
/// the frame limit): `INVALID_ARGUMENT`'s close code, as the node uses for the same.
fn refusal_code() -> VarInt {
    VarInt::from_u32(switchboard_protocol::close_code(switchboard_protocol::ErrorCode::InvalidArgument).into())
}

/// The frames of a session's incoming lanes; owns the task reading them, which ends with it.
pub(crate) struct LaneReceiver {
    frames: mpsc::Receiver<(Lane, Bytes)>,
    task: tokio::task::AbortHandle,
}

impl LaneReceiver {
    /// Start reading `connection`'s datagrams and incoming unidirectional streams.
    pub(crate) fn start(connection: Connection) -> Self {
        let (tx, frames) = mpsc::channel(QUEUED_FRAMES);
        let task = tokio::spawn(read_lanes(connection, tx)).abort_handle();
        Self { frames, task }
    }

    /// The next frame (undecoded) and its lane; `None` once the connection is gone.
    /// Cancel-safe.
    pub(crate) async fn next(&mut self) -> Option<(Lane, Bytes)> {
        self.frames.recv().await
    }
}

impl Drop for LaneReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_lanes(connection: Connection, tx: mpsc::Sender<(Lane, Bytes)>) {
    // Dropped with this task: the stream readers end with it.
    let mut readers = JoinSet::new();
    loop {
        tokio::select! {
            datagram = connection.receive_datagram() => match datagram {
                Ok(d) => {
                    if tx.send((Lane::Datagram, d.payload())).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            },
            uni = connection.accept_uni() => match uni {
                Ok(recv) if readers.len() < MAX_GROUP_STREAMS => {
                    readers.spawn(read_group(recv, tx.clone()));
                }
                Ok(recv) => {
                    tracing::debug!(stream = %recv.id(), "media lanes: too many group streams; stopping one");
                    recv.stop(refusal_code());
                }
                Err(_) => return,
            },
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
        }
    }
}

/// Hand each record of one group stream to the reader until the stream ends. A reset is the
/// node dropping a superseded group: what was not read is stale, and simply not delivered.
async fn read_group(mut recv: RecvStream, tx: mpsc::Sender<(Lane, Bytes)>) {
    let mut decoder = RecordDecoder::new(MAX_FRAME_BYTES);
    loop {
        loop {
            match decoder.next_record() {
                Ok(Some(record)) => {
                    if tx.send((Lane::Stream, record)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "media lanes: bad record on a group stream; stopping it");
                    recv.stop(refusal_code());
                    return;
                }
            }
        }
        match recv.quic_stream_mut().read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => decoder.extend(&chunk.bytes),
            Ok(None) | Err(_) => return,
        }
    }
}
