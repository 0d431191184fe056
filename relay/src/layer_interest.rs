//! Which simulcast layers of a room the cluster pulls: a node publishes a sender's layer
//! above 0 to NATS only while some node (itself included) subscribes to that layer, so a
//! layer nobody watches costs no bytes beyond the sender's node.
//!
//! Each node announces the layers it subscribes to in a room (`LayerInterest` on the room's
//! subject, which every node hosting the room receives): at once when it subscribes to a new
//! layer (before it asks the sender for a keyframe of it, on the same connection, so the
//! sender's node learns of the interest before the request), and at every node heartbeat
//! while it wants a layer above 0 or its layers changed. An announcement lives for the `ttl`
//! it carries (three of its sender's heartbeats): a node that died, was cut off or dropped a
//! layer stops counting without anyone having to say so. A node that starts hosting a room
//! asks the others to announce at once, so its senders' higher layers flow from the start.
//!
//! Layer 0 is always published: every node hosting a room subscribes to it. This file is the
//! bookkeeping, without I/O; `rooms::layers` sends and receives the announcements.

use crate::layers::MAX_LAYERS;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The longest an announcement may ask to live (a bound on what a remote node can make
/// this one keep publishing).
pub const MAX_TTL: Duration = Duration::from_secs(60);
/// At most this many nodes' announcements are kept per room (more nodes than any cluster has).
pub const MAX_NODES: usize = 256;

/// A set of layers as a bit mask (bit `l` for layer `l`).
pub type LayerMask = u8;

/// The mask of `layers` (layers at or above [`MAX_LAYERS`] are ignored).
pub fn mask_of(layers: impl IntoIterator<Item = u32>) -> LayerMask {
    layers.into_iter().filter(|&l| l < MAX_LAYERS).fold(0, |m, l| m | (1 << l))
}

/// The layers in `mask`, lowest first.
pub fn layers_of(mask: LayerMask) -> Vec<u32> {
    (0..MAX_LAYERS).filter(|&l| mask & (1 << l) != 0).collect()
}

/// Remote nodes' layer interest in one room.
#[derive(Debug, Default)]
pub struct Interest {
    nodes: HashMap<String, (LayerMask, Instant)>,
}

impl Interest {
    /// `node` subscribes to `mask` until `now + ttl` (bounded by [`MAX_TTL`]). An empty mask
    /// forgets the node. Returns false when the room already tracks [`MAX_NODES`] others.
    pub fn update(&mut self, node: &str, mask: LayerMask, ttl: Duration, now: Instant) -> bool {
        if mask == 0 {
            self.nodes.remove(node);
            return true;
        }
        if !self.nodes.contains_key(node) {
            self.prune(now);
            if self.nodes.len() >= MAX_NODES {
                return false;
            }
        }
        self.nodes.insert(node.to_owned(), (mask, now + ttl.min(MAX_TTL)));
        true
    }

    /// Forget `node` (it was declared dead).
    pub fn remove_node(&mut self, node: &str) {
        self.nodes.remove(node);
    }

    /// Whether some other node wants `layer` now.
    pub fn wanted(&self, layer: u32, now: Instant) -> bool {
        layer < MAX_LAYERS && self.nodes.values().any(|&(mask, until)| until > now && mask & (1 << layer) != 0)
    }

    /// Drop expired announcements.
    pub fn prune(&mut self, now: Instant) {
        self.nodes.retain(|_, &mut (_, until)| until > now);
    }

    /// Nodes with a live announcement.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node has a live announcement (expired ones may still be held).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// A room's layer interest as one node keeps it: the other nodes' announcements, and what
/// this node last announced.
#[derive(Debug, Default)]
pub struct RoomInterest {
    /// The other nodes'.
    pub remote: Interest,
    /// What this node last announced (`None`: nothing yet; its first announcement asks the
    /// others to announce theirs).
    pub announced: Option<LayerMask>,
}

impl RoomInterest {
    /// Whether this node should announce `mask` now: it never did, its layers changed, or it
    /// wants a layer above 0 (refreshed at every heartbeat). Records `mask` as announced.
    /// Returns `Some(ask)` to announce (asking the others to answer on the first one).
    pub fn due(&mut self, mask: LayerMask) -> Option<bool> {
        let first = self.announced.is_none();
        let due = first || self.announced != Some(mask) || mask & !1 != 0;
        self.announced = Some(mask);
        due.then_some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(mask_of([0, 2]), 0b101);
        assert_eq!(mask_of([7, 1]), 0b010, "layers past the maximum are ignored");
        assert_eq!(layers_of(0b110), vec![1, 2]);
        assert_eq!(layers_of(0), Vec::<u32>::new());
    }

    #[test]
    fn announcements_count_until_they_expire_or_are_withdrawn() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(6);
        let mut i = Interest::default();
        assert!(!i.wanted(1, t0));
        assert!(i.update("b", mask_of([0, 1]), ttl, t0));
        assert!(i.wanted(1, t0) && !i.wanted(2, t0));
        assert!(i.wanted(1, t0 + Duration::from_secs(5)));
        assert!(!i.wanted(1, t0 + ttl), "expired");
        // Refreshed, then withdrawn (an empty mask) or forgotten with its node.
        i.update("b", mask_of([1]), ttl, t0 + Duration::from_secs(5));
        assert!(i.wanted(1, t0 + Duration::from_secs(10)));
        i.update("b", 0, ttl, t0 + Duration::from_secs(10));
        assert!(!i.wanted(1, t0 + Duration::from_secs(10)));
        i.update("c", mask_of([2]), ttl, t0);
        i.remove_node("c");
        assert!(i.is_empty());
    }

    #[test]
    fn a_node_announces_first_on_change_and_while_it_wants_a_higher_layer() {
        let mut r = RoomInterest::default();
        assert_eq!(r.due(0b001), Some(true), "the first one asks");
        assert_eq!(r.due(0b001), None, "layer 0 only, unchanged: nothing to say");
        assert_eq!(r.due(0b011), Some(false), "a new layer");
        assert_eq!(r.due(0b011), Some(false), "refreshed while it wants layer 1");
        assert_eq!(r.due(0b001), Some(false), "the withdrawal");
        assert_eq!(r.due(0b001), None);
    }

    #[test]
    fn a_remote_node_cannot_pin_a_layer_for_long_nor_grow_the_map() {
        let t0 = Instant::now();
        let mut i = Interest::default();
        i.update("b", mask_of([1]), Duration::from_secs(86_400), t0);
        assert!(!i.wanted(1, t0 + MAX_TTL), "ttl bounded by MAX_TTL");
        let mut i = Interest::default();
        for n in 0..MAX_NODES {
            assert!(i.update(&format!("n{n}"), 0b10, Duration::from_secs(5), t0));
        }
        assert!(!i.update("one-more", 0b10, Duration::from_secs(5), t0));
        // Once the others expire there is room again.
        assert!(i.update("one-more", 0b10, Duration::from_secs(5), t0 + Duration::from_secs(6)));
        assert_eq!(i.len(), 1);
    }
}
