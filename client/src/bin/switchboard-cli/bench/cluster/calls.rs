//! 1:1 calls: a driver rings random pairs of members at a steady rate; the callee's reader
//! answers; the caller's reader reports the answer. Call setup latency runs from the
//! invitation being sent to the caller seeing `ACCEPTED`.

use super::fleet::{Fleet, Phase};
use super::tally::Tally;
use crate::bench::scenarios::now_us;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard_client::{pb, Client};
use tokio::sync::oneshot;

/// How long a caller waits for the answer before cancelling (the node rings 30 s).
const ANSWER_WAIT: Duration = Duration::from_secs(20);
/// Tries to find two free, connected members for one call.
const PICK_TRIES: usize = 20;

/// A call's answer as the caller's reader saw it: the time (µs) or why it failed.
type Outcome = Result<u64, String>;

enum Waiting {
    /// The invitation was acknowledged; its placer waits here.
    Placer(oneshot::Sender<Outcome>),
    /// The outcome arrived before the acknowledgement of the invitation.
    Early(Outcome),
}

/// Calls whose outcome the caller has not seen yet, by call id.
#[derive(Default)]
pub struct Pending(Mutex<HashMap<String, Waiting>>);

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The caller's reader saw `id` answered (or failed).
    fn settle(&self, id: &str, outcome: Outcome) {
        let mut map = self.lock();
        match map.remove(id) {
            Some(Waiting::Placer(tx)) => {
                let _ = tx.send(outcome);
            }
            Some(early @ Waiting::Early(_)) => {
                map.insert(id.to_owned(), early); // the first outcome stands
            }
            None => {
                map.insert(id.to_owned(), Waiting::Early(outcome));
            }
        }
    }

    /// The placer of `id` waits for its outcome (which may already be here).
    fn wait(&self, id: &str) -> Result<Outcome, oneshot::Receiver<Outcome>> {
        let mut map = self.lock();
        if let Some(Waiting::Early(o)) = map.remove(id) {
            return Ok(o);
        }
        let (tx, rx) = oneshot::channel();
        map.insert(id.to_owned(), Waiting::Placer(tx));
        Err(rx)
    }

    fn forget(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// A call event at member `i` (whose session is `client`): a callee answers a ringing
/// call; a caller notes the answer, a rejection or an end before any answer.
pub fn on_event(fleet: &Arc<Fleet>, i: usize, client: &Client, e: &pb::CallEvent) {
    let Some(call) = e.call.as_ref() else { return };
    let me = fleet.slots[i].user.as_str();
    let caller = call.caller == me;
    match e.state() {
        pb::CallState::Ringing if !caller && !e.answered_elsewhere => {
            let (fleet, client, id) = (fleet.clone(), client.clone(), call.id.clone());
            tokio::spawn(async move {
                if let Err(err) = client.call_answer(&id, true).await {
                    fleet.tally.client_error("answering a call", &err);
                }
            });
        }
        pb::CallState::Accepted if caller => fleet.calls.settle(&call.id, Ok(now_us())),
        pb::CallState::Rejected | pb::CallState::Ended if caller && call.answered_at_ms == 0 => {
            fleet.calls.settle(&call.id, Err(format!("{:?} before an answer", e.state())));
        }
        _ => {}
    }
}

/// Two distinct connected members not in a call, marked busy.
fn pick(fleet: &Fleet) -> Option<(usize, usize)> {
    let n = fleet.slots.len();
    for _ in 0..PICK_TRIES {
        let (a, b) = (rand::random_range(0..n), rand::random_range(0..n));
        let (sa, sb) = (&fleet.slots[a], &fleet.slots[b]);
        if a == b || !sa.connected.load(Ordering::Relaxed) || !sb.connected.load(Ordering::Relaxed) {
            continue;
        }
        if sa.in_call.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            continue;
        }
        if sb.in_call.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            sa.in_call.store(false, Ordering::SeqCst);
            continue;
        }
        return Some((a, b));
    }
    None
}

/// Place one call from `a` to `b`, wait for the answer, hold it, end it.
async fn place(fleet: Arc<Fleet>, a: usize, b: usize, hold: Duration) {
    let t = &fleet.tally;
    t.calls_placed.inc();
    let fail = |why: String| {
        t.calls_failed.inc();
        t.error("CALL_FAILED", || format!("call {a} -> {b}: {why}"));
    };
    match fleet.slots[a].client() {
        None => fail("caller disconnected".into()),
        Some(client) => {
            let t0 = now_us();
            match client.call_invite(&[fleet.slots[b].user.as_str()], pb::CallMedia::Audio).await {
                Err(e) => {
                    t.calls_failed.inc();
                    t.client_error("inviting", &e);
                }
                Ok(id) => {
                    let outcome = match fleet.calls.wait(&id) {
                        Ok(o) => Some(o),
                        Err(rx) => tokio::time::timeout(ANSWER_WAIT, rx).await.ok().and_then(Result::ok),
                    };
                    fleet.calls.forget(&id);
                    match outcome {
                        Some(Ok(at)) => {
                            t.calls_answered.inc();
                            Tally::record(&t.call_setup, at.saturating_sub(t0));
                            tokio::time::sleep(hold).await;
                            let ender = fleet.slots[a].client().unwrap_or(client);
                            match ender.call_end(&id).await {
                                Ok(()) => t.calls_ended.inc(),
                                Err(e) => t.client_error("ending a call", &e),
                            }
                        }
                        Some(Err(why)) => fail(why),
                        None => {
                            fail(format!("no answer within {ANSWER_WAIT:?}"));
                            let _ = client.call_cancel(&id).await;
                        }
                    }
                }
            }
        }
    }
    fleet.slots[a].in_call.store(false, Ordering::SeqCst);
    fleet.slots[b].in_call.store(false, Ordering::SeqCst);
}

/// Ring `per_min` calls a minute (jittered gaps) from `start` while the run lasts, then
/// wait (bounded) for the calls in progress.
pub async fn drive(fleet: Arc<Fleet>, per_min: f64, hold: Duration, start: Instant) {
    if per_min <= 0.0 {
        return;
    }
    let gap = 60.0 / per_min;
    let mut phase = fleet.phase.clone();
    let mut next = start + Duration::from_secs_f64(gap * rand::random_range(0.0..1.0));
    let mut calls = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {}
            _ = phase.changed() => {}
        }
        if !matches!(fleet.phase(), Phase::Run(_)) {
            break;
        }
        next += Duration::from_secs_f64(gap * rand::random_range(0.5..1.5));
        match pick(&fleet) {
            Some((a, b)) => {
                calls.spawn(place(fleet.clone(), a, b, hold));
            }
            None => fleet.tally.error("NO_FREE_MEMBERS", || "no two free, connected members to call".into()),
        }
        while calls.try_join_next().is_some() {}
    }
    let limit = ANSWER_WAIT + hold + Duration::from_secs(15);
    let _ = tokio::time::timeout(limit, async { while calls.join_next().await.is_some() {} }).await;
}
