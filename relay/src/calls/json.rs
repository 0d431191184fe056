//! JSON views of calls, for the HTTP API and the NATS request/reply API.

use serde_json::{json, Value};
use switchboard_protocol::pb::{Call, CallMedia, CallOutcome, CallState, PartyStatus};

/// `audio`, `video`.
pub fn media_name(media: CallMedia) -> &'static str {
    match media {
        CallMedia::Video => "video",
        _ => "audio",
    }
}

/// Parse `audio` / `video`.
pub fn parse_media(s: &str) -> Option<CallMedia> {
    match s {
        "audio" | "" => Some(CallMedia::Audio),
        "video" => Some(CallMedia::Video),
        _ => None,
    }
}

/// `ringing`, `accepted`, …
pub fn state_name(state: CallState) -> &'static str {
    match state {
        CallState::Ringing => "ringing",
        CallState::Accepted => "accepted",
        CallState::Rejected => "rejected",
        CallState::Ended => "ended",
        CallState::Missed => "missed",
        CallState::Unspecified => "unspecified",
    }
}

/// `completed`, `missed`, …; `None` while the call is not over.
pub fn outcome_name(outcome: CallOutcome) -> Option<&'static str> {
    Some(match outcome {
        CallOutcome::Completed => "completed",
        CallOutcome::Missed => "missed",
        CallOutcome::Rejected => "rejected",
        CallOutcome::Cancelled => "cancelled",
        CallOutcome::Offline => "offline",
        CallOutcome::Unspecified => return None,
    })
}

fn status_name(status: PartyStatus) -> &'static str {
    match status {
        PartyStatus::Ringing => "ringing",
        PartyStatus::Accepted => "accepted",
        PartyStatus::Rejected => "rejected",
        PartyStatus::Offline => "offline",
        PartyStatus::Caller => "caller",
        PartyStatus::Missed => "missed",
        PartyStatus::Unspecified => "unknown",
    }
}

fn ms(v: u64) -> Value {
    if v == 0 {
        Value::Null
    } else {
        json!(v)
    }
}

/// A call as JSON: id, media, caller, parties, state, outcome, timestamps (Unix ms) and
/// the connected duration.
pub fn call_json(call: &Call) -> Value {
    json!({
        "id": call.id,
        "media": media_name(call.media()),
        "caller": call.caller,
        "room": call.room,
        "parties": call.parties.iter().map(|p| json!({
            "user": p.user,
            "status": status_name(p.status()),
        })).collect::<Vec<_>>(),
        "state": state_name(call.state()),
        "outcome": outcome_name(call.outcome()),
        "started_at_ms": call.created_at_ms,
        "answered_at_ms": ms(call.answered_at_ms),
        "ended_at_ms": ms(call.ended_at_ms),
        "duration_ms": call.duration_ms,
    })
}
