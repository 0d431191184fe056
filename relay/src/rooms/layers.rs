//! Simulcast layers in a room, wired to the bus: the node subscribes to a layer's subject
//! (`<prefix>.room.<room>.media.<layer>`) while a local receiver gets or is switching to
//! that layer, and drops the subscription when the last one stops; a receiver's choice asks
//! the sender for a keyframe of its new layer; the node's own moves (down on drops, up after
//! a quiet hold-off) do the same. The choices themselves are [`crate::layers::Choices`].
//!
//! The node also tells the room's other nodes which layers it subscribes to
//! ([`crate::layer_interest`]), and publishes its own senders' layers above 0 only while some
//! node wants them.

use super::fanout::read_room;
use super::{Room, RoomState};
use crate::bus::BusError;
use crate::context::NodeContext;
use crate::layer_interest::{layers_of, mask_of, LayerMask};
use crate::layers::{Wanted, MAX_LAYERS};
use crate::metrics::DirectionLabel;
use std::sync::Arc;
use std::time::Instant;
use switchboard_protocol::pb::{bus_envelope, BusKeyframeRequest, KeyframeRequestEvent, LayerInterest, Sender};
use switchboard_protocol::subject::RoomChannel;
use switchboard_protocol::ErrorCode;

/// Why a layer choice was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LayerError {
    #[error("not in room {0:?}; join it first")]
    NotInRoom(String),
    #[error("session {0:?} is not a participant of this room")]
    NoSender(String),
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl LayerError {
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            LayerError::NotInRoom(_) => ErrorCode::NotInRoom,
            LayerError::NoSender(_) => ErrorCode::TargetNotFound,
            LayerError::Bus(_) => ErrorCode::Unavailable,
        }
    }
}

/// `receiver` (a local member of `room_id`) wants `layer` of `sender`. The node subscribes to
/// that layer first, then asks the sender for a keyframe of it.
pub(crate) async fn choose(
    node: &Arc<NodeContext>,
    room_id: &str,
    receiver: &str,
    sender: &str,
    layer: u32,
) -> Result<(), LayerError> {
    let room = node.rooms.get(room_id).ok_or_else(|| LayerError::NotInRoom(room_id.to_owned()))?;
    let pending = {
        let mut st = room.lock();
        if !st.local.contains_key(receiver) {
            return Err(LayerError::NotInRoom(room_id.to_owned()));
        }
        if !st.view.contains_key(sender) {
            return Err(LayerError::NoSender(sender.to_owned()));
        }
        let (pending, created) = st.layers.request(receiver, sender, layer);
        if created {
            node.metrics.layer_subscriptions.inc();
        }
        pending
    };
    sync_subscriptions(node, &room).await?;
    if let Some(layer) = pending {
        ask_keyframe(node, &room, sender, layer, true).await;
    }
    Ok(())
}

/// Make the room's layer subscriptions match what its local receivers want: subscribe to
/// the missing ones (and tell the other nodes at once), drop the others (told at the next
/// heartbeat).
pub(super) async fn sync_subscriptions(node: &Arc<NodeContext>, room: &Arc<Room>) -> Result<(), BusError> {
    let missing: Vec<u32> = {
        let mut st = room.lock();
        if st.closed {
            return Ok(());
        }
        drop_unwanted(node, &mut st);
        let want = st.layers.wanted_layers();
        (0..MAX_LAYERS).filter(|&l| want[l as usize] && st.layer_readers[l as usize].is_none()).collect()
    };
    let mut added = false;
    for layer in missing {
        let sub = node.bus.subscribe(node.subjects.room_media_layer(&room.id, layer)).await?;
        let mut st = room.lock();
        let i = layer as usize;
        // Another sync got there first, or nobody wants it any more: the subscription drops.
        if st.closed || st.layer_readers[i].is_some() || !st.layers.wanted_layers()[i] {
            continue;
        }
        st.layer_readers[i] = Some(node.runtime.spawn(read_room(Arc::downgrade(node), room.clone(), sub)));
        node.metrics.layer_bus_subscriptions.inc();
        added = true;
    }
    if added {
        // Before the keyframe request that follows, on the same connection: the sender's
        // node learns someone wants the layer first.
        announce(node, room, false).await;
    }
    Ok(())
}

/// The layers this node subscribes to in the room.
fn subscribed(st: &RoomState) -> LayerMask {
    mask_of((0..MAX_LAYERS).filter(|&l| st.layer_readers[l as usize].is_some()))
}

/// Tell the room's other nodes which layers this node subscribes to, when due (see
/// [`crate::layer_interest::RoomInterest::due`]) or, with `answer`, because a node asked and
/// this one wants a layer above 0.
pub(super) async fn announce(node: &NodeContext, room: &Room, answer: bool) {
    let (mask, ask) = {
        let mut st = room.lock();
        if st.closed {
            return;
        }
        let mask = subscribed(&st);
        match st.interest.due(mask) {
            Some(ask) => (mask, ask),
            None if answer && mask & !1 != 0 => (mask, false),
            None => return,
        }
    };
    let ttl = node.config.node_heartbeat.saturating_mul(3);
    let msg = LayerInterest {
        room: room.id.clone(),
        layers: layers_of(mask),
        ttl_ms: u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX),
        ask,
    };
    let subject = node.subjects.room(&room.id, RoomChannel::Media);
    let _ = node.publish(subject, bus_envelope::Kind::LayerInterest(msg)).await;
}

/// Another node's announcement (from the room's subject): remember it. Returns whether it
/// asks for this node's.
pub(super) fn interest_from(st: &mut RoomState, origin: &str, msg: &LayerInterest) -> bool {
    let ttl = std::time::Duration::from_millis(msg.ttl_ms.into());
    if !st.interest.remote.update(origin, mask_of(msg.layers.iter().copied()), ttl, Instant::now()) {
        tracing::warn!(node = %origin, "layer interest of more nodes than a room tracks; ignored");
    }
    msg.ask
}

/// Whether a frame of `layer` published in `room_id` would reach anyone: layer 0 always; a
/// higher layer while this node subscribes to it (a local receiver wants it) or another
/// node announced it. A room this node does not host (the sender left meanwhile) publishes.
pub(crate) fn layer_published(node: &NodeContext, room_id: &str, layer: u32) -> bool {
    if layer == 0 {
        return true;
    }
    let Some(room) = node.rooms.get(room_id) else { return true };
    let st = room.lock();
    st.layer_readers.get(layer as usize).is_some_and(Option::is_some)
        || st.interest.remote.wanted(layer, Instant::now())
}

/// Drop the subscriptions of layers no local receiver wants any more (all of them once the
/// room is closed).
pub(super) fn drop_unwanted(node: &NodeContext, st: &mut RoomState) {
    let want = if st.closed { [false; MAX_LAYERS as usize] } else { st.layers.wanted_layers() };
    for (i, reader) in st.layer_readers.iter_mut().enumerate() {
        if !want[i] {
            if let Some(task) = reader.take() {
                task.abort(); // drops the subscription: unsubscribes
                node.metrics.layer_bus_subscriptions.dec();
            }
        }
    }
}

/// Forget a leaving receiver's choices.
pub(super) fn forget_receiver(node: &NodeContext, st: &mut RoomState, receiver: &str) {
    let n = st.layers.remove_receiver(receiver);
    node.metrics.layer_subscriptions.dec_by(n as i64);
    drop_unwanted(node, st);
}

/// Ask `sender` for a keyframe of its `layer` (unless asked within
/// [`crate::layers::KEYFRAME_RETRY`], or `force`). Best effort.
pub(super) async fn ask_keyframe(node: &NodeContext, room: &Room, sender: &str, layer: u32, force: bool) {
    let track = {
        let mut st = room.lock();
        let now = Instant::now();
        if !st.layers.should_ask(sender, layer, now) && !force {
            return;
        }
        st.layers.track_of(sender, layer)
    };
    let event = KeyframeRequestEvent {
        room: room.id.clone(),
        from: Some(Sender { node: node.config.node_id.clone(), ..Default::default() }),
        track: track.unwrap_or(0),
        layer: Some(layer),
    };
    let req = BusKeyframeRequest { to_session: sender.to_owned(), event: Some(event) };
    let subject = node.subjects.room(&room.id, RoomChannel::Media);
    let _ = node.publish(subject, bus_envelope::Kind::KeyframeRequest(req)).await;
}

/// The node moved receivers (down after drops, up after quiet): subscribe to their new
/// layers and ask the senders for keyframes.
pub(super) async fn apply_moves(
    node: &Arc<NodeContext>,
    room: &Arc<Room>,
    moves: Vec<Wanted>,
    direction: &'static str,
) {
    if moves.is_empty() {
        return;
    }
    node.metrics.layer_auto_moves.get_or_create(&DirectionLabel { direction }).inc_by(moves.len() as u64);
    for m in &moves {
        tracing::debug!(room = %room.id, receiver = %m.receiver, sender = %m.sender, layer = m.layer, direction, "moving a receiver's layer");
    }
    if let Err(e) = sync_subscriptions(node, room).await {
        tracing::warn!(room = %room.id, error = %e, "subscribing to a simulcast layer failed");
    }
    for m in moves {
        ask_keyframe(node, room, &m.sender, m.layer, false).await;
    }
}

/// `receiver`'s transport dropped a frame of `sender`'s `track`: if that is one of the
/// sender's layers, move the receiver down.
pub(crate) async fn media_dropped(node: &Arc<NodeContext>, room_id: &str, receiver: &str, sender: &str, track: u32) {
    let Some(room) = node.rooms.get(room_id) else { return };
    let moved = {
        let mut st = room.lock();
        if !st.layers.is_layered(sender, track) {
            return;
        }
        st.layers.dropped(receiver, sender, Instant::now())
    };
    if let Some(layer) = moved {
        let down = Wanted { receiver: receiver.to_owned(), sender: sender.to_owned(), layer };
        apply_moves(node, &room, vec![down], "down").await;
    }
}

/// Periodic (node heartbeat): forget senders that left, and move up receivers whose links
/// have been quiet for the hold-off.
pub(crate) async fn tick(node: &Arc<NodeContext>) {
    let now = Instant::now();
    for room in node.rooms.all() {
        let ups = {
            let mut st = room.lock();
            let RoomState { view, layers, speaker, .. } = &mut *st;
            let gone = layers.retain_senders(|s| view.contains_key(s));
            node.metrics.layer_subscriptions.dec_by(gone as i64);
            speaker.retain(|s| view.contains_key(s));
            let ups = layers.raise(now, node.config.layer_up_hold_off);
            drop_unwanted(node, &mut st);
            st.interest.remote.prune(now);
            ups
        };
        apply_moves(node, &room, ups, "up").await;
        announce(node, &room, false).await;
    }
}
