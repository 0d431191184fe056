//! The presence audit against a real nats-server: a node's record removed from the presence
//! bucket behind its back (as a JetStream replica's catch-up lost acknowledged writes after
//! a NATS split, RELIABILITY.md) comes back without any reconnect or heal; a stale record
//! carrying the node's id goes; another node's record stays; the repairs are counted
//! (`switchboard_presence_store_repairs_total`). Without the audit the bucket stays wrong.

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use std::time::Duration;
use switchboard_client::{Client, ClientConfig};
use switchboard_protocol::pb::Participant;
use switchboard_protocol::ProstMessage as _;
use switchboard_tests::{token, wait_for, NatsServer, NodeOptions, TestNode};

const ROOM: &str = "audit";

/// `(session, user, node)` of every record of the room, sorted.
async fn records(kv: &kv::Store) -> Vec<(String, String, String)> {
    let mut keys = kv.keys().await.expect("keys");
    let mut out = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.expect("key");
        let Some(session) = key.strip_prefix(&format!("{ROOM}.")) else { continue };
        if let Ok(Some(v)) = kv.get(&key).await {
            let p = Participant::decode(v).expect("a presence record");
            out.push((session.to_owned(), p.user, p.node));
        }
    }
    out.sort();
    out
}

fn record(user: &str, session: &str, node: &str) -> bytes::Bytes {
    Participant { user: user.into(), session: session.into(), node: node.into(), ..Default::default() }
        .encode_to_vec()
        .into()
}

#[tokio::test]
async fn a_record_lost_by_the_store_is_put_back_and_a_stale_one_removed() {
    let nats = NatsServer::start().await;
    let node = TestNode::start(NodeOptions {
        nats_url: Some(nats.url()),
        node_id: Some("audited".into()),
        args: ["--presence-audit-interval", "1"].map(String::from).to_vec(),
        ..Default::default()
    })
    .await;
    let (alice, _events) = Client::connect(ClientConfig::new(node.ws_url(), token("alice", &[ROOM]))).await.unwrap();
    alice.join(ROOM).await.expect("join");
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("the test's NATS client"));
    let kv = js.get_key_value("sb_presence").await.expect("presence bucket");
    let limit = Duration::from_secs(20);
    let alice_record = wait_for(limit, "alice's record", || async {
        records(&kv).await.into_iter().find(|(_, user, _)| user == "alice")
    })
    .await;
    let alice_key = format!("{ROOM}.{}", alice_record.0);

    // Behind the node's back: alice's record gone (no marker left, as a lost write), a
    // record of the node for a session it does not have, and another node's record.
    kv.put(format!("{ROOM}.ghost"), record("ghost", "ghost", "audited")).await.unwrap();
    kv.put(format!("{ROOM}.elsewhere"), record("bob", "elsewhere", "other-node")).await.unwrap();
    kv.purge(&alice_key).await.unwrap();
    assert!(kv.get(&alice_key).await.unwrap().is_none());

    let mut expected = vec![
        (alice_record.0.clone(), "alice".to_owned(), "audited".to_owned()),
        ("elsewhere".to_owned(), "bob".to_owned(), "other-node".to_owned()),
    ];
    expected.sort();
    let started = std::time::Instant::now();
    wait_for(limit, "the audit to repair the bucket (alice back, the ghost gone, bob kept)", || async {
        (records(&kv).await == expected).then_some(())
    })
    .await;
    eprintln!("bucket repaired {:.1?} after the tampering", started.elapsed());
    let missing = node.metric("switchboard_presence_store_repairs_total{kind=\"missing\"}").await;
    let stale = node.metric("switchboard_presence_store_repairs_total{kind=\"stale\"}").await;
    assert!(missing >= 1.0 && stale >= 1.0, "repairs counted: missing {missing}, stale {stale}");
    alice.close().await;
}
