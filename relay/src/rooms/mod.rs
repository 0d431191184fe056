//! The per-node room registry and fan-out.
//!
//! A node holds **one bus subscription per room** (`<prefix>.room.<room>.*`) while at least
//! one local session is in the room (plus one per simulcast layer its local receivers
//! want, `<prefix>.room.<room>.media.<layer>`, never per session), receives each room
//! message once and fans it out to
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
//!
//! Where each part lives: this file holds the registry ([`Rooms`], [`Room`], its state)
//! and the queries on it; [`membership`] joins and leaves local sessions (subscribing the
//! node on the first, closing the room on the last); [`fanout`] delivers bus messages to
//! local members; [`history`] appends, follows and replays room history; [`presence`]
//! restores and reconciles the views after a bus outage; [`reaper`] removes the
//! participants of dead nodes; [`roster`] exchanges each node's participants over the bus
//! after a heal or a reconnect, so views converge without the store; [`layers`] holds the
//! node's subscriptions to simulcast layers (one per room and layer its local receivers
//! want, apart from the room's own) and the receivers' choices; [`speaker`] announces the
//! room's active speaker; [`presence_audit`] checks now and then that the presence store
//! holds exactly this node's participants, and repairs it.

mod fanout;
mod history;
mod layers;
mod membership;
mod presence;
mod presence_audit;
mod reaper;
mod roster;
mod speaker;

pub(crate) use fanout::{flush_room_stats, request_keyframe};
pub(crate) use history::{append_history, refollow_history};
pub(crate) use layers::{choose as choose_layer, layer_published, media_dropped, tick as layers_tick};
pub(crate) use membership::{join, leave};
pub(crate) use presence::{republish_presence, resync_presence, retry_removals};
pub(crate) use presence_audit::run as audit_presence;
pub(crate) use reaper::reap_dead_nodes;
pub(crate) use roster::publish_all as publish_rosters;

use crate::bus::BusError;
use crate::context::NodeContext;
use crate::outbound::Outbound;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use switchboard_protocol::pb::Participant;
use switchboard_protocol::ErrorCode;
use tokio::task::JoinHandle;

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
    /// Local receivers' simulcast layer choices.
    layers: crate::layers::Choices,
    /// The bus subscription readers of the room's simulcast layers, by layer.
    layer_readers: [Option<JoinHandle<()>>; crate::layers::MAX_LAYERS as usize],
    /// The room's active speaker, from the audio levels of its frames.
    speaker: crate::speaker::Detector,
    /// Which simulcast layers the room's other nodes pull, and what this node announced.
    interest: crate::layer_interest::RoomInterest,
    /// Other nodes' rosters of the room (after a heal or a reconnect).
    rosters: roster::Rosters,
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

    /// The ids of the rooms this node has local sessions in.
    pub fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
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

/// Whether `session` is a local member of `room`.
pub(crate) fn is_member(node: &NodeContext, room: &str, session: &str) -> bool {
    node.rooms.get(room).is_some_and(|r| r.lock().local.contains_key(session))
}

/// Whether the room's cluster-wide view has a participant matching the target.
pub(crate) fn has_target(node: &NodeContext, room: &str, to_user: &str, to_session: &str) -> bool {
    node.rooms.get(room).is_some_and(|r| {
        let st = r.lock();
        if !to_session.is_empty() {
            st.view.contains_key(to_session)
        } else {
            st.view.values().any(|p| p.user == to_user)
        }
    })
}

/// The error code for a failed join.
pub(crate) fn join_error_code(e: &JoinError) -> ErrorCode {
    match e {
        JoinError::Bus(_) => ErrorCode::Unavailable,
        JoinError::Full { .. } => ErrorCode::RoomFull,
    }
}
