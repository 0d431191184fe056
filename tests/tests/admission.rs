//! Admission control over real sockets: the WebSocket `Origin` allow-list, connection caps
//! per IP address and per user, and operator bans that outlive the kick (on every node,
//! including one started during the ban) and end on time.

use switchboard_protocol::pb::server_frame;
use switchboard_protocol::{close_code, ErrorCode};
use switchboard_tests::raw::{RawWs, Received};
use switchboard_tests::{token, wait_for, within, NatsServer, NodeOptions, TestNode, WAIT};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn node_with(args: &[&str]) -> NodeOptions {
    NodeOptions { args: args.iter().map(|a| a.to_string()).collect(), ..Default::default() }
}

/// Connect with an `Origin` header; the HTTP status of a refused upgrade, or 101.
async fn ws_status_with_origin(node: &TestNode, origin: Option<&str>) -> u16 {
    let mut req = node.ws_url().into_client_request().expect("request");
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().expect("header value"));
    }
    match within(WAIT, "WebSocket upgrade", tokio_tungstenite::connect_async(req)).await {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected WebSocket error: {e}"),
    }
}

/// Hello with `token`; the close code if the server refused the session.
async fn refused(node: &TestNode, token: &str) -> Option<u16> {
    let mut ws = RawWs::connect(&node.ws_url()).await;
    ws.hello(token).await;
    match ws.next().await {
        Received::Frame(server_frame::Kind::Welcome(_)) => None,
        Received::Frame(server_frame::Kind::Error(e)) => {
            assert!(e.fatal, "a refusal is fatal: {e:?}");
            ws.closed().await
        }
        other => panic!("expected Welcome or Error, got {other:?}"),
    }
}

#[tokio::test]
async fn websocket_origins_outside_the_allow_list_are_refused() {
    let node =
        TestNode::start(node_with(&["--allowed-origins", "https://app.example.com,http://127.0.0.1:3000"])).await;
    assert_eq!(ws_status_with_origin(&node, Some("https://evil.example.net")).await, 403);
    assert_eq!(ws_status_with_origin(&node, Some("https://app.example.com.evil.net")).await, 403);
    assert_eq!(ws_status_with_origin(&node, Some("https://app.example.com")).await, 101);
    assert_eq!(ws_status_with_origin(&node, Some("http://127.0.0.1:3000")).await, 101);
    // Native clients send no Origin: allowed.
    assert_eq!(ws_status_with_origin(&node, None).await, 101);
    // Without the flag any origin may connect.
    let open = TestNode::start(NodeOptions::default()).await;
    assert_eq!(ws_status_with_origin(&open, Some("https://evil.example.net")).await, 101);
}

#[tokio::test]
async fn connections_per_ip_and_sessions_per_user_are_capped() {
    let node = TestNode::start(node_with(&["--max-connections-per-ip", "3", "--max-sessions-per-user", "2"])).await;
    let too_many = Some(close_code(ErrorCode::TooManyConnections));
    // Two sessions of alice, the third is refused; bob still gets in.
    let (a1, _) = RawWs::authenticated(&node.ws_url(), &token("alice", &[])).await;
    let (_a2, _) = RawWs::authenticated(&node.ws_url(), &token("alice", &[])).await;
    assert_eq!(refused(&node, &token("alice", &[])).await, too_many, "third session of one user");
    let (_b1, _) = RawWs::authenticated(&node.ws_url(), &token("bob", &[])).await;
    // Three connections from 127.0.0.1 are open: the fourth is refused before Hello.
    let mut fourth = RawWs::connect(&node.ws_url()).await;
    match fourth.next().await {
        Received::Frame(server_frame::Kind::Error(e)) => assert_eq!(e.code(), ErrorCode::TooManyConnections),
        other => panic!("expected TOO_MANY_CONNECTIONS, got {other:?}"),
    }
    assert_eq!(fourth.closed().await, too_many);
    // Slots come back when connections close.
    a1.close().await;
    wait_for(WAIT, "a slot to free up", || async {
        let mut ws = RawWs::connect(&node.ws_url()).await;
        ws.hello(&token("carol", &[])).await;
        matches!(ws.next().await, Received::Frame(server_frame::Kind::Welcome(_))).then_some(())
    })
    .await;
    assert!(node.metric("switchboard_errors_total{code=\"ERROR_CODE_TOO_MANY_CONNECTIONS\"}").await >= 2.0);
}

#[tokio::test]
async fn a_ban_keeps_the_user_out_on_every_node_until_it_ends() {
    let nats = NatsServer::start().await;
    let opts = |id: &str| NodeOptions {
        nats_url: Some(nats.url()),
        node_id: Some(id.into()),
        args: vec!["--admin-key".into(), "k".into()],
        ..Default::default()
    };
    let (n1, n2) = tokio::join!(TestNode::start(opts("alpha")), TestNode::start(opts("beta")));
    let mallory = token("mallory", &[]);
    let (mut session, _) = RawWs::authenticated(&n2.ws_url(), &mallory).await;
    let (status, body) =
        n1.admin(Some("k"), "/api/users/mallory/disconnect", Some(r#"{"reason":"abuse","ban_seconds":3}"#)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(session.closed().await, Some(close_code(ErrorCode::Kicked)));
    let banned = Some(close_code(ErrorCode::Banned));
    // The same (still valid) token is refused on both nodes, and on a node started now.
    assert_eq!(refused(&n1, &mallory).await, banned);
    assert_eq!(refused(&n2, &mallory).await, banned);
    let n3 = TestNode::start(opts("gamma")).await;
    assert_eq!(refused(&n3, &mallory).await, banned);
    // Others are not affected.
    assert_eq!(refused(&n1, &token("alice", &[])).await, None);
    // The ban ends on time.
    wait_for(std::time::Duration::from_secs(10), "the ban to end", || async {
        refused(&n1, &mallory).await.is_none().then_some(())
    })
    .await;
    let (status, _) = n1.admin(Some("k"), "/api/users/mallory/disconnect", Some(r#"{"ban_seconds":99999999}"#)).await;
    assert_eq!(status, 400, "a ban longer than a year is refused");
}

#[tokio::test]
async fn floods_and_room_hoarding_are_refused_per_request() {
    use switchboard_protocol::pb::{client_frame, Join, Publish};
    let node = TestNode::start(node_with(&["--request-rate", "5", "--max-rooms-per-session", "2"])).await;
    let (mut ws, _) = RawWs::authenticated(&node.ws_url(), &token("flood", &["*"])).await;
    let join = |room: &str| client_frame::Kind::Join(Join { room: room.into(), resume_from: None });
    // Too many rooms: the third join is refused, the session goes on.
    for (id, room) in [(2, "r1"), (3, "r2"), (4, "r3")] {
        ws.send(id, join(room)).await;
    }
    let mut codes = Vec::new();
    while codes.len() < 3 {
        match ws.frame().await {
            server_frame::Kind::Joined(_) => codes.push(None),
            server_frame::Kind::Error(e) => codes.push(Some(e.code())),
            _ => {}
        }
    }
    assert_eq!(codes, [None, None, Some(ErrorCode::TooManyRooms)]);
    // A flood beyond the rate (5/s, bursts of 10; the joins took 3): refused per request.
    for id in 10..40 {
        let p = Publish { room: "r1".into(), payload: "x".into(), reliable: false, kind: String::new() };
        ws.send(id, client_frame::Kind::Publish(p)).await;
    }
    let (mut acked, mut limited) = (0, 0);
    while acked + limited < 30 {
        match ws.frame().await {
            server_frame::Kind::Ack(_) => acked += 1,
            server_frame::Kind::Error(e) if e.code() == ErrorCode::RateLimited => limited += 1,
            _ => {}
        }
    }
    assert!((7..=9).contains(&acked) && limited >= 21, "acked {acked}, limited {limited}");
    // The session is still served.
    ws.send(50, client_frame::Kind::Ping(Default::default())).await;
    within(WAIT, "a pong", async { while !matches!(ws.frame().await, server_frame::Kind::Pong(_)) {} }).await;
}
