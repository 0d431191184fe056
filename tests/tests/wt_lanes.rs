//! WebTransport media lanes, node side, over real QUIC with raw peers: media to a client that
//! asked for lanes goes on datagrams (frames that fit) and one unidirectional stream per group
//! (the rest); from a client, datagrams and streams carry `Media`/`KeyframeRequest` only,
//! under the session's rate limits; a receiver that takes no streams loses only media.

use switchboard_protocol::pb::{client_frame, server_frame, Join, Media, Ping, Publish};
use switchboard_protocol::ErrorCode;
use switchboard_tests::raw::RawWs;
use switchboard_tests::raw_wt::RawWt;
use switchboard_tests::{token, NodeOptions, TestNode, WAIT};

const ROOM: &str = "lanes";

fn media(seq: u64, keyframe: bool, len: usize) -> client_frame::Kind {
    client_frame::Kind::Media(Media {
        room: ROOM.into(),
        track: 1,
        seq,
        timestamp: seq * 33_000,
        keyframe,
        codec: "vp8".into(),
        payload: vec![seq as u8; len].into(),
        ..Default::default()
    })
}

fn join() -> client_frame::Kind {
    client_frame::Kind::Join(Join { room: ROOM.into(), resume_from: None })
}

/// The seq of a relayed media frame; panics on anything else.
fn seq_of(kind: server_frame::Kind) -> (u64, bool, usize) {
    match kind {
        server_frame::Kind::Media(m) => (m.seq, m.keyframe, m.payload.len()),
        other => panic!("expected media, got {other:?}"),
    }
}

async fn ws_member(node: &TestNode, user: &str) -> RawWs {
    let mut ws = RawWs::connect(&node.ws_url()).await;
    ws.hello(&token(user, &[ROOM])).await;
    assert!(matches!(ws.frame().await, server_frame::Kind::Welcome(_)));
    ws.send(2, join()).await;
    wait_joined_ws(&mut ws).await;
    ws
}

async fn wait_joined_ws(ws: &mut RawWs) {
    loop {
        if let server_frame::Kind::Joined(_) = ws.frame().await {
            return;
        }
    }
}

/// A WebTransport member; `lanes`: whether it asks for media lanes. Returns `Welcome.media_lanes`.
async fn wt_member(node: &TestNode, hash: &str, user: &str, lanes: bool) -> (RawWt, bool) {
    let mut wt = RawWt::connect(&node.wt_url(), hash).await;
    if lanes {
        wt.hello_lanes(&token(user, &[ROOM])).await;
    } else {
        wt.hello(&token(user, &[ROOM])).await;
    }
    let granted = match wt.frame().await {
        server_frame::Kind::Welcome(w) => w.media_lanes,
        other => panic!("expected Welcome, got {other:?}"),
    };
    wt.send(2, join()).await;
    loop {
        if let server_frame::Kind::Joined(_) = wt.frame().await {
            return (wt, granted);
        }
    }
}

/// The next media frame on the control stream (presence skipped).
async fn control_media(wt: &mut RawWt) -> (u64, bool, usize) {
    loop {
        match wt.frame().await {
            server_frame::Kind::ParticipantJoined(_) | server_frame::Kind::RoomStats(_) => continue,
            other => return seq_of(other),
        }
    }
}

async fn ws_media(ws: &mut RawWs) -> (u64, bool, usize) {
    loop {
        match ws.frame().await {
            server_frame::Kind::ParticipantJoined(_) | server_frame::Kind::RoomStats(_) => continue,
            other => return seq_of(other),
        }
    }
}

#[tokio::test]
async fn media_reaches_a_lanes_client_on_datagrams_and_one_stream_per_group() {
    let node = TestNode::start(NodeOptions::default()).await;
    let hash = node.cert_hash().await;
    let (mut lanes, granted) = wt_member(&node, &hash, "lanes", true).await;
    assert!(granted, "a WebTransport client asking for lanes gets them");
    let (mut plain, granted) = wt_member(&node, &hash, "plain", false).await;
    assert!(!granted, "a client that did not ask keeps media on the control stream");
    let mut sender = ws_member(&node, "sender").await;

    // A keyframe too large for a datagram opens a group stream; the rest of the group follows
    // on it, small or large (a datagram would overtake the stream's retransmissions).
    sender.send(0, media(1, true, 30_000)).await;
    sender.send(0, media(2, false, 200)).await;
    sender.send(0, media(3, false, 5_000)).await;
    let mut group = lanes.group().await;
    assert_eq!(seq_of(group.frame().await), (1, true, 30_000));
    assert_eq!(seq_of(group.frame().await), (2, false, 200), "a small delta follows its group's stream");
    assert_eq!(seq_of(group.frame().await), (3, false, 5_000), "the group's frames share its stream");

    // A keyframe that fits a datagram starts a group without a stream: its small deltas go
    // as datagrams, until a frame too large for one opens the group's stream.
    sender.send(0, media(4, true, 300)).await;
    sender.send(0, media(5, false, 200)).await;
    sender.send(0, media(6, false, 5_000)).await;
    assert_eq!(seq_of(lanes.datagram().await), (4, true, 300));
    assert_eq!(seq_of(lanes.datagram().await), (5, false, 200));
    let mut small = lanes.group().await;
    assert_eq!(seq_of(small.frame().await), (6, false, 5_000));

    // The next keyframe starts a new group on a new stream.
    sender.send(0, media(7, true, 30_000)).await;
    let mut next = lanes.group().await;
    assert_eq!(seq_of(next.frame().await), (7, true, 30_000));

    // Control traffic still comes on the control stream.
    lanes.send(9, client_frame::Kind::Ping(Ping { nonce: 7 })).await;
    loop {
        match lanes.frame().await {
            server_frame::Kind::Pong(p) => {
                assert_eq!(p.nonce, 7);
                break;
            }
            server_frame::Kind::ParticipantJoined(_) => continue,
            other => panic!("no media on the control stream of a lanes session: {other:?}"),
        }
    }

    // The same frames, all on the control stream, for the client without lanes.
    let all = [
        (1, true, 30_000),
        (2, false, 200),
        (3, false, 5_000),
        (4, true, 300),
        (5, false, 200),
        (6, false, 5_000),
        (7, true, 30_000),
    ];
    for expected in all {
        assert_eq!(control_media(&mut plain).await, expected);
    }
    let datagrams = r#"switchboard_media_lane_frames_total{lane="datagram",direction="out"}"#;
    let streams = r#"switchboard_media_lane_frames_total{lane="stream",direction="out"}"#;
    assert_eq!(node.metric(datagrams).await, 2.0);
    assert_eq!(node.metric(streams).await, 5.0);
}

#[tokio::test]
async fn a_node_with_lanes_off_keeps_media_on_the_control_stream() {
    let node =
        TestNode::start(NodeOptions { args: vec!["--wt-media-lanes".into(), "off".into()], ..Default::default() })
            .await;
    let hash = node.cert_hash().await;
    let (mut wt, granted) = wt_member(&node, &hash, "lanes", true).await;
    assert!(!granted, "--wt-media-lanes off: Welcome says no");
    let mut sender = ws_member(&node, "sender").await;
    sender.send(0, media(1, true, 200)).await;
    assert_eq!(control_media(&mut wt).await, (1, true, 200));
}

#[tokio::test]
async fn a_client_sends_media_on_datagrams_and_streams_and_nothing_else() {
    let node = TestNode::start(NodeOptions::default()).await;
    let hash = node.cert_hash().await;
    let mut receiver = ws_member(&node, "receiver").await;

    // Before Hello, a stream from the client is refused as it arrives.
    let early = RawWt::connect(&node.wt_url(), &hash).await;
    let mut stream = early.send_on_stream(&[media(1, false, 10)]).await;
    let stopped = switchboard_tests::within(WAIT, "the stream to be stopped", stream.stopped()).await;
    assert!(matches!(stopped, wtransport::error::StreamWriteError::Stopped(_)), "{stopped:?}");
    drop(early);

    let (mut sender, _) = wt_member(&node, &hash, "sender", true).await;
    sender.send_datagram(media(1, false, 100));
    assert_eq!(ws_media(&mut receiver).await, (1, false, 100));
    let _open = sender.send_on_stream(&[media(2, true, 40_000), media(3, false, 2_000)]).await;
    assert_eq!(ws_media(&mut receiver).await, (2, true, 40_000));
    assert_eq!(ws_media(&mut receiver).await, (3, false, 2_000));

    // Anything but media on a lane is refused with INVALID_ARGUMENT, on the control stream.
    let publish = Publish { room: ROOM.into(), payload: b"no".to_vec().into(), reliable: true, ..Default::default() };
    sender.send_datagram(client_frame::Kind::Publish(publish.clone()));
    let _refused = sender.send_on_stream(&[client_frame::Kind::Publish(publish)]).await;
    for _ in 0..2 {
        match sender.frame().await {
            server_frame::Kind::Error(e) => assert_eq!(e.code, ErrorCode::InvalidArgument as i32, "{e:?}"),
            other => panic!("expected an error, got {other:?}"),
        }
    }
    // A record over the frame limit stops that stream; the session carries on.
    let mut huge = sender.send_on_stream(&[]).await;
    huge.write_all(&(u32::MAX).to_be_bytes()).await.expect("writing a length");
    let stopped = switchboard_tests::within(WAIT, "the stream to be stopped", huge.stopped()).await;
    assert!(matches!(stopped, wtransport::error::StreamWriteError::Stopped(_)), "{stopped:?}");
    sender.send_datagram(media(4, false, 100));
    assert_eq!(ws_media(&mut receiver).await, (4, false, 100), "the refused publishes were not relayed");
    assert_eq!(node.metric(r#"switchboard_media_lane_frames_total{lane="datagram",direction="in"}"#).await, 3.0);
    assert_eq!(node.metric(r#"switchboard_media_lane_drops_total{reason="too_large"}"#).await, 1.0);
}

#[tokio::test]
async fn lane_frames_count_against_the_request_rate() {
    let node =
        TestNode::start(NodeOptions { args: vec!["--request-rate".into(), "5".into()], ..Default::default() }).await;
    let hash = node.cert_hash().await;
    let (mut sender, _) = wt_member(&node, &hash, "sender", true).await;
    // Tiny frames: the media byte rate alone would never refuse them.
    for seq in 0..200 {
        sender.send_datagram(media(seq, false, 1));
    }
    loop {
        match sender.next().await {
            switchboard_tests::raw_wt::WtReceived::Frame(server_frame::Kind::Error(e)) => {
                assert_eq!(e.code, ErrorCode::RateLimited as i32, "{e:?}");
                break;
            }
            switchboard_tests::raw_wt::WtReceived::Frame(_) => continue,
            switchboard_tests::raw_wt::WtReceived::Closed(code) => panic!("closed ({code:?}) before RATE_LIMITED"),
        }
    }
    assert!(node.metric(r#"switchboard_rate_limited_total{kind="media"}"#).await >= 1.0);
}

/// A receiver that never accepts the node's streams holds their QUIC credit: once it is used
/// up, the node drops that receiver's large frames (and asks the sender for keyframes) rather
/// than wait; its control stream and everyone else's media carry on.
#[tokio::test]
async fn a_receiver_that_takes_no_streams_loses_only_its_large_media() {
    let node = TestNode::start(NodeOptions::default()).await;
    let hash = node.cert_hash().await;
    let (mut stuck, _) = wt_member(&node, &hash, "stuck", true).await;
    let mut other = ws_member(&node, "other").await;
    let (mut sender, _) = wt_member(&node, &hash, "sender", true).await;

    // Each keyframe is a new group: a new stream the stuck receiver never accepts.
    let credit = r#"switchboard_media_lane_drops_total{reason="stream_credit"}"#;
    let mut seq = 0;
    while seq < 400 {
        seq += 1;
        sender.send(0, media(seq, true, 8_000)).await;
        if seq % 20 == 0 && node.metric(credit).await >= 1.0 {
            break;
        }
    }
    assert!(node.metric(credit).await >= 1.0, "400 groups never ran out of stream credit");
    // The node asked the sender for a keyframe on the stuck receiver's behalf.
    loop {
        match sender.frame().await {
            server_frame::Kind::KeyframeRequest(k) => {
                assert_eq!((k.room.as_str(), k.track), (ROOM, 1));
                break;
            }
            server_frame::Kind::ParticipantJoined(_) | server_frame::Kind::Error(_) => continue,
            other => panic!("expected a keyframe request, got {other:?}"),
        }
    }
    // Everyone else got every frame.
    for expected in 1..=seq {
        assert_eq!(ws_media(&mut other).await.0, expected);
    }
    // The stuck receiver's session is alive and its control stream flows.
    let publish =
        Publish { room: ROOM.into(), payload: b"still here".to_vec().into(), reliable: true, ..Default::default() };
    other.send(5, client_frame::Kind::Publish(publish)).await;
    loop {
        match stuck.frame().await {
            server_frame::Kind::Message(m) => {
                assert_eq!(&m.payload[..], b"still here");
                break;
            }
            server_frame::Kind::ParticipantJoined(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(node.metric("switchboard_slow_consumer_disconnects_total").await, 0.0);
}
