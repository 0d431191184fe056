//! Admission at the node's session rate: a burst of new sessions (a reconnect storm) is
//! admitted at `--session-rate`; the rest get a `GoAway` retry hint spread over the time the
//! node needs to admit them, then `RATE_LIMITED`.

use std::time::{Duration, Instant};
use switchboard_protocol::pb::server_frame;
use switchboard_protocol::ErrorCode;
use switchboard_tests::raw::{RawWs, Received};
use switchboard_tests::{token, NodeOptions, TestNode};

#[tokio::test]
async fn a_burst_of_new_sessions_is_admitted_at_the_node_rate() {
    const RATE: f64 = 40.0;
    const CLIENTS: usize = 300;
    let node = TestNode::start(NodeOptions {
        args: vec!["--session-rate".into(), RATE.to_string(), "--max-pending-per-ip".into(), "0".into()],
        ..Default::default()
    })
    .await;
    let url = node.ws_url();
    let started = Instant::now();
    let attempts = (0..CLIENTS).map(|i| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut ws = RawWs::connect(&url).await;
            ws.hello(&token(&format!("storm{i}"), &["r"])).await;
            let mut hint = None;
            loop {
                match ws.next_within(Duration::from_secs(30)).await {
                    Received::Frame(server_frame::Kind::Welcome(_)) => return (Instant::now(), Ok(ws)),
                    Received::Frame(server_frame::Kind::GoAway(g)) => hint = Some(g.reconnect_after_ms),
                    Received::Frame(server_frame::Kind::Error(e)) => {
                        assert_eq!(e.code(), ErrorCode::RateLimited, "{e:?}");
                        return (Instant::now(), Err(hint.expect("a retry hint before the refusal")));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        })
    });
    let results = futures_util::future::join_all(attempts).await;
    let mut admitted = Vec::new();
    let mut hints = Vec::new();
    let mut last = started;
    for r in results {
        let (at, outcome) = r.expect("task");
        last = last.max(at);
        match outcome {
            Ok(ws) => admitted.push(ws),
            Err(hint) => hints.push(hint),
        }
    }
    let window = last.duration_since(started).as_secs_f64();
    let bound = RATE + RATE * window; // the burst plus the rate over the window
    println!(
        "{CLIENTS} at once: {} admitted, {} refused in {window:.2} s (bound {bound:.0}); hints {:?}..{:?} ms",
        admitted.len(),
        hints.len(),
        hints.iter().min(),
        hints.iter().max()
    );
    assert!(admitted.len() as f64 <= bound * 1.1 + 2.0, "admitted {} over the rate bound {bound:.0}", admitted.len());
    assert!(admitted.len() as f64 >= RATE * 0.9, "at least the burst is admitted");
    assert_eq!(admitted.len() + hints.len(), CLIENTS);
    // The hints spread the refused over the time the node needs to admit them.
    let needed_ms = hints.len() as f64 / RATE * 1000.0;
    let max_hint = f64::from(*hints.iter().max().expect("some refused"));
    assert!(hints.iter().all(|h| *h >= 500), "hints are at least 500 ms");
    assert!(max_hint >= needed_ms.min(20_000.0) * 0.4, "hints spread over {max_hint} ms, {needed_ms} needed");
    let refusals = node.metric("switchboard_admission_refusals_total{reason=\"session_rate\"}").await;
    assert_eq!(refusals as usize, hints.len());
}
