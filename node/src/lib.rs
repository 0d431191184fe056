//! Node assembly shared by both node binaries (`switchboard` and `webtransport-server`):
//! the node's flags and the wiring from them to a running [`Node`] (auth key, bus: NATS or
//! embedded), logging and shutdown signals. No edge owns it: each binary adds its own
//! edge's flags (WebTransport's `WtArgs`, the HTTP API's) beside [`NodeArgs`]. This is the
//! binaries' edge, so errors are `anyhow`.

use anyhow::{bail, Context};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use switchboard_relay::auth::DEV_SECRET;
use switchboard_relay::bus::StoreLimits;
use switchboard_relay::config::{generate_node_id, RelayConfig};
use switchboard_relay::ice::IceConfig;
use switchboard_relay::webhooks::{Endpoint, WebhookConfig};
use switchboard_relay::{AllowedOrigins, Bus, LocalBus, NatsBus, NatsOptions, Node, Verifier, VerifyKey};

/// Bus, identity, auth and logging flags of a node.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// NATS server URL(s), comma separated. Without it the node runs alone on the
    /// embedded in-process bus.
    #[arg(long, env = "SWITCHBOARD_NATS_URL")]
    pub nats_url: Option<String>,
    /// NATS credentials file (.creds).
    #[arg(long, env = "SWITCHBOARD_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// Replicas of the JetStream presence bucket (3 on a 3-node NATS cluster).
    #[arg(long, env = "SWITCHBOARD_NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,
    /// How long to keep retrying the first connection to NATS, in seconds.
    #[arg(long, env = "SWITCHBOARD_NATS_CONNECT_TIMEOUT", default_value_t = 60)]
    pub nats_connect_timeout: u64,
    /// Seconds between pings to NATS; a link silent for three pings is dropped and
    /// reconnected (how fast a network partition from NATS is noticed).
    #[arg(long, env = "SWITCHBOARD_NATS_PING_INTERVAL", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub nats_ping_interval: u64,
    /// This node's id, unique in the cluster (`[A-Za-z0-9_=-]`). Default: the host name
    /// plus a random suffix.
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    pub node_id: Option<String>,
    /// Prefix of every NATS subject.
    #[arg(long, env = "SWITCHBOARD_SUBJECT_PREFIX", default_value = "sb")]
    pub subject_prefix: String,
    /// HS256 secret for client tokens (at least 32 bytes). Default: a development secret.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Verify tokens with this public key (PEM) instead of a secret.
    #[arg(long, env = "SWITCHBOARD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Algorithm of `--jwt-public-key`: `es256` or `eddsa`.
    #[arg(long, env = "SWITCHBOARD_JWT_ALGORITHM", default_value = "es256")]
    pub jwt_algorithm: String,
    /// Seconds to wait for clients to leave after SIGTERM before closing them.
    #[arg(long, env = "SWITCHBOARD_DRAIN_TIMEOUT", default_value_t = 30)]
    pub drain_timeout: u64,
    /// Client heartbeat interval in seconds (announced in Welcome).
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT", default_value_t = 15)]
    pub heartbeat: u64,
    /// Seconds after which a silent node is considered dead (its participants leave).
    #[arg(long, env = "SWITCHBOARD_NODE_TIMEOUT", default_value_t = 10)]
    pub node_timeout: u64,
    /// Rooms one session may be in at once.
    #[arg(long, env = "SWITCHBOARD_MAX_ROOMS_PER_SESSION", default_value_t = 32)]
    pub max_rooms_per_session: usize,
    /// Requests (publish, signal, join, leave) per second per session; bursts of twice that.
    #[arg(long, env = "SWITCHBOARD_REQUEST_RATE", default_value_t = 200.0)]
    pub request_rate: f64,
    /// Reliable messages kept per room for recovery (`Join.resume_from`); 0 turns room
    /// history off (reliable messages then carry no offset).
    #[arg(long, env = "SWITCHBOARD_HISTORY_MAX_MSGS", default_value_t = 1000)]
    pub history_max_msgs: i64,
    /// Seconds a room message stays in history.
    #[arg(long, env = "SWITCHBOARD_HISTORY_MAX_AGE", default_value_t = 86_400)]
    pub history_max_age: u64,
    /// Bytes of room history kept in all rooms together (oldest dropped first).
    #[arg(long, env = "SWITCHBOARD_HISTORY_MAX_BYTES", default_value_t = 256 << 20)]
    pub history_max_bytes: i64,
    /// Where NATS keeps room history: `file` (survives server restarts) or `memory`
    /// (faster; lost when a server restarts, replicas still cover one server's loss).
    #[arg(long, env = "SWITCHBOARD_HISTORY_STORAGE", default_value = "file", value_parser = ["file", "memory"])]
    pub history_storage: String,
    /// Call records kept per user (`GET /api/calls`).
    #[arg(long, env = "SWITCHBOARD_CALL_HISTORY_MAX", default_value_t = 1000)]
    pub call_history_max: i64,
    /// Days a call record is kept.
    #[arg(long, env = "SWITCHBOARD_CALL_HISTORY_DAYS", default_value_t = 90)]
    pub call_history_days: u64,
    /// Bytes of call history kept in all, every user together (oldest records dropped first).
    #[arg(long, env = "SWITCHBOARD_CALL_HISTORY_MAX_BYTES", default_value_t = 64 << 20, value_parser = clap::value_parser!(i64).range(1..))]
    pub call_history_max_bytes: i64,
    /// Call records kept in all, every user together (oldest dropped first); also bounds
    /// the number of users with a call history.
    #[arg(long, env = "SWITCHBOARD_CALL_HISTORY_MAX_RECORDS", default_value_t = 100_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub call_history_max_records: i64,
    /// Call invitations per caller per minute on a node, as a burst, then one every
    /// 60 s / rate (0: unlimited); over it: `RATE_LIMITED`.
    #[arg(long, env = "SWITCHBOARD_CALL_INVITE_RATE", default_value_t = 30)]
    pub call_invite_rate: u32,
    /// Seconds an unanswered call rings before it ends as missed.
    #[arg(long, env = "SWITCHBOARD_CALL_RING_TIMEOUT", default_value_t = 30)]
    pub call_ring_timeout: u64,
    /// Senders one session may choose a simulcast layer for at once (`LayerSubscribe`);
    /// more are refused with `TOO_MANY_SUBSCRIPTIONS`.
    #[arg(long, env = "SWITCHBOARD_MAX_LAYER_SUBSCRIPTIONS", default_value_t = 64)]
    pub max_layer_subscriptions: usize,
    /// Seconds without media drops before a receiver the node moved down a simulcast layer
    /// goes up one (checked at each node heartbeat).
    #[arg(long, env = "SWITCHBOARD_LAYER_UP_HOLD_OFF", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub layer_up_hold_off: u64,
    /// Least seconds between two audits of this node's records in the presence store
    /// (missing ones written again, stale ones removed); jittered, and longer for a store
    /// of more than 20,000 records (at most 2,000 records read per second on average);
    /// 0 turns the audit off.
    #[arg(long, env = "SWITCHBOARD_PRESENCE_AUDIT_INTERVAL", default_value_t = 10)]
    pub presence_audit_interval: u64,
    /// Rooms with more participants than this get periodic `RoomStats` (the count) instead
    /// of a join/leave event per participant (0: never switch).
    #[arg(long, env = "SWITCHBOARD_PRESENCE_EVENTS_MAX", default_value_t = 500)]
    pub presence_events_max: usize,
    /// Open connections from one IP address to this node (0: unlimited).
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,
    /// Sessions of one user on this node (0: unlimited).
    #[arg(long, env = "SWITCHBOARD_MAX_SESSIONS_PER_USER", default_value_t = 0)]
    pub max_sessions_per_user: usize,
    /// Connections to this node that have not authenticated yet (no valid `Hello`), in
    /// total; more are refused with `TOO_MANY_CONNECTIONS` (0: unlimited).
    #[arg(long, env = "SWITCHBOARD_MAX_PENDING_CONNECTIONS", default_value_t = 4096)]
    pub max_pending_connections: usize,
    /// Connections from one IP address that have not authenticated yet (0: unlimited).
    /// Behind a proxy that hides client addresses, every client shares the proxy's.
    #[arg(long, env = "SWITCHBOARD_MAX_PENDING_PER_IP", default_value_t = 256)]
    pub max_pending_per_ip: usize,
    /// New sessions this node admits per second (bursts of one second's worth); more are
    /// refused with `RATE_LIMITED` and a spread `GoAway` retry hint, so a reconnect storm is
    /// admitted at a bounded rate (0: unlimited).
    #[arg(long, env = "SWITCHBOARD_SESSION_RATE", default_value_t = 2000.0)]
    pub session_rate: f64,
    /// Seconds a connection has to authenticate (`Hello`), counted from its arrival (the
    /// WebTransport handshake and control stream included).
    #[arg(long, env = "SWITCHBOARD_HELLO_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub hello_timeout: u64,
    /// Participants per room, cluster-wide (0: unlimited). A token's `max_participants`
    /// claim overrides it for the rooms that token joins.
    #[arg(long, env = "SWITCHBOARD_MAX_PARTICIPANTS", default_value_t = 0)]
    pub max_participants: usize,
    /// Origins allowed to use the node from a browser (comma separated, e.g.
    /// `https://app.example.com`; `https://*.example.com` allows its subdomains, `*` any):
    /// WebSocket upgrades, WebTransport sessions and CORS on the browser-facing HTTP API.
    /// Empty allows any. Requests without an `Origin` header (native clients) are always
    /// allowed: the check guards browsers' cross-site use.
    #[arg(long, env = "SWITCHBOARD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Log format: `text` or `json`. The level comes from RUST_LOG (default `info`).
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// A webhook endpoint: `URL`, or `URL TYPES` with a comma-separated filter of event types
    /// (`room.*,call.ended`); repeat the flag for several (in the environment, separate them
    /// with `;`). Events are POSTed as signed JSON (see the README's "Webhooks").
    #[arg(long = "webhook", env = "SWITCHBOARD_WEBHOOKS", value_delimiter = ';')]
    pub webhooks: Vec<String>,
    /// Shared secret of the `Webhook-Signature` HMAC (at least 16 bytes; required with a
    /// `--webhook`).
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Seconds a webhook event is retried (with backoff) before it is dropped.
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_RETRY_FOR", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub webhook_retry_for: u64,
    /// Seconds allowed for one webhook POST (kept under the 30 s after which another node
    /// takes the event over).
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=25))]
    pub webhook_timeout: u64,
    /// Webhook events a node holds before storing them for delivery; more are dropped
    /// (`switchboard_webhook_dropped_total{reason="queue_full"}`).
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_QUEUE", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub webhook_queue: u64,
    /// Webhook POSTs a node has in flight at once.
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub webhook_concurrency: u64,
    /// A STUN server URL (`stun:host[:port]`, `stuns:`) handed to clients for WebRTC;
    /// repeatable (in the environment, comma separated).
    #[arg(long = "stun-url", env = "SWITCHBOARD_STUN_URLS", value_delimiter = ',')]
    pub stun_urls: Vec<String>,
    /// A TURN server URL (`turn:host[:port][?transport=udp|tcp]`, `turns:`) handed to
    /// clients with short-lived credentials; repeatable (in the environment, comma
    /// separated). Needs `--turn-secret`.
    #[arg(long = "turn-url", env = "SWITCHBOARD_TURN_URLS", value_delimiter = ',')]
    pub turn_urls: Vec<String>,
    /// The secret shared with the TURN server (coturn's `static-auth-secret` with
    /// `use-auth-secret`), from which TURN credentials are derived.
    #[arg(long, env = "SWITCHBOARD_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,
    /// Seconds TURN credentials stay valid (300..=86400).
    #[arg(long, env = "SWITCHBOARD_TURN_TTL", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(300..=86_400))]
    pub turn_ttl: u64,
}

impl NodeArgs {
    /// The browser origin policy of `--allowed-origins`.
    pub fn allowed_origins(&self) -> AllowedOrigins {
        AllowedOrigins::new(&self.allowed_origins)
    }
}

/// The webhook settings of the flags.
pub fn webhook_config(args: &NodeArgs) -> anyhow::Result<WebhookConfig> {
    let endpoints = args
        .webhooks
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| Endpoint::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .context("--webhook")?;
    let config = WebhookConfig {
        endpoints,
        secret: args.webhook_secret.clone().unwrap_or_default(),
        queue: args.webhook_queue as usize,
        retry_for: Duration::from_secs(args.webhook_retry_for),
        timeout: Duration::from_secs(args.webhook_timeout),
        concurrency: args.webhook_concurrency as usize,
    };
    config.validate()?;
    Ok(config)
}

/// The ICE servers of the flags (`--stun-url`, `--turn-url`, `--turn-secret`, `--turn-ttl`).
pub fn ice_config(args: &NodeArgs) -> anyhow::Result<IceConfig> {
    let urls = |list: &[String]| list.iter().map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect();
    let config = IceConfig {
        stun_urls: urls(&args.stun_urls),
        turn_urls: urls(&args.turn_urls),
        turn_secret: args.turn_secret.clone().filter(|s| !s.is_empty()),
        ttl: Duration::from_secs(args.turn_ttl),
    };
    config.validate().context("ICE servers (--stun-url, --turn-url, --turn-secret, --turn-ttl)")?;
    if config.turn_secret.is_some() && config.turn_urls.is_empty() {
        tracing::warn!("--turn-secret without --turn-url: no TURN server is handed out");
    }
    Ok(config)
}

/// Initialise logging (call once, before anything logs).
pub fn init_logging(args: &NodeArgs) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if args.log_format.eq_ignore_ascii_case("json") {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn verify_key(args: &NodeArgs) -> anyhow::Result<VerifyKey> {
    if let Some(path) = &args.jwt_public_key {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(match args.jwt_algorithm.to_ascii_lowercase().as_str() {
            "es256" => VerifyKey::Es256Pem(pem),
            "eddsa" | "ed25519" => VerifyKey::EdDsaPem(pem),
            other => bail!("unknown --jwt-algorithm {other:?} (es256 or eddsa)"),
        });
    }
    Ok(VerifyKey::Hmac(match &args.jwt_secret {
        Some(secret) => secret.as_bytes().to_vec(),
        None => {
            tracing::warn!(
                "no --jwt-secret or --jwt-public-key: using the built-in DEVELOPMENT secret; \
                 anyone can mint tokens for this node. Never run it like this in production."
            );
            DEV_SECRET.as_bytes().to_vec()
        }
    }))
}

/// Retention of history and call state, from the flags.
pub fn store_limits(args: &NodeArgs) -> StoreLimits {
    StoreLimits {
        history_max_msgs: args.history_max_msgs.max(0),
        history_max_age: Duration::from_secs(args.history_max_age.max(1)),
        history_max_bytes: args.history_max_bytes.max(1),
        history_in_memory: args.history_storage == "memory",
        call_history_max: args.call_history_max.max(1),
        call_history_max_age: Duration::from_secs(args.call_history_days.max(1) * 86_400),
        call_history_max_bytes: args.call_history_max_bytes,
        call_history_max_records: args.call_history_max_records,
        ..StoreLimits::default()
    }
}

async fn connect_bus(args: &NodeArgs, node_id: &str) -> anyhow::Result<Arc<dyn Bus>> {
    let Some(url) = &args.nats_url else {
        tracing::info!("no NATS configured: embedded single node on the in-process bus");
        return Ok(Arc::new(LocalBus::with_limits(store_limits(args))));
    };
    let limit = Duration::from_secs(args.nats_connect_timeout);
    let mut opts = NatsOptions {
        url: url.clone(),
        name: format!("switchboard-{node_id}"),
        prefix: args.subject_prefix.clone(),
        replicas: args.nats_replicas,
        credentials_file: args.nats_creds.clone(),
        limits: store_limits(args),
        ping_interval: Duration::from_secs(args.nats_ping_interval),
        jetstream_timeout: limit,
    };
    // NATS may start after us: retry connecting. Once connected, `NatsBus::connect` itself
    // waits for JetStream (a fresh cluster electing its meta leader), within the same limit.
    let deadline = tokio::time::Instant::now() + limit;
    let mut backoff = Duration::from_millis(200);
    loop {
        opts.jetstream_timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        match NatsBus::connect(&opts).await {
            Ok(bus) => return Ok(Arc::new(bus)),
            Err(e) if tokio::time::Instant::now() + backoff < deadline => {
                tracing::warn!(error = %e, retry_in = ?backoff, "NATS not available yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("connecting to NATS"),
        }
    }
}

/// Build and start the node described by `args`.
pub async fn build_node(args: &NodeArgs) -> anyhow::Result<Arc<Node>> {
    let node_id = match &args.node_id {
        Some(id) => id.clone(),
        None => generate_node_id(&hostname()),
    };
    let defaults = RelayConfig::default();
    let config = RelayConfig {
        node_id: node_id.clone(),
        subject_prefix: args.subject_prefix.clone(),
        client_heartbeat: Duration::from_secs(args.heartbeat.max(1)),
        node_timeout: Duration::from_secs(args.node_timeout.max(1)),
        node_heartbeat: Duration::from_secs(args.node_timeout.max(1)).div_f64(5.0).min(defaults.node_heartbeat),
        max_rooms_per_session: args.max_rooms_per_session,
        request_rate: switchboard_relay::config::Rate { per_sec: args.request_rate, burst: args.request_rate * 2.0 },
        history: args.history_max_msgs > 0,
        ring_timeout: Duration::from_secs(args.call_ring_timeout.max(1)),
        call_invite_rate: args.call_invite_rate,
        max_participants: args.max_participants,
        max_connections_per_ip: args.max_connections_per_ip,
        presence_events_max: args.presence_events_max,
        max_layer_subscriptions: args.max_layer_subscriptions,
        layer_up_hold_off: Duration::from_secs(args.layer_up_hold_off),
        presence_audit_interval: Duration::from_secs(args.presence_audit_interval),
        max_sessions_per_user: args.max_sessions_per_user,
        max_pending_connections: args.max_pending_connections,
        max_pending_per_ip: args.max_pending_per_ip,
        hello_timeout: Duration::from_secs(args.hello_timeout),
        session_rate: switchboard_relay::config::Rate {
            per_sec: args.session_rate.max(0.0),
            burst: args.session_rate.max(1.0),
        },
        webhooks: webhook_config(args)?,
        ice: ice_config(args)?,
        ..defaults
    };
    let verifier = Verifier::new(&verify_key(args)?, config.token_leeway_secs).context("loading the JWT key")?;
    let bus = connect_bus(args, &node_id).await?;
    Ok(Node::start(config, verifier, bus).await?)
}

/// When the X.509 certificate `leaf_der` (DER) expires, in Unix seconds; `None` when it
/// cannot be parsed.
pub fn certificate_expiry(leaf_der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf_der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Show in `tls_certificate_expiry_timestamp_seconds{listener, source}` when the certificate
/// a TLS listener now serves (its leaf, DER) expires. A certificate that cannot be parsed is
/// logged and leaves the gauge as it was.
pub fn record_certificate(
    metrics: &switchboard_relay::metrics::Metrics,
    listener: &'static str,
    source: &'static str,
    leaf_der: &[u8],
) {
    match certificate_expiry(leaf_der) {
        Some(expiry) => {
            let label = switchboard_relay::metrics::CertificateLabel { listener, source };
            metrics.tls_certificate_expiry.get_or_create(&label).set(expiry);
        }
        None => tracing::warn!(listener, "cannot read the expiry of the served certificate"),
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
