//! Two nodes on one real nats-server, WebSocket clients on each: presence, room messages
//! and signaling cross nodes; a node holds one NATS subscription per room, however many of
//! its sessions are in it.

use bytes::Bytes;
use switchboard_protocol::pb::{client_frame, server_frame, signal, Join, Leave, Publish, Signal, SignalKind};
use switchboard_protocol::ErrorCode;
use switchboard_tests::raw::RawWs;
use switchboard_tests::{token, wait_for, NatsServer, NodeOptions, TestNode, WAIT};

fn join(room: &str) -> client_frame::Kind {
    client_frame::Kind::Join(Join { room: room.into(), resume_from: None })
}

async fn two_nodes(nats: &NatsServer) -> (TestNode, TestNode) {
    let a = TestNode::start(NodeOptions {
        nats_url: Some(nats.url()),
        node_id: Some("alpha".into()),
        ..Default::default()
    });
    let b =
        TestNode::start(NodeOptions { nats_url: Some(nats.url()), node_id: Some("beta".into()), ..Default::default() });
    tokio::join!(a, b)
}

#[tokio::test]
async fn presence_messages_and_signals_cross_nodes() {
    let nats = NatsServer::start().await;
    let (n1, n2) = two_nodes(&nats).await;
    let (mut alice, _) = RawWs::authenticated(&n1.ws_url(), &token("alice", &["demo"])).await;
    alice.send(2, join("demo")).await;
    assert!(matches!(alice.frame().await, server_frame::Kind::Joined(j) if j.participants.len() == 1));

    // Bob joins on the other node and sees alice, who sees him.
    let (mut bob, bob_welcome) = RawWs::authenticated(&n2.ws_url(), &token("bob", &["demo"])).await;
    assert_eq!(bob_welcome.node, "beta");
    bob.send(2, join("demo")).await;
    let server_frame::Kind::Joined(joined) = bob.frame().await else { panic!("expected Joined") };
    let mut users: Vec<(String, String)> =
        joined.participants.iter().map(|p| (p.user.clone(), p.node.clone())).collect();
    users.sort();
    assert_eq!(users, vec![("alice".into(), "alpha".into()), ("bob".into(), "beta".into())]);
    match alice.frame().await {
        server_frame::Kind::ParticipantJoined(pj) => {
            let p = pj.participant.unwrap();
            assert_eq!((p.user.as_str(), p.node.as_str(), p.session), ("bob", "beta", bob_welcome.session_id.clone()));
        }
        other => panic!("expected ParticipantJoined, got {other:?}"),
    }

    // A room message crosses nodes with the server-stamped sender.
    let publish = Publish {
        room: "demo".into(),
        payload: Bytes::from_static(b"hello alpha"),
        reliable: true,
        kind: "chat".into(),
    };
    bob.send(3, client_frame::Kind::Publish(publish)).await;
    assert!(matches!(bob.frame().await, server_frame::Kind::Ack(a) if a.ref_id == 3));
    match alice.frame().await {
        server_frame::Kind::Message(m) => {
            let from = m.from.unwrap();
            assert_eq!((&m.payload[..], m.kind.as_str()), (&b"hello alpha"[..], "chat"));
            assert_eq!(
                (from.user.as_str(), from.node.as_str(), from.session),
                ("bob", "beta", bob_welcome.session_id.clone())
            );
        }
        other => panic!("expected Message, got {other:?}"),
    }

    // Targeted signaling, by user and by session, crosses nodes.
    let offer = Signal {
        room: "demo".into(),
        target: Some(signal::Target::ToUser("bob".into())),
        kind: SignalKind::Offer as i32,
        payload: Bytes::from_static(b"v=0 sdp"),
        call: String::new(),
    };
    alice.send(4, client_frame::Kind::Signal(offer)).await;
    assert!(matches!(alice.frame().await, server_frame::Kind::Ack(a) if a.ref_id == 4));
    match bob.frame().await {
        server_frame::Kind::Signal(s) => {
            assert_eq!((s.kind(), &s.payload[..]), (SignalKind::Offer, &b"v=0 sdp"[..]));
            assert_eq!(s.from.unwrap().user, "alice");
        }
        other => panic!("expected Signal, got {other:?}"),
    }
    // Signaling someone who is not in the room is refused.
    let stray =
        Signal { room: "demo".into(), target: Some(signal::Target::ToUser("mallory".into())), ..Default::default() };
    alice.send(5, client_frame::Kind::Signal(stray)).await;
    assert!(
        matches!(alice.frame().await, server_frame::Kind::Error(e) if e.code() == ErrorCode::TargetNotFound && e.ref_id == 5)
    );

    // Bob leaves: alice is told.
    bob.send(6, client_frame::Kind::Leave(Leave { room: "demo".into() })).await;
    assert!(matches!(bob.frame().await, server_frame::Kind::Ack(a) if a.ref_id == 6));
    match alice.frame().await {
        server_frame::Kind::ParticipantLeft(l) => {
            assert_eq!((l.participant.unwrap().user.as_str(), l.reason.as_str()), ("bob", "left"))
        }
        other => panic!("expected ParticipantLeft, got {other:?}"),
    }

    // The traffic shows in the metrics.
    assert!(n1.metric("switchboard_delivery_latency_seconds_count").await >= 1.0);
    assert!(n2.metric("switchboard_bus_publish_seconds_count").await >= 1.0);
    assert!(n1.metric("switchboard_frames_out_total{kind=\"message\"}").await >= 1.0);
    assert!(n2.metric("switchboard_room_joins_total").await >= 1.0);
    assert_eq!(n1.metric("switchboard_connections{transport=\"websocket\"}").await, 1.0);
}

#[tokio::test]
async fn one_nats_subscription_per_room_per_node() {
    let nats = NatsServer::start().await;
    let (n1, n2) = two_nodes(&nats).await;
    // The room's channels, and layer 0 of its simulcast media (every receiver's default;
    // higher layers only while a local receiver wants them: tests/tests/simulcast.rs).
    let (subject, low_layer) = ("sb.room.busy.*", "sb.room.busy.media.0");
    let mut clients = Vec::new();
    for i in 0..6 {
        let node = if i % 2 == 0 { &n1 } else { &n2 };
        let (mut ws, _) = RawWs::authenticated(&node.ws_url(), &token(&format!("user{i}"), &["busy"])).await;
        ws.send(2, join("busy")).await;
        assert!(matches!(ws.frame().await, server_frame::Kind::Joined(_)));
        clients.push(ws);
    }
    for node in ["alpha", "beta"] {
        for subject in [subject, low_layer] {
            let subs = nats.subscriptions_on(node, subject).await;
            assert_eq!(subs.len(), 1, "one NATS connection per node: {subs:?}");
            assert_eq!(subs[0].1, 1, "node {node} must hold exactly one subscription on {subject}: {subs:?}");
        }
    }
    // When the last local session leaves, the node unsubscribes.
    for ws in clients.drain(..) {
        ws.close().await;
    }
    wait_for(WAIT, "both nodes to unsubscribe", || async {
        let mut subs = Vec::new();
        for subject in [subject, low_layer] {
            subs.extend(nats.subscriptions_on("alpha", subject).await);
            subs.extend(nats.subscriptions_on("beta", subject).await);
        }
        subs.iter().all(|(_, n)| *n == 0).then_some(())
    })
    .await;
}

/// A WebSocket client on one node and a WebTransport client on another share a room
/// through NATS: room message, targeted signal and media frame, both ways.
#[tokio::test]
async fn websocket_and_webtransport_clients_on_two_nodes() {
    use switchboard_protocol::pb::Media;
    use switchboard_tests::raw_wt::RawWt;
    let nats = NatsServer::start().await;
    let (n1, n2) = two_nodes(&nats).await;
    let (mut ws, ws_welcome) = RawWs::authenticated(&n1.ws_url(), &token("wsuser", &["mixed"])).await;
    ws.send(2, join("mixed")).await;
    assert!(matches!(ws.frame().await, server_frame::Kind::Joined(_)));
    let hash = n2.cert_hash().await;
    let (mut wt, wt_welcome) = RawWt::authenticated(&n2.wt_url(), &hash, &token("wtuser", &["mixed"])).await;
    wt.send(2, join("mixed")).await;
    assert!(matches!(wt.frame().await, server_frame::Kind::Joined(j) if j.participants.len() == 2));
    assert!(matches!(ws.frame().await, server_frame::Kind::ParticipantJoined(_)));

    // Room message WT -> WS.
    let publish = Publish {
        room: "mixed".into(),
        payload: Bytes::from_static(b"from quic"),
        reliable: true,
        kind: "chat".into(),
    };
    wt.send(3, client_frame::Kind::Publish(publish)).await;
    assert!(matches!(wt.frame().await, server_frame::Kind::Ack(_)));
    match ws.frame().await {
        server_frame::Kind::Message(m) => {
            assert_eq!(&m.payload[..], b"from quic");
            assert_eq!(m.from.unwrap().session, wt_welcome.session_id);
        }
        other => panic!("expected Message, got {other:?}"),
    }
    // Targeted signal WS -> WT, by session.
    let answer = Signal {
        room: "mixed".into(),
        target: Some(signal::Target::ToSession(wt_welcome.session_id.clone())),
        kind: SignalKind::Ice as i32,
        payload: Bytes::from_static(b"candidate:1 1 udp"),
        call: String::new(),
    };
    ws.send(4, client_frame::Kind::Signal(answer)).await;
    assert!(matches!(ws.frame().await, server_frame::Kind::Ack(_)));
    match wt.frame().await {
        server_frame::Kind::Signal(s) => {
            assert_eq!((s.kind(), &s.payload[..]), (SignalKind::Ice, &b"candidate:1 1 udp"[..]));
            assert_eq!(s.from.unwrap().session, ws_welcome.session_id);
        }
        other => panic!("expected Signal, got {other:?}"),
    }
    // Media frames both ways.
    let frame = |seq: u64| Media {
        room: "mixed".into(),
        track: 1,
        seq,
        timestamp: seq * 33_333,
        keyframe: seq == 0,
        codec: "vp8".into(),
        payload: Bytes::from(vec![seq as u8; 4096]),
        ..Default::default()
    };
    for seq in 0..3 {
        wt.send(0, client_frame::Kind::Media(frame(seq))).await;
        ws.send(0, client_frame::Kind::Media(frame(seq))).await;
    }
    for seq in 0..3 {
        match ws.frame().await {
            server_frame::Kind::Media(m) => {
                assert_eq!((m.seq, m.keyframe, m.codec.as_str(), m.payload.len()), (seq, seq == 0, "vp8", 4096));
                assert_eq!(m.from.unwrap().user, "wtuser");
            }
            other => panic!("expected Media, got {other:?}"),
        }
        match wt.frame().await {
            server_frame::Kind::Media(m) => {
                assert_eq!(m.seq, seq);
                assert_eq!(m.from.unwrap().user, "wsuser");
            }
            other => panic!("expected Media, got {other:?}"),
        }
    }
}

/// `kill -9` of a node: the survivors report its participants as left (reason
/// `node_lost`) within the node timeout plus a heartbeat, and no duplicate leave follows.
#[tokio::test]
async fn killed_node_participants_leave_within_the_node_timeout() {
    let nats = NatsServer::start().await;
    let fast = |id: &str| NodeOptions {
        nats_url: Some(nats.url()),
        node_id: Some(id.into()),
        args: vec!["--node-timeout".into(), "2".into()],
        ..Default::default()
    };
    let (n1, mut n2) = tokio::join!(TestNode::start(fast("stays")), TestNode::start(fast("dies")));
    let (mut alice, _) = RawWs::authenticated(&n1.ws_url(), &token("alice", &["demo"])).await;
    alice.send(2, join("demo")).await;
    assert!(matches!(alice.frame().await, server_frame::Kind::Joined(_)));
    let (mut bob, _) = RawWs::authenticated(&n2.ws_url(), &token("bob", &["demo"])).await;
    bob.send(2, join("demo")).await;
    assert!(matches!(bob.frame().await, server_frame::Kind::Joined(_)));
    assert!(matches!(alice.frame().await, server_frame::Kind::ParticipantJoined(_)));

    let killed_at = std::time::Instant::now();
    n2.kill();
    match alice.frame().await {
        server_frame::Kind::ParticipantLeft(l) => {
            assert_eq!((l.participant.unwrap().user.as_str(), l.reason.as_str()), ("bob", "node_lost"));
        }
        other => panic!("expected ParticipantLeft, got {other:?}"),
    }
    let elapsed = killed_at.elapsed();
    // Detected by the configured node timeout (2 s), not the default one (10 s): the bound
    // tells the two apart with room for a loaded machine, no tighter.
    assert!(elapsed < std::time::Duration::from_secs(8), "reported after {elapsed:?}; the node timeout is 2 s");
    // A newcomer does not see the dead participant (its presence record was cleared).
    let (mut carol, _) = RawWs::authenticated(&n1.ws_url(), &token("carol", &["demo"])).await;
    carol.send(2, join("demo")).await;
    let server_frame::Kind::Joined(j) = carol.frame().await else { panic!("expected Joined") };
    let mut users: Vec<String> = j.participants.into_iter().map(|p| p.user).collect();
    users.sort();
    assert_eq!(users, vec!["alice", "carol"]);
    // Alice's next event is carol's join: no second leave for bob.
    assert!(
        matches!(alice.frame().await, server_frame::Kind::ParticipantJoined(p) if p.participant.as_ref().is_some_and(|p| p.user == "carol"))
    );
}
