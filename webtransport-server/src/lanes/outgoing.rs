//! Node -> client media lanes: datagrams for frames that fit, one unidirectional stream per
//! group for the rest. Once a group has a stream, the rest of the group follows on it: a
//! frame of the same track sent as a datagram meanwhile would overtake the stream's
//! retransmissions, and the receiver's ordering rule would then discard the older frames
//! (measured on the mobile profile: one frame in ten).

use bytes::Bytes;
use futures_util::FutureExt;
use std::sync::Arc;
use switchboard_relay::metrics::{LaneLabel, ReasonLabel};
use switchboard_relay::MediaTag;
use switchboard_relay::Node;
use wtransport::{Connection, SendStream, VarInt};

/// Group streams open at once per session (one per sender and track); past it the least
/// recently used is finished. A meeting of 16 senders with audio and video uses 32.
pub(crate) const MAX_GROUPS: usize = 64;

/// Bytes one group stream may carry: a group longer than this (a sender that never sends a
/// keyframe) is reset and its sender asked for a keyframe, so stale data of one track cannot
/// fill the connection's send window. ~4 s of 2 Mbit/s video.
pub(crate) const MAX_GROUP_BYTES: usize = 1 << 20;

/// QUIC send priority of group streams (below the control stream's).
const MEDIA_PRIORITY: i32 = 0;

/// Stream error code of a group reset because a newer group started (or it broke a bound).
const GROUP_SUPERSEDED: u32 = 1;

struct Group {
    origin: Arc<switchboard_relay::MediaOrigin>,
    track: u32,
    stream: SendStream,
    bytes: usize,
    /// For least-recently-used eviction.
    used: u64,
}

impl Group {
    fn is(&self, tag: &MediaTag) -> bool {
        self.track == tag.track && (Arc::ptr_eq(&self.origin, &tag.origin) || *self.origin == *tag.origin)
    }
}

/// The sending side of one session's media lanes.
pub(crate) struct MediaSender {
    connection: Connection,
    node: Arc<Node>,
    groups: Vec<Group>,
    /// Finished groups the client has not acknowledged yet, at most one per track: each gets
    /// until its track's next keyframe to arrive, then it is reset.
    retired: Vec<Group>,
    clock: u64,
}

impl MediaSender {
    pub(crate) fn new(connection: Connection, node: Arc<Node>) -> Self {
        Self { connection, node, groups: Vec::new(), retired: Vec::new(), clock: 0 }
    }

    fn count(&self, lane: &'static str) {
        self.node.metrics().media_lane_frames.get_or_create(&LaneLabel { lane, direction: "out" }).inc();
    }

    fn drop_frame(&self, reason: &'static str) -> bool {
        self.node.metrics().media_lane_drops.get_or_create(&ReasonLabel { reason }).inc();
        false
    }

    /// Send one encoded media `ServerFrame`. `false`: dropped (the caller skips the track to
    /// its next keyframe and asks for one). Never waits on the network.
    pub(crate) async fn send(&mut self, frame: Bytes, tag: &MediaTag) -> bool {
        if tag.keyframe {
            self.supersede(tag);
        }
        let fits = self.connection.max_datagram_size().is_some_and(|max| frame.len() <= max);
        if fits && !self.groups.iter().any(|g| g.is(tag)) && self.connection.send_datagram(&frame).is_ok() {
            self.count("datagram");
            return true;
        }
        self.clock += 1;
        let index = match self.groups.iter().position(|g| g.is(tag)) {
            Some(i) => i,
            None => match self.open(tag).await {
                Some(i) => i,
                None => return self.drop_frame("stream_credit"),
            },
        };
        let group = &mut self.groups[index];
        group.used = self.clock;
        let record = 4 + frame.len();
        if group.bytes + record > MAX_GROUP_BYTES {
            self.reset(index);
            return self.drop_frame("group_bytes");
        }
        let Ok(len) = u32::try_from(frame.len()) else { return self.drop_frame("group_bytes") };
        let mut chunks = [Bytes::copy_from_slice(&len.to_be_bytes()), frame];
        // Whole record or nothing: a partial record is followed by a reset, which the
        // receiver reads as the end of a stale group.
        match group.stream.quic_stream_mut().write_chunks(&mut chunks).now_or_never() {
            Some(Ok(written)) if written.chunks == 2 => {
                group.bytes += record;
                self.count("stream");
                true
            }
            Some(Ok(_)) | None => {
                self.reset(index);
                self.drop_frame("blocked")
            }
            Some(Err(_)) => {
                // The client stopped the stream (or the connection is going): start over
                // at the next keyframe.
                self.groups.swap_remove(index);
                self.drop_frame("refused")
            }
        }
    }

    /// A new group of `tag`'s sender and track starts: the current one is finished and
    /// retired; the one retired before it, if the client still has not acknowledged all of
    /// it, is reset (what it has not read by now is two groups old: stale). Resetting the
    /// group that just ended instead would discard its last frames while still in flight
    /// (at 80 ms RTT, every group's last two or three frames: measured as freezes).
    fn supersede(&mut self, tag: &MediaTag) {
        // Acknowledged retired groups need nothing more.
        self.retired.retain_mut(|g| g.stream.quic_stream_mut().stopped().now_or_never().is_none());
        if let Some(index) = self.retired.iter().position(|g| g.is(tag)) {
            let mut stale = self.retired.swap_remove(index);
            let _ = stale.stream.reset(VarInt::from_u32(GROUP_SUPERSEDED));
            self.node.metrics().media_groups_superseded.inc();
        }
        let Some(index) = self.groups.iter().position(|g| g.is(tag)) else { return };
        let mut group = self.groups.swap_remove(index);
        let _ = group.stream.quic_stream_mut().finish();
        if self.retired.len() >= MAX_GROUPS {
            if let Some(oldest) = (0..self.retired.len()).min_by_key(|&i| self.retired[i].used) {
                let mut stale = self.retired.swap_remove(oldest);
                let _ = stale.stream.reset(VarInt::from_u32(GROUP_SUPERSEDED));
            }
        }
        self.retired.push(group);
    }

    fn reset(&mut self, index: usize) {
        let mut group = self.groups.swap_remove(index);
        let _ = group.stream.reset(VarInt::from_u32(GROUP_SUPERSEDED));
    }

    /// Open a group stream for `tag` without waiting for stream credit. Its index.
    async fn open(&mut self, tag: &MediaTag) -> Option<usize> {
        if self.groups.len() >= MAX_GROUPS {
            if let Some(lru) = (0..self.groups.len()).min_by_key(|&i| self.groups[i].used) {
                let mut group = self.groups.swap_remove(lru);
                let _ = group.stream.quic_stream_mut().finish();
            }
        }
        let opening = self.connection.open_uni().now_or_never()?.ok()?;
        // Writes the WebTransport stream header into the send buffer: no network wait.
        let stream = opening.await.ok()?;
        let _ = stream.quic_stream().set_priority(MEDIA_PRIORITY);
        self.groups.push(Group { origin: tag.origin.clone(), track: tag.track, stream, bytes: 0, used: self.clock });
        Some(self.groups.len() - 1)
    }
}
