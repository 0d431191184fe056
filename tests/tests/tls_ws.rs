//! TLS for HTTP and WebSocket (`wss://`): the node serves its configured certificate,
//! a client trusting it connects, and when the files change new connections get the new
//! certificate while the session already open carries on.

use std::process::Stdio;
use std::time::Duration;
use switchboard_client::{Client, ClientConfig, ClientError};
use switchboard_tests::{binary, certificate_pem, free_tcp_port, token, wait_for, write_identity, TEST_SECRET};
use wtransport::Identity;

/// Write a fresh identity into `dir`; returns its certificate PEM.
fn rotate(dir: &std::path::Path) -> Vec<u8> {
    certificate_pem(&write_identity(dir))
}

struct Node(std::process::Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn connect(url: &str, ca: &[u8], user: &str) -> Result<Client, ClientError> {
    Client::connect(ClientConfig::new(url, token(user, &["demo"])).with_ca_pem(ca.to_vec())).await.map(|(c, _)| c)
}

#[tokio::test]
async fn wss_serves_the_configured_certificate_and_reloads_it() {
    let dir = std::env::temp_dir().join(format!("switchboard-wss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let first = rotate(&dir);
    let port = free_tcp_port();
    let _node = Node(
        std::process::Command::new(binary("switchboard"))
            .args(["--http-addr", &format!("127.0.0.1:{port}"), "--no-webtransport"])
            .arg("--http-tls-cert")
            .arg(dir.join("cert.pem"))
            .arg("--http-tls-key")
            .arg(dir.join("key.pem"))
            .env("SWITCHBOARD_JWT_SECRET", TEST_SECRET)
            .env_remove("SWITCHBOARD_NATS_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting switchboard"),
    );
    let url = format!("wss://127.0.0.1:{port}/ws");
    let old = wait_for(Duration::from_secs(30), "the wss listener", || {
        let (url, first) = (url.clone(), first.clone());
        async move { connect(&url, &first, "tess").await.ok() }
    })
    .await;
    assert_eq!(old.welcome().user, "tess");
    // Plain ws:// to the TLS port fails; a client that does not trust the certificate fails.
    assert!(connect(&format!("ws://127.0.0.1:{port}/ws"), &first, "x").await.is_err());
    let other = Identity::self_signed(["localhost"]).expect("identity");
    let mut untrusted = Vec::new();
    for cert in other.certificate_chain().as_slice() {
        untrusted.extend_from_slice(cert.to_pem().as_bytes());
    }
    assert!(connect(&url, &untrusted, "x").await.is_err(), "an untrusted certificate is refused");

    // Rotate: new connections get the new certificate; the open session carries on.
    let second = rotate(&dir);
    wait_for(Duration::from_secs(20), "the reloaded certificate", || {
        let (url, second) = (url.clone(), second.clone());
        async move { connect(&url, &second, "tina").await.ok() }
    })
    .await;
    assert!(connect(&url, &first, "x").await.is_err(), "the old certificate is no longer served");
    old.join("demo").await.expect("the session opened before the reload still works");
}
