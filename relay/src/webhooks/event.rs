//! Webhook events: their types, JSON payloads and ids.
//!
//! An event's id is derived from what it reports (`participant.left` of session S in room R
//! that joined at T), so two nodes that report the same fact (both reaped the participants
//! of a dead node) produce the same id: the delivery store keeps one, and a receiver can
//! drop a repeated delivery by id. Operator actions, which happen once, get a random id.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use switchboard_protocol::pb::{Call, Participant};

/// One event, as POSTed: `{"id", "type", "created_at_ms", "node", "data"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unique per fact: `evt_` and 32 hex digits.
    pub id: String,
    /// One of [`super::config::EVENT_TYPES`].
    pub kind: &'static str,
    /// When the node saw it (Unix ms).
    pub created_at_ms: u64,
    /// The node that reported it.
    pub node: String,
    /// Type-specific fields.
    pub data: Value,
}

impl Event {
    /// The JSON body sent to endpoints.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "type": self.kind,
            "created_at_ms": self.created_at_ms,
            "node": self.node,
            "data": self.data,
        })
    }
}

/// `evt_` + the first 128 bits of SHA-256 over the fact's parts.
fn fact_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    let mut id = String::from("evt_");
    for b in &digest[..16] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// `evt_` + 128 random bits.
fn random_id() -> String {
    format!("evt_{:032x}", rand::random::<u128>())
}

fn participant_json(room: &str, p: &Participant) -> Value {
    json!({
        "room": room,
        "user": p.user,
        "session": p.session,
        "name": p.name,
        "node": p.node,
        "joined_at_ms": p.joined_at_ms,
    })
}

/// A builder bound to the reporting node and the current time.
pub(crate) struct Facts<'a> {
    pub node: &'a str,
    pub now_ms: u64,
}

impl Facts<'_> {
    fn event(&self, kind: &'static str, id: String, data: Value) -> Event {
        Event { id, kind, created_at_ms: self.now_ms, node: self.node.to_owned(), data }
    }

    /// The first participant of `room` joined (cluster-wide); `started_at_ms` identifies
    /// this run of the room.
    pub fn room_started(&self, room: &str, started_at_ms: u64) -> Event {
        let id = fact_id(&["room.started", room, &started_at_ms.to_string()]);
        self.event("room.started", id, json!({ "room": room, "started_at_ms": started_at_ms }))
    }

    /// The last participant of `room` left.
    pub fn room_finished(&self, room: &str, started_at_ms: u64) -> Event {
        let id = fact_id(&["room.finished", room, &started_at_ms.to_string()]);
        let duration_ms = self.now_ms.saturating_sub(started_at_ms);
        self.event(
            "room.finished",
            id,
            json!({ "room": room, "started_at_ms": started_at_ms, "finished_at_ms": self.now_ms, "duration_ms": duration_ms }),
        )
    }

    /// A session joined `room`.
    pub fn participant_joined(&self, room: &str, p: &Participant) -> Event {
        let id = fact_id(&["participant.joined", room, &p.session, &p.joined_at_ms.to_string()]);
        self.event("participant.joined", id, participant_json(room, p))
    }

    /// A session left `room` (`reason`: `left`, `disconnected`, `kicked`, `node_lost`, ...).
    pub fn participant_left(&self, room: &str, p: &Participant, reason: &str) -> Event {
        let id = fact_id(&["participant.left", room, &p.session, &p.joined_at_ms.to_string()]);
        let mut data = participant_json(room, p);
        data["reason"] = json!(reason);
        data["left_at_ms"] = json!(self.now_ms);
        self.event("participant.left", id, data)
    }

    /// A call event (`call.created`, `call.answered`, `call.ended`): the call as the
    /// HTTP API shows it (parties, state, outcome, times, duration).
    pub fn call(&self, kind: &'static str, call: &Call) -> Event {
        let id = fact_id(&[kind, &call.id]);
        self.event(kind, id, json!({ "call": crate::calls::json::call_json(call) }))
    }

    /// An operator banned `user` until `until_ms`.
    pub fn user_banned(&self, user: &str, until_ms: u64, reason: &str) -> Event {
        let id = random_id();
        self.event("user.banned", id, json!({ "user": user, "until_ms": until_ms, "reason": reason }))
    }

    /// An operator removed sessions (a user's, or one session) from a room or the node.
    pub fn user_kicked(&self, user: &str, session: &str, room: &str, reason: &str) -> Event {
        let id = random_id();
        self.event("user.kicked", id, json!({ "user": user, "session": session, "room": room, "reason": reason }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_fact_gets_the_same_id_on_every_node() {
        let p = Participant { user: "u".into(), session: "s".into(), joined_at_ms: 5, ..Default::default() };
        let a = Facts { node: "n1", now_ms: 10 }.participant_left("r", &p, "node_lost");
        let b = Facts { node: "n2", now_ms: 11 }.participant_left("r", &p, "node_lost");
        assert_eq!(a.id, b.id);
        let again = Participant { joined_at_ms: 6, ..p.clone() };
        assert_ne!(a.id, Facts { node: "n1", now_ms: 10 }.participant_left("r", &again, "left").id);
        assert_ne!(a.id, Facts { node: "n1", now_ms: 10 }.participant_joined("r", &p).id);
        assert!(a.id.starts_with("evt_") && a.id.len() == 36);
    }

    #[test]
    fn payloads_carry_the_type_and_data() {
        let e = Facts { node: "n1", now_ms: 1_000 }.room_finished("r", 400);
        let v = e.to_json();
        assert_eq!(v["type"], "room.finished");
        assert_eq!(v["data"]["duration_ms"], 600);
        assert_eq!(v["node"], "n1");
    }
}
