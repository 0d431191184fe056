//! Length-prefixed records for byte streams (the WebTransport control stream).
//!
//! Each record is a 4-byte big-endian length `n` followed by `n` bytes of an encoded frame.
//! The length is checked against the limit before any payload is buffered, so a peer
//! cannot make the reader allocate more than `max_len` bytes per record.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes in the length prefix.
pub const PREFIX_LEN: usize = 4;

/// Why a stream of records cannot be read further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The announced record length exceeds the limit.
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The stream ended in the middle of a record.
    #[error("stream ended inside a record ({0} bytes pending)")]
    Truncated(usize),
}

/// Prefix `frame` with its length.
pub fn encode_record(frame: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(PREFIX_LEN + frame.len());
    out.put_u32(frame.len() as u32);
    out.put_slice(frame);
    out.freeze()
}

/// Incremental decoder: feed it bytes as they arrive, take whole records out.
#[derive(Debug)]
pub struct RecordDecoder {
    buf: BytesMut,
    max_len: usize,
}

impl RecordDecoder {
    /// A decoder refusing records longer than `max_len`.
    pub fn new(max_len: usize) -> Self {
        Self { buf: BytesMut::new(), max_len }
    }

    /// Change the limit; it applies from the next record's prefix.
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len;
    }

    /// Append received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Buffered bytes not yet returned as a record.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete record, `Ok(None)` if more bytes are needed.
    pub fn next_record(&mut self) -> Result<Option<Bytes>, FramingError> {
        if self.buf.len() < PREFIX_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.max_len {
            return Err(FramingError::TooLarge { len, max: self.max_len });
        }
        if self.buf.len() < PREFIX_LEN + len {
            // Reserve only what this record still needs (bounded by max_len).
            self.buf.reserve(PREFIX_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(PREFIX_LEN);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Call at end of stream: an error if a partial record is buffered.
    pub fn finish(&self) -> Result<(), FramingError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FramingError::Truncated(self.buf.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip_byte_by_byte() {
        let mut wire = Vec::new();
        for msg in [&b"hello"[..], b"", b"world!"] {
            wire.extend_from_slice(&encode_record(msg));
        }
        let mut dec = RecordDecoder::new(16);
        let mut out = Vec::new();
        for b in wire {
            dec.extend(&[b]);
            while let Some(r) = dec.next_record().unwrap() {
                out.push(r);
            }
        }
        assert_eq!(out, vec![Bytes::from("hello"), Bytes::new(), Bytes::from("world!")]);
        dec.finish().unwrap();
    }

    #[test]
    fn oversized_and_truncated() {
        let mut dec = RecordDecoder::new(4);
        dec.extend(&encode_record(b"too long"));
        assert_eq!(dec.next_record(), Err(FramingError::TooLarge { len: 8, max: 4 }));
        let mut dec = RecordDecoder::new(16);
        dec.extend(&encode_record(b"abc")[..5]);
        assert_eq!(dec.next_record(), Ok(None));
        assert_eq!(dec.finish(), Err(FramingError::Truncated(5)));
    }
}
