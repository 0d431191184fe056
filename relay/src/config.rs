//! Node configuration (the parts the relay core needs; binaries map flags onto it).

use crate::outbound::QueueLimits;
use std::time::Duration;

/// Token-bucket rate: a sustained rate per second and a burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_sec: f64,
    /// Bucket size.
    pub burst: f64,
}

/// Configuration of a relay node.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// This node's id (a valid subject token), unique in the cluster.
    pub node_id: String,
    /// NATS subject prefix.
    pub subject_prefix: String,
    /// Interval at which clients must send something (announced in `Welcome`).
    /// A session silent for three intervals is closed with `HEARTBEAT_TIMEOUT`.
    pub client_heartbeat: Duration,
    /// Time allowed between connecting and a valid `Hello`.
    pub hello_timeout: Duration,
    /// Interval of this node's heartbeats to the other nodes.
    pub node_heartbeat: Duration,
    /// A node not heard from for this long is considered dead: its participants leave.
    pub node_timeout: Duration,
    /// Outbound queue bounds per session.
    pub queue_limits: QueueLimits,
    /// Rooms one session may be in at once.
    pub max_rooms_per_session: usize,
    /// Rate of non-media requests (publish, signal, join, leave) per session.
    pub request_rate: Rate,
    /// Rate of media bytes per session.
    pub media_bytes_rate: Rate,
    /// A write to a client that takes longer than this ends the session (`SLOW_CONSUMER`).
    pub write_timeout: Duration,
    /// Allowed clock skew for token `exp`/`nbf`, in seconds.
    pub token_leeway_secs: u64,
    /// Whether reliable room messages go through the room history log (offsets, recovery).
    /// Must match the bus's retention (`StoreLimits::history_max_msgs > 0`).
    pub history: bool,
    /// How long an unanswered call rings before it ends as missed.
    pub ring_timeout: Duration,
    /// Call invitations per caller (user) per minute on this node, as a burst, then one
    /// every `60 s / rate`; over it an invite gets `RATE_LIMITED`. 0 is unlimited.
    pub call_invite_rate: u32,
    /// Rooms with more participants than this get `RoomStats` count updates instead of
    /// individual join/leave events; 0 never switches.
    pub presence_events_max: usize,
    /// Open connections from one IP address to this node; 0 is unlimited.
    pub max_connections_per_ip: usize,
    /// Sessions of one user on this node; 0 is unlimited.
    pub max_sessions_per_user: usize,
    /// Connections of this node that have not authenticated yet (no valid `Hello`); more are
    /// refused with `TOO_MANY_CONNECTIONS`. 0 is unlimited.
    pub max_pending_connections: usize,
    /// Connections from one IP address that have not authenticated yet; 0 is unlimited.
    pub max_pending_per_ip: usize,
    /// Rate of `Ping` frames per session (heartbeats need one per interval).
    pub ping_rate: Rate,
    /// Participants per room, cluster-wide; 0 is unlimited. A token's `max_participants`
    /// claim overrides it.
    pub max_participants: usize,
    /// New sessions (valid or not `Hello`s) this node admits per second, with a burst;
    /// over it `RATE_LIMITED` with a spread `GoAway` retry hint. `per_sec` 0 is unlimited.
    pub session_rate: Rate,
    /// Webhook endpoints and delivery bounds; none by default.
    pub webhooks: crate::webhooks::WebhookConfig,
    /// ICE servers (STUN, TURN with short-lived credentials) handed to sessions; none by
    /// default.
    pub ice: crate::ice::IceConfig,
    /// Senders one session may choose a simulcast layer for at once (`LayerSubscribe`);
    /// more get `TOO_MANY_SUBSCRIPTIONS`.
    pub max_layer_subscriptions: usize,
    /// Without media drops for this long, a receiver the node moved down a layer goes up
    /// one ([`crate::layers`]).
    pub layer_up_hold_off: Duration,
    /// Least time between two audits of this node's records in the presence store
    /// (jittered, and longer for a large store: see the rooms' presence audit); zero turns
    /// the audit off.
    pub presence_audit_interval: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            node_id: "node-1".into(),
            subject_prefix: "sb".into(),
            client_heartbeat: Duration::from_secs(15),
            hello_timeout: Duration::from_secs(10),
            node_heartbeat: Duration::from_secs(2),
            node_timeout: Duration::from_secs(10),
            queue_limits: QueueLimits::default(),
            max_rooms_per_session: 32,
            request_rate: Rate { per_sec: 200.0, burst: 400.0 },
            media_bytes_rate: Rate { per_sec: 8.0 * 1024.0 * 1024.0, burst: 16.0 * 1024.0 * 1024.0 },
            write_timeout: Duration::from_secs(10),
            token_leeway_secs: 5,
            history: true,
            ring_timeout: Duration::from_secs(30),
            call_invite_rate: 30,
            max_participants: 0,
            presence_events_max: 500,
            max_connections_per_ip: 0,
            max_sessions_per_user: 0,
            max_pending_connections: 4096,
            max_pending_per_ip: 256,
            ping_rate: Rate { per_sec: 5.0, burst: 20.0 },
            session_rate: Rate { per_sec: 2000.0, burst: 2000.0 },
            webhooks: Default::default(),
            ice: crate::ice::IceConfig::none(),
            max_layer_subscriptions: 64,
            layer_up_hold_off: crate::layers::UP_HOLD_OFF,
            presence_audit_interval: Duration::from_secs(10),
        }
    }
}

/// A fresh random node id: `<base>-<6 random chars>` (the base sanitised to subject-safe
/// characters), so a restarted node never inherits a dead node's presence.
pub fn generate_node_id(base: &str) -> String {
    let clean: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .take(48)
        .collect();
    let base = if clean.is_empty() { "node".to_owned() } else { clean };
    format!("{base}-{}", crate::ids::random_id(6))
}
