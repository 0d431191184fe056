//! Fan-out: the room's bus subscription reader, delivering each bus message once to the
//! local members' outbound queues, presence notices to local members, and the metrics
//! tally of each fan-out.

use super::{Room, RoomState};
use crate::bus::{BusMessage, Subscription};
use crate::context::NodeContext;
use crate::layers::{Admit, Wanted};
use crate::metrics::DirectionLabel;
use crate::outbound::{Class, Outbound, Pushed};
use crate::transport::{MediaOrigin, MediaTag};
use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;
use std::sync::Arc;
use switchboard_protocol::encode;
use switchboard_protocol::pb::{
    bus_envelope, server_frame, BusEnvelope, BusKeyframeRequest, ParticipantJoined, ParticipantLeft, RoomStats,
    ServerFrame,
};
use switchboard_protocol::subject::RoomChannel;

pub(super) fn frame(kind: server_frame::Kind) -> Bytes {
    encode(&ServerFrame { kind: Some(kind) })
}

/// Tell every local member but `except` about a presence change. In rooms above the
/// presence-event limit, only mark the count as changed (see [`flush_room_stats`]).
pub(super) fn notify_locals(node: &NodeContext, st: &RoomState, except: &str, kind: server_frame::Kind) {
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
pub(super) struct Tally {
    queued: u64,
    bytes: u64,
    dropped: u64,
    overflowed: u64,
}

impl Tally {
    pub(super) fn add(&mut self, pushed: Pushed, len: usize) -> Pushed {
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

    pub(super) fn flush(self, node: &NodeContext, kind: &'static str, class: Class) {
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

/// Push a room message from session `from` to the room's local members but its sender
/// (those `wanted`): first [`crate::overload::survey`] whether the room is behind (then its
/// members' reliable overflow is excused), and count the message as fanned out for its
/// sender (publisher pushback waits for that).
pub(super) fn deliver_message(
    node: &NodeContext,
    room: &str,
    st: &RoomState,
    from: &str,
    bytes: &Bytes,
    droppable: bool,
    wanted: impl Fn(&super::Member) -> bool,
) {
    let mut tally = Tally::default();
    let behind = crate::overload::survey(&node.load, room, st.local.values().map(|m| &*m.outbound));
    for (sid, member) in &st.local {
        if sid != from && wanted(member) {
            tally.add(member.outbound.push_among(Class::Data, bytes.clone(), droppable, behind), bytes.len());
        }
    }
    if let Some(publisher) = st.local.get(from) {
        publisher.outbound.own_message_fanned_out();
    }
    tally.flush(node, "message", Class::Data);
}

pub(super) fn push(node: &NodeContext, q: &Outbound, class: Class, bytes: Bytes, droppable: bool, kind: &'static str) {
    let mut tally = Tally::default();
    let len = bytes.len();
    tally.add(q.push(class, bytes, droppable), len);
    tally.flush(node, kind, class);
}

/// A room subscription's reader (the room's channels, or one simulcast layer). Boxed: a
/// reader can start another (a layer switch subscribes to the new layer).
pub(super) fn read_room(
    node: std::sync::Weak<NodeContext>,
    room: Arc<Room>,
    mut sub: Subscription,
) -> futures_util::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        while let Some(msg) = sub.next().await {
            let Some(node) = node.upgrade() else { return };
            handle_bus_message(&node, &room, msg).await;
        }
    })
}

async fn handle_bus_message(node: &Arc<NodeContext>, room: &Arc<Room>, msg: BusMessage) {
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
    // Simulcast: receivers the fan-out moved down, and layers whose keyframe receivers wait for.
    let (mut moves, mut layer_asks, mut layer_sender) = (Vec::new(), Vec::new(), String::new());
    // Another node asked which layers this one pulls.
    let mut answer_interest = false;
    let mut answer_roster = false;
    {
        let mut st = room.lock();
        match kind {
            bus_envelope::Kind::Message(m) => {
                let from = m.from.as_ref().map(|f| f.session.clone()).unwrap_or_default();
                let reliable = m.reliable;
                let latency_ms = switchboard_protocol::now_ms().saturating_sub(m.sent_at_ms);
                node.metrics.delivery_latency_seconds.observe(latency_ms as f64 / 1000.0);
                let bytes = frame(server_frame::Kind::Message(m));
                deliver_message(node, &room.id, &st, &from, &bytes, !reliable, |_| true);
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
            bus_envelope::Kind::Roster(roster) => {
                if origin == node.config.node_id {
                    return;
                }
                if node.saw_node(&origin) {
                    crate::heal::schedule(node);
                }
                answer_roster = super::roster::apply(node, &room.id, &mut st, &origin, roster);
            }
            bus_envelope::Kind::LayerInterest(li) => {
                if origin == node.config.node_id {
                    return;
                }
                answer_interest = super::layers::interest_from(&mut st, &origin, &li);
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
                let (sender, user) =
                    media.from.as_ref().map(|f| (f.session.clone(), f.user.clone())).unwrap_or_default();
                node.metrics.media_bus_bytes_in(media.layer, media.payload.len() as u64);
                // Nodes check both at the sender's edge; a bad value from elsewhere is ignored.
                let layer = media.layer.filter(|l| *l < crate::layers::MAX_LAYERS);
                match (layer, media.audio_level) {
                    (Some(l), _) => st.layers.saw_track(&sender, l, media.track),
                    (None, Some(level)) => super::speaker::observe(node, &room.id, &mut st, &sender, &user, level),
                    (None, None) => {}
                }
                let origin = Arc::new(MediaOrigin { room: room.id.clone(), session: sender });
                let tag = MediaTag { origin, track: media.track, keyframe: media.keyframe };
                let bytes = frame(server_frame::Kind::Media(media));
                let mut tally = Tally::default();
                let mut lost = false;
                let now = std::time::Instant::now();
                let RoomState { local, layers, .. } = &mut *st;
                for (sid, member) in local.iter() {
                    if *sid == tag.origin.session {
                        continue;
                    }
                    if let Some(l) = layer {
                        match layers.admit(sid, &tag.origin.session, l, tag.keyframe) {
                            Admit::Skip => continue,
                            Admit::Awaiting => {
                                layer_asks.push(l);
                                continue;
                            }
                            Admit::Forward => {}
                            Admit::Switched { from } => {
                                let direction = if from.is_some_and(|f| f > l) { "down" } else { "up" };
                                node.metrics.layer_switches.get_or_create(&DirectionLabel { direction }).inc();
                            }
                        }
                    }
                    let pushed = tally.add(member.outbound.push_media(bytes.clone(), &tag), bytes.len());
                    if pushed == Pushed::NeedKeyframe {
                        lost = true;
                        if let Some(to) = layer.and_then(|_| layers.dropped(sid, &tag.origin.session, now)) {
                            moves.push(Wanted { receiver: sid.clone(), sender: tag.origin.session.clone(), layer: to });
                        }
                    }
                }
                tally.flush(node, "media", Class::Media);
                if lost {
                    keyframe_requests.push((tag.origin.session.clone(), tag.track));
                }
                layer_sender = tag.origin.session.clone();
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
    if answer_roster {
        super::roster::answer(node, room);
    }
    if answer_interest {
        super::layers::announce(node, room, true).await;
    }
    for (to_session, track) in keyframe_requests {
        request_keyframe(node, &room.id, to_session, track).await;
    }
    super::layers::apply_moves(node, room, moves, "down").await;
    layer_asks.dedup();
    for layer in layer_asks {
        super::layers::ask_keyframe(node, room, &layer_sender, layer, false).await;
    }
}

/// Ask a media sender for a keyframe on behalf of this node (its receivers lost frames of
/// `track`). Best effort: the next loss asks again.
pub(crate) async fn request_keyframe(node: &NodeContext, room: &str, to_session: String, track: u32) {
    let event = switchboard_protocol::pb::KeyframeRequestEvent {
        room: room.to_owned(),
        from: Some(switchboard_protocol::pb::Sender { node: node.config.node_id.clone(), ..Default::default() }),
        track,
        layer: None,
    };
    let req = BusKeyframeRequest { to_session, event: Some(event) };
    let _ = node.publish(node.subjects.room(room, RoomChannel::Media), bus_envelope::Kind::KeyframeRequest(req)).await;
}

/// Send `RoomStats` to the members of large rooms whose count changed since the last time.
pub(crate) fn flush_room_stats(node: &NodeContext) {
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
