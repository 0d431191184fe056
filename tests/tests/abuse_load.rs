//! A bounded abuse load (garbage frames, floods over the rate limit, oversized frames,
//! join/leave storms) runs against a node while two normal clients exchange reliable
//! messages: the normal clients get every message, in order, and their exchange is not
//! starved (compared with a quiet exchange of the same run; the latency figures are printed,
//! RELIABILITY.md records them, and absolute latency is left to the benchmarks).

use bytes::Bytes;
use std::time::{Duration, Instant};
use switchboard_protocol::pb::{client_frame, server_frame, Join, Leave, Publish};
use switchboard_tests::raw::{RawWs, Received};
use switchboard_tests::{token, within, NodeOptions, TestNode};

const MESSAGES: usize = 200;

/// One exchange's figures.
struct Exchange {
    /// Latencies, sorted.
    latencies: Vec<Duration>,
    /// From the first send to the last delivery.
    took: Duration,
}

/// Send `MESSAGES` timestamped messages, paced, from `alice` to `bob`; every one must
/// arrive, in order.
async fn exchange(alice: &mut RawWs, bob: &mut RawWs, epoch: Instant, id0: u64) -> Exchange {
    let started = Instant::now();
    let receive = async {
        let mut lat = Vec::with_capacity(MESSAGES);
        let mut last_sent = 0;
        while lat.len() < MESSAGES {
            if let Received::Frame(server_frame::Kind::Message(m)) = bob.next_within(Duration::from_secs(30)).await {
                let sent: u64 = String::from_utf8_lossy(&m.payload).parse().expect("timestamp");
                assert!(sent > last_sent, "message {} arrived out of order", lat.len());
                last_sent = sent;
                lat.push(epoch.elapsed().saturating_sub(Duration::from_micros(sent)));
            }
        }
        lat
    };
    let send = async {
        for i in 0..MESSAGES as u64 {
            let stamp = epoch.elapsed().as_micros().to_string();
            let p = Publish { room: "normal".into(), payload: Bytes::from(stamp), reliable: true, kind: String::new() };
            alice.send(id0 + i, client_frame::Kind::Publish(p)).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (mut latencies, ()) = tokio::join!(receive, send);
    latencies.sort();
    Exchange { latencies, took: started.elapsed() }
}

fn p(lat: &[Duration], q: f64) -> Duration {
    lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)]
}

async fn abuser(node: &TestNode, kind: usize, n: u64) {
    let (mut ws, _) = RawWs::authenticated(&node.ws_url(), &token(&format!("abuser{n}"), &["*"])).await;
    if kind == 1 {
        ws.send(1, client_frame::Kind::Join(Join { room: "spam".into(), resume_from: None })).await;
    }
    // Publishes: beyond the burst (400) of the default rate (200/s).
    let frames = if kind == 1 { 1000 } else { 300 };
    for i in 0..frames {
        match kind {
            // Garbage and unknown frames.
            0 => ws.send_bytes(Bytes::from(vec![0xff, 0x13, i as u8, 7, 7, 7])).await,
            // Publishes far over the rate limit.
            1 => {
                let p = Publish {
                    room: "spam".into(),
                    payload: Bytes::from_static(b"x"),
                    reliable: true,
                    kind: String::new(),
                };
                ws.send(i + 10, client_frame::Kind::Publish(p)).await
            }
            // Join/leave storms over many rooms.
            _ => {
                let room = format!("storm{}", i % 50);
                ws.send(i * 2 + 10, client_frame::Kind::Join(Join { room: room.clone(), resume_from: None })).await;
                ws.send(i * 2 + 11, client_frame::Kind::Leave(Leave { room })).await;
            }
        }
    }
    // Oversized frames end the session (FRAME_TOO_LARGE); others keep going.
    if kind == 0 {
        ws.send_bytes(Bytes::from(vec![0u8; 300 * 1024])).await;
    }
    ws.close().await;
}

#[tokio::test]
async fn normal_clients_are_unaffected_by_a_bounded_abuse_load() {
    let node = TestNode::start(NodeOptions::default()).await;
    let epoch = Instant::now();
    let (mut alice, _) = RawWs::authenticated(&node.ws_url(), &token("alice", &["normal"])).await;
    let (mut bob, _) = RawWs::authenticated(&node.ws_url(), &token("bob", &["normal"])).await;
    for ws in [&mut alice, &mut bob] {
        ws.send(1, client_frame::Kind::Join(Join { room: "normal".into(), resume_from: None })).await;
        while !matches!(ws.frame().await, server_frame::Kind::Joined(_)) {}
    }
    let quiet = exchange(&mut alice, &mut bob, epoch, 100).await;

    let abuse = async {
        let tasks: Vec<_> = (0..24u64).map(|n| abuser(&node, (n % 3) as usize, n)).collect();
        futures_util::future::join_all(tasks).await;
    };
    let (loaded, ()) = within(Duration::from_secs(60), "the exchange under abuse", async {
        tokio::join!(exchange(&mut alice, &mut bob, epoch, 1000), abuse)
    })
    .await;
    let (q, l) = (&quiet.latencies, &loaded.latencies);
    eprintln!(
        "normal client latency: quiet p50 {:?} p99 {:?} max {:?} (exchange {:?}); under abuse p50 {:?} p99 {:?} \
         max {:?} (exchange {:?})",
        p(q, 0.5),
        p(q, 0.99),
        q[q.len() - 1],
        quiet.took,
        p(l, 0.5),
        p(l, 0.99),
        l[l.len() - 1],
        loaded.took,
    );
    // Every message arrived, in order (`exchange` checked). Not starved: the exchange under
    // abuse takes at most 3 times as long as the quiet one of this run. Both are paced (200
    // messages 5 ms apart, over a second), so the quiet exchange is a floor no scheduler
    // hiccup makes tiny, and a machine slow for both phases slows both; a node serving the
    // abusers' floods ahead of the normal clients would stretch the loaded one by the
    // length of the abuse. Tail latency itself is not asserted: on a loaded 2-core machine
    // (the abusers run on it too) its ratio to the sub-millisecond quiet tail is noise (a
    // fixed 250 ms bound measured 365 ms in a fresh clone); BENCHMARKS.md measures latency.
    assert!(
        loaded.took <= quiet.took * 3,
        "the exchange under abuse took {:?}, the quiet one {:?}",
        loaded.took,
        quiet.took
    );
    let rate_limited = node.metric("switchboard_errors_total{code=\"ERROR_CODE_RATE_LIMITED\"}").await;
    let bad_frames = node.metric("switchboard_errors_total{code=\"ERROR_CODE_BAD_FRAME\"}").await;
    assert!(rate_limited > 0.0 && bad_frames > 0.0, "the abuse was refused ({rate_limited}, {bad_frames})");
}
