//! Id and subject validation: whatever `validate_id` accepts is one safe NATS subject token
//! (no `.`, `*`, `>`, whitespace or non-ASCII), so a room or user id can never widen or
//! redirect a subscription.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::limits::MAX_ID_LEN;
use switchboard_protocol::subject::{subject_matches, validate_id, RoomChannel, Subjects};

fuzz_target!(|data: &[u8]| {
    let Ok(id) = std::str::from_utf8(data) else { return };
    if validate_id(id).is_err() {
        return;
    }
    assert!(!id.is_empty() && id.len() <= MAX_ID_LEN);
    assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=')), "{id:?}");
    let subjects = Subjects::default();
    let subject = subjects.room(id, RoomChannel::Msg);
    assert_eq!(subjects.parse_room_subject(&subject), Some((id, RoomChannel::Msg)));
    assert!(!subject_matches(&subjects.room_wildcard(id), &subjects.room(&format!("{id}x"), RoomChannel::Msg)));
    assert!(!subject_matches(&subjects.room_wildcard(&format!("{id}x")), &subject));
});
