//! Broker faults on a 3-server NATS cluster: one server is killed while a client publishes
//! reliable messages through a node connected to it. The node fails over to the surviving
//! servers, the history stream (3 replicas) keeps every stored message, a publisher retrying
//! a refused request (same request id) stores it once, and the receiver on the other node
//! gets every message exactly once, in order.

use bytes::Bytes;
use std::time::Duration;
use switchboard_protocol::pb::{client_frame, server_frame, Join, Publish};
use switchboard_protocol::ErrorCode;
use switchboard_tests::raw::{RawWs, Received};
use switchboard_tests::{token, within, NatsCluster, NodeOptions, TestNode};

const MESSAGES: u64 = 200;
const KILL_AT: u64 = 60;

async fn joined(node: &TestNode, user: &str) -> RawWs {
    let (mut ws, _) = RawWs::authenticated(&node.ws_url(), &token(user, &["chaos"])).await;
    ws.send(1_000_000, client_frame::Kind::Join(Join { room: "chaos".into(), resume_from: None })).await;
    loop {
        if let server_frame::Kind::Joined(_) = ws.frame().await {
            return ws;
        }
    }
}

#[tokio::test]
async fn killing_a_nats_server_loses_no_reliable_message() {
    let mut cluster = NatsCluster::start(3).await;
    let opts = |id: &str, url: String| NodeOptions {
        nats_url: Some(url),
        node_id: Some(id.into()),
        args: vec!["--nats-replicas".into(), "3".into(), "--request-rate".into(), "100000".into()],
        ..Default::default()
    };
    // alpha knows only server 0 (it learns the others from the cluster); beta only server 1.
    let (alpha, beta) = tokio::join!(
        TestNode::start(opts("alpha", cluster.servers[0].url())),
        TestNode::start(opts("beta", cluster.servers[1].url()))
    );
    let mut bob = joined(&beta, "bob").await;
    let mut alice = joined(&alpha, "alice").await;

    let receiver = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut last_offset = 0;
        while (got.len() as u64) < MESSAGES {
            // A failover can pause delivery for seconds (JetStream leader election, the
            // node's follower noticing its consumer went with the server).
            match bob.next_within(Duration::from_secs(30)).await {
                Received::Frame(server_frame::Kind::Message(m)) => {
                    assert!(m.offset > last_offset, "offsets increase");
                    last_offset = m.offset;
                    got.push(String::from_utf8_lossy(&m.payload).parse::<u64>().expect("a sequence number"));
                }
                Received::Frame(_) => {}
                Received::Closed(code) => panic!("the receiver was disconnected ({code:?})"),
            }
        }
        got
    });

    let mut retries = 0;
    within(Duration::from_secs(90), "publishing through the fault", async {
        for seq in 0..MESSAGES {
            if seq == KILL_AT {
                cluster.servers[0].kill();
            }
            let id = seq + 1;
            loop {
                let p = Publish {
                    room: "chaos".into(),
                    payload: Bytes::from(seq.to_string()),
                    reliable: true,
                    kind: String::new(),
                };
                alice.send(id, client_frame::Kind::Publish(p)).await;
                let outcome = loop {
                    match alice.frame().await {
                        server_frame::Kind::Ack(a) if a.ref_id == id => break Ok(()),
                        server_frame::Kind::Error(e) if e.ref_id == id => break Err(e.code()),
                        _ => {}
                    }
                };
                match outcome {
                    Ok(()) => break,
                    Err(ErrorCode::Unavailable) => {
                        // NATS is failing over: retry the same request (stored at most once).
                        retries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(other) => panic!("publish {seq} refused with {other:?}"),
                }
            }
        }
    })
    .await;
    let got = within(Duration::from_secs(30), "every message at the receiver", receiver).await.expect("receiver");
    assert_eq!(got, (0..MESSAGES).collect::<Vec<_>>(), "exactly once, in order");
    eprintln!("{MESSAGES} messages, {retries} retried publishes during the failover");
}
