//! The per-node room registry and fan-out.
//!
//! A node holds **one bus subscription per room** (`<prefix>.room.<room>.>`) while at least
//! one local session is in the room, receives each room message once and fans it out to
//! its local sessions' outbound queues (encoding the client frame once per node).
//!
//! Reliable messages (when room history is on) do not travel on the room subject: the
//! publishing node appends them to the room's history log (one order for all nodes: the
//! log's), and each node follows the room's log with **one follower per room**, fanning
//! entries out like any other room traffic and linking each to the room's previous one
//! (`prev_offset`), which every follower knows because it sees the room's entries in order. A session that joins with
//! `resume_from` gets the retained entries after that offset, then live ones, with no gap
//! and no duplicate: both are decided under the room lock against the node's delivered
//! position.
//!
//! Each room keeps a cluster-wide *view* of its participants: loaded from the bus's
//! presence store when the node subscribes, then kept current by presence updates from the
//! other nodes and by the reaper, which removes the participants of nodes that stopped
//! sending heartbeats. Local sessions are told about changes of the view only, so a
//! repeated or late update never produces a duplicate join or leave.

use crate::bus::{BusError, BusMessage, Log, LogAck, LogEntry, Subscription};
use crate::node::Node;
use crate::outbound::{Class, Outbound, Pushed};
use crate::transport::{MediaOrigin, MediaTag};
use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use switchboard_protocol::limits::MAX_JOINED_PARTICIPANTS;
use switchboard_protocol::pb::{
    bus_envelope, server_frame, BusEnvelope, BusKeyframeRequest, Joined, Message, Participant, ParticipantJoined,
    ParticipantLeft, PresenceUpdate, RoomStats, ServerFrame,
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
    /// History entries up to this offset were delivered before the member joined (or
    /// were replayed to it): the live fan-out skips them.
    pub floor: u64,
}

#[derive(Default)]
struct RoomState {
    /// Local sessions, by session id.
    local: HashMap<String, Member>,
    /// Everyone in the room cluster-wide, by session id.
    view: HashMap<String, Participant>,
    /// The bus subscription's reader task; `None` until subscribed.
    reader: Option<JoinHandle<()>>,
    /// The history follower task (when history is on).
    follower: Option<JoinHandle<()>>,
    /// The last history offset this node's follower delivered to local members.
    delivered: u64,
    /// Set when the room was torn down (a joiner holding the old `Arc` must retry).
    closed: bool,
    /// The participant count changed while the room was too large for presence events:
    /// members get a `RoomStats` at the next node heartbeat.
    stats_dirty: std::sync::atomic::AtomicBool,
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
    #[error("room {room:?} is full ({limit} participants)")]
    Full { room: String, limit: usize },
}

/// How a session joins: the participant record, its local member, and the resume point.
pub(crate) struct JoinRequest {
    pub participant: Participant,
    pub member: Member,
    pub ref_id: u64,
    /// `Join.resume_from`.
    pub resume_from: Option<u64>,
    /// Participant limit of the room for this join (0: none).
    pub max_participants: usize,
}

/// Catch-up for a resuming join, fetched before the member is added.
struct CatchUp {
    /// Retained entries after the resume point, oldest first (decoded messages).
    entries: Vec<Message>,
    /// Whether some messages after the resume point are no longer retained.
    gap: bool,
}

fn frame(kind: server_frame::Kind) -> Bytes {
    encode(&ServerFrame { kind: Some(kind) })
}

/// Tell every local member but `except` about a presence change. In rooms above the
/// presence-event limit, only mark the count as changed (see [`flush_room_stats`]).
fn notify_locals(node: &Node, st: &RoomState, except: &str, kind: server_frame::Kind) {
    let limit = node.config.presence_events_max;
    if limit > 0 && st.view.len() > limit {
        st.stats_dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        return;
    }
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

/// Join a local session to `room`. The `Joined` frame (with `ref_id`) is queued to the
/// session before any other frame of the room; with `resume_from`, the retained messages
/// after it follow `Joined` before any live one.
pub(crate) async fn join(node: &Arc<Node>, room_id: &str, req: JoinRequest) -> Result<(), JoinError> {
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
            let count = room.lock().view.len();
            if count >= max_participants {
                teardown_if_empty(node, &room);
                return Err(JoinError::Full { room: room_id.to_owned(), limit: max_participants });
            }
        }
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

/// The retained messages of `room` after `after`, and whether some are missing.
async fn fetch_catch_up(node: &Arc<Node>, room: &Arc<Room>, after: u64) -> Result<CatchUp, BusError> {
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
const MAX_HISTORY_READ: usize = 100_000;
/// A catch-up replays at most this many messages and bytes (half the data queue, so live
/// traffic still fits behind it); older missed messages are reported as a gap.
const REPLAY_MAX_FRAMES: usize = 512;
const REPLAY_MAX_BYTES: usize = 2 << 20;

/// The newest messages of `all` that fit the replay bounds, and whether any were cut.
fn bounded_replay(mut all: Vec<Message>) -> (Vec<Message>, bool) {
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
fn link(entries: &mut [Message], first_prev: u64) {
    let mut prev = first_prev;
    for m in entries {
        m.prev_offset = prev;
        prev = m.offset;
    }
}

/// Decode a history entry into the message it carries, with its offset.
fn decode_history(room: &str, entry: LogEntry) -> Option<Message> {
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
/// `request` (the client's frame id, if any) makes a retry of the same request on the same
/// session idempotent: it is stored once.
pub(crate) async fn append_history(
    node: &Arc<Node>,
    room_id: &str,
    msg: Message,
    request: u64,
) -> Result<LogAck, BusError> {
    let dedupe = match (&msg.from, request) {
        (Some(from), id) if id != 0 => Some(format!("{}:{id}", from.session)),
        _ => None,
    };
    let env = BusEnvelope { origin_node: node.config.node_id.clone(), kind: Some(bus_envelope::Kind::Message(msg)) };
    let started = Instant::now();
    let r = node.bus.log_append(Log::RoomHistory, room_id, encode(&env), dedupe).await;
    node.metrics.bus_publish_seconds.observe(started.elapsed().as_secs_f64());
    if r.is_err() {
        node.metrics.bus_publish_errors.inc();
    }
    r
}

/// Subscribe the node to the room, then load the presence snapshot. Updates that arrive
/// meanwhile wait in the subscription and are applied after the snapshot (idempotently).
async fn subscribe(node: &Arc<Node>, room: &Arc<Room>) -> Result<(), BusError> {
    let sub = node.bus.subscribe(node.subjects.room_wildcard(&room.id)).await?;
    let snapshot = node.bus.presence_list(&room.id).await?;
    let last = if node.config.history { node.bus.log_last(Log::RoomHistory, &room.id).await? } else { 0 };
    let now = Instant::now();
    let mut st = room.lock();
    st.delivered = last;
    if node.config.history {
        st.follower = Some(node.runtime.spawn(follow_history(Arc::downgrade(node), room.clone())));
    }
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
        // Retried when the bus is back, so the store keeps no ghost.
        tracing::warn!(room = room_id, session, error = %e, "removing presence failed; will retry");
        node.pending_removals.lock().unwrap_or_else(|e| e.into_inner()).push((room_id.to_owned(), session.to_owned()));
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
    if let Some(task) = st.follower.take() {
        task.abort();
    }
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

/// A follower quiet for this long checks whether the log moved on without it.
const STALL_CHECK: std::time::Duration = std::time::Duration::from_secs(3);

/// Follow the room's history log and fan entries out; re-follow from the last delivered
/// offset when the follower ends (bus failure, fell behind) or stalls (its consumer was
/// lost with a NATS server).
async fn follow_history(node: std::sync::Weak<Node>, room: Arc<Room>) {
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
fn deliver_history(node: &Node, room: &Room, entry: LogEntry) {
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
    let mut tally = Tally::default();
    for (sid, member) in &st.local {
        if *sid != from && seq > member.floor {
            tally.add(member.outbound.push(Class::Data, bytes.clone(), false), bytes.len());
        }
    }
    tally.flush(node, "message", Class::Data);
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
                if node.saw_node(&origin) {
                    crate::heal::schedule(node);
                }
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
                let origin = Arc::new(MediaOrigin {
                    room: room.id.clone(),
                    session: media.from.as_ref().map(|f| f.session.clone()).unwrap_or_default(),
                });
                let tag = MediaTag { origin, track: media.track, keyframe: media.keyframe };
                let bytes = frame(server_frame::Kind::Media(media));
                let mut tally = Tally::default();
                let mut lost = false;
                for (sid, member) in &st.local {
                    if *sid != tag.origin.session {
                        lost |= tally.add(member.outbound.push_media(bytes.clone(), &tag), bytes.len())
                            == Pushed::NeedKeyframe;
                    }
                }
                tally.flush(node, "media", Class::Media);
                if lost {
                    keyframe_requests.push((tag.origin.session.clone(), tag.track));
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
            bus_envelope::Kind::Heartbeat(_) | bus_envelope::Kind::Admin(_) | bus_envelope::Kind::Call(_) => {}
        }
        drop(st);
    }
    for (to_session, track) in keyframe_requests {
        request_keyframe(node, &room.id, to_session, track).await;
    }
}

/// Ask a media sender for a keyframe on behalf of this node (its receivers lost frames of
/// `track`). Best effort: the next loss asks again.
pub(crate) async fn request_keyframe(node: &Node, room: &str, to_session: String, track: u32) {
    let event = switchboard_protocol::pb::KeyframeRequestEvent {
        room: room.to_owned(),
        from: Some(switchboard_protocol::pb::Sender { node: node.config.node_id.clone(), ..Default::default() }),
        track,
    };
    let req = BusKeyframeRequest { to_session, event: Some(event) };
    let _ = node.publish(node.subjects.room(room, RoomChannel::Media), bus_envelope::Kind::KeyframeRequest(req)).await;
}

/// Send `RoomStats` to the members of large rooms whose count changed since the last time.
pub(crate) fn flush_room_stats(node: &Node) {
    for room in node.rooms.all() {
        let st = room.lock();
        if !st.stats_dirty.swap(false, std::sync::atomic::Ordering::Relaxed) {
            continue;
        }
        let stats = RoomStats { room: room.id.clone(), participant_count: st.view.len() as u32 };
        let bytes = frame(server_frame::Kind::RoomStats(stats));
        let mut tally = Tally::default();
        for m in st.local.values() {
            // Only the latest count matters: droppable.
            tally.add(m.outbound.push(Class::Data, bytes.clone(), true), bytes.len());
        }
        tally.flush(node, "room_stats", Class::Data);
    }
}

/// Remove from every room's view the participants of nodes that stopped heartbeating,
/// telling local sessions they left (reason `node_lost`) and clearing their presence
/// records. Not while this node is cut off from the bus itself (a partition or an outage):
/// then nobody's heartbeats arrive, and the silence says nothing about the other nodes (the
/// clocks restart on reconnect, and a resync reconciles what changed meanwhile).
pub(crate) async fn reap_dead_nodes(node: &Arc<Node>) {
    let now = Instant::now();
    if node.cut_off(now) {
        return;
    }
    for lost in node.silent_nodes(now) {
        node.heal.lost(&lost);
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
        JoinError::Full { .. } => ErrorCode::RoomFull,
    }
}

/// Restart every room's history follower after the bus reconnected (its consumer died
/// with the connection). If the broker lost the history (offsets went back), start over
/// from what it has now.
pub(crate) async fn refollow_history(node: &Arc<Node>) {
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

/// Reconcile every room's view with the presence store (after the bus came back): leaves
/// and joins announced while the bus was away were lost, so participants gone from the
/// store are reported left (reason `resync`) and new ones joined. Local sessions are never
/// removed here; their records, if the store lost them (purged by a side that reported this
/// node lost, after this node restored them), are put back. `false` if a room could not be
/// reconciled.
pub(crate) async fn resync_presence(node: &Arc<Node>) -> bool {
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
pub(crate) async fn republish_presence(node: &Arc<Node>) -> bool {
    let mut complete = true;
    let pending = std::mem::take(&mut *node.pending_removals.lock().unwrap_or_else(|e| e.into_inner()));
    for (room, session) in pending {
        if let Err(e) = node.bus.presence_remove(&room, &session).await {
            tracing::warn!(room, session, error = %e, "removing presence failed again; will retry");
            complete = false;
            node.pending_removals.lock().unwrap_or_else(|e| e.into_inner()).push((room, session));
        }
    }
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
