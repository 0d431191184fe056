//! Room history and recovery: reliable messages get offsets linked to their predecessor,
//! publishers on two nodes agree on one order, and a client that rejoins (on another node)
//! with the last offset it saw receives exactly what it missed, then live messages — no gap,
//! no duplicate; when the gap is no longer in history it is told so.

use bytes::Bytes;
use switchboard_protocol::pb::{client_frame, server_frame, Join, Joined, Message, Publish};
use switchboard_tests::raw::RawWs;
use switchboard_tests::{token, within, NatsServer, NodeOptions, TestNode, WAIT};

const ROOM: &str = "chat";

fn opts(nats: Option<&NatsServer>, id: &str) -> NodeOptions {
    NodeOptions {
        nats_url: nats.map(NatsServer::url),
        node_id: Some(id.into()),
        args: vec!["--history-max-msgs".into(), "20".into(), "--request-rate".into(), "10000".into()],
        ..Default::default()
    }
}

async fn member(node: &TestNode, name: &str, resume_from: Option<u64>) -> (RawWs, Joined) {
    let (mut ws, _) = RawWs::authenticated(&node.ws_url(), &token(name, &[ROOM])).await;
    ws.send(2, client_frame::Kind::Join(Join { room: ROOM.into(), resume_from })).await;
    let joined = within(WAIT, "Joined", async {
        loop {
            if let server_frame::Kind::Joined(j) = ws.frame().await {
                return j;
            }
        }
    })
    .await;
    (ws, joined)
}

/// Publish reliably and return the offset from the Ack.
async fn publish(ws: &mut RawWs, id: u64, text: String) -> u64 {
    let p = Publish { room: ROOM.into(), payload: Bytes::from(text), reliable: true, kind: "chat".into() };
    ws.send(id, client_frame::Kind::Publish(p)).await;
    within(WAIT, "publish Ack", async {
        loop {
            match ws.frame().await {
                server_frame::Kind::Ack(a) if a.ref_id == id => return a.offset,
                server_frame::Kind::Error(e) if e.ref_id == id => panic!("publish refused: {e:?}"),
                _ => {}
            }
        }
    })
    .await
}

/// The next `n` room messages.
async fn messages(ws: &mut RawWs, n: usize) -> Vec<Message> {
    let mut out = Vec::new();
    while out.len() < n {
        if let server_frame::Kind::Message(m) = ws.frame().await {
            out.push(m);
        }
    }
    out
}

fn texts(ms: &[Message]) -> Vec<String> {
    ms.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect()
}

/// Offsets increase and each message links to the previous one.
fn assert_chain(ms: &[Message], mut prev: u64) {
    for m in ms {
        assert!(m.offset > prev, "offsets increase: {} after {prev}", m.offset);
        assert_eq!(m.prev_offset, prev, "message {} links to {prev}", m.offset);
        prev = m.offset;
    }
}

#[tokio::test]
async fn reconnect_to_another_node_resumes_with_no_gap_and_no_duplicate() {
    let nats = NatsServer::start().await;
    let (n1, n2) =
        tokio::join!(TestNode::start(opts(Some(&nats), "alpha")), TestNode::start(opts(Some(&nats), "beta")));
    let (mut bob, _) = member(&n2, "bob", None).await;
    let (mut carol, _) = member(&n1, "carol", None).await;
    let (mut alice, joined) = member(&n1, "alice", None).await;
    assert_eq!(joined.last_offset, 0, "a fresh room has no history");

    // Publishers on both nodes: one order, every message linked to the one before.
    let mut acked = Vec::new();
    for i in 0..3 {
        acked.push(publish(&mut bob, 10 + i, format!("b{i}")).await);
        acked.push(publish(&mut carol, 10 + i, format!("c{i}")).await);
    }
    let seen = messages(&mut alice, 6).await;
    assert_eq!(seen.iter().map(|m| m.offset).collect::<Vec<_>>(), acked, "offsets as acked, in order");
    assert_chain(&seen, 0);
    let last_seen = seen.last().unwrap().offset;

    // Alice drops; six more messages go by, from both nodes, concurrently.
    alice.close().await;
    let (b, c) = tokio::join!(
        async {
            let mut v = Vec::new();
            for i in 3..6 {
                v.push((publish(&mut bob, 20 + i, format!("b{i}")).await, format!("b{i}")));
            }
            v
        },
        async {
            let mut v = Vec::new();
            for i in 3..6 {
                v.push((publish(&mut carol, 20 + i, format!("c{i}")).await, format!("c{i}")));
            }
            v
        }
    );
    let mut missed: Vec<(u64, String)> = b.into_iter().chain(c).collect();
    missed.sort();

    // She comes back on the other node with the last offset she saw.
    let (mut alice, joined) = member(&n2, "alice", Some(last_seen)).await;
    assert!(!joined.history_gap, "nothing she missed has been dropped");
    assert_eq!(joined.replayed, 6);
    assert_eq!(joined.last_offset, missed.last().unwrap().0);
    let replay = messages(&mut alice, 6).await;
    assert_eq!(
        replay.iter().map(|m| (m.offset, String::from_utf8_lossy(&m.payload).into_owned())).collect::<Vec<_>>(),
        missed
    );
    assert_chain(&replay, last_seen);
    // Then live messages, with no duplicate of the replay.
    let live = publish(&mut carol, 40, "live".into()).await;
    let next = messages(&mut alice, 1).await;
    assert_eq!((next[0].offset, texts(&next)), (live, vec!["live".to_owned()]));
    assert_eq!(next[0].prev_offset, missed.last().unwrap().0);
}

#[tokio::test]
async fn a_gap_beyond_history_is_reported() {
    let nats = NatsServer::start().await;
    let n1 = TestNode::start(opts(Some(&nats), "alpha")).await;
    let (mut bob, _) = member(&n1, "bob", None).await;
    let first = publish(&mut bob, 10, "m0".into()).await;
    for i in 1..30 {
        publish(&mut bob, 10 + i, format!("m{i}")).await;
    }
    // 29 messages after `first`, 20 retained: she is told of the gap and gets the 20.
    let (mut alice, joined) = member(&n1, "alice", Some(first)).await;
    assert!(joined.history_gap, "the gap is no longer in history");
    assert_eq!(joined.replayed, 20);
    let replay = messages(&mut alice, 20).await;
    assert_eq!(texts(&replay), (10..30).map(|i| format!("m{i}")).collect::<Vec<_>>());
    // Resuming from the latest offset: nothing to replay, no gap.
    let last = replay.last().unwrap().offset;
    let (_carol, joined) = member(&n1, "carol", Some(last)).await;
    assert!(!joined.history_gap);
    assert_eq!((joined.replayed, joined.last_offset), (0, last));
    // An offset that never existed in this room is reported as a gap, not trusted.
    let (_dave, joined) = member(&n1, "dave", Some(last + 1_000_000)).await;
    assert!(joined.history_gap);
}

/// The embedded node (no NATS) keeps history with the same semantics.
#[tokio::test]
async fn the_embedded_node_resumes_too() {
    let node = TestNode::start(opts(None, "solo")).await;
    let (mut bob, _) = member(&node, "bob", None).await;
    let (alice, _) = member(&node, "alice", None).await;
    let first = publish(&mut bob, 10, "m0".into()).await;
    alice.close().await;
    let mut missed = Vec::new();
    for i in 1..5 {
        missed.push(publish(&mut bob, 10 + i, format!("m{i}")).await);
    }
    let (mut alice, joined) = member(&node, "alice", Some(first)).await;
    assert_eq!((joined.history_gap, joined.replayed), (false, 4));
    let replay = messages(&mut alice, 4).await;
    assert_eq!(replay.iter().map(|m| m.offset).collect::<Vec<_>>(), missed);
    assert_chain(&replay, first);
    for i in 5..30 {
        publish(&mut bob, 10 + i, format!("m{i}")).await;
    }
    let (_carol, joined) = member(&node, "carol", Some(first)).await;
    assert_eq!((joined.history_gap, joined.replayed), (true, 20));
}
