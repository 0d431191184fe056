//! The ordering rule for media that arrives on several lanes (README "Media lanes"): frames
//! of one track may come on a datagram and on a stream, so out of order. A frame is
//! delivered unless it is older (by `seq`) than the last frame delivered for its room, sender
//! session and track, except that a keyframe newer than the last delivered keyframe is
//! always delivered (a decoder can restart from it).

use std::collections::HashMap;

/// Tracks remembered at most; past it the least recently used one is forgotten (its next
/// frame is then delivered whatever its `seq`).
pub(crate) const MAX_TRACKS: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct TrackState {
    /// `seq` of the last delivered frame.
    last: u64,
    /// `seq` of the last delivered keyframe.
    last_keyframe: Option<u64>,
    /// For least-recently-used eviction.
    used: u64,
}

/// Delivery state per (room, sender session, track), bounded by [`MAX_TRACKS`].
#[derive(Debug)]
pub(crate) struct MediaOrder {
    /// room -> sender session -> track -> state (nested so lookups borrow `&str`s).
    rooms: HashMap<String, HashMap<String, HashMap<u32, TrackState>>>,
    tracks: usize,
    max_tracks: usize,
    clock: u64,
}

impl Default for MediaOrder {
    fn default() -> Self {
        Self::with_max_tracks(MAX_TRACKS)
    }
}

impl MediaOrder {
    pub(crate) fn with_max_tracks(max_tracks: usize) -> Self {
        Self { rooms: HashMap::new(), tracks: 0, max_tracks: max_tracks.max(1), clock: 0 }
    }

    /// Whether to deliver this frame; if so, it becomes its track's last delivered frame.
    pub(crate) fn admit(&mut self, room: &str, session: &str, track: u32, seq: u64, keyframe: bool) -> bool {
        self.clock += 1;
        let clock = self.clock;
        let known = self.rooms.get_mut(room).and_then(|s| s.get_mut(session)).and_then(|t| t.get_mut(&track));
        if let Some(state) = known {
            let newer_keyframe = keyframe && state.last_keyframe.is_none_or(|k| seq > k);
            if seq < state.last && !newer_keyframe {
                return false;
            }
            state.last = seq;
            if keyframe {
                state.last_keyframe = Some(seq);
            }
            state.used = clock;
            return true;
        }
        if self.tracks >= self.max_tracks {
            self.evict_oldest();
        }
        let state = TrackState { last: seq, last_keyframe: keyframe.then_some(seq), used: clock };
        self.rooms.entry(room.to_owned()).or_default().entry(session.to_owned()).or_default().insert(track, state);
        self.tracks += 1;
        true
    }

    /// Forget a room (this session left it).
    pub(crate) fn forget_room(&mut self, room: &str) {
        if let Some(sessions) = self.rooms.remove(room) {
            self.tracks -= sessions.values().map(HashMap::len).sum::<usize>();
        }
    }

    /// Forget one sender in a room (it left).
    pub(crate) fn forget_sender(&mut self, room: &str, session: &str) {
        let Some(sessions) = self.rooms.get_mut(room) else { return };
        if let Some(tracks) = sessions.remove(session) {
            self.tracks -= tracks.len();
        }
        if sessions.is_empty() {
            self.rooms.remove(room);
        }
    }

    /// Tracks remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.tracks
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .rooms
            .iter()
            .flat_map(|(room, sessions)| {
                sessions.iter().flat_map(move |(session, tracks)| {
                    tracks.iter().map(move |(track, state)| (state.used, room, session, *track))
                })
            })
            .min_by_key(|(used, ..)| *used)
            .map(|(_, room, session, track)| (room.clone(), session.clone(), track));
        let Some((room, session, track)) = oldest else { return };
        if let Some(sessions) = self.rooms.get_mut(&room) {
            if let Some(tracks) = sessions.get_mut(&session) {
                if tracks.remove(&track).is_some() {
                    self.tracks -= 1;
                }
                if tracks.is_empty() {
                    sessions.remove(&session);
                }
            }
            if sessions.is_empty() {
                self.rooms.remove(&room);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_frames_are_delivered_and_older_ones_dropped() {
        let mut order = MediaOrder::default();
        assert!(order.admit("r", "s", 1, 1, true));
        assert!(order.admit("r", "s", 1, 2, false));
        assert!(order.admit("r", "s", 1, 4, false), "a gap is fine (a lost datagram)");
        assert!(!order.admit("r", "s", 1, 3, false), "older than the last delivered: stale");
        assert!(order.admit("r", "s", 1, 4, false), "not older (same seq): delivered");
        assert!(order.admit("r", "s", 1, 5, false));
    }

    #[test]
    fn a_keyframe_newer_than_the_last_keyframe_is_always_delivered() {
        let mut order = MediaOrder::default();
        assert!(order.admit("r", "s", 1, 10, true));
        // Small deltas overtake the group's large keyframe (datagram vs. stream).
        assert!(order.admit("r", "s", 1, 22, false));
        assert!(order.admit("r", "s", 1, 20, true), "a late keyframe newer than keyframe 10");
        // The decoder restarted at 20: what follows it is delivered again.
        assert!(order.admit("r", "s", 1, 21, false));
        assert!(!order.admit("r", "s", 1, 15, true), "a keyframe older than the last keyframe is stale");
        assert!(!order.admit("r", "s", 1, 20, false));
    }

    #[test]
    fn the_first_keyframe_of_a_track_passes_even_after_newer_deltas() {
        let mut order = MediaOrder::default();
        assert!(order.admit("r", "s", 1, 5, false));
        assert!(order.admit("r", "s", 1, 3, true), "no keyframe delivered yet");
    }

    #[test]
    fn rooms_senders_and_tracks_are_independent() {
        let mut order = MediaOrder::default();
        assert!(order.admit("r", "s", 1, 9, false));
        assert!(order.admit("r", "s", 2, 1, false), "another track");
        assert!(order.admit("r", "t", 1, 1, false), "another sender");
        assert!(order.admit("q", "s", 1, 1, false), "another room");
        assert_eq!(order.len(), 4);
    }

    #[test]
    fn state_is_bounded_and_forgotten_on_leave() {
        let mut order = MediaOrder::with_max_tracks(3);
        for track in 0..3 {
            assert!(order.admit("r", "s", track, 100, false));
        }
        assert!(order.admit("r", "s", 0, 101, false), "track 0 is now the most recently used");
        assert!(order.admit("r", "s", 7, 1, false));
        assert_eq!(order.len(), 3, "bounded");
        // Track 1 was the least recently used: forgotten, so an old seq passes again.
        assert!(order.admit("r", "s", 1, 1, false));
        assert!(!order.admit("r", "s", 0, 1, false), "track 0 was kept");
        order.forget_sender("r", "s");
        assert_eq!(order.len(), 0);
        assert!(order.admit("r", "s", 0, 1, false));
        assert!(order.admit("x", "s", 0, 1, false));
        order.forget_room("r");
        assert_eq!(order.len(), 1);
    }
}
