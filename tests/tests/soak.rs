//! Soak: a mixed load on two nodes and one nats-server for a long, bounded time, with one
//! node restarted (graceful drain, then a new process on the same ports) every few minutes.
//! Not in the test command (it takes as long as it is told to):
//!
//! ```sh
//! SOAK_MINUTES=30 SOAK_RESTART_SECS=300 cargo test --release -p switchboard-tests --test soak -- --ignored --nocapture
//! ```
//!
//! The load: rooms of members who each publish numbered reliable messages (the members are
//! `ReconnectingClient`s over both nodes, so a drained node's members move and resume), a
//! lobby of listeners receiving a steady stream of unreliable messages, and a churner that
//! connects, joins, leaves and disconnects in a loop. The two nodes take turns being
//! restarted, so each restart moves the clients the previous one sent over. Every half
//! minute it prints each node's RSS and open file descriptors and the NATS server's
//! subscription count. At the end it checks that every acknowledged reliable message
//! reached every member exactly once, in order, and that after the clients leave both
//! nodes' descriptors and the NATS subscriptions are back to their values before the load.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_client::{Client, ClientConfig, Event, Events, ReconnectPolicy, ReconnectingClient};
use switchboard_tests::{token, wait_for, NatsServer, NodeOptions, TestNode};

const ROOMS: usize = 4;
const MEMBERS: usize = 4;
const SEND_EVERY: Duration = Duration::from_millis(200);
const LISTENERS: usize = 100;
const LOBBY_EVERY: Duration = Duration::from_millis(20);

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default))
}

async fn reconnecting(urls: &[String], user: &str, rooms: &[&str]) -> (ReconnectingClient, Events) {
    let configs = urls.iter().map(|u| ClientConfig::new(u.clone(), token(user, rooms))).collect();
    let policy = ReconnectPolicy { initial: Duration::from_millis(100), ..ReconnectPolicy::default() };
    ReconnectingClient::connect(configs, policy).await.expect("connect")
}

/// Per sender: the sequence numbers received, in order.
type Received = BTreeMap<String, Vec<u64>>;

/// Collect a member's messages until the load has stopped and the room has been quiet for
/// five seconds (a quiet spell while the load runs, e.g. during a move, does not end it).
async fn receive(mut events: Events, stop: Arc<AtomicBool>) -> Received {
    let mut got = Received::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(Event::Message(m))) => {
                let from = m.from.map(|f| f.user).unwrap_or_default();
                if let Ok(seq) = String::from_utf8_lossy(&m.payload).parse() {
                    got.entry(from).or_default().push(seq);
                }
            }
            Ok(Some(Event::Closed { .. })) if stop.load(Ordering::Relaxed) => break,
            Ok(Some(Event::Closed { code, reason })) => panic!("a member's client gave up: {code:?} {reason}"),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) if stop.load(Ordering::Relaxed) => break,
            Err(_) => {}
        }
    }
    got
}

struct Sample {
    at: Duration,
    rss_kib: [Option<u64>; 2],
    fds: [Option<usize>; 2],
    nats_subs: u64,
}

async fn sample(started: Instant, nodes: &[TestNode], nats: &NatsServer) -> Sample {
    let subsz = nats.monitor("/subsz").await;
    Sample {
        at: started.elapsed(),
        rss_kib: [nodes[0].rss_kib(), nodes[1].rss_kib()],
        fds: [nodes[0].open_fds(), nodes[1].open_fds()],
        nats_subs: subsz["num_subscriptions"].as_u64().unwrap_or(0),
    }
}

fn print(s: &Sample, note: &str) {
    eprintln!(
        "soak t={:>5}s  node0: rss {:>7} KiB fds {:>4} | node1: rss {:>7} KiB fds {:>4} | nats subs {:>5}  {note}",
        s.at.as_secs(),
        s.rss_kib[0].unwrap_or(0),
        s.fds[0].unwrap_or(0),
        s.rss_kib[1].unwrap_or(0),
        s.fds[1].unwrap_or(0),
        s.nats_subs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long-running soak; run explicitly (see the module docs)"]
async fn soak_with_node_restarts() {
    let total = env_secs("SOAK_MINUTES", 30).max(Duration::from_secs(1)) * 60;
    let restart_every = env_secs("SOAK_RESTART_SECS", 300);
    let nats = NatsServer::start().await;
    let opts = |id: &str| NodeOptions {
        nats_url: Some(nats.url()),
        node_id: Some(id.into()),
        args: ["--drain-timeout", "5", "--node-timeout", "5"].iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let (n0, n1) = tokio::join!(TestNode::start(opts("node0")), TestNode::start(opts("node1")));
    let mut nodes = [n0, n1];
    let urls = [nodes[0].ws_url(), nodes[1].ws_url()];
    let started = Instant::now();
    let before = sample(started, &nodes, &nats).await;
    print(&before, "before the load");

    // Reliable rooms: members alternate between the nodes for their first connection.
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    let mut members = Vec::new();
    for r in 0..ROOMS {
        let room = format!("soak-{r}");
        for m in 0..MEMBERS {
            let user = format!("m{r}-{m}");
            let mut order = urls.to_vec();
            order.rotate_left(m % 2);
            let (client, events) = reconnecting(&order, &user, &[&room]).await;
            client.join(&room).await.expect("join");
            receivers.push((room.clone(), user.clone(), tokio::spawn(receive(events, stop.clone()))));
            members.push((room.clone(), user, client));
        }
    }
    // Everyone is in before anyone sends, so every member can expect every message.
    for (room, user, client) in members {
        let (stop, refused) = (stop.clone(), refused.clone());
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match client.publish(&room, seq.to_string().into(), true, "").await {
                    Ok(_) => acked.push(seq),
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                seq += 1;
                tokio::time::sleep(SEND_EVERY).await;
            }
            (room, user, acked, client)
        }));
    }
    // The lobby: listeners on both nodes, one publisher of unreliable messages.
    let mut listeners = Vec::new();
    for i in 0..LISTENERS {
        let (client, events) = reconnecting(&[urls[i % 2].clone(), urls[(i + 1) % 2].clone()], "l", &["lobby"]).await;
        client.join("lobby").await.expect("join the lobby");
        listeners.push((client, events));
    }
    let lobby_received = Arc::new(AtomicU64::new(0));
    let mut lobby_tasks = Vec::new();
    for (client, mut events) in listeners {
        let count = lobby_received.clone();
        lobby_tasks.push(tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if matches!(ev, Event::Message(_)) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(client);
        }));
    }
    let lobby_publisher = {
        let stop = stop.clone();
        let urls = urls.clone();
        tokio::spawn(async move {
            let (client, _events) = reconnecting(&[urls[1].clone(), urls[0].clone()], "announcer", &["lobby"]).await;
            client.join("lobby").await.expect("the announcer joins the lobby");
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if client.publish_nowait("lobby", "x".repeat(100).into(), false, "").await.is_ok() {
                    sent += 1;
                }
                tokio::time::sleep(LOBBY_EVERY).await;
            }
            client.close().await;
            sent
        })
    };
    // The churner: connect, join, leave, close, alternating nodes.
    let churner = {
        let stop = stop.clone();
        let urls = urls.clone();
        tokio::spawn(async move {
            let (mut cycles, mut failed) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let url = &urls[(cycles + failed) as usize % 2];
                let ok = async {
                    let (client, _events) =
                        Client::connect(ClientConfig::new(url, token("churn", &["churn"]))).await.ok()?;
                    client.join("churn").await.ok()?;
                    client.leave("churn").await.ok()?;
                    client.close().await;
                    Some(())
                };
                match tokio::time::timeout(Duration::from_secs(10), ok).await {
                    Ok(Some(())) => cycles += 1,
                    _ => {
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (cycles, failed)
        })
    };

    // Run, sampling every 30 s and restarting one node on schedule.
    let mut samples = Vec::new();
    let mut next_restart = restart_every;
    let mut restarts = 0;
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(30).min(total.saturating_sub(started.elapsed()))).await;
        let mut note = String::new();
        if started.elapsed() >= next_restart && started.elapsed() + Duration::from_secs(30) < total {
            // Alternate, so each restart moves the clients the previous one sent over.
            let node = &mut nodes[restarts % 2];
            node.terminate();
            let code = node.wait_exit(Duration::from_secs(30)).await;
            node.restart().await;
            note = format!("node{} restarted (drained, exit code {code:?})", restarts % 2);
            restarts += 1;
            next_restart += restart_every;
        }
        let s = sample(started, &nodes, &nats).await;
        print(&s, &note);
        samples.push(s);
    }

    // Stop the load, let the last messages arrive, then check.
    stop.store(true, Ordering::Relaxed);
    let lobby_sent = lobby_publisher.await.expect("lobby publisher");
    let (cycles, churn_failed) = churner.await.expect("churner");
    let mut acked: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    let mut clients = Vec::new();
    for s in senders {
        let (room, user, seqs, client) = s.await.expect("sender");
        acked.insert((room, user), seqs);
        clients.push(client);
    }
    // The receivers end once their rooms have been quiet for a while; only then close.
    let mut received = Vec::new();
    for (room, user, task) in receivers {
        received.push((room, user, task.await.expect("receiver")));
    }
    for c in &clients {
        c.close().await;
    }
    let (mut lost, mut duplicated, mut out_of_order, mut delivered) = (0usize, 0usize, 0usize, 0usize);
    for (room, user, got) in received {
        for ((sender_room, sender), seqs) in &acked {
            if *sender_room != room || *sender == user {
                continue;
            }
            let received = got.get(sender).cloned().unwrap_or_default();
            delivered += received.len();
            let mut sorted = received.clone();
            sorted.sort_unstable();
            sorted.dedup();
            duplicated += received.len() - sorted.len();
            out_of_order += received.windows(2).filter(|w| w[0] >= w[1]).count();
            let missing: Vec<u64> = seqs.iter().copied().filter(|s| sorted.binary_search(s).is_err()).collect();
            if !missing.is_empty() {
                eprintln!(
                    "soak: {user} in {room} missed {sender}'s acknowledged {missing:?} (received {})",
                    sorted.len()
                );
            }
            lost += missing.len();
        }
    }
    for t in lobby_tasks {
        t.abort();
    }
    // Back to idle: every client gone from both nodes, the NATS subscriptions of rooms and
    // inboxes released.
    for node in &nodes {
        wait_for(Duration::from_secs(60), "the nodes to have no connection left", || async {
            (node.metric("switchboard_connections{transport=\"websocket\"}").await == 0.0).then_some(())
        })
        .await;
    }
    let what = "the NATS subscriptions to return to their level before the load";
    let after = wait_for(Duration::from_secs(60), what, || {
        let (nodes, nats) = (&nodes, &nats);
        async move {
            let s = sample(started, nodes, nats).await;
            (s.nats_subs <= before.nats_subs).then_some(s)
        }
    })
    .await;
    print(&after, "after the load");
    let acked_total: usize = acked.values().map(Vec::len).sum();
    eprintln!(
        "soak: {:.0} min, {restarts} restarts; reliable: {acked_total} acknowledged, {} refused, {delivered} deliveries, \
         lost {lost}, duplicated {duplicated}, out of order {out_of_order}; lobby: {lobby_sent} sent, {} received; \
         churn: {cycles} cycles, {churn_failed} failed",
        total.as_secs_f64() / 60.0,
        refused.load(Ordering::Relaxed),
        lobby_received.load(Ordering::Relaxed),
    );
    assert_eq!(lost, 0, "acknowledged reliable messages were lost");
    assert_eq!(duplicated, 0, "reliable messages were delivered twice");
    assert_eq!(out_of_order, 0, "reliable messages arrived out of order");
    assert!(lobby_received.load(Ordering::Relaxed) > 0, "the lobby listeners received nothing");
    for i in 0..2 {
        let growth = after.fds[i].unwrap_or(0).saturating_sub(before.fds[i].unwrap_or(0));
        assert!(growth <= 2, "node{i} kept {growth} descriptors more than before the load");
    }
}
