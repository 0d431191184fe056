//! Bad input over real WebSocket connections to a real node: each refusal has its code,
//! and nothing else breaks.

use bytes::Bytes;
use switchboard_protocol::pb::{client_frame, server_frame, Join, Publish};
use switchboard_protocol::{close_code, ErrorCode};
use switchboard_relay::auth::now_secs;
use switchboard_tests::raw::{RawWs, Received};
use switchboard_tests::{claims, sign, token, NodeOptions, TestNode};

fn expect_error(frame: server_frame::Kind, code: ErrorCode) -> switchboard_protocol::pb::Error {
    match frame {
        server_frame::Kind::Error(e) if e.code() == code => e,
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

async fn refused(node: &TestNode, token: &str, code: ErrorCode) {
    let mut ws = RawWs::connect(&node.ws_url()).await;
    ws.hello(token).await;
    let e = expect_error(ws.frame().await, code);
    assert!(e.fatal, "{code:?} must be fatal");
    assert_eq!(ws.closed().await, Some(close_code(code)), "close code for {code:?}");
}

#[tokio::test]
async fn rejected_tokens_each_get_their_code() {
    let node = TestNode::start(NodeOptions::default()).await;
    // Signed with another secret.
    let forged = switchboard_relay::Minter::hmac(b"not-the-server-secret-not-the-server")
        .mint(&claims("eve", &["demo"]))
        .unwrap();
    refused(&node, &forged, ErrorCode::TokenInvalid).await;
    // Expired.
    let mut c = claims("eve", &["demo"]);
    c.exp = now_secs() - 300;
    refused(&node, &sign(&c), ErrorCode::TokenExpired).await;
    // Not yet valid.
    let mut c = claims("eve", &["demo"]);
    c.nbf = Some(now_secs() + 300);
    refused(&node, &sign(&c), ErrorCode::TokenNotYetValid).await;
    // alg: none.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(serde_json::to_vec(&claims("eve", &["demo"])).unwrap())
    );
    refused(&node, &none, ErrorCode::TokenAlgorithm).await;
    refused(&node, "not a jwt", ErrorCode::TokenInvalid).await;

    // A valid token without the room grant: the join is refused, the session stays.
    let (mut ws, _) = RawWs::authenticated(&node.ws_url(), &token("eve", &["lobby"])).await;
    ws.send(7, client_frame::Kind::Join(Join { room: "demo".into(), resume_from: None })).await;
    let e = expect_error(ws.frame().await, ErrorCode::Forbidden);
    assert_eq!((e.ref_id, e.fatal), (7, false));
    // Publishing without the publish grant.
    let mut c = claims("mallory", &["lobby"]);
    c.publish = Some(false);
    let (mut ws, _) = RawWs::authenticated(&node.ws_url(), &sign(&c)).await;
    ws.send(2, client_frame::Kind::Join(Join { room: "lobby".into(), resume_from: None })).await;
    assert!(matches!(ws.frame().await, server_frame::Kind::Joined(_)));
    ws.send(
        3,
        client_frame::Kind::Publish(Publish {
            room: "lobby".into(),
            payload: Bytes::from_static(b"x"),
            reliable: true,
            kind: String::new(),
        }),
    )
    .await;
    expect_error(ws.frame().await, ErrorCode::Forbidden);

    assert!(node.metric("switchboard_auth_failures_total{code=\"ERROR_CODE_TOKEN_EXPIRED\"}").await >= 1.0);
}

#[tokio::test]
async fn malformed_and_oversized_frames_are_refused_while_others_carry_on() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (mut bystander, _) = RawWs::authenticated(&node.ws_url(), &token("bob", &["demo"])).await;
    bystander.send(2, client_frame::Kind::Join(Join { room: "demo".into(), resume_from: None })).await;
    assert!(matches!(bystander.frame().await, server_frame::Kind::Joined(_)));

    // Frames before Hello.
    let mut early = RawWs::connect(&node.ws_url()).await;
    early.send(3, client_frame::Kind::Join(Join { room: "demo".into(), resume_from: None })).await;
    expect_error(early.frame().await, ErrorCode::HelloRequired);
    assert_eq!(early.closed().await, Some(close_code(ErrorCode::HelloRequired)));

    let (mut eve, _) = RawWs::authenticated(&node.ws_url(), &token("eve", &["demo"])).await;
    eve.send(2, client_frame::Kind::Join(Join { room: "demo".into(), resume_from: None })).await;
    assert!(matches!(eve.frame().await, server_frame::Kind::Joined(_)));
    assert!(matches!(bystander.frame().await, server_frame::Kind::ParticipantJoined(_)));
    // Malformed protobuf: an error, the session carries on.
    eve.send_bytes(Bytes::from_static(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f])).await;
    let e = expect_error(eve.frame().await, ErrorCode::BadFrame);
    assert!(!e.fatal);
    // A valid message with no kind (an unknown frame type).
    eve.send_bytes(Bytes::from_static(&[0x08, 0x05, 0xfa, 0x3e, 0x01, 0x00])).await;
    expect_error(eve.frame().await, ErrorCode::BadFrame);
    eve.send(
        4,
        client_frame::Kind::Publish(Publish {
            room: "demo".into(),
            payload: Bytes::from_static(b"still here"),
            reliable: true,
            kind: String::new(),
        }),
    )
    .await;
    assert!(matches!(eve.frame().await, server_frame::Kind::Ack(a) if a.ref_id == 4));
    match bystander.frame().await {
        server_frame::Kind::Message(m) => assert_eq!(&m.payload[..], b"still here"),
        other => panic!("expected the message, got {other:?}"),
    }
    // Oversized frame: fatal, closed with FRAME_TOO_LARGE.
    eve.send_bytes(vec![0u8; switchboard_protocol::limits::MAX_FRAME_BYTES + 1024]).await;
    loop {
        match eve.next().await {
            Received::Frame(server_frame::Kind::Error(e)) => {
                assert_eq!(e.code(), ErrorCode::FrameTooLarge);
            }
            Received::Frame(other) => panic!("unexpected {other:?}"),
            Received::Closed(code) => {
                assert_eq!(code, Some(close_code(ErrorCode::FrameTooLarge)));
                break;
            }
        }
    }
    // The bystander sees eve leave and keeps working.
    match bystander.frame().await {
        server_frame::Kind::ParticipantLeft(l) => assert_eq!(l.participant.unwrap().user, "eve"),
        other => panic!("expected ParticipantLeft, got {other:?}"),
    }
    bystander.send(9, client_frame::Kind::Ping(Default::default())).await;
    assert!(matches!(bystander.frame().await, server_frame::Kind::Pong(_)));
    assert!(node.metric("switchboard_errors_total{code=\"ERROR_CODE_BAD_FRAME\"}").await >= 2.0);
}

/// The WebSocket layer itself: a ping is answered with its payload, a text message is not
/// protobuf (BAD_FRAME, the session carries on), and a client's close is answered with a
/// close frame.
#[tokio::test]
async fn websocket_pings_text_and_closes_are_handled() {
    use tokio_tungstenite::tungstenite::Message;
    let node = TestNode::start(NodeOptions::default()).await;
    let (mut ws, _) = RawWs::authenticated(&node.ws_url(), &token("wendy", &["demo"])).await;
    ws.send_message(Message::Ping(Bytes::from_static(b"are you there"))).await;
    match ws.next_message().await {
        Some(Message::Pong(p)) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected the pong, got {other:?}"),
    }
    ws.send_message(Message::Text("not protobuf".into())).await;
    let e = expect_error(ws.frame().await, ErrorCode::BadFrame);
    assert!(!e.fatal);
    ws.send(7, client_frame::Kind::Ping(Default::default())).await;
    assert!(matches!(ws.frame().await, server_frame::Kind::Pong(_)), "the session carried on");
    ws.send_message(Message::Close(None)).await;
    loop {
        match ws.next_message().await {
            Some(Message::Close(_)) => break,
            Some(_) => continue,
            None => panic!("the connection ended without a close frame"),
        }
    }
}

/// A client that floods WebSocket pings is answered a few pongs (a keep-alive needs one
/// every few seconds), then closed with `RATE_LIMITED`: it neither makes the node buffer
/// pongs for it (it never reads them) nor spend a core answering them.
#[tokio::test]
async fn a_websocket_ping_flood_is_cut_off_not_buffered() {
    use tokio_tungstenite::tungstenite::Message;
    let node = TestNode::start(NodeOptions::default()).await;
    let (mut ws, _) = RawWs::authenticated(&node.ws_url(), &token("pinger", &["demo"])).await;
    let rss_before = node.rss_kib().expect("node RSS");
    let ping = Bytes::from(vec![7u8; 125]);
    // 200,000 pings would make 25 MB of pongs. Bounded in count and time: the flood ends when
    // the node has closed the connection (what arrives after its close is read and dropped
    // for actix-http's linger, so the sends may all succeed) or stops reading it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut sent = 0u64;
    while sent < 200_000 && tokio::time::Instant::now() < deadline {
        let send = ws.try_send_message(Message::Ping(ping.clone()));
        match tokio::time::timeout(std::time::Duration::from_secs(1), send).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) | Err(_) => break, // closed, or pushed back
        }
    }
    let rss_after = node.rss_kib().expect("node RSS");
    let growth = rss_after.saturating_sub(rss_before);
    let mut pongs = 0u64;
    let close = loop {
        match ws.next_message().await {
            Some(Message::Pong(_)) => pongs += 1,
            Some(Message::Close(c)) => break c.map(|c| u16::from(c.code)),
            Some(_) => {}
            None => break None,
        }
    };
    eprintln!("sent {sent} pings, {pongs} pongs back, closed with {close:?}; node RSS {rss_before} -> {rss_after} KiB");
    assert_eq!(close, Some(close_code(ErrorCode::RateLimited)));
    assert!(pongs <= 100, "{pongs} pongs answered to a flood");
    assert!(growth < 8 * 1024, "node RSS grew by {growth} KiB");
}
