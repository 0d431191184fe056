//! The multi-host cluster harness (`switchboard_tests::netns::cluster`) end to end: 3 NATS
//! servers, 4 nodes, HAProxy and the nginx UDP balancer, each on its own host. A WebSocket
//! client through HAProxy and a WebTransport client through nginx, on two different nodes,
//! share a room; one node's link is cut, its client reconnects through HAProxy to another
//! node and the room keeps working both ways; the WebTransport client's node is drained and
//! restarted (one reconnect), a NATS server is restarted (the room goes on), then that node
//! is killed and nginx re-hashes the client to another node; everything is torn down.
//!
//! Needs root (network namespaces, iptables), nats-server, haproxy and nginx with its stream
//! module (scripts/test.sh installs them); elsewhere it prints `SKIPPED: <why>` and returns.

use bytes::Bytes;
use std::time::{Duration, Instant};
use switchboard_client::{Event, Events, ReconnectPolicy, ReconnectingClient};
use switchboard_tests::netns::{self, Cluster, ClusterConfig};
use switchboard_tests::{token, within};

const ROOM: &str = "lobby";

/// Waits for an event are generous: a debug build of 4 nodes and 3 NATS servers shares a
/// loaded 2-core machine.
const EVENT_WAIT: Duration = Duration::from_secs(30);

/// Retries capped low: the node is gone for good in this test, HAProxy already knows.
fn policy() -> ReconnectPolicy {
    ReconnectPolicy { initial: Duration::from_millis(200), max: Duration::from_secs(2), ..Default::default() }
}

/// Events of one client, and counts of what was skipped on the way.
struct Watch {
    events: Events,
    disconnects: usize,
}

impl Watch {
    fn new(events: Events) -> Self {
        Self { events, disconnects: 0 }
    }

    /// The first event `pick` accepts (the others are skipped, disconnects counted).
    async fn until<T>(&mut self, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        within(EVENT_WAIT, what, async {
            loop {
                let event = self.events.recv().await.unwrap_or_else(|| panic!("events ended waiting for {what}"));
                if matches!(event, Event::Disconnected { .. }) {
                    self.disconnects += 1;
                }
                if let Some(v) = pick(&event) {
                    return v;
                }
                if let Event::Closed { code, reason } = &event {
                    panic!("closed ({code:?}: {reason}) waiting for {what}");
                }
            }
        })
        .await
    }

    /// Wait for the room message carrying `payload`.
    async fn message(&mut self, payload: &str) {
        let want = Bytes::from(payload.to_owned());
        self.until(&format!("message {payload:?}"), |e| match e {
            Event::Message(m) if m.payload == want => Some(()),
            _ => None,
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_behind_both_balancers_share_a_room_and_a_cut_nodes_client_moves() {
    let config = ClusterConfig {
        name: "cluster-test".into(),
        // Dead connections noticed in ~3 heartbeats, a silent node reported in 3 s, a drain
        // bounded to 5 s (its GoAway spreads reconnects over 5 s anyway).
        node_args: ["--heartbeat", "2", "--node-timeout", "3", "--drain-timeout", "5"].map(String::from).to_vec(),
        ..Default::default()
    };
    let Some(mut cluster) = Cluster::start_or_skip(config).await else { return };
    let tag = cluster.lab().tag().to_owned();
    eprintln!("cluster up:\n{}", cluster.describe());
    let (wt_host, ws_host) = (cluster.load_host(0).runtime().unwrap(), cluster.load_host(1).runtime().unwrap());

    // Carol over WebTransport through nginx (the node her address hashes to).
    let config = cluster.wt_config(&token("carol", &[ROOM]));
    let connect = wt_host.spawn(ReconnectingClient::connect(vec![config], policy()));
    let (carol, carol_events) = within(EVENT_WAIT, "carol connected", connect).await.unwrap().expect("carol over WT");
    let mut carol_events = Watch::new(carol_events);
    let carol_node = carol.welcome().node;

    // Alice over WebSocket through HAProxy (least connections: consecutive clients land on
    // different nodes), on a node other than Carol's.
    let mut others = Vec::new();
    let (alice, alice_events) = loop {
        assert!(others.len() < cluster.node_count(), "HAProxy put every client on {carol_node}");
        let config = cluster.ws_config(&token("alice", &[ROOM]));
        let connect = ws_host.spawn(ReconnectingClient::connect(vec![config], policy()));
        let (client, events) = within(EVENT_WAIT, "alice connected", connect).await.unwrap().expect("alice over WS");
        if client.welcome().node != carol_node {
            break (client, events);
        }
        others.push(client);
    };
    for other in others {
        other.close().await;
    }
    let mut alice_events = Watch::new(alice_events);
    let alice_node = alice.welcome().node;
    let cut = cluster.node_index(&alice_node).expect("alice's node is a cluster node");
    eprintln!("carol (WT via nginx) on {carol_node}, alice (WS via HAProxy) on {alice_node}");

    alice.join(ROOM).await.expect("alice joins");
    carol.join(ROOM).await.expect("carol joins");
    alice.publish(ROOM, Bytes::from("hi from alice"), true, "chat").await.expect("alice publishes");
    carol_events.message("hi from alice").await;
    carol.publish(ROOM, Bytes::from("hi from carol"), true, "chat").await.expect("carol publishes");
    alice_events.message("hi from carol").await;

    // Alice's node loses its link: her connection dies (heartbeats), HAProxy's checks mark
    // the node down, and she reconnects through HAProxy to another node and rejoins.
    let cut_host = cluster.node_host(cut).clone();
    cluster.cut_link(&cut_host).unwrap();
    let moved_to = alice_events
        .until("alice reconnected", |e| match e {
            Event::Reconnected { welcome } => Some(welcome.node.clone()),
            _ => None,
        })
        .await;
    assert_ne!(moved_to, alice_node, "alice came back to the node that was cut off");
    alice_events.until("alice rejoined", |e| matches!(e, Event::Rejoined(_)).then_some(())).await;
    eprintln!("alice moved from {alice_node} to {moved_to}");

    // The room works both ways across the remaining nodes.
    alice.publish(ROOM, Bytes::from("alice again"), true, "chat").await.expect("alice publishes after moving");
    carol_events.message("alice again").await;
    carol.publish(ROOM, Bytes::from("carol again"), true, "chat").await.expect("carol publishes after the cut");
    alice_events.message("carol again").await;
    assert_eq!(alice_events.disconnects, 1, "alice lost her connection once");
    assert_eq!(carol_events.disconnects, 0, "carol's node was not cut: she kept her connection");

    // The node comes back once its link does.
    cluster.restore_link(&cut_host).unwrap();
    within(Duration::from_secs(60), "the cut node ready again", async {
        while !matches!(cluster.node_get(cut, "/readyz").await, Some((200, _))) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;

    // Carol's node drains (SIGTERM) and starts again: she gets GoAway and reconnects once,
    // through nginx, wherever her address hashes then.
    let carol_index = cluster.node_index(&carol_node).expect("carol's node is a cluster node");
    let restarted = Instant::now();
    cluster.restart_node(carol_index).await.expect("carol's node drains and starts again");
    let carol_now = carol_events
        .until("carol reconnected", |e| match e {
            Event::Reconnected { welcome } => Some(welcome.node.clone()),
            _ => None,
        })
        .await;
    carol_events.until("carol rejoined", |e| matches!(e, Event::Rejoined(_)).then_some(())).await;
    eprintln!("{carol_node} restarted in {:?}; carol (WT via nginx) came back on {carol_now}", restarted.elapsed());
    assert_eq!(carol_events.disconnects, 1, "one reconnect for one node restart");

    // A NATS server stops and starts again: the nodes move to the others, the room goes on.
    cluster.restart_nats(0).await.expect("nats1 stops and starts again");
    alice.publish(ROOM, Bytes::from("after nats1"), true, "chat").await.expect("alice publishes");
    carol_events.message("after nats1").await;
    carol.publish(ROOM, Bytes::from("carol after nats1"), true, "chat").await.expect("carol publishes");
    alice_events.message("carol after nats1").await;

    // Carol's node killed (-9): its host answers her datagrams with "port unreachable", nginx
    // disables the node and her reconnect re-hashes to another one.
    let carol_index = cluster.node_index(&carol_now).expect("a cluster node");
    let host = cluster.node_host(carol_index).clone();
    cluster.kill9(&host).unwrap();
    let carol_last = carol_events
        .until("carol reconnected after the kill", |e| match e {
            Event::Reconnected { welcome } => Some(welcome.node.clone()),
            _ => None,
        })
        .await;
    assert_ne!(carol_last, carol_now, "nginx sent carol back to the killed node");
    carol_events.until("carol rejoined", |e| matches!(e, Event::Rejoined(_)).then_some(())).await;
    alice.publish(ROOM, Bytes::from("after the kill"), true, "chat").await.expect("alice publishes");
    carol_events.message("after the kill").await;
    eprintln!("{carol_now} killed; carol came back on {carol_last}");

    alice.close().await;
    carol.close().await;
    drop((wt_host, ws_host));
    drop(cluster);
    assert_eq!(netns::namespaces_with_prefix(&tag), Vec::<String>::new(), "namespaces left after the drop");
}
