//! The dead-node reaper: participants of nodes that stopped heartbeating leave the views.

use super::fanout::notify_locals;
use crate::context::NodeContext;
use std::sync::Arc;
use switchboard_protocol::pb::{server_frame, Participant, ParticipantLeft};
use tokio::time::Instant;

/// Remove from every room's view the participants of nodes that stopped heartbeating,
/// telling local sessions they left (reason `node_lost`) and clearing their presence
/// records. Not while this node is cut off from the bus itself (a partition or an outage):
/// then nobody's heartbeats arrive, and the silence says nothing about the other nodes (the
/// clocks restart on reconnect, and a resync reconciles what changed meanwhile).
pub(crate) async fn reap_dead_nodes(node: &Arc<NodeContext>) {
    let now = Instant::now();
    if node.cut_off(now) {
        return;
    }
    for lost in node.silent_nodes(now) {
        if node.heal.lost(&lost) {
            crate::webhooks::node_lost(node, &lost);
        }
    }
    let mut stale: Vec<(String, String)> = Vec::new();
    for room in node.rooms.all() {
        let mut st = room.lock();
        let dead: Vec<Participant> = st.view.values().filter(|p| node.node_is_dead(&p.node, now)).cloned().collect();
        for p in dead {
            st.view.remove(&p.session);
            tracing::info!(room = %room.id, session = %p.session, node = %p.node, "participant's node lost");
            let ev = server_frame::Kind::ParticipantLeft(ParticipantLeft {
                room: room.id.clone(),
                participant: Some(p.clone()),
                reason: "node_lost".into(),
            });
            notify_locals(node, &st, "", ev);
            crate::webhooks::participant_left(node, &room.id, &p, "node_lost", false);
            stale.push((room.id.clone(), p.session));
        }
    }
    crate::rooms_cap::release_dead(node, &stale).await;
    for (room, session) in stale {
        let _ = node.bus.presence_remove(&room, &session).await;
    }
}
