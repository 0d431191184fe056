//! The WebSocket edge's frame reading (protocol::websocket::FrameSplitter, which the edge's
//! `Incoming` runs before actix-http decodes a frame), fed fuzzer-chosen bytes in fuzzer-chosen
//! chunks: never panics, never holds more than one frame within the limit plus its header,
//! refuses an over-limit frame at its header, and hands out exactly the bytes it took.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_protocol::websocket::{frame_header, FrameSplitter, SplitError, MAX_HEADER_LEN};

#[derive(Debug, Arbitrary)]
struct Input {
    /// The limit before the first frame, and after it (as the edge raises it after Hello).
    first_max: u16,
    then_max: u16,
    chunks: Vec<Vec<u8>>,
}

fuzz_target!(|input: Input| {
    let mut max = usize::from(input.first_max);
    let mut splitter = FrameSplitter::new(max);
    let mut taken = Vec::new();
    let mut handed_out = Vec::new();
    for chunk in &input.chunks {
        let mut rest = BytesMut::from(&chunk[..]);
        loop {
            let before = rest.len();
            let result = splitter.next_frame(&mut rest);
            taken.extend_from_slice(&chunk[chunk.len() - before..chunk.len() - rest.len()]);
            match result {
                Ok(Some(frame)) => {
                    let (header, len) = frame_header(&frame).expect("a whole frame has a header");
                    assert!(len <= max as u64, "a frame of {len} bytes passed a limit of {max}");
                    assert_eq!(frame.len() as u64, header as u64 + len, "a frame is exactly header + payload");
                    handed_out.extend_from_slice(&frame);
                    max = usize::from(input.then_max);
                    splitter.set_max_payload(max);
                }
                Ok(None) => {
                    assert!(rest.is_empty(), "more input is only asked for when it is used up");
                    break;
                }
                Err(SplitError::TooLarge { len, max: limit }) => {
                    assert!(len > limit as u64);
                    assert_eq!(splitter.pending(), 0, "a refused frame leaves nothing held");
                    return;
                }
            }
            assert!(
                splitter.pending() <= MAX_HEADER_LEN + max,
                "held {} bytes for a limit of {max}",
                splitter.pending()
            );
        }
    }
    // Lossless: what was handed out plus what is held is exactly what was taken.
    assert_eq!(handed_out.len() + splitter.pending(), taken.len());
    assert_eq!(&taken[..handed_out.len()], &handed_out[..]);
});
