//! One member's life: connect while ramping up, chat at its share of the rate, read and
//! check what its room delivers, and replace its connection when churned, told to go away
//! (`GoAway`) or cut off, resuming the room from the last message it saw.

use super::fleet::{Fleet, Phase, SendRecord, Wake, ROOM_SIZE};
use super::order::Seen;
use super::tally::Tally;
use crate::bench::scenarios::{latency_us, now_us};
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_client::{pb, Client, Event, Events};

/// The `kind` of the chat messages.
pub const CHAT_KIND: &str = "chat";
/// Chat payload: send time (8 bytes), member (4), sequence number (8), padding.
const CHAT_BYTES: usize = 64;
/// Connection attempts while ramping up, and per reconnect.
const TRIES: u32 = 4;
/// Longest wait for a closed session's reader to finish what the session received.
const READER_DRAIN: Duration = Duration::from_secs(10);
/// Longest wait on a GoAway's reconnect hint.
const GOAWAY_MAX: Duration = Duration::from_secs(10);

/// Backoff before retry `attempt` (1-based): 250 ms doubling, jittered ±50 %.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64 << attempt.min(5)).mul_f64(rand::random_range(0.5..1.5))
}

/// A chat payload.
fn chat_payload(i: usize, seq: u64) -> Bytes {
    let mut p = BytesMut::with_capacity(CHAT_BYTES);
    p.put_u64(now_us());
    p.put_u32(i as u32);
    p.put_u64(seq);
    p.resize(CHAT_BYTES, 0);
    p.freeze()
}

/// Connect member `i` (its `attempt`-th try picks the URL), join its room (resuming after
/// `resume`, else from now), start its reader and publish the session in its slot.
async fn open(fleet: &Arc<Fleet>, i: usize, attempt: usize, resume: Option<u64>) -> anyhow::Result<Client> {
    let slot = &fleet.slots[i];
    let _permit = fleet.connecting.acquire().await?;
    let (client, events) = Client::connect(fleet.config(i, attempt)?).await?;
    let joined_at = now_us();
    let joined = match client.join_from(&slot.room, resume).await {
        Ok(j) => j,
        Err(e) => {
            client.close().await;
            return Err(e.into());
        }
    };
    if resume.is_none() {
        slot.last_offset.store(joined.last_offset, Ordering::SeqCst);
    }
    slot.journal.lock().unwrap_or_else(|e| e.into_inner()).joined(now_us(), resume, &joined);
    if joined.history_gap {
        fleet.tally.history_gaps.inc();
    }
    let generation = slot.generation.load(Ordering::SeqCst);
    let reader = tokio::spawn(read(fleet.clone(), i, client.clone(), events, joined_at, generation));
    *slot.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(reader);
    slot.set_client(Some(client.clone()));
    slot.connected.store(true, Ordering::SeqCst);
    fleet.tally.connected.inc();
    Ok(client)
}

/// Close member `i`'s session `client` on purpose (`why`), and let its reader finish the
/// messages the session received (at most [`READER_DRAIN`]): resuming from before them
/// would deliver them twice.
async fn close(fleet: &Fleet, i: usize, client: &Client, why: &'static str) {
    forget(fleet, i, why);
    client.close().await;
    let reader = fleet.slots[i].reader.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(reader) = reader {
        let _ = tokio::time::timeout(READER_DRAIN, reader).await;
    }
}

/// Member `i` has no session any more (`why`).
fn forget(fleet: &Fleet, i: usize, why: &'static str) {
    let slot = &fleet.slots[i];
    slot.journal.lock().unwrap_or_else(|e| e.into_inner()).ended(now_us(), why);
    slot.generation.fetch_add(1, Ordering::SeqCst);
    slot.set_client(None);
    if slot.connected.swap(false, Ordering::SeqCst) {
        fleet.tally.connected.dec();
    }
}

/// Up to [`TRIES`] attempts to connect member `i` again, resuming its room; the time from
/// `since` to the rejoin is the reconnect time.
async fn reconnect(fleet: &Arc<Fleet>, i: usize, attempts: &mut usize, since: Instant) -> Option<Client> {
    let t = &fleet.tally;
    for k in 1..=TRIES {
        *attempts += 1;
        let resume = Some(fleet.slots[i].last_offset.load(Ordering::SeqCst));
        match open(fleet, i, *attempts, resume).await {
            Ok(c) => {
                t.reconnects.inc();
                fleet.slots[i].reconnects.fetch_add(1, Ordering::Relaxed);
                Tally::record(&t.reconnect, since.elapsed().as_micros() as u64);
                return Some(c);
            }
            Err(e) => {
                count_error(t, "reconnecting", &e);
                if k < TRIES && fleet.phase() != Phase::Close {
                    tokio::time::sleep(backoff(k)).await;
                }
            }
        }
    }
    t.reconnect_failures.inc();
    None
}

fn count_error(t: &Tally, context: &str, e: &anyhow::Error) {
    match e.downcast_ref::<switchboard_client::ClientError>() {
        Some(ce) => t.client_error(context, ce),
        None => t.error("OTHER", || format!("{context}: {e:#}")),
    }
}

/// Member `i`: connect at `connect_at`, then chat until the run stops, then close.
pub async fn run(fleet: Arc<Fleet>, i: usize, connect_at: Instant) {
    let slot = &fleet.slots[i];
    let t = &fleet.tally;
    tokio::time::sleep_until(connect_at.into()).await;
    let mut attempts = 0usize;
    let mut client = None;
    for k in 1..=TRIES {
        let t0 = Instant::now();
        match open(&fleet, i, attempts, None).await {
            Ok(c) => {
                Tally::record(&t.connect, t0.elapsed().as_micros() as u64);
                // What the member is owed starts after this join (`Journal::floor`): all of
                // the room's messages if the run has not started, fewer if ramping up
                // outlasted its limit and the room chats already.
                client = Some(c);
                break;
            }
            Err(e) => {
                t.connect_failures.inc();
                count_error(t, "connecting", &e);
                attempts += 1;
                if k < TRIES {
                    tokio::time::sleep(backoff(k)).await;
                }
            }
        }
    }
    t.ramped.inc();
    let mut phase = fleet.phase.clone();
    let start = match phase.wait_for(|p| *p != Phase::Ramp).await.map(|p| *p) {
        Ok(Phase::Run(start)) => start,
        _ => Instant::now(),
    };
    // Each member's messages are spread over the interval, evenly across members.
    let interval = fleet.chat_interval;
    let n = fleet.slots.len();
    let mut next = start + interval.mul_f64((i as f64 + rand::random_range(0.0..1.0)) / n as f64);
    while matches!(fleet.phase(), Phase::Run(_)) {
        let Some(c) = client.clone() else {
            // Cut off and not back yet: try again at the next chat turn.
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                _ = phase.changed() => continue,
            }
            next += interval;
            client = reconnect(&fleet, i, &mut attempts, Instant::now()).await;
            continue;
        };
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {
                next += interval;
                publish(&fleet, i, &c).await;
            }
            () = slot.notify.notified() => {
                client = replace(&fleet, i, c, &mut attempts).await;
            }
            _ = phase.changed() => {}
        }
    }
    slot.chat_done.store(true, Ordering::SeqCst);
    let _ = phase.wait_for(|p| *p == Phase::Close).await;
    if let Some(c) = slot.client() {
        close(&fleet, i, &c, "end of run").await;
    }
}

/// Handle a wake-up of member `i`: churn, GoAway or a lost connection.
async fn replace(fleet: &Arc<Fleet>, i: usize, c: Client, attempts: &mut usize) -> Option<Client> {
    let slot = &fleet.slots[i];
    match slot.take_wake() {
        Wake::None => Some(c),
        Wake::Churn => {
            close(fleet, i, &c, "churn").await;
            reconnect(fleet, i, attempts, Instant::now()).await
        }
        Wake::GoAway => {
            let hint = Duration::from_millis(slot.goaway_after_ms.load(Ordering::SeqCst)).min(GOAWAY_MAX);
            tokio::time::sleep(hint).await;
            close(fleet, i, &c, "GoAway").await;
            reconnect(fleet, i, attempts, Instant::now()).await
        }
        Wake::Lost => {
            forget(fleet, i, "connection lost");
            reconnect(fleet, i, attempts, Instant::now()).await
        }
    }
}

/// Publish member `i`'s next chat message (reliable) and wait for its acknowledgement.
async fn publish(fleet: &Fleet, i: usize, client: &Client) {
    let slot = &fleet.slots[i];
    let t = &fleet.tally;
    let seq = slot.sent.fetch_add(1, Ordering::SeqCst);
    t.chat_sent.inc();
    let sent_us = now_us();
    let result = client.publish(&slot.room, chat_payload(i, seq), true, CHAT_KIND).await;
    let record = SendRecord { sent_us, answered_us: now_us(), offset: result.as_ref().ok().copied() };
    {
        let mut sends = slot.sends.lock().unwrap_or_else(|e| e.into_inner());
        let seq = seq as usize;
        if sends.len() <= seq {
            sends.resize(seq + 1, SendRecord::default());
        }
        sends[seq] = record;
    }
    match result {
        Ok(_) => t.chat_acked.inc(),
        Err(e) => {
            t.chat_failed.inc();
            t.client_error("publishing", &e);
        }
    }
}

/// Read member `i`'s session until it closes; `generation` is the slot's generation when the session opened.
async fn read(fleet: Arc<Fleet>, i: usize, client: Client, mut events: Events, joined_at: u64, generation: u64) {
    let slot = &fleet.slots[i];
    let t = &fleet.tally;
    let mut first_message = true;
    while let Some(ev) = events.recv().await {
        match ev {
            Event::Message(m) if m.kind == CHAT_KIND => {
                if std::mem::take(&mut first_message) {
                    slot.journal.lock().unwrap_or_else(|e| e.into_inner()).first_message(m.offset);
                }
                on_chat(&fleet, i, &m, joined_at)
            }
            Event::Call(e) => super::calls::on_event(&fleet, i, &client, &e),
            Event::GoAway(g) => {
                t.goaways.inc();
                slot.goaway_after_ms.store(u64::from(g.reconnect_after_ms), Ordering::SeqCst);
                slot.wake(Wake::GoAway);
            }
            Event::Error(e) => t.error(e.code().as_str_name(), || format!("member {i}: {}", e.message)),
            Event::Left(l) => t.error("LEFT", || format!("member {i} removed from {}: {}", l.room, l.reason)),
            Event::Closed { code, reason } => {
                if slot.generation.load(Ordering::SeqCst) == generation {
                    t.lost_connections.inc();
                    let key = code.map_or("CLOSED", |c| c.as_str_name());
                    t.error(key, || format!("member {i}: connection closed: {reason}"));
                    slot.wake(Wake::Lost);
                }
                break;
            }
            _ => {}
        }
    }
}

/// A chat message delivered to member `i`: order check, latency (live messages only:
/// those sent after this session joined), resume point.
fn on_chat(fleet: &Fleet, i: usize, m: &pb::Message, joined_at: u64) {
    let p = &m.payload[..];
    let (Some(sent_at), Some(from), Some(seq)) = (
        p.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes),
        p.get(8..12).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes),
        p.get(12..20).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes),
    ) else {
        return;
    };
    let (t, slot) = (&fleet.tally, &fleet.slots[i]);
    slot.last_offset.fetch_max(m.offset, Ordering::SeqCst);
    let from = from as usize;
    if from == i {
        return;
    }
    if from / ROOM_SIZE != i / ROOM_SIZE {
        t.error("FOREIGN_MESSAGE", || format!("member {i} got member {from}'s message from another room"));
        return;
    }
    let seen = slot.order.lock().unwrap_or_else(|e| e.into_inner())[Fleet::position(from)].see(seq);
    match seen {
        Seen::InOrder => {}
        Seen::Gap => t.gaps.inc(),
        Seen::Reordered => t.reordered.inc(),
        Seen::Duplicate => t.duplicated.inc(),
    }
    t.chat_delivered.inc();
    let latency = latency_us(p).unwrap_or(1);
    if sent_at >= joined_at {
        t.chat_latency(i, latency);
    } else {
        t.chat_replayed.inc();
        Tally::record(&t.replay_latency, latency);
    }
}
