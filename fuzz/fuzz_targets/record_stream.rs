//! WebTransport stream framing (length-prefixed records), fed in fuzzer-chosen chunks as the
//! edge feeds it (at most one read chunk at a time, the limit raised after the first record as
//! after Hello): never panics, never buffers more than one record plus its prefix once the
//! ready records are taken, never yields a record over the limit, and once it fails it stays
//! failed.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use switchboard_protocol::framing::RecordDecoder;

#[derive(Debug, Arbitrary)]
struct Input {
    max_len: u16,
    then_max_len: u16,
    chunks: Vec<Vec<u8>>,
}

fuzz_target!(|input: Input| {
    let mut max = usize::from(input.max_len);
    let mut dec = RecordDecoder::new(max);
    for chunk in &input.chunks {
        dec.extend(chunk);
        loop {
            match dec.next_record() {
                Ok(Some(record)) => {
                    assert!(record.len() <= max);
                    max = usize::from(input.then_max_len);
                    dec.set_max_len(max);
                }
                Ok(None) => break,
                Err(_) => {
                    assert!(dec.next_record().is_err(), "a failed stream must stay failed");
                    return;
                }
            }
        }
        assert!(dec.pending() <= max + 4, "buffered {} for a limit of {max}", dec.pending());
    }
    let _ = dec.finish();
});
