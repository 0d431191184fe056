//! User inboxes: `<prefix>.user.<user>` reaches every device of a user, on any node.
//!
//! A node holds one inbox subscription per user with at least one local session (like
//! rooms: never one per session), and hands what arrives to that user's local sessions:
//! call events (marking `answered_elsewhere` on the devices that did not accept) and call
//! signaling. A ring is a *request* on the inbox: every node with a device of the callee
//! answers, and a callee with no device anywhere gets "no responders" at once.

use crate::bus::{BusError, BusMessage, Subscription};
use crate::context::NodeContext;
use crate::outbound::{Class, SessionCommand};
use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;
use std::collections::HashMap;
use std::sync::Arc;
use switchboard_protocol::encode;
use switchboard_protocol::pb::{bus_envelope, server_frame, BusEnvelope, CallState, ServerFrame};
use tokio::task::JoinHandle;

/// The inbox subscriptions of a node: user -> (local sessions, reader task).
#[derive(Default)]
pub(crate) struct Inboxes {
    map: tokio::sync::Mutex<HashMap<String, (usize, JoinHandle<()>)>>,
}

/// Make sure this node receives `user`'s inbox (call once per session of the user). Returns
/// once the bus knows the subscription, so a ring right after the session's `Welcome`
/// finds it.
pub(crate) async fn attach(node: &Arc<NodeContext>, user: &str) -> Result<(), BusError> {
    let mut map = node.inboxes.map.lock().await;
    if let Some((sessions, _)) = map.get_mut(user) {
        *sessions += 1;
        return Ok(());
    }
    let sub = node.bus.subscribe(node.subjects.user_inbox(user)).await?;
    node.bus.flush().await?;
    let task = node.runtime.spawn(read_inbox(Arc::downgrade(node), user.to_owned(), sub));
    map.insert(user.to_owned(), (1, task));
    Ok(())
}

/// A session of `user` ended: drop the inbox subscription with the user's last session.
pub(crate) async fn detach(node: &NodeContext, user: &str) {
    let mut map = node.inboxes.map.lock().await;
    if let Some((sessions, _)) = map.get_mut(user) {
        *sessions -= 1;
        if *sessions == 0 {
            if let Some((_, task)) = map.remove(user) {
                task.abort(); // drops the subscription: unsubscribes
            }
        }
    }
}

async fn read_inbox(node: std::sync::Weak<NodeContext>, user: String, mut sub: Subscription) {
    while let Some(msg) = sub.next().await {
        let Some(node) = node.upgrade() else { return };
        handle(&node, &user, msg).await;
    }
}

fn frame(kind: server_frame::Kind) -> Bytes {
    encode(&ServerFrame { kind: Some(kind) })
}

async fn handle(node: &Arc<NodeContext>, user: &str, msg: BusMessage) {
    let env = match BusEnvelope::decode(msg.payload) {
        Ok(env) => env,
        Err(e) => {
            tracing::warn!(subject = %msg.subject, error = %e, "dropping undecodable inbox envelope");
            return;
        }
    };
    let sessions = node.local_sessions(user, "");
    match env.kind {
        Some(bus_envelope::Kind::Call(event)) => {
            let Some(call) = event.call.clone() else { return };
            let by = event.by.clone().unwrap_or_default();
            if !sessions.is_empty() {
                node.watched_calls.told(&call, event.state());
            }
            for (sid, queue) in &sessions {
                let mut ev = event.clone();
                ev.answered_elsewhere = event.state() == CallState::Accepted && by.user == user && by.session != *sid;
                queue.push(Class::Signal, frame(server_frame::Kind::Call(ev)), false);
                if event.state() == CallState::Ended {
                    let cmd = SessionCommand::LeaveRoom { room: call.room.clone(), reason: "call_ended".into() };
                    queue.push_command(cmd);
                }
            }
            if event.state() == CallState::Ringing && call.caller != user {
                // Every node that rings a device also enforces the ring timeout, so the
                // call ends as missed even if the caller's node is gone.
                super::schedule_timeout(node, &call);
            }
        }
        Some(bus_envelope::Kind::Signal(sig)) => {
            let Some(event) = sig.event else { return };
            let bytes = frame(server_frame::Kind::Signal(event));
            for (sid, queue) in &sessions {
                if sig.to_session.is_empty() || *sid == sig.to_session {
                    queue.push(Class::Signal, bytes.clone(), false);
                }
            }
        }
        _ => {}
    }
    if let Some(reply) = msg.reply {
        // A ring: say how many devices this node reached (0 still proves the user is
        // attached here, e.g. a session between Welcome and registration).
        let _ = node.bus.publish(reply, Bytes::from(sessions.len().to_string())).await;
    }
}
