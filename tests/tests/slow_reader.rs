//! A client that stops reading cannot grow the server's memory: its bounded queue
//! overflows and it is disconnected with SLOW_CONSUMER, while the room carries on.

use bytes::Bytes;
use std::time::Duration;
use switchboard_protocol::pb::{client_frame, server_frame, Join, Publish};
use switchboard_protocol::{close_code, ErrorCode};
use switchboard_tests::raw::{RawWs, Received};
use switchboard_tests::{token, wait_for, NodeOptions, TestNode};

const MESSAGES: u64 = 600;
/// Allowed RSS growth: the slow session's bounded queues and buffers, far below what was sent.
const MAX_GROWTH_KIB: u64 = 48 * 1024;
const PAYLOAD: usize = 200 * 1024;
const BATCH: u64 = 10;

#[tokio::test]
async fn slow_reader_is_disconnected_and_memory_stays_bounded() {
    // The publisher sends 600 requests as fast as acks come back: above the default
    // per-session request rate, which is not what this test is about.
    let node =
        // Room history is bounded separately (it keeps what was sent, by design): keep it
        // small here so the growth measured is the slow reader's.
        TestNode::start(NodeOptions {
            args: vec![
                "--request-rate".into(),
                "100000".into(),
                "--history-max-bytes".into(),
                "4194304".into(),
            ],
            ..Default::default()
        })
            .await;
    let join = |_id: u64| client_frame::Kind::Join(Join { room: "flood".into(), resume_from: None });
    let (mut slow, _) = RawWs::authenticated(&node.ws_url(), &token("slow", &["flood"])).await;
    slow.send(2, join(2)).await;
    assert!(matches!(slow.frame().await, server_frame::Kind::Joined(_)));
    let (mut fast, _) = RawWs::authenticated(&node.ws_url(), &token("fast", &["flood"])).await;
    fast.send(2, join(2)).await;
    assert!(matches!(fast.frame().await, server_frame::Kind::Joined(_)));
    let (mut publisher, _) = RawWs::authenticated(&node.ws_url(), &token("pub", &["flood"])).await;
    publisher.send(2, join(2)).await;
    assert!(matches!(publisher.frame().await, server_frame::Kind::Joined(_)));
    let rss_before = node.rss_kib().expect("node RSS");

    // The publisher sends in batches; `fast` reads each batch before the next one is sent
    // (a reader that keeps up), `slow` reads nothing.
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    let mut received = 0;
    for batch in 0..MESSAGES / BATCH {
        for i in 0..BATCH {
            let p = Publish { room: "flood".into(), payload: payload.clone(), reliable: true, kind: String::new() };
            publisher.send(100 + batch * BATCH + i, client_frame::Kind::Publish(p)).await;
        }
        let mut acks = 0;
        while acks < BATCH {
            match publisher.frame().await {
                server_frame::Kind::Ack(_) => acks += 1,
                server_frame::Kind::Error(e) => panic!("publisher got {e:?}"),
                _ => {}
            }
        }
        let target = (batch + 1) * BATCH;
        while received < target {
            match fast.next().await {
                Received::Frame(server_frame::Kind::Message(_)) => received += 1,
                Received::Frame(_) => {}
                Received::Closed(c) => panic!("the reader that keeps up was closed: {c:?}"),
            }
        }
    }
    assert_eq!(received, MESSAGES);
    // The slow reader was cut off.
    wait_for(Duration::from_secs(20), "a slow-consumer disconnect", || async {
        (node.metric("switchboard_slow_consumer_disconnects_total").await >= 1.0).then_some(())
    })
    .await;
    let rss_after = node.rss_kib().expect("node RSS");
    let sent_kib = MESSAGES * PAYLOAD as u64 / 1024;
    let growth = rss_after.saturating_sub(rss_before);
    eprintln!("rss before {rss_before} KiB, after {rss_after} KiB, sent {sent_kib} KiB per reader");
    assert!(
        growth < MAX_GROWTH_KIB,
        "RSS grew by {growth} KiB while {sent_kib} KiB were sent to a client that does not read"
    );
    // When it finally reads, it finds what was in flight, then SLOW_CONSUMER and the close.
    let mut saw_error = false;
    let code = loop {
        match slow.next().await {
            Received::Frame(server_frame::Kind::Error(e)) => {
                assert_eq!(e.code(), ErrorCode::SlowConsumer);
                saw_error = true;
            }
            Received::Frame(_) => {}
            Received::Closed(code) => break code,
        }
    };
    assert_eq!(code, Some(close_code(ErrorCode::SlowConsumer)));
    assert!(saw_error, "the slow client is told why");
}
