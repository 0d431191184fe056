//! Error codes and WebSocket / WebTransport close codes.

pub use crate::pb::ErrorCode;

/// The close code used when a connection ends because of `code`:
/// `4000 + code` (the private-use range of RFC 6455), and 1000 for a normal close.
pub fn close_code(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::Unspecified => 1000,
        other => 4000 + other as u16,
    }
}

/// The error code behind a close code produced by [`close_code`], if any.
pub fn error_from_close_code(close: u16) -> Option<ErrorCode> {
    if (4000..5000).contains(&close) {
        ErrorCode::try_from(i32::from(close - 4000)).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_roundtrip() {
        for code in [ErrorCode::TokenExpired, ErrorCode::SlowConsumer, ErrorCode::BadFrame] {
            assert_eq!(error_from_close_code(close_code(code)), Some(code));
        }
        assert_eq!(close_code(ErrorCode::Unspecified), 1000);
    }
}
