//! The `media-room` scenario: one room of a video call, its receivers possibly behind an
//! impaired link.
//!
//! Members: `--senders` (default 2) senders of 30 fps video-like media (track 1 each: 1–2 KiB
//! deltas, a 20–40 KiB keyframe every second, the payload starting with the send time; a
//! `KeyframeRequest` makes the next frame a keyframe, at most one forced keyframe per 500 ms)
//! and `--clients` receivers. With `--layers L` (2..=3) every sender sends L simulcast layers
//! at once, layer `l` on track `1 + l` with `Media.layer = l`, the top layer sized as above
//! and each lower one a quarter of the bytes of the one above, keyframes per layer (a
//! `KeyframeRequest` forces one on the layer it names); receivers choose `--want-layer` for
//! every sender (`top`: `LayerSubscribe` to L - 1 before the start; `low`: layer 0, the
//! node's default, nothing sent). Every member also sends one reliable chat message per second (`kind` "chat",
//! payload: send time, member, sequence number), so the room carries chat and media at once.
//! With `--receiver-netns`, the receivers' connections are made inside those network
//! namespaces (the lab's shaped client hosts); senders connect from the bench's own.
//! Everything goes through the client library, so `--wt-lanes` decides whether WebTransport
//! media rides on lanes (datagrams, per-group streams) or on the control stream. Members may
//! be spread over several nodes of a cluster (`--node`, `--receiver-node`: [`placement`]).
//!
//! Reported (besides the usual fields, where `sent`/`deliveries`/`latency_ms` are media frames
//! at the receivers):
//! * `freezes`: per receiver and track, the gaps of more than 200 ms between two delivered
//!   frames, plus one if the track's last delivery came more than 200 ms before its sender's
//!   last frame was sent (a stream that stopped); `frozen_ms` is their total length;
//! * chat: `chat_latency_ms`, `chat_lost` (messages acknowledged to their sender that some
//!   other member never received although a later one from the same sender arrived, by
//!   sequence number), `chat_duplicated` (a sequence number delivered twice to one member),
//!   both must be 0, and `chat_undelivered_at_stop` (acknowledged messages still on their way
//!   when the run stopped waiting, [`CHAT_GRACE`] after the senders stopped: late, not lost);
//!   `chat_send_errors` counts publishes that failed or were not acknowledged in time;
//! * `node_cpu_us_per_delivery`: the servers' CPU time while sending (`--server-pid`) per
//!   delivery (media frames and chat messages, to every member), and
//!   `node_cpu_us_per_forwarded_frame` per media frame delivered;
//! * simulcast: `layers` (per layer: frames sent, frames and bytes delivered in all and per
//!   receiver, latency), `wanted_layer_delivered_ratio` (frames of the wanted layer delivered
//!   over those sent times receivers) and `min_receiver_fps` (the lowest, over receivers and
//!   senders, of the wanted layer's frames delivered per second of sending);
//! * over several nodes: `placement` (senders and receivers per node), `latency_same_node_ms`
//!   and `latency_across_nodes_ms` (frames whose sender is on the receiver's node, and those
//!   that crossed the bus), `server_cpu_percent_each` (per `--server-pid`) and
//!   `nats_cpu_percent` (`--nats-pid`); `layer_subscribe_retries` and `layer_subscribe_max_ms`:
//!   a receiver's node refuses `LayerSubscribe` for a sender on another node until it has
//!   learnt of that sender's join over the bus, so receivers ask again (see [`subscribe`]).
//!
//! The report is put together in [`report`].

mod placement;
mod report;

use super::netns;
use super::scenarios::{latency_us, now_us};
use super::stats::{histogram, CpuMeter, Report};
use super::targets::{Target, TargetKind};
use super::BenchArgs;
use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use placement::Placement;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use switchboard_client::{pb, Client, ClientError, ErrorCode, Event, Events};
use tokio::sync::{oneshot, watch};

/// The room every member joins.
const ROOM: &str = "bench-media-room";
/// Most simulcast layers (the protocol's `MAX_LAYERS`).
const MAX_LAYERS: u32 = 3;

/// The layer receivers choose for every sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WantLayer {
    /// Layer 0: the node's default, no `LayerSubscribe` sent.
    Low,
    /// The top layer (`--layers` - 1).
    Top,
}
/// Frames per second per sender.
const FPS: f64 = 30.0;
/// A keyframe every this many frames (one a second).
const KEYFRAME_EVERY: u64 = 30;
/// Forced keyframes (answering `KeyframeRequest`) at most this often per sender.
const FORCED_KEYFRAME_GAP: Duration = Duration::from_millis(500);
/// A longer gap between two delivered frames of a track is a freeze.
const FREEZE: Duration = Duration::from_millis(200);
/// Chat messages per member: one per this interval.
const CHAT_EVERY: Duration = Duration::from_secs(1);
/// Chat payload: send time (8 bytes), member (4), sequence number (8), padding.
const CHAT_BYTES: usize = 64;
/// After the senders stop: media stragglers are awaited this long at most...
const MEDIA_GRACE: Duration = Duration::from_secs(2);
/// ...and chat (reliable, every message must arrive) this long at most.
const CHAT_GRACE: Duration = Duration::from_secs(15);
/// `LayerSubscribe` refused because the sender is not known yet (another node's): asked again
/// this often, for at most this long.
const SUBSCRIBE_RETRY: Duration = Duration::from_millis(50);
const SUBSCRIBE_LIMIT: Duration = Duration::from_secs(5);
/// Connecting and joining, every member.
const CONNECT_LIMIT: Duration = Duration::from_secs(60);

/// A delta frame's or keyframe's size for frame `seq` (deterministic spread).
fn frame_size(seq: u64, keyframe: bool) -> usize {
    let spread = (seq.wrapping_mul(7919) % 1024) as usize;
    if keyframe {
        20 * 1024 + spread * 20
    } else {
        1024 + spread
    }
}

/// The size of layer `layer` of `layers` for frame `seq`: the top layer as [`frame_size`],
/// each lower one a quarter of the one above (at least the 8-byte timestamp).
fn layer_frame_size(seq: u64, keyframe: bool, layer: u32, layers: u32) -> usize {
    (frame_size(seq, keyframe) >> (2 * (layers - 1 - layer))).max(8)
}

/// A `size`-byte payload starting with the send time.
fn stamped(size: usize) -> Bytes {
    let mut b = BytesMut::zeroed(size.max(8));
    b[..8].copy_from_slice(&now_us().to_be_bytes());
    b.freeze()
}

/// One receiver's view of one sender's track.
#[derive(Default)]
struct Track {
    delivered: u64,
    /// Frames and bytes delivered per layer (0 without layers).
    by_layer: [u64; MAX_LAYERS as usize],
    bytes_by_layer: [u64; MAX_LAYERS as usize],
    last_us: Option<u64>,
    freezes: u64,
    frozen_us: u64,
}

/// What members saw, under one lock (a few hundred events a second).
struct Tally {
    media_latency: Histogram<u64>,
    layer_latency: Vec<Histogram<u64>>,
    /// Media latency of frames from a sender on the receiver's node, and from another node.
    same_node_latency: Histogram<u64>,
    across_nodes_latency: Histogram<u64>,
    chat_latency: Histogram<u64>,
    /// (receiver member, sender member) → track.
    tracks: HashMap<(usize, usize), Track>,
    /// `chat_seen[to][from]`: sequence numbers delivered.
    chat_seen: Vec<Vec<HashSet<u64>>>,
    chat_deliveries: u64,
    chat_duplicated: u64,
    /// Sequence numbers each member's server acknowledged.
    chat_acked: Vec<Vec<u64>>,
    chat_send_errors: u64,
    first_error: Option<String>,
}

impl Tally {
    /// Acknowledged chat messages that some other member has not received (yet): (lost,
    /// pending). A member gets each sender's messages in order, so a missing one below the
    /// highest delivered from that sender is lost; one above it may still be on its way.
    fn chat_missing(&self) -> (u64, u64) {
        let members = self.chat_acked.len();
        let (mut lost, mut pending) = (0, 0);
        for to in 0..members {
            for (from, acked) in self.chat_acked.iter().enumerate() {
                if from == to {
                    continue;
                }
                let seen = &self.chat_seen[to][from];
                let highest = seen.iter().max().copied();
                for s in acked.iter().filter(|s| !seen.contains(s)) {
                    if highest.is_some_and(|h| *s < h) {
                        lost += 1;
                    } else {
                        pending += 1;
                    }
                }
            }
        }
        (lost, pending)
    }
}

/// Shared by every member task, whatever thread (namespace) it runs on.
struct Shared {
    members: usize,
    /// Senders are members `0..n_senders`.
    n_senders: usize,
    /// Layers per sender (1: unlayered) and the one receivers want.
    layers: u32,
    want: u32,
    /// Every member's node.
    placement: Placement,
    /// Session id → sender member, set before the run starts.
    senders: OnceLock<HashMap<String, usize>>,
    tally: Mutex<Tally>,
    /// Frames sent (per layer) and the time of the last one, per sender.
    frames_sent: Vec<AtomicU64>,
    last_sent_us: Vec<AtomicU64>,
    /// Per sender and layer.
    keyframe_wanted: Vec<Vec<AtomicBool>>,
    keyframe_requests: AtomicU64,
    /// `LayerSubscribe`s asked again, and the longest time until one was answered.
    subscribe_retries: AtomicU64,
    subscribe_wait_us: AtomicU64,
    forced_keyframes: AtomicU64,
    /// Members whose chat loop has finished (every publish answered or failed).
    chat_done: AtomicUsize,
    /// Every member's media lane counters, summed when it closes.
    media_stats: Mutex<switchboard_client::MediaStats>,
}

impl Shared {
    fn new(placement: Placement, n_senders: usize, layers: u32, want: u32) -> Arc<Self> {
        let members = placement.node_of.len();
        Arc::new(Self {
            members,
            n_senders,
            layers,
            want,
            placement,
            senders: OnceLock::new(),
            tally: Mutex::new(Tally {
                media_latency: histogram(),
                layer_latency: (0..MAX_LAYERS).map(|_| histogram()).collect(),
                same_node_latency: histogram(),
                across_nodes_latency: histogram(),
                chat_latency: histogram(),
                tracks: HashMap::new(),
                chat_seen: vec![vec![HashSet::new(); members]; members],
                chat_deliveries: 0,
                chat_duplicated: 0,
                chat_acked: vec![Vec::new(); members],
                chat_send_errors: 0,
                first_error: None,
            }),
            frames_sent: (0..n_senders).map(|_| AtomicU64::new(0)).collect(),
            last_sent_us: (0..n_senders).map(|_| AtomicU64::new(0)).collect(),
            keyframe_wanted: (0..n_senders).map(|_| (0..layers).map(|_| AtomicBool::new(false)).collect()).collect(),
            keyframe_requests: AtomicU64::new(0),
            subscribe_retries: AtomicU64::new(0),
            subscribe_wait_us: AtomicU64::new(0),
            forced_keyframes: AtomicU64::new(0),
            chat_done: AtomicUsize::new(0),
            media_stats: Mutex::new(Default::default()),
        })
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note_error(&self, e: impl std::fmt::Display) {
        let mut t = self.tally();
        t.first_error.get_or_insert_with(|| e.to_string());
    }
}

/// When the run starts, and when members stop and close.
#[derive(Clone)]
struct Signals {
    go: watch::Receiver<Option<Instant>>,
    stop: watch::Receiver<bool>,
    duration: Duration,
}

impl Signals {
    /// The start time, or `None` if the run was abandoned.
    async fn start(&mut self) -> Option<Instant> {
        let start = self.go.wait_for(Option::is_some).await.ok()?;
        *start
    }

    /// Until stopped (or abandoned).
    async fn stopped(&mut self) {
        let _ = self.stop.wait_for(|s| *s).await;
    }
}

/// Connect member `i` to its node and join the room.
async fn connect(target: &Target, placement: &Placement, i: usize) -> anyhow::Result<(Client, Events)> {
    let mut config = target.client_config(i);
    config.url = placement.url(i).to_owned();
    let url = config.url.clone();
    let (client, events) = Client::connect(config).await.with_context(|| format!("member {i}: connecting to {url}"))?;
    client.join(ROOM).await.with_context(|| format!("member {i}: joining {ROOM}"))?;
    Ok((client, events))
}

/// Connect the receivers `indices`, at most `concurrency` at a time (`--connect-concurrency`:
/// 200 WebTransport handshakes at once can outlast the connect timeout on a busy machine),
/// told on `ready`, then run them until stopped. Runs on
/// the bench's runtime or on a network namespace's thread.
async fn receivers(
    target: Target,
    indices: Vec<usize>,
    concurrency: usize,
    shared: Arc<Shared>,
    mut signals: Signals,
    ready: oneshot::Sender<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let conns: anyhow::Result<Vec<_>> = futures_util::stream::iter(indices.clone())
        .map(|i| connect(&target, &shared.placement, i))
        .buffered(concurrency.max(1))
        .try_collect()
        .await;
    let conns = match conns {
        Ok(c) => {
            let _ = ready.send(Ok(()));
            c
        }
        Err(e) => {
            let msg = format!("{e:#}");
            let _ = ready.send(Err(e));
            anyhow::bail!(msg);
        }
    };
    let Some(start) = signals.start().await else { return Ok(()) };
    let tasks: Vec<_> = indices
        .into_iter()
        .zip(conns)
        .map(|(i, (client, events))| tokio::spawn(member(i, client, events, shared.clone(), signals.clone(), start)))
        .collect();
    for t in tasks {
        t.await?;
    }
    Ok(())
}

/// One member: its events tallied, its chat (and, for a sender, its media) sent from `start`
/// for the run's duration, then closed when stopped.
async fn member(i: usize, client: Client, events: Events, shared: Arc<Shared>, mut signals: Signals, start: Instant) {
    let reader = tokio::spawn(read_events(i, events, shared.clone()));
    let end = start + signals.duration;
    if i >= shared.n_senders && shared.want > 0 {
        subscribe(i, &client, &shared).await;
    }
    let chat = chat(i, &client, &shared, start, end);
    if i < shared.n_senders {
        tokio::join!(chat, media(i, &client, &shared, start, end));
    } else {
        chat.await;
    }
    signals.stopped().await;
    reader.abort();
    *shared.media_stats.lock().unwrap_or_else(|e| e.into_inner()) += client.media_stats();
    client.close().await;
}

/// Receiver `i` chooses the wanted layer of every sender.
/// A sender on another node is refused (`TargetNotFound`) until the receiver's node has
/// learnt of its join over the bus: asked again every [`SUBSCRIBE_RETRY`] until
/// [`SUBSCRIBE_LIMIT`] (how long it took is reported).
async fn subscribe(i: usize, client: &Client, shared: &Shared) {
    let Some(sessions) = shared.senders.get() else { return };
    let asked = Instant::now();
    let ask = |session: String| async move {
        let mut retries = 0u64;
        loop {
            match client.layer_subscribe(ROOM, &session, shared.want).await {
                Err(ClientError::Server { code: ErrorCode::TargetNotFound, .. })
                    if asked.elapsed() + SUBSCRIBE_RETRY < SUBSCRIBE_LIMIT =>
                {
                    retries += 1;
                    tokio::time::sleep(SUBSCRIBE_RETRY).await;
                }
                r => return (r, retries, asked.elapsed()),
            }
        }
    };
    for (r, retries, took) in futures_util::future::join_all(sessions.keys().cloned().map(ask)).await {
        shared.subscribe_retries.fetch_add(retries, Ordering::Relaxed);
        shared.subscribe_wait_us.fetch_max(took.as_micros() as u64, Ordering::Relaxed);
        if let Err(e) = r {
            shared.note_error(format!("receiver {i}: layer_subscribe: {e}"));
        }
    }
}

/// Tally what member `i` receives; a sender notes keyframe requests.
async fn read_events(i: usize, mut events: Events, shared: Arc<Shared>) {
    while let Some(ev) = events.recv().await {
        match ev {
            Event::Message(m) if m.kind == "chat" => {
                let p = &m.payload[..];
                let (Some(lat), Some(from), Some(seq)) = (
                    latency_us(p),
                    p.get(8..12).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes),
                    p.get(12..20).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes),
                ) else {
                    continue;
                };
                let mut t = shared.tally();
                let Some(seen) = t.chat_seen[i].get_mut(from as usize) else { continue };
                if seen.insert(seq) {
                    let _ = t.chat_latency.record(lat);
                } else {
                    t.chat_duplicated += 1;
                }
                t.chat_deliveries += 1;
            }
            Event::Media(m) if i >= shared.n_senders => {
                let from = m.from.as_ref().map(|f| f.session.as_str()).unwrap_or_default();
                let Some(&sender) = shared.senders.get().and_then(|s| s.get(from)) else { continue };
                let now = now_us();
                let mut t = shared.tally();
                let layer = m.layer.unwrap_or(0).min(MAX_LAYERS - 1) as usize;
                if let Some(l) = latency_us(&m.payload) {
                    let _ = t.media_latency.record(l);
                    let _ = t.layer_latency[layer].record(l);
                    let _ = if shared.placement.same_node(i, sender) {
                        t.same_node_latency.record(l)
                    } else {
                        t.across_nodes_latency.record(l)
                    };
                }
                let track = t.tracks.entry((i, sender)).or_default();
                track.by_layer[layer] += 1;
                track.bytes_by_layer[layer] += m.payload.len() as u64;
                if let Some(last) = track.last_us {
                    let gap = now.saturating_sub(last);
                    if gap > FREEZE.as_micros() as u64 {
                        track.freezes += 1;
                        track.frozen_us += gap;
                    }
                }
                track.last_us = Some(now);
                track.delivered += 1;
            }
            Event::KeyframeRequest(k) if i < shared.n_senders => {
                shared.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                // The layer asked for, else the track's (track 1 + layer), else every layer.
                let layer = k.layer.or_else(|| k.track.checked_sub(1).filter(|_| shared.layers > 1));
                for (l, wanted) in shared.keyframe_wanted[i].iter().enumerate() {
                    if layer.is_none_or(|w| w as usize == l) {
                        wanted.store(true, Ordering::Relaxed);
                    }
                }
            }
            Event::Closed { reason, .. } => {
                shared.note_error(format!("member {i}: connection closed: {reason}"));
                return;
            }
            _ => {}
        }
    }
}

/// One reliable chat message per [`CHAT_EVERY`] from `start` (offset per member) to `end`,
/// each awaiting its acknowledgement in its own task so that a slow answer does not delay
/// the next message.
async fn chat(i: usize, client: &Client, shared: &Arc<Shared>, start: Instant, end: Instant) {
    let offset = CHAT_EVERY.mul_f64(i as f64 / shared.members as f64);
    let mut pending = Vec::new();
    for seq in 0u64.. {
        let at = start + offset + CHAT_EVERY * seq as u32;
        if at >= end {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let mut p = BytesMut::with_capacity(CHAT_BYTES);
        p.put_u64(now_us());
        p.put_u32(i as u32);
        p.put_u64(seq);
        p.resize(CHAT_BYTES, 0);
        let (client, shared) = (client.clone(), shared.clone());
        pending.push(tokio::spawn(async move {
            match client.publish(ROOM, p.freeze(), true, "chat").await {
                Ok(_) => shared.tally().chat_acked[i].push(seq),
                Err(e) => {
                    shared.tally().chat_send_errors += 1;
                    shared.note_error(format!("member {i}: chat {seq}: {e}"));
                }
            }
        }));
    }
    for p in pending {
        let _ = p.await;
    }
    shared.chat_done.fetch_add(1, Ordering::SeqCst);
}

/// Sender `i`: [`FPS`] frames per second (of every layer) from `start` to `end`.
async fn media(i: usize, client: &Client, shared: &Shared, start: Instant, end: Instant) {
    let layers = shared.layers;
    let mut last_key: Vec<Option<Instant>> = vec![None; layers as usize];
    'frames: for seq in 0u64.. {
        let at = start + Duration::from_secs_f64(seq as f64 / FPS);
        if at >= end {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        for layer in 0..layers {
            let l = layer as usize;
            let wanted = &shared.keyframe_wanted[i][l];
            let scheduled = seq.is_multiple_of(KEYFRAME_EVERY);
            let forced = !scheduled
                && wanted.load(Ordering::Relaxed)
                && last_key[l].is_none_or(|k| k.elapsed() >= FORCED_KEYFRAME_GAP);
            let keyframe = scheduled || forced;
            if keyframe {
                wanted.store(false, Ordering::Relaxed);
                last_key[l] = Some(Instant::now());
                if forced {
                    shared.forced_keyframes.fetch_add(1, Ordering::Relaxed);
                }
            }
            let frame = pb::Media {
                room: ROOM.into(),
                track: 1 + layer,
                seq,
                timestamp: seq * 33_333,
                keyframe,
                codec: "vp8".into(),
                payload: stamped(layer_frame_size(seq, keyframe, layer, layers)),
                layer: (layers > 1).then_some(layer),
                ..Default::default()
            };
            if let Err(e) = client.media(frame).await {
                shared.note_error(format!("sender {i}: media frame {seq} layer {layer}: {e}"));
                break 'frames;
            }
        }
        shared.frames_sent[i].fetch_add(1, Ordering::Relaxed);
        shared.last_sent_us[i].store(now_us(), Ordering::Relaxed);
    }
}

/// Run the scenario.
pub async fn run(args: &BenchArgs, target: &Target, rss_before: Option<u64>) -> anyhow::Result<Report> {
    anyhow::ensure!(target.kind == TargetKind::Switchboard, "media-room needs a Switchboard target");
    anyhow::ensure!(args.clients <= 200, "media-room: --clients (receivers) must be at most 200");
    anyhow::ensure!((1..=50).contains(&args.senders), "media-room: --senders must be 1..=50");
    anyhow::ensure!((1..=MAX_LAYERS).contains(&args.layers), "media-room: --layers must be 1..={MAX_LAYERS}");
    let n_senders = args.senders;
    let n_receivers = args.clients;
    let members = n_senders + n_receivers;
    let duration = args.duration();
    let want = match args.want_layer {
        WantLayer::Low => 0,
        WantLayer::Top => args.layers - 1,
    };
    let placement = Placement::new(&target.urls, &args.receiver_nodes, n_senders, n_receivers);
    let shared = Shared::new(placement, n_senders, args.layers, want);
    let (go_tx, go) = watch::channel(None);
    let (stop_tx, stop) = watch::channel(false);
    let signals = Signals { go, stop, duration };

    // Receivers first, in their namespaces (round robin), or here.
    let spaces: Vec<Option<&str>> = if args.receiver_netns.is_empty() {
        vec![None]
    } else {
        args.receiver_netns.iter().map(|s| Some(s.as_str())).collect()
    };
    let mut groups: Vec<BoxFuture<'static, anyhow::Result<()>>> = Vec::new();
    let mut ready = Vec::new();
    for (k, ns) in spaces.iter().enumerate() {
        let indices: Vec<usize> = (n_senders..members).filter(|i| (i - n_senders) % spaces.len() == k).collect();
        if indices.is_empty() {
            continue;
        }
        let (ready_tx, ready_rx) = oneshot::channel();
        ready.push(ready_rx);
        let (t, s, sig) = (target.clone(), shared.clone(), signals.clone());
        let concurrency = args.connect_concurrency;
        let make = move || receivers(t, indices, concurrency, s, sig, ready_tx);
        groups.push(match ns {
            None => tokio::spawn(make()).map(|r| r.map_err(anyhow::Error::from).and_then(|r| r)).boxed(),
            Some(ns) => netns::spawn_in(ns, make)?
                .map(|r| r.map_err(|_| anyhow::anyhow!("a receiver thread ended early")).and_then(|r| r))
                .boxed(),
        });
    }
    let wait_ready = async {
        for r in ready {
            match r.await {
                Ok(r) => r?,
                Err(_) => anyhow::bail!("a receiver group ended before connecting"),
            }
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(CONNECT_LIMIT, wait_ready).await {
        Ok(r) => r.context("connecting the receivers")?,
        Err(_) => anyhow::bail!("the receivers did not connect within {CONNECT_LIMIT:?}"),
    }
    let mut senders = Vec::new();
    for i in 0..n_senders {
        let c = connect(target, &shared.placement, i);
        senders.push(tokio::time::timeout(CONNECT_LIMIT, c).await.context("connecting a sender")??);
    }
    let sessions = senders.iter().enumerate().map(|(i, (c, _))| (c.session_id().to_owned(), i)).collect();
    let _ = shared.senders.set(sessions);

    // Go: everyone starts at the same instant (receivers choosing a layer first).
    let lead = Duration::from_millis(if want > 0 { 2000 } else { 200 });
    let start = Instant::now() + lead;
    let start_us = now_us() + lead.as_micros() as u64;
    go_tx.send_replace(Some(start));
    let sender_tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, (client, events))| tokio::spawn(member(i, client, events, shared.clone(), signals.clone(), start)))
        .collect();
    tokio::time::sleep_until(start.into()).await;
    let cpu = CpuMeter::start(&args.server_pids);
    let nats_cpu = CpuMeter::start(&Vec::from_iter(args.nats_pid));
    let deliveries_at = |s: &Shared| {
        let t = s.tally();
        t.tracks.values().map(|tr| tr.delivered).sum::<u64>() + t.chat_deliveries
    };
    let media_at = |s: &Shared| s.tally().tracks.values().map(|tr| tr.delivered).sum::<u64>();
    let before = deliveries_at(&shared);
    let media_before = media_at(&shared);
    let end = start + duration;
    tokio::time::sleep_until(end.into()).await;
    let mut r = super::scenarios::report(args, target, members, rss_before);
    cpu.fill(&mut r);
    if let Some(p) = nats_cpu.percent() {
        r.extra.insert("nats_cpu_percent".into(), p.into());
    }
    let during = deliveries_at(&shared) - before;
    let media_during = media_at(&shared) - media_before;

    // Stragglers: every chat message (reliable), and media until complete or MEDIA_GRACE.
    let media_expected =
        |s: &Shared| s.frames_sent.iter().map(|f| f.load(Ordering::Relaxed)).sum::<u64>() * n_receivers as u64;
    loop {
        let now = Instant::now();
        let chat_complete =
            shared.chat_done.load(Ordering::SeqCst) == members && shared.tally().chat_missing() == (0, 0);
        let media_complete = {
            let t = shared.tally();
            t.tracks.values().map(|tr| tr.delivered).sum::<u64>() >= media_expected(&shared)
        };
        if (chat_complete && (media_complete || now >= end + MEDIA_GRACE)) || now >= end + CHAT_GRACE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send_replace(true);
    for t in sender_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    for g in groups {
        match tokio::time::timeout(Duration::from_secs(10), g).await {
            Ok(r) => r?,
            Err(_) => shared.note_error("a receiver group did not finish within 10 s of the stop"),
        }
    }

    report::fill(&mut r, &shared, &report::Run { args, target, start_us, during, media_during });
    Ok(r)
}
