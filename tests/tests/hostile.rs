//! Hostile clients below the protocol, over real sockets and real QUIC: frame headers that
//! announce more than the node accepts, connections that never authenticate (per address, per
//! node, over WebSocket and WebTransport), floods of pings, tokens that expire at the end of
//! time, and clients that just vanish. Each bound is asserted by trying to exceed it.

use bytes::Bytes;
use std::time::Duration;
use switchboard_protocol::pb::{client_frame, server_frame, KeyframeRequest, Ping, RefreshToken, Signal};
use switchboard_protocol::websocket::frame_header;
use switchboard_protocol::{close_code, decode_server_frame, ErrorCode};
use switchboard_tests::raw::{RawWs, Received};
use switchboard_tests::raw_wt::RawWt;
use switchboard_tests::{claims, sign, token, wait_for, within, NodeOptions, TestNode, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn node_with(args: &[&str]) -> NodeOptions {
    NodeOptions { args: args.iter().map(|a| a.to_string()).collect(), ..Default::default() }
}

/// A WebSocket upgrade over a plain TCP stream, so the test can write any bytes after it.
async fn raw_upgrade(node: &TestNode) -> TcpStream {
    let mut tcp = TcpStream::connect(("127.0.0.1", node.http_port)).await.expect("connect");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        node.http_port
    );
    tcp.write_all(request.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        within(WAIT, "the upgrade response", tcp.read_exact(&mut byte)).await.expect("response");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    tcp
}

/// The header of a masked binary frame announcing `len` payload bytes.
fn header(len: u64) -> Vec<u8> {
    let mut out = vec![0x82, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]);
    out
}

/// A masked binary frame carrying `payload`.
fn masked_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = header(payload.len() as u64);
    let key = [0x11, 0x22, 0x33, 0x44];
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// What the server wrote until it closed the connection: its frames (binary payloads) and
/// the close code. Bounded by [`WAIT`].
async fn server_frames_until_eof(tcp: &mut TcpStream) -> (Vec<server_frame::Kind>, Option<u16>) {
    let mut wire = Vec::new();
    within(WAIT, "the server to close the connection", async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => wire.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let (mut frames, mut close) = (Vec::new(), None);
    let mut rest = &wire[..];
    while let Some((h, len)) = frame_header(rest) {
        let payload = &rest[h..h + len as usize];
        match rest[0] & 0x0f {
            0x2 => frames.push(decode_server_frame(payload).expect("server frame").kind.expect("kind")),
            0x8 => close = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])),
            _ => {}
        }
        rest = &rest[h + len as usize..];
    }
    (frames, close)
}

fn is_error(frame: &server_frame::Kind, code: ErrorCode) -> bool {
    matches!(frame, server_frame::Kind::Error(e) if e.code() == code && e.fatal)
}

/// A header announcing 2^40 bytes is refused as soon as it arrives, before `Hello` and inside a
/// session, however long the node would wait for a `Hello`; streaming the payload anyway
/// makes the node buffer none of it.
#[tokio::test]
async fn a_frame_header_over_the_limit_is_refused_at_the_header() {
    let node = TestNode::start(node_with(&["--hello-timeout", "300"])).await;
    let too_large = Some(close_code(ErrorCode::FrameTooLarge));

    // Before Hello: only the header is sent.
    let mut tcp = raw_upgrade(&node).await;
    tcp.write_all(&header(1 << 40)).await.expect("header");
    let (frames, close) = server_frames_until_eof(&mut tcp).await;
    assert!(frames.iter().any(|f| is_error(f, ErrorCode::FrameTooLarge)), "{frames:?}");
    assert_eq!(close, too_large);

    // Inside a session.
    let mut tcp = raw_upgrade(&node).await;
    let hello = switchboard_protocol::encode(&switchboard_protocol::pb::ClientFrame {
        id: 1,
        kind: Some(client_frame::Kind::Hello(switchboard_protocol::pb::Hello {
            protocol_version: switchboard_protocol::PROTOCOL_VERSION,
            token: token("mallory", &["demo"]),
            client: "hostile".into(),
            ..Default::default()
        })),
    });
    tcp.write_all(&masked_frame(&hello)).await.expect("hello");
    tcp.write_all(&header(1 << 40)).await.expect("header");
    let (frames, close) = server_frames_until_eof(&mut tcp).await;
    assert!(matches!(frames.first(), Some(server_frame::Kind::Welcome(_))), "{frames:?}");
    assert!(frames.iter().any(|f| is_error(f, ErrorCode::FrameTooLarge)), "{frames:?}");
    assert_eq!(close, too_large);

    // Streaming the payload after the header: the node buffers none of it and closes the
    // connection (after actix-http's linger, `client_disconnect_timeout`, in which what
    // arrives is read and dropped).
    let rss_before = node.rss_kib().expect("node RSS");
    let mut tcp = raw_upgrade(&node).await;
    tcp.write_all(&header(1 << 40)).await.expect("header");
    let chunk = vec![0x5a; 1 << 20];
    let (mut written, mut closed) = (0usize, false);
    // Bounded: at most 8 GiB, and each write within the wait.
    while written < 8 << 30 {
        match tokio::time::timeout(WAIT, tcp.write_all(&chunk)).await {
            Ok(Ok(())) => written += chunk.len(),
            Ok(Err(_)) => {
                closed = true;
                break;
            }
            Err(_) => panic!("the node neither read nor closed the connection"),
        }
    }
    let growth = node.rss_kib().expect("node RSS").saturating_sub(rss_before);
    eprintln!("wrote {} MiB after the header; node RSS grew {growth} KiB", written >> 20);
    assert!(closed, "the node kept the connection of a refused frame open");
    assert!(growth < 16 * 1024, "node RSS grew by {growth} KiB");
}

/// Before `Hello` a frame may be at most 16 KiB (a token and a little more); after it, the
/// full frame limit applies.
#[tokio::test]
async fn frames_before_hello_are_held_to_the_hello_limit() {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut ws = RawWs::connect(&node.ws_url()).await;
    ws.send_bytes(vec![0u8; 20 * 1024]).await;
    match ws.next().await {
        Received::Frame(server_frame::Kind::Error(e)) => assert_eq!(e.code(), ErrorCode::FrameTooLarge),
        other => panic!("expected FRAME_TOO_LARGE, got {other:?}"),
    }
    assert_eq!(ws.closed().await, Some(close_code(ErrorCode::FrameTooLarge)));

    // After Hello, 100 KiB is an ordinary (if malformed) frame: answered, not fatal.
    let (mut ws, _) = RawWs::authenticated(&node.ws_url(), &token("alice", &["demo"])).await;
    ws.send_bytes(vec![0xffu8; 100 * 1024]).await;
    match ws.frame().await {
        server_frame::Kind::Error(e) => assert!(e.code() == ErrorCode::BadFrame && !e.fatal, "{e:?}"),
        other => panic!("expected BAD_FRAME, got {other:?}"),
    }
}

/// Connections that have not authenticated are capped per address: the next one is told
/// `TOO_MANY_CONNECTIONS`; one that authenticates leaves the budget; a closed one frees it.
#[tokio::test]
async fn connections_that_have_not_authenticated_are_capped_per_address() {
    let node = TestNode::start(node_with(&["--max-pending-per-ip", "4"])).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(RawWs::connect(&node.ws_url()).await);
    }
    wait_for(WAIT, "four pending connections", || async {
        (node.metric("switchboard_pending_connections{transport=\"websocket\"}").await == 4.0).then_some(())
    })
    .await;
    let mut fifth = RawWs::connect(&node.ws_url()).await;
    match fifth.next().await {
        Received::Frame(server_frame::Kind::Error(e)) => assert_eq!(e.code(), ErrorCode::TooManyConnections),
        other => panic!("expected TOO_MANY_CONNECTIONS, got {other:?}"),
    }
    assert_eq!(fifth.closed().await, Some(close_code(ErrorCode::TooManyConnections)));
    assert_eq!(node.metric("switchboard_admission_refusals_total{reason=\"address_pending\"}").await, 1.0);

    // One of the four authenticates: it leaves the pending budget, a new connection gets in.
    idle[0].hello(&token("alice", &[])).await;
    assert!(matches!(idle[0].frame().await, server_frame::Kind::Welcome(_)));
    let (_sixth, _) = RawWs::authenticated(&node.ws_url(), &token("bob", &[])).await;
    // Closed ones give their slot back.
    idle.truncate(1);
    wait_for(WAIT, "the idle connections' slots to come back", || async {
        (node.metric("switchboard_pending_connections{transport=\"websocket\"}").await == 0.0).then_some(())
    })
    .await;
    assert_eq!(node.metric("switchboard_connections{transport=\"websocket\"}").await, 2.0);
}

/// The same budget over the whole node, whatever the addresses.
#[tokio::test]
async fn connections_that_have_not_authenticated_are_capped_per_node() {
    let node = TestNode::start(node_with(&["--max-pending-connections", "3", "--max-pending-per-ip", "0"])).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(RawWs::connect(&node.ws_url()).await);
    }
    assert!(
        RawWt::session_only(&node.wt_url(), &node.cert_hash().await).await.is_err(),
        "a WebTransport handshake over the node's pending budget is refused"
    );
    let mut fourth = RawWs::connect(&node.ws_url()).await;
    match fourth.next().await {
        Received::Frame(server_frame::Kind::Error(e)) => assert_eq!(e.code(), ErrorCode::TooManyConnections),
        other => panic!("expected TOO_MANY_CONNECTIONS, got {other:?}"),
    }
    assert_eq!(node.metric("switchboard_admission_refusals_total{reason=\"node_pending\"}").await, 2.0);
}

/// WebTransport sessions that complete the QUIC and WebTransport handshakes but never open
/// their control stream are admitted by address when they arrive, and counted in the gauges:
/// they cannot lock other clients out of the node.
#[tokio::test]
async fn webtransport_sessions_without_a_control_stream_are_capped_per_address() {
    let node = TestNode::start(node_with(&[
        "--max-connections-per-ip",
        "5",
        "--wt-max-sessions",
        "200",
        "--hello-timeout",
        "300",
    ]))
    .await;
    let hash = node.cert_hash().await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(RawWt::session_only(&node.wt_url(), &hash).await.expect("admitted"));
    }
    assert_eq!(node.metric("switchboard_connections{transport=\"webtransport\"}").await, 5.0);
    assert_eq!(node.metric("switchboard_pending_connections{transport=\"webtransport\"}").await, 5.0);
    assert!(RawWt::session_only(&node.wt_url(), &hash).await.is_err(), "a sixth session from the address");
    // The cap is per address, whatever the transport.
    let mut ws = RawWs::connect(&node.ws_url()).await;
    match ws.next().await {
        Received::Frame(server_frame::Kind::Error(e)) => assert_eq!(e.code(), ErrorCode::TooManyConnections),
        other => panic!("expected TOO_MANY_CONNECTIONS, got {other:?}"),
    }
    assert_eq!(node.metric("switchboard_admission_refusals_total{reason=\"address\"}").await, 2.0);
    // Closing them gives the slots back.
    for (_, connection) in &held {
        connection.close(wtransport::VarInt::from_u32(0), b"bye");
    }
    wait_for(WAIT, "the sessions' slots to come back", || async {
        (node.metric("switchboard_connections{transport=\"webtransport\"}").await == 0.0).then_some(())
    })
    .await;
    RawWt::authenticated(&node.wt_url(), &hash, &token("alice", &[])).await;
}

/// The WebTransport session cap holds exactly under concurrent handshakes (it is taken when a
/// connection arrives, in one step, not checked before the handshake counts it).
#[tokio::test]
async fn the_webtransport_session_cap_holds_under_concurrent_handshakes() {
    let node =
        TestNode::start(node_with(&["--wt-max-sessions", "10", "--max-pending-per-ip", "0", "--hello-timeout", "300"]))
            .await;
    let hash = node.cert_hash().await;
    let url = node.wt_url();
    let attempts = (0..40).map(|_| RawWt::session_only(&url, &hash));
    let results = within(Duration::from_secs(60), "40 handshakes", futures_util::future::join_all(attempts)).await;
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(admitted, 10, "admitted {admitted} sessions with a cap of 10");
    assert_eq!(node.metric("switchboard_connections{transport=\"webtransport\"}").await, 10.0);
    assert_eq!(node.metric("switchboard_admission_refusals_total{reason=\"webtransport_sessions\"}").await, 30.0);
}

/// A session flooding `Ping`s (and reading the pongs) gets a few pongs, then `RATE_LIMITED`,
/// then is disconnected: it cannot make the node spend a core answering it.
#[tokio::test]
async fn a_ping_flood_is_cut_off() {
    let node = TestNode::start(NodeOptions::default()).await;
    let hash = node.cert_hash().await;
    let (mut wt, _) = RawWt::authenticated(&node.wt_url(), &hash, &token("pinger", &[])).await;
    let flood = 40_000u64;
    let writer = async {
        for i in 0..flood {
            let frame = switchboard_protocol::encode(&switchboard_protocol::pb::ClientFrame {
                id: 10 + i,
                kind: Some(client_frame::Kind::Ping(Ping { nonce: i })),
            });
            wt_send(&mut wt, &frame).await?;
        }
        Ok::<(), String>(())
    };
    // Writes fail once the node has closed the session; the pings sent before are counted.
    let _ = within(Duration::from_secs(120), "the ping flood", writer).await;
    let (mut pongs, mut limited) = (0u64, 0u64);
    let close = loop {
        match wt.next().await {
            switchboard_tests::raw_wt::WtReceived::Frame(server_frame::Kind::Pong(_)) => pongs += 1,
            switchboard_tests::raw_wt::WtReceived::Frame(server_frame::Kind::Error(e)) => {
                assert_eq!(e.code(), ErrorCode::RateLimited);
                limited += 1;
            }
            switchboard_tests::raw_wt::WtReceived::Frame(other) => panic!("unexpected {other:?}"),
            switchboard_tests::raw_wt::WtReceived::Closed(code) => break code,
        }
    };
    eprintln!("{pongs} pongs, {limited} RATE_LIMITED, closed with {close:?}");
    assert_eq!(close, Some(u64::from(close_code(ErrorCode::RateLimited))));
    assert!(pongs + limited < flood / 10, "the node answered {pongs} pongs and {limited} errors to {flood} pings");
}

async fn wt_send(wt: &mut RawWt, frame: &[u8]) -> Result<(), String> {
    wt.try_send_raw(&switchboard_protocol::framing::encode_record(frame)).await
}

/// A validly signed token whose `exp` is near `u64::MAX` is served (in `Hello` and in
/// `RefreshToken`) instead of panicking the session.
#[tokio::test]
async fn a_token_expiring_at_the_end_of_time_is_served() {
    let node = TestNode::start(NodeOptions::default()).await;
    let forever = sign(&switchboard_relay::Claims { exp: u64::MAX - 1, ..claims("methuselah", &["demo"]) });
    let (mut ws, welcome) = RawWs::authenticated(&node.ws_url(), &forever).await;
    assert_eq!(welcome.user, "methuselah");
    ws.send(2, client_frame::Kind::RefreshToken(RefreshToken { token: forever.clone() })).await;
    assert!(matches!(ws.frame().await, server_frame::Kind::Ack(a) if a.ref_id == 2));
    ws.send(3, client_frame::Kind::Ping(Ping { nonce: 3 })).await;
    assert!(matches!(ws.frame().await, server_frame::Kind::Pong(_)));
    assert_eq!(node.metric("switchboard_session_panics_total").await, 0.0);
}

/// A client that ends its TCP connection without a close frame is counted as an abrupt
/// close, not as an error; a clean close is neither.
#[tokio::test]
async fn a_vanished_client_is_not_an_error() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (ws, _) = RawWs::authenticated(&node.ws_url(), &token("alice", &[])).await;
    drop(ws); // the TCP connection ends, no close frame
    wait_for(WAIT, "the abrupt close to be counted", || async {
        (node.metric("switchboard_abrupt_closes_total{transport=\"websocket\"}").await == 1.0).then_some(())
    })
    .await;
    let (ws, _) = RawWs::authenticated(&node.ws_url(), &token("bob", &[])).await;
    ws.close().await;
    wait_for(WAIT, "both connections to end", || async {
        (node.metric("switchboard_connections{transport=\"websocket\"}").await == 0.0).then_some(())
    })
    .await;
    assert_eq!(node.metric("switchboard_abrupt_closes_total{transport=\"websocket\"}").await, 1.0);
    let (_, metrics) = node.get("/metrics").await;
    // (Series the node creates at 0 for its alerts are not errors.)
    let counted: Vec<&str> =
        metrics.lines().filter(|l| l.starts_with("switchboard_errors_total{code=") && !l.ends_with(" 0")).collect();
    assert!(counted.is_empty(), "no error counted: {counted:?}");
}

/// A token without the media grant may not ask for keyframes either, and signals of a kind
/// the protocol does not define are refused instead of relayed.
#[tokio::test]
async fn keyframe_requests_need_media_and_signal_kinds_must_be_known() {
    let node = TestNode::start(NodeOptions::default()).await;
    let no_media = sign(&switchboard_relay::Claims { media: Some(false), ..claims("viewer", &["demo"]) });
    let (mut viewer, _) = RawWs::authenticated(&node.ws_url(), &no_media).await;
    let (mut bob, _) = RawWs::authenticated(&node.ws_url(), &token("bob", &["demo"])).await;
    for ws in [&mut viewer, &mut bob] {
        ws.send(2, client_frame::Kind::Join(switchboard_protocol::pb::Join { room: "demo".into(), resume_from: None }))
            .await;
        loop {
            if matches!(ws.frame().await, server_frame::Kind::Joined(_)) {
                break;
            }
        }
    }
    viewer
        .send(3, client_frame::Kind::KeyframeRequest(KeyframeRequest { room: "demo".into(), ..Default::default() }))
        .await;
    loop {
        match viewer.frame().await {
            server_frame::Kind::Error(e) => {
                assert_eq!((e.code(), e.ref_id), (ErrorCode::Forbidden, 3));
                break;
            }
            server_frame::Kind::ParticipantJoined(_) => continue,
            other => panic!("expected FORBIDDEN, got {other:?}"),
        }
    }
    let signal = Signal {
        room: "demo".into(),
        kind: 99,
        payload: Bytes::from_static(b"?"),
        target: Some(switchboard_protocol::pb::signal::Target::ToUser("viewer".into())),
        ..Default::default()
    };
    bob.send(4, client_frame::Kind::Signal(signal)).await;
    match bob.frame().await {
        server_frame::Kind::Error(e) => assert_eq!((e.code(), e.ref_id), (ErrorCode::InvalidArgument, 4)),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

/// What a connection that has not authenticated makes the node hold (upgraded WebSocket with
/// no `Hello`; WebTransport session with no control stream): printed, and bounded. Run with
/// `SWITCHBOARD_BIN_DIR=$PWD/target/release` (after `cargo build --release -p switchboard`) for the release figure in RELIABILITY.md.
#[tokio::test]
async fn a_connection_that_has_not_authenticated_holds_little() {
    let node = TestNode::start(node_with(&[
        "--max-pending-per-ip",
        "0",
        "--hello-timeout",
        "300",
        "--wt-max-sessions",
        "1000",
    ]))
    .await;
    let hash = node.cert_hash().await;
    let pending = |transport: &'static str, n: usize| {
        let node = &node;
        async move {
            let series = format!("switchboard_pending_connections{{transport=\"{transport}\"}}");
            wait_for(WAIT, "the connections to be pending", || async {
                (node.metric(&series).await == n as f64).then_some(())
            })
            .await
        }
    };
    const N: usize = 300;
    let rss0 = node.rss_kib().expect("RSS");
    let mut ws = Vec::new();
    for _ in 0..N {
        ws.push(raw_upgrade(&node).await);
    }
    pending("websocket", N).await;
    let rss1 = node.rss_kib().expect("RSS");
    let mut wt = Vec::new();
    for _ in 0..N {
        wt.push(RawWt::session_only(&node.wt_url(), &hash).await.expect("admitted"));
    }
    pending("webtransport", N).await;
    let rss2 = node.rss_kib().expect("RSS");
    let per_ws = rss1.saturating_sub(rss0) * 1024 / N as u64;
    let per_wt = rss2.saturating_sub(rss1) * 1024 / N as u64;
    eprintln!("before Hello: {per_ws} B per WebSocket connection, {per_wt} B per WebTransport session ({N} each)");
    assert!(per_ws < 64 * 1024, "{per_ws} B per pending WebSocket connection");
    assert!(per_wt < 160 * 1024, "{per_wt} B per pending WebTransport session");
}

/// A token for the user id `server` (the sender of the admin API's server messages), however
/// it was minted, opens no session: nobody may speak as the server.
#[tokio::test]
async fn nobody_may_speak_as_the_server() {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut ws = RawWs::connect(&node.ws_url()).await;
    ws.hello(&token("server", &["demo"])).await;
    match ws.next().await {
        Received::Frame(server_frame::Kind::Error(e)) => assert!(e.code() == ErrorCode::Forbidden && e.fatal, "{e:?}"),
        other => panic!("expected FORBIDDEN, got {other:?}"),
    }
    assert_eq!(ws.closed().await, Some(close_code(ErrorCode::Forbidden)));
}

/// A client that opens a TCP connection to the HTTP listener and sends its request head a
/// byte at a time, never finishing it (slowloris), is closed by the node: what a connection
/// holds before its request is bounded in time as well.
#[tokio::test]
async fn a_request_head_that_never_ends_is_closed() {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut tcp = TcpStream::connect(("127.0.0.1", node.http_port)).await.expect("connect");
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.expect("request line");
    // Bounded: one header byte at a time until the node closes, at most WAIT.
    let closed = within(WAIT, "the node to close a request head that never ends", async {
        let mut buf = [0u8; 1024];
        loop {
            tokio::select! {
                read = tcp.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // a 408 answer, then the close
                },
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if tcp.write_all(b"X").await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    closed.await;
}
