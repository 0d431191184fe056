//! The generated certificate's rotation.
//!
//! Browsers pin a self-signed WebTransport certificate by its hash only if it is valid for
//! at most 14 days, so the node generates one valid 13 days. A node that runs longer must
//! replace it: every `WtConfig::generated_rotation` (6 days by default, so the certificate
//! served always has a week left) it generates a new one, makes the endpoint present it to
//! new connections (open sessions keep theirs), and serves its hash at
//! `/certificate.sha256`. Clients fetch the hash each time they connect, so a reconnect after
//! a rotation pins the new one.

use crate::server::{generate_identity, server_config, sha256_hex, WtConfig, WtError};
use std::sync::{Arc, RwLock, Weak};
use switchboard_relay::Node;
use wtransport::endpoint::endpoint_side::Server;
use wtransport::Endpoint;

/// The hash (lowercase hex SHA-256) of the generated certificate the endpoint presents now;
/// cheap to clone and share with the HTTP listeners that serve it.
#[derive(Clone, Debug)]
pub struct CertificateHash(Arc<RwLock<String>>);

impl CertificateHash {
    pub(crate) fn new(hash: String) -> Self {
        Self(Arc::new(RwLock::new(hash)))
    }

    /// The current hash.
    pub fn current(&self) -> String {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, hash: String) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = hash;
    }
}

/// Replace the generated certificate every `config.generated_rotation` while the endpoint
/// lives.
pub(crate) async fn rotate(endpoint: Weak<Endpoint<Server>>, config: WtConfig, node: Arc<Node>, hash: CertificateHash) {
    loop {
        tokio::time::sleep(config.generated_rotation).await;
        let Some(endpoint) = endpoint.upgrade() else { return };
        let rotated = generate_identity().and_then(|identity| {
            let leaf = identity
                .certificate_chain()
                .as_slice()
                .first()
                .map(|c| (sha256_hex(c), c.der().to_vec()))
                .ok_or_else(|| WtError::Certificate("the generated identity holds no certificate".into()))?;
            let config = server_config(&config, identity)?;
            endpoint.reload_config(config, false).map_err(|e| WtError::Certificate(e.to_string()))?;
            Ok(leaf)
        });
        match rotated {
            Ok((new_hash, der)) => {
                // After the endpoint presents it: a client that reads this hash can connect.
                hash.set(new_hash.clone());
                switchboard_node::record_certificate(node.metrics(), "webtransport", "generated", &der);
                tracing::info!(sha256 = %new_hash, "WebTransport: generated certificate rotated");
            }
            // Keep the current one (it still has a week left) and try again next period.
            Err(e) => tracing::warn!(error = %e, "WebTransport: rotating the generated certificate failed"),
        }
    }
}
