//! Clients through a real load balancer (HAProxy, health-checking `/readyz`) onto two nodes:
//! rooms span the nodes, and when one node drains, the balancer stops sending it clients and
//! its clients move to the other node without losing the room.

use std::collections::HashSet;
use std::time::Duration;
use switchboard_client::{Client, ClientConfig, Event, Events};
use switchboard_tests::lb::TestLb;
use switchboard_tests::{token, within, NatsServer, NodeOptions, TestNode, WAIT};

async fn connect(lb: &TestLb, user: &str) -> (Client, Events) {
    Client::connect(ClientConfig::new(lb.ws_url(), token(user, &["lb"]))).await.expect("connecting through the LB")
}

async fn next_message(events: &mut Events) -> String {
    within(WAIT, "a message", async {
        loop {
            match events.recv().await.expect("events") {
                Event::Message(m) => return String::from_utf8_lossy(&m.payload).into_owned(),
                Event::Closed { code, reason } => panic!("closed: {code:?} {reason}"),
                _ => {}
            }
        }
    })
    .await
}

#[tokio::test]
async fn rooms_span_nodes_behind_a_balancer_and_survive_a_drain() {
    let nats = NatsServer::start().await;
    let opts = |id: &str| NodeOptions {
        nats_url: Some(nats.url()),
        node_id: Some(id.into()),
        args: vec!["--drain-timeout".into(), "30".into()],
        ..Default::default()
    };
    let (mut n1, n2) = tokio::join!(TestNode::start(opts("lb-a")), TestNode::start(opts("lb-b")));
    let lb = TestLb::start(&[n1.http_port, n2.http_port]).await;

    let mut clients = Vec::new();
    for i in 0..4 {
        let (c, e) = connect(&lb, &format!("u{i}")).await;
        c.join("lb").await.unwrap();
        clients.push((c, e));
    }
    let nodes: HashSet<String> = clients.iter().map(|(c, _)| c.welcome().node.clone()).collect();
    assert_eq!(nodes.len(), 2, "the balancer spreads clients over both nodes: {nodes:?}");
    clients[0].0.publish("lb", "one".into(), true, "chat").await.unwrap();
    for (_, events) in clients.iter_mut().skip(1) {
        assert_eq!(next_message(events).await, "one");
    }

    // Drain node a: its clients are told to go, the balancer takes it out.
    n1.terminate();
    let mut moved = 0;
    let mut stay = Vec::new();
    for (client, mut events) in clients {
        if client.welcome().node != "lb-a" {
            stay.push((client, events));
            continue;
        }
        within(WAIT, "GoAway", async {
            loop {
                if let Event::GoAway(_) = events.recv().await.expect("events") {
                    break;
                }
            }
        })
        .await;
        // The client moves: reconnect through the balancer, which now only offers node b.
        let user = client.welcome().user.clone();
        client.close().await;
        let (c, e) = within(Duration::from_secs(15), "reconnecting to a ready node", async {
            loop {
                // Until the health check (every 250 ms) takes node a out, the balancer may
                // still pick it: the draining node refuses the upgrade with 503.
                match Client::connect(ClientConfig::new(lb.ws_url(), token(&user, &["lb"]))).await {
                    Ok((c, e)) if c.welcome().node == "lb-b" => return (c, e),
                    Ok((c, _)) => c.close().await,
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        c.join("lb").await.unwrap();
        stay.push((c, e));
        moved += 1;
    }
    assert!(moved >= 1);
    assert!(stay.iter().all(|(c, _)| c.welcome().node == "lb-b"));
    // The room still works for everyone.
    stay[0].0.publish("lb", "two".into(), true, "chat").await.unwrap();
    for (_, events) in stay.iter_mut().skip(1) {
        assert_eq!(next_message(events).await, "two");
    }
    // With its clients gone, node a exits cleanly before its deadline.
    assert_eq!(n1.wait_exit(Duration::from_secs(20)).await, Some(0));
}
