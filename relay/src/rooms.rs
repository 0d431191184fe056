//! The per-node room registry and fan-out.
//!
//! A node holds **one bus subscription per room** (`<prefix>.room.<room>.>`) while at least
//! one local session is in the room, receives each room message once and fans it out to
//! its local sessions' outbound queues (encoding the client frame once per node).
//!
//! Each room keeps a cluster-wide *view* of its participants: loaded from the bus's
//! presence store when the node subscribes, then kept current by presence updates from the
//! other nodes and by the reaper, which removes the participants of nodes that stopped
//! sending heartbeats. Local sessions are told about changes of the view only, so a
//! repeated or late update never produces a duplicate join or leave.

use crate::bus::{BusError, BusMessage, Subscription};
use crate::node::Node;
use crate::outbound::{Class, Outbound, Pushed};
use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use switchboard_protocol::limits::MAX_JOINED_PARTICIPANTS;
use switchboard_protocol::pb::{
    bus_envelope, server_frame, BusEnvelope, BusKeyframeRequest, Joined, Participant, ParticipantJoined,
    ParticipantLeft, PresenceUpdate, ServerFrame,
};
use switchboard_protocol::subject::RoomChannel;
use switchboard_protocol::{encode, ErrorCode};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A local session in a room.
#[derive(Clone)]
pub(crate) struct Member {
    pub user: String,
    pub outbound: Arc<Outbound>,
}

#[derive(Default)]
struct RoomState {
    /// Local sessions, by session id.
    local: HashMap<String, Member>,
    /// Everyone in the room cluster-wide, by session id.
    view: HashMap<String, Participant>,
    /// The bus subscription's reader task; `None` until subscribed.
    reader: Option<JoinHandle<()>>,
    /// Set when the room was torn down (a joiner holding the old `Arc` must retry).
    closed: bool,
}

pub(crate) struct Room {
    id: String,
    state: Mutex<RoomState>,
    /// Serialises joins and leaves of local sessions (subscription set-up and teardown).
    ops: tokio::sync::Mutex<()>,
}

impl Room {
    fn lock(&self) -> MutexGuard<'_, RoomState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The rooms this node has local sessions in.
#[derive(Default)]
pub(crate) struct Rooms {
    map: Mutex<HashMap<String, Arc<Room>>>,
}

impl Rooms {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Room>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn get(&self, room: &str) -> Option<Arc<Room>> {
        self.lock().get(room).cloned()
    }

    fn get_or_create(&self, room: &str) -> Arc<Room> {
        self.lock()
            .entry(room.to_owned())
            .or_insert_with(|| {
                Arc::new(Room { id: room.to_owned(), state: Mutex::default(), ops: tokio::sync::Mutex::new(()) })
            })
            .clone()
    }

    fn all(&self) -> Vec<Arc<Room>> {
        self.lock().values().cloned().collect()
    }

    fn remove_if_same(&self, room: &Arc<Room>) {
        let mut map = self.lock();
        if map.get(&room.id).is_some_and(|r| Arc::ptr_eq(r, room)) {
            map.remove(&room.id);
        }
    }
}

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JoinError {
    #[error(transparent)]
    Bus(#[from] BusError),
}

fn frame(kind: server_frame::Kind) -> Bytes {
    encode(&ServerFrame { kind: Some(kind) })
}

/// Tell every local member but `except` about a presence change.
fn notify_locals(node: &Node, st: &RoomState, except: &str, kind: server_frame::Kind) {
    let bytes = frame(kind);
    let mut tally = Tally::default();
    for (sid, m) in &st.local {
        if sid != except {
            // Same class as room messages, so a participant's last messages arrive before
            // the notice that they left.
            tally.add(m.outbound.push(Class::Data, bytes.clone(), false), bytes.len());
        }
    }
    tally.flush(node, "presence", Class::Data);
}

/// Outcomes of one fan-out, so metrics are updated once per fan-out, not per session.
#[derive(Default)]
struct Tally {
    queued: u64,
    bytes: u64,
    dropped: u64,
    overflowed: u64,
}

impl Tally {
    fn add(&mut self, pushed: Pushed, len: usize) -> Pushed {
        match pushed {
            Pushed::Queued => {
                self.queued += 1;
                self.bytes += len as u64;
            }
            Pushed::Dropped | Pushed::NeedKeyframe => self.dropped += 1,
            Pushed::Overflow => self.overflowed += 1,
            Pushed::Closed => {}
        }
        pushed
    }

    fn flush(self, node: &Node, kind: &'static str, class: Class) {
        use crate::metrics::{ClassLabel, KindLabel};
        if self.queued > 0 {
            node.metrics.frames_out.get_or_create(&KindLabel { kind }).inc_by(self.queued);
            node.metrics.bytes_out.get_or_create(&KindLabel { kind }).inc_by(self.bytes);
        }
        if self.dropped > 0 {
            node.metrics.queue_drops.get_or_create(&ClassLabel { class: class.as_str() }).inc_by(self.dropped);
        }
        if self.overflowed > 0 {
            node.metrics.slow_consumer_disconnects.inc_by(self.overflowed);
        }
    }
}

fn push(node: &Node, q: &Outbound, class: Class, bytes: Bytes, droppable: bool, kind: &'static str) {
    let mut tally = Tally::default();
    let len = bytes.len();
    tally.add(q.push(class, bytes, droppable), len);
    tally.flush(node, kind, class);
}

/// Join `participant` (a local session) to `room`. The `Joined` frame (with `ref_id`) is
/// queued to the session before any other frame of the room.
pub(crate) async fn join(
    node: &Arc<Node>,
    room_id: &str,
    participant: Participant,
    member: Member,
    ref_id: u64,
) -> Result<(), JoinError> {
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
        if let Err(e) = node.bus.presence_put(room_id, &participant).await {
            teardown_if_empty(node, &room);
            return Err(e.into());
        }
        let session = participant.session.clone();
        {
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
            let joined = server_frame::Kind::Joined(Joined {
                ref_id,
                room: room_id.to_owned(),
                participants,
                last_offset: 0,
                participant_count,
                participants_truncated,
            });
            push(node, &member.outbound, Class::Control, frame(joined), false, "joined");
            st.local.insert(session, member);
            node.metrics.room_joins.inc();
        }
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
async fn subscribe(node: &Arc<Node>, room: &Arc<Room>) -> Result<(), BusError> {
    let sub = node.bus.subscribe(node.subjects.room_wildcard(&room.id)).await?;
    let snapshot = node.bus.presence_list(&room.id).await?;
    let now = Instant::now();
    let mut st = room.lock();
    for p in snapshot {
        // Starts the liveness clock of nodes we have not heard from yet.
        node.node_is_dead(&p.node, now);
        st.view.insert(p.session.clone(), p);
    }
    st.reader = Some(node.runtime.spawn(read_room(Arc::downgrade(node), room.clone(), sub)));
    node.metrics.rooms.inc();
    Ok(())
}

/// Remove a local session from `room`. Returns false if it was not in the room.
pub(crate) async fn leave(node: &Arc<Node>, room_id: &str, session: &str, reason: &str) -> bool {
    let Some(room) = node.rooms.get(room_id) else { return false };
    let _ops = room.ops.lock().await;
    let (participant, empty) = {
        let mut st = room.lock();
        if st.local.remove(session).is_none() {
            return false;
        }
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
    if let Err(e) = node.bus.presence_remove(room_id, session).await {
        tracing::warn!(room = room_id, session, error = %e, "removing presence failed");
    }
    let Some(p) = participant else { return true };
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
fn close_if_empty(node: &Node, st: &mut RoomState) -> bool {
    if !st.local.is_empty() {
        return false;
    }
    st.closed = true;
    if let Some(task) = st.reader.take() {
        task.abort(); // drops the subscription: unsubscribes
        node.metrics.rooms.dec();
    }
    true
}

fn teardown_if_empty(node: &Node, room: &Arc<Room>) {
    let empty = close_if_empty(node, &mut room.lock());
    if empty {
        node.rooms.remove_if_same(room);
    }
}

/// Whether `session` is a local member of `room`.
pub(crate) fn is_member(node: &Node, room: &str, session: &str) -> bool {
    node.rooms.get(room).is_some_and(|r| r.lock().local.contains_key(session))
}

/// Whether the room's cluster-wide view has a participant matching the target.
pub(crate) fn has_target(node: &Node, room: &str, to_user: &str, to_session: &str) -> bool {
    node.rooms.get(room).is_some_and(|r| {
        let st = r.lock();
        if !to_session.is_empty() {
            st.view.contains_key(to_session)
        } else {
            st.view.values().any(|p| p.user == to_user)
        }
    })
}

async fn read_room(node: std::sync::Weak<Node>, room: Arc<Room>, mut sub: Subscription) {
    while let Some(msg) = sub.next().await {
        let Some(node) = node.upgrade() else { return };
        handle_bus_message(&node, &room, msg).await;
    }
}

async fn handle_bus_message(node: &Arc<Node>, room: &Arc<Room>, msg: BusMessage) {
    let env = match BusEnvelope::decode(msg.payload) {
        Ok(env) => env,
        Err(e) => {
            tracing::warn!(subject = %msg.subject, error = %e, "dropping undecodable bus envelope");
            return;
        }
    };
    let origin = env.origin_node;
    let Some(kind) = env.kind else { return };
    let mut keyframe_requests = Vec::new();
    {
        let mut st = room.lock();
        match kind {
            bus_envelope::Kind::Message(m) => {
                let from = m.from.as_ref().map(|f| f.session.clone()).unwrap_or_default();
                let reliable = m.reliable;
                let latency_ms = switchboard_protocol::now_ms().saturating_sub(m.sent_at_ms);
                node.metrics.delivery_latency_seconds.observe(latency_ms as f64 / 1000.0);
                let bytes = frame(server_frame::Kind::Message(m));
                let mut tally = Tally::default();
                for (sid, member) in &st.local {
                    if *sid != from {
                        tally.add(member.outbound.push(Class::Data, bytes.clone(), !reliable), bytes.len());
                    }
                }
                tally.flush(node, "message", Class::Data);
            }
            bus_envelope::Kind::Presence(update) => {
                // Our own joins were applied when they happened; our own leaves are applied
                // here, in bus order, after the messages the participant published before.
                if origin == node.config.node_id && update.joined {
                    return;
                }
                node.saw_node(&origin);
                let Some(p) = update.participant else { return };
                if update.joined {
                    if !st.view.contains_key(&p.session) {
                        st.view.insert(p.session.clone(), p.clone());
                        let ev = server_frame::Kind::ParticipantJoined(ParticipantJoined {
                            room: room.id.clone(),
                            participant: Some(p),
                        });
                        notify_locals(node, &st, "", ev);
                    }
                } else if origin == node.config.node_id && st.local.contains_key(&p.session) {
                    // Left and joined again before this echo: nothing changed for the others.
                } else if st.view.remove(&p.session).is_some() {
                    let ev = server_frame::Kind::ParticipantLeft(ParticipantLeft {
                        room: room.id.clone(),
                        participant: Some(p),
                        reason: update.reason,
                    });
                    notify_locals(node, &st, "", ev);
                }
            }
            bus_envelope::Kind::Signal(sig) => {
                let Some(event) = sig.event else { return };
                let bytes = frame(server_frame::Kind::Signal(event));
                let mut tally = Tally::default();
                for (sid, member) in &st.local {
                    let hit =
                        if sig.to_session.is_empty() { member.user == sig.to_user } else { *sid == sig.to_session };
                    if hit {
                        tally.add(member.outbound.push(Class::Signal, bytes.clone(), false), bytes.len());
                    }
                }
                tally.flush(node, "signal", Class::Signal);
            }
            bus_envelope::Kind::Media(media) => {
                let (from, track, keyframe) =
                    (media.from.as_ref().map(|f| f.session.clone()).unwrap_or_default(), media.track, media.keyframe);
                let bytes = frame(server_frame::Kind::Media(media));
                let mut tally = Tally::default();
                let mut lost = false;
                for (sid, member) in &st.local {
                    if *sid != from {
                        lost |= tally
                            .add(member.outbound.push_media(bytes.clone(), &from, track, keyframe), bytes.len())
                            == Pushed::NeedKeyframe;
                    }
                }
                tally.flush(node, "media", Class::Media);
                if lost {
                    keyframe_requests.push((from, track));
                }
            }
            bus_envelope::Kind::KeyframeRequest(req) => {
                if let (Some(member), Some(event)) = (st.local.get(&req.to_session), req.event) {
                    push(
                        node,
                        &member.outbound,
                        Class::Signal,
                        frame(server_frame::Kind::KeyframeRequest(event)),
                        true,
                        "keyframe_request",
                    );
                }
            }
            bus_envelope::Kind::Heartbeat(_) | bus_envelope::Kind::Admin(_) => {}
        }
        drop(st);
    }
    for (to_session, track) in keyframe_requests {
        let event = switchboard_protocol::pb::KeyframeRequestEvent {
            room: room.id.clone(),
            from: Some(switchboard_protocol::pb::Sender { node: node.config.node_id.clone(), ..Default::default() }),
            track,
        };
        let req = BusKeyframeRequest { to_session, event: Some(event) };
        let _ = node
            .publish(node.subjects.room(&room.id, RoomChannel::Media), bus_envelope::Kind::KeyframeRequest(req))
            .await;
    }
}

/// Remove from every room's view the participants of nodes that stopped heartbeating,
/// telling local sessions they left (reason `node_lost`) and clearing their presence
/// records.
pub(crate) async fn reap_dead_nodes(node: &Arc<Node>) {
    let now = Instant::now();
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
            stale.push((room.id.clone(), p.session));
        }
    }
    for (room, session) in stale {
        let _ = node.bus.presence_remove(&room, &session).await;
    }
}

/// The error code for a failed join.
pub(crate) fn join_error_code(e: &JoinError) -> ErrorCode {
    match e {
        JoinError::Bus(_) => ErrorCode::Unavailable,
    }
}

/// Record again the presence of every local participant (after the bus lost it).
pub(crate) async fn republish_presence(node: &Arc<Node>) {
    let mut records = Vec::new();
    for room in node.rooms.all() {
        let st = room.lock();
        records.extend(st.local.keys().filter_map(|sid| st.view.get(sid)).map(|p| (room.id.clone(), p.clone())));
    }
    let count = records.len();
    for (room, p) in records {
        if let Err(e) = node.bus.presence_put(&room, &p).await {
            tracing::warn!(room, error = %e, "restoring presence failed");
        }
    }
    tracing::info!(records = count, "presence restored");
}
