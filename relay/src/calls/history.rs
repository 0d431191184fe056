//! A call's history records: written by the node whose transition ended the call, and
//! re-driven from the calls bucket when that node died (or its appends failed) first.
//!
//! The ending transition stores, with the `ENDED` state, which parties get a record and
//! that their records are still pending: a [`Book`] appended to the encoded call. Its
//! fields have numbers `Call` does not use, so a plain `Call` decode (clients' events,
//! history records, nodes that predate the book) skips them, and any re-encoded `Call`
//! drops them. The winner then appends the records (dedupe id `<call>:<user>`), announces
//! the end, and stores the call again without the book ("settled").
//!
//! Every node follows the bucket's changes in one shared work queue
//! ([`crate::bus::Bus::kv_work`]): a change is taken by one node and comes back until it is
//! done, so a node's death loses none. A call still pending [`GRACE`] after it ended has
//! its records appended by whichever node holds the change (the same dedupe ids: a record
//! the winner did write is stored once; past the log's two-minute dedupe window the log is
//! read first), its `ENDED` event published again (a party may hear it twice when only the
//! winner's appends failed), and is settled.

use super::{bounds, publish_event};
use crate::bus::{Bucket, BusError, KvChange, Log};
use crate::context::NodeContext;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use prost::Message as _;
use std::sync::{Arc, Weak};
use std::time::Duration;
use switchboard_protocol::now_ms;
use switchboard_protocol::pb::{Call, CallOutcome, CallState, Sender};

/// How long after a call ended its records are left to the node that ended it.
const GRACE: Duration = Duration::from_secs(3);
/// Within this age of the end, the log's dedupe window (two minutes) still covers a record
/// the winner wrote; later the log is read before appending.
const DEDUPE_SAFE: Duration = Duration::from_secs(100);
/// Pause before following the work queue again after the bus failed.
const REFOLLOW: Duration = Duration::from_secs(1);
/// One change's handling: under the queue's redelivery time, so it is not handed out twice.
const HANDLING_LIMIT: Duration = Duration::from_secs(8);
/// The work queue's name (the consumer is `<prefix>_calls_history`).
const QUEUE: &str = "history";
/// Test-only: abort the process when a transition has ended a call, before its history is
/// appended (makes the window a node may die in deterministic for `tests/tests/races.rs`).
const CRASH_ENV: &str = "SWITCHBOARD_TEST_CRASH_BEFORE_HISTORY_APPEND";

/// The history bookkeeping stored after an ended call (see the module doc).
#[derive(Clone, PartialEq, prost::Message)]
struct Book {
    /// Parties whose history gets the call.
    #[prost(string, repeated, tag = "1000")]
    history_for: Vec<String>,
    /// The records are not known to be written yet.
    #[prost(bool, tag = "1001")]
    pending: bool,
}

/// The stored value of a call that just ended, with its records pending, and the parties
/// who get one. Decided before the compare-and-set: a node losing the race may have used
/// up a missed-call allowance ([`bounds::records_for`]) for nothing, which only makes its
/// spam bound stricter.
pub(super) fn ended_value(node: &NodeContext, call: &Call) -> (Bytes, Vec<String>) {
    let history_for: Vec<String> =
        call.parties.iter().filter(|p| bounds::records_for(node, call, p)).map(|p| p.user.clone()).collect();
    let book = Book { history_for: history_for.clone(), pending: true };
    let mut buf = BytesMut::with_capacity(call.encoded_len() + book.encoded_len());
    call.encode(&mut buf).expect("BytesMut grows");
    book.encode(&mut buf).expect("BytesMut grows");
    (buf.freeze(), history_for)
}

/// Test-only crash point, right after a transition ended a call (see [`CRASH_ENV`]).
pub(super) fn crash_point() {
    static CRASH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *CRASH.get_or_init(|| std::env::var_os(CRASH_ENV).is_some_and(|v| v == "1")) {
        eprintln!("{CRASH_ENV}: aborting before appending call history");
        std::process::abort();
    }
}

/// Append the ended `call` to the history of each of `users`, all in flight at once. True
/// when every record is stored.
pub(super) async fn record(node: &NodeContext, call: &Call, users: &[String]) -> bool {
    let record = Bytes::from(call.encode_to_vec());
    let mut acks = Vec::with_capacity(users.len());
    let mut ok = true;
    for user in users {
        let dedupe = Some(format!("{}:{user}", call.id));
        match node.bus.log_append(Log::CallHistory, user, record.clone(), dedupe).await {
            Ok(ack) => acks.push((user, ack)),
            Err(e) => {
                ok = false;
                tracing::warn!(call = %call.id, %user, error = %e, "recording call history failed");
            }
        }
    }
    for (user, ack) in acks {
        if let Err(e) = ack.await {
            ok = false;
            tracing::warn!(call = %call.id, %user, error = %e, "recording call history failed");
        }
    }
    ok
}

/// Store the ended call without its pending records (they are written), or forget it
/// altogether when it reached nobody. Losing the race means another node settled it.
pub(super) async fn settle(node: &NodeContext, call: &Call, revision: u64) {
    let settled = if call.outcome() == CallOutcome::Offline {
        // Nothing can happen to a call that reached nobody: its live state is not kept
        // (what an invitation to unknown ids stores is the caller's record).
        node.bus.kv_purge(Bucket::Calls, &call.id).await
    } else {
        node.bus.kv_update(Bucket::Calls, &call.id, Bytes::from(call.encode_to_vec()), revision).await.map(|_| ())
    };
    match settled {
        Ok(()) | Err(BusError::Conflict(_)) => {}
        Err(e) => tracing::debug!(call = %call.id, error = %e, "settling an ended call failed (it is re-driven)"),
    }
}

/// Re-drive the pending records of calls whose ending node did not write them, while the
/// node lives (nothing to do on a bus without a shared work queue).
pub(crate) async fn redrive(node: Weak<NodeContext>) {
    loop {
        let Some(strong) = node.upgrade() else { return };
        let work = strong.bus.kv_work(Bucket::Calls, QUEUE).await;
        drop(strong);
        match work {
            Ok(None) => return,
            Ok(Some(mut changes)) => {
                while let Some(change) = changes.next().await {
                    let Some(strong) = node.upgrade() else { return };
                    match change {
                        Ok(change) => handle(&strong, change).await,
                        Err(e) => {
                            tracing::debug!(error = %e, "the call history work queue failed; following it again");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "following the call history work queue failed"),
        }
        tokio::time::sleep(REFOLLOW).await;
    }
}

/// One change of the calls bucket: done at once unless it is an ended call with records
/// still pending.
async fn handle(node: &Arc<NodeContext>, change: KvChange) {
    let again = match tokio::time::timeout(HANDLING_LIMIT, pending_records(node, &change)).await {
        Ok(Ok(again)) => again,
        Ok(Err(e)) => {
            tracing::warn!(call = %change.key, error = %e, "re-driving call history failed; retrying");
            Some(REFOLLOW)
        }
        Err(_) => Some(REFOLLOW),
    };
    let key = change.key.clone();
    let replied = match again {
        None => change.done().await,
        Some(delay) => change.again_in(delay).await,
    };
    if let Err(e) = replied {
        tracing::debug!(call = %key, error = %e, "answering the work queue failed (it is redelivered)");
    }
}

/// Write `change`'s pending records if it is due. `Some(delay)`: look again then.
async fn pending_records(node: &Arc<NodeContext>, change: &KvChange) -> Result<Option<Duration>, BusError> {
    let Some(value) = &change.value else { return Ok(None) };
    let (Ok(call), Ok(book)) = (Call::decode(value.clone()), Book::decode(value.clone())) else {
        return Ok(None); // not ours to judge: transitions report bad records
    };
    if call.state() != CallState::Ended || !book.pending {
        return Ok(None);
    }
    // A later write (the settle, a purge) supersedes this one.
    match node.bus.kv_get(Bucket::Calls, &change.key).await? {
        Some(entry) if entry.revision == change.revision => {}
        _ => return Ok(None),
    }
    let age = Duration::from_millis(now_ms().saturating_sub(call.ended_at_ms));
    if age < GRACE {
        return Ok(Some(GRACE - age));
    }
    tracing::warn!(call = %call.id, ended_ago = ?age, "call history was not recorded by the node that ended the call; recording it");
    let mut users = Vec::with_capacity(book.history_for.len());
    for user in book.history_for {
        if age < DEDUPE_SAFE || !has_record(node, &user, &call.id).await? {
            users.push(user);
        }
    }
    if !record(node, &call, &users).await {
        return Ok(Some(REFOLLOW));
    }
    node.metrics.call_history_redriven.inc();
    // The ending node may have died before it reported the end too (same event id if not).
    crate::webhooks::call(node, "call.ended", &call);
    for party in &call.parties {
        publish_event(node, &party.user, &call, CallState::Ended, &Sender::default()).await;
    }
    settle(node, &call, change.revision).await;
    Ok(None)
}

/// Whether `user`'s history holds a record of `call_id`.
async fn has_record(node: &NodeContext, user: &str, call_id: &str) -> Result<bool, BusError> {
    let entries = node.bus.log_read(Log::CallHistory, user, 0, usize::MAX).await?;
    Ok(entries.iter().any(|e| Call::decode(e.payload.clone()).is_ok_and(|c| c.id == call_id)))
}
