//! Ringing the callees of a new call, in the background of the invitation.
//!
//! Each callee's inbox is rung as a NATS request: every node with a device of the callee
//! answers, and a callee with no device anywhere gets "no responders" at once. A node that
//! holds the callee's inbox but does not answer (stalled, cut off) makes its request wait
//! for [`RING_REQUEST_TIMEOUT`]; that wait happens here, after the caller was answered, so
//! an invitation's answer never waits on the slowest node.

use super::{end, envelope, nobody_left, party_mut, transition, Actor, Events};
use crate::bus::BusError;
use crate::context::NodeContext;
use std::sync::Arc;
use std::time::Duration;
use switchboard_protocol::pb::{Call, CallEvent, CallOutcome, CallState, PartyStatus, Sender};

/// How long ringing a callee's inbox waits for a node to confirm a device.
const RING_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Ring every callee of the just-created `call`; callees nobody answers for are marked
/// `OFFLINE`, and if that leaves nobody, the call ends as `OFFLINE` (and its live state is
/// dropped once the caller's record is written).
pub(super) async fn ring_all(node: Arc<NodeContext>, call: Call, callees: Vec<String>, by: Sender) {
    let id = call.id.clone();
    let ring = CallEvent { call: Some(call), state: CallState::Ringing as i32, by: Some(by), ..Default::default() };
    let payload = envelope(&node, ring);
    let rings = callees.iter().map(|callee| {
        let subject = node.subjects.user_inbox(callee);
        let payload = payload.clone();
        let node = &node;
        async move { (callee.clone(), node.bus.request(subject, payload, RING_REQUEST_TIMEOUT).await) }
    });
    let offline: Vec<String> = futures_util::future::join_all(rings)
        .await
        .into_iter()
        .filter_map(|(callee, r)| match r {
            Ok(_) => None,
            Err(BusError::NoResponders) => Some(callee),
            // Unknown: keep ringing; the ring timeout settles it.
            Err(e) => {
                tracing::warn!(call = %id, %callee, error = %e, "ringing a callee failed");
                None
            }
        })
        .collect();
    if offline.is_empty() {
        return;
    }
    let system = Actor { user: String::new(), session: String::new(), name: String::new() };
    let marked = transition(&node, &id, &system, |call| {
        let mut events = Events::new();
        for user in &offline {
            if let Some(p) = party_mut(call, user) {
                if p.status() == PartyStatus::Ringing {
                    p.set_status(PartyStatus::Offline);
                }
            }
        }
        if call.state() == CallState::Ringing && nobody_left(call) {
            end(call, CallOutcome::Offline);
            events.push(CallState::Ended);
        }
        Ok(events)
    })
    .await;
    // A call that reached nobody is forgotten once its caller's record is written
    // (`history::settle`).
    if let Err(e) = marked {
        tracing::warn!(call = %id, error = %e, "marking offline callees failed");
    }
}
