//! Client -> node lanes: a media frame that fits the connection's datagram size goes as one
//! QUIC datagram; the rest go on one unidirectional stream per group of (room, track) (a
//! keyframe starts a group; the previous group's stream is finished). Once a group has a
//! stream, the rest of the group follows on it (a datagram would overtake the stream's
//! retransmissions and reorder the track). Never waits: a frame no lane can take at once is
//! dropped.

use super::{Lane, MediaCounters};
use bytes::Bytes;
use futures_util::FutureExt;
use wtransport::error::SendDatagramError;
use wtransport::{Connection, SendStream};

/// Group streams open at once. The node accepts 13 unidirectional streams at a time from a
/// client; past this many, the least recently used group is finished.
pub(crate) const MAX_SEND_GROUPS: usize = 8;

/// Stream error code of a group stream reset after a partial write (the node reads it as
/// the end of a stale group).
const GROUP_ABANDONED: u32 = 1;

struct Group {
    room: String,
    track: u32,
    stream: SendStream,
    /// For least-recently-used eviction.
    used: u64,
}

/// The sending side of one session's media lanes.
pub(crate) struct LaneSender {
    connection: Connection,
    groups: Vec<Group>,
    clock: u64,
}

impl LaneSender {
    pub(crate) fn new(connection: Connection) -> Self {
        Self { connection, groups: Vec::new(), clock: 0 }
    }

    /// Send one encoded `ClientFrame` carrying `Media` of `room`/`track`, counting it in
    /// `counters` (sent on a lane, or dropped). Never waits on the network.
    pub(crate) fn send(&mut self, frame: Bytes, room: &str, track: u32, keyframe: bool, counters: &MediaCounters) {
        if keyframe {
            self.finish_group(room, track);
        }
        let on_stream = self.groups.iter().any(|g| g.track == track && g.room == room);
        if !on_stream && self.connection.max_datagram_size().is_some_and(|max| frame.len() <= max) {
            match self.connection.send_datagram(&frame) {
                Ok(()) => return counters.sent(Lane::Datagram),
                // The path's datagram size shrank, or the node takes none: use a stream.
                Err(SendDatagramError::TooLarge | SendDatagramError::UnsupportedByPeer) => {}
                Err(SendDatagramError::NotConnected) => return counters.send_dropped(),
            }
        }
        if self.write_on_group(frame, room, track) {
            counters.sent(Lane::Stream);
        } else {
            counters.send_dropped();
        }
    }

    /// Write one record on the group stream of `room`/`track` (opened if needed), whole or
    /// not at all.
    fn write_on_group(&mut self, frame: Bytes, room: &str, track: u32) -> bool {
        self.clock += 1;
        let index = match self.groups.iter().position(|g| g.track == track && g.room == room) {
            Some(i) => i,
            None => match self.open(room, track) {
                Some(i) => i,
                None => return false,
            },
        };
        let group = &mut self.groups[index];
        group.used = self.clock;
        let Ok(len) = u32::try_from(frame.len()) else { return false };
        let mut chunks = [Bytes::copy_from_slice(&len.to_be_bytes()), frame];
        match group.stream.quic_stream_mut().write_chunks(&mut chunks).now_or_never() {
            Some(Ok(written)) if written.chunks == 2 => true,
            Some(Ok(_)) | None => {
                // Part of the record (or nothing) went: the stream cannot carry the group on.
                let mut group = self.groups.swap_remove(index);
                let _ = group.stream.reset(wtransport::VarInt::from_u32(GROUP_ABANDONED));
                false
            }
            Some(Err(_)) => {
                // Stopped by the node, or the connection is going.
                self.groups.swap_remove(index);
                false
            }
        }
    }

    /// End the group of `room`/`track`: its data still reaches the node; the next frame
    /// that needs a stream opens a new one.
    fn finish_group(&mut self, room: &str, track: u32) {
        if let Some(index) = self.groups.iter().position(|g| g.track == track && g.room == room) {
            let mut group = self.groups.swap_remove(index);
            let _ = group.stream.quic_stream_mut().finish();
        }
    }

    /// Open a group stream without waiting for stream credit; its index.
    fn open(&mut self, room: &str, track: u32) -> Option<usize> {
        if self.groups.len() >= MAX_SEND_GROUPS {
            if let Some(lru) = (0..self.groups.len()).min_by_key(|&i| self.groups[i].used) {
                let mut group = self.groups.swap_remove(lru);
                let _ = group.stream.quic_stream_mut().finish();
            }
        }
        let opening = self.connection.open_uni().now_or_never()?.ok()?;
        // Writes the WebTransport stream header into a fresh stream's send buffer.
        let stream = opening.now_or_never()?.ok()?;
        self.groups.push(Group { room: room.to_owned(), track, stream, used: self.clock });
        Some(self.groups.len() - 1)
    }
}
