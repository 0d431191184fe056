//! When a room starts and finishes, cluster-wide, decided once.
//!
//! The rooms bucket holds one key per running room (value: when it started, Unix ms). A
//! join that found nobody else in the room creates the key: the node whose create wins
//! reports `room.started`. A leave that left no local member checks the cluster's presence:
//! if nobody (on a live node) is left, it removes the key at the revision it read, and the
//! node whose removal wins reports `room.finished`. A join racing that removal saw the key
//! and did not start the room: the finisher looks at presence again after its removal and
//! starts the room anew if someone is there, so every `room.finished` follows its
//! `room.started` and a room with people in it is always running.

use super::event::{Event, Facts};
use crate::bus::{Bucket, BusError};
use crate::context::NodeContext;
use bytes::Bytes;
use tokio::time::Instant;

/// `room.started` if this node's create of the room's key wins.
pub(super) async fn started(node: &NodeContext, facts: &Facts<'_>, room: &str) -> Result<Option<Event>, BusError> {
    let at = facts.now_ms;
    match node.bus.kv_create(Bucket::Rooms, room, Bytes::from(at.to_string())).await {
        Ok(_) => Ok(Some(facts.room_started(room, at))),
        Err(BusError::Conflict(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether anyone on a live node is in `room`.
async fn occupied(node: &NodeContext, room: &str) -> Result<bool, BusError> {
    let now = Instant::now();
    Ok(node.bus.presence_list(room).await?.iter().any(|p| !node.node_is_dead(&p.node, now)))
}

/// `room.finished` (and a new `room.started` if a join raced it) if the room is empty and
/// this node's removal of its key wins.
pub(super) async fn finished(node: &NodeContext, facts: &Facts<'_>, room: &str) -> Result<Vec<Event>, BusError> {
    if occupied(node, room).await? {
        return Ok(Vec::new());
    }
    let Some(entry) = node.bus.kv_get(Bucket::Rooms, room).await? else { return Ok(Vec::new()) };
    let started_at = std::str::from_utf8(&entry.value).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    match node.bus.kv_purge_if(Bucket::Rooms, room, entry.revision).await {
        Ok(()) => {}
        Err(BusError::Conflict(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let mut events = vec![facts.room_finished(room, started_at)];
    if occupied(node, room).await? {
        events.extend(started(node, facts, room).await?);
    }
    Ok(events)
}
