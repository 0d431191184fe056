//! The `cluster` scenario: this process's share of a cluster-wide workload, so that several
//! generator processes (each within its descriptor limit) together load a cluster.
//!
//! Members (`--clients`, one connection each, a `--wt-fraction` of them over WebTransport to
//! the `https://` nodes, the rest over WebSocket to the `ws://` ones) are opened at
//! `--connect-rate` per second with jitter, then sit in rooms of 10 named
//! `c<process-index>-<run>-r<k>` (one token per member, user `c<process-index>-<run>-u<i>`,
//! signed with `--jwt-secret`). For `--duration` seconds:
//! * every member chats (reliable messages, its share of `--chat-rate` / `--processes`), the
//!   payload carrying the send time, the member and its sequence number; every receiver
//!   checks each sender's messages arrive exactly once and in order (`order.rs`): every
//!   acknowledged one its room stored after the receiver first joined, but those in a
//!   history gap a resuming join reported (the report describes the first missing ones:
//!   offsets, times, the receiver's joins);
//! * `--calls-per-min` / `--processes` 1:1 calls ring a random member, which answers; the
//!   caller ends the call after `--call-hold` seconds (`calls.rs`);
//! * `--churn-percent` of the members a minute close and reconnect, resuming their room from
//!   the last message they saw (`churn.rs`); members also reconnect after `GoAway` (at the
//!   hinted time) and after losing their connection (`member.rs`).
//!
//! Then sending stops, deliveries in flight are awaited (at most [`GRACE`]) and the report
//! is printed: JSON on stdout (the usual fields: `sent`, `deliveries`, `latency_ms` are chat
//! messages) and a human summary on stderr.

mod calls;
mod churn;
mod fdlimit;
mod fleet;
mod member;
mod order;
mod tally;

use super::stats::{rss_kib, CpuMeter, Report};
use super::targets::{Target, TargetKind};
use super::BenchArgs;
use fleet::{Endpoints, Fleet, Phase, ROOM_SIZE};
use hdrhistogram::Histogram;
use order::Owed;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally::Tally;

/// The nodes' built-in development secret (`switchboard serve` without `--jwt-secret`).
const DEV_SECRET: &str = "switchboard-insecure-development-secret";
/// After sending stops: how long deliveries in flight are awaited at most.
const GRACE: Duration = Duration::from_secs(15);
/// How long closing every connection may take at the end.
const CLOSE_LIMIT: Duration = Duration::from_secs(30);

/// Flags of `--scenario cluster`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Cluster scenario")]
pub struct ClusterArgs {
    /// This process's index among --processes (prefixes its rooms and users).
    #[arg(long, default_value_t = 0)]
    pub process_index: u32,
    /// Generator processes sharing the workload: --chat-rate and --calls-per-min are split
    /// evenly between them.
    #[arg(long, default_value_t = 1)]
    pub processes: u32,
    /// Fraction of connections over WebTransport (to the https:// --node URLs; the rest to
    /// the ws:// ones).
    #[arg(long, default_value_t = 0.0)]
    pub wt_fraction: f64,
    /// Connections opened per second while ramping up (jittered; at most
    /// --connect-concurrency at once).
    #[arg(long, default_value_t = 200.0)]
    pub connect_rate: f64,
    /// Chat messages per second across all processes (0: one per room per second).
    #[arg(long, default_value_t = 0.0)]
    pub chat_rate: f64,
    /// 1:1 calls rung and answered per minute across all processes.
    #[arg(long, default_value_t = 60.0)]
    pub calls_per_min: f64,
    /// Seconds a call stays up before its caller ends it.
    #[arg(long, default_value_t = 2.0)]
    pub call_hold: f64,
    /// Percent of connections closed and reconnected per minute.
    #[arg(long, default_value_t = 1.0)]
    pub churn_percent: f64,
    /// HS256 secret to sign one token per member (the nodes' --jwt-secret); default: the
    /// nodes' built-in development secret.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Seconds ramping up may take before the run starts anyway (default: twice the ramp
    /// at --connect-rate, plus 60). Members still connecting then join rooms that chat
    /// already: they are owed only what their room stores after their join.
    #[arg(long)]
    pub ramp_limit: Option<f64>,
    /// Names this run's rooms and users (default: random), so history of an earlier run is
    /// never replayed into this one.
    #[arg(long)]
    pub run_id: Option<String>,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        (h.value_at_quantile(q) as f64 / 10.0).round() / 100.0
    }
}

fn quantiles(h: &Histogram<u64>) -> serde_json::Value {
    json!({"count": h.len(), "p50": ms(h, 0.5), "p99": ms(h, 0.99), "max": ms(h, 1.0)})
}

/// Peak resident set size of this process in KiB (`VmHWM`).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Missing messages described in the report, at most: lost ones, and of each kind of
/// missing message that was not owed.
const LOST_DETAIL: usize = 20;
const EXCUSED_DETAIL: usize = 5;

/// Chat totals over every receiver.
#[derive(Default)]
struct Settlement {
    /// Deliveries owed: acknowledged messages stored after the receiver's first join,
    /// outside the history gaps its joins reported.
    expected: u64,
    lost: u64,
    /// Owed, not arrived, at connected receivers.
    pending: u64,
    /// Missing and acknowledged but not owed: stored before the receiver's first join
    /// (issue 14: these were counted as lost), or within a history gap a join reported.
    before_join: u64,
    in_reported_gap: u64,
    /// The first few of each, described (see [`describe`]).
    detail: Vec<serde_json::Value>,
}

/// One missing message of `from` (number `seq`) at receiver `to`, for the report; times
/// in ms since `run_us` (the run's start, `now_us`).
fn describe(fleet: &Fleet, class: &str, to: usize, from: usize, seq: u64, run_us: u64) -> serde_json::Value {
    let rel = |us: u64| (us as f64 - run_us as f64) / 1000.0;
    let send = fleet.slots[from].sends.lock().unwrap_or_else(|e| e.into_inner()).get(seq as usize).copied();
    let journal = fleet.slots[to].journal.lock().unwrap_or_else(|e| e.into_inner());
    let joins: Vec<_> = journal
        .joins
        .iter()
        .map(|j| {
            json!({"at_ms": rel(j.at_us), "resume_from": j.resume_from, "last_offset": j.last_offset,
                   "history_gap": j.history_gap, "replayed": j.replayed,
                   "ended_ms": j.ended.map(|e| rel(e.0)), "ended_by": j.ended.map(|e| e.1)})
        })
        .collect();
    json!({"class": class, "receiver": to, "sender": from, "seq": seq,
           "offset": send.and_then(|s| s.offset),
           "sent_ms": send.map(|s| rel(s.sent_us)), "acked_ms": send.map(|s| rel(s.answered_us)),
           "receiver_floor": journal.floor, "receiver_gaps": journal.gaps,
           "receiver_joins": joins, "receiver_joins_not_listed": journal.joins_not_kept})
}

/// Settle every receiver's account of every other member of its room (`run_us`: the
/// run's start for the details).
fn settle(fleet: &Fleet, run_us: u64) -> Settlement {
    let mut total = Settlement::default();
    let acked: Vec<Vec<Option<u64>>> = fleet
        .slots
        .iter()
        .map(|s| s.sends.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|r| r.offset).collect())
        .collect();
    let (mut lost_listed, mut before_listed, mut gap_listed) = (0, 0, 0);
    for (i, slot) in fleet.slots.iter().enumerate() {
        let first = i / ROOM_SIZE * ROOM_SIZE;
        let (floor, gaps) = {
            let j = slot.journal.lock().unwrap_or_else(|e| e.into_inner());
            (j.floor, j.gaps.clone())
        };
        let owed = Owed { floor, gaps: &gaps };
        let order = slot.order.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let connected = slot.connected.load(Ordering::SeqCst);
        for (pos, o) in order.iter().enumerate() {
            let from = first + pos;
            if from == i {
                continue;
            }
            let s = o.settle(&acked[from], owed);
            total.expected += s.expected;
            total.lost += s.lost.len() as u64 + s.overflow;
            total.before_join += s.before_join.len() as u64;
            total.in_reported_gap += s.in_reported_gap.len() as u64;
            // A member that is not connected is not waiting for anything.
            if connected {
                total.pending += s.pending;
            }
            for (class, seqs, listed, most) in [
                ("lost", &s.lost, &mut lost_listed, LOST_DETAIL),
                ("before_join", &s.before_join, &mut before_listed, EXCUSED_DETAIL),
                ("in_reported_gap", &s.in_reported_gap, &mut gap_listed, EXCUSED_DETAIL),
            ] {
                for &seq in seqs.iter().take(most.saturating_sub(*listed)) {
                    total.detail.push(describe(fleet, class, i, from, seq, run_us));
                    *listed += 1;
                }
            }
        }
    }
    total
}

/// Run this process's share.
pub async fn run(args: &BenchArgs, target: &Target, rss_before: Option<u64>) -> anyhow::Result<Report> {
    let c = &args.cluster;
    let n = args.clients;
    anyhow::ensure!(target.kind == TargetKind::Switchboard, "cluster needs a Switchboard target");
    anyhow::ensure!(n >= 2, "cluster: --clients must be at least 2");
    anyhow::ensure!(
        c.processes >= 1 && c.process_index < c.processes,
        "cluster: --process-index must be below --processes"
    );
    anyhow::ensure!((0.0..=1.0).contains(&c.wt_fraction), "cluster: --wt-fraction must be within 0..=1");
    anyhow::ensure!(c.connect_rate > 0.0, "cluster: --connect-rate must be positive");
    anyhow::ensure!(
        c.chat_rate >= 0.0 && c.calls_per_min >= 0.0 && c.churn_percent >= 0.0,
        "cluster: rates must not be negative"
    );
    anyhow::ensure!((0.0..=300.0).contains(&c.call_hold), "cluster: --call-hold must be within 0..=300 s");
    anyhow::ensure!(
        c.ramp_limit.is_none_or(|s| (0.0..=86_400.0).contains(&s)),
        "cluster: --ramp-limit must be within 0..=86400 s"
    );
    let limit = fdlimit::raise().map_err(|e| anyhow::anyhow!("raising the descriptor limit: {e}"))?;
    anyhow::ensure!(
        n as u64 + fdlimit::SPARE <= limit,
        "cluster: {n} connections need about {} descriptors but this process may open {limit} \
         (the hard RLIMIT_NOFILE): run fewer --clients per process (several processes with \
         --processes/--process-index) or raise the hard limit (ulimit -Hn, LimitNOFILE=)",
        n as u64 + fdlimit::SPARE
    );
    let (wt_urls, ws_urls): (Vec<String>, Vec<String>) =
        target.urls.iter().cloned().partition(|u| u.starts_with("https://"));
    anyhow::ensure!(c.wt_fraction == 0.0 || !wt_urls.is_empty(), "cluster: --wt-fraction > 0 needs an https:// --node");
    anyhow::ensure!(c.wt_fraction == 1.0 || !ws_urls.is_empty(), "cluster: --wt-fraction < 1 needs a ws:// --node");
    let endpoints = Endpoints {
        ws_urls,
        wt_urls,
        wt_fraction: c.wt_fraction,
        cert_hashes: target
            .cert_hash
            .iter()
            .flat_map(|h| h.split(','))
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .collect(),
        source_ips: target.source_ips.clone(),
        media_lanes: target.media_lanes,
    };
    let run_id = c.run_id.clone().unwrap_or_else(|| format!("{:06x}", rand::random_range(0..0x100_0000u32)));
    anyhow::ensure!(
        !run_id.is_empty() && run_id.len() <= 32 && run_id.chars().all(|ch| ch.is_ascii_alphanumeric()),
        "cluster: --run-id must be 1..=32 ASCII letters and digits"
    );
    let prefix = format!("c{}-{run_id}", c.process_index);
    let rooms = n.div_ceil(ROOM_SIZE);
    let chat_rate = if c.chat_rate > 0.0 { c.chat_rate / f64::from(c.processes) } else { rooms as f64 };
    let calls_per_min = c.calls_per_min / f64::from(c.processes);
    let duration = args.duration();
    let ramp = Duration::from_secs_f64(n as f64 / c.connect_rate);
    let secret = c.jwt_secret.clone().unwrap_or_else(|| DEV_SECRET.to_owned());
    let ttl = (ramp + duration).as_secs() + 3600;
    let (phase_tx, phase_rx) = tokio::sync::watch::channel(Phase::Ramp);
    let chat_interval = Duration::from_secs_f64(n as f64 / chat_rate.max(1e-3));
    let fleet = Arc::new(Fleet::new(
        n,
        &prefix,
        endpoints,
        secret.as_bytes(),
        ttl,
        chat_interval,
        phase_rx,
        args.connect_concurrency,
    ));
    let wt_members = (0..n).filter(|&i| fleet.endpoints.is_wt(i)).count();

    // Ramp up: member i at i / rate, jittered within its slot.
    eprintln!("cluster {prefix}: opening {n} connections ({wt_members} WebTransport) at {}/s", c.connect_rate);
    let ramp_start = Instant::now();
    let gap = 1.0 / c.connect_rate;
    let members: Vec<_> = (0..n)
        .map(|i| {
            let at = ramp_start + Duration::from_secs_f64(gap * (i as f64 + rand::random_range(0.0..1.0)));
            tokio::spawn(member::run(fleet.clone(), i, at))
        })
        .collect();
    let t = &fleet.tally;
    let ramp_limit = match c.ramp_limit {
        Some(secs) => Duration::from_secs_f64(secs),
        None => ramp * 2 + Duration::from_secs(60),
    };
    let mut last_note = Instant::now();
    while t.ramped.get() < n as u64 && ramp_start.elapsed() < ramp_limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if last_note.elapsed() >= Duration::from_secs(5) {
            last_note = Instant::now();
            eprintln!(
                "cluster {prefix}: {} connected, {} failed attempts",
                t.connected.get(),
                t.connect_failures.get()
            );
        }
    }
    let ramp_secs = ramp_start.elapsed().as_secs_f64();
    let held_at_start = t.connected.get();
    eprintln!("cluster {prefix}: {held_at_start}/{n} connected in {ramp_secs:.1} s; running {duration:?}");

    // Run.
    let start = Instant::now() + Duration::from_millis(200);
    let run_us = super::scenarios::now_us() + 200_000;
    phase_tx.send_replace(Phase::Run(start));
    let cpu = CpuMeter::start(&args.server_pids);
    let drivers = [
        tokio::spawn(calls::drive(fleet.clone(), calls_per_min, Duration::from_secs_f64(c.call_hold), start)),
        tokio::spawn(churn::drive(fleet.clone(), c.churn_percent, start)),
    ];
    let mut held_min = held_at_start;
    let end = start + duration;
    while Instant::now() < end {
        tokio::time::sleep_until((Instant::now() + Duration::from_secs(1)).min(end).into()).await;
        held_min = held_min.min(t.connected.get());
    }
    phase_tx.send_replace(Phase::Drain);
    let mut r = super::scenarios::report(args, target, n, rss_before);
    cpu.fill(&mut r);
    let held_at_end = t.connected.get();

    // Drain: every publish answered, calls done, deliveries in flight arrived (bounded).
    let drain_start = Instant::now();
    for d in drivers {
        let _ = tokio::time::timeout(Duration::from_secs(60), d).await;
    }
    loop {
        let chatting = fleet.slots.iter().any(|s| !s.chat_done.load(Ordering::SeqCst));
        if !chatting && settle(&fleet, run_us).pending == 0 || drain_start.elapsed() >= GRACE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let settled = settle(&fleet, run_us);
    let (expected, lost, pending) = (settled.expected, settled.lost, settled.pending);
    let gen_rss = rss_kib(std::process::id());
    phase_tx.send_replace(Phase::Close);
    let closed = tokio::time::timeout(CLOSE_LIMIT, futures_util::future::join_all(members)).await.is_ok();

    // Report.
    let latency = t.chat_latencies();
    let (setup, reconnect) = (Tally::snapshot(&t.call_setup), Tally::snapshot(&t.reconnect));
    let errors = t.errors();
    let most_reconnects = fleet.slots.iter().map(|s| s.reconnects.load(Ordering::Relaxed)).max().unwrap_or(0);
    r.scenario = "cluster".into();
    r.sent = t.chat_sent.get();
    r.expected = expected;
    r.delivered = t.chat_delivered.get();
    r.latency = latency.clone();
    r.window = duration;
    r.errors = errors.values().sum();
    let x = &mut r.extra;
    x.insert("process_index".into(), c.process_index.into());
    x.insert("processes".into(), c.processes.into());
    x.insert("prefix".into(), prefix.clone().into());
    x.insert(
        "connections_detail".into(),
        json!({"target": n, "webtransport": wt_members, "websocket": n - wt_members,
               "held_at_start": held_at_start, "held_min": held_min, "held_at_end": held_at_end,
               "connect_failures": t.connect_failures.get(), "ramp_secs": (ramp_secs * 10.0).round() / 10.0,
               "connect_ms": quantiles(&Tally::snapshot(&t.connect)), "descriptor_limit": limit}),
    );
    x.insert(
        "chat".into(),
        json!({"rooms": rooms, "rate_per_sec": chat_rate, "sent": t.chat_sent.get(), "acked": t.chat_acked.get(),
               "send_failed": t.chat_failed.get(), "expected": expected, "delivered": t.chat_delivered.get(),
               "replayed": t.chat_replayed.get(), "lost": lost, "duplicated": t.duplicated.get(),
               "reordered": t.reordered.get(), "gaps_seen": t.gaps.get(), "undelivered_at_stop": pending,
               "missed_before_join": settled.before_join, "missed_in_reported_gaps": settled.in_reported_gap,
               "missing_detail": settled.detail,
               "history_gaps": t.history_gaps.get(), "latency_ms": quantiles(&latency),
               "replay_latency_ms": quantiles(&Tally::snapshot(&t.replay_latency))}),
    );
    x.insert(
        "calls".into(),
        json!({"per_min": calls_per_min, "placed": t.calls_placed.get(), "answered": t.calls_answered.get(),
               "failed": t.calls_failed.get(), "ended": t.calls_ended.get(), "setup_ms": quantiles(&setup)}),
    );
    x.insert(
        "reconnects".into(),
        json!({"churn_percent_per_min": c.churn_percent, "churned": t.churns.get(), "goaways": t.goaways.get(),
               "lost_connections": t.lost_connections.get(), "reconnected": t.reconnects.get(),
               "failed": t.reconnect_failures.get(), "reconnect_ms": quantiles(&reconnect),
               "most_by_one_member": most_reconnects}),
    );
    x.insert("errors_by_code".into(), json!(errors));
    x.insert("generator_rss_kib".into(), gen_rss.into());
    x.insert("generator_peak_rss_kib".into(), peak_rss_kib().into());
    x.insert("closed_cleanly".into(), closed.into());
    if let Some(e) = t.first_error() {
        x.insert("first_error".into(), e.into());
    }
    let errs: Vec<String> = errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
    r.human = vec![
        format!(
            "  connections {held_at_start}/{n} held at start ({wt_members} WT), min {held_min}, at end {held_at_end}; \
             generator RSS {} MiB",
            gen_rss.unwrap_or(0) / 1024
        ),
        format!(
            "  chat {} sent, {} delivered: p50 {:.2} ms p99 {:.2} ms; lost {lost} duplicated {} reordered {} \
             undelivered at stop {pending} (not owed, so not lost: {} stored before the receiver joined, {} in \
             reported history gaps)",
            t.chat_sent.get(),
            t.chat_delivered.get(),
            ms(&latency, 0.5),
            ms(&latency, 0.99),
            t.duplicated.get(),
            t.reordered.get(),
            settled.before_join,
            settled.in_reported_gap
        ),
        format!(
            "  calls {} placed, {} answered, {} failed: setup p50 {:.2} ms p99 {:.2} ms",
            t.calls_placed.get(),
            t.calls_answered.get(),
            t.calls_failed.get(),
            ms(&setup, 0.5),
            ms(&setup, 0.99)
        ),
        format!(
            "  reconnects {} ({} churned, {} GoAway, {} lost, {} failed): p50 {:.2} ms p99 {:.2} ms",
            t.reconnects.get(),
            t.churns.get(),
            t.goaways.get(),
            t.lost_connections.get(),
            t.reconnect_failures.get(),
            ms(&reconnect, 0.5),
            ms(&reconnect, 0.99)
        ),
        format!("  errors: {}", if errs.is_empty() { "none".into() } else { errs.join(", ") }),
    ];
    Ok(r)
}
