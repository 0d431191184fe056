//! Presence after a bus outage or a partition: re-recording this node's participants in the
//! presence store, and reconciling every room's view with the store for the nodes that
//! sent no roster ([`super::roster`]: the views of the nodes that did are theirs already).

use super::fanout::notify_locals;
use crate::context::NodeContext;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use switchboard_protocol::pb::{server_frame, Participant, ParticipantJoined, ParticipantLeft};
use tokio::time::Instant;

/// Store writes of one repair in flight at once: a round takes about one store timeout
/// while JetStream elects its leaders, not one per record.
const STORE_WRITES_IN_FLIGHT: usize = 32;

/// Reconcile every room with the presence store (after the bus came back or a partition
/// healed). The store: this node's local participants missing from it (purged by a side
/// that reported this node lost, after this node restored them) are put back. The view,
/// for the participants of nodes that sent no complete roster of the room since `since`
/// (a node with no member left there sends none; an old node): leaves and joins
/// announced while the bus was away were lost, so participants gone from the store are
/// reported left (reason `resync`) and new ones joined. Local sessions are never removed
/// here. `false` if a room could not be reconciled.
pub(crate) async fn resync_presence(node: &Arc<NodeContext>, since: Instant) -> bool {
    let mut complete = true;
    for room in node.rooms.all() {
        let snapshot = match node.bus.presence_list(&room.id).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(room = %room.id, error = %e, "presence resync failed");
                complete = false;
                continue;
            }
        };
        let stored: HashMap<String, Participant> = snapshot.into_iter().map(|p| (p.session.clone(), p)).collect();
        let missing: Vec<Participant> = {
            let st = room.lock();
            st.local.keys().filter(|s| !stored.contains_key(*s)).filter_map(|s| st.view.get(s).cloned()).collect()
        };
        for p in &missing {
            tracing::info!(room = %room.id, session = %p.session, "a local participant's record was missing: put back");
        }
        complete &= put_all(node, missing.into_iter().map(|p| (room.id.clone(), p)).collect()).await;
        let mut st = room.lock();
        // This node's own records are never added: its participants are its local ones
        // (a record of one that left is a removal still pending, not a participant).
        let own = &node.config.node_id;
        let judged = |p: &Participant| p.node != *own && !st.rosters.sent_since(&p.node, since);
        let gone: Vec<Participant> = st
            .view
            .values()
            .filter(|p| !stored.contains_key(&p.session) && !st.local.contains_key(&p.session) && judged(p))
            .cloned()
            .collect();
        let new: Vec<Participant> =
            stored.into_values().filter(|p| !st.view.contains_key(&p.session) && judged(p)).collect();
        if !gone.is_empty() || !new.is_empty() {
            tracing::info!(room = %room.id, left = gone.len(), joined = new.len(), "presence view reconciled with the store");
        }
        for p in gone {
            st.view.remove(&p.session);
            let ev = server_frame::Kind::ParticipantLeft(ParticipantLeft {
                room: room.id.clone(),
                participant: Some(p),
                reason: "resync".into(),
            });
            notify_locals(node, &st, "", ev);
        }
        for p in new {
            st.view.insert(p.session.clone(), p.clone());
            let ev = server_frame::Kind::ParticipantJoined(ParticipantJoined {
                room: room.id.clone(),
                participant: Some(p),
            });
            notify_locals(node, &st, "", ev);
        }
    }
    complete
}

/// Record every local participant again in the store (after the bus lost it, or other
/// nodes purged them while this node was cut off), and retry the removals that failed while
/// it was away. The other nodes' views learn of them from this node's rosters, not from
/// here. `false` if something failed (it is retried by the next repair).
pub(crate) async fn republish_presence(node: &Arc<NodeContext>) -> bool {
    let mut complete = retry_removals(node).await;
    crate::rooms_cap::restore(node).await;
    let mut records = Vec::new();
    for room in node.rooms.all() {
        let st = room.lock();
        records.extend(st.local.keys().filter_map(|sid| st.view.get(sid)).map(|p| (room.id.clone(), p.clone())));
    }
    let count = records.len();
    complete &= put_all(node, records).await;
    tracing::info!(records = count, complete, "presence records restored");
    complete
}

/// Retry the presence removals that failed, [`STORE_WRITES_IN_FLIGHT`] at a time; whether
/// none is left (the failed ones stay for the next retry).
pub(crate) async fn retry_removals(node: &Arc<NodeContext>) -> bool {
    let pending = std::mem::take(&mut *node.pending_removals.lock().unwrap_or_else(|e| e.into_inner()));
    if pending.is_empty() {
        return true;
    }
    let failed: Vec<(String, String)> = futures_util::stream::iter(pending)
        .map(|(room, session)| async move {
            match node.bus.presence_remove(&room, &session).await {
                Ok(()) => None,
                Err(e) => {
                    tracing::warn!(room, session, error = %e, "removing presence failed again; will retry");
                    Some((room, session))
                }
            }
        })
        .buffer_unordered(STORE_WRITES_IN_FLIGHT)
        .filter_map(|r| async move { r })
        .collect()
        .await;
    let done = failed.is_empty();
    node.pending_removals.lock().unwrap_or_else(|e| e.into_inner()).extend(failed);
    done
}

/// Write presence records, [`STORE_WRITES_IN_FLIGHT`] at a time; whether all were written.
async fn put_all(node: &Arc<NodeContext>, records: Vec<(String, Participant)>) -> bool {
    futures_util::stream::iter(records)
        .map(|(room, p)| async move {
            let put = node.bus.presence_put(&room, &p).await;
            if let Err(e) = &put {
                tracing::warn!(room, error = %e, "restoring presence failed");
            }
            put.is_ok()
        })
        .buffer_unordered(STORE_WRITES_IN_FLIGHT)
        .fold(true, |all, ok| async move { all && ok })
        .await
}
