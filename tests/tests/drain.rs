//! SIGTERM drains a node: unready at once, clients told to move (GoAway), the process
//! exits 0 once they have left.

use std::time::Duration;
use switchboard_protocol::pb::server_frame;
use switchboard_tests::raw::RawWs;
use switchboard_tests::{token, NodeOptions, TestNode};

#[tokio::test]
async fn sigterm_turns_unready_sends_goaway_and_exits_cleanly() {
    let mut node =
        TestNode::start(NodeOptions { args: vec!["--drain-timeout".into(), "20".into()], ..Default::default() }).await;
    let (mut ws, _) = RawWs::authenticated(&node.ws_url(), &token("dora", &["demo"])).await;
    node.terminate();
    match ws.frame().await {
        server_frame::Kind::GoAway(g) => {
            assert_eq!(g.reason, "node draining");
            assert!(g.reconnect_after_ms < 5_000, "reconnect hint is spread over at most 5 s");
        }
        other => panic!("expected GoAway, got {other:?}"),
    }
    let (status, body) = node.get("/readyz").await;
    assert_eq!(status, 503, "draining node must be unready: {body}");
    assert!(body.contains("\"draining\":true"), "{body}");
    // New WebSocket sessions are refused while draining.
    let (status, _) = node.get("/ws").await;
    assert_eq!(status, 503);
    // The client leaves; the node exits 0 well before the deadline.
    ws.close().await;
    assert_eq!(node.wait_exit(Duration::from_secs(15)).await, Some(0));
}

/// Both transports, both binaries: WebTransport sessions get GoAway too, and the standalone
/// `webtransport-server` drains and exits 0 on SIGTERM.
#[tokio::test]
async fn webtransport_sessions_drain_on_both_binaries() {
    use switchboard_tests::raw_wt::RawWt;
    for standalone in [false, true] {
        let opts = NodeOptions { args: vec!["--drain-timeout".into(), "20".into()], ..Default::default() };
        let mut node =
            if standalone { TestNode::start_webtransport_only(opts).await } else { TestNode::start(opts).await };
        let hash = node.cert_hash().await;
        let (mut wt, _) = RawWt::authenticated(&node.wt_url(), &hash, &token("wendy", &["demo"])).await;
        node.terminate();
        match wt.frame().await {
            server_frame::Kind::GoAway(g) => assert_eq!(g.reason, "node draining"),
            other => panic!("expected GoAway (standalone: {standalone}), got {other:?}"),
        }
        assert_eq!(node.get("/readyz").await.0, 503);
        drop(wt); // the client leaves
        assert_eq!(node.wait_exit(Duration::from_secs(15)).await, Some(0), "standalone: {standalone}");
    }
}
