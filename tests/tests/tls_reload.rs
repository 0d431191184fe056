//! A configured WebTransport certificate is reloaded when its files change, without
//! dropping the sessions already connected; a generated one is rotated on schedule.

use std::time::Duration;
use switchboard_protocol::pb::{client_frame, server_frame};
use switchboard_tests::raw_wt::RawWt;
use switchboard_tests::{token, wait_for, write_identity, NodeOptions, TestNode};
use wtransport::tls::Sha256DigestFmt;

/// Write a fresh identity into `dir`; returns its certificate's SHA-256 in hex.
fn rotate(dir: &std::path::Path) -> String {
    let identity = write_identity(dir);
    identity.certificate_chain().as_slice()[0].hash().fmt(Sha256DigestFmt::DottedHex).replace(':', "")
}

#[tokio::test]
async fn configured_certificate_is_reloaded_on_change() {
    let dir = std::env::temp_dir().join(format!("switchboard-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = rotate(&dir);
    let node = TestNode::start(NodeOptions {
        args: vec![
            "--tls-cert".into(),
            dir.join("cert.pem").display().to_string(),
            "--tls-key".into(),
            dir.join("key.pem").display().to_string(),
        ],
        ..Default::default()
    })
    .await;
    // No generated certificate to advertise.
    assert_eq!(node.get("/certificate.sha256").await.0, 404);
    let (mut old, _) = RawWt::authenticated(&node.wt_url(), &first, &token("tess", &["demo"])).await;

    let second = rotate(&dir);
    assert_ne!(first, second);
    let url = node.wt_url();
    wait_for(Duration::from_secs(30), "the new certificate to be served", || {
        let (url, second) = (url.clone(), second.clone());
        async move { RawWt::try_connect(&url, &second).await.ok().map(|_| ()) }
    })
    .await;
    // The session opened with the old certificate carries on.
    old.send(9, client_frame::Kind::Ping(Default::default())).await;
    assert!(matches!(old.frame().await, server_frame::Kind::Pong(_)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A generated certificate is replaced every `--wt-cert-rotation`: `/certificate.sha256`
/// then serves the new hash, new connections get the new certificate (the old hash no longer
/// opens one), and sessions opened before carry on.
#[tokio::test]
async fn generated_certificate_rotates() {
    let node =
        TestNode::start(NodeOptions { args: vec!["--wt-cert-rotation".into(), "2".into()], ..Default::default() })
            .await;
    let hash = |body: String| body.trim().to_owned();
    assert_eq!(node.get("/certificate.sha256").await.0, 200);
    // Connect with the hash served (again if a rotation came between reading and connecting).
    let node_ref = &node;
    let (first, mut old) = wait_for(Duration::from_secs(30), "a session with the served hash", || async move {
        let first = hash(node_ref.get("/certificate.sha256").await.1);
        let wt = RawWt::try_connect(&node_ref.wt_url(), &first).await.ok()?;
        Some((first, wt))
    })
    .await;
    old.hello(&token("rhea", &["demo"])).await;
    assert!(matches!(old.frame().await, server_frame::Kind::Welcome(_)));
    let second = wait_for(Duration::from_secs(30), "a rotated certificate's hash", || async {
        let (_, body) = node.get("/certificate.sha256").await;
        let now = hash(body);
        (now != first).then_some(now)
    })
    .await;
    // The served hash opens a connection; the first one no longer does (once the endpoint
    // presents a newer certificate than the first, it never presents the first again).
    let url = node.wt_url();
    wait_for(Duration::from_secs(30), "a connection with a served hash", || {
        let (url, node) = (url.clone(), node_ref);
        async move {
            let (_, body) = node.get("/certificate.sha256").await;
            RawWt::try_connect(&url, &hash(body)).await.ok().map(|_| ())
        }
    })
    .await;
    assert!(RawWt::try_connect(&url, &first).await.is_err(), "the first certificate is still presented");
    assert_ne!(first, second);
    // The session opened with the first certificate carries on.
    old.send(9, client_frame::Kind::Ping(Default::default())).await;
    assert!(matches!(old.frame().await, server_frame::Kind::Pong(_)));
    // The expiry gauge follows the rotation (a generated certificate, valid 13 days from now).
    let expiry = node
        .metric("switchboard_tls_certificate_expiry_timestamp_seconds{listener=\"webtransport\",source=\"generated\"}")
        .await;
    assert!(expiry > 0.0);
}
