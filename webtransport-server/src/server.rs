//! The WebTransport listener: certificate, QUIC endpoint, accept loop.

use crate::transport::WtTransport;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use switchboard_relay::{ConnInfo, Node};
use wtransport::tls::Sha256DigestFmt;
use wtransport::{Endpoint, Identity, ServerConfig};

/// The path WebTransport sessions must use: `https://HOST:PORT/wt`.
pub const WT_PATH: &str = "/wt";

/// Validity of a generated certificate. Browsers accept `serverCertificateHashes` only for
/// certificates valid at most 14 days.
const GENERATED_VALIDITY: Duration = Duration::from_secs(13 * 24 * 3600);

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
}

impl Default for WtConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 4433)),
            cert_pem: None,
            key_pem: None,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
        }
    }
}

/// WebTransport listener errors.
#[derive(Debug, thiserror::Error)]
pub enum WtError {
    /// The certificate or key could not be loaded.
    #[error("loading the TLS certificate: {0}")]
    Certificate(String),
    /// Only one of certificate and key was given.
    #[error("--tls-cert and --tls-key go together")]
    HalfIdentity,
    /// Binding the UDP socket failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// How often configured certificate files are checked for changes.
const CERT_POLL: Duration = Duration::from_secs(5);

/// A bound WebTransport listener.
pub struct WtServer {
    endpoint: Arc<Endpoint<wtransport::endpoint::endpoint_side::Server>>,
    generated_hash: Option<String>,
    config: WtConfig,
}

fn server_config(config: &WtConfig, identity: Identity) -> Result<ServerConfig, WtError> {
    Ok(ServerConfig::builder()
        .with_bind_address(config.addr)
        .with_identity(identity)
        .keep_alive_interval(Some(config.keep_alive))
        .max_idle_timeout(Some(config.idle_timeout))
        .map_err(|e| WtError::Certificate(format!("idle timeout: {e}")))?
        .build())
}

fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl WtServer {
    /// Load or generate the certificate and bind the UDP endpoint.
    pub async fn bind(config: WtConfig) -> Result<Self, WtError> {
        let (identity, generated) = match (&config.cert_pem, &config.key_pem) {
            (Some(cert), Some(key)) => {
                (Identity::load_pemfiles(cert, key).await.map_err(|e| WtError::Certificate(e.to_string()))?, false)
            }
            (None, None) => (generate_identity()?, true),
            _ => return Err(WtError::HalfIdentity),
        };
        let hash = identity
            .certificate_chain()
            .as_slice()
            .first()
            .map(|c| c.hash().fmt(Sha256DigestFmt::DottedHex).replace(':', "").to_ascii_lowercase());
        let endpoint = Endpoint::server(server_config(&config, identity)?)
            .map_err(|source| WtError::Bind { addr: config.addr, source })?;
        Ok(Self { endpoint: Arc::new(endpoint), generated_hash: if generated { hash } else { None }, config })
    }

    /// Reload the configured certificate whenever its files change (cert-manager renewals,
    /// rotated secrets). Existing sessions keep their connections; new ones get the new
    /// certificate. A failed load keeps the old certificate and logs why.
    async fn watch_certificate(
        endpoint: std::sync::Weak<Endpoint<wtransport::endpoint::endpoint_side::Server>>,
        config: WtConfig,
    ) {
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
                Ok(identity) => server_config(&config, identity)
                    .and_then(|c| endpoint.reload_config(c, false).map_err(|e| WtError::Certificate(e.to_string()))),
                Err(e) => Err(WtError::Certificate(e.to_string())),
            };
            match reloaded {
                Ok(()) => {
                    seen = now;
                    tracing::info!(cert = %cert.display(), "WebTransport certificate reloaded");
                }
                // Files may be mid-rotation (cert written, key not yet): retry next poll.
                Err(e) => tracing::warn!(error = %e, "WebTransport certificate reload failed; keeping the old one"),
            }
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Lowercase hex SHA-256 of the generated certificate (`None` with a configured one).
    pub fn generated_certificate_sha256_hex(&self) -> Option<String> {
        self.generated_hash.clone()
    }

    /// Accept sessions until the node drains; each session runs the relay's state machine.
    pub async fn serve(self, node: Arc<Node>) {
        tokio::spawn(Self::watch_certificate(Arc::downgrade(&self.endpoint), self.config.clone()));
        let mut drain = node.drain_signal();
        loop {
            let incoming = tokio::select! {
                incoming = self.endpoint.accept() => incoming,
                _ = drain.changed() => {
                    tracing::info!("WebTransport: draining, no new sessions");
                    break;
                }
            };
            let node = node.clone();
            tokio::spawn(async move {
                if let Err(e) = accept_session(node, incoming).await {
                    tracing::debug!(error = %e, "WebTransport session not established");
                }
            });
        }
        // Existing sessions carry on until the node closes them; keep the endpoint alive.
        self.endpoint.wait_idle().await;
    }
}

async fn accept_session(node: Arc<Node>, incoming: wtransport::endpoint::IncomingSession) -> anyhow::Result<()> {
    let request = incoming.await?;
    if request.path() != WT_PATH {
        request.not_found().await;
        return Ok(());
    }
    if node.is_draining() {
        request.too_many_requests().await;
        return Ok(());
    }
    let peer = request.remote_address();
    let connection = request.accept().await?;
    // The client opens the control stream first; bounded by the hello timeout.
    let (send, recv) = match tokio::time::timeout(node.config().hello_timeout, connection.accept_bi()).await {
        Ok(r) => r?,
        Err(_) => {
            connection.close(
                wtransport::VarInt::from_u32(
                    switchboard_protocol::close_code(switchboard_protocol::ErrorCode::HelloTimeout).into(),
                ),
                b"no control stream",
            );
            return Ok(());
        }
    };
    let transport = WtTransport::new(connection, send, recv);
    switchboard_relay::run_session(node, transport, ConnInfo { peer: Some(peer) }).await;
    Ok(())
}

fn generate_identity() -> Result<Identity, WtError> {
    use wtransport::tls::self_signed::time::{Duration as TimeDuration, OffsetDateTime};
    let now = OffsetDateTime::now_utc();
    // A little slack in the past for clients whose clocks run behind.
    let not_before = now - TimeDuration::hours(1);
    let not_after = now + TimeDuration::seconds(GENERATED_VALIDITY.as_secs() as i64);
    Identity::self_signed_builder()
        .subject_alt_names(["localhost", "127.0.0.1", "::1"])
        .not_before(not_before)
        .not_after(not_after)
        .build()
        .map_err(|e| WtError::Certificate(e.to_string()))
}
