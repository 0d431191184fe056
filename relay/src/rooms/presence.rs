//! Presence after a bus outage: re-recording this node's participants and reconciling
//! every room's view with the presence store.

use super::fanout::notify_locals;
use crate::context::NodeContext;
use std::collections::HashMap;
use std::sync::Arc;
use switchboard_protocol::pb::{
    bus_envelope, server_frame, Participant, ParticipantJoined, ParticipantLeft, PresenceUpdate,
};
use switchboard_protocol::subject::RoomChannel;

/// Reconcile every room's view with the presence store (after the bus came back): leaves
/// and joins announced while the bus was away were lost, so participants gone from the
/// store are reported left (reason `resync`) and new ones joined. Local sessions are never
/// removed here; their records, if the store lost them (purged by a side that reported this
/// node lost, after this node restored them), are put back. `false` if a room could not be
/// reconciled.
pub(crate) async fn resync_presence(node: &Arc<NodeContext>) -> bool {
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
        for p in missing {
            tracing::info!(room = %room.id, session = %p.session, "a local participant's record was missing: put back");
            if let Err(e) = node.bus.presence_put(&room.id, &p).await {
                tracing::warn!(room = %room.id, error = %e, "putting back a presence record failed");
                complete = false;
                continue;
            }
            // Announced too: a node whose view lost the participant with the record (its
            // removal landed after this node's republish) may have finished its own repair.
            let update =
                PresenceUpdate { room: room.id.clone(), participant: Some(p), joined: true, reason: String::new() };
            let subject = node.subjects.room(&room.id, RoomChannel::Presence);
            if let Err(e) = node.publish(subject, bus_envelope::Kind::Presence(update)).await {
                tracing::warn!(room = %room.id, error = %e, "announcing a put-back participant failed");
                complete = false;
            }
        }
        let mut st = room.lock();
        let gone: Vec<Participant> = st
            .view
            .values()
            .filter(|p| !stored.contains_key(&p.session) && !st.local.contains_key(&p.session))
            .cloned()
            .collect();
        for p in gone {
            st.view.remove(&p.session);
            let ev = server_frame::Kind::ParticipantLeft(ParticipantLeft {
                room: room.id.clone(),
                participant: Some(p),
                reason: "resync".into(),
            });
            notify_locals(node, &st, "", ev);
        }
        for (session, p) in stored {
            if let std::collections::hash_map::Entry::Vacant(slot) = st.view.entry(session) {
                slot.insert(p.clone());
                let ev = server_frame::Kind::ParticipantJoined(ParticipantJoined {
                    room: room.id.clone(),
                    participant: Some(p),
                });
                notify_locals(node, &st, "", ev);
            }
        }
    }
    complete
}

/// Record and announce again every local participant (after the bus lost it, or other
/// nodes reaped them while this node was cut off), and
/// retry the removals that failed while it was away. `false` if something failed (it is
/// retried by the next repair).
pub(crate) async fn republish_presence(node: &Arc<NodeContext>) -> bool {
    let mut complete = true;
    let pending = std::mem::take(&mut *node.pending_removals.lock().unwrap_or_else(|e| e.into_inner()));
    for (room, session) in pending {
        if let Err(e) = node.bus.presence_remove(&room, &session).await {
            tracing::warn!(room, session, error = %e, "removing presence failed again; will retry");
            complete = false;
            node.pending_removals.lock().unwrap_or_else(|e| e.into_inner()).push((room, session));
        }
    }
    crate::rooms_cap::restore(node).await;
    let mut records = Vec::new();
    for room in node.rooms.all() {
        let st = room.lock();
        records.extend(st.local.keys().filter_map(|sid| st.view.get(sid)).map(|p| (room.id.clone(), p.clone())));
    }
    let count = records.len();
    for (room, p) in records {
        if let Err(e) = node.bus.presence_put(&room, &p).await {
            tracing::warn!(room, error = %e, "restoring presence failed");
            complete = false;
        }
        // Announce them again too: nodes that reaped them while this node was cut off
        // (a partition) add them back; for everyone else a known join is a no-op.
        let update = PresenceUpdate { room: room.clone(), participant: Some(p), joined: true, reason: String::new() };
        let subject = node.subjects.room(&room, RoomChannel::Presence);
        if let Err(e) = node.publish(subject, bus_envelope::Kind::Presence(update)).await {
            tracing::warn!(room, error = %e, "re-announcing a participant failed");
        }
    }
    tracing::info!(records = count, "presence restored");
    complete
}
