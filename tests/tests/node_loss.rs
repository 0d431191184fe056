//! Node loss: three nodes on a three-server NATS cluster, clients in one room sending
//! reliable messages continuously; `kill -9` one node. Its client reconnects to another node
//! with the Rust client library (backoff with jitter), rejoins from the last offset it saw,
//! and every message sent by the surviving senders reaches every member exactly once, in
//! per-sender order. The dead node's participant is reported left (`node_lost`) within the
//! node timeout plus a heartbeat, and its return is one join, not several.

use std::collections::BTreeMap;
use std::time::Duration;
use switchboard_client::{ClientConfig, Event, Events, ReconnectPolicy, ReconnectingClient};
use switchboard_tests::{token, within, NatsCluster, NodeOptions, TestNode};

const PER_SENDER: u64 = 150;
const KILL_AFTER: u64 = 50;
const ROOM: &str = "ops";

async fn member(nodes: &[&TestNode], first: usize, user: &str) -> (ReconnectingClient, Events) {
    // Start on `first`, then the others in order.
    let mut configs: Vec<ClientConfig> =
        nodes.iter().map(|n| ClientConfig::new(n.ws_url(), token(user, &[ROOM]))).collect();
    configs.rotate_left(first);
    let policy = ReconnectPolicy { initial: Duration::from_millis(100), ..ReconnectPolicy::default() };
    let (client, events) = ReconnectingClient::connect(configs, policy).await.expect("connect");
    client.join(ROOM).await.expect("join");
    (client, events)
}

/// Collect `want` messages (per sender user: sequence numbers in arrival order) and count
/// the presence events about `watch`.
async fn collect(mut events: Events, want: usize, watch: &'static str) -> (BTreeMap<String, Vec<u64>>, usize, usize) {
    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let (mut joins, mut lost) = (0, 0);
    let mut n = 0;
    while n < want {
        match events.recv().await {
            Some(Event::Message(m)) => {
                let from = m.from.map(|f| f.user).unwrap_or_default();
                let seq = String::from_utf8_lossy(&m.payload).parse().expect("sequence number");
                got.entry(from).or_default().push(seq);
                n += 1;
            }
            Some(Event::ParticipantJoined(p)) if p.participant.as_ref().is_some_and(|p| p.user == watch) => joins += 1,
            Some(Event::ParticipantLeft(p))
                if p.participant.as_ref().is_some_and(|p| p.user == watch) && p.reason == "node_lost" =>
            {
                lost += 1
            }
            Some(Event::Closed { code, reason }) => panic!("client gave up: {code:?} {reason}"),
            Some(_) => {}
            None => panic!("events ended"),
        }
    }
    (got, joins, lost)
}

#[tokio::test]
async fn a_killed_node_loses_no_reliable_message() {
    let cluster = NatsCluster::start(3).await;
    let opts = |i: usize| NodeOptions {
        nats_url: Some(cluster.servers[i].url()),
        node_id: Some(format!("node{i}")),
        args: vec!["--nats-replicas".into(), "3".into(), "--node-timeout".into(), "3".into()],
        ..Default::default()
    };
    let (mut n0, n1, n2) = tokio::join!(TestNode::start(opts(0)), TestNode::start(opts(1)), TestNode::start(opts(2)));
    let nodes = [&n0, &n1, &n2];
    let (_victim, victim_events) = member(&nodes, 0, "victim").await;
    let (s1, s1_events) = member(&nodes, 1, "s1").await;
    let (s2, s2_events) = member(&nodes, 2, "s2").await;

    // Every member collects what the two senders send (each sender sees the other's).
    let victim = tokio::spawn(collect(victim_events, 2 * PER_SENDER as usize, "victim"));
    let watch_s1 = tokio::spawn(collect(s1_events, PER_SENDER as usize, "victim"));
    let watch_s2 = tokio::spawn(collect(s2_events, PER_SENDER as usize, "victim"));

    let send = |client: ReconnectingClient| async move {
        for seq in 0..PER_SENDER {
            client.publish(ROOM, seq.to_string().into(), true, "").await.expect("publish on a surviving node");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let senders = tokio::spawn(async move { tokio::join!(send(s1), send(s2)) });
    // Kill the victim's node once some messages went by.
    within(Duration::from_secs(20), "messages before the kill", async {
        while n0.metric("switchboard_frames_out_total{kind=\"message\"}").await < (KILL_AFTER * 2) as f64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    n0.kill();
    within(Duration::from_secs(60), "the senders", senders).await.expect("senders");

    let expected: Vec<u64> = (0..PER_SENDER).collect();
    let (got, victim_joins, _) =
        within(Duration::from_secs(30), "the victim's messages", victim).await.expect("victim");
    assert_eq!(got.get("s1"), Some(&expected), "victim: every s1 message once, in order");
    assert_eq!(got.get("s2"), Some(&expected), "victim: every s2 message once, in order");
    assert_eq!(victim_joins, 0);
    let (got1, joins1, _) = within(Duration::from_secs(30), "s1's messages", watch_s1).await.expect("s1");
    assert_eq!(got1.get("s2"), Some(&expected));
    let (got2, joins2, _) = within(Duration::from_secs(30), "s2's messages", watch_s2).await.expect("s2");
    assert_eq!(got2.get("s1"), Some(&expected));
    // The victim came back once (one new session), whatever the order of its leave.
    assert!(joins1 <= 1 && joins2 <= 1, "one return, no duplicate joins ({joins1}, {joins2})");
}
