//! NATS goes away and comes back: the node turns unready, keeps its clients connected and
//! serving what is local, turns ready again, restores its presence records, and rooms work
//! across the restart.

use std::time::Duration;
use switchboard_protocol::pb::{client_frame, server_frame, Join, Publish};
use switchboard_tests::raw::RawWs;
use switchboard_tests::{token, wait_for, within, NatsServer, NodeOptions, TestNode};

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

/// A participant who left while NATS was away is not a ghost: once NATS returns the others
/// hear the leave (the node's client buffers the announcement; if it were lost, the views
/// are reconciled with the restored presence records, reason `resync`), and newcomers do
/// not see them.
#[tokio::test]
async fn no_ghost_participants_after_an_outage() {
    let limit = Duration::from_secs(30);
    let mut nats = NatsServer::start().await;
    let opts = |id: &str| NodeOptions { nats_url: Some(nats.url()), node_id: Some(id.into()), ..Default::default() };
    let (n1, n2) = tokio::join!(TestNode::start(opts("alpha")), TestNode::start(opts("beta")));
    let (mut alice, _) = RawWs::authenticated(&n1.ws_url(), &token("alice", &["r"])).await;
    alice.send(2, join("r")).await;
    assert!(matches!(alice.frame().await, server_frame::Kind::Joined(_)));
    let (mut bob, _) = RawWs::authenticated(&n2.ws_url(), &token("bob", &["r"])).await;
    bob.send(2, join("r")).await;
    assert!(matches!(bob.frame().await, server_frame::Kind::Joined(_)));
    assert!(matches!(alice.frame().await, server_frame::Kind::ParticipantJoined(_)));

    nats.kill();
    wait_for(limit, "beta to notice", || async { (n2.get("/readyz").await.0 == 503).then_some(()) }).await;
    bob.close().await; // his leave cannot reach alpha now
    nats.restart().await;
    wait_for(limit, "alpha to be ready again", || async { (n1.get("/readyz").await.0 == 200).then_some(()) }).await;
    // The resync runs two node heartbeats (4 s) after the reconnect.
    let left = within(limit, "bob's leave after the resync", async {
        loop {
            if let server_frame::Kind::ParticipantLeft(l) = alice.frame().await {
                return l;
            }
        }
    })
    .await;
    assert_eq!(left.participant.unwrap().user, "bob");
    assert!(["disconnected", "resync"].contains(&left.reason.as_str()), "{}", left.reason);
    let (mut carol, _) = RawWs::authenticated(&n1.ws_url(), &token("carol", &["r"])).await;
    carol.send(2, join("r")).await;
    match carol.frame().await {
        server_frame::Kind::Joined(j) => {
            let mut users: Vec<_> = j.participants.iter().map(|p| p.user.as_str()).collect();
            users.sort();
            assert_eq!(users, ["alice", "carol"], "no ghost of bob");
        }
        other => panic!("expected Joined, got {other:?}"),
    }
}

/// A node told to stop while NATS is unreachable still stops, within its drain timeout plus
/// a bounded flush (it used to wait for NATS forever).
#[tokio::test]
async fn a_node_stops_while_nats_is_away() {
    let mut nats = NatsServer::start().await;
    let mut node = TestNode::start(NodeOptions {
        nats_url: Some(nats.url()),
        args: vec!["--drain-timeout".into(), "1".into()],
        ..Default::default()
    })
    .await;
    let (mut alice, _) = RawWs::authenticated(&node.ws_url(), &token("alice", &["r"])).await;
    alice.send(2, join("r")).await;
    assert!(matches!(alice.frame().await, server_frame::Kind::Joined(_)));
    nats.kill();
    wait_for(Duration::from_secs(20), "the node to notice", || async {
        (node.get("/readyz").await.0 == 503).then_some(())
    })
    .await;
    let asked = std::time::Instant::now();
    node.terminate();
    // Drain (1 s) + closing sessions (≤ 2 s) + the bounded flush (3 s) + HTTP stop.
    let code = node.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "exit code");
    eprintln!("stopped {:?} after SIGTERM with NATS away", asked.elapsed());
}
