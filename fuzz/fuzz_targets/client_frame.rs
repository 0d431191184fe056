//! Client frame decoding: any bytes either decode or fail with `BAD_FRAME`, never panic;
//! whatever decodes survives a re-encode unchanged (no state the encoder cannot express).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::{decode_client_frame, encode, ErrorCode};

fuzz_target!(|data: &[u8]| {
    match decode_client_frame(data) {
        Ok(frame) => {
            let again = decode_client_frame(&encode(&frame)).expect("a re-encoded frame decodes");
            assert_eq!(again, frame);
        }
        Err(e) => assert_eq!(e.code(), ErrorCode::BadFrame),
    }
});
