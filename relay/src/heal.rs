//! Noticing that a partition healed without this node's bus connection ever dropping, and
//! converging presence and calls afterwards.
//!
//! When the NATS cluster itself splits (2|1, say), a node on each side keeps its
//! connection: it hears its own heartbeats, stops hearing the other side's, and after the
//! node timeout reports their participants left (`node_lost`); the side with a JetStream
//! quorum also purges their presence records. When the split heals nothing reconnects, so
//! the reconnect path (`restore_after_reconnect`) never runs: both sides would keep the
//! others out of their views, and the bucket without their records, for good. So a node
//! remembers the nodes it reported lost; when one of them is heard again it runs the same
//! repair as after a reconnect: record and announce its participants again (they were
//! likely reported lost over there too), retry failed presence removals, tell its devices
//! the calls they missed (apart, retried until every record is read), and two heartbeats
//! later reconcile its views with the store.

use crate::context::NodeContext;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Rounds of one repair before it waits for the next return or reconnect.
const ROUNDS: u32 = 10;

/// Longest wait between two rounds of the presence repair. Short: JetStream re-forms within
/// seconds to tens of seconds after a heal, and every second waited past its return is a
/// second of wrong presence (with a 10 s cap, convergence took up to 25 s after a 2|1 NATS
/// split healed); a round costs one store write per local participant.
const PRESENCE_RETRY_MAX: Duration = Duration::from_secs(2);

/// Nodes this node reported lost, and whether a repair is scheduled.
#[derive(Default)]
pub(crate) struct Heal {
    lost: Mutex<HashSet<String>>,
    scheduled: AtomicBool,
}

impl Heal {
    /// `node` was reported lost (its participants reaped); whether it was not already.
    pub(crate) fn lost(&self, node: &str) -> bool {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).insert(node.to_owned())
    }

    /// `node` was heard from: whether it had been reported lost (it is back now).
    pub(crate) fn returned(&self, node: &str) -> bool {
        let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        !lost.is_empty() && lost.remove(node)
    }
}

/// Schedule a repair (several returns within a heartbeat share one).
pub(crate) fn schedule(node: &Arc<NodeContext>) {
    if node.heal.scheduled.swap(true, Ordering::SeqCst) {
        return;
    }
    tracing::info!("a node reported lost is back: repairing presence and calls");
    node.runtime.spawn(repair(Arc::downgrade(node)));
}

async fn repair(weak: std::sync::Weak<NodeContext>) {
    let Some(heartbeat) = weak.upgrade().map(|n| n.config.node_heartbeat) else { return };
    // Let the other returns of the same heal arrive first.
    tokio::time::sleep(heartbeat).await;
    let Some(node) = weak.upgrade() else { return };
    node.heal.scheduled.store(false, Ordering::SeqCst);
    // Calls apart from presence: a few reads, not to wait behind every presence record.
    node.runtime.spawn(repair_calls(weak.clone()));
    drop(node);
    let mut backoff = Duration::from_secs(1);
    for round in 1..=ROUNDS {
        let Some(node) = weak.upgrade() else { return };
        let mut complete = crate::rooms::republish_presence(&node).await;
        drop(node);
        // The other side repairs too: give it a couple of heartbeats before reconciling.
        tokio::time::sleep(heartbeat * 2).await;
        let Some(node) = weak.upgrade() else { return };
        complete &= crate::rooms::resync_presence(&node).await;
        node.metrics.presence_resyncs.inc();
        if complete {
            return;
        }
        tracing::warn!(round, retry_in = ?backoff, "presence repair after a heal incomplete (JetStream not back yet)");
        drop(node);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(PRESENCE_RETRY_MAX);
    }
}

/// Re-read the watched calls until every record could be read (bounded).
async fn repair_calls(weak: std::sync::Weak<NodeContext>) {
    let mut backoff = Duration::from_millis(500);
    for round in 1..=ROUNDS * 2 {
        let Some(node) = weak.upgrade() else { return };
        if crate::calls::resync::refresh(&node).await {
            return;
        }
        tracing::warn!(round, retry_in = ?backoff, "call repair after a heal incomplete (JetStream not back yet)");
        drop(node);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
