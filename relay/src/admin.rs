//! Operator actions (the admin API): cluster-wide room overview, kicks and server
//! messages. Commands are broadcast to every node on `<prefix>.admin.cmd`; each node
//! applies them to its own sessions.

use crate::bus::{BusError, Subscription};
use crate::context::NodeContext;
use crate::outbound::{Class, SessionCommand};
use futures_util::StreamExt;
use prost::Message as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use switchboard_protocol::pb::{
    admin_command, bus_envelope, server_frame, AdminCommand, AdminKick, AdminUserMessage, BusEnvelope, Message,
    Participant, Sender, ServerFrame,
};
use switchboard_protocol::subject::RoomChannel;
use switchboard_protocol::{encode, now_ms, ErrorCode};

/// The user id that server messages carry as their sender.
pub const SERVER_USER: &str = "server";

/// User ids the node's own token issuers (built-in accounts, development tokens,
/// `switchboard token`) never hand out: the id server messages come from, and ids users
/// would read as the operator's.
pub const RESERVED_USER_IDS: &[&str] = &[SERVER_USER, "admin", "root", "system", "switchboard"];

/// Whether `user` is one of [`RESERVED_USER_IDS`].
pub fn is_reserved_user_id(user: &str) -> bool {
    RESERVED_USER_IDS.contains(&user)
}

/// Rooms with at least one participant anywhere in the cluster, with their participant
/// counts, sorted by room id.
pub async fn rooms(node: &NodeContext) -> Result<BTreeMap<String, usize>, BusError> {
    node.bus.presence_rooms().await
}

/// Everyone in `room`, cluster-wide, by join time.
pub async fn participants(node: &NodeContext, room: &str) -> Result<Vec<Participant>, BusError> {
    let mut list = node.bus.presence_list(room).await?;
    list.sort_by_key(|p| p.joined_at_ms);
    Ok(list)
}

/// Kick matching sessions cluster-wide (see [`AdminKick`]). A kick with `ban_until_ms`
/// (and a user) is also stored, so nodes started during the ban refuse the user too.
pub async fn kick(node: &NodeContext, kick: AdminKick) -> Result<(), BusError> {
    if kick.ban_until_ms > 0 && !kick.user.is_empty() {
        crate::bans::store_ban(node, &kick.user, kick.ban_until_ms).await?;
    }
    let (user, session, room, reason, ban) =
        (kick.user.clone(), kick.session.clone(), kick.room.clone(), kick.reason.clone(), kick.ban_until_ms);
    broadcast(node, admin_command::Kind::Kick(kick)).await?;
    crate::webhooks::kicked(node, &user, &session, &room, &reason, ban);
    Ok(())
}

fn server_sender(node: &NodeContext) -> Sender {
    Sender {
        user: SERVER_USER.into(),
        session: String::new(),
        name: "Server".into(),
        node: node.config.node_id.clone(),
    }
}

fn server_message(node: &NodeContext, room: &str, payload: bytes::Bytes, kind: &str) -> Message {
    Message {
        prev_offset: 0,
        room: room.into(),
        from: Some(server_sender(node)),
        offset: 0,
        payload,
        kind: kind.into(),
        reliable: true,
        sent_at_ms: now_ms(),
    }
}

/// A backend's publish to a room ([`publish_room`]).
#[derive(Debug, Clone, Default)]
pub struct RoomPublish {
    /// The message payload.
    pub payload: bytes::Bytes,
    /// The application's message kind (at most 64 bytes).
    pub kind: String,
    /// Reliable: ordered, in the room's history, with an offset. Unreliable: live only.
    pub reliable: bool,
    /// The sender shown to participants: a user id and display name; `None` for the server
    /// ([`SERVER_USER`], "Server").
    pub from: Option<(String, String)>,
    /// Retries with the same key within two minutes are stored once (reliable messages).
    pub idempotency_key: Option<String>,
}

/// Publish to `room` with a client publish's semantics: a reliable message goes into the
/// room's history (when history is on) in order with the participants' messages, and the
/// answer is its offset once stored; otherwise it is delivered live (`None`).
pub async fn publish_room(node: &Arc<NodeContext>, room: &str, p: RoomPublish) -> Result<Option<u64>, BusError> {
    let mut msg = server_message(node, room, p.payload, &p.kind);
    msg.reliable = p.reliable;
    if let Some((user, name)) = p.from {
        msg.from = Some(Sender { user, session: String::new(), name, node: node.config.node_id.clone() });
    }
    if p.reliable && node.config.history {
        let dedupe = p.idempotency_key.map(|k| format!("api:{k}"));
        let ack = crate::rooms::append_history(node, room, msg, dedupe).await?;
        return ack.await.map(Some);
    }
    node.publish(node.subjects.room(room, RoomChannel::Msg), bus_envelope::Kind::Message(msg)).await.map(|()| None)
}

/// Publish a reliable server message to `room` (delivered to every participant, in the
/// room's history when history is on); the offset it was stored at, if stored.
pub async fn message_room(
    node: &Arc<NodeContext>,
    room: &str,
    payload: bytes::Bytes,
    kind: &str,
) -> Result<Option<u64>, BusError> {
    publish_room(node, room, RoomPublish { payload, kind: kind.into(), reliable: true, ..Default::default() }).await
}

/// Send a server message to every session of `user`, wherever connected.
pub async fn message_user(node: &NodeContext, user: &str, payload: bytes::Bytes, kind: &str) -> Result<(), BusError> {
    let msg = server_message(node, "", payload, kind);
    broadcast(node, admin_command::Kind::UserMessage(AdminUserMessage { user: user.into(), message: Some(msg) })).await
}

async fn broadcast(node: &NodeContext, kind: admin_command::Kind) -> Result<(), BusError> {
    node.publish(node.subjects.admin(), bus_envelope::Kind::Admin(AdminCommand { kind: Some(kind) })).await
}

/// Apply admin commands received from the bus to this node's sessions.
pub(crate) async fn listen(node: std::sync::Weak<NodeContext>, mut sub: Subscription) {
    while let Some(msg) = sub.next().await {
        let Some(node) = node.upgrade() else { return };
        match BusEnvelope::decode(msg.payload) {
            Ok(BusEnvelope { kind: Some(bus_envelope::Kind::Admin(cmd)), .. }) => apply(&node, cmd),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "undecodable admin command"),
        }
    }
}

fn apply(node: &Arc<NodeContext>, cmd: AdminCommand) {
    match cmd.kind {
        Some(admin_command::Kind::Kick(k)) => {
            let reason = if k.reason.is_empty() { "kicked".to_owned() } else { k.reason.clone() };
            if k.ban_until_ms > 0 && !k.user.is_empty() {
                crate::bans::ban(node, &k.user, k.ban_until_ms);
            }
            for (session, queue) in node.local_sessions(&k.user, &k.session) {
                tracing::info!(%session, room = %k.room, %reason, "kicked by an operator");
                if k.room.is_empty() {
                    queue.close(ErrorCode::Kicked, reason.clone());
                } else {
                    queue.push_command(SessionCommand::LeaveRoom { room: k.room.clone(), reason: reason.clone() });
                }
            }
        }
        Some(admin_command::Kind::UserMessage(m)) => {
            let Some(message) = m.message else { return };
            let bytes = encode(&ServerFrame { kind: Some(server_frame::Kind::Message(message)) });
            for (_, queue) in node.local_sessions(&m.user, "") {
                queue.push(Class::Data, bytes.clone(), false);
            }
        }
        None => {}
    }
}
