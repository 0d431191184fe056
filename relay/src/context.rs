//! The state a node's parts share, and the primitives on it (the session registry,
//! publishing an envelope, the drain flag).
//!
//! Rooms, calls, admin, admission, bans and sessions take a [`NodeContext`]; none of them
//! names [`crate::Node`], which owns the context, starts the background tasks that drive
//! those parts and is the edges' handle. Node liveness (other nodes' heartbeats) is in
//! [`crate::liveness`].

use crate::auth::Verifier;
use crate::bus::Bus;
use crate::config::RelayConfig;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::rooms::Rooms;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use switchboard_protocol::encode;
use switchboard_protocol::pb::{bus_envelope, BusEnvelope};
use switchboard_protocol::subject::Subjects;
use tokio::sync::watch;
use tokio::time::Instant;

/// What a node's parts share: configuration, the bus, metrics, and each part's state.
/// Obtained from [`crate::Node::context`]; its contents are internal.
pub struct NodeContext {
    pub(crate) config: RelayConfig,
    pub(crate) verifier: Verifier,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) metrics: Metrics,
    pub(crate) subjects: Subjects,
    pub(crate) rooms: Rooms,
    pub(crate) runtime: tokio::runtime::Handle,
    /// Live sessions of this node: id -> (user, outbound queue).
    pub(crate) sessions: Mutex<HashMap<String, (String, Arc<Outbound>)>>,
    /// Other nodes' last heartbeat.
    pub(crate) node_seen: Mutex<HashMap<String, Instant>>,
    pub(crate) draining: AtomicBool,
    pub(crate) drain_tx: watch::Sender<bool>,
    /// User inbox subscriptions of this node.
    pub(crate) inboxes: crate::calls::inbox::Inboxes,
    /// Presence records whose removal failed (bus away), retried after a reconnect.
    pub(crate) pending_removals: Mutex<Vec<(String, String)>>,
    /// Connection caps and budgets.
    pub(crate) admission: crate::admission::Admission,
    /// Operator bans.
    pub(crate) bans: crate::bans::Bans,
    /// Calls whose ring timeout this node has scheduled.
    pub(crate) ring_timers: Mutex<std::collections::HashSet<String>>,
    /// Invitation rate per caller and history record limits.
    pub(crate) call_bounds: crate::calls::bounds::CallBounds,
    /// Seats this node's sessions hold in capped rooms.
    pub(crate) seats: crate::rooms_cap::Seats,
    /// Nodes reported lost, to repair presence and calls when they are heard again.
    pub(crate) heal: crate::heal::Heal,
    /// Calls local devices know of, re-read after a heal.
    pub(crate) watched_calls: crate::calls::resync::WatchedCalls,
    /// Backlogged sessions and rooms: overloaded node or slow clients.
    pub(crate) load: Arc<crate::overload::Load>,
    /// Admission rate of new sessions.
    pub(crate) session_rate: crate::session_rate::SessionRate,
    /// Webhook events waiting to be stored for delivery.
    pub(crate) webhooks: crate::webhooks::Webhooks,
}

impl NodeContext {
    /// A context with empty state, on the current tokio runtime.
    pub(crate) fn new(config: RelayConfig, verifier: Verifier, bus: Arc<dyn Bus>, subjects: Subjects) -> Self {
        let (drain_tx, _) = watch::channel(false);
        let call_bounds = crate::calls::bounds::CallBounds::new(config.call_invite_rate);
        let session_rate = crate::session_rate::SessionRate::new(config.session_rate);
        let webhooks = crate::webhooks::Webhooks::new(config.webhooks.clone());
        let metrics = Metrics::new();
        let load =
            Arc::new(crate::overload::Load::new(metrics.node_overloaded.clone(), metrics.overload_excused.clone()));
        Self {
            config,
            verifier,
            bus,
            session_rate,
            webhooks,
            metrics,
            load,
            subjects,
            rooms: Rooms::default(),
            runtime: tokio::runtime::Handle::current(),
            sessions: Mutex::new(HashMap::new()),
            node_seen: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            drain_tx,
            inboxes: Default::default(),
            admission: Default::default(),
            bans: Default::default(),
            pending_removals: Mutex::default(),
            seats: Default::default(),
            ring_timers: Mutex::default(),
            call_bounds,
            heal: Default::default(),
            watched_calls: Default::default(),
        }
    }

    /// Whether the node is draining.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// A watch that turns `true` when the node starts draining.
    pub(crate) fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain_tx.subscribe()
    }

    /// Number of live sessions.
    pub(crate) fn session_count(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(crate) fn register_session(&self, id: &str, user: &str, q: Arc<Outbound>) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned(), (user.to_owned(), q));
    }

    /// Local sessions matching `session` if non-empty, else every session of `user`.
    pub(crate) fn local_sessions(&self, user: &str, session: &str) -> Vec<(String, Arc<Outbound>)> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if !session.is_empty() {
            return sessions.get(session).map(|(_, q)| (session.to_owned(), q.clone())).into_iter().collect();
        }
        sessions.iter().filter(|(_, (u, _))| u == user).map(|(id, (_, q))| (id.clone(), q.clone())).collect()
    }

    pub(crate) fn unregister_session(&self, id: &str) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// Publish an envelope, counting failures.
    pub(crate) async fn publish(&self, subject: String, kind: bus_envelope::Kind) -> Result<(), crate::bus::BusError> {
        let env = BusEnvelope { origin_node: self.config.node_id.clone(), kind: Some(kind) };
        let started = Instant::now();
        let r = self.bus.publish(subject, encode(&env)).await;
        self.metrics.bus_publish_seconds.observe(started.elapsed().as_secs_f64());
        if r.is_err() {
            self.metrics.bus_publish_errors.inc();
        }
        r
    }
}
