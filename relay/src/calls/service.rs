//! Calls over NATS request/reply, for backends and native NATS clients.
//!
//! Every node serves `<prefix>.calls.request.<op>` in the queue group `switchboard-calls`
//! (each request is handled by one node). The body is JSON with the caller's token:
//!
//! ```json
//! {"token": "<jwt>", "callees": ["bob"], "media": "video"}   // op = create
//! {"token": "<jwt>", "call": "<id>"}                         // op = answer | reject | cancel | end
//! ```
//!
//! The reply is `{"ok": true, "call": {...}}` or
//! `{"ok": false, "error": {"code": "CALL_STATE", "message": "..."}}`. The same rules and
//! token checks apply as for sessions; events go to the parties' inboxes.

use super::{Actor, CallError};
use crate::bus::{BusMessage, Subscription};
use crate::context::NodeContext;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use switchboard_protocol::ErrorCode;

/// The queue group all nodes serve call requests in.
pub const QUEUE_GROUP: &str = "switchboard-calls";

#[derive(Deserialize)]
struct Request {
    token: String,
    #[serde(default)]
    callees: Vec<String>,
    #[serde(default)]
    media: String,
    #[serde(default)]
    call: String,
}

fn error(code: ErrorCode, message: impl std::fmt::Display) -> serde_json::Value {
    let name = code.as_str_name().strip_prefix("ERROR_CODE_").unwrap_or(code.as_str_name());
    json!({"ok": false, "error": {"code": name, "message": message.to_string()}})
}

/// Serve call requests until the subscription ends.
pub(crate) async fn serve(node: std::sync::Weak<NodeContext>, mut sub: Subscription) {
    while let Some(msg) = sub.next().await {
        let Some(node) = node.upgrade() else { return };
        // One task per request: an invite waits for rings, others must not queue behind it.
        node.runtime.clone().spawn(async move {
            let Some(reply) = msg.reply.clone() else { return };
            let body = handle(&node, &msg).await;
            let _ = node.bus.publish(reply, Bytes::from(body.to_string())).await;
        });
    }
}

async fn handle(node: &Arc<NodeContext>, msg: &BusMessage) -> serde_json::Value {
    let op = msg.subject.rsplit('.').next().unwrap_or_default();
    let req: Request = match serde_json::from_slice(&msg.payload) {
        Ok(r) => r,
        Err(e) => return error(ErrorCode::BadFrame, format!("invalid JSON request: {e}")),
    };
    let claims = match node.verifier.verify(&req.token) {
        Ok(c) => c,
        Err(e) => return error(e.code(), e),
    };
    if !claims.may_call() {
        return error(ErrorCode::Forbidden, "token does not grant calls");
    }
    let actor = Actor { user: claims.sub.clone(), session: String::new(), name: claims.display_name().to_owned() };
    let result = match op {
        "create" => match super::json::parse_media(&req.media) {
            Some(media) => super::invite(node, &actor, &req.callees, media).await,
            None => Err(CallError::Invalid(format!("media {:?}: audio or video", req.media))),
        },
        "answer" => super::answer(node, &actor, &req.call, true).await,
        "reject" => super::answer(node, &actor, &req.call, false).await,
        "cancel" => super::cancel(node, &actor, &req.call).await,
        "end" => super::hang_up(node, &actor, &req.call).await,
        other => {
            Err(CallError::Invalid(format!("unknown call operation {other:?}: create, answer, reject, cancel, end")))
        }
    };
    match result {
        Ok(call) => json!({"ok": true, "call": super::json::call_json(&call)}),
        Err(e) => error(e.code(), e),
    }
}
