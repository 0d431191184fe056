//! Room history: the catch-up of a resuming join (fetch, bounded replay), appending
//! reliable messages, and the one history follower per room that fans entries out in the
//! log's order.

use super::fanout::{deliver_message, frame};
use super::Room;
use crate::bus::{BusError, Log, LogAck, LogEntry};
use crate::context::NodeContext;
use futures_util::StreamExt;
use prost::Message as _;
use std::sync::Arc;
use switchboard_protocol::encode;
use switchboard_protocol::pb::{bus_envelope, server_frame, BusEnvelope, Message};
use tokio::time::Instant;

/// Catch-up for a resuming join, fetched before the member is added.
pub(super) struct CatchUp {
    /// Retained entries after the resume point, oldest first (decoded messages).
    pub(super) entries: Vec<Message>,
    /// Whether some messages after the resume point are no longer retained.
    pub(super) gap: bool,
}

/// The retained messages of `room` after `after`, and whether some are missing.
pub(super) async fn fetch_catch_up(node: &Arc<NodeContext>, room: &Arc<Room>, after: u64) -> Result<CatchUp, BusError> {
    if !node.config.history {
        // No history: nothing can be replayed; anything after `after` is lost to the client.
        return Ok(CatchUp { entries: Vec::new(), gap: after > 0 });
    }
    let raw = node.bus.log_read(Log::RoomHistory, &room.id, after, MAX_HISTORY_READ).await?;
    let mut entries: Vec<Message> = raw.into_iter().filter_map(|e| decode_history(&room.id, e)).collect();
    // Retention drops a room's oldest messages first: if the resume point is still
    // retained, everything after it is too. If not, some may be gone: say so (it may be
    // that only the resume point itself went; the client then reloads for nothing).
    let gap = after > 0 && !node.bus.log_contains(Log::RoomHistory, &room.id, after).await?;
    link(&mut entries, if gap { 0 } else { after });
    if gap {
        node.metrics.history_gaps.inc();
    }
    Ok(CatchUp { entries, gap })
}

/// Entries read from history for one catch-up, at most.
pub(super) const MAX_HISTORY_READ: usize = 100_000;
/// A catch-up replays at most this many messages and bytes (half the data queue, so live
/// traffic still fits behind it); older missed messages are reported as a gap.
const REPLAY_MAX_FRAMES: usize = 512;
const REPLAY_MAX_BYTES: usize = 2 << 20;

/// The newest messages of `all` that fit the replay bounds, and whether any were cut.
pub(super) fn bounded_replay(mut all: Vec<Message>) -> (Vec<Message>, bool) {
    let mut bytes = 0;
    let mut keep = 0;
    for m in all.iter().rev() {
        bytes += m.encoded_len();
        if keep == REPLAY_MAX_FRAMES || bytes > REPLAY_MAX_BYTES {
            break;
        }
        keep += 1;
    }
    let cut = all.len() - keep;
    all.drain(..cut);
    (all, cut > 0)
}

/// Link consecutive history messages (`prev_offset`), the first to `first_prev`.
pub(super) fn link(entries: &mut [Message], first_prev: u64) {
    let mut prev = first_prev;
    for m in entries {
        m.prev_offset = prev;
        prev = m.offset;
    }
}

/// Decode a history entry into the message it carries, with its offset.
pub(super) fn decode_history(room: &str, entry: LogEntry) -> Option<Message> {
    match BusEnvelope::decode(entry.payload) {
        Ok(BusEnvelope { kind: Some(bus_envelope::Kind::Message(mut m)), .. }) => {
            m.offset = entry.seq;
            Some(m)
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(room, seq = entry.seq, error = %e, "skipping undecodable history entry");
            None
        }
    }
}

/// Append a reliable message to the room's history. Resolves once the message is handed
/// to the bus (a session's messages keep their order); the returned ack resolves with its
/// offset once stored, so a publisher can have many messages in flight.
///
/// Appends with the same `dedupe` id within two minutes are stored once (a client's retry
/// of a request, a backend's retry with the same idempotency key).
pub(crate) async fn append_history(
    node: &Arc<NodeContext>,
    room_id: &str,
    msg: Message,
    dedupe: Option<String>,
) -> Result<LogAck, BusError> {
    let env = BusEnvelope { origin_node: node.config.node_id.clone(), kind: Some(bus_envelope::Kind::Message(msg)) };
    let started = Instant::now();
    let r = node.bus.log_append(Log::RoomHistory, room_id, encode(&env), dedupe).await;
    node.metrics.bus_publish_seconds.observe(started.elapsed().as_secs_f64());
    if r.is_err() {
        node.metrics.bus_publish_errors.inc();
    }
    r
}

/// A follower quiet for this long checks whether the log moved on without it.
const STALL_CHECK: std::time::Duration = std::time::Duration::from_secs(3);

/// Follow the room's history log and fan entries out; re-follow from the last delivered
/// offset when the follower ends (bus failure, fell behind) or stalls (its consumer was
/// lost with a NATS server).
pub(super) async fn follow_history(node: std::sync::Weak<NodeContext>, room: Arc<Room>) {
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        let Some(bus) = node.upgrade().map(|n| n.bus.clone()) else { return };
        let after = room.lock().delivered;
        match bus.log_follow(Log::RoomHistory, &room.id, after).await {
            Ok(mut entries) => loop {
                let entry = match tokio::time::timeout(STALL_CHECK, entries.next()).await {
                    Ok(Some(entry)) => entry,
                    Ok(None) => break,
                    Err(_) => {
                        // Quiet for a while: if the log moved on without us, the consumer
                        // was lost with a server (its own detection takes 10 s or more).
                        let delivered = room.lock().delivered;
                        match bus.log_last(Log::RoomHistory, &room.id).await {
                            Ok(last) if last > delivered => {
                                tracing::warn!(room = %room.id, last, delivered, "history follower stalled; re-following");
                                break;
                            }
                            _ => continue,
                        }
                    }
                };
                let Some(node) = node.upgrade() else { return };
                match entry {
                    Ok(entry) => {
                        deliver_history(&node, &room, entry);
                        backoff = std::time::Duration::from_millis(100);
                    }
                    Err(e) => {
                        tracing::warn!(room = %room.id, error = %e, "history follower failed; re-following");
                        break;
                    }
                }
            },
            Err(e) => tracing::warn!(room = %room.id, error = %e, "cannot follow room history"),
        }
        if room.lock().closed {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}

/// Fan one history entry out to the local members that have not had it.
fn deliver_history(node: &NodeContext, room: &Room, entry: LogEntry) {
    let seq = entry.seq;
    let Some(mut m) = decode_history(&room.id, entry) else { return };
    let mut st = room.lock();
    if seq <= st.delivered {
        return; // a re-follow overlapped
    }
    m.prev_offset = st.delivered;
    st.delivered = seq;
    let from = m.from.as_ref().map(|f| f.session.clone()).unwrap_or_default();
    let latency_ms = switchboard_protocol::now_ms().saturating_sub(m.sent_at_ms);
    node.metrics.delivery_latency_seconds.observe(latency_ms as f64 / 1000.0);
    let bytes = frame(server_frame::Kind::Message(m));
    deliver_message(node, &room.id, &st, &from, &bytes, false, |member| seq > member.floor);
}

/// Restart every room's history follower after the bus reconnected (its consumer died
/// with the connection). If the broker lost the history (offsets went back), start over
/// from what it has now.
pub(crate) async fn refollow_history(node: &Arc<NodeContext>) {
    if !node.config.history {
        return;
    }
    for room in node.rooms.all() {
        let last = match node.bus.log_last(Log::RoomHistory, &room.id).await {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!(room = %room.id, error = %e, "cannot read the room's history position");
                continue;
            }
        };
        let mut st = room.lock();
        if st.closed {
            continue;
        }
        if last < st.delivered {
            tracing::warn!(room = %room.id, last, delivered = st.delivered, "room history was lost by the bus; starting over");
            st.delivered = last;
        }
        if let Some(task) = st.follower.take() {
            task.abort();
        }
        st.follower = Some(node.runtime.spawn(follow_history(Arc::downgrade(node), room.clone())));
    }
}
