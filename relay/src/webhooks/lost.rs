//! Rooms a dead node leaves behind with nobody to report them.
//!
//! When a node stops heartbeating, each node hosting one of its rooms reaps its
//! participants there and reports their `participant.left` (reason `node_lost`). A room
//! whose every participant was on the dead node has no such host: one node (the first to
//! claim the dead node in the rooms bucket) walks the presence store, reports those
//! participants' leaves and the room's `room.finished`, and clears their presence records.

use super::worker::Sink;
use super::{facts, rooms, spool};
use crate::bus::{Bucket, BusError};
use crate::context::NodeContext;
use bytes::Bytes;
use std::sync::Arc;
use tokio::time::Instant;

/// The claim on a lost node, in the rooms bucket (room ids have no dots: no room's key).
fn claim_key(lost: &str) -> String {
    format!("lost.{lost}")
}

/// `returned` is back: drop the claim on its loss, so its next loss is reported too.
pub(super) async fn forget(node: &NodeContext, returned: &str) {
    if let Err(e) = node.bus.kv_purge(Bucket::Rooms, &claim_key(returned)).await {
        tracing::debug!(node = returned, error = %e, "cannot drop the claim on a returned node");
    }
}

/// Report the rooms `lost` leaves behind, if this node claims it first.
pub(super) async fn sweep(node: &Arc<NodeContext>, sink: &Sink, lost: &str) -> Result<(), BusError> {
    let facts = facts(node);
    let claim = claim_key(lost);
    match node.bus.kv_create(Bucket::Rooms, &claim, Bytes::from(facts.now_ms.to_string())).await {
        Ok(_) => tracing::info!(node = lost, "a node was lost: reporting the rooms it leaves behind"),
        Err(BusError::Conflict(_)) => {
            tracing::debug!(node = lost, "another node reports what the lost node left behind");
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    let (mut reported, mut finished) = (0usize, 0usize);
    for room in node.bus.presence_rooms().await?.into_keys() {
        let records = node.bus.presence_list(&room).await?;
        let now = Instant::now();
        if records.iter().any(|p| !node.node_is_dead(&p.node, now)) {
            continue; // a live node hosts the room: its reaper reports the leaves
        }
        for p in records.iter().filter(|p| p.node == lost) {
            if node.webhooks.wants("participant.left") {
                spool::store(node, sink, facts.participant_left(&room, p, "node_lost")).await;
            }
            node.bus.presence_remove(&room, &p.session).await.ok();
            reported += 1;
        }
        if node.webhooks.wants("room.finished") {
            for event in rooms::finished(node, &facts, &room).await? {
                finished += 1;
                spool::store(node, sink, event).await;
            }
        }
    }
    tracing::info!(node = lost, participants = reported, rooms = finished, "reported what a lost node left behind");
    Ok(())
}
