//! Node liveness: when each other node last heartbeated, whether one is dead, and whether
//! this node is itself cut off from the bus (and so cannot judge the others).

use crate::context::NodeContext;
use tokio::time::Instant;

impl NodeContext {
    /// Note that `node` is alive now. When it is this node's own heartbeat coming back after
    /// a silence, this node was the one cut off: every other node's clock restarts. Returns
    /// whether `node` had been reported lost (a partition healed: [`crate::heal`]).
    pub(crate) fn saw_node(&self, node: &str) -> bool {
        let now = Instant::now();
        let mut seen = self.node_seen.lock().unwrap_or_else(|e| e.into_inner());
        if node == self.config.node_id && seen.get(node).is_some_and(|t| self.self_silent(*t, now)) {
            tracing::info!("own heartbeats are back: restarting the other nodes' liveness clocks");
            seen.values_mut().for_each(|t| *t = now);
        }
        seen.insert(node.to_owned(), now);
        drop(seen);
        self.heal.returned(node)
    }

    /// Other nodes silent for longer than the node timeout.
    pub(crate) fn silent_nodes(&self, now: Instant) -> Vec<String> {
        let seen = self.node_seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter()
            .filter(|(id, t)| **id != self.config.node_id && now.duration_since(**t) > self.config.node_timeout)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn self_silent(&self, last: Instant, now: Instant) -> bool {
        now.duration_since(last) > self.config.node_heartbeat * 2
    }

    /// Restart every other node's liveness clock (after this node was cut off from the bus,
    /// their silence says nothing about them).
    pub(crate) fn forgive_silence(&self) {
        let now = Instant::now();
        self.node_seen.lock().unwrap_or_else(|e| e.into_inner()).values_mut().for_each(|t| *t = now);
    }

    /// Whether this node cannot currently judge the others: its bus is down, or its own
    /// heartbeats (which go through the bus like everyone's) stopped coming back, as in a
    /// silent network partition the NATS client has not noticed yet.
    pub(crate) fn cut_off(&self, now: Instant) -> bool {
        if !self.bus.is_connected() {
            return true;
        }
        let seen = self.node_seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(&self.config.node_id).is_some_and(|t| self.self_silent(*t, now))
    }

    /// Whether `node` has missed its heartbeats for longer than the node timeout. A node
    /// never heard of starts its clock now.
    pub(crate) fn node_is_dead(&self, node: &str, now: Instant) -> bool {
        if node == self.config.node_id {
            return false;
        }
        let mut seen = self.node_seen.lock().unwrap_or_else(|e| e.into_inner());
        let last = *seen.entry(node.to_owned()).or_insert(now);
        now.duration_since(last) > self.config.node_timeout
    }
}
