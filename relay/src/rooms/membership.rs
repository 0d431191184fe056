//! Join and leave of local sessions: subscribing the node to a room on its first local
//! member, and closing the room (subscription, follower) when the last one leaves.

use super::fanout::{frame, notify_locals, push, read_room, Tally};
use super::history::{bounded_replay, decode_history, fetch_catch_up, follow_history, link, MAX_HISTORY_READ};
use super::{JoinError, JoinRequest, Room, RoomState};
use crate::bus::{BusError, Log};
use crate::context::NodeContext;
use crate::outbound::Class;
use std::sync::Arc;
use switchboard_protocol::limits::MAX_JOINED_PARTICIPANTS;
use switchboard_protocol::pb::{
    bus_envelope, server_frame, Joined, Message, Participant, ParticipantJoined, ParticipantLeft, PresenceUpdate,
};
use switchboard_protocol::subject::RoomChannel;
use tokio::time::Instant;

/// Join a local session to `room`. The `Joined` frame (with `ref_id`) is queued to the
/// session before any other frame of the room; with `resume_from`, the retained messages
/// after it follow `Joined` before any live one.
pub(crate) async fn join(node: &Arc<NodeContext>, room_id: &str, req: JoinRequest) -> Result<(), JoinError> {
    let JoinRequest { participant, mut member, ref_id, resume_from, max_participants } = req;
    loop {
        let room = node.rooms.get_or_create(room_id);
        let _ops = room.ops.lock().await;
        if room.lock().closed {
            continue; // torn down while we waited: take the fresh one
        }
        if room.lock().reader.is_none() {
            if let Err(e) = subscribe(node, &room).await {
                room.lock().closed = true;
                node.rooms.remove_if_same(&room);
                return Err(e.into());
            }
        }
        if max_participants > 0 {
            // Participants of nodes that stopped heartbeating do not count: their records
            // stay in the store until a node hosting the room reaps them, or until they
            // expire when no live node does (then a join waited for that, ~30 s).
            let now = Instant::now();
            let count = room.lock().view.values().filter(|p| !node.node_is_dead(&p.node, now)).count();
            if count >= max_participants {
                teardown_if_empty(node, &room);
                return Err(JoinError::Full { room: room_id.to_owned(), limit: max_participants });
            }
        }
        // The view lags other nodes' joins: the cap is held by a seat (see `rooms_cap`).
        let seat = match max_participants {
            0 => None,
            cap => match crate::rooms_cap::take(node, room_id, &participant.session, cap).await {
                Ok(seat) => Some(seat),
                Err(e) => {
                    teardown_if_empty(node, &room);
                    return Err(e);
                }
            },
        };
        let mut catch_up = match resume_from {
            Some(after) => match fetch_catch_up(node, &room, after).await {
                Ok(c) => Some(c),
                Err(e) => {
                    teardown_if_empty(node, &room);
                    return Err(e.into());
                }
            },
            None => None,
        };
        if let Err(e) = node.bus.presence_put(room_id, &participant).await {
            teardown_if_empty(node, &room);
            return Err(e.into());
        }
        let session = participant.session.clone();
        // Entries the follower delivered after our fetch must be fetched too (rare, bounded).
        if let Some(c) = &mut catch_up {
            for attempt in 0.. {
                let fetched_to = c.entries.last().map_or(resume_from.unwrap_or(0), |m| m.offset);
                if fetched_to >= room.lock().delivered {
                    break;
                }
                let more = if attempt < 8 {
                    node.bus.log_read(Log::RoomHistory, room_id, fetched_to, MAX_HISTORY_READ).await
                } else {
                    Err(BusError::Unavailable("room history moves too fast to catch up; retry".into()))
                };
                match more {
                    Ok(more) => {
                        let mut more: Vec<Message> =
                            more.into_iter().filter_map(|e| decode_history(room_id, e)).collect();
                        link(&mut more, fetched_to);
                        c.entries.extend(more);
                    }
                    Err(e) => {
                        node.bus.presence_remove(room_id, &session).await.ok();
                        teardown_if_empty(node, &room);
                        return Err(e.into());
                    }
                }
            }
        }
        let alone = {
            let mut st = room.lock();
            if st.view.insert(session.clone(), participant.clone()).is_none() {
                let ev = server_frame::Kind::ParticipantJoined(ParticipantJoined {
                    room: room_id.to_owned(),
                    participant: Some(participant.clone()),
                });
                notify_locals(node, &st, &session, ev);
            }
            let mut participants: Vec<Participant> = st.view.values().cloned().collect();
            participants.sort_by_key(|p| p.joined_at_ms);
            let participant_count = participants.len() as u32;
            let participants_truncated = participants.len() > MAX_JOINED_PARTICIPANTS;
            participants.truncate(MAX_JOINED_PARTICIPANTS);
            // Replay what this node delivered after the resume point; what it has not
            // delivered yet comes live.
            let delivered = st.delivered;
            let (replay, truncated) = match catch_up.as_mut() {
                Some(c) => bounded_replay(c.entries.drain(..).filter(|m| m.offset <= delivered).collect()),
                None => (Vec::new(), false),
            };
            // A resume point this node has not delivered yet is trusted only if the log still
            // has it (another node's follower may be ahead); an unknown one (the history
            // was lost and started over, or a bogus offset) must not hide new messages.
            let gap = catch_up.as_ref().is_some_and(|c| c.gap);
            let resume = resume_from.unwrap_or(0);
            member.floor = if gap && resume > delivered { delivered } else { delivered.max(resume) };
            let joined = server_frame::Kind::Joined(Joined {
                ref_id,
                room: room_id.to_owned(),
                participants,
                last_offset: delivered,
                participant_count,
                participants_truncated,
                history_gap: truncated || catch_up.as_ref().is_some_and(|c| c.gap),
                replayed: replay.len() as u32,
            });
            push(node, &member.outbound, Class::Control, frame(joined), false, "joined");
            let mut tally = Tally::default();
            for m in replay {
                let bytes = frame(server_frame::Kind::Message(m));
                tally.add(member.outbound.push(Class::Data, bytes.clone(), false), bytes.len());
            }
            tally.flush(node, "replay", Class::Data);
            st.local.insert(session, member);
            node.metrics.room_joins.inc();
            if let Some(seat) = seat {
                seat.keep();
            }
            participant_count == 1
        };
        crate::webhooks::participant_joined(node, room_id, &participant, alone);
        let update = PresenceUpdate {
            room: room_id.to_owned(),
            participant: Some(participant),
            joined: true,
            reason: String::new(),
        };
        // The session is in the room now; a failed announcement is logged, not undone
        // (the presence record is stored, so later joiners still see it).
        if let Err(e) =
            node.publish(node.subjects.room(room_id, RoomChannel::Presence), bus_envelope::Kind::Presence(update)).await
        {
            tracing::warn!(room = room_id, error = %e, "announcing a join failed");
        }
        return Ok(());
    }
}

/// Subscribe the node to the room, then load the presence snapshot. Updates that arrive
/// meanwhile wait in the subscription and are applied after the snapshot (idempotently).
async fn subscribe(node: &Arc<NodeContext>, room: &Arc<Room>) -> Result<(), BusError> {
    let sub = node.bus.subscribe(node.subjects.room_wildcard(&room.id)).await?;
    let snapshot = node.bus.presence_list(&room.id).await?;
    let last = if node.config.history { node.bus.log_last(Log::RoomHistory, &room.id).await? } else { 0 };
    {
        let now = Instant::now();
        let mut st = room.lock();
        st.delivered = last;
        if node.config.history {
            st.follower = Some(node.runtime.spawn(follow_history(Arc::downgrade(node), room.clone())));
        }
        for p in snapshot {
            // Starts the liveness clock of nodes we have not heard from yet. Records of nodes
            // known dead are left out: no live node may host the room to reap them.
            if node.node_is_dead(&p.node, now) {
                continue;
            }
            st.view.insert(p.session.clone(), p);
        }
        st.reader = Some(node.runtime.spawn(read_room(Arc::downgrade(node), room.clone(), sub)));
        node.metrics.rooms.inc();
    }
    // Simulcast layers travel apart from the room's channels: layer 0 (every receiver's
    // default) from the start.
    if let Err(e) = super::layers::sync_subscriptions(node, room).await {
        close_if_empty(node, &mut room.lock());
        return Err(e);
    }
    Ok(())
}

/// Remove a local session from `room`. Returns false if it was not in the room.
pub(crate) async fn leave(node: &Arc<NodeContext>, room_id: &str, session: &str, reason: &str) -> bool {
    let Some(room) = node.rooms.get(room_id) else { return false };
    let _ops = room.ops.lock().await;
    let (participant, empty) = {
        let mut st = room.lock();
        if st.local.remove(session).is_none() {
            return false;
        }
        super::layers::forget_receiver(node, &mut st, session);
        let participant = st.view.get(session).cloned();
        let empty = close_if_empty(node, &mut st);
        if empty {
            st.view.remove(session);
        }
        (participant, empty)
    };
    if empty {
        node.rooms.remove_if_same(&room);
    }
    crate::rooms_cap::release(node, room_id, session).await;
    if let Err(e) = node.bus.presence_remove(room_id, session).await {
        // Retried when the bus is back, so the store keeps no ghost.
        tracing::warn!(room = room_id, session, error = %e, "removing presence failed; will retry");
        node.pending_removals.lock().unwrap_or_else(|e| e.into_inner()).push((room_id.to_owned(), session.to_owned()));
        crate::heal::retry_removals(node);
    }
    let Some(p) = participant else { return true };
    crate::webhooks::participant_left(node, room_id, &p, reason, empty);
    // Local members learn of the leave from the bus, in order with the participant's last
    // messages (see `handle_bus_message`); if the bus refuses, tell them now.
    let update =
        PresenceUpdate { room: room_id.to_owned(), participant: Some(p), joined: false, reason: reason.to_owned() };
    let published =
        node.publish(node.subjects.room(room_id, RoomChannel::Presence), bus_envelope::Kind::Presence(update)).await;
    if published.is_err() && !empty {
        let mut st = room.lock();
        if let Some(p) = st.view.remove(session) {
            let ev = server_frame::Kind::ParticipantLeft(ParticipantLeft {
                room: room_id.to_owned(),
                participant: Some(p),
                reason: reason.to_owned(),
            });
            notify_locals(node, &st, session, ev);
        }
    }
    true
}

/// Mark the room closed and drop its subscription if no local session is left.
fn close_if_empty(node: &NodeContext, st: &mut RoomState) -> bool {
    if !st.local.is_empty() {
        return false;
    }
    st.closed = true;
    if let Some(task) = st.follower.take() {
        task.abort();
    }
    if let Some(task) = st.reader.take() {
        task.abort(); // drops the subscription: unsubscribes
        node.metrics.rooms.dec();
    }
    node.metrics.layer_subscriptions.dec_by(st.layers.len() as i64);
    st.layers = Default::default();
    super::layers::drop_unwanted(node, st);
    true
}

fn teardown_if_empty(node: &NodeContext, room: &Arc<Room>) {
    let empty = close_if_empty(node, &mut room.lock());
    if empty {
        node.rooms.remove_if_same(room);
    }
}
