//! Errors: what decoding can say ([`ProtoError`]) and what a reply can carry
//! ([`ErrorCode`], [`ErrorBody`]).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a frame could not be encoded or decoded. Never a panic: every malformed
/// input ends here.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtoError {
    /// The frame is longer than the limit in force.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Length of the frame.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a valid MessagePack envelope.
    #[error("malformed envelope: {0}")]
    Decode(String),
    /// The envelope could not be encoded (a body type that does not serialize).
    #[error("cannot encode: {0}")]
    Encode(String),
    /// The envelope's major protocol version is not ours.
    #[error("protocol version {got:#06x} is not supported (major {major} expected)", major = crate::PROTOCOL_VERSION >> 8)]
    Version {
        /// The `v` the peer sent.
        got: u16,
    },
    /// A field holds a value outside its contract (a name too long, a bad topic).
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

/// The error codes of the contract (DESIGN.md), as they appear on the wire and to
/// WebSocket clients (snake_case strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request is malformed or a field is invalid.
    BadRequest,
    /// The request or a frame is over a size limit.
    TooLarge,
    /// No service of that name was ever declared or seen.
    UnknownService,
    /// The service has no handler for that op.
    UnknownOp,
    /// No instance became ready before the deadline, or the broker is unreachable.
    Unavailable,
    /// The request was dispatched but not answered before its deadline.
    Timeout,
    /// The instance handling the request died or left without replying.
    WorkerLost,
    /// A queue or in-flight cap is full; retry later.
    Overloaded,
    /// The peer or client did not authenticate.
    Unauthorized,
    /// Authenticated, but not allowed to do this.
    Forbidden,
    /// A bug or an unexpected failure inside the service.
    Internal,
    /// A code from a newer protocol version that this build does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire name (`"worker_lost"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnknownService => "unknown_service",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::WorkerLost => "worker_lost",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// All codes of the contract, for documentation and tests.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadRequest,
        ErrorCode::TooLarge,
        ErrorCode::UnknownService,
        ErrorCode::UnknownOp,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::WorkerLost,
        ErrorCode::Overloaded,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::Internal,
    ];
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` field of a failed reply: a code for programs, a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What kind of failure.
    pub code: ErrorCode,
    /// A human-readable explanation (never a secret, never a payload).
    #[serde(default)]
    pub message: String,
}

impl ErrorBody {
    /// An error body from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}
