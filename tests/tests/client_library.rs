//! The Rust client library over both transports, against two real nodes on a real
//! nats-server, and the `switchboard-cli` binary against a node.

use bytes::Bytes;
use std::process::Stdio;
use switchboard_client::{pb, Client, ClientConfig, ErrorCode, Event, Events};
use switchboard_tests::{binary, token, within, NatsServer, NodeOptions, TestNode, WAIT};
use tokio::io::{AsyncBufReadExt, BufReader};

async fn next_event(events: &mut Events) -> Event {
    within(WAIT, "a client event", events.recv()).await.expect("event stream ended")
}

#[tokio::test]
async fn ws_and_wt_clients_on_two_nodes_share_a_room() {
    let nats = NatsServer::start().await;
    let opts = |id: &str| NodeOptions { nats_url: Some(nats.url()), node_id: Some(id.into()), ..Default::default() };
    let (n1, n2) = tokio::join!(TestNode::start(opts("east")), TestNode::start(opts("west")));

    let (ws, mut ws_events) =
        Client::connect(ClientConfig::new(n1.ws_url(), token("alice", &["huddle-1"]))).await.unwrap();
    let wt_config = ClientConfig::new(n2.wt_url(), token("bob", &["huddle-1"])).with_cert_hash(n2.cert_hash().await);
    let (wt, mut wt_events) = Client::connect(wt_config).await.unwrap();
    assert_eq!((ws.welcome().node.as_str(), wt.welcome().node.as_str()), ("east", "west"));

    assert_eq!(ws.join("huddle-1").await.unwrap().participants.len(), 1);
    assert_eq!(wt.join("huddle-1").await.unwrap().participants.len(), 2);
    match next_event(&mut ws_events).await {
        Event::ParticipantJoined(p) => assert_eq!(p.participant.unwrap().session, wt.session_id()),
        other => panic!("expected ParticipantJoined, got {other:?}"),
    }

    // Chat both ways.
    wt.publish("huddle-1", Bytes::from_static(b"hi from wt"), true, "chat").await.unwrap();
    ws.publish("huddle-1", Bytes::from_static(b"hi from ws"), true, "chat").await.unwrap();
    match next_event(&mut ws_events).await {
        Event::Message(m) => assert_eq!((&m.payload[..], m.from.unwrap().user.as_str()), (&b"hi from wt"[..], "bob")),
        other => panic!("expected Message, got {other:?}"),
    }
    match next_event(&mut wt_events).await {
        Event::Message(m) => assert_eq!((&m.payload[..], m.from.unwrap().user.as_str()), (&b"hi from ws"[..], "alice")),
        other => panic!("expected Message, got {other:?}"),
    }

    // An offer/answer exchange.
    ws.signal_user("huddle-1", "bob", pb::SignalKind::Offer, Bytes::from_static(b"offer-sdp")).await.unwrap();
    let offer_from = match next_event(&mut wt_events).await {
        Event::Signal(s) => {
            assert_eq!((s.kind(), &s.payload[..]), (pb::SignalKind::Offer, &b"offer-sdp"[..]));
            s.from.unwrap().session
        }
        other => panic!("expected Signal, got {other:?}"),
    };
    wt.signal_session("huddle-1", &offer_from, pb::SignalKind::Answer, Bytes::from_static(b"answer-sdp"))
        .await
        .unwrap();
    assert!(matches!(next_event(&mut ws_events).await, Event::Signal(s) if s.kind() == pb::SignalKind::Answer));
    // Signaling someone outside the room is refused with its code.
    let err = ws.signal_user("huddle-1", "mallory", pb::SignalKind::Offer, Bytes::new()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TargetNotFound));

    // Relayed media and a keyframe request back to the sender.
    for seq in 0..5u64 {
        let m = pb::Media {
            room: "huddle-1".into(),
            track: 2,
            seq,
            timestamp: seq * 20_000,
            keyframe: seq == 0,
            codec: "opus".into(),
            payload: Bytes::from(vec![1u8; 160]),
            ..Default::default()
        };
        wt.media(m).await.unwrap();
    }
    for seq in 0..5u64 {
        match next_event(&mut ws_events).await {
            Event::Media(m) => assert_eq!((m.seq, m.track, m.codec.as_str()), (seq, 2, "opus")),
            other => panic!("expected Media, got {other:?}"),
        }
    }
    ws.keyframe_request("huddle-1", wt.session_id(), 2).await.unwrap();
    match next_event(&mut wt_events).await {
        Event::KeyframeRequest(k) => assert_eq!((k.track, k.from.unwrap().user.as_str()), (2, "alice")),
        other => panic!("expected KeyframeRequest, got {other:?}"),
    }

    // Closing one client: the other sees it leave.
    wt.close().await;
    match next_event(&mut ws_events).await {
        Event::ParticipantLeft(l) => assert_eq!(l.participant.unwrap().user, "bob"),
        other => panic!("expected ParticipantLeft, got {other:?}"),
    }
}

#[tokio::test]
async fn client_reports_refusals_with_their_codes() {
    let node = TestNode::start(NodeOptions::default()).await;
    let err = Client::connect(ClientConfig::new(node.ws_url(), "garbage")).await.err().expect("refused");
    assert_eq!(err.code(), Some(ErrorCode::TokenInvalid));
    let wt = ClientConfig::new(node.wt_url(), "garbage").with_cert_hash(node.cert_hash().await);
    assert_eq!(Client::connect(wt).await.err().expect("refused").code(), Some(ErrorCode::TokenInvalid));
    let (client, _events) = Client::connect(ClientConfig::new(node.ws_url(), token("carl", &["a"]))).await.unwrap();
    assert_eq!(client.join("b").await.unwrap_err().code(), Some(ErrorCode::Forbidden));
    assert_eq!(client.publish("a", Bytes::new(), true, "").await.unwrap_err().code(), Some(ErrorCode::NotInRoom));
}

#[tokio::test]
async fn cli_join_prints_json_lines_and_send_delivers() {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut listener = tokio::process::Command::new(binary("switchboard-cli"))
        .args(["--url", &node.ws_url(), "--token", &token("lisa", &["demo"]), "join", "--room", "demo", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("starting switchboard-cli");
    let mut lines = BufReader::new(listener.stdout.take().unwrap()).lines();
    let mut next_json = async || -> serde_json::Value {
        let line = within(WAIT, "a JSON line", lines.next_line()).await.unwrap().expect("a line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };
    assert_eq!(next_json().await["event"], "welcome");
    assert_eq!(next_json().await["event"], "joined");
    let status = tokio::process::Command::new(binary("switchboard-cli"))
        .args([
            "--url",
            &node.ws_url(),
            "--token",
            &token("sam", &["demo"]),
            "send",
            "--room",
            "demo",
            "--message",
            "hello cli",
        ])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    assert_eq!(next_json().await["event"], "participant_joined");
    let msg = next_json().await;
    assert_eq!((msg["event"].as_str(), msg["payload"].as_str()), (Some("message"), Some("hello cli")));
    assert_eq!(msg["from"]["user"], "sam");
    let exit = within(WAIT, "the listener to exit after --count 1", listener.wait()).await.unwrap();
    assert!(exit.success());
    // A refused send exits non-zero.
    let status = tokio::process::Command::new(binary("switchboard-cli"))
        .args([
            "--url",
            &node.ws_url(),
            "--token",
            &token("sam", &["demo"]),
            "send",
            "--room",
            "other",
            "--message",
            "x",
        ])
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(!status.success());
}

/// The standalone `webtransport-server` joins the same cluster: its WebTransport clients
/// share rooms with WebSocket clients of a `switchboard` node; its probes answer.
#[tokio::test]
async fn standalone_webtransport_server_joins_the_cluster() {
    let nats = NatsServer::start().await;
    let opts = |id: &str| NodeOptions { nats_url: Some(nats.url()), node_id: Some(id.into()), ..Default::default() };
    let (combined, quic_only) =
        tokio::join!(TestNode::start(opts("combined")), TestNode::start_webtransport_only(opts("quic-only")));
    assert_eq!(quic_only.node_id, "quic-only");
    assert_eq!(quic_only.get("/healthz").await.0, 200);
    assert!(quic_only.get("/metrics").await.1.contains("switchboard_connections"));
    assert_eq!(quic_only.get("/nope").await.0, 404);

    let wt_config =
        ClientConfig::new(quic_only.wt_url(), token("quinn", &["mixed"])).with_cert_hash(quic_only.cert_hash().await);
    let (wt, mut wt_events) = Client::connect(wt_config).await.unwrap();
    let (ws, _ws_events) =
        Client::connect(ClientConfig::new(combined.ws_url(), token("webby", &["mixed"]))).await.unwrap();
    wt.join("mixed").await.unwrap();
    ws.join("mixed").await.unwrap();
    assert!(matches!(next_event(&mut wt_events).await, Event::ParticipantJoined(_)));
    ws.publish("mixed", Bytes::from_static(b"to the quic-only node"), true, "chat").await.unwrap();
    match next_event(&mut wt_events).await {
        Event::Message(m) => assert_eq!(m.from.unwrap().node, "combined"),
        other => panic!("expected Message, got {other:?}"),
    }
    assert_eq!(quic_only.metric("switchboard_connections{transport=\"webtransport\"}").await, 1.0);
}

/// Run `switchboard-cli ARGS` (a bench run), expect success and its one JSON line.
async fn bench(args: &[&str]) -> serde_json::Value {
    let out = tokio::process::Command::new(binary("switchboard-cli")).args(args).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("one JSON line")
}

/// The load generator itself: a short, bounded fan-out run against a node reports every
/// delivery, as one JSON line.
#[tokio::test]
async fn bench_fanout_smoke_run_reports_all_deliveries() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (url, token) = (node.ws_url(), token("bench", &["bench-*"]));
    let fanout = ["bench", "--scenario", "fanout", "--clients", "5", "--rate", "50", "--duration", "1"];
    let report = bench(&[&["--url", &url, "--token", &token][..], &fanout].concat()).await;
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent >= 40, "{report}");
    assert_eq!(report["deliveries"].as_u64(), Some(sent * 5), "{report}");
    assert_eq!(report["drops"].as_u64(), Some(0));
    assert!(report["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
}

/// The same over WebTransport, whose receivers are raw sessions on QUIC.
#[tokio::test]
async fn bench_fanout_over_webtransport_reports_all_deliveries() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (url, hash, token) = (node.wt_url(), node.cert_hash().await, token("bench", &["bench-*"]));
    let fanout = ["bench", "--scenario", "fanout", "--clients", "5", "--rate", "50", "--duration", "1"];
    let report = bench(&[&["--url", &url, "--cert-hash", &hash, "--token", &token][..], &fanout].concat()).await;
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent >= 40, "{report}");
    assert_eq!(report["target"].as_str(), Some("switchboard-wt"), "{report}");
    assert_eq!(report["deliveries"].as_u64(), Some(sent * 5), "{report}");
}

/// `--rate 0` is a closed loop: the publisher runs as fast as the receivers keep up, and
/// nothing is lost or disconnected on the way.
#[tokio::test]
async fn bench_max_rate_run_is_a_closed_loop_without_losses() {
    // The default 200 requests/s per session would pace the publisher instead of the loop.
    let args = vec!["--request-rate".into(), "1000000".into()];
    let node = TestNode::start(NodeOptions { args, ..Default::default() }).await;
    let (url, token) = (node.ws_url(), token("bench", &["bench-*"]));
    let report = bench(&[
        "--url",
        &url,
        "--token",
        &token,
        "bench",
        "--scenario",
        "fanout",
        "--clients",
        "5",
        "--rate",
        "0",
        "--window",
        "50",
        "--duration",
        "1",
    ])
    .await;
    let sent = report["sent"].as_u64().unwrap();
    // No pace was given: the loop set the rate, far above what a 1-second paced run sends.
    assert!(sent > 200, "{report}");
    assert_eq!(report["deliveries"].as_u64(), Some(sent * 5), "{report}");
    assert_eq!(report["closed_loop_window"].as_u64(), Some(50), "{report}");
}

/// `churn` runs exactly `--cycles` cycles after its warm-up, and reads the node's RSS only
/// once the node has closed every connection.
#[tokio::test]
async fn bench_churn_runs_the_cycles_asked_and_waits_for_the_node() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (url, token, pid) = (node.ws_url(), token("bench", &["bench-*"]), node.pid().expect("node pid").to_string());
    let report = bench(&[
        "--url",
        &url,
        "--token",
        &token,
        "bench",
        "--scenario",
        "churn",
        "--clients",
        "4",
        "--cycles",
        "60",
        "--warmup-cycles",
        "8",
        "--duration",
        "60",
        "--server-pid",
        &pid,
    ])
    .await;
    assert_eq!(report["sent"].as_u64(), Some(60), "{report}");
    assert_eq!(report["errors"].as_u64(), Some(0), "{report}");
    assert_eq!(report["warmup_cycles"].as_u64(), Some(8), "{report}");
    assert_eq!(report["server_settled"].as_bool(), Some(true), "{report}");
    assert!(report["rss_growth_percent"].as_f64().is_some(), "{report}");
    assert!(report["server_cpu_percent"].as_f64().is_some(), "{report}");
}
