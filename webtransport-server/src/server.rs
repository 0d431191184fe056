//! The WebTransport listener: certificate, QUIC endpoint, accept loop.

use crate::rotation::CertificateHash;
use crate::transport::WtTransport;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_protocol::{close_code, limits::MAX_FRAME_BYTES, ErrorCode};
use switchboard_relay::{AllowedOrigins, Node, Ticket, TransportKind};
use wtransport::endpoint::endpoint_side::Server;
use wtransport::endpoint::IncomingSession;
use wtransport::quinn::{TransportConfig, VarInt as QuicVarInt};
use wtransport::tls::Certificate;
use wtransport::{Connection, Endpoint, Identity, RecvStream, SendStream, ServerConfig, VarInt};

/// The path WebTransport sessions must use: `https://HOST:PORT/wt`.
pub const WT_PATH: &str = "/wt";

/// Validity of a generated certificate. Browsers accept `serverCertificateHashes` only for
/// certificates valid at most 14 days.
const GENERATED_VALIDITY: Duration = Duration::from_secs(13 * 24 * 3600);

/// How far in the past a generated certificate starts, for clients whose clocks run behind.
const GENERATED_BACKDATE: Duration = Duration::from_secs(3600);

/// How often configured certificate files are checked for changes.
const CERT_POLL: Duration = Duration::from_secs(5);

/// Concurrent bidirectional streams a client may open: the HTTP/3 CONNECT stream, the control
/// stream, and a little slack (extra streams are refused as they arrive).
const MAX_BIDI_STREAMS: u32 = 8;
/// Concurrent unidirectional streams: HTTP/3's control and QPACK streams, and the client's
/// media streams.
const MAX_UNI_STREAMS: u32 = 3 + crate::lanes::MAX_MEDIA_STREAMS;
// Flow-control windows. A QUIC connection carries at most window / RTT: the sender stops
// once a window's worth of data is unacknowledged by the receiving application, and quinn
// re-opens a window only after an eighth of it was read, so about 7/8 of it is usable.
// Sized for >= 20 Mbit/s on one connection at 150 ms RTT (bandwidth-delay product: 20 Mbit/s
// x 150 ms = 375 KB) with twice that as headroom for the window update's granularity, the
// session's read delay and RTT spikes: ~49 Mbit/s on one stream at 150 ms (the previous 512
// KiB measured 25 Mbit/s there, its cap), `tests/tests/wt_windows.rs`.
/// Flow-control window of one stream (client → node: the control stream, each media stream):
/// four of the largest frames.
const STREAM_RECEIVE_WINDOW: u32 = 4 * MAX_FRAME_BYTES as u32;
/// Flow-control window of a whole connection: the most a client can make us buffer,
/// whatever the number of streams (RELIABILITY.md's bounds table). Two stream windows, so
/// that media streams in flight do not stall the control stream.
const RECEIVE_WINDOW: u32 = 8 * MAX_FRAME_BYTES as u32;
/// Unacknowledged bytes buffered towards one client (the relay's queues hold the rest and
/// detect slow consumers): ~110 Mbit/s at 150 ms, and what each slow receiver holds at most
/// in quinn.
const SEND_WINDOW: u64 = 2 << 20;
/// Media datagrams from a client not yet read by its session (quinn drops the oldest past it).
const DATAGRAM_RECEIVE_BUFFER: usize = 64 * 1024;
/// Media datagrams towards a client waiting for its congestion window: quinn drops the
/// oldest past it, so a receiver on a slow link gets fresh frames rather than a backlog
/// (~0.5 s at 2 Mbit/s).
const DATAGRAM_SEND_BUFFER: usize = 128 * 1024;

/// WebTransport listener configuration.
#[derive(Debug, Clone)]
pub struct WtConfig {
    /// UDP address to bind.
    pub addr: SocketAddr,
    /// Certificate chain (PEM). Without it a self-signed certificate is generated.
    pub cert_pem: Option<PathBuf>,
    /// Private key (PEM) of `cert_pem`.
    pub key_pem: Option<PathBuf>,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval (keeps NAT bindings and the idle timer alive).
    pub keep_alive: Duration,
    /// Time allowed for the QUIC handshake and the WebTransport CONNECT request (within
    /// the node's hello timeout, which bounds the handshake, the control stream and `Hello`
    /// together).
    pub handshake_timeout: Duration,
    /// Most WebTransport connections at once (established or in handshake, counted as they
    /// arrive); more are refused.
    pub max_sessions: usize,
    /// Origins allowed to open sessions from a browser (the CONNECT request's `Origin`);
    /// empty allows any, no `Origin` (native clients) is always allowed.
    pub allowed_origins: AllowedOrigins,
    /// Send media on lanes (datagrams, group streams) to clients that ask for it.
    pub media_lanes: bool,
    /// QUIC congestion control of every connection.
    pub congestion: Congestion,
    /// How often a generated certificate is replaced ([`crate::rotation`]); shorter than
    /// its 13 days of validity.
    pub generated_rotation: Duration,
}

/// Default period of the generated certificate's rotation: the one served always has at
/// least a week left.
pub const GENERATED_ROTATION: Duration = Duration::from_secs(6 * 24 * 3600);

/// QUIC congestion control (quinn's implementations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Congestion {
    /// BBR: paces at the measured bottleneck rate and does not read random loss as
    /// congestion. The default: on the impaired-link benchmark (BENCHMARKS.md) CUBIC let a
    /// 2 Mbit/s link with 5 % loss carry less than 1.2 Mbit/s of media (seconds of backlog)
    /// where the kernel's TCP kept up; BBR keeps up.
    Bbr,
    /// CUBIC, quinn's default (halves its window on every loss).
    Cubic,
}

impl Default for WtConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 4433)),
            cert_pem: None,
            key_pem: None,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_sessions: 50_000,
            allowed_origins: AllowedOrigins::default(),
            media_lanes: true,
            congestion: Congestion::Bbr,
            generated_rotation: GENERATED_ROTATION,
        }
    }
}

/// WebTransport listener errors.
#[derive(Debug, thiserror::Error)]
pub enum WtError {
    /// The certificate or key could not be loaded or generated.
    #[error("loading the TLS certificate: {0}")]
    Certificate(String),
    /// Only one of certificate and key was given.
    #[error("--tls-cert and --tls-key go together")]
    HalfIdentity,
    /// The configuration is invalid.
    #[error("invalid WebTransport configuration: {0}")]
    Config(String),
    /// Binding the UDP socket failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// The WebTransport connections of a listener, counted as they arrive (before their
/// handshake) against `max_sessions`: taking a slot is one atomic step, so concurrent
/// handshakes cannot overshoot the cap.
struct Slots {
    open: AtomicUsize,
    max: usize,
}

/// One connection's slot; given back on drop.
struct Slot(Arc<Slots>);

impl Slots {
    fn take(self: &Arc<Self>) -> Option<Slot> {
        let taken = self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1));
        taken.is_ok().then(|| Slot(self.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A bound WebTransport listener.
pub struct WtServer {
    endpoint: Arc<Endpoint<Server>>,
    cert_hash: CertificateHash,
    /// The leaf certificate (DER), for its expiry gauge.
    cert_der: Vec<u8>,
    generated: bool,
    config: WtConfig,
}

pub(crate) fn server_config(config: &WtConfig, identity: Identity) -> Result<ServerConfig, WtError> {
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(MAX_BIDI_STREAMS.into())
        .max_concurrent_uni_streams(MAX_UNI_STREAMS.into())
        .stream_receive_window(QuicVarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(QuicVarInt::from_u32(RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    if config.congestion == Congestion::Bbr {
        transport.congestion_controller_factory(Arc::new(wtransport::quinn::congestion::BbrConfig::default()));
    }
    Ok(ServerConfig::builder()
        .with_bind_address(config.addr)
        .with_custom_transport(identity, transport)
        .keep_alive_interval(Some(config.keep_alive))
        // A client whose address changes (NAT rebinding, a phone moving between networks)
        // keeps its connection and session: quinn validates the new path and moves to it
        // (on by default; explicit because `tests/tests/migration.rs` depends on it).
        .allow_migration(true)
        .max_idle_timeout(Some(config.idle_timeout))
        .map_err(|e| WtError::Config(format!("idle timeout: {e}")))?
        .build())
}

/// Lowercase hex SHA-256 of a certificate (the form `serverCertificateHashes` and
/// `/certificate.sha256` use).
pub(crate) fn sha256_hex(cert: &Certificate) -> String {
    let digest = cert.hash();
    let bytes: &[u8; 32] = digest.as_ref();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl WtServer {
    /// Load the configured certificate (or generate a self-signed one for `localhost`,
    /// `127.0.0.1` and `::1`, valid 13 days) and bind the UDP endpoint.
    pub async fn bind(config: WtConfig) -> Result<Self, WtError> {
        if config.max_sessions == 0 {
            return Err(WtError::Config("max_sessions must be at least 1".into()));
        }
        if config.generated_rotation.is_zero() || config.generated_rotation >= GENERATED_VALIDITY {
            return Err(WtError::Config(format!(
                "the generated certificate's rotation must be between 1 s and its {} days of validity",
                GENERATED_VALIDITY.as_secs() / 86_400
            )));
        }
        let (identity, generated) = match (&config.cert_pem, &config.key_pem) {
            (Some(cert), Some(key)) => {
                (Identity::load_pemfiles(cert, key).await.map_err(|e| WtError::Certificate(e.to_string()))?, false)
            }
            (None, None) => (generate_identity()?, true),
            _ => return Err(WtError::HalfIdentity),
        };
        let leaf = identity
            .certificate_chain()
            .as_slice()
            .first()
            .ok_or_else(|| WtError::Certificate("the certificate file holds no certificate".into()))?;
        let (cert_hash, cert_der) = (sha256_hex(leaf), leaf.der().to_vec());
        let endpoint = Endpoint::server(server_config(&config, identity)?)
            .map_err(|source| WtError::Bind { addr: config.addr, source })?;
        let cert_hash = CertificateHash::new(cert_hash);
        Ok(Self { endpoint: Arc::new(endpoint), cert_hash, cert_der, generated, config })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Lowercase hex SHA-256 (64 characters) of the leaf certificate loaded or generated
    /// by [`WtServer::bind`] (a generated one is later rotated: see
    /// [`WtServer::generated_certificate_hash`]).
    pub fn certificate_sha256_hex(&self) -> String {
        self.cert_hash.current()
    }

    /// [`WtServer::certificate_sha256_hex`] if the certificate was generated (the one
    /// browsers must pin with `serverCertificateHashes`), `None` with a configured one.
    pub fn generated_certificate_sha256_hex(&self) -> Option<String> {
        self.generated.then(|| self.cert_hash.current())
    }

    /// The generated certificate's hash as it rotates (what `/certificate.sha256` serves),
    /// `None` with a configured certificate.
    pub fn generated_certificate_hash(&self) -> Option<CertificateHash> {
        self.generated.then(|| self.cert_hash.clone())
    }

    /// Accept sessions until the node drains; each session runs the relay's state machine
    /// in its own task. Once draining, new connections are refused while existing sessions
    /// carry on; returns when they have all ended (their close frames sent).
    pub async fn serve(self, node: Arc<Node>) {
        let source = if self.generated { "generated" } else { "file" };
        switchboard_node::record_certificate(node.metrics(), "webtransport", source, &self.cert_der);
        node.metrics()
            .connection_limit
            .get_or_create(&switchboard_relay::metrics::TransportLabel { transport: "webtransport" })
            .set(i64::try_from(self.config.max_sessions).unwrap_or(i64::MAX));
        let watcher = if self.generated {
            let rotation = crate::rotation::rotate(
                Arc::downgrade(&self.endpoint),
                self.config.clone(),
                node.clone(),
                self.cert_hash.clone(),
            );
            tokio::spawn(rotation)
        } else {
            tokio::spawn(watch_certificate(Arc::downgrade(&self.endpoint), self.config.clone(), node.clone()))
        };
        let mut drain = node.drain_signal();
        let draining = drain.wait_for(|d| *d);
        tokio::pin!(draining);
        let mut last_full_warning: Option<Instant> = None;
        let slots = Arc::new(Slots { open: AtomicUsize::new(0), max: self.config.max_sessions });
        loop {
            let incoming = tokio::select! {
                incoming = self.endpoint.accept() => incoming,
                _ = &mut draining => break,
            };
            // Admitted before any handshake work: the listener's cap, then the node's caps by
            // address and on connections that have not authenticated, each in one step.
            let Some(slot) = slots.take() else {
                node.metrics()
                    .admission_refusals
                    .get_or_create(&switchboard_relay::metrics::ReasonLabel { reason: "webtransport_sessions" })
                    .inc();
                if last_full_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(max = self.config.max_sessions, "WebTransport: connection limit reached, refusing");
                    last_full_warning = Some(Instant::now());
                }
                incoming.refuse();
                continue;
            };
            let ticket = match switchboard_relay::admit(
                &node,
                TransportKind::WebTransport,
                Some(incoming.remote_address()),
            ) {
                Ok(ticket) => ticket,
                Err(why) => {
                    tracing::debug!(peer = %incoming.remote_address(), reason = why.label(), "WebTransport connection refused at admission");
                    incoming.refuse();
                    continue;
                }
            };
            let origins = self.config.allowed_origins.clone();
            tokio::spawn(accept_session(
                node.clone(),
                incoming,
                ticket,
                slot,
                (self.config.handshake_timeout, self.config.media_lanes),
                origins,
            ));
        }
        tracing::info!("WebTransport: draining, refusing new connections");
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => incoming.refuse(),
                () = self.endpoint.wait_idle() => break,
            }
        }
        watcher.abort();
        tracing::debug!("WebTransport: all sessions ended");
    }
}

/// Reload the configured certificate whenever its files change (cert-manager renewals,
/// rotated secrets). Existing sessions keep their connections; new ones get the new
/// certificate. A failed load keeps the old certificate and logs why.
async fn watch_certificate(endpoint: std::sync::Weak<Endpoint<Server>>, config: WtConfig, node: Arc<Node>) {
    let (Some(cert), Some(key)) = (config.cert_pem.clone(), config.key_pem.clone()) else { return };
    let mut seen = (modified(&cert), modified(&key));
    loop {
        tokio::time::sleep(CERT_POLL).await;
        let Some(endpoint) = endpoint.upgrade() else { return };
        let now = (modified(&cert), modified(&key));
        if now == seen {
            continue;
        }
        let reloaded = match Identity::load_pemfiles(&cert, &key).await {
            Ok(identity) => {
                let leaf = identity.certificate_chain().as_slice().first().map(|c| c.der().to_vec());
                server_config(&config, identity)
                    .and_then(|c| endpoint.reload_config(c, false).map_err(|e| WtError::Certificate(e.to_string())))
                    .map(|()| leaf)
            }
            Err(e) => Err(WtError::Certificate(e.to_string())),
        };
        match reloaded {
            Ok(leaf) => {
                if let Some(der) = leaf {
                    switchboard_node::record_certificate(node.metrics(), "webtransport", "file", &der);
                }
                seen = now;
                tracing::info!(cert = %cert.display(), "WebTransport certificate reloaded");
            }
            // Files may be mid-rotation (cert written, key not yet): retry next poll.
            Err(e) => tracing::warn!(error = %e, "WebTransport certificate reload failed; keeping the old one"),
        }
    }
}

/// Why a connection did not become a session.
enum Refused {
    /// A request for another path (answered 404).
    NotFound,
    /// The node is draining (answered 429).
    Draining,
    /// A browser page from an origin outside `--allowed-origins` (answered 403).
    Forbidden(switchboard_relay::OriginRefused),
    /// The QUIC or HTTP/3 handshake failed.
    Failed(wtransport::error::ConnectionError),
}

/// QUIC handshake, then the CONNECT request: a session on [`WT_PATH`] from an allowed
/// origin. wtransport keeps one value per header name, so a CONNECT with two `Origin`
/// fields is checked by the one it kept.
async fn handshake(node: &Node, incoming: IncomingSession, origins: &AllowedOrigins) -> Result<Connection, Refused> {
    let request = incoming.await.map_err(Refused::Failed)?;
    if request.path() != WT_PATH {
        request.not_found().await;
        return Err(Refused::NotFound);
    }
    if let Err(refused) = origins.check(request.origin().map(str::as_bytes)) {
        node.metrics().error(ErrorCode::Forbidden);
        request.forbidden().await;
        return Err(Refused::Forbidden(refused));
    }
    if node.is_draining() {
        request.too_many_requests().await;
        return Err(Refused::Draining);
    }
    request.accept().await.map_err(Refused::Failed)
}

/// One incoming connection's task: the WebTransport handshake and control stream, then the
/// session. The handshake's futures are large and only needed at the start, so they are
/// boxed and freed once it is done instead of sizing every session's task for its whole
/// life (about 3 KB of every idle WebTransport connection).
fn accept_session(
    node: Arc<Node>,
    incoming: IncomingSession,
    ticket: Ticket,
    slot: Slot,
    (handshake_timeout, media_lanes): (Duration, bool),
    origins: AllowedOrigins,
) -> impl std::future::Future<Output = ()> + Send {
    let establishing = Box::pin(establish(node.clone(), incoming, ticket.hello_deadline(), handshake_timeout, origins));
    async move {
        let _slot = slot;
        let Some((connection, send, recv)) = establishing.await else { return };
        let transport = WtTransport::new(connection, send, recv, node.clone(), media_lanes);
        switchboard_relay::run_session(node, transport, ticket).await;
    }
}

/// Complete the handshake and accept the control stream, both by `hello_deadline` (the
/// handshake also within `handshake_timeout`); `None` (logged) if either fails.
async fn establish(
    node: Arc<Node>,
    incoming: IncomingSession,
    hello_deadline: tokio::time::Instant,
    handshake_timeout: Duration,
    origins: AllowedOrigins,
) -> Option<(Connection, SendStream, RecvStream)> {
    let addr = incoming.remote_address();
    // Dual-stack sockets report IPv4 peers as IPv4-mapped IPv6 addresses.
    let peer = SocketAddr::new(addr.ip().to_canonical(), addr.port());
    let handshake_deadline = hello_deadline.min(tokio::time::Instant::now() + handshake_timeout);
    let connection = match tokio::time::timeout_at(handshake_deadline, handshake(&node, incoming, &origins)).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(Refused::NotFound)) => {
            tracing::debug!(%peer, "WebTransport: wrong path, 404");
            return None;
        }
        Ok(Err(Refused::Draining)) => {
            tracing::debug!(%peer, "WebTransport: draining, refused");
            return None;
        }
        Ok(Err(Refused::Forbidden(refused))) => {
            tracing::info!(%peer, %refused, "WebTransport from a disallowed origin refused");
            return None;
        }
        Ok(Err(Refused::Failed(e))) => {
            tracing::debug!(%peer, error = %e, "WebTransport handshake failed");
            return None;
        }
        // Dropping the handshake closes the connection.
        Err(_) => {
            tracing::debug!(%peer, "WebTransport handshake timed out");
            return None;
        }
    };
    // The client opens the control stream first; by the hello deadline.
    let (send, recv) = match tokio::time::timeout_at(hello_deadline, connection.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "WebTransport session ended before its control stream");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "WebTransport: no control stream in time");
            let code = VarInt::from_u32(close_code(ErrorCode::HelloTimeout).into());
            connection.close(code, b"no control stream");
            return None;
        }
    };
    tracing::debug!(%peer, "WebTransport session established");
    Some((connection, send, recv))
}

pub(crate) fn generate_identity() -> Result<Identity, WtError> {
    use wtransport::tls::self_signed::time::{Duration as TimeDuration, OffsetDateTime};
    let now = OffsetDateTime::now_utc();
    let not_before = now - TimeDuration::seconds(GENERATED_BACKDATE.as_secs() as i64);
    // Browsers measure the 14 days from not_before to not_after.
    let not_after = not_before + TimeDuration::seconds(GENERATED_VALIDITY.as_secs() as i64);
    Identity::self_signed_builder()
        .subject_alt_names(["localhost", "127.0.0.1", "::1"])
        .not_before(not_before)
        .not_after(not_after)
        .build()
        .map_err(|e| WtError::Certificate(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificate_fits_the_browser_limit() {
        assert!(GENERATED_VALIDITY <= Duration::from_secs(14 * 24 * 3600));
        let identity = generate_identity().expect("self-signed certificate");
        assert_eq!(sha256_hex(&identity.certificate_chain().as_slice()[0]).len(), 64);
    }
}
