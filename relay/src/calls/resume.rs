//! Call state for a client that reconnected: call events are published once to the users'
//! inboxes, so a transition made while a device was between connections (the other party
//! ended the call, another device accepted) would never reach it. `Hello.calls` names the
//! calls the client still thinks are live; the new session gets each one's current state.

use super::{get, is_party, CallError};
use crate::context::NodeContext;
use crate::outbound::{Class, Outbound};
use switchboard_protocol::encode;
use switchboard_protocol::pb::{server_frame, CallEvent, ServerFrame};

/// Calls of one `Hello` looked up (more are ignored): a client has few live calls.
pub const MAX_RESUME_CALLS: usize = 16;

/// Queue a [`CallEvent`] with the current state of each of `calls` that `user` is a party
/// of (`by` empty: a state, not a transition) on the session's `outbound`. Unknown calls
/// (forgotten, or never this user's) are skipped: a client learns nothing about others'
/// calls. Call after the user's inbox is attached, so a transition after the lookup still
/// arrives live, after this state.
pub async fn replay(node: &NodeContext, user: &str, calls: &[String], outbound: &Outbound) {
    for id in calls.iter().take(MAX_RESUME_CALLS) {
        let call = match get(node, id).await {
            Ok(call) if is_party(&call, user) => call,
            Ok(_) | Err(CallError::NotFound(_)) | Err(CallError::Invalid(_)) => continue,
            Err(e) => {
                tracing::warn!(call = %id, error = %e, "cannot look up a resumed call");
                continue;
            }
        };
        let event = CallEvent { state: call.state, call: Some(call), by: None, answered_elsewhere: false };
        let frame = encode(&ServerFrame { kind: Some(server_frame::Kind::Call(event)) });
        outbound.push(Class::Signal, frame, false);
    }
}
