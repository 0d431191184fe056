//! Switchboard's WebTransport edge (wtransport on quinn).
//!
//! A client opens a WebTransport session at `https://HOST:PORT/wt`, then one bidirectional
//! stream (the control stream) carrying length-prefixed protobuf frames both ways. The
//! `switchboard` binary hosts this edge beside HTTP/WebSocket; the `webtransport-server`
//! binary runs it alone (a QUIC-only node with a small HTTP listener for probes).

mod lanes;
pub mod probe;
mod records;
mod rotation;
mod server;
mod transport;

pub use rotation::CertificateHash;
pub use server::{Congestion, WtConfig, WtError, WtServer, GENERATED_ROTATION, WT_PATH};
pub use transport::WtTransport;

/// WebTransport flags of a node.
#[derive(Debug, Clone, clap::Args)]
pub struct WtArgs {
    /// WebTransport (UDP) listen address.
    #[arg(long, env = "SWITCHBOARD_WT_ADDR", default_value = "0.0.0.0:4433")]
    pub wt_addr: std::net::SocketAddr,
    /// TLS certificate chain (PEM) for WebTransport. Default: a generated self-signed
    /// certificate valid 13 days, replaced every `--wt-cert-rotation`, whose hash is served at
    /// /certificate.sha256.
    #[arg(long, env = "SWITCHBOARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// TLS private key (PEM) of `--tls-cert`.
    #[arg(long, env = "SWITCHBOARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Most WebTransport connections at once; more are refused.
    #[arg(long, env = "SWITCHBOARD_WT_MAX_SESSIONS", default_value_t = WtConfig::default().max_sessions)]
    pub wt_max_sessions: usize,
    /// Send media to WebTransport clients that ask for it on QUIC datagrams and one
    /// unidirectional stream per group instead of the control stream (`on` or `off`; `off`
    /// keeps every frame on the control stream, as WebSocket does).
    #[arg(long, env = "SWITCHBOARD_WT_MEDIA_LANES", default_value = "on", value_parser = ["on", "off"])]
    pub wt_media_lanes: String,
    /// QUIC congestion control: `bbr` (default; keeps up on lossy links) or `cubic`.
    #[arg(long, env = "SWITCHBOARD_WT_CONGESTION", value_enum, default_value = "bbr")]
    pub wt_congestion: Congestion,
    /// Seconds between rotations of the generated certificate (without `--tls-cert`): each
    /// rotation generates a new one for new connections and serves its hash; open sessions
    /// keep theirs. Default 6 days (it is valid 13).
    #[arg(long, env = "SWITCHBOARD_WT_CERT_ROTATION", default_value_t = GENERATED_ROTATION.as_secs(), value_parser = clap::value_parser!(u64).range(1..1_123_200))]
    pub wt_cert_rotation: u64,
}

impl WtArgs {
    /// The listener configuration these flags describe.
    pub fn config(&self) -> WtConfig {
        WtConfig {
            addr: self.wt_addr,
            cert_pem: self.tls_cert.clone(),
            key_pem: self.tls_key.clone(),
            max_sessions: self.wt_max_sessions,
            media_lanes: self.wt_media_lanes == "on",
            congestion: self.wt_congestion,
            generated_rotation: std::time::Duration::from_secs(self.wt_cert_rotation),
            ..WtConfig::default()
        }
    }
}
