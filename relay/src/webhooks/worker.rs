//! Delivery workers: from the store to the endpoints.
//!
//! On NATS, every node follows the `<prefix>_webhooks` bucket's changes as a shared work
//! queue ([`crate::bus::Bus::kv_work`]): each stored event goes to one node, which POSTs it
//! and removes the key on success (or after `retry_for`), or hands it back with a backoff.
//! On the embedded bus, events are delivered from this node's memory by one task each,
//! as many at once as the queue holds.

use super::config::WebhookConfig;
use super::delivery::{attempt, Outcome, Pending};
use crate::bus::{Bucket, BusError, KvChange};
use crate::context::NodeContext;
use crate::metrics::ReasonLabel;
use futures_util::StreamExt;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Semaphore;

/// The shared work queue's name.
const QUEUE: &str = "deliver";
/// Wait before following the work queue again after it failed.
const REFOLLOW: Duration = Duration::from_secs(2);

/// Where the spool puts events for delivery.
pub(super) enum Sink {
    /// The cluster's store: one key per endpoint and event.
    Cluster,
    /// This node's memory.
    Local(LocalDelivery),
}

/// Start delivering: follow the cluster's work queue, or deliver from memory where the bus
/// has none (the embedded bus).
pub(super) async fn start(node: &Arc<NodeContext>, client: reqwest::Client) -> Sink {
    let config = node.webhooks.config.clone();
    loop {
        match node.bus.kv_work(Bucket::Webhooks, QUEUE).await {
            Ok(Some(work)) => {
                node.runtime.spawn(follow(Arc::downgrade(node), client, config, Some(work)));
                return Sink::Cluster;
            }
            Ok(None) => {
                let permits = Arc::new(Semaphore::new(config.queue.max(1)));
                return Sink::Local(LocalDelivery { node: Arc::downgrade(node), client, config, permits });
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhook delivery queue not available yet; retrying");
                tokio::time::sleep(REFOLLOW).await;
            }
        }
    }
}

/// Take stored events from the cluster's work queue and deliver them, `concurrency` at once,
/// while the node lives.
async fn follow(
    node: Weak<NodeContext>,
    client: reqwest::Client,
    config: Arc<WebhookConfig>,
    mut work: Option<crate::bus::KvWork>,
) {
    loop {
        let changes = match work.take() {
            Some(w) => w,
            None => {
                let Some(strong) = node.upgrade() else { return };
                let next = strong.bus.kv_work(Bucket::Webhooks, QUEUE).await;
                drop(strong);
                match next {
                    Ok(Some(w)) => w,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "following the webhook queue failed");
                        tokio::time::sleep(REFOLLOW).await;
                        continue;
                    }
                }
            }
        };
        changes
            .take_while(|c| std::future::ready(c.is_ok()))
            .filter_map(|c| std::future::ready(c.ok()))
            .for_each_concurrent(config.concurrency, |change| {
                let (node, client, config) = (node.clone(), client.clone(), config.clone());
                async move {
                    if let Some(node) = node.upgrade() {
                        handle(&node, &client, &config, change).await;
                    }
                }
            })
            .await;
        if node.strong_count() == 0 {
            return;
        }
        tracing::debug!("the webhook queue ended; following it again");
        tokio::time::sleep(REFOLLOW).await;
    }
}

/// One stored change: deliver it if it is a pending event still stored at that revision.
async fn handle(node: &Arc<NodeContext>, client: &reqwest::Client, config: &WebhookConfig, change: KvChange) {
    let Some(value) = &change.value else { return answer(change, None).await };
    let pending: Pending = match serde_json::from_slice(value) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(key = %change.key, error = %e, "undecodable webhook record; dropped");
            node.bus.kv_purge(Bucket::Webhooks, &change.key).await.ok();
            return answer(change, None).await;
        }
    };
    // Delivered (and removed) meanwhile by another node whose answer came late.
    match node.bus.kv_get(Bucket::Webhooks, &change.key).await {
        Ok(Some(entry)) if entry.revision == change.revision => {}
        Ok(_) => return answer(change, None).await,
        Err(e) => {
            tracing::debug!(error = %e, "reading a webhook record failed; retrying");
            return answer(change, Some(REFOLLOW)).await;
        }
    }
    match attempt(client, config, &node.metrics, &pending).await {
        Outcome::Delivered | Outcome::Expired => {
            if let Err(e) = node.bus.kv_purge(Bucket::Webhooks, &change.key).await {
                // The record stays and is sent again later: at least once allows that.
                tracing::debug!(key = %change.key, error = %e, "removing a delivered webhook failed");
            }
            answer(change, None).await;
        }
        Outcome::Retry(delay) => answer(change, Some(delay)).await,
    }
}

async fn answer(change: KvChange, again: Option<Duration>) {
    let r: Result<(), BusError> = match again {
        None => change.done().await,
        Some(delay) => change.again_in(delay).await,
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "answering the webhook queue failed (the event comes again)");
    }
}

/// Delivery from this node's memory (embedded bus), bounded by the queue size.
pub(super) struct LocalDelivery {
    node: Weak<NodeContext>,
    client: reqwest::Client,
    config: Arc<WebhookConfig>,
    permits: Arc<Semaphore>,
}

impl LocalDelivery {
    /// Deliver `pending` in the background, retrying as the policy says; dropped (counted)
    /// when as many deliveries as the queue holds are already under way.
    pub(super) fn deliver(&self, node: &NodeContext, pending: Pending) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            node.metrics.webhook_dropped.get_or_create(&ReasonLabel { reason: "queue_full" }).inc();
            return;
        };
        let (weak, client, config) = (self.node.clone(), self.client.clone(), self.config.clone());
        node.runtime.spawn(async move {
            let _permit = permit;
            loop {
                let Some(node) = weak.upgrade() else { return };
                match attempt(&client, &config, &node.metrics, &pending).await {
                    Outcome::Delivered | Outcome::Expired => return,
                    Outcome::Retry(delay) => {
                        drop(node);
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        });
    }
}
