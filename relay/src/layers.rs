//! Simulcast layers: which layer of each sender's layered video each receiver gets.
//!
//! A sender sends up to [`MAX_LAYERS`] layers of one video, each as its own track with
//! `Media.layer` set (0 the lowest). A receiver gets one layer per sender: layer 0 unless
//! it chose another (`LayerSubscribe`). Layer 0 is the default because it is the safe one:
//! a receiver that never says what it wants (an old client, a thumbnail, a phone on a bad
//! link) costs least, and nodes only pull the higher layers over the bus for receivers that
//! asked for them.
//!
//! A change never breaks decoding: the receiver keeps getting its current layer until a
//! keyframe of the new one arrives (the node asks the sender for it), then switches.
//!
//! The node also moves a receiver down on its own: when the receiver's queue or transport
//! drops a frame of a sender's layer, its cap for that sender drops one layer below the one
//! it was getting (at most one step per [`DOWN_GAP`]); after a hold-off without drops
//! (`--layer-up-hold-off`, default [`UP_HOLD_OFF`]) the cap rises one layer, and so on up to
//! what the receiver asked for.
//!
//! This file is the per-room bookkeeping, without I/O; `rooms::layers` wires it to the bus
//! and the fan-out.

use std::collections::HashMap;
use std::time::{Duration, Instant};
pub use switchboard_protocol::limits::MAX_LAYERS;

/// A receiver is moved down at most one layer per this interval (a full queue drops several
/// frames in a row; one step is taken for them).
pub const DOWN_GAP: Duration = Duration::from_secs(1);
/// Default hold-off without drops before a receiver that was moved down goes up a layer.
pub const UP_HOLD_OFF: Duration = Duration::from_secs(8);
/// While a switch waits for a keyframe of a layer, the sender is asked again at most this
/// often (a keyframe request can be lost like any droppable frame).
pub const KEYFRAME_RETRY: Duration = Duration::from_secs(1);

/// One receiver's choice for one sender.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Choice {
    /// What the receiver asked for.
    requested: u32,
    /// The node's ceiling after drops (`MAX_LAYERS - 1` when none).
    cap: u32,
    /// The layer being forwarded (`None`: none yet).
    current: Option<u32>,
    /// The layer to switch to on its next keyframe: `min(requested, cap)`.
    target: u32,
    /// The last drop of this sender's media for this receiver.
    last_drop: Option<Instant>,
    /// The last move the node made on its own (down or up).
    last_move: Option<Instant>,
}

/// What to do with a layered frame for one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Not this receiver's layer.
    Skip,
    /// Forward it.
    Forward,
    /// Forward it: it is the keyframe the receiver's switch waited for (`from` the layer it
    /// got until now).
    Switched {
        /// The previous layer, if any.
        from: Option<u32>,
    },
    /// Not forwarded: a frame of the layer the receiver waits to switch to, but not a
    /// keyframe (the sender may need asking again).
    Awaiting,
}

/// A layer the node must ask a sender for a keyframe of (a receiver is switching to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The receiver's session.
    pub receiver: String,
    /// The sender's session.
    pub sender: String,
    /// The layer.
    pub layer: u32,
}

/// The layer choices of a room's local receivers, and the tracks its senders' layers use.
#[derive(Debug, Default)]
pub struct Choices {
    /// receiver session -> sender session -> choice. Absent: layer 0, no state.
    by_receiver: HashMap<String, HashMap<String, Choice>>,
    /// sender session -> layer -> track, learned from frames (keyframe requests name it).
    tracks: HashMap<String, [Option<u32>; MAX_LAYERS as usize]>,
    /// sender session -> layer -> when the node last asked it for a keyframe of that layer.
    asked: HashMap<String, [Option<Instant>; MAX_LAYERS as usize]>,
}

impl Choices {
    /// Number of (receiver, sender) choices held.
    pub fn len(&self) -> usize {
        self.by_receiver.values().map(HashMap::len).sum()
    }

    /// Whether no choice is held.
    pub fn is_empty(&self) -> bool {
        self.by_receiver.is_empty()
    }

    /// The receiver asks for `layer` of `sender`. Returns the layer to ask a keyframe of,
    /// when a switch is now pending, and whether a new choice was created.
    pub fn request(&mut self, receiver: &str, sender: &str, layer: u32) -> (Option<u32>, bool) {
        let layer = layer.min(MAX_LAYERS - 1);
        let choices = self.by_receiver.entry(receiver.to_owned()).or_default();
        let created = !choices.contains_key(sender);
        // A receiver without a choice was getting layer 0.
        let c = choices.entry(sender.to_owned()).or_insert_with(|| Choice {
            requested: 0,
            cap: MAX_LAYERS - 1,
            current: Some(0),
            target: 0,
            last_drop: None,
            last_move: None,
        });
        c.requested = layer;
        c.target = layer.min(c.cap);
        let pending = (c.current != Some(c.target)).then_some(c.target);
        (pending, created)
    }

    /// Whether `receiver` gets this frame of `sender`'s `layer`.
    pub fn admit(&mut self, receiver: &str, sender: &str, layer: u32, keyframe: bool) -> Admit {
        let Some(c) = self.by_receiver.get_mut(receiver).and_then(|m| m.get_mut(sender)) else {
            return if layer == 0 { Admit::Forward } else { Admit::Skip };
        };
        if c.current == Some(layer) {
            return Admit::Forward;
        }
        if layer == c.target {
            if !keyframe {
                return Admit::Awaiting;
            }
            let from = c.current.replace(layer);
            return Admit::Switched { from };
        }
        Admit::Skip
    }

    /// `receiver` lost a frame of `sender`'s layered media: move it down a layer (unless it
    /// moved within [`DOWN_GAP`] or is at the bottom). Returns the new target.
    pub fn dropped(&mut self, receiver: &str, sender: &str, now: Instant) -> Option<u32> {
        let c = self.by_receiver.get_mut(receiver)?.get_mut(sender)?;
        c.last_drop = Some(now);
        if c.last_move.is_some_and(|t| now.saturating_duration_since(t) < DOWN_GAP) {
            return None;
        }
        // A pending switch up is given up; otherwise one below what it gets.
        let getting = c.current.unwrap_or(0);
        let new_cap = if c.target > getting { getting } else { getting.checked_sub(1)? };
        if new_cap >= c.cap && c.target <= new_cap {
            return None;
        }
        c.cap = new_cap;
        c.target = c.requested.min(new_cap);
        c.last_move = Some(now);
        Some(c.target)
    }

    /// Raise by one layer the cap of every receiver that had no drop for `hold_off` and is
    /// held below what it asked for. Returns the switches now pending.
    pub fn raise(&mut self, now: Instant, hold_off: Duration) -> Vec<Wanted> {
        let quiet = |t: Option<Instant>| t.is_none_or(|t| now.saturating_duration_since(t) >= hold_off);
        let mut up = Vec::new();
        for (receiver, choices) in &mut self.by_receiver {
            for (sender, c) in choices {
                if c.cap < c.requested && quiet(c.last_drop) && quiet(c.last_move) {
                    c.cap += 1;
                    c.target = c.requested.min(c.cap);
                    c.last_move = Some(now);
                    up.push(Wanted { receiver: receiver.clone(), sender: sender.clone(), layer: c.target });
                }
            }
        }
        up
    }

    /// Which layers the room's local receivers need from the bus: layer 0 always (the
    /// default), and every layer a receiver gets or is switching to.
    pub fn wanted_layers(&self) -> [bool; MAX_LAYERS as usize] {
        let mut want = [false; MAX_LAYERS as usize];
        want[0] = true;
        for c in self.by_receiver.values().flat_map(HashMap::values) {
            want[c.target as usize] = true;
            if let Some(cur) = c.current {
                want[cur as usize] = true;
            }
        }
        want
    }

    /// A frame of `sender`'s `layer` came on `track`.
    pub fn saw_track(&mut self, sender: &str, layer: u32, track: u32) {
        if let Some(slot) = self.tracks.get_mut(sender) {
            slot[layer as usize] = Some(track);
        } else {
            let mut slot = [None; MAX_LAYERS as usize];
            slot[layer as usize] = Some(track);
            self.tracks.insert(sender.to_owned(), slot);
        }
    }

    /// The track of `sender`'s `layer`, if seen.
    pub fn track_of(&self, sender: &str, layer: u32) -> Option<u32> {
        self.tracks.get(sender).and_then(|t| t.get(layer as usize).copied().flatten())
    }

    /// Whether `track` of `sender` is one of its layers.
    pub fn is_layered(&self, sender: &str, track: u32) -> bool {
        self.tracks.get(sender).is_some_and(|t| t.contains(&Some(track)))
    }

    /// Whether to ask `sender` for a keyframe of `layer` now (not asked within
    /// [`KEYFRAME_RETRY`]); records the ask.
    pub fn should_ask(&mut self, sender: &str, layer: u32, now: Instant) -> bool {
        let Some(i) = (layer < MAX_LAYERS).then_some(layer as usize) else { return false };
        let slot = self.asked.entry(sender.to_owned()).or_default();
        if slot[i].is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_RETRY) {
            return false;
        }
        slot[i] = Some(now);
        true
    }

    /// Forget a receiver's choices; returns how many were held.
    pub fn remove_receiver(&mut self, receiver: &str) -> usize {
        self.by_receiver.remove(receiver).map_or(0, |m| m.len())
    }

    /// Forget everything about senders that `keep` refuses (they left the room); returns
    /// how many choices were dropped.
    pub fn retain_senders(&mut self, keep: impl Fn(&str) -> bool) -> usize {
        self.tracks.retain(|s, _| keep(s));
        self.asked.retain(|s, _| keep(s));
        let mut removed = 0;
        self.by_receiver.retain(|_, choices| {
            let before = choices.len();
            choices.retain(|s, _| keep(s));
            removed += before - choices.len();
            !choices.is_empty()
        });
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_layer_zero_without_state() {
        let mut c = Choices::default();
        assert_eq!(c.admit("r", "s", 0, false), Admit::Forward);
        assert_eq!(c.admit("r", "s", 1, true), Admit::Skip);
        assert!(c.is_empty());
        assert_eq!(c.wanted_layers(), [true, false, false]);
    }

    #[test]
    fn switches_on_a_keyframe_of_the_new_layer_only() {
        let mut c = Choices::default();
        assert_eq!(c.request("r", "s", 2), (Some(2), true));
        assert_eq!(c.wanted_layers(), [true, false, true]);
        // Keeps layer 0 until layer 2's keyframe.
        assert_eq!(c.admit("r", "s", 0, false), Admit::Forward);
        assert_eq!(c.admit("r", "s", 2, false), Admit::Awaiting);
        assert_eq!(c.admit("r", "s", 1, true), Admit::Skip);
        assert_eq!(c.admit("r", "s", 2, true), Admit::Switched { from: Some(0) });
        assert_eq!(c.admit("r", "s", 2, false), Admit::Forward);
        assert_eq!(c.admit("r", "s", 0, true), Admit::Skip);
        // Another receiver is untouched.
        assert_eq!(c.admit("r2", "s", 0, false), Admit::Forward);
        assert_eq!(c.request("r", "s", 2), (None, false));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn drops_move_down_and_quiet_moves_up() {
        let t0 = Instant::now();
        let mut c = Choices::default();
        c.request("r", "s", 2);
        assert!(matches!(c.admit("r", "s", 2, true), Admit::Switched { .. }));
        assert_eq!(c.dropped("r", "s", t0), Some(1));
        // Within DOWN_GAP: no second step.
        assert_eq!(c.dropped("r", "s", t0 + DOWN_GAP / 2), None);
        assert!(matches!(c.admit("r", "s", 1, true), Admit::Switched { from: Some(2) }));
        assert_eq!(c.dropped("r", "s", t0 + DOWN_GAP * 2), Some(0));
        assert!(matches!(c.admit("r", "s", 0, true), Admit::Switched { from: Some(1) }));
        // At the bottom nothing moves.
        assert_eq!(c.dropped("r", "s", t0 + DOWN_GAP * 4), None);
        let hold = Duration::from_secs(5);
        let last_drop = t0 + DOWN_GAP * 4;
        assert!(c.raise(last_drop + hold / 2, hold).is_empty());
        let up = c.raise(last_drop + hold, hold);
        assert_eq!(up, vec![Wanted { receiver: "r".into(), sender: "s".into(), layer: 1 }]);
        assert!(c.raise(last_drop + hold + hold / 2, hold).is_empty(), "one step per hold-off");
        assert_eq!(c.raise(last_drop + hold * 2, hold).len(), 1);
        assert!(c.raise(last_drop + hold * 10, hold).is_empty(), "never above what was asked");
    }

    #[test]
    fn a_drop_during_a_pending_up_switch_cancels_it() {
        let t0 = Instant::now();
        let mut c = Choices::default();
        c.request("r", "s", 1);
        assert_eq!(c.dropped("r", "s", t0), Some(0));
        assert_eq!(c.admit("r", "s", 1, true), Admit::Skip);
        assert_eq!(c.admit("r", "s", 0, false), Admit::Forward);
    }

    #[test]
    fn forgetting_senders_and_receivers() {
        let mut c = Choices::default();
        c.request("r", "a", 1);
        c.request("r", "b", 1);
        c.request("r2", "a", 2);
        c.saw_track("a", 1, 11);
        assert!(c.is_layered("a", 11));
        assert_eq!(c.track_of("a", 1), Some(11));
        let now = Instant::now();
        assert!(c.should_ask("a", 1, now));
        assert!(!c.should_ask("a", 1, now + KEYFRAME_RETRY / 2));
        assert!(c.should_ask("a", 1, now + KEYFRAME_RETRY));
        assert!(!c.should_ask("a", MAX_LAYERS, now));
        assert_eq!(c.retain_senders(|s| s != "a"), 2);
        assert!(!c.is_layered("a", 11));
        assert_eq!(c.remove_receiver("r"), 1);
        assert!(c.is_empty());
    }
}
