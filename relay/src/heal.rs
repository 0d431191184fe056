//! Noticing that a partition healed without this node's bus connection ever dropping, and
//! converging presence and calls afterwards.
//!
//! When the NATS cluster itself splits (2|1, say), a node on each side keeps its
//! connection: it hears its own heartbeats, stops hearing the other side's, and after the
//! node timeout reports their participants left (`node_lost`); the side with a JetStream
//! quorum also purges their presence records. When the split heals nothing reconnects, so
//! the reconnect path (`restore_after_reconnect`) never runs: both sides would keep the
//! others out of their views, and the bucket without their records, for good. So a node
//! remembers the nodes it reported lost; when one of them is heard again it repairs:
//!
//! - presence views, at once and over core NATS only: it publishes its roster of every room
//!   it has members in, asking the rooms' other nodes for theirs ([`crate::rooms`]'
//!   rosters), and again a heartbeat later for nodes heard since. The views converge as
//!   soon as the routes are back, whatever JetStream is doing (it elects its meta and
//!   stream leaders again after the heal, which took up to ~20 s on a loaded machine);
//! - calls: it tells its devices the calls they missed (apart, retried until every record
//!   is read);
//! - the presence store, in the background until JetStream answers: it records its
//!   participants again (they were likely purged over there), retries failed removals, and
//!   two heartbeats later reconciles with the store (putting back its own records a side
//!   purged late; views only for nodes that sent no roster).

use crate::context::NodeContext;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// Rounds of the call repair before it waits for the next return or reconnect.
const ROUNDS: u32 = 10;

/// Longest wait between two tries of the store repair while JetStream does not answer:
/// every second waited past its return is a second of a wrong presence bucket (a try
/// costs one store write per local participant, [`crate::rooms`] writes 32 at a time).
const STORE_RETRY_MAX: Duration = Duration::from_secs(1);

/// How long the store repair keeps trying (JetStream may take minutes to re-form after a
/// long split on a loaded machine); then it waits for the next return or reconnect.
const STORE_REPAIR_FOR: Duration = Duration::from_secs(300);

/// Nodes this node reported lost, whether a repair is scheduled, and the store repair.
#[derive(Default)]
pub(crate) struct Heal {
    lost: Mutex<HashSet<String>>,
    scheduled: AtomicBool,
    /// A store repair is running; asked again while it ran (it starts over); since when.
    store_running: AtomicBool,
    store_again: AtomicBool,
    store_since: Mutex<Option<Instant>>,
    /// Failed presence removals are being retried.
    removals_running: AtomicBool,
}

impl Heal {
    /// `node` was reported lost (its participants reaped); whether it was not already.
    pub(crate) fn lost(&self, node: &str) -> bool {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).insert(node.to_owned())
    }

    /// Whether a store repair (after a heal or a reconnect) is running.
    pub(crate) fn store_repair_running(&self) -> bool {
        self.store_running.load(Ordering::SeqCst)
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

async fn repair(weak: Weak<NodeContext>) {
    let since = Instant::now();
    let Some(node) = weak.upgrade() else { return };
    let heartbeat = node.config.node_heartbeat;
    // The views first, over core NATS: rosters asked and given.
    crate::rooms::publish_rosters(&node, true).await;
    repair_store(&node, since);
    drop(node);
    // Let the other returns of the same heal arrive, and give them rosters too.
    tokio::time::sleep(heartbeat).await;
    let Some(node) = weak.upgrade() else { return };
    node.heal.scheduled.store(false, Ordering::SeqCst);
    crate::rooms::publish_rosters(&node, true).await;
    // Calls apart from presence: a few reads, not to wait behind every presence record.
    node.runtime.spawn(repair_calls(weak.clone()));
}

/// Repair this node's part of the presence store (after a heal or a reconnect, views
/// repaired since `since` by rosters): retry failed removals and write the local records
/// again, tried at most [`STORE_RETRY_MAX`] apart until JetStream answers; two heartbeats
/// later reconcile with the store. One at a time: asked while one runs, it starts over.
pub(crate) fn repair_store(node: &Arc<NodeContext>, since: Instant) {
    *node.heal.store_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(since);
    node.heal.store_again.store(true, Ordering::SeqCst);
    if node.heal.store_running.swap(true, Ordering::SeqCst) {
        return;
    }
    node.runtime.spawn(store_loop(Arc::downgrade(node)));
}

async fn store_loop(weak: Weak<NodeContext>) {
    let until = Instant::now() + STORE_REPAIR_FOR;
    let mut backoff = Duration::from_millis(250);
    loop {
        let Some(node) = weak.upgrade() else { return };
        if Instant::now() > until {
            tracing::warn!("presence store repair given up (JetStream not back); the next heal or reconnect retries");
            node.heal.store_running.store(false, Ordering::SeqCst);
            return;
        }
        node.heal.store_again.store(false, Ordering::SeqCst);
        let heartbeat = node.config.node_heartbeat;
        let written = crate::rooms::republish_presence(&node).await;
        drop(node);
        if written {
            // The other side repairs too: give it a couple of heartbeats before reconciling.
            tokio::time::sleep(heartbeat * 2).await;
            let Some(node) = weak.upgrade() else { return };
            let since = node.heal.store_since.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or_else(Instant::now);
            let reconciled = crate::rooms::resync_presence(&node, since).await;
            node.metrics.presence_resyncs.inc();
            if reconciled && !node.heal.store_again.load(Ordering::SeqCst) {
                node.heal.store_running.store(false, Ordering::SeqCst);
                // Asked again between the check and the store: run once more.
                if node.heal.store_again.load(Ordering::SeqCst) && !node.heal.store_running.swap(true, Ordering::SeqCst)
                {
                    continue;
                }
                return;
            }
            if reconciled {
                continue; // asked again meanwhile: start over at once
            }
        }
        tracing::warn!(retry_in = ?backoff, "presence store repair incomplete (JetStream not back yet)");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(STORE_RETRY_MAX);
    }
}

/// Retry the presence removals that failed (a leave while JetStream did not answer) until
/// they are done, at most [`STORE_RETRY_MAX`] × 5 apart, for [`STORE_REPAIR_FOR`]: a
/// removal that failed after a store repair finished would otherwise stay a ghost record.
pub(crate) fn retry_removals(node: &Arc<NodeContext>) {
    if node.heal.removals_running.swap(true, Ordering::SeqCst) {
        return;
    }
    let weak = Arc::downgrade(node);
    node.runtime.spawn(async move {
        let until = Instant::now() + STORE_REPAIR_FOR;
        let mut backoff = Duration::from_millis(500);
        loop {
            tokio::time::sleep(backoff).await;
            let Some(node) = weak.upgrade() else { return };
            if crate::rooms::retry_removals(&node).await || Instant::now() > until {
                node.heal.removals_running.store(false, Ordering::SeqCst);
                // One pushed between the retry and the store: take it over.
                if node.heal.pending_removals_left(&node) && !node.heal.removals_running.swap(true, Ordering::SeqCst) {
                    continue;
                }
                return;
            }
            backoff = (backoff * 2).min(STORE_RETRY_MAX * 5);
        }
    });
}

impl Heal {
    fn pending_removals_left(&self, node: &NodeContext) -> bool {
        !node.pending_removals.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
}

/// Re-read the watched calls until every record could be read (bounded).
async fn repair_calls(weak: Weak<NodeContext>) {
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
