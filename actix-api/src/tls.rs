//! Optional TLS for the HTTP API and WebSocket (`wss://`), with rustls. The certificate and
//! key files are watched: when they change (cert-manager renewal, rotated secret), new
//! connections get the new certificate while established sessions carry on undisturbed.

use anyhow::{bail, Context};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use switchboard_relay::Node;

/// How often the files are checked for changes.
const POLL: Duration = Duration::from_secs(2);

/// Hands out the current certificate; swapped in place on reload.
#[derive(Debug)]
pub struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// Load a PEM certificate chain and private key.
fn load(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    if chain.is_empty() {
        bail!("{}: no certificate", cert.display());
    }
    let key_der = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading the key {}", key.display()))?;
    let signing = any_supported_type(&key_der).context("unsupported private key type")?;
    let certified = CertifiedKey::new(chain, signing);
    // A rotation caught half-way (new certificate, old key) must not be served.
    certified.keys_match().with_context(|| format!("{} does not match the key {}", cert.display(), key.display()))?;
    Ok(certified)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A rustls server configuration serving `cert`/`key` (HTTP/1.1), reloaded on change by a
/// task on the current runtime. The served certificate's expiry is shown in `node`'s
/// `tls_certificate_expiry_timestamp_seconds{listener="http"}`.
pub fn server_config(cert: PathBuf, key: PathBuf, node: Arc<Node>) -> anyhow::Result<rustls::ServerConfig> {
    // Stamp the files before reading them: a rotation landing between the read and the
    // watcher's start is then still seen as a change.
    let seen = (modified(&cert), modified(&key));
    let loaded = load(&cert, &key)?;
    record_expiry(&node, &loaded);
    let resolver = Arc::new(ReloadingCert { current: RwLock::new(Arc::new(loaded)) });
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio::spawn(watch(resolver, cert, key, seen, node));
    Ok(config)
}

fn record_expiry(node: &Node, certified: &CertifiedKey) {
    if let Some(leaf) = certified.cert.first() {
        switchboard_node::record_certificate(node.metrics(), "http", "file", leaf);
    }
}

type Stamps = (Option<SystemTime>, Option<SystemTime>);

async fn watch(resolver: Arc<ReloadingCert>, cert: PathBuf, key: PathBuf, mut seen: Stamps, node: Arc<Node>) {
    loop {
        tokio::time::sleep(POLL).await;
        let now = (modified(&cert), modified(&key));
        if now == seen {
            continue;
        }
        match load(&cert, &key) {
            Ok(loaded) => {
                record_expiry(&node, &loaded);
                *resolver.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
                seen = now;
                tracing::info!(cert = %cert.display(), "HTTP/WebSocket TLS certificate reloaded");
            }
            // Files may be mid-rotation (cert written, key not yet): retry at the next poll.
            Err(e) => tracing::warn!(error = %e, "TLS certificate reload failed; keeping the old one"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_relay::{LocalBus, RelayConfig, Verifier, VerifyKey};

    /// Write a self-signed certificate valid until `year`-01-01 into `dir`; its expiry.
    fn write(dir: &Path, year: i32) -> i64 {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = params.self_signed(&key).expect("certificate");
        for (name, pem) in [("key.pem", key.serialize_pem()), ("cert.pem", cert.pem())] {
            std::fs::write(dir.join(format!("{name}.tmp")), pem).expect("write");
            std::fs::rename(dir.join(format!("{name}.tmp")), dir.join(name)).expect("rename");
        }
        params.not_after.unix_timestamp()
    }

    #[tokio::test]
    async fn the_served_certificate_expiry_is_a_gauge_that_follows_reloads() {
        let dir = std::env::temp_dir().join(format!("switchboard-tls-gauge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let first = write(&dir, 2031);
        let verifier = Verifier::new(&VerifyKey::Hmac(b"0123456789abcdef0123456789abcdef".to_vec()), 5).expect("key");
        let node = Node::start(RelayConfig::default(), verifier, Arc::new(LocalBus::new())).await.expect("node");
        server_config(dir.join("cert.pem"), dir.join("key.pem"), node.clone()).expect("TLS config");
        let label = switchboard_relay::metrics::CertificateLabel { listener: "http", source: "file" };
        let gauge = node.metrics().tls_certificate_expiry.get_or_create(&label).clone();
        assert_eq!(gauge.get(), first);
        assert!(node.metrics().encode().contains(&format!(
            "switchboard_tls_certificate_expiry_timestamp_seconds{{listener=\"http\",source=\"file\"}} {first}"
        )));
        // A renewal: the watcher reloads the files and the gauge follows (bounded wait).
        let second = write(&dir, 2033);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while gauge.get() != second {
            assert!(tokio::time::Instant::now() < deadline, "the gauge did not follow the renewal");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
