//! Media lanes in the Rust client library, over real QUIC against two real nodes on a real
//! nats-server: a WebTransport sender with lanes puts small frames on datagrams and large ones
//! on per-group streams (with the rest of their group); WebSocket and WebTransport receivers on the other node get every
//! frame with its content; the counters say which lane carried what. With lanes off (client
//! or node), everything stays on the control stream.

use bytes::Bytes;
use switchboard_client::{pb, Client, ClientConfig, Event, Events, MediaStats, ReconnectPolicy, ReconnectingClient};
use switchboard_tests::{token, within, NatsServer, NodeOptions, TestNode, WAIT};

const ROOM: &str = "lanes-room";

/// Frames per group: a keyframe, then deltas.
const GROUP: u64 = 8;
/// Groups sent.
const GROUPS: u64 = 4;

/// Payload bytes of frame `seq`: keyframes 20-40 KB (a stream) in even groups, 100-400 B (a
/// datagram) in odd ones; every fourth delta 3-4 KB (too large for any datagram: the group's
/// stream), the other deltas 100-400 B (datagrams until their group has a stream).
fn size_of(seq: u64) -> usize {
    match seq % GROUP {
        0 if (seq / GROUP).is_multiple_of(2) => 20_000 + (seq as usize * 1_777) % 20_000,
        3 | 7 => 3_000 + (seq as usize * 97) % 1_000,
        _ => 100 + (seq as usize * 37) % 300,
    }
}

fn is_large(seq: u64) -> bool {
    size_of(seq) > 1_500
}

/// Content that differs per frame and per byte position.
fn payload(seq: u64) -> Bytes {
    (0..size_of(seq)).map(|i| (i as u64 * 31 + seq * 7) as u8).collect::<Vec<u8>>().into()
}

fn frame(seq: u64) -> pb::Media {
    pb::Media {
        room: ROOM.into(),
        track: 1,
        seq,
        timestamp: seq * 33_000,
        keyframe: seq.is_multiple_of(GROUP),
        codec: "vp8".into(),
        payload: payload(seq),
        ..Default::default()
    }
}

/// The next media event, skipping presence.
async fn next_media(events: &mut Events) -> pb::MediaEvent {
    within(WAIT, "a media frame", async {
        loop {
            match events.recv().await.expect("event stream ended") {
                Event::Media(m) => return m,
                Event::ParticipantJoined(_) | Event::ParticipantLeft(_) | Event::RoomStats(_) => continue,
                other => panic!("expected media, got {other:?}"),
            }
        }
    })
    .await
}

/// The next room message, skipping presence.
async fn next_message(events: &mut Events) -> pb::Message {
    within(WAIT, "a room message", async {
        loop {
            match events.recv().await.expect("event stream ended") {
                Event::Message(m) => return m,
                Event::ParticipantJoined(_) | Event::ParticipantLeft(_) | Event::RoomStats(_) => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    })
    .await
}

fn assert_same(got: &pb::MediaEvent, sent: &pb::Media, who: &str) {
    assert_eq!(
        (got.room.as_str(), got.track, got.seq, got.keyframe, got.timestamp, got.codec.as_str()),
        (sent.room.as_str(), sent.track, sent.seq, sent.keyframe, sent.timestamp, sent.codec.as_str()),
        "{who}: frame {} header",
        sent.seq
    );
    assert!(got.payload == sent.payload, "{who}: frame {} content differs ({} bytes)", sent.seq, got.payload.len());
}

async fn two_nodes(nats: &NatsServer) -> (TestNode, TestNode) {
    let opts = |id: &str| NodeOptions { nats_url: Some(nats.url()), node_id: Some(id.into()), ..Default::default() };
    tokio::join!(TestNode::start(opts("alpha")), TestNode::start(opts("beta")))
}

async fn wt_config(node: &TestNode, user: &str, lanes: bool) -> ClientConfig {
    ClientConfig::new(node.wt_url(), token(user, &[ROOM]))
        .with_cert_hash(node.cert_hash().await)
        .with_media_lanes(lanes)
}

/// Send every frame, one at a time: each must reach both receivers, whole, before the next
/// goes (so nothing is reordered and the counts are exact).
async fn send_all(sender: &Client, ws_events: &mut Events, wt_events: &mut Events) {
    for seq in 0..GROUP * GROUPS {
        let sent = frame(seq);
        sender.media(sent.clone()).await.expect("sending media");
        assert_same(&next_media(ws_events).await, &sent, "WebSocket receiver");
        assert_same(&next_media(wt_events).await, &sent, "WebTransport receiver");
    }
}

/// Frames that go on a stream: from the first frame of a group too large for a datagram on,
/// the rest of the group follows on its stream.
fn streamed_frames() -> u64 {
    (0..GROUP * GROUPS).filter(|&s| (s - s % GROUP..=s).any(is_large)).count() as u64
}

#[tokio::test]
async fn media_goes_on_datagrams_and_group_streams_and_reaches_ws_and_wt_receivers_whole() {
    let nats = NatsServer::start().await;
    let (n1, n2) = two_nodes(&nats).await;
    let (sender, _sender_events) = Client::connect(wt_config(&n1, "sender", true).await).await.unwrap();
    let (ws, mut ws_events) = Client::connect(ClientConfig::new(n2.ws_url(), token("ws", &[ROOM]))).await.unwrap();
    let (wt, mut wt_events) =
        ReconnectingClient::connect(vec![wt_config(&n2, "wt", true).await], ReconnectPolicy::default()).await.unwrap();
    assert!(sender.media_lanes() && wt.media_lanes(), "WebTransport clients asking for lanes get them");
    assert!(sender.welcome().media_lanes);
    assert!(!ws.media_lanes(), "no lanes on WebSocket");
    for joined in [sender.join(ROOM).await, ws.join(ROOM).await, wt.join(ROOM).await] {
        joined.expect("joining");
    }

    send_all(&sender, &mut ws_events, &mut wt_events).await;

    // The control stream still carries everything else.
    sender.publish(ROOM, Bytes::from_static(b"after the media"), true, "chat").await.unwrap();
    assert_eq!(&next_message(&mut ws_events).await.payload[..], b"after the media");
    assert_eq!(&next_message(&mut wt_events).await.payload[..], b"after the media");

    let (total, large) = (GROUP * GROUPS, streamed_frames());
    assert!(large > GROUPS && total - large > GROUPS, "both lanes are used");
    let sent = sender.media_stats();
    assert_eq!(
        sent,
        MediaStats { sent_datagrams: total - large, sent_streams: large, ..Default::default() },
        "the sender: small frames on datagrams until their group has a stream, nothing dropped"
    );
    let received = wt.media_stats();
    assert_eq!(
        received,
        MediaStats { received_datagrams: total - large, received_streams: large, ..Default::default() },
        "the WebTransport receiver: both lanes, nothing stale"
    );
    assert_eq!(ws.media_stats(), MediaStats { received_control: total, ..Default::default() });
    // The node relayed the client's lanes as lanes: its own counters agree.
    let lane_in = |lane: &str| format!(r#"switchboard_media_lane_frames_total{{lane="{lane}",direction="in"}}"#);
    assert_eq!(n1.metric(&lane_in("datagram")).await, (total - large) as f64);
    assert_eq!(n1.metric(&lane_in("stream")).await, large as f64);
    sender.close().await;
    ws.close().await;
    wt.close().await;
}

#[tokio::test]
async fn with_lanes_off_in_the_client_all_media_stays_on_the_control_stream() {
    let nats = NatsServer::start().await;
    let (n1, n2) = two_nodes(&nats).await;
    let (sender, _sender_events) = Client::connect(wt_config(&n1, "sender", false).await).await.unwrap();
    let (ws, mut ws_events) = Client::connect(ClientConfig::new(n2.ws_url(), token("ws", &[ROOM]))).await.unwrap();
    let (wt, mut wt_events) = Client::connect(wt_config(&n2, "wt", false).await).await.unwrap();
    assert!(!sender.media_lanes() && !wt.media_lanes());
    assert!(!sender.welcome().media_lanes, "not asked for, not granted");
    for joined in [sender.join(ROOM).await, ws.join(ROOM).await, wt.join(ROOM).await] {
        joined.expect("joining");
    }

    send_all(&sender, &mut ws_events, &mut wt_events).await;

    let total = GROUP * GROUPS;
    assert_eq!(sender.media_stats(), MediaStats { sent_control: total, ..Default::default() });
    assert_eq!(wt.media_stats(), MediaStats { received_control: total, ..Default::default() });
    assert_eq!(ws.media_stats(), MediaStats { received_control: total, ..Default::default() });
    assert_eq!(n1.metric(r#"switchboard_media_lane_frames_total{lane="datagram",direction="in"}"#).await, 0.0);
    sender.close().await;
    ws.close().await;
    wt.close().await;
}

#[tokio::test]
async fn a_node_with_lanes_off_makes_the_client_fall_back_to_the_control_stream() {
    let off = NodeOptions { args: vec!["--wt-media-lanes".into(), "off".into()], ..Default::default() };
    let node = TestNode::start(off).await;
    let (sender, _sender_events) = Client::connect(wt_config(&node, "sender", true).await).await.unwrap();
    let (wt, mut wt_events) = Client::connect(wt_config(&node, "wt", true).await).await.unwrap();
    assert!(!sender.welcome().media_lanes, "--wt-media-lanes off: Welcome says no");
    assert!(!sender.media_lanes() && !wt.media_lanes(), "the client falls back");
    sender.join(ROOM).await.unwrap();
    wt.join(ROOM).await.unwrap();
    for seq in 0..GROUP {
        let sent = frame(seq);
        sender.media(sent.clone()).await.unwrap();
        assert_same(&next_media(&mut wt_events).await, &sent, "WebTransport receiver");
    }
    assert_eq!(sender.media_stats(), MediaStats { sent_control: GROUP, ..Default::default() });
    assert_eq!(wt.media_stats(), MediaStats { received_control: GROUP, ..Default::default() });
    sender.close().await;
    wt.close().await;
}

#[tokio::test]
async fn a_flooding_sender_drops_media_instead_of_waiting_and_recovers_at_a_keyframe() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (sender, _sender_events) = Client::connect(wt_config(&node, "sender", true).await).await.unwrap();
    let (wt, mut wt_events) = Client::connect(wt_config(&node, "wt", true).await).await.unwrap();
    assert!(sender.media_lanes() && wt.media_lanes());
    sender.join(ROOM).await.unwrap();
    wt.join(ROOM).await.unwrap();

    // 20 MB of one group in a loop that never gives the connection a chance to send: far past
    // QUIC flow control. A sender that waited would block here; this one drops and counts.
    const FLOOD: u64 = 200;
    let big: Bytes = vec![7u8; 100_000].into();
    within(WAIT, "the flood to be sent (a sender that waits on the network would block)", async {
        for seq in 0..FLOOD {
            let m = pb::Media { payload: big.clone(), keyframe: seq == 0, ..frame(seq) };
            sender.media(m).await.expect("media never fails while connected");
        }
    })
    .await;
    let stats = sender.media_stats();
    assert_eq!(stats.sent_streams + stats.send_dropped, FLOOD, "{stats:?}");
    assert!(stats.send_dropped > 0, "frames no stream could take at once are dropped: {stats:?}");
    assert_eq!(stats.sent_datagrams, 0, "none fits a datagram");

    // The next group starts at a keyframe and arrives whole (the flood's stale group is
    // finished or reset meanwhile). Retried while the flood drains: bounded.
    const AFTER: u64 = 1_000_000;
    let mut delivered = None;
    for attempt in 0..20u64 {
        let keyframe = frame(AFTER + attempt * 2 * GROUP); // even groups: large keyframes
        assert!(keyframe.keyframe && keyframe.payload.len() >= 20_000);
        sender.media(keyframe).await.unwrap();
        // Any of the keyframes sent so far (an earlier one may arrive late).
        let waited = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            loop {
                let m = next_media(&mut wt_events).await;
                if m.seq >= AFTER {
                    return m;
                }
                assert_eq!(m.payload, big, "a flood frame, whole");
            }
        })
        .await;
        if let Ok(m) = waited {
            assert_same(&m, &frame(m.seq), "WebTransport receiver");
            delivered = Some(m.seq);
            break;
        }
    }
    assert!(delivered.is_some(), "a keyframe after the flood got through");
    // The control stream was never stuck behind the media.
    sender.publish(ROOM, Bytes::from_static(b"still here"), true, "chat").await.unwrap();
    sender.close().await;
    wt.close().await;
}
