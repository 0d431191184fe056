//! The admin API over HTTP against two real nodes on NATS: key checks, cluster-wide room
//! listing, server messages, kicks, disconnects, drain and the OpenAPI document.

use switchboard_client::{Client, ClientConfig, ErrorCode, Event, Events};
use switchboard_tests::{token, wait_for, within, NatsServer, NodeOptions, TestNode, WAIT};

const KEY: &str = "test-admin-key-7f3a";

async fn next_event(events: &mut Events) -> Event {
    within(WAIT, "a client event", events.recv()).await.expect("event stream ended")
}

#[tokio::test]
async fn admin_api_acts_cluster_wide() {
    let nats = NatsServer::start().await;
    let opts = |id: &str| NodeOptions {
        nats_url: Some(nats.url()),
        node_id: Some(id.into()),
        args: vec!["--admin-key".into(), KEY.into()],
        ..Default::default()
    };
    let (n1, n2) = tokio::join!(TestNode::start(opts("adm1")), TestNode::start(opts("adm2")));

    // Key checks.
    assert_eq!(n1.admin(None, "/api/rooms", None).await.0, 401);
    let (status, body) = n1.admin(Some("wrong"), "/api/rooms", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")));
    let plain = TestNode::start(NodeOptions::default()).await;
    let (status, body) = plain.admin(Some(KEY), "/api/rooms", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("admin_disabled")));

    let (alice, mut alice_events) =
        Client::connect(ClientConfig::new(n1.ws_url(), token("alice", &["demo"]))).await.unwrap();
    let (bob, mut bob_events) = Client::connect(ClientConfig::new(n2.ws_url(), token("bob", &["demo"]))).await.unwrap();
    alice.join("demo").await.unwrap();
    bob.join("demo").await.unwrap();
    assert!(matches!(next_event(&mut alice_events).await, Event::ParticipantJoined(_)));

    // Rooms and participants, cluster-wide, from either node.
    let (status, body) = n2.admin(Some(KEY), "/api/rooms", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rooms"], serde_json::json!([{"room": "demo", "participants": 2}]));
    let (_, body) = n1.admin(Some(KEY), "/api/rooms/demo/participants", None).await;
    let users: Vec<&str> =
        body["participants"].as_array().unwrap().iter().map(|p| p["user"].as_str().unwrap()).collect();
    assert_eq!(users, vec!["alice", "bob"]);
    assert_eq!(n1.admin(Some(KEY), "/api/rooms/bad.room/participants", None).await.1["error"]["code"], "invalid_room");

    // A server message to the room reaches both nodes' clients, and it is in the room's
    // history: the answer names its offset.
    let (status, body) = n1.admin(Some(KEY), "/api/rooms/demo/messages", Some(r#"{"text":"maintenance at 5"}"#)).await;
    assert_eq!(status, 200, "{body}");
    let offset = body["offset"].as_u64().expect("an offset");
    for events in [&mut alice_events, &mut bob_events] {
        match next_event(events).await {
            Event::Message(m) => {
                assert_eq!((&m.payload[..], m.kind.as_str()), (&b"maintenance at 5"[..], "server"));
                assert_eq!(m.from.unwrap().user, "server");
                assert_eq!(m.offset, offset);
            }
            other => panic!("expected the server message, got {other:?}"),
        }
    }
    // A backend publishes as a user of its own, with an idempotency key: a retry is stored
    // once (same offset, delivered once), after the previous message.
    let publish = r#"{"text":"order shipped","kind":"order","from":{"user":"shopbot","name":"Shop"},"idempotency_key":"order-17"}"#;
    let (status, first) = n2.admin(Some(KEY), "/api/rooms/demo/messages", Some(publish)).await;
    assert_eq!(status, 200, "{first}");
    let (status, retry) = n1.admin(Some(KEY), "/api/rooms/demo/messages", Some(publish)).await;
    assert_eq!((status, &retry["offset"]), (200, &first["offset"]), "{retry}");
    assert!(first["offset"].as_u64().unwrap() > offset);
    for events in [&mut alice_events, &mut bob_events] {
        match next_event(events).await {
            Event::Message(m) => {
                let from = m.from.unwrap();
                assert_eq!((from.user.as_str(), from.name.as_str(), m.kind.as_str()), ("shopbot", "Shop", "order"));
                assert_eq!(Some(m.offset), first["offset"].as_u64());
                assert!(m.reliable);
            }
            other => panic!("expected the backend's message, got {other:?}"),
        }
    }
    // An unreliable publish is live only: accepted, no offset; then a late joiner resuming
    // from the start replays the two reliable messages (and not the unreliable one).
    let (status, body) =
        n1.admin(Some(KEY), "/api/rooms/demo/messages", Some(r#"{"text":"typing","reliable":false}"#)).await;
    assert_eq!((status, body["offset"].is_null(), body["reliable"].as_bool()), (202, true, Some(false)), "{body}");
    for events in [&mut alice_events, &mut bob_events] {
        assert!(matches!(next_event(events).await, Event::Message(m) if !m.reliable && &m.payload[..] == b"typing"));
    }
    let (carol, mut carol_events) =
        Client::connect(ClientConfig::new(n2.ws_url(), token("carol", &["demo"]))).await.unwrap();
    let joined = carol.join_from("demo", Some(0)).await.unwrap();
    assert_eq!(joined.replayed, 2, "{joined:?}");
    for expected in [&b"maintenance at 5"[..], &b"order shipped"[..]] {
        assert!(matches!(next_event(&mut carol_events).await, Event::Message(m) if &m.payload[..] == expected));
    }
    carol.leave("demo").await.unwrap();
    for events in [&mut alice_events, &mut bob_events] {
        assert!(matches!(next_event(events).await, Event::ParticipantJoined(_)));
        assert!(matches!(next_event(events).await, Event::ParticipantLeft(_)));
    }
    // Reserved senders and bad keys are refused.
    for bad in [
        r#"{"text":"x","from":{"user":"admin"}}"#,
        r#"{"text":"x","from":{"user":"bad.id"}}"#,
        r#"{"text":"x","idempotency_key":""}"#,
    ] {
        let (status, body) = n1.admin(Some(KEY), "/api/rooms/demo/messages", Some(bad)).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_argument")), "{bad}");
    }
    // A message to a user connected to the other node.
    assert_eq!(
        n1.admin(Some(KEY), "/api/users/bob/messages", Some(r#"{"text":"hi bob","kind":"notice"}"#)).await.0,
        202
    );
    assert!(
        matches!(next_event(&mut bob_events).await, Event::Message(m) if &m.payload[..] == b"hi bob" && m.room.is_empty())
    );
    // Bad input gets a clear error.
    let (status, body) = n1.admin(Some(KEY), "/api/rooms/demo/messages", Some(r#"{"text":1}"#)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_json")));
    let (status, body) = n1.admin(Some(KEY), "/api/rooms/demo/kick", Some("{}")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_argument")));

    // Kick bob (on node 2) from the room through node 1.
    let (status, _) = n1.admin(Some(KEY), "/api/rooms/demo/kick", Some(r#"{"user":"bob","reason":"spam"}"#)).await;
    assert_eq!(status, 202);
    match next_event(&mut bob_events).await {
        Event::Left(l) => assert_eq!((l.room.as_str(), l.reason.as_str()), ("demo", "spam")),
        other => panic!("expected Left, got {other:?}"),
    }
    match next_event(&mut alice_events).await {
        Event::ParticipantLeft(l) => {
            assert_eq!((l.participant.unwrap().user.as_str(), l.reason.as_str()), ("bob", "spam"))
        }
        other => panic!("expected ParticipantLeft, got {other:?}"),
    }
    // Bob is still connected, just not in the room.
    assert_eq!(bob.publish("demo", "x".into(), true, "").await.unwrap_err().code(), Some(ErrorCode::NotInRoom));

    // Disconnect alice everywhere.
    assert_eq!(n2.admin(Some(KEY), "/api/users/alice/disconnect", Some(r#"{"reason":"banned"}"#)).await.0, 202);
    match next_event(&mut alice_events).await {
        Event::Error(e) => assert_eq!((e.code(), e.message.as_str(), e.fatal), (ErrorCode::Kicked, "banned", true)),
        other => panic!("expected the fatal error, got {other:?}"),
    }
    match next_event(&mut alice_events).await {
        Event::Closed { code, .. } => assert_eq!(code, Some(ErrorCode::Kicked)),
        other => panic!("expected Closed, got {other:?}"),
    }

    // The OpenAPI document needs no key.
    let (status, spec) = n1.admin(None, "/api/openapi.json", None).await;
    assert_eq!((status, spec["openapi"].as_str()), (200, Some("3.0.3")));

    // Drain node 2 through the API: it turns unready and tells bob to move.
    assert_eq!(n2.admin(Some(KEY), "/api/drain", Some("{}")).await.0, 202);
    assert!(matches!(next_event(&mut bob_events).await, Event::GoAway(_)));
    wait_for(WAIT, "node 2 to turn unready", || async { (n2.get("/readyz").await.0 == 503).then_some(()) }).await;
}
