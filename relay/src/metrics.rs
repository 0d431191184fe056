//! Prometheus metrics of a node (text exposition via [`Metrics::encode`]).

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;
use switchboard_protocol::ErrorCode;

/// Label: the transport a session uses.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// `websocket` or `webtransport`.
    pub transport: &'static str,
}

/// Label: a frame kind (`publish`, `message`, `media`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The frame kind.
    pub kind: &'static str,
}

/// Label: an outbound queue class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    /// `control`, `signal`, `data` or `media`.
    pub class: &'static str,
}

/// Label: an error code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The protobuf name of the error code, e.g. `ERROR_CODE_TOKEN_EXPIRED`.
    pub code: &'static str,
}

/// Label: why something was refused, skipped or ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason, e.g. `address_pending` or `rate_limited`.
    pub reason: &'static str,
}

/// Labels: a WebTransport media lane and a direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabel {
    /// `datagram` or `stream`.
    pub lane: &'static str,
    /// `in` (from clients) or `out` (to clients).
    pub direction: &'static str,
}

/// Label: a simulcast layer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LayerLabel {
    /// `0`, `1`, `2`, or `none` (media that is not layered: audio, data).
    pub layer: &'static str,
}

impl LayerLabel {
    /// The label of `layer` (`None`: not layered).
    pub fn of(layer: Option<u32>) -> Self {
        Self { layer: layer.and_then(|l| ["0", "1", "2"].get(l as usize).copied()).unwrap_or("none") }
    }
}

/// Label: a direction of change.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `up` or `down`.
    pub direction: &'static str,
}

/// Label: a bus kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BusLabel {
    /// `nats` or `local` (the embedded in-process bus).
    pub bus: &'static str,
}

/// Labels: a TLS listener and where its certificate comes from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabel {
    /// `http` (HTTPS and WSS) or `webtransport`.
    pub listener: &'static str,
    /// `file` (configured, reloaded when it changes) or `generated` (self-signed at start,
    /// never renewed: valid 13 days).
    pub source: &'static str,
}

/// The node's state as the `ready`, `draining` and `bus_connected` gauges show it, read
/// when the metrics are encoded (see [`Metrics::set_state_source`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeState {
    /// What `/readyz` answers.
    pub ready: bool,
    /// Draining after SIGTERM.
    pub draining: bool,
    /// The bus kind (`nats` or `local`).
    pub bus: &'static str,
    /// Whether the bus is connected.
    pub bus_connected: bool,
}

type StateSource = Box<dyn Fn() -> Option<NodeState> + Send + Sync>;

/// All metrics of one node.
pub struct Metrics {
    registry: Registry,
    /// Open connections by transport.
    pub connections: Family<TransportLabel, Gauge>,
    /// Open connections that have not authenticated (no valid `Hello` yet), by transport.
    pub pending_connections: Family<TransportLabel, Gauge>,
    /// Connections refused at admission, by reason (`address`, `address_pending`,
    /// `node_pending`, `node_sessions`).
    pub admission_refusals: Family<ReasonLabel, Counter>,
    /// Connections that ended without a close (TCP ended without a close frame, QUIC
    /// connection lost or reset), by transport. Not errors: counted apart from them.
    pub abrupt_closes: Family<TransportLabel, Counter>,
    /// Session tasks that panicked (their cleanup still ran).
    pub session_panics: Counter,
    /// Frames refused over a rate limit, by frame kind.
    pub rate_limited: Family<KindLabel, Counter>,
    /// Sessions that completed `Hello`, by transport.
    pub sessions_total: Family<TransportLabel, Counter>,
    /// Rooms with at least one local participant.
    pub rooms: Gauge,
    /// 1 while the node is ready for new sessions (what `/readyz` answers), else 0.
    pub ready: Gauge,
    /// 1 while the node drains (after SIGTERM), else 0.
    pub draining: Gauge,
    /// 1 while the bus is connected, else 0, by bus (`nats` or `local`).
    pub bus_connected: Family<BusLabel, Gauge>,
    /// Connections a transport accepts at once on this node (WebSocket: the HTTP server's
    /// connection cap, HTTP connections included; WebTransport: `--wt-max-sessions`). Only
    /// for the transports the node serves.
    pub connection_limit: Family<TransportLabel, Gauge>,
    /// `--max-pending-connections`: connections of the node that may be authenticating at
    /// once (0: unlimited).
    pub pending_connections_limit: Gauge,
    /// When the certificate a TLS listener serves expires, in Unix seconds.
    pub tls_certificate_expiry: Family<CertificateLabel, Gauge>,
    /// Reads `ready`, `draining` and `bus_connected` at encoding time.
    state_source: std::sync::OnceLock<StateSource>,
    /// Frames received from clients, by kind.
    pub frames_in: Family<KindLabel, Counter>,
    /// Frames queued to clients, by kind.
    pub frames_out: Family<KindLabel, Counter>,
    /// Bytes received from clients.
    pub bytes_in: Counter,
    /// Outbound frames dropped, by queue class.
    pub queue_drops: Family<ClassLabel, Counter>,
    /// Sessions disconnected because they could not keep up.
    pub slow_consumer_disconnects: Counter,
    /// 1 while a large share of the node's sessions are behind (the node, not its clients,
    /// is the bottleneck; see `overload`), else 0.
    pub node_overloaded: Gauge,
    /// Reliable room frames queued past their session's bound because the node or the room
    /// was behind (instead of a `SLOW_CONSUMER` disconnect).
    pub overload_excused: Counter,
    /// Load shed at the source while the node or the room was behind, by kind
    /// (`unreliable`, `media`: dropped; `reliable`: refused with `RATE_LIMITED`).
    pub overload_shed: Family<KindLabel, Counter>,
    /// Publisher pauses (reads stopped until the node or the room caught up).
    pub overload_pushbacks: Counter,
    /// Errors sent to clients, by code.
    pub errors: Family<CodeLabel, Counter>,
    /// Failed authentications, by code.
    pub auth_failures: Family<CodeLabel, Counter>,
    /// Bus publish failures.
    pub bus_publish_errors: Counter,
    /// Completed presence restorations after a bus reconnect.
    pub presence_restores: Counter,
    /// Bytes queued to clients, by frame kind.
    pub bytes_out: Family<KindLabel, Counter>,
    /// Joins of local sessions to rooms.
    pub room_joins: Counter,
    /// Presence reconciliations with the store after the bus came back.
    pub presence_resyncs: Counter,
    /// This node's presence records the periodic audit repaired, by kind: `missing`
    /// (written again), `wrong` (another value, rewritten), `stale` (no such local
    /// participant: removed).
    pub presence_store_repairs: Family<KindLabel, Counter>,
    /// Resuming joins told that part of what they missed is no longer in history.
    pub history_gaps: Counter,
    /// History appends that lost a compare-and-set to another node and retried.
    pub history_conflicts: Counter,
    /// Call transitions applied by this node, by transition.
    pub call_transitions: Family<KindLabel, Counter>,
    /// Compare-and-set retries on call state.
    pub call_conflicts: Counter,
    /// Ended calls whose history records another node than the one that ended them wrote.
    pub call_history_redriven: Counter,
    /// Call invitations refused before ringing anyone, by reason (`rate_limited`, `callers_full`).
    pub call_invites_refused: Family<ReasonLabel, Counter>,
    /// Call history records not written, by reason (`offline`: the callee had no device;
    /// `repeat_missed`: another unanswered call from the same caller was recorded recently).
    pub call_history_skipped: Family<ReasonLabel, Counter>,
    /// Call history records stored, cluster-wide (refreshed every few seconds).
    pub call_history_records: Gauge,
    /// Bytes of call history stored, cluster-wide (refreshed every few seconds).
    pub call_history_bytes: Gauge,
    /// Users with call history stored, cluster-wide (refreshed every few seconds).
    pub call_history_users: Gauge,
    /// Media frames carried on WebTransport media lanes, by lane and direction.
    pub media_lane_frames: Family<LaneLabel, Counter>,
    /// Media frames a WebTransport lane dropped rather than wait or exceed a bound, by reason
    /// (`blocked`, `stream_credit`, `group_bytes`, `lane_bytes`, `refused`).
    pub media_lane_drops: Family<ReasonLabel, Counter>,
    /// Group streams reset because a newer group started before they were acknowledged.
    pub media_groups_superseded: Counter,
    /// Time to hand a message to the bus.
    pub bus_publish_seconds: Histogram,
    /// Time from the origin node accepting a room message to this node fanning it out.
    pub delivery_latency_seconds: Histogram,
    /// Webhook events stored for delivery, by type.
    pub webhook_events: Family<KindLabel, Counter>,
    /// Webhook POSTs answered 2xx.
    pub webhook_sent: Counter,
    /// Webhook POSTs that failed (error, timeout or non-2xx).
    pub webhook_failed: Counter,
    /// Failed webhook POSTs scheduled again.
    pub webhook_retried: Counter,
    /// Webhook events given up, by reason (`queue_full`, `store_failed`, `expired`).
    pub webhook_dropped: Family<ReasonLabel, Counter>,
    /// Webhook events waiting in this node's queue.
    pub webhook_queue: Gauge,
    /// Time from an event to its endpoint's 2xx, retries included.
    pub webhook_latency_seconds: Histogram,
    /// Media payload bytes this node received from the bus, by simulcast layer.
    pub media_bus_bytes: Family<LayerLabel, Counter>,
    /// `media_bus_bytes`' series (layers 0, 1, 2, none), taken once: the fan-out counts every
    /// media message without a label lookup.
    media_bus_bytes_by_layer: [Counter; 4],
    /// Receivers' layer choices (receiver, sender) held by this node.
    pub layer_subscriptions: Gauge,
    /// Bus subscriptions to simulcast layer subjects held (a room's layer its local
    /// receivers want).
    pub layer_bus_subscriptions: Gauge,
    /// Frames of a simulcast layer above 0 not published to the bus: no node wanted that
    /// layer of the room (`layer_interest`).
    pub layer_frames_unpublished: Counter,
    /// Receivers switched to another layer (on its keyframe), by direction.
    pub layer_switches: Family<DirectionLabel, Counter>,
    /// Layer moves the node made itself (down on media drops, up after a quiet hold-off).
    pub layer_auto_moves: Family<DirectionLabel, Counter>,
    /// Active speaker changes announced to local members.
    pub active_speaker_changes: Counter,
}

fn latency_buckets() -> Histogram {
    // 0.25 ms .. ~1 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 13))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register every metric under the `switchboard_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchboard");
        let m = Self {
            connections: Family::default(),
            pending_connections: Family::default(),
            admission_refusals: Family::default(),
            abrupt_closes: Family::default(),
            session_panics: Counter::default(),
            rate_limited: Family::default(),
            sessions_total: Family::default(),
            rooms: Gauge::default(),
            ready: Gauge::default(),
            draining: Gauge::default(),
            bus_connected: Family::default(),
            connection_limit: Family::default(),
            pending_connections_limit: Gauge::default(),
            tls_certificate_expiry: Family::default(),
            state_source: std::sync::OnceLock::new(),
            frames_in: Family::default(),
            frames_out: Family::default(),
            bytes_in: Counter::default(),
            queue_drops: Family::default(),
            slow_consumer_disconnects: Counter::default(),
            node_overloaded: Gauge::default(),
            overload_excused: Counter::default(),
            overload_shed: Family::default(),
            overload_pushbacks: Counter::default(),
            errors: Family::default(),
            auth_failures: Family::default(),
            bus_publish_errors: Counter::default(),
            presence_restores: Counter::default(),
            bytes_out: Family::default(),
            room_joins: Counter::default(),
            history_gaps: Counter::default(),
            presence_resyncs: Counter::default(),
            presence_store_repairs: Family::default(),
            history_conflicts: Counter::default(),
            call_transitions: Family::default(),
            call_conflicts: Counter::default(),
            call_history_redriven: Counter::default(),
            call_invites_refused: Family::default(),
            call_history_skipped: Family::default(),
            call_history_records: Gauge::default(),
            call_history_bytes: Gauge::default(),
            call_history_users: Gauge::default(),
            media_lane_frames: Family::default(),
            media_lane_drops: Family::default(),
            media_groups_superseded: Counter::default(),
            bus_publish_seconds: latency_buckets(),
            delivery_latency_seconds: latency_buckets(),
            webhook_events: Family::default(),
            webhook_sent: Counter::default(),
            webhook_failed: Counter::default(),
            webhook_retried: Counter::default(),
            webhook_dropped: Family::default(),
            webhook_queue: Gauge::default(),
            // 10 ms .. ~1.4 h: retries stretch it.
            webhook_latency_seconds: Histogram::new(exponential_buckets(0.01, 4.0, 12)),
            media_bus_bytes: Family::default(),
            media_bus_bytes_by_layer: Default::default(),
            layer_subscriptions: Gauge::default(),
            layer_bus_subscriptions: Gauge::default(),
            layer_frames_unpublished: Counter::default(),
            layer_switches: Family::default(),
            layer_auto_moves: Family::default(),
            active_speaker_changes: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("connections", "Open client connections", m.connections.clone());
        registry.register("sessions", "Authenticated sessions", m.sessions_total.clone());
        registry.register(
            "pending_connections",
            "Open connections that have not authenticated yet",
            m.pending_connections.clone(),
        );
        registry.register("admission_refusals", "Connections refused at admission", m.admission_refusals.clone());
        registry.register("abrupt_closes", "Connections that ended without a close", m.abrupt_closes.clone());
        registry.register("session_panics", "Session tasks that panicked", m.session_panics.clone());
        registry.register("rate_limited", "Frames refused over a rate limit", m.rate_limited.clone());
        registry.register("rooms", "Rooms with local participants", m.rooms.clone());
        registry.register("ready", "1 while the node is ready for new sessions", m.ready.clone());
        registry.register("draining", "1 while the node drains", m.draining.clone());
        registry.register("bus_connected", "1 while the cluster bus is connected", m.bus_connected.clone());
        registry.register(
            "connection_limit",
            "Connections a transport accepts at once on this node",
            m.connection_limit.clone(),
        );
        registry.register(
            "pending_connections_limit",
            "Connections that may be authenticating at once (0: unlimited)",
            m.pending_connections_limit.clone(),
        );
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the served TLS certificate expires (Unix time)",
            m.tls_certificate_expiry.clone(),
        );
        registry.register("frames_in", "Frames received from clients", m.frames_in.clone());
        registry.register("frames_out", "Frames queued to clients", m.frames_out.clone());
        registry.register("bytes_in", "Bytes received from clients", m.bytes_in.clone());
        registry.register("queue_drops", "Outbound frames dropped", m.queue_drops.clone());
        registry.register(
            "slow_consumer_disconnects",
            "Sessions closed because they could not keep up",
            m.slow_consumer_disconnects.clone(),
        );
        registry.register("node_overloaded", "1 while the node itself is behind", m.node_overloaded.clone());
        registry.register(
            "overload_excused",
            "Reliable room frames queued past a bound while the node or room was behind",
            m.overload_excused.clone(),
        );
        registry.register("overload_shed", "Load shed at the source while behind", m.overload_shed.clone());
        registry.register("overload_pushbacks", "Publisher reads paused while behind", m.overload_pushbacks.clone());
        registry.register("errors", "Errors sent to clients", m.errors.clone());
        registry.register("auth_failures", "Rejected tokens", m.auth_failures.clone());
        registry.register("bus_publish_errors", "Failed publishes to the cluster bus", m.bus_publish_errors.clone());
        registry.register(
            "presence_restores",
            "Presence restorations after the bus reconnected",
            m.presence_restores.clone(),
        );
        registry.register("bytes_out", "Bytes queued to clients", m.bytes_out.clone());
        registry.register(
            "media_lane_frames",
            "Media frames on WebTransport datagrams and group streams",
            m.media_lane_frames.clone(),
        );
        registry.register("media_lane_drops", "Media frames a WebTransport lane dropped", m.media_lane_drops.clone());
        registry.register(
            "media_groups_superseded",
            "Media group streams reset because a newer group started",
            m.media_groups_superseded.clone(),
        );
        registry.register("room_joins", "Joins of local sessions to rooms", m.room_joins.clone());
        registry.register(
            "presence_resyncs",
            "Presence reconciliations with the store after the bus came back",
            m.presence_resyncs.clone(),
        );
        registry.register(
            "presence_store_repairs",
            "This node's presence records repaired by its periodic audit of the store",
            m.presence_store_repairs.clone(),
        );
        registry.register("history_gaps", "Resuming joins told part of their gap is gone", m.history_gaps.clone());
        registry.register(
            "history_conflicts",
            "History appends retried after another node appended first",
            m.history_conflicts.clone(),
        );
        registry.register("call_transitions", "Call transitions applied by this node", m.call_transitions.clone());
        registry.register("call_conflicts", "Call state compare-and-set retries", m.call_conflicts.clone());
        registry.register(
            "call_history_redriven",
            "Ended calls whose history records were written by another node than the one that ended them",
            m.call_history_redriven.clone(),
        );
        registry.register(
            "call_invites_refused",
            "Call invitations refused before ringing, by reason",
            m.call_invites_refused.clone(),
        );
        registry.register(
            "call_history_skipped",
            "Call history records not written, by reason",
            m.call_history_skipped.clone(),
        );
        registry.register("call_history_records", "Call history records stored", m.call_history_records.clone());
        registry.register("call_history_bytes", "Bytes of call history stored", m.call_history_bytes.clone());
        registry.register("call_history_users", "Users with call history stored", m.call_history_users.clone());
        registry.register("bus_publish_seconds", "Time to hand a message to the bus", m.bus_publish_seconds.clone());
        registry.register(
            "delivery_latency_seconds",
            "Time from the origin node accepting a room message to its fan-out here",
            m.delivery_latency_seconds.clone(),
        );
        registry.register("webhook_events", "Webhook events stored for delivery", m.webhook_events.clone());
        registry.register("webhook_sent", "Webhook POSTs answered 2xx", m.webhook_sent.clone());
        registry.register("webhook_failed", "Webhook POSTs that failed", m.webhook_failed.clone());
        registry.register("webhook_retried", "Failed webhook POSTs scheduled again", m.webhook_retried.clone());
        registry.register("webhook_dropped", "Webhook events given up", m.webhook_dropped.clone());
        registry.register("webhook_queue", "Webhook events waiting in this node's queue", m.webhook_queue.clone());
        registry.register(
            "webhook_latency_seconds",
            "Time from a webhook event to its endpoint's 2xx",
            m.webhook_latency_seconds.clone(),
        );
        registry.register(
            "media_bus_bytes",
            "Media payload bytes received from the bus, by simulcast layer",
            m.media_bus_bytes.clone(),
        );
        registry.register(
            "layer_subscriptions",
            "Receivers' simulcast layer choices held",
            m.layer_subscriptions.clone(),
        );
        registry.register(
            "layer_bus_subscriptions",
            "Bus subscriptions to simulcast layers held",
            m.layer_bus_subscriptions.clone(),
        );
        registry.register(
            "layer_frames_unpublished",
            "Frames of a simulcast layer above 0 not published to the bus because no node wanted that layer of the room",
            m.layer_frames_unpublished.clone(),
        );
        registry.register("layer_switches", "Receivers switched to another simulcast layer", m.layer_switches.clone());
        registry.register(
            "layer_auto_moves",
            "Simulcast layer moves the node made on media drops and after quiet",
            m.layer_auto_moves.clone(),
        );
        registry.register(
            "active_speaker_changes",
            "Active speaker changes announced",
            m.active_speaker_changes.clone(),
        );
        for direction in ["up", "down"] {
            let _ = m.layer_switches.get_or_create(&DirectionLabel { direction });
            let _ = m.layer_auto_moves.get_or_create(&DirectionLabel { direction });
        }
        for reason in ["queue_full", "store_failed", "expired"] {
            let _ = m.webhook_dropped.get_or_create(&ReasonLabel { reason });
        }
        // Series that dashboards expect to exist from the start, at 0.
        for transport in ["websocket", "webtransport"] {
            let _ = m.connections.get_or_create(&TransportLabel { transport });
            let _ = m.sessions_total.get_or_create(&TransportLabel { transport });
            let _ = m.pending_connections.get_or_create(&TransportLabel { transport });
            let _ = m.abrupt_closes.get_or_create(&TransportLabel { transport });
        }
        // And counters that alerts watch with `increase`/`rate`: a series that first appears
        // at 1 shows no increase, so its first event would go unseen.
        for class in ["control", "signal", "data", "media"] {
            let _ = m.queue_drops.get_or_create(&ClassLabel { class });
        }
        for code in [ErrorCode::Internal, ErrorCode::Unavailable] {
            let _ = m.errors.get_or_create(&CodeLabel { code: code.as_str_name() });
        }
        for kind in ["reliable", "unreliable", "media"] {
            let _ = m.overload_shed.get_or_create(&KindLabel { kind });
        }
        let media_bus_bytes_by_layer =
            [Some(0), Some(1), Some(2), None].map(|l| m.media_bus_bytes.get_or_create(&LayerLabel::of(l)).clone());
        Self { registry, media_bus_bytes_by_layer, ..m }
    }

    /// Count `bytes` of media received from the bus on `layer` (`None` or out of range: not
    /// layered).
    pub fn media_bus_bytes_in(&self, layer: Option<u32>, bytes: u64) {
        let index = layer.filter(|l| *l < 3).map_or(3, |l| l as usize);
        self.media_bus_bytes_by_layer[index].inc_by(bytes);
    }

    /// Count an error sent to a client.
    pub fn error(&self, code: ErrorCode) {
        self.errors.get_or_create(&CodeLabel { code: code.as_str_name() }).inc();
    }

    /// Where the `ready`, `draining` and `bus_connected` gauges are read from when the
    /// metrics are encoded (set once, by the node; later calls are ignored). The source
    /// answers `None` once the node is gone.
    pub fn set_state_source(&self, source: impl Fn() -> Option<NodeState> + Send + Sync + 'static) {
        let _ = self.state_source.set(Box::new(source));
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        if let Some(state) = self.state_source.get().and_then(|source| source()) {
            self.ready.set(i64::from(state.ready));
            self.draining.set(i64::from(state.draining));
            self.bus_connected.get_or_create(&BusLabel { bus: state.bus }).set(i64::from(state.bus_connected));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
