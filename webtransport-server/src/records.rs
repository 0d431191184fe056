//! Length-prefixed records laid out for quinn in few, large segments.
//!
//! quinn keeps a stream's unacknowledged data as the list of `Bytes` it was given and finds
//! the data of each packet by walking that list from its start (`SendBuffer::get` in
//! quinn-proto 0.11): with a prefix and a small frame as two segments per record, a busy
//! stream holds hundreds of tiny segments and every packet walks them all. Profiled on the
//! 100-subscriber fan-out, that walk was a quarter of the node's CPU. So small frames are
//! copied, with their prefixes, into one buffer per batch; only frames large enough that the
//! copy would cost more than the walk go to quinn as their own segment (they may be shared
//! by many recipients).

use bytes::{BufMut, Bytes, BytesMut};
use switchboard_relay::TransportError;

/// Frames from this size on go to quinn as their own segment instead of being copied.
pub const COPY_BELOW: usize = 4096;

/// Builds the segments of a batch of records.
#[derive(Default)]
pub struct Records {
    segments: Vec<Bytes>,
    pending: BytesMut,
}

impl Records {
    /// Appends one record (4-byte big-endian length, then `frame`).
    pub fn push(&mut self, frame: Bytes) -> Result<(), TransportError> {
        let len = u32::try_from(frame.len()).map_err(|_| TransportError::TooLarge(frame.len()))?;
        self.pending.put_u32(len);
        if frame.len() < COPY_BELOW {
            self.pending.extend_from_slice(&frame);
        } else {
            self.segments.push(self.pending.split().freeze());
            self.segments.push(frame);
        }
        Ok(())
    }

    /// Nothing pushed.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.pending.is_empty()
    }

    /// The segments to hand to quinn, in order.
    pub fn finish(mut self) -> Vec<Bytes> {
        if !self.pending.is_empty() {
            self.segments.push(self.pending.split().freeze());
        }
        self.segments
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn concat(segments: &[Bytes]) -> Vec<u8> {
        segments.iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn small_frames_share_one_segment() {
        let mut r = Records::default();
        assert!(r.is_empty());
        r.push(Bytes::from_static(b"ab")).unwrap();
        r.push(Bytes::from_static(b"c")).unwrap();
        let segments = r.finish();
        assert_eq!(segments.len(), 1);
        assert_eq!(concat(&segments), b"\0\0\0\x02ab\0\0\0\x01c");
    }

    #[test]
    fn large_frames_are_not_copied() {
        let big = Bytes::from(vec![7u8; COPY_BELOW]);
        let mut r = Records::default();
        r.push(Bytes::from_static(b"x")).unwrap();
        r.push(big.clone()).unwrap();
        r.push(Bytes::from_static(b"y")).unwrap();
        let segments = r.finish();
        assert_eq!(segments.len(), 3);
        assert_eq!(segments[1].as_ptr(), big.as_ptr());
        let mut want = b"\0\0\0\x01x".to_vec();
        want.extend_from_slice(&(COPY_BELOW as u32).to_be_bytes());
        want.extend_from_slice(&big);
        want.extend_from_slice(b"\0\0\0\x01y");
        assert_eq!(concat(&segments), want);
    }
}
