//! `switchboard-cli bench --scenario cluster`, the load generator of the cluster runs, in
//! small: two nodes on a real nats-server, members on both over WebSocket and WebTransport,
//! chatting, calling and churning for a few seconds. The report must show every
//! acknowledged message delivered once and in order, calls answered and reconnects made.

use std::time::Duration;
use switchboard_tests::{binary, within, NatsServer, NodeOptions, TestNode, TEST_SECRET};

/// Run `switchboard-cli ARGS`, returning (exit success, stdout, stderr).
async fn cli(args: &[String], nofile: Option<u64>) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(binary("switchboard-cli"));
    cmd.args(args).kill_on_drop(true);
    if let Some(limit) = nofile {
        // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let rl = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = within(Duration::from_secs(90), "the bench run", cmd.output()).await.expect("running switchboard-cli");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Nodes `alpha` and `beta` clustered on `nats`.
async fn two_nodes(nats: &NatsServer) -> (TestNode, TestNode) {
    let opts = |id: &str| NodeOptions { nats_url: Some(nats.url()), node_id: Some(id.into()), ..Default::default() };
    tokio::join!(TestNode::start(opts("alpha")), TestNode::start(opts("beta")))
}

#[tokio::test]
async fn a_small_cluster_run_loses_nothing_answers_calls_and_reconnects() {
    let nats = NatsServer::start().await;
    let (a, b) = two_nodes(&nats).await;
    let hashes = format!("{},{}", a.cert_hash().await, b.cert_hash().await);
    let mut args = strings(&["--cert-hash", &hashes, "bench", "--scenario", "cluster", "--jwt-secret", TEST_SECRET]);
    for url in [a.ws_url(), b.ws_url(), a.wt_url(), b.wt_url()] {
        args.extend(["--node".to_owned(), url]);
    }
    // 100 members (10 rooms) spread over both nodes, 30 over WebTransport; each member chats
    // every 2 s; ~20 calls and ~10 churns in 4 s.
    args.extend(strings(&[
        "--clients",
        "100",
        "--wt-fraction",
        "0.3",
        "--connect-rate",
        "200",
        "--chat-rate",
        "50",
        "--calls-per-min",
        "300",
        "--call-hold",
        "0.5",
        "--churn-percent",
        "150",
        "--duration",
        "4",
    ]));
    let (ok, stdout, stderr) = cli(&args, None).await;
    assert!(ok, "{stderr}");
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    let (conns, chat, calls, re) = (&r["connections_detail"], &r["chat"], &r["calls"], &r["reconnects"]);
    assert_eq!(r["scenario"], "cluster", "{r}");
    assert_eq!(conns["held_at_start"], 100, "{r}");
    assert_eq!(conns["webtransport"], 30, "{r}");
    // Chat: every acknowledged message reached every other member of its room, once, in order.
    assert!(chat["acked"].as_u64().unwrap() >= 100, "{r}");
    assert_eq!(chat["send_failed"], 0, "{r}");
    assert!(chat["expected"].as_u64().unwrap() >= 900, "{r}");
    for field in ["lost", "duplicated", "reordered", "undelivered_at_stop"] {
        assert_eq!(chat[field], 0, "{field}: {r}");
    }
    assert_eq!(chat["delivered"], chat["expected"], "{r}");
    assert!(chat["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{r}");
    // Calls rang and were answered, each with a setup time.
    let answered = calls["answered"].as_u64().unwrap();
    assert!(answered >= 5, "{r}");
    assert_eq!(calls["failed"], 0, "{r}");
    assert_eq!(calls["setup_ms"]["count"].as_u64(), Some(answered), "{r}");
    // Churned members came back.
    assert!(re["churned"].as_u64().unwrap() >= 3, "{r}");
    assert_eq!(re["reconnected"], re["churned"], "{r}");
    assert_eq!(re["failed"], 0, "{r}");
    assert_eq!(r["errors_by_code"], serde_json::json!({}), "{r}");
    assert_eq!(r["closed_cleanly"], true, "{r}");
    assert!(r["generator_rss_kib"].as_u64().unwrap() > 0, "{r}");
}

/// Issue 14: a member whose connection opens after the run started (ramping up outlasted
/// its limit, as in the 28,000-connection run) joins a room that chats already; the node
/// delivers it what the room stores after its join (`Joined.last_offset`). The generator
/// used to expect every acknowledged message from each sender's first and reported those
/// stored before the join as lost ("a later message from the same sender arrived").
#[tokio::test]
async fn members_joining_a_chatting_room_are_owed_only_what_follows_their_join() {
    let nats = NatsServer::start().await;
    let (a, b) = two_nodes(&nats).await;
    let mut args = strings(&["bench", "--scenario", "cluster", "--jwt-secret", TEST_SECRET]);
    for url in [a.ws_url(), b.ws_url()] {
        args.extend(["--node".to_owned(), url]);
    }
    // The run starts at once (--ramp-limit 0) while 60 members connect one at a time over
    // 3 s: each room's first members chat (every 0.2 s, and a member catches up on the
    // turns it missed as soon as it is in) before its last ones have joined.
    args.extend(strings(&[
        "--clients",
        "60",
        "--connect-rate",
        "20",
        "--connect-concurrency",
        "1",
        "--ramp-limit",
        "0",
        "--chat-rate",
        "300",
        "--calls-per-min",
        "0",
        "--churn-percent",
        "0",
        "--duration",
        "5",
    ]));
    let (ok, stdout, stderr) = cli(&args, None).await;
    assert!(ok, "{stderr}");
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    let chat = &r["chat"];
    assert_eq!(r["connections_detail"]["held_at_end"], 60, "{r}");
    assert!(chat["missed_before_join"].as_u64().unwrap() > 0, "no member joined a chatting room: {r}");
    for field in ["lost", "duplicated", "reordered", "undelivered_at_stop", "missed_in_reported_gaps"] {
        assert_eq!(chat[field], 0, "{field}: {r}");
    }
    assert_eq!(chat["delivered"], chat["expected"], "{r}");
    // The report describes the messages it did not count: each stored at or before the
    // receiver's first join.
    let detail = chat["missing_detail"].as_array().expect("missing_detail");
    assert!(!detail.is_empty() && detail.len() <= 5, "{r}");
    for d in detail {
        assert_eq!(d["class"], "before_join", "{d}");
        assert!(d["offset"].as_u64().unwrap() <= d["receiver_floor"].as_u64().unwrap(), "{d}");
        assert_eq!(d["receiver_joins"][0]["resume_from"], serde_json::Value::Null, "{d}");
    }
    assert_eq!(r["errors_by_code"], serde_json::json!({}), "{r}");
}

#[tokio::test]
async fn a_share_beyond_the_descriptor_limit_is_refused_up_front() {
    let node = TestNode::start(NodeOptions::default()).await;
    let args = strings(&["bench", "--scenario", "cluster", "--node", &node.ws_url(), "--clients", "2000"]);
    let (ok, _, stderr) = cli(&args, Some(1024)).await;
    assert!(!ok, "2000 connections under a 1024-descriptor limit must be refused");
    assert!(stderr.contains("RLIMIT_NOFILE") && stderr.contains("2000 connections"), "{stderr}");
    assert_eq!(node.metric("switchboard_sessions_total{transport=\"websocket\"}").await, 0.0, "nothing connected");
}
