//! Simulcast layers, over real connections to real nodes on a real nats-server: each
//! receiver gets only the layer it chose of a sender, switches on a keyframe the node asked
//! the sender for, a node pulls from NATS only the layers its receivers want, a receiver
//! whose link drops media is moved down and, after a quiet hold-off, up again; and the
//! bounds on layer choices.

use bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_client::{pb, Client, ClientConfig, ErrorCode, Event, Events};
use switchboard_protocol::pb::{client_frame, server_frame, Join, LayerSubscribe};
use switchboard_tests::raw::RawWs;
use switchboard_tests::{token, wait_for, within, NatsServer, NodeOptions, TestNode, WAIT};
use tokio::sync::{mpsc, watch};

const ROOM: &str = "simulcast";

/// Layer `layer` of the sender's video is track `10 + layer`; only the first frame of each
/// layer is a keyframe unless a receiver asks for one, so a switch completes only through
/// the node's keyframe request.
fn frame(layer: u32, seq: u64, keyframe: bool, size: usize) -> pb::Media {
    pb::Media {
        room: ROOM.into(),
        track: 10 + layer,
        seq,
        timestamp: seq * 10_000,
        keyframe,
        codec: "vp8".into(),
        payload: Bytes::from(vec![layer as u8; size]),
        layer: Some(layer),
        ..Default::default()
    }
}

/// A sender of two layers (payload sizes `sizes`), one frame of each every 10 ms, answering
/// keyframe requests (by layer, or by track after a loss) with a keyframe of that layer.
struct LayeredSender {
    /// The `layer` of every keyframe request it got.
    asks: Arc<Mutex<Vec<Option<u32>>>>,
    stop: watch::Sender<bool>,
}

impl LayeredSender {
    fn start(client: Client, mut events: Events, sizes: [usize; 2]) -> Self {
        let asks = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = watch::channel(false);
        let seen = asks.clone();
        tokio::spawn(async move {
            let mut seq = [0u64; 2];
            let mut want_key = [true; 2];
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Some(Event::KeyframeRequest(k)) => {
                            seen.lock().unwrap().push(k.layer);
                            let layer = k.layer.unwrap_or(k.track.saturating_sub(10)) as usize;
                            if let Some(w) = want_key.get_mut(layer) {
                                *w = true;
                            }
                        }
                        Some(_) => {}
                        None => return,
                    },
                    _ = tick.tick() => {
                        for layer in 0..2 {
                            let key = std::mem::take(&mut want_key[layer]);
                            let f = frame(layer as u32, seq[layer], key, sizes[layer]);
                            if client.media(f).await.is_err() {
                                return;
                            }
                            seq[layer] += 1;
                        }
                    }
                    _ = stopped.changed() => return,
                }
            }
        });
        Self { asks, stop }
    }

    fn asked_for_layer(&self, layer: u32) -> bool {
        self.asks.lock().unwrap().contains(&Some(layer))
    }
}

impl Drop for LayeredSender {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Every event of a client, drained at once into an unbounded channel (a test that looks at
/// one receiver for a while must not turn the other into a slow reader).
fn collect(mut events: Events) -> mpsc::UnboundedReceiver<Event> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if tx.send(ev).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next media frame.
async fn next_media(rx: &mut mpsc::UnboundedReceiver<Event>) -> pb::MediaEvent {
    within(WAIT, "a media frame", async {
        loop {
            match rx.recv().await.expect("event stream ended") {
                Event::Media(m) => return m,
                Event::Error(e) => panic!("unexpected error {e:?}"),
                _ => continue,
            }
        }
    })
    .await
}

/// Skip frames of `from` until the first of `to`, which is returned; anything else panics.
async fn until_layer(rx: &mut mpsc::UnboundedReceiver<Event>, from: u32, to: u32) -> pb::MediaEvent {
    loop {
        let m = next_media(rx).await;
        if m.layer == Some(to) {
            return m;
        }
        assert_eq!(m.layer, Some(from), "a frame of neither the old nor the new layer");
    }
}

/// `n` frames, all of `layer` and in sequence after `after`; returns the last seq.
async fn only_layer(rx: &mut mpsc::UnboundedReceiver<Event>, layer: u32, after: u64, n: usize) -> u64 {
    let mut last = after;
    for _ in 0..n {
        let m = next_media(rx).await;
        assert_eq!(m.layer, Some(layer), "a frame of another layer");
        assert_eq!(m.track, 10 + layer);
        assert_eq!(m.seq, last + 1, "a gap in layer {layer}");
        last = m.seq;
    }
    last
}

async fn connect(node: &TestNode, user: &str) -> (Client, Events) {
    let (c, ev) = Client::connect(ClientConfig::new(node.ws_url(), token(user, &[ROOM]))).await.unwrap();
    c.join(ROOM).await.unwrap();
    (c, ev)
}

fn with_nats(nats: &NatsServer, id: &str, args: &[&str]) -> NodeOptions {
    NodeOptions {
        nats_url: Some(nats.url()),
        node_id: Some(id.into()),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn each_receiver_gets_its_layer_and_switches_on_a_keyframe() {
    let nats = NatsServer::start().await;
    let node = TestNode::start(with_nats(&nats, "solo", &[])).await;
    let (sender, sender_events) = connect(&node, "sender").await;
    let (hi, hi_events) = connect(&node, "hi").await;
    let (lo, lo_events) = connect(&node, "lo").await;
    let (mut hi_rx, mut lo_rx) = (collect(hi_events), collect(lo_events));
    let s = sender.session_id().to_owned();
    hi.layer_subscribe(ROOM, &s, 1).await.unwrap();
    let source = LayeredSender::start(sender, sender_events, [300, 3_000]);

    // `hi` may see layer 0 until layer 1's first keyframe, then layer 1 only.
    let first = until_layer(&mut hi_rx, 0, 1).await;
    assert!(first.keyframe, "hi's first layer-1 frame is a keyframe");
    let mut hi_last = only_layer(&mut hi_rx, 1, first.seq, 40).await;
    // `lo` never chose: layer 0 only.
    let first_lo = next_media(&mut lo_rx).await;
    assert_eq!(first_lo.layer, Some(0));
    let lo_last = only_layer(&mut lo_rx, 0, first_lo.seq, 40).await;

    // `lo` switches up: layer 0 goes on until the keyframe the node asks the sender for.
    lo.layer_subscribe(ROOM, &s, 1).await.unwrap();
    let switched = until_layer(&mut lo_rx, 0, 1).await;
    assert!(switched.keyframe, "the switch starts on a keyframe");
    assert!(switched.seq > lo_last, "a keyframe sent for the switch, not layer 1's first");
    assert!(source.asked_for_layer(1), "the node asked the sender for a layer-1 keyframe");
    only_layer(&mut lo_rx, 1, switched.seq, 30).await;
    // `hi` carried on, unaffected.
    hi_last = only_layer(&mut hi_rx, 1, hi_last, 30).await;

    // And back down, again on a keyframe (of layer 0).
    lo.layer_subscribe(ROOM, &s, 0).await.unwrap();
    let down = until_layer(&mut lo_rx, 1, 0).await;
    assert!(down.keyframe && source.asked_for_layer(0));
    only_layer(&mut lo_rx, 0, down.seq, 20).await;
    only_layer(&mut hi_rx, 1, hi_last, 20).await;

    assert!(node.metric("switchboard_layer_switches_total{direction=\"up\"}").await >= 2.0);
    assert!(node.metric("switchboard_layer_switches_total{direction=\"down\"}").await >= 1.0);
    assert_eq!(node.metric("switchboard_layer_subscriptions").await, 2.0);
}

#[tokio::test]
async fn a_node_pulls_from_nats_only_the_layers_its_receivers_want() {
    let nats = NatsServer::start().await;
    let (a, b) = tokio::join!(
        TestNode::start(with_nats(&nats, "node-a", &[])),
        TestNode::start(with_nats(&nats, "node-b", &[]))
    );
    let (sender, sender_events) = connect(&a, "sender").await;
    let (r1, r1_events) = connect(&b, "r1").await;
    let (_r2, r2_events) = connect(&b, "r2").await;
    let (mut r1_rx, mut r2_rx) = (collect(r1_events), collect(r2_events));
    let s = sender.session_id().to_owned();
    let _source = LayeredSender::start(sender, sender_events, [300, 3_000]);

    // Both receivers on node B want the low layer (the default).
    let m = next_media(&mut r1_rx).await;
    only_layer(&mut r1_rx, 0, m.seq, 50).await;
    let m = next_media(&mut r2_rx).await;
    let r2_last = only_layer(&mut r2_rx, 0, m.seq, 50).await;
    let layer = |l: &str| format!("switchboard_media_bus_bytes_total{{layer=\"{l}\"}}");
    assert!(b.metric(&layer("0")).await > 0.0);
    assert_eq!(b.metric(&layer("1")).await, 0.0, "node B received high-layer bytes nobody there wants");
    assert_eq!(a.metric(&layer("1")).await, 0.0, "node A has no receiver at all");
    assert_eq!(b.metric("switchboard_layer_bus_subscriptions").await, 1.0);

    // One receiver wants the high layer: now node B pulls it...
    r1.layer_subscribe(ROOM, &s, 1).await.unwrap();
    let first = until_layer(&mut r1_rx, 0, 1).await;
    assert!(first.keyframe);
    only_layer(&mut r1_rx, 1, first.seq, 20).await;
    assert!(b.metric(&layer("1")).await > 0.0);
    assert_eq!(b.metric("switchboard_layer_bus_subscriptions").await, 2.0);
    // ...and the other still gets the low one only.
    let r2_last = only_layer(&mut r2_rx, 0, r2_last, 20).await;

    // Back down: once switched, node B drops its layer-1 subscription.
    r1.layer_subscribe(ROOM, &s, 0).await.unwrap();
    let down = until_layer(&mut r1_rx, 1, 0).await;
    assert!(down.keyframe);
    wait_for(WAIT, "node B to unsubscribe layer 1", || async {
        (b.metric("switchboard_layer_bus_subscriptions").await == 1.0).then_some(())
    })
    .await;
    let high_bytes = b.metric(&layer("1")).await;
    only_layer(&mut r2_rx, 0, r2_last, 50).await;
    assert_eq!(b.metric(&layer("1")).await, high_bytes, "high-layer bytes kept coming after the unsubscribe");
}

/// Bytes of the room's layer-1 subject a plain NATS subscriber has seen, counted in the
/// background.
fn count_layer_bytes(mut sub: async_nats::Subscriber) -> Arc<std::sync::atomic::AtomicU64> {
    let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = n.clone();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        while let Some(msg) = sub.next().await {
            count.fetch_add(msg.payload.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    });
    n
}

#[tokio::test]
async fn a_senders_node_publishes_a_layer_only_while_some_node_wants_it() {
    let nats = NatsServer::start().await;
    // 1 s heartbeats: interest announcements live 3 s.
    let args = ["--node-timeout", "5"];
    let (a, b) = tokio::join!(
        TestNode::start(with_nats(&nats, "node-a", &args)),
        TestNode::start(with_nats(&nats, "node-b", &args))
    );
    let watcher = async_nats::connect(nats.url()).await.expect("connecting to NATS");
    let high = count_layer_bytes(watcher.subscribe(format!("*.room.{ROOM}.media.1")).await.unwrap());
    watcher.flush().await.unwrap();
    let high_bytes = || high.load(std::sync::atomic::Ordering::Relaxed);
    let unpublished = "switchboard_layer_frames_unpublished_total";

    let (sender, sender_events) = connect(&a, "sender").await;
    let (r1, r1_events) = connect(&b, "r1").await;
    let mut r1_rx = collect(r1_events);
    let s = sender.session_id().to_owned();
    let _source = LayeredSender::start(sender, sender_events, [300, 3_000]);

    // Nobody wants layer 1: node A does not publish it at all.
    let m = next_media(&mut r1_rx).await;
    let last = only_layer(&mut r1_rx, 0, m.seq, 100).await;
    let kept = a.metric(unpublished).await;
    assert!(kept >= 50.0, "node A counted the layer-1 frames it kept: {kept}");
    assert_eq!(high_bytes(), 0, "layer-1 bytes reached NATS while no node wanted them");

    // A receiver on node B wants layer 1: B announces it, A publishes it, the switch happens
    // on a keyframe as before.
    r1.layer_subscribe(ROOM, &s, 1).await.unwrap();
    let first = within(WAIT, "the switch to layer 1", until_layer(&mut r1_rx, 0, 1)).await;
    assert!(first.keyframe);
    only_layer(&mut r1_rx, 1, first.seq, 50).await;
    assert!(high_bytes() > 0, "no layer-1 bytes on NATS for a node that wants them");

    // Back to layer 0: within the announcement's life node A stops publishing layer 1.
    r1.layer_subscribe(ROOM, &s, 0).await.unwrap();
    until_layer(&mut r1_rx, 1, 0).await;
    let stopped = wait_for(WAIT, "node A to stop publishing layer 1", || async {
        let before = (high_bytes(), a.metric(unpublished).await);
        tokio::time::sleep(Duration::from_millis(300)).await; // two samples apart
        let after = (high_bytes(), a.metric(unpublished).await);
        (after.0 == before.0 && after.1 > before.1).then_some(after.0)
    })
    .await;
    let _ = last;
    for _ in 0..3 {
        next_media(&mut r1_rx).await;
    }
    assert_eq!(high_bytes(), stopped, "layer-1 bytes kept reaching NATS after nobody wanted them");
}

#[tokio::test]
async fn a_receiver_that_drops_media_is_moved_down_and_back_up_after_a_quiet_hold_off() {
    let nats = NatsServer::start().await;
    let node = TestNode::start(with_nats(&nats, "solo", &["--layer-up-hold-off", "1"])).await;
    let (sender, sender_events) = connect(&node, "sender").await;
    let (fast, fast_events) = connect(&node, "fast").await;
    let mut fast_rx = collect(fast_events);
    let s = sender.session_id().to_owned();
    fast.layer_subscribe(ROOM, &s, 1).await.unwrap();

    // The slow receiver reads nothing after choosing the high layer.
    let (mut slow, _) = RawWs::authenticated(&node.ws_url(), &token("slow", &[ROOM])).await;
    slow.send(2, client_frame::Kind::Join(Join { room: ROOM.into(), resume_from: None })).await;
    assert!(matches!(slow.frame().await, server_frame::Kind::Joined(_)));
    let choose = LayerSubscribe { room: ROOM.into(), session: s.clone(), layer: 1 };
    slow.send(3, client_frame::Kind::LayerSubscribe(choose)).await;
    loop {
        match slow.frame().await {
            server_frame::Kind::Ack(a) if a.ref_id == 3 => break,
            server_frame::Kind::Error(e) => panic!("{e:?}"),
            _ => {}
        }
    }
    // ~3 MB/s of layer 1: its queue overflows while it does not read.
    let _source = LayeredSender::start(sender, sender_events, [500, 30_000]);
    let downs = "switchboard_layer_auto_moves_total{direction=\"down\"}";
    wait_for(Duration::from_secs(20), "the node to move the slow receiver down", || async {
        (node.metric(downs).await >= 1.0).then_some(())
    })
    .await;

    // It reads again: after what was queued, layer 0 from a keyframe, then (quiet for the
    // hold-off) layer 1 again from a keyframe.
    let media = |f: server_frame::Kind| match f {
        server_frame::Kind::Media(m) => Some(m),
        _ => None,
    };
    let mut layer = 1;
    let mut moved = Vec::new();
    within(Duration::from_secs(30), "slow's layers to go 1 -> 0 -> 1", async {
        // Before layer 1's first keyframe it got layer 0's first frames.
        while media(slow.frame().await).is_none_or(|m| m.layer != Some(1)) {}
        while moved.len() < 2 {
            let Some(m) = media(slow.frame().await) else { continue };
            let l = m.layer.expect("layered");
            if l != layer {
                assert!(m.keyframe, "switched from layer {layer} to {l} on a delta frame");
                moved.push(l);
                layer = l;
            }
        }
    })
    .await;
    assert_eq!(moved, [0, 1]);
    assert!(node.metric("switchboard_layer_auto_moves_total{direction=\"up\"}").await >= 1.0);

    // The fast receiver kept its layer all along.
    let first = until_layer(&mut fast_rx, 0, 1).await;
    assert!(first.keyframe);
    while let Ok(ev) = fast_rx.try_recv() {
        if let Event::Media(m) = ev {
            assert_eq!(m.layer, Some(1), "the fast receiver was moved too");
        }
    }
}

#[tokio::test]
async fn layer_choices_are_bounded_and_checked() {
    let node = TestNode::start(NodeOptions {
        args: vec!["--max-layer-subscriptions".into(), "2".into()],
        ..Default::default()
    })
    .await;
    let (rx, rx_events) = connect(&node, "receiver").await;
    let mut senders: Vec<(Client, Events)> = Vec::new();
    for i in 0..3 {
        senders.push(connect(&node, &format!("sender-{i}")).await);
    }
    let id = |i: usize| senders[i].0.session_id().to_owned();
    rx.layer_subscribe(ROOM, &id(0), 2).await.unwrap();
    rx.layer_subscribe(ROOM, &id(1), 1).await.unwrap();
    let code = |r: Result<(), switchboard_client::ClientError>| r.unwrap_err().code();
    assert_eq!(code(rx.layer_subscribe(ROOM, &id(2), 1).await), Some(ErrorCode::TooManySubscriptions));
    // Changing a choice already held is not a new one.
    rx.layer_subscribe(ROOM, &id(0), 0).await.unwrap();
    assert_eq!(node.metric("switchboard_layer_subscriptions").await, 2.0);
    assert!(node.metric("switchboard_errors_total{code=\"ERROR_CODE_TOO_MANY_SUBSCRIPTIONS\"}").await >= 1.0);
    // Bad choices.
    assert_eq!(code(rx.layer_subscribe(ROOM, &id(2), 3).await), Some(ErrorCode::InvalidArgument));
    assert_eq!(code(rx.layer_subscribe(ROOM, "no-such-session", 1).await), Some(ErrorCode::TargetNotFound));
    assert_eq!(code(rx.layer_subscribe("elsewhere", &id(2), 1).await), Some(ErrorCode::NotInRoom));
    assert_eq!(code(rx.layer_subscribe(ROOM, rx.session_id(), 1).await), Some(ErrorCode::InvalidArgument));
    // A sender that left no longer counts.
    let mut rx_rx = collect(rx_events);
    let (gone, _) = senders.remove(0);
    let gone_id = gone.session_id().to_owned();
    gone.leave(ROOM).await.unwrap();
    within(WAIT, "the receiver to see the sender leave", async {
        loop {
            if let Some(Event::ParticipantLeft(p)) = rx_rx.recv().await {
                if p.participant.is_some_and(|p| p.session == gone_id) {
                    return;
                }
            }
        }
    })
    .await;
    rx.layer_subscribe(ROOM, senders[1].0.session_id(), 1).await.unwrap();
    // Frames with a layer or level out of range are refused.
    let (sender, mut events) = senders.remove(0);
    sender.media(pb::Media { layer: Some(3), ..frame(0, 0, true, 10) }).await.unwrap();
    sender.media(pb::Media { layer: None, audio_level: Some(128), ..frame(0, 1, true, 10) }).await.unwrap();
    for _ in 0..2 {
        let e = within(WAIT, "an error", async {
            loop {
                if let Some(Event::Error(e)) = events.recv().await {
                    return e;
                }
            }
        })
        .await;
        assert_eq!(e.code(), pb::ErrorCode::InvalidArgument, "{e:?}");
    }
}
