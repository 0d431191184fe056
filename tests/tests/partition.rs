//! A network partition between one node and NATS (a proxy that stops carrying bytes without
//! closing anything, as a dead route does): the cut-off node notices through its NATS pings,
//! turns unready, keeps its client connected and answered, and does not declare the other
//! nodes dead (it cannot tell). The other side reports the cut-off node's participant left
//! (`node_lost`). On heal the node reconnects, its client receives exactly the reliable
//! messages published meanwhile, in order, and the others see it return once.

use std::time::{Duration, Instant};
use switchboard_client::{ClientConfig, ErrorCode, Event, Events, ReconnectPolicy, ReconnectingClient};
use switchboard_tests::proxy::Partition;
use switchboard_tests::{token, wait_for, within, NatsServer, NodeOptions, TestNode};

const ROOM: &str = "r";
const DURING: usize = 5;

async fn member(node: &TestNode, user: &str) -> (ReconnectingClient, Events) {
    let config = ClientConfig::new(node.ws_url(), token(user, &[ROOM]));
    let (client, events) =
        ReconnectingClient::connect(vec![config], ReconnectPolicy::default()).await.expect("connect");
    client.join(ROOM).await.expect("join");
    (client, events)
}

/// The next event `pick` accepts (others are skipped), within `limit`.
async fn next<T>(events: &mut Events, limit: Duration, what: &str, mut pick: impl FnMut(Event) -> Option<T>) -> T {
    within(limit, what, async {
        loop {
            match events.recv().await {
                Some(Event::Closed { code, reason }) => panic!("client gave up: {code:?} {reason}"),
                Some(ev) => {
                    if let Some(v) = pick(ev) {
                        return v;
                    }
                }
                None => panic!("events ended"),
            }
        }
    })
    .await
}

/// The text of a room message sent by `from` (a sender's own messages may echo back).
fn message_from(ev: &Event, from: &str) -> Option<String> {
    match ev {
        Event::Message(m) if m.from.as_ref().is_some_and(|f| f.user == from) => {
            Some(String::from_utf8_lossy(&m.payload).into_owned())
        }
        _ => None,
    }
}

#[tokio::test]
async fn a_node_cut_off_from_nats_recovers_without_loss() {
    let nats = NatsServer::start().await;
    let proxy = Partition::start(nats.url().trim_start_matches("nats://")).await;
    // Fast pings and heartbeats so the bounds below are seconds, not the production defaults
    // (5 s pings, 10 s node timeout).
    let args = || -> Vec<String> {
        ["--nats-ping-interval", "1", "--node-timeout", "3"].iter().map(|s| s.to_string()).collect()
    };
    let (cut, other) = tokio::join!(
        TestNode::start(NodeOptions {
            nats_url: Some(proxy.nats_url()),
            node_id: Some("cut".into()),
            args: args(),
            ..Default::default()
        }),
        TestNode::start(NodeOptions {
            nats_url: Some(nats.url()),
            node_id: Some("other".into()),
            args: args(),
            ..Default::default()
        }),
    );
    let (alice, mut alice_events) = member(&cut, "alice").await;
    let (bob, mut bob_events) = member(&other, "bob").await;
    let limit = Duration::from_secs(20);
    next(&mut alice_events, limit, "alice to see bob join", |ev| {
        matches!(&ev, Event::ParticipantJoined(p) if p.participant.as_ref().is_some_and(|p| p.user == "bob"))
            .then_some(())
    })
    .await;
    alice.publish(ROOM, "before".into(), true, "").await.expect("publish before the cut");
    next(&mut bob_events, limit, "bob to get alice's message", |ev| {
        (message_from(&ev, "alice")? == "before").then_some(())
    })
    .await;

    proxy.cut();
    let started = Instant::now();
    wait_for(limit, "the cut-off node to turn unready", || async { (cut.get("/readyz").await.0 == 503).then_some(()) })
        .await;
    let unready_after = started.elapsed();
    let left = next(&mut bob_events, limit, "bob to see alice leave", |ev| match ev {
        Event::ParticipantLeft(l) if l.participant.as_ref().is_some_and(|p| p.user == "alice") => Some(l),
        _ => None,
    })
    .await;
    let left_after = started.elapsed();
    assert_eq!(left.reason, "node_lost");
    assert_eq!(other.get("/readyz").await.0, 200, "the other node is unaffected");

    // Bob's side keeps working: his reliable messages are stored while alice is cut off.
    for i in 0..DURING {
        bob.publish(ROOM, format!("during-{i}").into(), true, "").await.expect("publish during the partition");
    }
    // Alice is still connected and answered; what needs NATS fails fast with a clear code.
    let refused = alice.publish(ROOM, "lost?".into(), true, "").await.expect_err("a reliable publish needs NATS");
    assert_eq!(refused.code(), Some(ErrorCode::Unavailable), "{refused}");
    // The cut-off node must not declare bob's node dead: its silence is the partition's.
    // By now more than a node timeout has passed since the cut; watch one more.
    let reaped_bob = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match alice_events.recv().await {
                Some(Event::ParticipantLeft(l)) if l.participant.as_ref().is_some_and(|p| p.user == "bob") => return,
                Some(Event::Disconnected { reason, .. }) => panic!("alice was disconnected by the partition: {reason}"),
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
    })
    .await;
    assert!(reaped_bob.is_err(), "the cut-off node declared the other node dead");

    proxy.heal();
    let healed = Instant::now();
    wait_for(limit, "the node to turn ready again", || async { (cut.get("/readyz").await.0 == 200).then_some(()) })
        .await;
    let ready_after = healed.elapsed();
    // Exactly the messages published during the partition, in order, nothing else.
    let mut got = Vec::new();
    while got.len() < DURING {
        got.push(next(&mut alice_events, limit, "the missed messages", |ev| message_from(&ev, "bob")).await);
    }
    let caught_up_after = healed.elapsed();
    let want: Vec<String> = (0..DURING).map(|i| format!("during-{i}")).collect();
    assert_eq!(got, want);
    // Bob sees alice return, once.
    next(&mut bob_events, limit, "bob to see alice return", |ev| {
        matches!(&ev, Event::ParticipantJoined(p) if p.participant.as_ref().is_some_and(|p| p.user == "alice"))
            .then_some(())
    })
    .await;
    wait_for(limit, "the presence resync", || async {
        (cut.metric("switchboard_presence_resyncs_total").await >= 1.0).then_some(())
    })
    .await;
    alice.publish(ROOM, "after".into(), true, "").await.expect("publish after the heal");
    let mut joins = 0;
    next(&mut bob_events, limit, "alice's message after the heal", |ev| match &ev {
        Event::ParticipantJoined(p) if p.participant.as_ref().is_some_and(|p| p.user == "alice") => {
            joins += 1;
            None
        }
        _ => (message_from(&ev, "alice")? == "after").then_some(()),
    })
    .await;
    assert_eq!(joins, 0, "alice's return was announced more than once");
    // And nothing more arrives for alice: no duplicate of the missed messages.
    bob.publish(ROOM, "last".into(), true, "").await.expect("publish");
    let tail = next(&mut alice_events, limit, "bob's last message", |ev| message_from(&ev, "bob")).await;
    assert_eq!(tail, "last", "a duplicate or stray message reached alice");
    eprintln!(
        "partition: unready after {unready_after:?}, peer reported left after {left_after:?}; \
         heal: ready after {ready_after:?}, caught up after {caught_up_after:?}"
    );
}
