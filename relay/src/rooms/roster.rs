//! Rosters: each node tells the others, over core NATS, exactly who its participants in a
//! room are, so presence views converge after a heal or a reconnect without waiting for
//! the presence store (JetStream re-forms its leaders for seconds to tens of seconds after
//! a NATS split heals; core NATS works as soon as the routes are back).
//!
//! A node is the authority on its own participants: it holds their connections. After a
//! partition heals (or its bus reconnects) it publishes a [`PresenceRoster`] per room it
//! has members in, on the room's presence subject (the room's one subscription carries
//! it), asking the room's other nodes for theirs. A node receiving a roster makes its view
//! of the sender's participants in the room exactly the roster: joins for the ones it did
//! not know, leaves (reason `resync`) for the ones it knew and the roster lacks. A roster
//! goes out under the room's join/leave lock, so it is ordered with the node's own join
//! and leave announcements (one publisher, one subject: NATS keeps the order).
//!
//! Bounded: a roster of more than [`PART`] participants goes in several envelopes with the
//! same id, and the leaves wait for the last part; a receiver keeps at most one roster in
//! progress per sending node and room; a room answers at most one ask at a time.
//! A node with no member left in a room sends no roster for it: the others learn of its
//! last leaves from the announcement, or, if that was lost, from the store's resync
//! ([`super::presence::resync_presence`]), which still judges the participants of nodes
//! that sent no roster since the repair began.

use super::fanout::notify_locals;
use super::{Room, RoomState};
use crate::context::NodeContext;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchboard_protocol::pb::{
    bus_envelope, server_frame, Participant, ParticipantJoined, ParticipantLeft, PresenceRoster,
};
use switchboard_protocol::subject::RoomChannel;
use tokio::time::Instant;

/// Participants per roster envelope (a participant record is a few hundred bytes at most:
/// an envelope stays well under NATS's 1 MB payload limit).
pub(crate) const PART: usize = 512;

/// Parts of one roster a receiver accepts (`PART` × this participants per node and room).
const MAX_PARTS: u32 = 1024;

/// Longest an answer to an ask waits, so the answers of a room's nodes spread out and
/// several asks arriving together get one answer.
const ANSWER_SPREAD_MS: u64 = 200;

/// A roster being received in parts from one node.
pub(super) struct Incoming {
    id: u64,
    parts: u32,
    sessions: HashSet<String>,
}

/// Per room: rosters in progress (by sending node), when each node's last complete roster
/// arrived, and whether an answer to an ask is scheduled.
#[derive(Default)]
pub(super) struct Rosters {
    incoming: std::collections::HashMap<String, Incoming>,
    complete: std::collections::HashMap<String, Instant>,
    answering: bool,
}

impl Rosters {
    /// Whether `node` sent a complete roster of the room at or after `since`.
    pub(super) fn sent_since(&self, node: &str, since: Instant) -> bool {
        self.complete.get(node).is_some_and(|t| *t >= since)
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn next_id() -> u64 {
    // Distinct across the node's restarts too (a receiver only compares with the last id).
    let base = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    base ^ (rand::random::<u64>() & !0xffff_ffff)
}

/// Publish this node's roster of every room it has members in; `ask`: the rooms' other
/// nodes answer with theirs. `false` if a publish failed.
pub(crate) async fn publish_all(node: &Arc<NodeContext>, ask: bool) -> bool {
    let mut complete = true;
    for room in node.rooms.all() {
        complete &= publish(node, &room, ask).await;
    }
    complete
}

/// Publish this node's roster of `room` (nothing if it has no member there any more).
async fn publish(node: &Arc<NodeContext>, room: &Arc<Room>, ask: bool) -> bool {
    // Under the join/leave lock: no join or leave announcement of this node overtakes it.
    let _ops = room.ops.lock().await;
    let participants: Vec<Participant> = {
        let st = room.lock();
        if st.closed {
            return true;
        }
        st.local.keys().filter_map(|s| st.view.get(s)).cloned().collect()
    };
    let id = next_id();
    let parts = participants.len().div_ceil(PART).max(1);
    let subject = node.subjects.room(&room.id, RoomChannel::Presence);
    let mut chunks = participants.chunks(PART);
    for part in 0..parts {
        let roster = PresenceRoster {
            room: room.id.clone(),
            participants: chunks.next().map(<[Participant]>::to_vec).unwrap_or_default(),
            id,
            part: part as u32,
            parts: parts as u32,
            ask,
        };
        if let Err(e) = node.publish(subject.clone(), bus_envelope::Kind::Roster(roster)).await {
            tracing::warn!(room = %room.id, error = %e, "publishing a presence roster failed");
            return false;
        }
    }
    true
}

/// Apply a roster part from `origin` to the room's view (under the room's lock). Returns
/// whether this node should answer with its own roster (asked, and not answering already).
pub(super) fn apply(node: &NodeContext, room: &str, st: &mut RoomState, origin: &str, r: PresenceRoster) -> bool {
    if r.parts == 0 || r.parts > MAX_PARTS || r.part >= r.parts || r.participants.len() > PART {
        tracing::warn!(room, origin, parts = r.parts, "ignoring a malformed presence roster");
        return false;
    }
    let incoming = st.rosters.incoming.entry(origin.to_owned()).or_insert_with(|| Incoming {
        id: r.id,
        parts: 0,
        sessions: HashSet::new(),
    });
    if incoming.id != r.id {
        *incoming = Incoming { id: r.id, parts: 0, sessions: HashSet::new() };
    }
    incoming.parts += 1;
    let mut joined = Vec::new();
    for p in r.participants {
        // Only the sender's own participants, never one of ours.
        if p.node != origin || st.local.contains_key(&p.session) {
            continue;
        }
        incoming.sessions.insert(p.session.clone());
        if !st.view.contains_key(&p.session) {
            joined.push(p);
        }
    }
    let done = incoming.parts >= r.parts;
    let kept = if done { st.rosters.incoming.remove(origin).map(|i| i.sessions) } else { None };
    if !joined.is_empty() {
        tracing::info!(room, node = origin, count = joined.len(), "participants back by their node's roster");
    }
    for p in joined {
        st.view.insert(p.session.clone(), p.clone());
        let ev =
            server_frame::Kind::ParticipantJoined(ParticipantJoined { room: room.to_owned(), participant: Some(p) });
        notify_locals(node, st, "", ev);
    }
    if let Some(kept) = kept {
        let gone: Vec<Participant> =
            st.view.values().filter(|p| p.node == origin && !kept.contains(&p.session)).cloned().collect();
        if !gone.is_empty() {
            tracing::info!(room, node = origin, count = gone.len(), "participants gone by their node's roster");
        }
        for p in gone {
            st.view.remove(&p.session);
            let ev = server_frame::Kind::ParticipantLeft(ParticipantLeft {
                room: room.to_owned(),
                participant: Some(p),
                reason: "resync".into(),
            });
            notify_locals(node, st, "", ev);
        }
        st.rosters.complete.insert(origin.to_owned(), Instant::now());
    }
    if r.ask && !st.local.is_empty() && !st.rosters.answering {
        st.rosters.answering = true;
        return true;
    }
    false
}

/// Answer an ask for `room`'s roster, after a short random wait.
pub(super) fn answer(node: &Arc<NodeContext>, room: &Arc<Room>) {
    let (weak, room) = (Arc::downgrade(node), room.clone());
    node.runtime.spawn(async move {
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % ANSWER_SPREAD_MS)).await;
        room.lock().rosters.answering = false;
        if let Some(node) = weak.upgrade() {
            publish(&node, &room, false).await;
        }
    });
}
