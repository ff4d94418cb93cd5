//! The bus's one error type.

use switchboard_proto::{ErrorBody, ErrorCode, ProtoError};

/// A failed request or bus operation: a contract [`ErrorCode`] (what callers
/// branch on) and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    /// What kind of failure.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

impl Error {
    /// An error from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `bad_request` with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// `internal` with a message.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl From<ErrorBody> for Error {
    fn from(body: ErrorBody) -> Self {
        Self::new(body.code, body.message)
    }
}

impl From<Error> for ErrorBody {
    fn from(e: Error) -> Self {
        ErrorBody::new(e.code, e.message)
    }
}

/// A body or envelope that does not encode or decode is an `internal` error: a
/// peer (or this process) broke the contract, not the caller.
impl From<ProtoError> for Error {
    fn from(e: ProtoError) -> Self {
        Self::internal(e.to_string())
    }
}
