//! The Switchboard wire protocol.
//!
//! * [`pb`]: the protobuf messages (generated from `proto/switchboard.proto` by prost).
//! * [`framing`]: length-prefixed records for byte streams (the WebTransport control stream).
//! * [`websocket`]: WebSocket frame boundaries, for refusing an oversized frame at its header.
//! * [`subject`]: id validation and NATS subject naming.
//! * [`limits`]: size limits shared by server and clients.
//! * [`codes`]: error codes and the WebSocket close codes derived from them.
//!
//! This crate is pure: no I/O, no async.

pub mod codes;
pub mod framing;
pub mod limits;
pub mod subject;
pub mod websocket;

/// Generated protobuf types (package `switchboard.v1`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/switchboard.v1.rs"));
}

pub use codes::{close_code, ErrorCode};
pub use prost::Message as ProstMessage;

/// The protocol version this crate speaks. Sent in `Hello` and `Welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Decode a client frame, mapping failures to a protocol error code.
pub fn decode_client_frame(buf: &[u8]) -> Result<pb::ClientFrame, DecodeError> {
    if buf.len() > limits::MAX_FRAME_BYTES {
        return Err(DecodeError::TooLarge(buf.len()));
    }
    let frame = <pb::ClientFrame as prost::Message>::decode(buf).map_err(DecodeError::Malformed)?;
    if frame.kind.is_none() {
        return Err(DecodeError::Empty);
    }
    Ok(frame)
}

/// Decode a server frame (used by clients).
pub fn decode_server_frame(buf: &[u8]) -> Result<pb::ServerFrame, DecodeError> {
    <pb::ServerFrame as prost::Message>::decode(buf).map_err(DecodeError::Malformed)
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Larger than [`limits::MAX_FRAME_BYTES`].
    #[error("frame of {0} bytes exceeds the limit of {max} bytes", max = limits::MAX_FRAME_BYTES)]
    TooLarge(usize),
    /// Not a valid protobuf encoding of the expected message.
    #[error("malformed frame: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// A valid message without any known kind (unknown frame type or empty frame).
    #[error("frame has no known kind")]
    Empty,
}

impl DecodeError {
    /// The error code a client receives for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge(_) => ErrorCode::FrameTooLarge,
            DecodeError::Malformed(_) | DecodeError::Empty => ErrorCode::BadFrame,
        }
    }
}

/// Encode any protobuf message into a fresh `Bytes`.
pub fn encode<M: prost::Message>(msg: &M) -> bytes::Bytes {
    bytes::Bytes::from(msg.encode_to_vec())
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::client_frame::Kind;

    #[test]
    fn roundtrip_client_frame() {
        let f = pb::ClientFrame {
            id: 7,
            kind: Some(Kind::Publish(pb::Publish {
                room: "demo".into(),
                payload: bytes::Bytes::from_static(b"hi"),
                reliable: true,
                kind: "chat".into(),
            })),
        };
        let bytes = encode(&f);
        assert_eq!(decode_client_frame(&bytes).unwrap(), f);
    }

    #[test]
    fn rejects_garbage_empty_and_oversized() {
        assert!(matches!(decode_client_frame(&[0xff, 0xff, 0xff]), Err(DecodeError::Malformed(_))));
        assert!(matches!(decode_client_frame(&[]), Err(DecodeError::Empty)));
        let big = vec![0u8; limits::MAX_FRAME_BYTES + 1];
        assert_eq!(decode_client_frame(&big).unwrap_err().code(), ErrorCode::FrameTooLarge);
    }
}
