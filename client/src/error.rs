//! Client errors.

use switchboard_protocol::ErrorCode;

/// Everything that can go wrong for a client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `ws://`, `wss://` or `https://`.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// A certificate hash is not 64 hex digits.
    #[error("invalid certificate hash {0:?}: expected 64 hex digits")]
    InvalidCertHash(String),
    /// Connecting failed.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The server refused the session (bad token, unsupported version, draining, ...).
    #[error("session refused: {code:?}: {message}")]
    Rejected {
        /// The server's error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The server refused the session for now (e.g. a node admitting new sessions at its
    /// rate limit during a reconnect storm) and said when to retry.
    #[error("session refused for now: {code:?}: {message} (retry after {retry_after:?})")]
    RetryLater {
        /// The server's error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
        /// When to retry: the `GoAway` hint before the refusal.
        retry_after: std::time::Duration,
    },
    /// The server answered a request with an error.
    #[error("server error {code:?}: {message}")]
    Server {
        /// The server's error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// No answer within the time limit.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The connection is closed.
    #[error("connection closed ({code:?}): {reason}")]
    Closed {
        /// The error code behind the close, if the server gave one.
        code: Option<ErrorCode>,
        /// The reason.
        reason: String,
    },
    /// The server sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The server's error code, if this error carries one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Rejected { code, .. }
            | ClientError::Server { code, .. }
            | ClientError::RetryLater { code, .. } => Some(*code),
            ClientError::Closed { code, .. } => *code,
            _ => None,
        }
    }

    /// When the server asked to retry, if it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ClientError::RetryLater { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}
