//! The `media-room` report: what the members tallied, turned into the report's fields (see
//! the scenario's documentation for each).

use super::{Shared, FREEZE};
use crate::bench::stats::Report;
use crate::bench::targets::Target;
use crate::bench::BenchArgs;
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::atomic::Ordering;

/// What the run knows besides the tally.
pub(super) struct Run<'a> {
    pub args: &'a BenchArgs,
    pub target: &'a Target,
    /// When sending started (the payload clock).
    pub start_us: u64,
    /// Deliveries (media and chat), and media frames delivered, while sending.
    pub during: u64,
    pub media_during: u64,
}

/// Fill `r` (made with the servers' CPU while sending) from `shared`'s tally.
pub(super) fn fill(r: &mut Report, shared: &Shared, run: &Run<'_>) {
    let Run { args, target, start_us, during, media_during } = *run;
    let (n_senders, members, want) = (shared.n_senders, shared.members, shared.want);
    let n_receivers = members - n_senders;
    let duration = args.duration();
    let t = shared.tally();
    let sent: Vec<u64> = shared.frames_sent.iter().map(|f| f.load(Ordering::Relaxed)).collect();
    let (mut freezes, mut frozen_us) = (0u64, 0u64);
    for rcv in n_senders..members {
        for (snd, &n) in sent.iter().enumerate() {
            let last_sent = shared.last_sent_us[snd].load(Ordering::Relaxed);
            let track = t.tracks.get(&(rcv, snd));
            freezes += track.map_or(0, |tr| tr.freezes);
            frozen_us += track.map_or(0, |tr| tr.frozen_us);
            // A track that stopped before its sender did (or never started).
            let last = track.and_then(|tr| tr.last_us).unwrap_or(start_us);
            if n > 0 && last_sent.saturating_sub(last) > FREEZE.as_micros() as u64 {
                freezes += 1;
                frozen_us += last_sent - last;
            }
        }
    }
    r.scenario = "media-room".into();
    // Frames sent per layer; every receiver gets one layer of each sender.
    let ticks: u64 = sent.iter().sum();
    r.sent = ticks * u64::from(args.layers);
    r.expected = ticks * n_receivers as u64;
    r.delivered = t.tracks.values().map(|tr| tr.delivered).sum();
    r.latency = t.media_latency.clone();
    r.window = duration;
    r.errors = t.chat_send_errors;
    let chat_expected: u64 = t.chat_acked.iter().map(|a| a.len() as u64).sum::<u64>() * (members as u64 - 1);
    let ms = |h: &Histogram<u64>, q: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1000.0 };
    let cpu_us = r.server_cpu_percent.map(|p| p / 100.0 * duration.as_secs_f64() * 1e6);
    let x = &mut r.extra;
    let nodes = &shared.placement.nodes;
    let wt = nodes.iter().filter(|u| u.starts_with("https://")).count();
    let transport = if wt == nodes.len() {
        "wt"
    } else if wt == 0 {
        "ws"
    } else {
        "mixed"
    };
    x.insert("transport".into(), transport.into());
    if nodes.len() > 1 {
        x.insert("placement".into(), shared.placement.json());
        let lat = |h: &Histogram<u64>| json!({"frames": h.len(), "p50": ms(h, 0.5), "p99": ms(h, 0.99)});
        x.insert("latency_same_node_ms".into(), lat(&t.same_node_latency));
        x.insert("latency_across_nodes_ms".into(), lat(&t.across_nodes_latency));
    }
    x.insert("wt_lanes".into(), target.media_lanes.into());
    x.insert("receivers".into(), n_receivers.into());
    x.insert("receiver_netns".into(), args.receiver_netns.clone().into());
    x.insert("media_delivered_ratio".into(), (r.delivered as f64 / r.expected.max(1) as f64).into());
    x.insert("tracks".into(), (n_receivers * n_senders).into());
    x.insert("senders".into(), n_senders.into());
    x.insert("want_layer".into(), want.into());
    let mut layers = Vec::new();
    for l in 0..args.layers as usize {
        let frames: u64 = t.tracks.values().map(|tr| tr.by_layer[l]).sum();
        let bytes: u64 = t.tracks.values().map(|tr| tr.bytes_by_layer[l]).sum();
        let h = &t.layer_latency[l];
        layers.push(json!({"layer": l, "frames_sent": ticks, "delivered_frames": frames, "delivered_bytes": bytes,
            "frames_per_receiver": frames as f64 / n_receivers as f64,
            "bytes_per_receiver": (bytes as f64 / n_receivers as f64).round(),
            "latency_ms": {"p50": ms(h, 0.5), "p99": ms(h, 0.99)}}));
    }
    x.insert("layers".into(), layers.into());
    let w = want as usize;
    let wanted: u64 = t.tracks.values().map(|tr| tr.by_layer[w]).sum();
    x.insert("wanted_layer_delivered_ratio".into(), (wanted as f64 / r.expected.max(1) as f64).into());
    let min_fps = (n_senders..members)
        .flat_map(|rcv| (0..n_senders).map(move |snd| (rcv, snd)))
        .map(|k| t.tracks.get(&k).map_or(0, |tr| tr.by_layer[w]) as f64 / duration.as_secs_f64())
        .fold(f64::INFINITY, f64::min);
    x.insert("min_receiver_fps".into(), ((min_fps * 10.0).round() / 10.0).into());
    x.insert("freezes".into(), freezes.into());
    x.insert("frozen_ms".into(), (frozen_us / 1000).into());
    x.insert("keyframe_requests".into(), shared.keyframe_requests.load(Ordering::Relaxed).into());
    x.insert("layer_subscribe_retries".into(), shared.subscribe_retries.load(Ordering::Relaxed).into());
    let wait_us = shared.subscribe_wait_us.load(Ordering::Relaxed);
    x.insert("layer_subscribe_max_ms".into(), ((wait_us as f64 / 100.0).round() / 10.0).into());
    x.insert("forced_keyframes".into(), shared.forced_keyframes.load(Ordering::Relaxed).into());
    x.insert("chat_sent".into(), t.chat_acked.iter().map(Vec::len).sum::<usize>().into());
    x.insert("chat_send_errors".into(), t.chat_send_errors.into());
    x.insert("chat_expected".into(), chat_expected.into());
    x.insert("chat_delivered".into(), t.chat_deliveries.into());
    let (lost, pending) = t.chat_missing();
    x.insert("chat_lost".into(), lost.into());
    x.insert("chat_undelivered_at_stop".into(), pending.into());
    x.insert("chat_duplicated".into(), t.chat_duplicated.into());
    x.insert(
        "chat_latency_ms".into(),
        json!({"p50": ms(&t.chat_latency, 0.5), "p99": ms(&t.chat_latency, 0.99),
               "max": if t.chat_latency.is_empty() { 0.0 } else { t.chat_latency.max() as f64 / 1000.0 }}),
    );
    x.insert("deliveries_while_sending".into(), during.into());
    let m = *shared.media_stats.lock().unwrap_or_else(|e| e.into_inner());
    x.insert(
        "media_lanes".into(),
        json!({"received_datagrams": m.received_datagrams, "received_streams": m.received_streams,
               "received_control": m.received_control, "sent_datagrams": m.sent_datagrams,
               "sent_streams": m.sent_streams, "sent_control": m.sent_control,
               "stale_dropped": m.stale_dropped, "send_dropped": m.send_dropped}),
    );
    if let Some(us) = cpu_us {
        x.insert("node_cpu_us_per_delivery".into(), ((us / during.max(1) as f64 * 10.0).round() / 10.0).into());
        x.insert(
            "node_cpu_us_per_forwarded_frame".into(),
            ((us / media_during.max(1) as f64 * 10.0).round() / 10.0).into(),
        );
    }
    if let Some(e) = &t.first_error {
        x.insert("first_error".into(), e.clone().into());
    }
}
