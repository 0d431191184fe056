//! The benchmark scenarios.

use super::stats::{histogram, total_rss_kib, CpuMeter, Report};
use super::targets::{Rx, Target, TargetKind, Tx};
use super::BenchArgs;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use switchboard_client::pb;

/// Which scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Fanout,
    Pairs,
    Media,
    MediaRoom,
    Idle,
    Churn,
    Cluster,
}

/// How long receivers keep waiting for stragglers after the senders stop.
const GRACE: Duration = Duration::from_secs(5);

pub(super) fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

pub(super) fn now_us() -> u64 {
    base().elapsed().as_micros() as u64
}

/// A payload of `size` bytes starting with the send time.
fn payload(size: usize) -> Bytes {
    let mut b = BytesMut::zeroed(size.max(8));
    b[..8].copy_from_slice(&now_us().to_be_bytes());
    b.freeze()
}

pub(super) fn latency_us(payload: &[u8]) -> Option<u64> {
    let ts = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    Some(now_us().saturating_sub(ts).max(1))
}

/// Open `n` connections (indices `first..first+n`) with bounded concurrency, each with
/// `open(i)`, i.e. [`Target::connect`] or [`Target::connect_receiver`].
async fn connect_many<'a, F, Fut>(first: usize, n: usize, concurrency: usize, open: F) -> anyhow::Result<Vec<(Tx, Rx)>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Tx, Rx)>> + 'a,
{
    let futs = (first..first + n).map(open);
    let results: Vec<_> = futures_util::stream::iter(futs).buffer_unordered(concurrency.max(1)).collect().await;
    results.into_iter().collect()
}

/// Keep reading (and discarding) so the connection's queues never back up.
fn drain(mut rx: Rx) {
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
}

/// Shared between senders and receivers: how many messages each receiver should expect, and
/// until when to wait.
#[derive(Default)]
struct Finish {
    expected: AtomicU64,
    deadline_us: AtomicU64,
}

impl Finish {
    fn new() -> Arc<Self> {
        Arc::new(Self { expected: AtomicU64::new(u64::MAX), deadline_us: AtomicU64::new(u64::MAX) })
    }
    fn done(&self, expected: u64) {
        self.expected.store(expected, Ordering::SeqCst);
        self.deadline_us.store(now_us() + GRACE.as_micros() as u64, Ordering::SeqCst);
    }
}

/// How far a sample of receivers has got, for a closed-loop publisher (`--rate 0`): it keeps
/// at most `--window` messages ahead of the slowest sampled receiver, so the run measures
/// the most the server sustains instead of how it sheds an unbounded overload.
struct Progress {
    received: Vec<AtomicU64>,
    /// Every `stride`-th receiver is sampled.
    stride: usize,
    notify: tokio::sync::Notify,
}

/// Receivers sampled for [`Progress`] (spread over the room).
const PROGRESS_SAMPLE: usize = 16;

impl Progress {
    fn new(receivers: usize) -> Arc<Self> {
        let receivers = receivers.max(1);
        let stride = receivers.div_ceil(PROGRESS_SAMPLE);
        let n = receivers.div_ceil(stride);
        Arc::new(Self { received: (0..n).map(|_| AtomicU64::new(0)).collect(), stride, notify: Default::default() })
    }

    /// The sample slot of receiver `i`, if it is sampled.
    fn slot(&self, i: usize) -> Option<usize> {
        i.is_multiple_of(self.stride).then_some(i / self.stride).filter(|s| *s < self.received.len())
    }

    fn slowest(&self) -> u64 {
        self.received.iter().map(|c| c.load(Ordering::Relaxed)).min().unwrap_or(0)
    }

    /// Wait until fewer than `window` of `sent` messages are outstanding (or `until` passes).
    async fn wait_room(&self, sent: u64, window: u64, until: Instant) {
        while sent.saturating_sub(self.slowest()) >= window && Instant::now() < until {
            let notified = self.notify.notified();
            if sent.saturating_sub(self.slowest()) < window {
                break;
            }
            // A receiver that disconnected never advances: the timeout keeps this bounded.
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }
}

/// Receive until the expected count or the deadline; (count, latencies, last delivery µs).
async fn receive(rx: Rx, finish: Arc<Finish>) -> (u64, Histogram<u64>, u64) {
    receive_tracked(rx, finish, None).await
}

/// [`receive`], reporting each delivery to `progress` slot `slot`.
async fn receive_tracked(
    mut rx: Rx,
    finish: Arc<Finish>,
    progress: Option<(Arc<Progress>, usize)>,
) -> (u64, Histogram<u64>, u64) {
    let mut hist = histogram();
    let (mut count, mut last) = (0u64, 0u64);
    // One check timer per receiver, re-armed when it fires: a timeout per message would cost
    // the load generator more than receiving the message.
    let check = tokio::time::sleep(Duration::from_millis(200));
    tokio::pin!(check);
    loop {
        if count >= finish.expected.load(Ordering::Relaxed) {
            break;
        }
        let next = tokio::select! {
            biased;
            next = rx.recv() => Ok(next),
            () = &mut check => {
                check.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(200));
                Err(())
            }
        };
        if now_us() >= finish.deadline_us.load(Ordering::Relaxed) {
            break;
        }
        match next {
            Ok(Some(p)) => {
                if let Some(l) = latency_us(&p) {
                    let _ = hist.record(l);
                }
                count += 1;
                last = now_us();
                if let Some((p, slot)) = &progress {
                    p.received[*slot].store(count, Ordering::Relaxed);
                    p.notify.notify_one();
                }
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    (count, hist, last)
}

/// Send `size`-byte messages at `rate` per second (0: as fast as possible, or as fast as
/// `closed_loop` lets) for `duration`.
async fn send_for(tx: &mut Tx, rate: f64, size: usize, duration: Duration) -> (u64, u64) {
    send_paced(tx, rate, size, duration, None).await
}

async fn send_paced(
    tx: &mut Tx,
    rate: f64,
    size: usize,
    duration: Duration,
    closed_loop: Option<(Arc<Progress>, u64)>,
) -> (u64, u64) {
    let start = Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    while start.elapsed() < duration {
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        } else if let Some((progress, window)) = &closed_loop {
            progress.wait_room(sent, *window, start + duration).await;
        }
        match tx.send(payload(size)).await {
            Ok(()) => sent += 1,
            Err(_) => {
                errors += 1;
                break;
            }
        }
    }
    (sent, errors)
}

/// Await the receivers, adding their counts and latencies to `r`; the window runs from
/// `start` to the last delivery.
async fn collect(
    receivers: Vec<tokio::task::JoinHandle<(u64, Histogram<u64>, u64)>>,
    r: &mut Report,
    start: u64,
) -> anyhow::Result<()> {
    let mut last = start;
    for h in receivers {
        let (count, hist, l) = h.await?;
        r.delivered += count;
        let _ = r.latency.add(&hist);
        last = last.max(l);
    }
    r.window = Duration::from_micros(last.saturating_sub(start));
    Ok(())
}

pub(super) fn report(args: &BenchArgs, target: &Target, connections: usize, rss_before: Option<u64>) -> Report {
    Report {
        scenario: format!("{:?}", args.scenario).to_lowercase(),
        target: target.name(),
        connections,
        sent: 0,
        expected: 0,
        delivered: 0,
        errors: 0,
        window: Duration::ZERO,
        latency: histogram(),
        rss_before_kib: rss_before,
        rss_after_kib: None,
        server_cpu_percent: None,
        extra: Default::default(),
        human: Vec::new(),
    }
}

pub async fn run(args: &BenchArgs, target: &Target) -> anyhow::Result<Report> {
    base();
    let rss = || total_rss_kib(&args.server_pids);
    let mut r = match args.scenario {
        Scenario::Fanout => fanout(args, target, rss()).await?,
        Scenario::Pairs => pairs(args, target, rss()).await?,
        Scenario::Media => media(args, target, rss()).await?,
        Scenario::MediaRoom => super::media_room::run(args, target, rss()).await?,
        Scenario::Idle => idle(args, target, rss()).await?,
        Scenario::Churn => churn(args, target, rss()).await?,
        Scenario::Cluster => super::cluster::run(args, target, rss()).await?,
    };
    if r.rss_after_kib.is_none() {
        r.rss_after_kib = rss();
    }
    Ok(r)
}

async fn fanout(args: &BenchArgs, target: &Target, rss_before: Option<u64>) -> anyhow::Result<Report> {
    let room = "bench-fanout";
    let subs = connect_many(1, args.clients, args.connect_concurrency, |i| target.connect_receiver(i, room)).await?;
    let (mut tx, rx) = target.connect_publisher(0, room).await?;
    drain(rx);
    let finish = Finish::new();
    let progress = Progress::new(subs.len());
    let receivers: Vec<_> = subs
        .into_iter()
        .enumerate()
        .map(|(i, (tx, rx))| {
            let f = finish.clone();
            let tracked = progress.slot(i).map(|slot| (progress.clone(), slot));
            tokio::spawn(async move {
                let out = receive_tracked(rx, f, tracked).await;
                drop(tx);
                out
            })
        })
        .collect();
    let start = now_us();
    let cpu = CpuMeter::start(&args.server_pids);
    let closed_loop = (args.rate <= 0.0).then(|| (progress.clone(), args.window.max(1)));
    let (sent, errors) = send_paced(&mut tx, args.rate, args.size, args.duration(), closed_loop).await;
    finish.done(sent);
    let mut r = report(args, target, args.clients + 1, rss_before);
    cpu.fill(&mut r);
    r.sent = sent;
    r.errors = errors;
    r.expected = sent * args.clients as u64;
    collect(receivers, &mut r, start).await?;
    r.extra.insert("payload_bytes".into(), args.size.into());
    r.extra.insert("rate_per_sec".into(), args.rate.into());
    if args.rate <= 0.0 {
        r.extra.insert("closed_loop_window".into(), args.window.max(1).into());
        r.extra.insert("achieved_rate_per_sec".into(), (sent as f64 / args.duration().as_secs_f64()).round().into());
    }
    Ok(r)
}

async fn pairs(args: &BenchArgs, target: &Target, rss_before: Option<u64>) -> anyhow::Result<Report> {
    anyhow::ensure!(target.kind != TargetKind::Bare, "pairs needs rooms: use switchboard or nats-ws");
    let n = (args.clients / 2).max(1) * 2;
    let conns = connect_many(0, n, args.connect_concurrency, |i| async move {
        target.connect(i, Some(&format!("bench-pair-{}", i / 2))).await
    })
    .await?;
    let finish = Finish::new();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (tx, rx) in conns {
        receivers.push(tokio::spawn(receive(rx, finish.clone())));
        let (rate, size, duration) = (args.rate, args.size, args.duration());
        senders.push(tokio::spawn(async move {
            let mut tx = tx;
            let out = send_for(&mut tx, rate, size, duration).await;
            (out, tx)
        }));
    }
    let start = now_us();
    let cpu = CpuMeter::start(&args.server_pids);
    let mut r = report(args, target, n, rss_before);
    let mut keep = Vec::new();
    let mut max_sent = 0;
    for s in senders {
        let ((sent, errors), tx) = s.await?;
        r.sent += sent;
        r.errors += errors;
        max_sent = max_sent.max(sent);
        keep.push(tx);
    }
    cpu.fill(&mut r);
    // Each side expects what its partner sent; pairs send alike, so wait for the largest.
    r.expected = r.sent;
    finish.done(max_sent);
    collect(receivers, &mut r, start).await?;
    Ok(r)
}

async fn media(args: &BenchArgs, target: &Target, rss_before: Option<u64>) -> anyhow::Result<Report> {
    anyhow::ensure!(target.kind == TargetKind::Switchboard, "media frames need a Switchboard target");
    let per_room = args.clients.max(2);
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    let mut slow = Vec::new();
    let finish = Finish::new();
    let mut index = 0;
    for room_i in 0..args.rooms {
        let room = format!("bench-media-{room_i}");
        for _ in 0..2 {
            let (tx, rx) = target.connect(index, Some(&room)).await?;
            index += 1;
            drain(rx);
            senders.push((tx, room.clone()));
        }
        let conns =
            connect_many(index, per_room, args.connect_concurrency, |i| target.connect_receiver(i, &room)).await?;
        index += per_room;
        for (k, (tx, rx)) in conns.into_iter().enumerate() {
            if k < args.slow_receivers {
                slow.push((tx, rx)); // joined, never reads
            } else {
                receivers.push(tokio::spawn(receive(rx, finish.clone())));
                std::mem::forget(tx); // keep the session open until the process ends
            }
        }
    }
    let start = now_us();
    let cpu = CpuMeter::start(&args.server_pids);
    let duration = args.duration();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|(mut tx, room)| {
            tokio::spawn(async move {
                let t0 = Instant::now();
                let mut seq = 0u64;
                while t0.elapsed() < duration {
                    tokio::time::sleep_until((t0 + Duration::from_secs_f64(seq as f64 / 30.0)).into()).await;
                    let size = 1024 + (seq as usize * 7919) % (7 * 1024);
                    let frame = pb::Media {
                        room: room.clone(),
                        track: 1,
                        seq,
                        timestamp: seq * 33_333,
                        keyframe: seq.is_multiple_of(30),
                        codec: "vp8".into(),
                        payload: payload(size),
                        ..Default::default()
                    };
                    if tx.media(frame).await.is_err() {
                        break;
                    }
                    seq += 1;
                }
                (seq, tx)
            })
        })
        .collect();
    let mut r = report(args, target, index, rss_before);
    let mut keep = Vec::new();
    let mut per_sender = 0;
    for t in tasks {
        let (sent, tx) = t.await?;
        r.sent += sent;
        per_sender = per_sender.max(sent);
        keep.push(tx);
    }
    cpu.fill(&mut r);
    // Each receiver gets both senders' frames of its room.
    finish.done(per_sender * 2);
    let n_receivers = receivers.len() as u64;
    collect(receivers, &mut r, start).await?;
    r.expected = per_sender * 2 * n_receivers;
    let fps = r.delivered as f64 / n_receivers.max(1) as f64 / 2.0 / duration.as_secs_f64();
    r.extra.insert("frames_per_sec_per_receiver_per_sender".into(), ((fps * 10.0).round() / 10.0).into());
    r.extra.insert("slow_receivers".into(), slow.len().into());
    Ok(r)
}

/// A uniformly random delay in `[0, max_ms)` milliseconds.
fn fastrand_ms(max_ms: u64) -> u64 {
    rand::random_range(0..max_ms.max(1))
}

/// Refusals (with a retry hint) one idle connection waits out before the run fails.
const MAX_REFUSALS: usize = 100;

async fn idle(args: &BenchArgs, target: &Target, rss_before: Option<u64>) -> anyhow::Result<Report> {
    let started = Instant::now();
    let (refused, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    // A node admitting sessions at its rate limit says when to retry: wait its hint (a
    // reconnect storm: `--connect-concurrency` as large as `--clients`).
    let connect = |i| {
        let (refused, failed) = (&refused, &failed);
        async move {
            for _ in 0..MAX_REFUSALS {
                match target.connect(i, None).await {
                    Err(e) => match e.downcast_ref::<switchboard_client::ClientError>() {
                        Some(c) if c.retry_after().is_some() => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(c.retry_after().unwrap_or_default()).await;
                        }
                        // A connect that failed or timed out (a full listen backlog in a storm):
                        // back off with full jitter, as `ReconnectingClient` does.
                        Some(c) if !switchboard_client::is_final(c.code()) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(fastrand_ms(2_000))).await;
                        }
                        _ => return Err(e),
                    },
                    ok => return ok,
                }
            }
            anyhow::bail!("refused {MAX_REFUSALS} times")
        }
    };
    let conns = connect_many(0, args.clients, args.connect_concurrency, connect).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    let mut r = report(args, target, conns.len(), rss_before);
    // Held idle: the servers' CPU now is the cost of heartbeats and keep-alives.
    let cpu = CpuMeter::start(&args.server_pids);
    tokio::time::sleep(args.duration()).await;
    cpu.fill(&mut r);
    r.rss_after_kib = total_rss_kib(&args.server_pids);
    if let (Some(b), Some(a)) = (r.rss_before_kib, r.rss_after_kib) {
        let per = (a.saturating_sub(b) as f64 * 1024.0 / conns.len().max(1) as f64).round();
        r.extra.insert("rss_bytes_per_connection".into(), per.into());
    }
    r.extra.insert("connect_secs".into(), connect_secs.into());
    r.extra.insert("refused_for_now".into(), refused.load(Ordering::Relaxed).into());
    r.extra.insert("connects_failed_and_retried".into(), failed.load(Ordering::Relaxed).into());
    r.extra.insert("admitted_per_sec".into(), (conns.len() as f64 / connect_secs.max(1e-9)).round().into());
    r.window = args.duration();
    drop(conns);
    Ok(r)
}

/// Counters of churn workers.
#[derive(Default)]
struct ChurnOut {
    cycles: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Run `workers` connect/join/leave/close loops until `limit` cycles have started in all or
/// `duration` has passed.
async fn churn_phase(target: &Target, workers: usize, limit: u64, duration: Duration) -> (ChurnOut, Histogram<u64>) {
    let started = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (target, started) = (target.clone(), started.clone());
            tokio::spawn(async move {
                let t0 = Instant::now();
                let mut out = ChurnOut::default();
                let mut hist = histogram();
                let room = format!("bench-churn-{}", w % 16);
                while t0.elapsed() < duration && started.fetch_add(1, Ordering::Relaxed) < limit {
                    let c0 = now_us();
                    match target.connect(w, Some(&room)).await {
                        Ok((tx, _rx)) => {
                            if let Some(client) = tx.client() {
                                let _ = client.leave(&room).await;
                                client.close().await;
                            }
                            out.cycles += 1;
                            let _ = hist.record(now_us() - c0);
                        }
                        Err(e) => {
                            out.errors += 1;
                            out.first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                (out, hist)
            })
        })
        .collect();
    let mut total = ChurnOut::default();
    let mut hist = histogram();
    for t in tasks {
        if let Ok((out, h)) = t.await {
            total.cycles += out.cycles;
            total.errors += out.errors;
            total.first_error = total.first_error.or(out.first_error);
            let _ = hist.add(&h);
        }
    }
    (total, hist)
}

/// Wait (at most 10 s) until the node's `/metrics` shows no open connections, so RSS is
/// read after the server has torn the closed sessions down, not while it still is.
async fn wait_connections_closed(metrics_url: Option<&str>) -> bool {
    let Some(url) = metrics_url else { return false };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if super::metrics::open_connections(url).await == Some(0) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn churn(args: &BenchArgs, target: &Target, rss_before: Option<u64>) -> anyhow::Result<Report> {
    let duration = args.duration();
    let metrics_url = args.metrics_url(target);
    let limit = if args.cycles == 0 { u64::MAX } else { args.cycles };
    let mut r = report(args, target, args.clients, rss_before);
    if args.warmup_cycles > 0 {
        let (warm, _) = churn_phase(target, args.clients, args.warmup_cycles, duration).await;
        wait_connections_closed(metrics_url.as_deref()).await;
        r.extra.insert("warmup_cycles".into(), warm.cycles.into());
        r.extra.insert("rss_after_warmup_kib".into(), total_rss_kib(&args.server_pids).into());
    }
    let rss_start = total_rss_kib(&args.server_pids);
    let cpu = CpuMeter::start(&args.server_pids);
    let t0 = Instant::now();
    let (out, hist) = churn_phase(target, args.clients, limit, duration).await;
    let elapsed = t0.elapsed();
    cpu.fill(&mut r);
    let settled = wait_connections_closed(metrics_url.as_deref()).await;
    r.rss_after_kib = total_rss_kib(&args.server_pids);
    r.sent = out.cycles;
    r.delivered = out.cycles;
    r.errors = out.errors;
    r.latency = hist;
    r.expected = r.sent;
    r.window = elapsed;
    r.extra.insert("cycles_per_sec".into(), (r.sent as f64 / elapsed.as_secs_f64()).round().into());
    r.extra.insert("latency_is".into(), "connect+hello+join+leave cycle".into());
    r.extra.insert("server_settled".into(), settled.into());
    if let Some(e) = out.first_error {
        r.extra.insert("first_error".into(), e.into());
    }
    if let (Some(a), Some(b)) = (r.rss_after_kib, rss_start) {
        let growth = ((a as f64 / b.max(1) as f64 - 1.0) * 1000.0).round() / 10.0;
        r.extra.insert("rss_measured_from_kib".into(), b.into());
        r.extra.insert("rss_growth_percent".into(), growth.into());
    }
    Ok(r)
}
