//! A relay node: configuration, authentication, the bus, the room registry, node liveness
//! and drain state. Transport adapters hand connections to [`crate::session::run`].

use crate::auth::Verifier;
use crate::bus::Bus;
use crate::config::RelayConfig;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::rooms::Rooms;
use futures_util::StreamExt;
use prost::Message as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_protocol::pb::{bus_envelope, BusEnvelope, NodeHeartbeat};
use switchboard_protocol::subject::Subjects;
use switchboard_protocol::{encode, ErrorCode};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a draining node waits for the bus to take what it still buffers.
const FLUSH_ON_DRAIN: Duration = Duration::from_secs(3);

/// A running relay node. Cheap to share (`Arc<Node>`).
pub struct Node {
    pub(crate) config: RelayConfig,
    pub(crate) verifier: Verifier,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) metrics: Metrics,
    pub(crate) subjects: Subjects,
    pub(crate) rooms: Rooms,
    pub(crate) runtime: tokio::runtime::Handle,
    /// Live sessions of this node: id -> (user, outbound queue).
    sessions: Mutex<HashMap<String, (String, Arc<Outbound>)>>,
    /// Other nodes' last heartbeat.
    pub(crate) node_seen: Mutex<HashMap<String, Instant>>,
    draining: AtomicBool,
    drain_tx: watch::Sender<bool>,
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
    /// Nodes reported lost, to repair presence and calls when they are heard again.
    pub(crate) heal: crate::heal::Heal,
    /// Calls local devices know of, re-read after a heal.
    pub(crate) watched_calls: crate::calls::resync::WatchedCalls,
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Bad configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
}

impl Node {
    /// Start a node on the current tokio runtime: subscribes to node heartbeats and starts
    /// the heartbeat and presence-reaper tasks.
    pub async fn start(config: RelayConfig, verifier: Verifier, bus: Arc<dyn Bus>) -> Result<Arc<Self>, NodeError> {
        switchboard_protocol::subject::validate_id(&config.node_id)
            .map_err(|e| NodeError::Config(format!("node id {:?}: {e}", config.node_id)))?;
        let subjects = Subjects::new(&config.subject_prefix)
            .map_err(|e| NodeError::Config(format!("subject prefix {:?}: {e}", config.subject_prefix)))?;
        let (drain_tx, _) = watch::channel(false);
        let call_bounds = crate::calls::bounds::CallBounds::new(config.call_invite_rate);
        let node = Arc::new(Self {
            config,
            verifier,
            bus,
            metrics: Metrics::new(),
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
            ring_timers: Mutex::default(),
            call_bounds,
            heal: Default::default(),
            watched_calls: Default::default(),
        });
        let heartbeats = node.bus.subscribe(node.subjects.all_heartbeats()).await?;
        node.runtime.spawn(heartbeat_listener(Arc::downgrade(&node), heartbeats));
        let admin = node.bus.subscribe(node.subjects.admin()).await?;
        node.runtime.spawn(crate::admin::listen(Arc::downgrade(&node), admin));
        let calls = node
            .bus
            .queue_subscribe(node.subjects.call_requests(), crate::calls::service::QUEUE_GROUP.to_owned())
            .await?;
        node.runtime.spawn(crate::calls::service::serve(Arc::downgrade(&node), calls));
        node.runtime.spawn(heartbeat_and_reap(Arc::downgrade(&node)));
        node.runtime.spawn(crate::calls::bounds::refresh_usage(Arc::downgrade(&node)));
        match crate::bans::load_bans(&node).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(bans = n, "bans in force loaded"),
            Err(e) => tracing::warn!(error = %e, "cannot load bans"),
        }
        if let Some(epochs) = node.bus.connection_epochs() {
            node.runtime.spawn(restore_after_reconnect(Arc::downgrade(&node), epochs));
        }
        tracing::info!(node = %node.config.node_id, bus = node.bus.kind(), "node started");
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.config.node_id
    }

    /// The node's configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// The token verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The bus.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// Ready for new sessions: the bus is connected and the node is not draining.
    pub fn is_ready(&self) -> bool {
        self.bus.is_connected() && !self.is_draining()
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Number of rooms with local participants.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// A watch that turns `true` when the node starts draining.
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain_tx.subscribe()
    }

    /// Start draining: unready at once, sessions are told to move (`GoAway`). Then waits up
    /// to `deadline` for sessions to leave and closes the rest with `SHUTTING_DOWN`.
    pub async fn drain(&self, deadline: Duration) {
        if self.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!(sessions = self.session_count(), ?deadline, "draining");
        let _ = self.drain_tx.send(true);
        let end = Instant::now() + deadline;
        while self.session_count() > 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rest: Vec<Arc<Outbound>> =
            self.sessions.lock().unwrap_or_else(|e| e.into_inner()).values().map(|(_, q)| q.clone()).collect();
        for q in rest {
            q.close(ErrorCode::ShuttingDown, "node shutting down");
        }
        let end = Instant::now() + Duration::from_secs(2);
        while self.session_count() > 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Bounded: with NATS unreachable a flush would wait for its return, and the node
        // must still stop (the messages it could not hand over are lost either way).
        match tokio::time::timeout(FLUSH_ON_DRAIN, self.bus.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing the bus on drain failed"),
            Err(_) => tracing::warn!(limit = ?FLUSH_ON_DRAIN, "flushing the bus on drain timed out (bus unreachable)"),
        }
        tracing::info!("drained");
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

async fn heartbeat_listener(node: std::sync::Weak<Node>, mut sub: crate::bus::Subscription) {
    while let Some(msg) = sub.next().await {
        let Some(node) = node.upgrade() else { return };
        match BusEnvelope::decode(msg.payload) {
            Ok(BusEnvelope { kind: Some(bus_envelope::Kind::Heartbeat(hb)), .. }) => {
                if node.saw_node(&hb.node) {
                    crate::heal::schedule(&node);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "bad heartbeat envelope"),
        }
    }
}

async fn heartbeat_and_reap(node: std::sync::Weak<Node>) {
    let period = match node.upgrade() {
        Some(n) => n.config.node_heartbeat,
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        let hb = NodeHeartbeat {
            node: node.config.node_id.clone(),
            sessions: node.session_count() as u64,
            draining: node.is_draining(),
        };
        let subject = node.subjects.node_heartbeat(&node.config.node_id);
        let _ = node.publish(subject, bus_envelope::Kind::Heartbeat(hb)).await;
        crate::rooms::reap_dead_nodes(&node).await;
        crate::calls::resync::sweep(&node).await;
        crate::rooms::flush_room_stats(&node);
    }
}

/// After the bus reconnects (e.g. NATS restarted and lost its in-memory presence bucket),
/// re-create the stores, re-record this node's participants and re-follow room histories.
async fn restore_after_reconnect(weak: std::sync::Weak<Node>, mut epochs: watch::Receiver<u64>) {
    epochs.borrow_and_update();
    while epochs.changed().await.is_ok() {
        let Some(node) = weak.upgrade() else { return };
        tracing::info!("bus reconnected: restoring presence");
        node.forgive_silence();
        let mut backoff = Duration::from_millis(100);
        loop {
            match node.bus.ensure_stores().await {
                Ok(()) => break,
                Err(e) if backoff < Duration::from_secs(10) => {
                    tracing::warn!(error = %e, "presence store not ready yet");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot restore the presence store");
                    break;
                }
            }
        }
        crate::calls::resync::refresh(&node).await;
        crate::rooms::republish_presence(&node).await;
        crate::rooms::refollow_history(&node).await;
        node.metrics.presence_restores.inc();
        // Give the other nodes a couple of heartbeats to restore their records too, then
        // reconcile the views with the store (leaves and joins lost during the outage).
        let wait = node.config.node_heartbeat * 2;
        drop(node);
        tokio::time::sleep(wait).await;
        let Some(node) = weak.upgrade() else { return };
        crate::rooms::resync_presence(&node).await;
        node.metrics.presence_resyncs.inc();
    }
}
