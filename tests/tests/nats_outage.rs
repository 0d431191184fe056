//! NATS goes away and comes back: the node turns unready, keeps its clients connected and
//! serving what is local, turns ready again, restores its presence records, and rooms work
//! across the restart.

use switchboard_protocol::pb::{client_frame, server_frame, Join, Publish};
use switchboard_tests::raw::RawWs;
use switchboard_tests::{token, wait_for, NatsServer, NodeOptions, TestNode};

fn join(room: &str) -> client_frame::Kind {
    client_frame::Kind::Join(Join { room: room.into(), resume_from: None })
}

#[tokio::test]
async fn readiness_follows_nats_and_the_node_serves_again() {
    let mut nats = NatsServer::start().await;
    let node = TestNode::start(NodeOptions { nats_url: Some(nats.url()), ..Default::default() }).await;
    let limit = std::time::Duration::from_secs(20);
    let (mut alice, _) = RawWs::authenticated(&node.ws_url(), &token("alice", &["r"])).await;
    alice.send(2, join("r")).await;
    assert!(matches!(alice.frame().await, server_frame::Kind::Joined(_)));

    nats.kill();
    wait_for(limit, "/readyz to fail without NATS", || async { (node.get("/readyz").await.0 == 503).then_some(()) })
        .await;
    assert_eq!(node.get("/healthz").await.0, 200, "alive while unready");
    // Alice stays connected and the node keeps answering her.
    alice.send(3, client_frame::Kind::Ping(Default::default())).await;
    assert!(matches!(alice.frame().await, server_frame::Kind::Pong(_)));

    nats.restart().await;
    wait_for(limit, "/readyz to recover", || async { (node.get("/readyz").await.0 == 200).then_some(()) }).await;
    wait_for(limit, "presence to be restored", || async {
        (node.metric("switchboard_presence_restores_total").await >= 1.0).then_some(())
    })
    .await;

    // A newcomer sees alice (her presence was restored into the new NATS) and reaches her.
    let (mut bob, _) = RawWs::authenticated(&node.ws_url(), &token("bob", &["r"])).await;
    bob.send(2, join("r")).await;
    match bob.frame().await {
        server_frame::Kind::Joined(j) => assert_eq!(j.participants.len(), 2, "{j:?}"),
        other => panic!("expected Joined, got {other:?}"),
    }
    let p = Publish { room: "r".into(), payload: "after the outage".into(), reliable: true, kind: String::new() };
    bob.send(3, client_frame::Kind::Publish(p)).await;
    assert!(matches!(bob.frame().await, server_frame::Kind::Ack(_)));
    loop {
        match alice.frame().await {
            server_frame::Kind::Message(m) => {
                assert_eq!(&m.payload[..], b"after the outage");
                break;
            }
            server_frame::Kind::ParticipantJoined(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
