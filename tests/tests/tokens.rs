//! Token lifetime over a real connection: expiry ends a session that did not refresh, with
//! TOKEN_EXPIRED; an in-band refresh extends it.

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
