//! The room's active speaker, announced to local members: every node hosting the room
//! feeds the audio levels of the frames it receives from the bus to the room's
//! [`crate::speaker::Detector`] and tells its local members when the speaker changes.

use super::fanout::{frame, Tally};
use super::RoomState;
use crate::context::NodeContext;
use crate::outbound::Class;
use std::time::Instant;
use switchboard_protocol::pb::{server_frame, ActiveSpeaker};

/// An audio frame of `session` (`user`) with `level` (-dBov) reached the room on this node.
pub(super) fn observe(node: &NodeContext, room: &str, st: &mut RoomState, session: &str, user: &str, level: u32) {
    let Some(change) = st.speaker.observe(session, user, level, Instant::now()) else { return };
    node.metrics.active_speaker_changes.inc();
    let ev = ActiveSpeaker { room: room.to_owned(), session: change.session, user: change.user, level: change.level };
    let bytes = frame(server_frame::Kind::ActiveSpeaker(ev));
    let mut tally = Tally::default();
    for m in st.local.values() {
        // At most one a second per room; a client far behind may miss one (droppable) and
        // the next change brings the latest.
        tally.add(m.outbound.push(Class::Data, bytes.clone(), true), bytes.len());
    }
    tally.flush(node, "active_speaker", Class::Data);
}
