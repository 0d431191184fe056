//! A node started against a fresh 3-server NATS cluster before its JetStream has a meta
//! leader waits for JetStream explicitly, then creates its buckets and streams: no request
//! times out and the connection is never started over.

use switchboard_tests::{wait_for, within, NatsCluster, NodeOptions, TestNode, WAIT};

/// The node's log, one JSON object per line (`--log-format json`).
fn log_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn message(line: &serde_json::Value) -> &str {
    line["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_node_waits_for_the_jetstream_meta_leader_instead_of_timing_out() {
    // One server of three: no majority, so no meta leader, until the others start.
    let mut cluster = NatsCluster::start_first_of(3).await;
    let dir = std::env::temp_dir().join(format!("switchboard-jsstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("log dir");
    let log = dir.join("node.log");
    let _ = std::fs::remove_file(&log);
    let opts = NodeOptions {
        nats_url: Some(cluster.url()),
        node_id: Some("jswait".into()),
        args: ["--nats-replicas", "3", "--log-format", "json"].map(String::from).to_vec(),
        env: vec![("RUST_LOG".into(), "info".into())],
        log_file: Some(log.clone()),
    };
    let node = tokio::spawn(TestNode::start(opts));

    // The node is connected to the one server up; its JetStream requests go unanswered.
    let first = &cluster.servers[0];
    wait_for(WAIT, "the node connected to the first server", || async move {
        let connz = first.monitor("/connz").await;
        let conns = connz["connections"].as_array()?.clone();
        conns.iter().any(|c| c["name"].as_str() == Some("switchboard-jswait")).then_some(())
    })
    .await;
    let (_, jsz) = switchboard_tests::http::get(first.monitor_port, "/jsz").await.expect("/jsz");
    let jsz: serde_json::Value = serde_json::from_str(&jsz).expect("/jsz JSON");
    assert!(jsz["meta_cluster"]["leader"].as_str().unwrap_or_default().is_empty(), "no meta leader yet: {jsz}");

    // A majority comes up and elects a meta leader; the node becomes ready.
    cluster.start_rest().await;
    let node: TestNode = within(WAIT * 3, "the node ready", node).await.expect("node start task");
    let (status, _) = node.get("/readyz").await;
    assert_eq!(status, 200);

    let lines = log_lines(&log);
    let waited = lines.iter().any(|l| message(l).starts_with("waiting for JetStream"));
    let ready = lines.iter().any(|l| message(l) == "JetStream ready");
    assert!(waited && ready, "the node logged its wait for JetStream and its end: {lines:#?}");
    let bad: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            let text = l.to_string().to_ascii_lowercase();
            message(l) == "NATS not available yet"
                || message(l) == "retrying to open"
                || text.contains("timed out")
                || text.contains("timeout")
        })
        .collect();
    assert!(bad.is_empty(), "no request timed out, nothing was retried: {bad:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}
