//! WebTransport over real QUIC against a real node: the handshake, refusals with their
//! application close codes, and a WebTransport client talking to a WebSocket client.

use bytes::Bytes;
use switchboard_protocol::pb::{client_frame, server_frame, Join, Publish};
use switchboard_protocol::{close_code, ErrorCode};
use switchboard_tests::raw::RawWs;
use switchboard_tests::raw_wt::{RawWt, WtReceived};
use switchboard_tests::{token, NodeOptions, TestNode};

#[tokio::test]
async fn embedded_node_serves_webtransport_and_websocket_together() {
    let node = TestNode::start(NodeOptions::default()).await;
    let hash = node.cert_hash().await;
    assert_eq!(hash.len(), 64, "hex SHA-256: {hash}");
    let (mut wt, welcome) = RawWt::authenticated(&node.wt_url(), &hash, &token("wendy", &["demo"])).await;
    assert_eq!(welcome.user, "wendy");
    wt.send(2, client_frame::Kind::Join(Join { room: "demo".into(), resume_from: None })).await;
    assert!(matches!(wt.frame().await, server_frame::Kind::Joined(_)));
    let (mut ws, _) = RawWs::authenticated(&node.ws_url(), &token("walt", &["demo"])).await;
    ws.send(2, client_frame::Kind::Join(Join { room: "demo".into(), resume_from: None })).await;
    assert!(matches!(ws.frame().await, server_frame::Kind::Joined(j) if j.participants.len() == 2));
    assert!(matches!(wt.frame().await, server_frame::Kind::ParticipantJoined(_)));
    let publish =
        Publish { room: "demo".into(), payload: Bytes::from_static(b"over quic"), reliable: true, kind: String::new() };
    wt.send(3, client_frame::Kind::Publish(publish)).await;
    assert!(matches!(wt.frame().await, server_frame::Kind::Ack(_)));
    assert!(matches!(ws.frame().await, server_frame::Kind::Message(m) if &m.payload[..] == b"over quic"));
    assert_eq!(node.metric("switchboard_connections{transport=\"webtransport\"}").await, 1.0);
}

#[tokio::test]
async fn webtransport_refusals_close_with_their_codes() {
    let node = TestNode::start(NodeOptions::default()).await;
    let hash = node.cert_hash().await;
    // A bad token.
    let mut wt = RawWt::connect(&node.wt_url(), &hash).await;
    wt.hello("forged").await;
    assert!(matches!(wt.frame().await, server_frame::Kind::Error(e) if e.code() == ErrorCode::TokenInvalid && e.fatal));
    assert!(
        matches!(wt.next().await, WtReceived::Closed(Some(c)) if c == u64::from(close_code(ErrorCode::TokenInvalid)))
    );
    // A record announcing more than the frame limit.
    let (mut wt, _) = RawWt::authenticated(&node.wt_url(), &hash, &token("wendy", &["demo"])).await;
    wt.send_raw(&(16u32 * 1024 * 1024).to_be_bytes()).await;
    loop {
        match wt.next().await {
            WtReceived::Frame(server_frame::Kind::Error(e)) => assert_eq!(e.code(), ErrorCode::FrameTooLarge),
            WtReceived::Frame(other) => panic!("unexpected {other:?}"),
            WtReceived::Closed(code) => {
                assert_eq!(code, Some(u64::from(close_code(ErrorCode::FrameTooLarge))));
                break;
            }
        }
    }
    // Garbage inside a well-formed record: an error, the session carries on.
    let (mut wt, _) = RawWt::authenticated(&node.wt_url(), &hash, &token("wendy", &["demo"])).await;
    wt.send_raw(&switchboard_protocol::framing::encode_record(&[0xff, 0xff])).await;
    assert!(matches!(wt.frame().await, server_frame::Kind::Error(e) if e.code() == ErrorCode::BadFrame && !e.fatal));
    wt.send(5, client_frame::Kind::Ping(Default::default())).await;
    assert!(matches!(wt.frame().await, server_frame::Kind::Pong(_)));
}
