//! WebSocket frame boundaries (RFC 6455 §5.2), read from the header alone.
//!
//! A server must refuse a frame whose header announces more than it accepts as soon as the
//! header has arrived, not once the payload has: a client can announce 2^63 bytes and then
//! stream them. [`FrameSplitter`] cuts a byte stream into whole frames and holds at most one
//! frame (header and payload, within the limit) at a time; decoding a whole frame (opcode,
//! unmasking, control-frame rules) is left to the WebSocket codec.

use bytes::{Buf, BytesMut};

/// The longest frame header: 2 bytes, an 8-byte extended length and a 4-byte mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// A frame that cannot be read further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// The header announces a payload over the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced payload length.
        len: u64,
        /// The limit in force.
        max: usize,
    },
}

/// Bytes in the header of the frame starting at `buf`: known from its first two bytes.
fn header_len(buf: &[u8]) -> usize {
    let Some(&second) = buf.get(1) else { return 2 };
    let extended = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

/// The header length and payload length of the frame at the start of `buf`, once its whole
/// header is there (`None` before).
pub fn frame_header(buf: &[u8]) -> Option<(usize, u64)> {
    let header = header_len(buf);
    if buf.len() < header || buf.len() < 2 {
        return None;
    }
    let len = match buf[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        127 => u64::from_be_bytes([buf[2], buf[3], buf[4], buf[5], buf[6], buf[7], buf[8], buf[9]]),
        short => u64::from(short),
    };
    Some((header, len))
}

/// Cuts a byte stream into whole WebSocket frames, refusing a frame over the limit at its
/// header. Holds at most [`MAX_HEADER_LEN`] + the limit bytes: input beyond the current frame
/// stays with the caller.
#[derive(Debug)]
pub struct FrameSplitter {
    buf: BytesMut,
    max_payload: usize,
}

impl FrameSplitter {
    /// A splitter refusing frames whose payload is over `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        Self { buf: BytesMut::new(), max_payload }
    }

    /// Change the limit; it applies from the next frame header read.
    pub fn set_max_payload(&mut self, max_payload: usize) {
        self.max_payload = max_payload;
    }

    /// Bytes of the current, incomplete frame held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The whole length (header and payload) of the frame at the start of `buf`, if its
    /// header is complete; an error if it is over the limit.
    fn whole_len(&self, buf: &[u8]) -> Result<Option<usize>, SplitError> {
        match frame_header(buf) {
            Some((_, len)) if len > self.max_payload as u64 => Err(SplitError::TooLarge { len, max: self.max_payload }),
            // Within the limit, so it fits a usize.
            Some((header, len)) => Ok(Some(header + len as usize)),
            None => Ok(None),
        }
    }

    /// Take from `input` what the current frame needs (advancing it), and return the frame,
    /// header included, once it is whole. `Ok(None)` means `input` is used up. A frame that
    /// lies whole in `input` is split off it without a copy.
    pub fn next_frame(&mut self, input: &mut BytesMut) -> Result<Option<BytesMut>, SplitError> {
        loop {
            let needed = match self.whole_len(&self.buf) {
                Ok(Some(total)) if self.buf.len() >= total => return Ok(Some(std::mem::take(&mut self.buf))),
                Ok(Some(total)) => total,
                Ok(None) => header_len(&self.buf),
                Err(e) => {
                    self.buf = BytesMut::new();
                    return Err(e);
                }
            };
            if input.is_empty() {
                return Ok(None);
            }
            if self.buf.is_empty() {
                if let Some(total) = self.whole_len(input)? {
                    if input.len() >= total {
                        return Ok(Some(input.split_to(total)));
                    }
                }
            }
            let take = (needed - self.buf.len()).min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            input.advance(take);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame with `payload`, the length encoded the shortest way.
    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x82];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(payload);
        out
    }

    fn split_all(splitter: &mut FrameSplitter, wire: &[u8], chunk: usize) -> Result<Vec<usize>, SplitError> {
        let mut out = Vec::new();
        for piece in wire.chunks(chunk) {
            let mut input = BytesMut::from(piece);
            while let Some(f) = splitter.next_frame(&mut input)? {
                out.push(f.len());
            }
            assert!(input.is_empty());
        }
        Ok(out)
    }

    #[test]
    fn frames_come_out_whole_at_any_chunking() {
        let sizes = [0usize, 1, 125, 126, 300, 65_535, 65_536, 70_000];
        let wire: Vec<u8> = sizes.iter().flat_map(|&n| frame(&vec![7; n])).collect();
        let expected: Vec<usize> = sizes.iter().map(|&n| frame(&vec![7; n]).len()).collect();
        for chunk in [1, 2, 3, 13, 1000, wire.len()] {
            let mut s = FrameSplitter::new(70_000);
            assert_eq!(split_all(&mut s, &wire, chunk).unwrap(), expected, "chunk {chunk}");
            assert_eq!(s.pending(), 0);
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_at_its_header() {
        // Only the header of a 2^40-byte frame: refused before any payload.
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        header.extend_from_slice(&[0; 4]);
        for chunk in [1, header.len()] {
            let mut s = FrameSplitter::new(1024);
            let err = split_all(&mut s, &header, chunk).unwrap_err();
            assert_eq!(err, SplitError::TooLarge { len: 1 << 40, max: 1024 });
            assert_eq!(s.pending(), 0);
        }
    }

    #[test]
    fn holds_at_most_one_frame_of_the_limit() {
        let mut s = FrameSplitter::new(1000);
        let mut wire = frame(&[1; 1000]);
        wire.extend(frame(&[2; 1000]));
        let mut input = BytesMut::from(&wire[..1500]);
        let first = s.next_frame(&mut input).unwrap().expect("first frame");
        assert_eq!(first.len(), 1008);
        assert_eq!(s.next_frame(&mut input).unwrap(), None);
        assert!(s.pending() <= MAX_HEADER_LEN + 1000);
    }

    #[test]
    fn the_limit_can_change_between_frames() {
        let mut s = FrameSplitter::new(10);
        let mut input = BytesMut::from(&frame(&[0; 10])[..]);
        assert!(s.next_frame(&mut input).unwrap().is_some());
        s.set_max_payload(100);
        let mut input = BytesMut::from(&frame(&[0; 100])[..]);
        assert!(s.next_frame(&mut input).unwrap().is_some());
    }
}
