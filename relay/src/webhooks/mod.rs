//! Webhooks: signed HTTP POSTs to an app's backend when rooms start and finish,
//! participants join and leave, calls are created, answered and end, and operators ban or
//! kick users.
//!
//! ```text
//! rooms, calls, admin --emit--> bounded queue (per node) --spool--> delivery store
//!   (NATS: the `<prefix>_webhooks` bucket, one key per endpoint and event)
//!   --work queue, one node per event--> signed POST, retried with backoff until 2xx or
//!   `retry_for` --> key removed
//! ```
//!
//! Emitting never waits: an event that does not fit in the node's queue is dropped and
//! counted (`webhook_dropped{reason="queue_full"}`), so a slow or dead endpoint costs the
//! relay nothing but that queue. Each stored event is delivered by one node at a time (the
//! bucket's changes are a work queue shared by every node, [`crate::bus::Bus::kv_work`]); a
//! node that dies holding one hands it to another after the queue's ack wait. Delivery is
//! at least once: receivers dedupe by the event id (the same fact reported by two nodes has
//! one id, see [`event`]). On the embedded bus the store is this node's memory.
//!
//! Where each part lives: [`config`] (endpoints, filters, bounds), [`event`] (types,
//! payloads, ids), [`signature`] (the `Webhook-Signature` header), `rooms` (when a room
//! starts and finishes, cluster-wide), `lost` (rooms a dead node leaves with nobody to
//! report them), `delivery` (one signed POST and its retry policy),
//! `spool` (queue to store) and `worker` (store to endpoints).

pub mod config;
mod delivery;
pub mod event;
mod lost;
mod rooms;
pub mod signature;
mod spool;
mod worker;

pub use config::{ConfigError, Endpoint, WebhookConfig};

use crate::context::NodeContext;
use crate::metrics::{KindLabel, ReasonLabel};
use event::{Event, Facts};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use switchboard_protocol::pb::{Call, Participant};
use tokio::sync::mpsc;

/// Something the spool turns into events.
pub(crate) enum Item {
    /// A ready event.
    Event(Event),
    /// A session joined a room where it found nobody: the room may have started.
    RoomJoined(String),
    /// The last local member left a room: the room may have finished.
    RoomLeft(String),
    /// A node stopped heartbeating: report the rooms nobody else hosts.
    NodeLost(String),
}

/// The node's webhook state: the configuration and the bounded queue of events.
pub(crate) struct Webhooks {
    config: Arc<WebhookConfig>,
    tx: Option<mpsc::Sender<Item>>,
    rx: Mutex<Option<mpsc::Receiver<Item>>>,
    /// Unix ms of the last "queue full" warning (logged once a second at most).
    warned_ms: AtomicU64,
}

impl Webhooks {
    pub(crate) fn new(config: WebhookConfig) -> Self {
        let (tx, rx) = if config.enabled() {
            let (tx, rx) = mpsc::channel(config.queue.max(1));
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        Self { config: Arc::new(config), tx, rx: Mutex::new(rx), warned_ms: AtomicU64::new(0) }
    }

    /// Whether any endpoint receives `kind`.
    pub(crate) fn wants(&self, kind: &str) -> bool {
        self.tx.is_some() && self.config.wants(kind)
    }

    fn push(&self, node: &NodeContext, item: Item) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(item) {
            Ok(()) => {
                node.metrics.webhook_queue.inc();
            }
            Err(_) => {
                node.metrics.webhook_dropped.get_or_create(&ReasonLabel { reason: "queue_full" }).inc();
                let now = now_ms();
                let last = self.warned_ms.load(Ordering::Relaxed);
                if now.saturating_sub(last) >= 1000
                    && self.warned_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
                {
                    tracing::warn!(
                        queue = self.config.queue,
                        "webhook queue full: events dropped (the delivery store is slow or away)"
                    );
                }
            }
        }
    }

    fn emit(&self, node: &NodeContext, event: Event) {
        self.push(node, Item::Event(event));
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn facts(node: &NodeContext) -> Facts<'_> {
    Facts { node: &node.config.node_id, now_ms: now_ms() }
}

/// A local session joined `room`; `alone`: it found nobody else there.
pub(crate) fn participant_joined(node: &NodeContext, room: &str, p: &Participant, alone: bool) {
    let hooks = &node.webhooks;
    if alone && (hooks.wants("room.started") || hooks.wants("room.finished")) {
        hooks.push(node, Item::RoomJoined(room.to_owned()));
    }
    if hooks.wants("participant.joined") {
        hooks.emit(node, facts(node).participant_joined(room, p));
    }
}

/// A participant left `room` (`last_local`: no local member is left in it).
pub(crate) fn participant_left(node: &NodeContext, room: &str, p: &Participant, reason: &str, last_local: bool) {
    let hooks = &node.webhooks;
    if hooks.wants("participant.left") {
        hooks.emit(node, facts(node).participant_left(room, p, reason));
    }
    if last_local && (hooks.wants("room.started") || hooks.wants("room.finished")) {
        hooks.push(node, Item::RoomLeft(room.to_owned()));
    }
}

/// `lost` stopped heartbeating (reported once per node that notices).
pub(crate) fn node_lost(node: &NodeContext, lost: &str) {
    let hooks = &node.webhooks;
    if hooks.wants("participant.left") || hooks.wants("room.finished") {
        hooks.push(node, Item::NodeLost(lost.to_owned()));
    }
}

/// `node` was reported lost and is heard again (a partition healed): its next loss is a
/// new one to report.
pub(crate) fn node_returned(node: &Arc<NodeContext>, returned: &str) {
    if node.webhooks.tx.is_some() {
        let (node, returned) = (node.clone(), returned.to_owned());
        node.runtime.clone().spawn(async move { lost::forget(&node, &returned).await });
    }
}

/// A call transition this node won: `call.created`, `call.answered` or `call.ended`.
pub(crate) fn call(node: &NodeContext, kind: &'static str, call: &Call) {
    if node.webhooks.wants(kind) {
        node.webhooks.emit(node, facts(node).call(kind, call));
    }
}

/// An operator kicked a user's sessions (or one session), from a room or the node; with a
/// ban until `ban_until_ms`.
pub(crate) fn kicked(node: &NodeContext, user: &str, session: &str, room: &str, reason: &str, ban_until_ms: u64) {
    let hooks = &node.webhooks;
    if ban_until_ms > 0 && !user.is_empty() && hooks.wants("user.banned") {
        hooks.emit(node, facts(node).user_banned(user, ban_until_ms, reason));
    }
    if hooks.wants("user.kicked") {
        hooks.emit(node, facts(node).user_kicked(user, session, room, reason));
    }
}

/// Count an event stored for delivery.
fn counted(node: &NodeContext, kind: &'static str) {
    node.metrics.webhook_events.get_or_create(&KindLabel { kind }).inc();
}

/// Wait (at most `limit`) until every event this node queued is stored for delivery: a
/// draining node's last sessions' leaves are not lost with it.
pub(crate) async fn stored(node: &NodeContext, limit: std::time::Duration) {
    if node.webhooks.tx.is_none() {
        return;
    }
    let end = tokio::time::Instant::now() + limit;
    while node.metrics.webhook_queue.get() > 0 && tokio::time::Instant::now() < end {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Run the node's webhook delivery (spool and worker) while the node lives; nothing when no
/// endpoint is configured.
pub(crate) async fn run(node: Weak<NodeContext>) {
    let Some(strong) = node.upgrade() else { return };
    let Some(rx) = strong.webhooks.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
    let config = strong.webhooks.config.clone();
    let client = match delivery::client(&config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook HTTP client: webhooks are off");
            return;
        }
    };
    tracing::info!(endpoints = config.endpoints.len(), "webhooks on");
    let sink = worker::start(&strong, client).await;
    drop(strong);
    let refresh = tokio::spawn(spool::refresh_rooms(node.clone()));
    spool::run(node, rx, sink).await;
    refresh.abort();
}
