//! How a command fails, and the exit status each failure gives (see the
//! crate docs); the reply helpers that turn a peer's bad answer into one.

use anyhow::Context;
use switchboard_bus::proto::{self, ErrorCode};
use switchboard_bus::svc;

/// Process exit status for a contract error code.
pub(crate) fn exit_code(code: ErrorCode) -> i32 {
    match code {
        ErrorCode::BadRequest => 10,
        ErrorCode::TooLarge => 11,
        ErrorCode::UnknownService => 12,
        ErrorCode::UnknownOp => 13,
        ErrorCode::Unavailable => 14,
        ErrorCode::Timeout => 15,
        ErrorCode::WorkerLost => 16,
        ErrorCode::Overloaded => 17,
        ErrorCode::Unauthorized => 18,
        ErrorCode::Forbidden => 19,
        ErrorCode::Internal => 20,
        _ => 21,
    }
}

/// No broker to talk to (sysexits' EX_UNAVAILABLE).
const EXIT_UNREACHABLE: i32 = 69;

/// A reply that is not what the protocol says (sysexits' EX_PROTOCOL).
const EXIT_MALFORMED_REPLY: i32 = 76;
/// What was asked for is not there (a trace no process holds): sysexits'
/// EX_NOINPUT, not bad usage.
const EXIT_NOT_FOUND: i32 = 66;

/// Exit status of a command whose reader went away (`sbctl logs | head`), as a
/// process killed by SIGPIPE would have: 128 + 13.
const EXIT_BROKEN_PIPE: i32 = 141;

/// Rust ignores SIGPIPE, so printing to a closed pipe panics in `println!`.
/// Without `unsafe` (forbidden here) the signal cannot be restored; a panic
/// hook turns that one panic into the quiet exit a Unix tool makes.
pub(crate) fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("Broken pipe") {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
        default(info);
    }));
}

/// Why a command failed: each kind has its exit status ([`Failure::report`]).
pub(crate) enum Failure {
    /// The peer answered with an error (exit: the error code's number).
    Reply(switchboard_bus::Error),
    /// Bad usage (exit 64).
    Usage(anyhow::Error),
    /// No broker (exit 69).
    Unreachable(String),
    /// A peer's reply that does not decode as the protocol says.
    Malformed(String),
    /// Nothing holds what was asked for (exit 66).
    NotFound(String),
}

/// `reply`'s body decoded as `T`; a body that is not is the peer's fault.
pub(crate) fn decode_reply<T: serde::de::DeserializeOwned>(
    reply: &proto::Envelope,
    what: &str,
) -> Result<T, Failure> {
    proto::from_body(&reply.body).map_err(|e| {
        Failure::Malformed(format!(
            "malformed reply from {} to {what}: {e} (docs/protocol.md gives its shape)",
            if reply.from.is_empty() {
                "?"
            } else {
                &reply.from
            }
        ))
    })
}

impl From<switchboard_bus::Error> for Failure {
    fn from(e: switchboard_bus::Error) -> Self {
        Failure::Reply(e)
    }
}

/// Request data given as JSON, as a MessagePack body.
pub(crate) fn json_to_body(data: &str) -> Result<Vec<u8>, Failure> {
    let value: serde_json::Value = serde_json::from_str(data)
        .with_context(|| format!("data is not JSON: {data}"))
        .map_err(Failure::Usage)?;
    proto::to_body(&value).map_err(|e| Failure::Usage(e.into()))
}

/// A MessagePack body as JSON, for printing.
pub(crate) fn body_to_json(body: &[u8]) -> serde_json::Value {
    if body.is_empty() {
        return serde_json::Value::Null;
    }
    rmp_serde::from_slice(body).unwrap_or_else(|_| serde_json::json!({ "raw_bytes": body.len() }))
}

impl Failure {
    /// Prints the failure on stderr; returns the exit status.
    pub(crate) fn report(self) -> i32 {
        match self {
            Failure::Reply(e) => {
                eprintln!("error: {e}");
                exit_code(e.code)
            }
            Failure::Usage(e) => {
                eprintln!("error: {e:#}");
                svc::EXIT_USAGE
            }
            Failure::Unreachable(e) => {
                eprintln!("error: {e}");
                EXIT_UNREACHABLE
            }
            Failure::Malformed(e) => {
                eprintln!("error: {e}");
                EXIT_MALFORMED_REPLY
            }
            Failure::NotFound(e) => {
                eprintln!("error: {e}");
                EXIT_NOT_FOUND
            }
        }
    }
}
