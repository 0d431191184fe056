//! Token lifetime over a real connection: expiry ends a session that did not refresh, with
//! TOKEN_EXPIRED; an in-band refresh extends it; a silent client is closed with
//! HEARTBEAT_TIMEOUT.

use switchboard_protocol::pb::{client_frame, server_frame, RefreshToken};
use switchboard_protocol::{close_code, ErrorCode};
use switchboard_relay::auth::now_secs;
use switchboard_tests::raw::{RawWs, Received};
use switchboard_tests::{claims, sign, NodeOptions, TestNode};

fn token_until(sub: &str, exp: u64) -> String {
    let mut c = claims(sub, &["demo"]);
    c.exp = exp;
    sign(&c)
}

#[tokio::test]
async fn expiry_disconnects_and_refresh_extends() {
    let node = TestNode::start(NodeOptions::default()).await;
    // Both sessions start with tokens expiring at the same second.
    let exp = now_secs() + 2;
    let (mut expiring, w) = RawWs::authenticated(&node.ws_url(), &token_until("ann", exp)).await;
    assert_eq!(w.token_expires_at, exp);
    let (mut refreshed, _) = RawWs::authenticated(&node.ws_url(), &token_until("ben", exp)).await;
    refreshed.send(2, client_frame::Kind::RefreshToken(RefreshToken { token: token_until("ben", exp + 3600) })).await;
    assert!(matches!(refreshed.frame().await, server_frame::Kind::Ack(a) if a.ref_id == 2));
    // A refresh for another user is refused.
    refreshed.send(3, client_frame::Kind::RefreshToken(RefreshToken { token: token_until("eve", exp + 3600) })).await;
    assert!(matches!(refreshed.frame().await, server_frame::Kind::Error(e) if e.code() == ErrorCode::Forbidden));

    match expiring.next().await {
        Received::Frame(server_frame::Kind::Error(e)) => {
            assert_eq!((e.code(), e.fatal), (ErrorCode::TokenExpired, true))
        }
        other => panic!("expected TOKEN_EXPIRED, got {other:?}"),
    }
    assert_eq!(expiring.closed().await, Some(close_code(ErrorCode::TokenExpired)));
    // The refreshed session outlives the expiry that just ended the other one.
    refreshed.send(4, client_frame::Kind::Ping(Default::default())).await;
    assert!(matches!(refreshed.frame().await, server_frame::Kind::Pong(_)));
}

/// A client that goes silent for three heartbeat intervals is closed with
/// HEARTBEAT_TIMEOUT; one that keeps sending frames (pings) is not, and neither is a long
/// token's holder mistaken for an expired one (one timer serves both deadlines).
#[tokio::test]
async fn silence_ends_the_session_with_heartbeat_timeout() {
    let node =
        TestNode::start(NodeOptions { args: vec!["--heartbeat".into(), "1".into()], ..Default::default() }).await;
    let exp = now_secs() + 3600;
    let started = std::time::Instant::now();
    let (mut silent, w) = RawWs::authenticated(&node.ws_url(), &token_until("sid", exp)).await;
    assert_eq!(w.heartbeat_ms, 1000);
    let (mut chatty, _) = RawWs::authenticated(&node.ws_url(), &token_until("cat", exp)).await;
    let pinger = tokio::spawn(async move {
        for i in 0..8 {
            chatty.send(10 + i, client_frame::Kind::Ping(Default::default())).await;
            assert!(matches!(chatty.frame().await, server_frame::Kind::Pong(_)), "the active client is served");
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        chatty
    });
    match silent.next().await {
        Received::Frame(server_frame::Kind::Error(e)) => {
            assert_eq!((e.code(), e.fatal), (ErrorCode::HeartbeatTimeout, true), "{}", e.message)
        }
        other => panic!("expected HEARTBEAT_TIMEOUT, got {other:?}"),
    }
    assert_eq!(silent.closed().await, Some(close_code(ErrorCode::HeartbeatTimeout)));
    let after = started.elapsed();
    assert!(after >= std::time::Duration::from_millis(2900), "closed too early: {after:?}");
    // The active one outlived three intervals of the silent one's silence.
    let mut chatty = pinger.await.expect("the active client kept working");
    chatty.send(99, client_frame::Kind::Ping(Default::default())).await;
    assert!(matches!(chatty.frame().await, server_frame::Kind::Pong(_)));
}
