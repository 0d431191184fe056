//! A relay node: the edges' handle on it. Starts the node (its [`NodeContext`] and the
//! background tasks that drive rooms, calls, admin and liveness), drains it, and is how an
//! edge admits a connection and runs its session. The parts it drives take the context,
//! never the `Node`, so calls point one way: edge -> `Node` -> parts -> [`NodeContext`].

use crate::admission::{Refused, Ticket};
use crate::auth::Verifier;
use crate::bus::Bus;
use crate::config::RelayConfig;
use crate::context::NodeContext;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::transport::{Transport, TransportKind};
use futures_util::StreamExt;
use prost::Message as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use switchboard_protocol::pb::{bus_envelope, BusEnvelope, NodeHeartbeat};
use switchboard_protocol::subject::Subjects;
use switchboard_protocol::ErrorCode;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a draining node waits for the bus to take what it still buffers.
const FLUSH_ON_DRAIN: Duration = Duration::from_secs(3);

/// A running relay node. Cheap to share (`Arc<Node>`).
pub struct Node {
    ctx: Arc<NodeContext>,
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
        config.webhooks.validate().map_err(|e| NodeError::Config(format!("webhooks: {e}")))?;
        config.ice.validate().map_err(|e| NodeError::Config(format!("ICE servers: {e}")))?;
        let subjects = Subjects::new(&config.subject_prefix)
            .map_err(|e| NodeError::Config(format!("subject prefix {:?}: {e}", config.subject_prefix)))?;
        let node = Arc::new(NodeContext::new(config, verifier, bus, subjects));
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
        node.runtime.spawn(crate::rooms::audit_presence(Arc::downgrade(&node)));
        node.runtime.spawn(crate::calls::bounds::refresh_usage(Arc::downgrade(&node)));
        node.runtime.spawn(crate::calls::history::redrive(Arc::downgrade(&node)));
        node.runtime.spawn(crate::webhooks::run(Arc::downgrade(&node)));
        match crate::bans::load_bans(&node).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(bans = n, "bans in force loaded"),
            Err(e) => tracing::warn!(error = %e, "cannot load bans"),
        }
        if let Some(epochs) = node.bus.connection_epochs() {
            node.runtime.spawn(restore_after_reconnect(Arc::downgrade(&node), epochs));
        }
        tracing::info!(node = %node.config.node_id, bus = node.bus.kind(), "node started");
        let node = Arc::new(Self { ctx: node });
        node.ctx.metrics.pending_connections_limit.set(gauge_value(node.ctx.config.max_pending_connections));
        // The gauges show what `/readyz` answers at the moment of the scrape.
        let weak = Arc::downgrade(&node);
        node.ctx.metrics.set_state_source(move || {
            let node = weak.upgrade()?;
            Some(crate::metrics::NodeState {
                ready: node.is_ready(),
                draining: node.is_draining(),
                bus: node.ctx.bus.kind(),
                bus_connected: node.ctx.bus.is_connected(),
            })
        });
        Ok(node)
    }

    /// The state the node's parts share: what [`crate::admin`] and [`crate::calls`] take.
    pub fn context(&self) -> &Arc<NodeContext> {
        &self.ctx
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.ctx.config.node_id
    }

    /// The node's configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.ctx.config
    }

    /// The token verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.ctx.verifier
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.ctx.metrics
    }

    /// The bus.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.ctx.bus
    }

    /// Ready for new sessions: the bus is connected and the node is not draining.
    pub fn is_ready(&self) -> bool {
        self.ctx.bus.is_connected() && !self.is_draining()
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.ctx.is_draining()
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.ctx.session_count()
    }

    /// Number of rooms with local participants.
    pub fn room_count(&self) -> usize {
        self.ctx.rooms.len()
    }

    /// A watch that turns `true` when the node starts draining.
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.ctx.drain_signal()
    }

    /// Start draining: unready at once, sessions are told to move (`GoAway`). Then waits up
    /// to `deadline` for sessions to leave and closes the rest with `SHUTTING_DOWN`.
    pub async fn drain(&self, deadline: Duration) {
        if self.ctx.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!(sessions = self.session_count(), ?deadline, "draining");
        let _ = self.ctx.drain_tx.send(true);
        let end = Instant::now() + deadline;
        while self.session_count() > 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rest: Vec<Arc<Outbound>> =
            self.ctx.sessions.lock().unwrap_or_else(|e| e.into_inner()).values().map(|(_, q)| q.clone()).collect();
        for q in rest {
            q.close(ErrorCode::ShuttingDown, "node shutting down");
        }
        let end = Instant::now() + Duration::from_secs(2);
        while self.session_count() > 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The last sessions' leaves (and any event before them) reach the webhook store.
        crate::webhooks::stored(&self.ctx, FLUSH_ON_DRAIN).await;
        // Bounded: with NATS unreachable a flush would wait for its return, and the node
        // must still stop (the messages it could not hand over are lost either way).
        match tokio::time::timeout(FLUSH_ON_DRAIN, self.ctx.bus.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing the bus on drain failed"),
            Err(_) => tracing::warn!(limit = ?FLUSH_ON_DRAIN, "flushing the bus on drain timed out (bus unreachable)"),
        }
        tracing::info!("drained");
    }
}

/// A count as a gauge value (saturating: a cap beyond `i64::MAX` is as good as none).
fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Admit a connection as it arrives (see [`crate::admission`]): caps per address and the
/// budget of connections that have not authenticated, counted atomically.
pub fn admit(node: &Arc<Node>, transport: TransportKind, peer: Option<SocketAddr>) -> Result<Ticket, Refused> {
    crate::admission::admit(&node.ctx, transport, peer)
}

/// Run one admitted connection's session to its end (see [`crate::session::run`]).
pub async fn run_session<T: Transport>(node: Arc<Node>, transport: T, ticket: Ticket) {
    crate::session::run(node.ctx.clone(), transport, ticket).await
}

async fn heartbeat_listener(node: Weak<NodeContext>, mut sub: crate::bus::Subscription) {
    while let Some(msg) = sub.next().await {
        let Some(node) = node.upgrade() else { return };
        match BusEnvelope::decode(msg.payload) {
            Ok(BusEnvelope { kind: Some(bus_envelope::Kind::Heartbeat(hb)), .. }) => {
                if node.saw_node(&hb.node) {
                    crate::heal::schedule(&node);
                    crate::webhooks::node_returned(&node, &hb.node);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "bad heartbeat envelope"),
        }
    }
}

async fn heartbeat_and_reap(node: Weak<NodeContext>) {
    let period = match node.upgrade() {
        Some(n) => n.config.node_heartbeat,
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The chores of a tick wait on JetStream (removing reaped records, re-reading calls);
    // they run apart, one tick's at a time, so the heartbeat itself never waits behind
    // them: a node whose heartbeats stalled while JetStream re-formed after a heal was
    // reported lost by the others, its participants leaving and coming back.
    let busy = Arc::new(AtomicBool::new(false));
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
        if busy.swap(true, Ordering::SeqCst) {
            continue;
        }
        let busy = busy.clone();
        node.runtime.clone().spawn(async move {
            crate::rooms::reap_dead_nodes(&node).await;
            crate::calls::resync::sweep(&node).await;
            crate::rooms::flush_room_stats(&node);
            crate::rooms::layers_tick(&node).await;
            busy.store(false, Ordering::SeqCst);
        });
    }
}

/// After the bus reconnects (e.g. NATS restarted and lost its in-memory presence bucket):
/// tell the other nodes this node's rosters (views converge over core NATS), re-create the
/// stores, repair this node's part of the presence store in the background
/// ([`crate::heal::repair_store`]: retried until JetStream answers), re-read calls and
/// re-follow room histories.
async fn restore_after_reconnect(weak: Weak<NodeContext>, mut epochs: watch::Receiver<u64>) {
    epochs.borrow_and_update();
    while epochs.changed().await.is_ok() {
        let Some(node) = weak.upgrade() else { return };
        tracing::info!("bus reconnected: restoring presence");
        let since = tokio::time::Instant::now();
        node.forgive_silence();
        // Views first, over core NATS (the store may take a while to answer).
        crate::rooms::publish_rosters(&node, true).await;
        crate::heal::repair_store(&node, since);
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
        crate::rooms::refollow_history(&node).await;
        node.metrics.presence_restores.inc();
        // Nodes that reconnected after this one's first rosters get them now.
        let wait = node.config.node_heartbeat;
        drop(node);
        tokio::time::sleep(wait).await;
        let Some(node) = weak.upgrade() else { return };
        crate::rooms::publish_rosters(&node, true).await;
    }
}
