//! Webhooks against real nodes and a real HTTP receiver: every event type, signed and
//! filtered; a failed POST retried; one delivery per event across two nodes; an event held
//! by a node that dies delivered by another; a hung endpoint costs only the bounded queue.

use std::collections::{HashMap, HashSet};
use std::time::Duration;
use switchboard_client::{pb, Client, ClientConfig, Event};
use switchboard_relay::webhooks::signature;
use switchboard_tests::{token, wait_for, within, NatsServer, NodeOptions, TestNode, WebhookReceiver, WAIT};

const SECRET: &str = "webhook-test-secret-0123456789";
const KEY: &str = "webhook-admin-key";

fn hook_args(endpoints: &[String], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    for e in endpoints {
        args.extend(["--webhook".into(), e.clone()]);
    }
    args.extend(["--webhook-secret".into(), SECRET.into(), "--admin-key".into(), KEY.into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A node on `nats` with webhooks `endpoints` (and `extra` flags).
fn clustered(nats: &NatsServer, id: &str, endpoints: &[String], extra: &[&str]) -> NodeOptions {
    NodeOptions {
        nats_url: Some(nats.url()),
        node_id: Some(id.into()),
        args: hook_args(endpoints, extra),
        ..Default::default()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Check a delivery's signature and headers; its JSON body.
fn verified(d: &switchboard_tests::webhook_receiver::Delivery) -> serde_json::Value {
    let header = d.header("webhook-signature").expect("a Webhook-Signature header");
    signature::verify(SECRET, header, &d.body, now_secs()).expect("a valid signature");
    assert_eq!(
        signature::verify("another-secret-000000", header, &d.body, now_secs()),
        Err(signature::SignatureError::Mismatch)
    );
    let body = d.json();
    assert_eq!(d.header("webhook-id"), body["id"].as_str(), "Webhook-Id is the event id");
    assert_eq!(d.header("content-type"), Some("application/json"));
    body
}

/// Receive until every type in `types` has been answered 200; returns the 200-answered
/// bodies by type and every delivery in order.
async fn collect(
    receiver: &mut WebhookReceiver,
    types: &[&str],
    limit: Duration,
) -> (HashMap<String, Vec<serde_json::Value>>, Vec<(u16, serde_json::Value)>) {
    let counts: Vec<(&str, usize)> = types.iter().map(|t| (*t, 1)).collect();
    collect_counts(receiver, &counts, limit).await
}

/// Receive until each `(type, count)` has been answered 200 at least `count` times.
async fn collect_counts(
    receiver: &mut WebhookReceiver,
    counts: &[(&str, usize)],
    limit: Duration,
) -> (HashMap<String, Vec<serde_json::Value>>, Vec<(u16, serde_json::Value)>) {
    let mut ok: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    let mut all = Vec::new();
    within(limit, "the webhook events", async {
        while !counts.iter().all(|(t, n)| ok.get(*t).is_some_and(|v| v.len() >= *n)) {
            let d = receiver.next().await;
            let body = verified(&d);
            all.push((d.status, body.clone()));
            if d.status == 200 {
                ok.entry(body["type"].as_str().unwrap().to_owned()).or_default().push(body);
            }
        }
    })
    .await;
    (ok, all)
}

#[tokio::test]
async fn every_event_is_signed_filtered_and_retried() {
    let (mut all_events, mut calls_only) = (WebhookReceiver::start().await, WebhookReceiver::start().await);
    // The first POST fails: it must come again, with the same id.
    all_events.answer_next(&[500]);
    let node = TestNode::start(NodeOptions {
        args: hook_args(&[all_events.url.clone(), format!("{} call.*", calls_only.url)], &[]),
        ..Default::default()
    })
    .await;
    let (alice, _a) = Client::connect(ClientConfig::new(node.ws_url(), token("alice", &["demo"]))).await.unwrap();
    let (bob, mut bob_events) =
        Client::connect(ClientConfig::new(node.ws_url(), token("bob", &["demo"]))).await.unwrap();
    alice.join("demo").await.unwrap();
    bob.join("demo").await.unwrap();
    let call = alice.call_invite(&["bob"], pb::CallMedia::Audio).await.unwrap();
    bob.call_answer(&call, true).await.unwrap();
    alice.call_end(&call).await.unwrap();
    let (status, body) = node.admin(Some(KEY), "/api/rooms/demo/kick", Some(r#"{"user":"bob","reason":"spam"}"#)).await;
    assert_eq!(status, 202, "{body}");
    within(WAIT, "bob's Left", async { while !matches!(bob_events.recv().await, Some(Event::Left(_)) | None) {} })
        .await;
    let (status, _) =
        node.admin(Some(KEY), "/api/users/bob/disconnect", Some(r#"{"reason":"abuse","ban_seconds":60}"#)).await;
    assert_eq!(status, 202);
    alice.leave("demo").await.unwrap();

    // Delivery runs `--webhook-concurrency` POSTs at once, so the order is not fixed: wait
    // for every event by count. Two `user.kicked`: the room kick and the node-wide
    // disconnect (whose `user.banned` comes with it).
    let expected = [
        ("room.started", 1),
        ("participant.joined", 2),
        ("call.created", 1),
        ("call.answered", 1),
        ("call.ended", 1),
        ("user.kicked", 2),
        ("user.banned", 1),
        ("participant.left", 2),
        ("room.finished", 1),
    ];
    let (ok, all) = collect_counts(&mut all_events, &expected, 3 * WAIT).await;
    for (kind, count) in expected {
        assert_eq!(ok[kind].len(), count, "{kind}: {:?}", ok[kind]);
    }
    // The first attempt failed: it came again with the same id and body.
    let (failed_status, failed) = all[0].clone();
    assert_eq!(failed_status, 500);
    assert!(all[1..].iter().any(|(s, b)| *s == 200 && *b == failed), "the failed POST was retried: {all:?}");

    let joined: HashSet<&str> = ok["participant.joined"].iter().map(|e| e["data"]["user"].as_str().unwrap()).collect();
    assert_eq!(joined, HashSet::from(["alice", "bob"]));
    let started = &ok["room.started"][0]["data"];
    assert_eq!(started["room"], "demo");
    let finished = &ok["room.finished"][0]["data"];
    assert_eq!(finished["started_at_ms"], started["started_at_ms"]);
    assert_eq!(ok["call.ended"][0]["data"]["call"]["outcome"], "completed");
    assert_eq!(ok["call.created"][0]["data"]["call"]["id"], call.as_str());
    assert_eq!(ok["user.banned"][0]["data"]["user"], "bob");
    let mut kicked: Vec<&str> = ok["user.kicked"].iter().map(|e| e["data"]["room"].as_str().unwrap()).collect();
    kicked.sort();
    assert_eq!(kicked, ["", "demo"], "one kick from the room, one from the node");
    let mut left: Vec<(&str, &str)> = ok["participant.left"]
        .iter()
        .map(|e| (e["data"]["user"].as_str().unwrap(), e["data"]["reason"].as_str().unwrap()))
        .collect();
    left.sort();
    assert_eq!(left, vec![("alice", "left"), ("bob", "spam")]);

    // The filtered endpoint gets the call events and nothing else.
    let (calls, _) = collect(&mut calls_only, &["call.created", "call.answered", "call.ended"], WAIT).await;
    assert_eq!(calls.values().map(Vec::len).sum::<usize>(), 3);
    // 12 events to the first endpoint and 3 to the second, each sent once (the first
    // endpoint's failure is counted apart).
    wait_for(WAIT, "the sent count", || async {
        (node.metric("switchboard_webhook_sent_total").await == 15.0).then_some(())
    })
    .await;
    assert_eq!(node.metric("switchboard_webhook_failed_total").await, 1.0);
    assert_eq!(node.metric("switchboard_webhook_retried_total").await, 1.0);
    let typed = node.metric("switchboard_webhook_events_total{kind=\"participant.left\"}").await;
    assert_eq!(typed, 2.0);
}

#[tokio::test]
async fn two_nodes_deliver_each_event_once() {
    let nats = NatsServer::start().await;
    let mut receiver = WebhookReceiver::start().await;
    let url = receiver.url.clone();
    let endpoints = [format!("{url} room.*,participant.*")];
    let opts = |id: &str| clustered(&nats, id, &endpoints, &[]);
    let (n1, n2) = tokio::join!(TestNode::start(opts("hook1")), TestNode::start(opts("hook2")));
    let (alice, _a) = Client::connect(ClientConfig::new(n1.ws_url(), token("alice", &["r1"]))).await.unwrap();
    let (bob, _b) = Client::connect(ClientConfig::new(n2.ws_url(), token("bob", &["r1"]))).await.unwrap();
    // Concurrent first joins on two nodes, then concurrent last leaves: one start, one finish.
    let (a, b) = tokio::join!(alice.join("r1"), bob.join("r1"));
    a.unwrap();
    b.unwrap();
    let (a, b) = tokio::join!(alice.leave("r1"), bob.leave("r1"));
    a.unwrap();
    b.unwrap();

    let (ok, all) =
        collect(&mut receiver, &["room.started", "participant.joined", "participant.left", "room.finished"], 3 * WAIT)
            .await;
    let mut seen: Vec<serde_json::Value> = all.into_iter().map(|(_, b)| b).collect();
    within(WAIT, "all six events", async {
        while seen.len() < 6 {
            let d = receiver.next().await;
            seen.push(verified(&d));
        }
    })
    .await;
    let ids: HashSet<&str> = seen.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), seen.len(), "an event was delivered twice: {seen:#?}");
    let count = |t: &str| seen.iter().filter(|e| e["type"] == t).count();
    assert_eq!(
        [count("room.started"), count("participant.joined"), count("participant.left"), count("room.finished")],
        [1, 2, 2, 1],
        "{seen:#?}"
    );
    assert!(!ok.contains_key("call.created"));
    // Each was sent by one node only: the nodes' sent counts add up to six.
    wait_for(WAIT, "six deliveries in all", || async {
        let sent =
            n1.metric("switchboard_webhook_sent_total").await + n2.metric("switchboard_webhook_sent_total").await;
        (sent == 6.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_event_held_by_a_dead_node_is_delivered_by_another() {
    let nats = NatsServer::start().await;
    let mut receiver = WebhookReceiver::start().await;
    let url = receiver.url.clone();
    let opts = |id: &str| clustered(&nats, id, std::slice::from_ref(&url), &["--webhook-timeout", "25"]);
    // The endpoint hangs: node 1 takes the event and waits on its POST.
    receiver.hold(true);
    let mut n1 = TestNode::start(opts("dies1")).await;
    let (status, _) = n1.admin(Some(KEY), "/api/users/mallory/disconnect", Some(r#"{"reason":"x"}"#)).await;
    assert_eq!(status, 202);
    let held = within(WAIT, "the first attempt", receiver.next()).await;
    assert_eq!(held.status, 0);
    let id = verified(&held)["id"].as_str().unwrap().to_owned();
    n1.kill();
    receiver.hold(false);
    // Another node takes the event over once node 1's hold on it lapses.
    let n2 = TestNode::start(opts("lives2")).await;
    let delivered = within(Duration::from_secs(90), "the event from node 2", async {
        loop {
            let d = receiver.next().await;
            if d.status == 200 {
                return d;
            }
        }
    })
    .await;
    assert_eq!(verified(&delivered)["id"].as_str(), Some(id.as_str()));
    wait_for(WAIT, "node 2's count", || async {
        (n2.metric("switchboard_webhook_sent_total").await == 1.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_hung_endpoint_costs_only_the_bounded_queue() {
    let mut receiver = WebhookReceiver::start().await;
    receiver.hold(true);
    let node = TestNode::start(NodeOptions {
        args: hook_args(&[format!("{} participant.joined", receiver.url)], &["--webhook-queue", "2"]),
        ..Default::default()
    })
    .await;
    // More joins than the queue holds while every POST hangs: the relay carries on, the
    // overflow is counted.
    let mut clients = Vec::new();
    for i in 0..8 {
        let user = format!("u{i}");
        let (c, e) = Client::connect(ClientConfig::new(node.ws_url(), token(&user, &["busy"]))).await.unwrap();
        c.join("busy").await.unwrap();
        clients.push((c, e));
    }
    within(WAIT, "a held POST", receiver.next()).await;
    wait_for(WAIT, "dropped events to be counted", || async {
        (node.metric("switchboard_webhook_dropped_total{reason=\"queue_full\"}").await >= 1.0).then_some(())
    })
    .await;
    let (sender, _) = &clients[0];
    let offset = sender.publish("busy", "still relaying".into(), true, "").await.unwrap();
    assert!(offset > 0);
}

#[tokio::test]
async fn the_rooms_a_dead_node_leaves_alone_finish() {
    let nats = NatsServer::start().await;
    let mut receiver = WebhookReceiver::start().await;
    let url = receiver.url.clone();
    let endpoints = [format!("{url} room.*,participant.left")];
    let opts = |id: &str| clustered(&nats, id, &endpoints, &["--node-timeout", "3"]);
    let (mut n1, n2) = tokio::join!(TestNode::start(opts("alone1")), TestNode::start(opts("other2")));
    // Node 2 must have heard node 1 to notice its silence: wait for one of node 1's
    // heartbeats after both are up (node 2 listens before it turns ready).
    let nats_client = async_nats::connect(nats.url()).await.unwrap();
    let mut beats = nats_client.subscribe("sb.node.alone1.heartbeat").await.unwrap();
    within(WAIT, "a heartbeat of node 1", futures_util::StreamExt::next(&mut beats)).await;
    // Alice is the only one in "solo", on node 1; bob is on node 2 elsewhere.
    let (alice, _a) = Client::connect(ClientConfig::new(n1.ws_url(), token("alice", &["solo"]))).await.unwrap();
    let (bob, _b) = Client::connect(ClientConfig::new(n2.ws_url(), token("bob", &["elsewhere"]))).await.unwrap();
    alice.join("solo").await.unwrap();
    bob.join("elsewhere").await.unwrap();
    let (started, _) = collect(&mut receiver, &["room.started"], 3 * WAIT).await;
    let mut rooms: HashSet<String> = started["room.started"].iter().map(|e| e["data"]["room"].to_string()).collect();
    within(WAIT, "both rooms started", async {
        while rooms.len() < 2 {
            let d = receiver.next().await;
            let body = verified(&d);
            assert_eq!(body["type"], "room.started", "{body}");
            rooms.insert(body["data"]["room"].to_string());
        }
    })
    .await;
    // Node 1 dies: nobody hosts "solo" any more, yet it is reported left and finished.
    n1.kill();
    let (ended, _) = collect(&mut receiver, &["participant.left", "room.finished"], 6 * WAIT).await;
    let left = &ended["participant.left"][0]["data"];
    assert_eq!(
        (left["user"].as_str(), left["reason"].as_str(), left["room"].as_str()),
        (Some("alice"), Some("node_lost"), Some("solo"))
    );
    assert_eq!(ended["room.finished"][0]["data"]["room"], "solo");
    // Its presence record is gone too, and "elsewhere" is untouched.
    let (_, body) = n2.admin(Some(KEY), "/api/rooms", None).await;
    assert_eq!(body["rooms"], serde_json::json!([{"room": "elsewhere", "participants": 1}]), "{body}");
}
