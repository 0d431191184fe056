//! What callers can make the cluster hold, and its bounds: invitations per caller per
//! minute (each rings up to [`super::MAX_CALLEES`] users and stores a call record), and
//! which call history records are written. The history log itself is bounded per user, by
//! age, by bytes and by records in all (`StoreLimits`); this module keeps junk out of it:
//!
//! - a callee who had no device connected when rung (`OFFLINE` at the end) gets no record:
//!   the relay cannot tell a real user who is offline from an id that never existed, and a
//!   record per never-seen id would let any caller create history subjects without bound;
//! - a callee who never answered (`MISSED`: the caller cancelled, or the ring timed out)
//!   gets at most one record per caller per [`MISSED_RECORD_WINDOW`] on this node, so
//!   invite-and-cancel rounds cannot fill a victim's history with spam records.
//!
//! The caller's own history records every call, within its per-user bound.

use super::CallError;
use crate::bus::Log;
use crate::context::NodeContext;
use crate::limiter::RateLimiter;
use crate::metrics::ReasonLabel;
use std::time::{Duration, Instant};
use switchboard_protocol::pb::{Call, CallParty, PartyStatus};

/// Distinct callers (and caller-callee pairs) each limiter remembers at most (about 100
/// bytes each); past it, new keys are refused until old ones expire (fail closed).
const MAX_KEYS: usize = 100_000;
/// A callee's history gets at most one unanswered call per caller per this window.
pub const MISSED_RECORD_WINDOW: Duration = Duration::from_secs(10 * 60);
/// How often the history store's size is read into the metrics.
const USAGE_REFRESH: Duration = Duration::from_secs(2);

/// Per-node limits on invitations and history records.
pub(crate) struct CallBounds {
    invites: RateLimiter,
    missed: RateLimiter,
}

impl CallBounds {
    /// `invites_per_minute` per caller (0: unlimited).
    pub(crate) fn new(invites_per_minute: u32) -> Self {
        Self {
            invites: RateLimiter::new(invites_per_minute, Duration::from_secs(60), MAX_KEYS),
            missed: RateLimiter::new(1, MISSED_RECORD_WINDOW, MAX_KEYS),
        }
    }
}

/// Count an invitation by `caller`; `RATE_LIMITED` over the caller's rate.
pub(crate) fn check_invite(node: &NodeContext, caller: &str) -> Result<(), CallError> {
    let limiter = &node.call_bounds.invites;
    let Err(retry) = limiter.check(caller, Instant::now()) else { return Ok(()) };
    // A refusal for a caller the limiter does not know means its table is full.
    let full = limiter.len() >= MAX_KEYS;
    let reason = if full { "callers_full" } else { "rate_limited" };
    node.metrics.call_invites_refused.get_or_create(&ReasonLabel { reason }).inc();
    Err(CallError::RateLimited(format!(
        "call invitation rate exceeded ({} per minute per caller); retry in {} s",
        node.config.call_invite_rate,
        retry.as_secs().max(1)
    )))
}

/// Whether `party`'s history gets a record of the ended `call` (see the module doc).
pub(crate) fn records_for(node: &NodeContext, call: &Call, party: &CallParty) -> bool {
    let reason = match party.status() {
        PartyStatus::Offline => "offline",
        PartyStatus::Missed => {
            // `\n` cannot appear in user ids: the pair key is unambiguous.
            let pair = format!("{}\n{}", call.caller, party.user);
            if node.call_bounds.missed.check(&pair, Instant::now()).is_ok() {
                return true;
            }
            "repeat_missed"
        }
        _ => return true,
    };
    node.metrics.call_history_skipped.get_or_create(&ReasonLabel { reason }).inc();
    false
}

/// Keep the call history size metrics current, while the node lives.
pub(crate) async fn refresh_usage(node: std::sync::Weak<NodeContext>) {
    loop {
        let Some(node) = node.upgrade() else { return };
        match node.bus.log_usage(Log::CallHistory).await {
            Ok(u) => {
                let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                node.metrics.call_history_records.set(gauge(u.entries));
                node.metrics.call_history_bytes.set(gauge(u.bytes));
                node.metrics.call_history_users.set(gauge(u.keys));
            }
            Err(e) => tracing::debug!(error = %e, "reading the call history size failed"),
        }
        drop(node);
        tokio::time::sleep(USAGE_REFRESH).await;
    }
}
