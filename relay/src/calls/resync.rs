//! Calls of local users, re-read after a partition heals or the bus reconnects.
//!
//! Call events travel on core NATS (a party's inbox): one published while this node could
//! not hear the other side (a NATS cluster split, a link cut) is lost for its devices, and
//! a callee would keep ringing, or a caller stay connected to a call that ended. So a node
//! remembers every call its local devices were told about and has not seen end; after a
//! heal it reads their records again and tells its devices the state they missed.

use super::Call;
use crate::bus::Bucket;
use crate::context::NodeContext;
use crate::outbound::{Class, SessionCommand};
use prost::Message as _;
use std::collections::HashMap;
use std::sync::Mutex;
use switchboard_protocol::encode;
use switchboard_protocol::pb::{server_frame, CallEvent, CallState, ServerFrame};

/// Calls not ended that this node's devices were told about: id -> (last state told, ring
/// deadline). Bounded by the calls of the node's sessions (a call leaves it when it ends).
#[derive(Default)]
pub(crate) struct WatchedCalls(Mutex<HashMap<String, (CallState, u64)>>);

/// How long past its ring deadline a call may still be told ringing before it is re-read.
const OVERDUE_MS: u64 = 3_000;

impl WatchedCalls {
    /// Note that local devices were told `call` is in `state`.
    pub(crate) fn told(&self, call: &Call, state: CallState) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if state == CallState::Ended || call.state() == CallState::Ended {
            map.remove(&call.id);
        } else {
            map.insert(call.id.clone(), (call.state(), call.ring_deadline_ms));
        }
    }

    fn snapshot(&self, overdue_only: bool) -> Vec<(String, CallState)> {
        let now = switchboard_protocol::now_ms();
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, (state, deadline))| {
                !overdue_only || (*state == CallState::Ringing && now > deadline.saturating_add(OVERDUE_MS))
            })
            .map(|(k, (state, _))| (k.clone(), *state))
            .collect()
    }

    fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// Read every watched call's record again and tell the local devices of its parties the
/// state they missed. `false` if a record could not be read (the bus is not back yet).
pub(crate) async fn refresh(node: &NodeContext) -> bool {
    refresh_some(node, false).await
}

/// Re-read the calls still told ringing well past their ring deadline (run every
/// heartbeat): their end was decided elsewhere and its event lost, e.g. the record was
/// ended on the other side of a split after this node's repair had read it.
pub(crate) async fn sweep(node: &NodeContext) {
    refresh_some(node, true).await;
}

async fn refresh_some(node: &NodeContext, overdue_only: bool) -> bool {
    let mut complete = true;
    for (id, told) in node.watched_calls.snapshot(overdue_only) {
        let call = match node.bus.kv_get(Bucket::Calls, &id).await {
            Ok(Some(entry)) => match Call::decode(entry.value) {
                Ok(call) => call,
                Err(_) => {
                    node.watched_calls.forget(&id);
                    continue;
                }
            },
            // Gone: ended and forgotten (an offline call) or expired.
            Ok(None) => {
                node.watched_calls.forget(&id);
                continue;
            }
            Err(e) => {
                tracing::warn!(call = %id, error = %e, "re-reading a call after a heal failed");
                complete = false;
                continue;
            }
        };
        if call.state() == told {
            continue;
        }
        tracing::info!(call = %id, ?told, now = ?call.state(), "a call changed while its events could not reach us");
        let event = CallEvent { call: Some(call.clone()), state: call.state() as i32, ..Default::default() };
        let bytes = encode(&ServerFrame { kind: Some(server_frame::Kind::Call(event)) });
        for party in &call.parties {
            for (_, queue) in node.local_sessions(&party.user, "") {
                queue.push(Class::Signal, bytes.clone(), false);
                if call.state() == CallState::Ended {
                    let cmd = SessionCommand::LeaveRoom { room: call.room.clone(), reason: "call_ended".into() };
                    queue.push_command(cmd);
                }
            }
        }
        node.watched_calls.told(&call, call.state());
    }
    complete
}
