//! A configured WebTransport certificate is reloaded when its files change, without
//! dropping the sessions already connected.

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
