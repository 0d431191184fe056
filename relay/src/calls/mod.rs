//! Calls: invitations that ring every device of every callee, answers, cancels, ends and
//! ring timeouts, cluster-wide.
//!
//! A call's state is one record in the bus's `Calls` key-value bucket (JetStream KV
//! `<prefix>_calls`). Every transition reads the record, applies the rule and writes it
//! back with compare-and-set on the revision; a lost race re-reads and re-decides, so
//! accept vs. cancel, two devices accepting or two nodes timing out resolve to one outcome.
//! The node that wins a transition publishes a [`CallEvent`] to every party's inbox
//! (`<prefix>.user.<user>`, see [`inbox`]) and, when the call ends, appends the record to
//! each party's call history.
//!
//! ```text
//! RINGING --accept--> ACCEPTED --end--> ENDED(completed)
//!    |--every callee rejected--> ENDED(rejected)
//!    |--caller cancels---------> ENDED(cancelled)
//!    |--ring timeout-----------> ENDED(missed)
//!    '--no callee online-------> ENDED(offline)
//! ```

pub(crate) mod bounds;
pub(crate) mod history;
pub mod inbox;
pub mod json;
pub mod resume;
pub(crate) mod resync;
mod ring;
pub mod service;

use crate::bus::{Bucket, BusError, Log};
use crate::context::NodeContext;
use bytes::Bytes;
use prost::Message as _;
use std::sync::Arc;
use std::time::Duration;
use switchboard_protocol::pb::{
    bus_envelope, Call, CallEvent, CallMedia, CallOutcome, CallParty, CallState, PartyStatus, Sender,
};
use switchboard_protocol::subject::validate_id;
use switchboard_protocol::{encode, now_ms, ErrorCode};

/// Callees one invitation may ring.
pub const MAX_CALLEES: usize = 16;
/// Rooms of calls are named `call-<id>`.
pub const CALL_ROOM_PREFIX: &str = "call-";
/// Compare-and-set attempts of one transition before giving up.
const CAS_ATTEMPTS: usize = 32;
/// Attempts of a node's ring timeout (backoff 1 s doubling to 10 s: about 10 minutes).
const RING_TIMEOUT_ATTEMPTS: u32 = 64;

/// Who performs a call operation: a session, or a backend over NATS (no session).
#[derive(Debug, Clone)]
pub struct Actor {
    /// The verified user id.
    pub user: String,
    /// The session, empty for NATS requests.
    pub session: String,
    /// Display name.
    pub name: String,
}

/// Why a call operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No such call (or it is over and forgotten).
    #[error("call {0:?} not found")]
    NotFound(String),
    /// The operation does not fit the call's state or the actor's part in it.
    #[error("{0}")]
    State(String),
    /// Bad arguments.
    #[error("{0}")]
    Invalid(String),
    /// The token does not grant calls.
    #[error("{0}")]
    Forbidden(String),
    /// The caller invites too often.
    #[error("{0}")]
    RateLimited(String),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl CallError {
    /// The protocol error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            CallError::NotFound(_) => ErrorCode::CallNotFound,
            CallError::State(_) => ErrorCode::CallState,
            CallError::Invalid(_) => ErrorCode::InvalidArgument,
            CallError::Forbidden(_) => ErrorCode::Forbidden,
            CallError::RateLimited(_) => ErrorCode::RateLimited,
            CallError::Bus(_) => ErrorCode::Unavailable,
        }
    }
}

/// The events one transition produces (in order).
type Events = Vec<CallState>;

fn sender(node: &NodeContext, actor: &Actor) -> Sender {
    Sender {
        user: actor.user.clone(),
        session: actor.session.clone(),
        name: actor.name.clone(),
        node: node.config.node_id.clone(),
    }
}

fn party_mut<'a>(call: &'a mut Call, user: &str) -> Option<&'a mut CallParty> {
    call.parties.iter_mut().find(|p| p.user == user)
}

fn is_party(call: &Call, user: &str) -> bool {
    call.parties.iter().any(|p| p.user == user)
}

fn end(call: &mut Call, outcome: CallOutcome) {
    let now = now_ms();
    call.set_state(CallState::Ended);
    call.set_outcome(outcome);
    call.ended_at_ms = now;
    call.duration_ms = if call.answered_at_ms > 0 { now.saturating_sub(call.answered_at_ms) } else { 0 };
    // Callees still ringing when the call ends did not answer.
    for p in &mut call.parties {
        if p.status() == PartyStatus::Ringing {
            p.set_status(PartyStatus::Missed);
        }
    }
}

/// Whether no callee is still ringing or has accepted.
fn nobody_left(call: &Call) -> bool {
    !call.parties.iter().any(|p| matches!(p.status(), PartyStatus::Ringing | PartyStatus::Accepted))
}

/// Start a call from `actor` to `callees`: rings every connected device of every callee.
/// Returns the call as stored at once (every callee `RINGING`), before any device is
/// rung: callees found to have no device are marked `OFFLINE` afterwards, and if none had
/// one the call ends with outcome `OFFLINE` (an `ENDED` event to the caller). Counts against the
/// caller's invitation rate (`RATE_LIMITED` over it). `media` `UNSPECIFIED` (unset, or a
/// value this node does not know) means audio: the call records `AUDIO`.
pub async fn invite(
    node: &Arc<NodeContext>,
    actor: &Actor,
    callees: &[String],
    media: CallMedia,
) -> Result<Call, CallError> {
    let mut unique: Vec<String> = Vec::new();
    for c in callees {
        validate_id(c).map_err(|e| CallError::Invalid(format!("callee {c:?}: {e}")))?;
        if *c == actor.user {
            return Err(CallError::Invalid("a caller cannot call themselves".into()));
        }
        if !unique.contains(c) {
            unique.push(c.clone());
        }
    }
    if unique.is_empty() || unique.len() > MAX_CALLEES {
        return Err(CallError::Invalid(format!("a call needs 1 to {MAX_CALLEES} callees")));
    }
    bounds::check_invite(node, &actor.user)?;
    let media = match media {
        CallMedia::Video => CallMedia::Video,
        CallMedia::Audio | CallMedia::Unspecified => CallMedia::Audio,
    };
    let id = crate::ids::random_id(16);
    let now = now_ms();
    let mut parties = vec![CallParty {
        user: actor.user.clone(),
        status: PartyStatus::Caller as i32,
        session: actor.session.clone(),
    }];
    parties.extend(unique.iter().map(|u| CallParty {
        user: u.clone(),
        status: PartyStatus::Ringing as i32,
        session: String::new(),
    }));
    let call = Call {
        id: id.clone(),
        caller: actor.user.clone(),
        media: media as i32,
        room: format!("{CALL_ROOM_PREFIX}{id}"),
        parties,
        state: CallState::Ringing as i32,
        outcome: CallOutcome::Unspecified as i32,
        created_at_ms: now,
        ring_deadline_ms: now + node.config.ring_timeout.as_millis() as u64,
        ..Default::default()
    };
    node.bus.kv_create(Bucket::Calls, &id, Bytes::from(call.encode_to_vec())).await?;
    node.metrics.call_transitions.get_or_create(&crate::metrics::KindLabel { kind: "invite" }).inc();
    crate::webhooks::call(node, "call.created", &call);
    tracing::info!(call = %id, caller = %actor.user, callees = ?unique, "call invited");
    let by = sender(node, actor);
    // The caller's devices learn of the call; the callees are rung in the background
    // (`ring::ring_all`), so the caller's answer never waits on a slow or silent node.
    publish_event(node, &actor.user, &call, CallState::Ringing, &by).await;
    schedule_timeout(node, &call);
    node.runtime.spawn(ring::ring_all(node.clone(), call.clone(), unique, by));
    Ok(call)
}

/// A callee's answer from one of its devices.
pub async fn answer(node: &Arc<NodeContext>, actor: &Actor, call_id: &str, accept: bool) -> Result<Call, CallError> {
    let session = actor.session.clone();
    let (call, _) = transition(node, call_id, actor, |call| {
        if call.state() == CallState::Ended {
            return Err(CallError::State(format!("the call is over ({})", outcome_name(call))));
        }
        let Some(party) = party_mut(call, &actor.user) else {
            return Err(CallError::State("only a callee can answer this call".into()));
        };
        match party.status() {
            PartyStatus::Ringing | PartyStatus::Offline => {}
            PartyStatus::Caller => return Err(CallError::State("the caller cannot answer their own call".into())),
            PartyStatus::Accepted => {
                return Err(CallError::State("the call was already answered on another device".into()))
            }
            _ => return Err(CallError::State("this callee already answered".into())),
        }
        let mut events = Events::new();
        if accept {
            party.set_status(PartyStatus::Accepted);
            party.session = session.clone();
            if call.answered_at_ms == 0 {
                call.answered_at_ms = now_ms();
            }
            call.set_state(CallState::Accepted);
            events.push(CallState::Accepted);
        } else {
            party.set_status(PartyStatus::Rejected);
            events.push(CallState::Rejected);
            if call.state() == CallState::Ringing && nobody_left(call) {
                end(call, CallOutcome::Rejected);
                events.push(CallState::Ended);
            }
        }
        Ok(events)
    })
    .await?;
    Ok(call)
}

/// The caller withdraws a ringing invitation.
pub async fn cancel(node: &Arc<NodeContext>, actor: &Actor, call_id: &str) -> Result<Call, CallError> {
    let (call, _) = transition(node, call_id, actor, |call| {
        if call.caller != actor.user {
            return Err(CallError::State("only the caller can cancel a call".into()));
        }
        match call.state() {
            CallState::Ringing => {
                end(call, CallOutcome::Cancelled);
                Ok(vec![CallState::Ended])
            }
            CallState::Ended => Err(CallError::State(format!("the call is over ({})", outcome_name(call)))),
            _ => Err(CallError::State("the call was answered; end it instead".into())),
        }
    })
    .await?;
    Ok(call)
}

/// A party ends the call for everyone (the caller ending a ringing call cancels it).
pub async fn hang_up(node: &Arc<NodeContext>, actor: &Actor, call_id: &str) -> Result<Call, CallError> {
    let (call, _) = transition(node, call_id, actor, |call| {
        let status = call.parties.iter().find(|p| p.user == actor.user).map(|p| p.status());
        match (call.state(), status) {
            (CallState::Ended, _) => Err(CallError::State(format!("the call is over ({})", outcome_name(call)))),
            (_, None) => Err(CallError::State("only a party can end this call".into())),
            (CallState::Ringing, Some(PartyStatus::Caller)) => {
                end(call, CallOutcome::Cancelled);
                Ok(vec![CallState::Ended])
            }
            (_, Some(PartyStatus::Caller | PartyStatus::Accepted)) if call.answered_at_ms > 0 => {
                end(call, CallOutcome::Completed);
                Ok(vec![CallState::Ended])
            }
            _ => Err(CallError::State("answer or reject the call; only connected parties can end it".into())),
        }
    })
    .await?;
    Ok(call)
}

/// The ring timeout: an unanswered call ends as missed; callees of an answered call who
/// never answered are marked missed. Idempotent: every node that rang runs it. `Ok(false)`
/// if the deadline has not passed yet by the wall clock (the timer woke early): run it
/// again later.
pub async fn ring_timeout(node: &Arc<NodeContext>, call_id: &str) -> Result<bool, CallError> {
    let system = Actor { user: String::new(), session: String::new(), name: String::new() };
    let early = std::sync::atomic::AtomicBool::new(false);
    let r = transition(node, call_id, &system, |call| {
        early.store(false, std::sync::atomic::Ordering::Relaxed);
        if call.state() == CallState::Ended {
            return Ok(Events::new());
        }
        if now_ms() < call.ring_deadline_ms {
            early.store(true, std::sync::atomic::Ordering::Relaxed);
            return Ok(Events::new());
        }
        if call.state() == CallState::Ringing {
            end(call, CallOutcome::Missed);
            return Ok(vec![CallState::Ended]);
        }
        let mut missed = false;
        for p in &mut call.parties {
            if p.status() == PartyStatus::Ringing {
                p.set_status(PartyStatus::Missed);
                missed = true;
            }
        }
        Ok(if missed { vec![CallState::Missed] } else { Events::new() })
    })
    .await;
    match r {
        Ok(_) => Ok(!early.load(std::sync::atomic::Ordering::Relaxed)),
        Err(CallError::NotFound(_)) => Ok(true),
        Err(e) => Err(e),
    }
}

/// The call, if it exists.
pub async fn get(node: &NodeContext, call_id: &str) -> Result<Call, CallError> {
    validate_id(call_id).map_err(|e| CallError::Invalid(format!("call id: {e}")))?;
    let entry = node.bus.kv_get(Bucket::Calls, call_id).await?.ok_or_else(|| CallError::NotFound(call_id.into()))?;
    Call::decode(entry.value).map_err(|e| CallError::Bus(BusError::Other(format!("bad call record: {e}"))))
}

/// Whether `user` may be in the call's room: the caller, or a callee who accepted, while
/// the call is not over.
pub async fn may_join_room(node: &NodeContext, room: &str, user: &str) -> Result<bool, CallError> {
    let Some(id) = room.strip_prefix(CALL_ROOM_PREFIX) else { return Ok(false) };
    let call = match get(node, id).await {
        Ok(c) => c,
        Err(CallError::NotFound(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(call.state() != CallState::Ended
        && call
            .parties
            .iter()
            .any(|p| p.user == user && matches!(p.status(), PartyStatus::Caller | PartyStatus::Accepted)))
}

/// Check that `from` may signal `to_user` in `call` (both parties, call not over).
pub fn check_signal(call: &Call, from: &str, to_user: &str) -> Result<(), CallError> {
    if call.state() == CallState::Ended {
        return Err(CallError::State("the call is over".into()));
    }
    if !is_party(call, from) || !is_party(call, to_user) || from == to_user {
        return Err(CallError::State("signals go only between two parties of the call".into()));
    }
    Ok(())
}

fn outcome_name(call: &Call) -> &'static str {
    json::outcome_name(call.outcome()).unwrap_or("ended")
}

/// Read, decide, compare-and-set; on a lost race read again. The winner publishes the
/// events and, if the call ended, records it in every party's history.
async fn transition(
    node: &Arc<NodeContext>,
    call_id: &str,
    actor: &Actor,
    decide: impl Fn(&mut Call) -> Result<Events, CallError>,
) -> Result<(Call, Events), CallError> {
    validate_id(call_id).map_err(|e| CallError::Invalid(format!("call id: {e}")))?;
    for _ in 0..CAS_ATTEMPTS {
        let entry =
            node.bus.kv_get(Bucket::Calls, call_id).await?.ok_or_else(|| CallError::NotFound(call_id.into()))?;
        let mut call = Call::decode(entry.value)
            .map_err(|e| CallError::Bus(BusError::Other(format!("bad call record {call_id}: {e}"))))?;
        let events = decide(&mut call)?;
        if events.is_empty() {
            return Ok((call, events));
        }
        // An ending stores which parties get a history record, pending until written
        // (`history`): the record survives this node dying before it appends it.
        let ended = events.contains(&CallState::Ended);
        let (value, history_for) =
            if ended { history::ended_value(node, &call) } else { (Bytes::from(call.encode_to_vec()), Vec::new()) };
        match node.bus.kv_update(Bucket::Calls, call_id, value, entry.revision).await {
            Ok(revision) => {
                // Recorded before anyone hears it ended: a client that reads its history on
                // the ENDED event finds the call there.
                let recorded = ended && {
                    history::crash_point();
                    history::record(node, &call, &history_for).await
                };
                let by = if actor.user.is_empty() { Sender::default() } else { sender(node, actor) };
                for state in &events {
                    let kind = json::state_name(*state);
                    node.metrics.call_transitions.get_or_create(&crate::metrics::KindLabel { kind }).inc();
                    tracing::info!(call = %call_id, transition = kind, by = %actor.user, "call transition");
                    for party in &call.parties {
                        publish_event(node, &party.user, &call, *state, &by).await;
                    }
                    match state {
                        CallState::Accepted => crate::webhooks::call(node, "call.answered", &call),
                        CallState::Ended => crate::webhooks::call(node, "call.ended", &call),
                        _ => {}
                    }
                }
                // Records not written are left pending: another node re-drives them.
                if recorded {
                    history::settle(node, &call, revision).await;
                }
                return Ok((call, events));
            }
            Err(BusError::Conflict(_)) => {
                node.metrics.call_conflicts.inc();
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(CallError::Bus(BusError::Unavailable(format!("call {call_id}: too many concurrent changes; retry"))))
}

fn envelope(node: &NodeContext, event: CallEvent) -> Bytes {
    encode(&switchboard_protocol::pb::BusEnvelope {
        origin_node: node.config.node_id.clone(),
        kind: Some(bus_envelope::Kind::Call(event)),
    })
}

async fn publish_event(node: &NodeContext, user: &str, call: &Call, state: CallState, by: &Sender) {
    let event = CallEvent { call: Some(call.clone()), state: state as i32, by: Some(by.clone()), ..Default::default() };
    if let Err(e) = node.bus.publish(node.subjects.user_inbox(user), envelope(node, event)).await {
        node.metrics.bus_publish_errors.inc();
        tracing::warn!(call = %call.id, %user, error = %e, "publishing a call event failed");
    }
}

/// Run the ring timeout for `call` on this node at its deadline (once per call per node).
pub(crate) fn schedule_timeout(node: &Arc<NodeContext>, call: &Call) {
    if !node.ring_timers.lock().unwrap_or_else(|e| e.into_inner()).insert(call.id.clone()) {
        return;
    }
    let wait = Duration::from_millis(call.ring_deadline_ms.saturating_sub(now_ms()));
    let id = call.id.clone();
    let weak = Arc::downgrade(node);
    node.runtime.spawn(async move {
        tokio::time::sleep(wait).await;
        // Several nodes may fire at once: compare-and-set lets one of them end the call. A
        // failure (the record unreachable: NATS split, no JetStream quorum on this side) is
        // retried, or the call would ring for ever wherever no other node ended it.
        let mut backoff = Duration::from_secs(1);
        for attempt in 1..=RING_TIMEOUT_ATTEMPTS {
            let Some(node) = weak.upgrade() else { return };
            match ring_timeout(&node, &id).await {
                Ok(true) => break,
                // Woke before the deadline by the wall clock (the record's clock): not
                // done, and not to be forgotten.
                Ok(false) => tracing::debug!(call = %id, "ring timeout before the deadline; again shortly"),
                Err(e) if attempt < RING_TIMEOUT_ATTEMPTS => {
                    tracing::warn!(call = %id, error = %e, retry_in = ?backoff, "ring timeout failed")
                }
                Err(e) => tracing::error!(call = %id, error = %e, "ring timeout failed; giving up"),
            }
            drop(node);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        if let Some(node) = weak.upgrade() {
            node.ring_timers.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        }
    });
}

/// Call history of `user`, newest first: records with a sequence below `before` (all if
/// `None`), at most `limit`, and the cursor for the next page.
pub async fn history(
    node: &NodeContext,
    user: &str,
    before: Option<u64>,
    limit: usize,
) -> Result<(Vec<(u64, Call)>, Option<u64>), BusError> {
    let entries = node.bus.log_read(Log::CallHistory, user, 0, 100_000).await?;
    let mut page: Vec<(u64, Call)> = entries
        .into_iter()
        .rev()
        .filter(|e| before.is_none_or(|b| e.seq < b))
        .filter_map(|e| Call::decode(e.payload).ok().map(|c| (e.seq, c)))
        .take(limit + 1)
        .collect();
    let next = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|(seq, _)| *seq)
    } else {
        None
    };
    Ok((page, next))
}
