//! Id validation and NATS subject naming.
//!
//! Room ids, user ids, session ids and node ids all end up as single NATS subject tokens
//! (and JetStream key-value key tokens), so they are restricted to `[A-Za-z0-9_=-]`,
//! 1 to [`MAX_ID_LEN`](crate::limits::MAX_ID_LEN) bytes. That excludes the subject
//! separators and wildcards (`.`, `*`, `>`), whitespace and anything non-ASCII.

use crate::limits::MAX_ID_LEN;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Zero-length id.
    #[error("id is empty")]
    Empty,
    /// Longer than the limit.
    #[error("id is {0} bytes long (max {MAX_ID_LEN})")]
    TooLong(usize),
    /// A character outside `[A-Za-z0-9_=-]`.
    #[error("id contains the character {0:?}; allowed are A-Z a-z 0-9 _ = -")]
    BadChar(char),
}

/// Check that `id` is a safe subject token.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(id.len()));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '='))) {
        return Err(IdError::BadChar(c));
    }
    Ok(())
}

/// Check a subject prefix such as `sb` or `acme.sb`: dot-separated valid tokens.
pub fn validate_prefix(prefix: &str) -> Result<(), IdError> {
    prefix.split('.').try_for_each(validate_id)
}

/// The kinds of traffic a room carries; each is one subject under the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoomChannel {
    /// Room messages (reliable and unreliable data).
    Msg,
    /// Relayed media frames and keyframe requests.
    Media,
    /// Participant joins and leaves.
    Presence,
    /// Targeted signaling between participants.
    Signal,
}

impl RoomChannel {
    /// The last subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            RoomChannel::Msg => "msg",
            RoomChannel::Media => "media",
            RoomChannel::Presence => "presence",
            RoomChannel::Signal => "signal",
        }
    }

    /// Parse the last subject token.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "msg" => RoomChannel::Msg,
            "media" => RoomChannel::Media,
            "presence" => RoomChannel::Presence,
            "signal" => RoomChannel::Signal,
            _ => return None,
        })
    }
}

/// Subject names under a validated prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (e.g. `sb`).
    pub fn new(prefix: &str) -> Result<Self, IdError> {
        validate_prefix(prefix)?;
        Ok(Self { prefix: prefix.to_owned() })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>.room.<room>.<channel>`. `room` must be a valid id.
    pub fn room(&self, room: &str, channel: RoomChannel) -> String {
        format!("{}.room.{}.{}", self.prefix, room, channel.as_str())
    }

    /// `<prefix>.room.<room>.*`: the one subscription a node holds per room for its
    /// channels. Simulcast layers ([`Subjects::room_media_layer`]) are one token deeper, so
    /// it does not receive them: a node subscribes to each layer apart, while its local
    /// receivers want it.
    pub fn room_wildcard(&self, room: &str) -> String {
        format!("{}.room.{}.*", self.prefix, room)
    }

    /// `<prefix>.room.<room>.media.<layer>`: media frames of simulcast layer `layer`.
    pub fn room_media_layer(&self, room: &str, layer: u32) -> String {
        format!("{}.room.{}.media.{}", self.prefix, room, layer)
    }

    /// `<prefix>.node.<node>.heartbeat`.
    pub fn node_heartbeat(&self, node: &str) -> String {
        format!("{}.node.{}.heartbeat", self.prefix, node)
    }

    /// `<prefix>.node.*.heartbeat`: every node's heartbeat.
    pub fn all_heartbeats(&self) -> String {
        format!("{}.node.*.heartbeat", self.prefix)
    }

    /// `<prefix>.admin.cmd`: operator commands, received by every node.
    pub fn admin(&self) -> String {
        format!("{}.admin.cmd", self.prefix)
    }

    /// `<prefix>.user.<user>`: a user's inbox.
    pub fn user_inbox(&self, user: &str) -> String {
        format!("{}.user.{}", self.prefix, user)
    }

    /// `<prefix>.calls.request.>`: call operations over NATS request/reply
    /// (`create`, `answer`, `reject`, `cancel`, `end`), served by every node in a queue group.
    pub fn call_requests(&self) -> String {
        format!("{}.calls.request.>", self.prefix)
    }

    /// Split a room subject into `(room, channel)`.
    pub fn parse_room_subject<'a>(&self, subject: &'a str) -> Option<(&'a str, RoomChannel)> {
        let rest = subject.strip_prefix(self.prefix.as_str())?.strip_prefix(".room.")?;
        let (room, channel) = rest.split_once('.')?;
        Some((room, RoomChannel::parse(channel)?))
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self { prefix: "sb".into() }
    }
}

/// NATS subject matching: does `subject` match `pattern` (with `*` and `>` wildcards)?
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("demo-room_1=").is_ok());
        for bad in ["", "a.b", "*", ">", "a b", "é", "a\nb", "a/b"] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(validate_id(&"x".repeat(129)), Err(IdError::TooLong(129)));
    }

    #[test]
    fn subjects_roundtrip() {
        let s = Subjects::new("acme.sb").unwrap();
        let subj = s.room("demo", RoomChannel::Media);
        assert_eq!(subj, "acme.sb.room.demo.media");
        assert_eq!(s.parse_room_subject(&subj), Some(("demo", RoomChannel::Media)));
        assert!(subject_matches(&s.room_wildcard("demo"), &subj));
        assert!(!subject_matches(&s.room_wildcard("demo2"), &subj));
        let layer = s.room_media_layer("demo", 2);
        assert_eq!(layer, "acme.sb.room.demo.media.2");
        assert!(!subject_matches(&s.room_wildcard("demo"), &layer), "layers are subscribed apart");
        assert_eq!(s.parse_room_subject(&layer), None);
        assert!(Subjects::new("sb.").is_err());
        assert!(Subjects::new("s*").is_err());
    }

    #[test]
    fn wildcard_matching() {
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches("a.b", "a.b"));
    }
}
