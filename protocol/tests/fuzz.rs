//! Property-based fuzzing of everything that parses client input: frame decoding, stream
//! framing and id/subject validation. Bounded case counts run in the test command; longer
//! runs: `PROPTEST_CASES=1000000 cargo test -p switchboard-protocol --test fuzz --release`.

use bytes::Bytes;
use proptest::prelude::*;
use switchboard_protocol::framing::{encode_record, RecordDecoder};
use switchboard_protocol::limits::{MAX_FRAME_BYTES, MAX_ID_LEN};
use switchboard_protocol::pb::{client_frame, ClientFrame, Publish};
use switchboard_protocol::subject::{subject_matches, validate_id, RoomChannel, Subjects};
use switchboard_protocol::websocket::{frame_header, FrameSplitter, MAX_HEADER_LEN};
use switchboard_protocol::{decode_client_frame, encode, ErrorCode};

/// 2,000 cases per property in the test command; `PROPTEST_CASES` for longer runs.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Arbitrary bytes never panic the decoder; failures map to BAD_FRAME.
    #[test]
    fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Err(e) = decode_client_frame(&bytes) {
            prop_assert_eq!(e.code(), ErrorCode::BadFrame);
        }
    }

    /// A valid frame with bytes flipped or cut still never panics.
    #[test]
    fn mutated_frames_fail_cleanly(
        room in "[A-Za-z0-9_=-]{1,40}",
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
    ) {
        let frame = ClientFrame { id: 7, kind: Some(client_frame::Kind::Publish(Publish {
            room, payload: Bytes::from(payload), reliable: true, kind: "chat".into() })) };
        let mut bytes = encode(&frame).to_vec();
        prop_assert_eq!(decode_client_frame(&bytes).ok(), Some(frame));
        for (i, b) in flips {
            let n = bytes.len();
            bytes[i % n] ^= b;
        }
        bytes.truncate(cut % (bytes.len() + 1));
        let _ = decode_client_frame(&bytes);
    }

    /// Records survive any chunking of the stream; the decoder buffers at most one record.
    #[test]
    fn records_survive_any_chunking(
        records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..12),
        cuts in proptest::collection::vec(1usize..64, 1..40),
    ) {
        let stream: Vec<u8> = records.iter().flat_map(|r| encode_record(r).to_vec()).collect();
        let mut dec = RecordDecoder::new(1024);
        let mut out = Vec::new();
        let mut at = 0;
        let mut cut = cuts.iter().cycle();
        while at < stream.len() {
            let end = (at + cut.next().copied().unwrap_or(1)).min(stream.len());
            dec.extend(&stream[at..end]);
            at = end;
            while let Some(r) = dec.next_record().expect("valid stream") {
                out.push(r.to_vec());
            }
            prop_assert!(dec.pending() <= 1024 + 4);
        }
        prop_assert!(dec.finish().is_ok());
        prop_assert_eq!(out, records);
    }

    /// Any bytes in any chunking into the WebSocket edge's frame reading: never a panic, never
    /// more held than one frame within the limit plus its header, a frame over the limit
    /// refused at its header, and every byte taken is handed out or held, in order.
    #[test]
    fn websocket_frame_reading_stays_within_its_bound(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        cuts in proptest::collection::vec(1usize..300, 1..40),
        max in 0usize..1024,
    ) {
        let mut splitter = FrameSplitter::new(max);
        let mut handed_out = Vec::new();
        let mut at = 0;
        let mut cut = cuts.iter().cycle();
        'stream: while at < bytes.len() {
            let end = (at + cut.next().copied().unwrap_or(1)).min(bytes.len());
            let mut chunk = bytes::BytesMut::from(&bytes[at..end]);
            loop {
                let before = chunk.len();
                let result = splitter.next_frame(&mut chunk);
                at = end - chunk.len();
                prop_assert!(chunk.len() <= before);
                match result {
                    Ok(Some(frame)) => {
                        let (header, len) = frame_header(&frame).expect("a whole frame");
                        prop_assert!(len <= max as u64);
                        prop_assert_eq!(frame.len() as u64, header as u64 + len);
                        handed_out.extend_from_slice(&frame);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        // Refused at the header: the header is whole, its payload not needed.
                        let (header, len) = frame_header(&bytes[handed_out.len()..]).expect("a whole header");
                        prop_assert!(len > max as u64);
                        prop_assert!(at <= handed_out.len() + header);
                        break 'stream;
                    }
                }
                prop_assert!(splitter.pending() <= MAX_HEADER_LEN + max);
            }
            prop_assert_eq!(&bytes[..handed_out.len()], &handed_out[..]);
        }
    }

    /// Garbage streams never panic; an oversized length prefix is refused before buffering.
    #[test]
    fn garbage_streams_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut dec = RecordDecoder::new(MAX_FRAME_BYTES);
        dec.extend(&bytes);
        loop {
            match dec.next_record() {
                Ok(Some(r)) => prop_assert!(r.len() <= MAX_FRAME_BYTES),
                Ok(None) => break,
                Err(_) => break,
            }
        }
    }

    /// Whatever validate_id accepts is one safe subject token.
    #[test]
    fn accepted_ids_are_single_safe_tokens(id in ".{0,200}") {
        if validate_id(&id).is_ok() {
            prop_assert!(!id.is_empty() && id.len() <= MAX_ID_LEN);
            prop_assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=')));
            let subjects = Subjects::default();
            let subject = subjects.room(&id, RoomChannel::Msg);
            prop_assert_eq!(subject.split('.').count(), 4);
            prop_assert_eq!(subjects.parse_room_subject(&subject), Some((id.as_str(), RoomChannel::Msg)));
            // A room's subscription never matches another room's traffic.
            let other_room = subjects.room(&format!("{}x", id), RoomChannel::Msg);
            prop_assert!(!subject_matches(&subjects.room_wildcard(&id), &other_room));
        } else {
            prop_assert!(id.is_empty() || id.len() > MAX_ID_LEN
                || id.chars().any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '='))));
        }
    }

    /// Injection attempts are always refused.
    #[test]
    fn subject_injection_is_refused(
        a in "[A-Za-z0-9]{0,10}",
        bad in prop::sample::select(vec![".", "*", ">", " ", "\t", "\n", "é", "\u{0}", "/", "\u{202e}"]),
        b in "[A-Za-z0-9]{0,10}",
    ) {
        let id = format!("{a}{bad}{b}");
        prop_assert!(validate_id(&id).is_err());
    }
}
