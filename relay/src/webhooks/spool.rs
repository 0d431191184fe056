//! The spool: from the node's bounded queue to the delivery store, turning room joins and
//! leaves into `room.started` / `room.finished` on the way (off the relay path: that takes
//! a presence read and a compare-and-set).

use super::delivery::Pending;
use super::worker::Sink;
use super::{counted, facts, rooms, Item};
use crate::bus::{Bucket, BusError};
use crate::context::NodeContext;
use crate::metrics::ReasonLabel;
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

/// Items handled at once (each may wait on the bus).
const CONCURRENCY: usize = 16;
/// How often a node refreshes the keys of the running rooms it hosts (well within
/// [`crate::bus::ROOMS_MAX_AGE`]).
const REFRESH: Duration = Duration::from_secs(3600);

/// Store every queued item's events while the node lives.
pub(super) async fn run(node: Weak<NodeContext>, rx: mpsc::Receiver<Item>, sink: Sink) {
    let items = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let sink = &sink;
    items
        .for_each_concurrent(CONCURRENCY, |item| {
            let node = node.clone();
            async move {
                let Some(node) = node.upgrade() else { return };
                handle(&node, sink, item).await;
                // Counted until stored, so a draining node can wait for it (`stored`).
                node.metrics.webhook_queue.dec();
            }
        })
        .await;
}

/// Store one item's events.
async fn handle(node: &Arc<NodeContext>, sink: &Sink, item: Item) {
    if let Item::NodeLost(lost) = &item {
        if let Err(e) = super::lost::sweep(node, sink, lost).await {
            node.metrics.webhook_dropped.get_or_create(&ReasonLabel { reason: "store_failed" }).inc();
            tracing::warn!(node = %lost, error = %e, "cannot report the rooms a lost node left behind");
        }
        return;
    }
    for event in events(node, item).await {
        store(node, sink, event).await;
    }
}

/// The events an item stands for.
async fn events(node: &NodeContext, item: Item) -> Vec<super::Event> {
    let facts = facts(node);
    let (room, found) = match item {
        Item::Event(e) => return vec![e],
        Item::NodeLost(_) => return Vec::new(), // handled by `run`
        Item::RoomJoined(room) => {
            let found = rooms::started(node, &facts, &room).await.map(|e| e.into_iter().collect());
            (room, found)
        }
        Item::RoomLeft(room) => {
            let found = rooms::finished(node, &facts, &room).await;
            (room, found)
        }
    };
    match found {
        Ok(events) => events.into_iter().filter(|e| node.webhooks.wants(e.kind)).collect(),
        Err(e) => {
            node.metrics.webhook_dropped.get_or_create(&ReasonLabel { reason: "store_failed" }).inc();
            tracing::warn!(%room, error = %e, "cannot tell whether a room started or finished; its event is lost");
            Vec::new()
        }
    }
}

/// Store `event` once per endpoint that wants it.
pub(super) async fn store(node: &Arc<NodeContext>, sink: &Sink, event: super::Event) {
    let body = event.to_json().to_string();
    counted(node, event.kind);
    for endpoint in node.webhooks.config.endpoints.iter().filter(|e| e.wants(event.kind)) {
        let pending = Pending {
            url: endpoint.url.clone(),
            id: event.id.clone(),
            kind: event.kind.to_owned(),
            created_at_ms: event.created_at_ms,
            body: body.clone(),
        };
        match sink {
            Sink::Local(local) => local.deliver(node, pending),
            Sink::Cluster => {
                let value = match serde_json::to_vec(&pending) {
                    Ok(v) => Bytes::from(v),
                    Err(_) => continue, // plain strings and numbers: cannot fail
                };
                match node.bus.kv_create(Bucket::Webhooks, &pending.key(), value).await {
                    // A conflict: another node reported the same fact first.
                    Ok(_) | Err(BusError::Conflict(_)) => {}
                    Err(e) => {
                        node.metrics.webhook_dropped.get_or_create(&ReasonLabel { reason: "store_failed" }).inc();
                        tracing::warn!(id = %event.id, kind = event.kind, error = %e, "cannot store a webhook event; dropped");
                    }
                }
            }
        }
    }
}

/// Refresh the keys of the running rooms this node hosts, so only rooms nobody hosts any
/// more (their every participant was on a node that died) expire from the store.
pub(super) async fn refresh_rooms(node: Weak<NodeContext>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        let Some(node) = node.upgrade() else { return };
        if !(node.webhooks.wants("room.started") || node.webhooks.wants("room.finished")) {
            return;
        }
        for room in node.rooms.ids() {
            if let Ok(Some(entry)) = node.bus.kv_get(Bucket::Rooms, &room).await {
                // A lost race means someone else just wrote it: fresh already.
                let _ = node.bus.kv_update(Bucket::Rooms, &room, entry.value, entry.revision).await;
            }
        }
    }
}
