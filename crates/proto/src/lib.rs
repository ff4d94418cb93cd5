//! The Switchboard wire contract.
//!
//! Every message on the bus is one MessagePack frame holding an [`Envelope`], encoded
//! with **named fields** (a map, never a positional array) so that a newer minor
//! version can add fields that older peers skip. This crate has no I/O: it is the
//! types, the limits and the one [`encode`]/[`decode`] pair everything else uses.
//!
//! # Layout
//!
//! - [`envelope`]: [`Envelope`], its [`Kind`]s, the borrowed [`Head`] the broker
//!   routes on, [`encode`]/[`decode`].
//! - `head`: the fast path of [`decode_head`] (the shape our encoder writes,
//!   read without serde; anything else goes through serde as before).
//! - [`error`]: [`ProtoError`] (what decoding can say) and [`ErrorCode`]/[`ErrorBody`]
//!   (what a reply can say).
//! - [`control`]: bodies of the control kinds (`hello`, `$health`, broker stats).
//! - [`topic`]: topic and pattern syntax for pub/sub.
//! - [`auth`]: the HMAC proof a peer gives in `hello`.
//! - [`admin`]: what `$broker` and `main` take and answer, instance states.
//! - [`api`]: payloads of the services' ops that services call each other with
//!   (`chat.save`, `loc.load`, …).
//! - [`text`]: which characters user-written text (messages, names) may not hold.
//!
//! # Framing on the ZeroMQ socket
//!
//! Peers hold one DEALER socket connected to the broker's ROUTER. A message a peer
//! sends is one frame (an encoded envelope), except a `reply`, which is two: the
//! 8-byte route token the broker attached to the request, then the envelope. The
//! broker sends a worker a `request` as the same two frames, and everything else as
//! one frame. See [`ROUTE_TOKEN_LEN`].
#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod control;
pub mod envelope;
pub mod error;
mod head;
pub mod text;
pub mod topic;

pub use control::{BrokerStats, Health, Hello, Info, InstanceInfo, PeerState, Welcome};
pub use envelope::{decode, decode_head, encode, from_body, to_body, Envelope, Grants, Head, Kind};
pub use error::{ErrorBody, ErrorCode, ProtoError};
pub use serde_bytes::ByteBuf;

use std::time::Duration;

/// Protocol version carried in every envelope's `v`: the high byte is the major
/// version (a peer rejects another major), the low byte the minor version (a newer
/// minor only adds optional fields, which older peers skip). 1.1 added `session`;
/// 1.2 added `grants`; 1.3 answers a `subscribe` that carries an `id`.
pub const PROTOCOL_VERSION: u16 = 0x0103;

/// The broker's endpoint when none is configured (loopback: without a secret the
/// broker binds nothing else).
pub const DEFAULT_BROKER: &str = "tcp://127.0.0.1:5555";

/// Hard upper bound on one encoded envelope, whatever a process is configured with.
/// Bus sockets are configured lower ([`DEFAULT_MAX_MESSAGE_LEN`]); this bound only
/// guarantees that [`decode`] never looks at more than this many bytes.
pub const MAX_MESSAGE_LEN: usize = 16 * 1024 * 1024;

/// Default cap on one message on a bus socket (1 MiB). A peer that announces a
/// longer ZeroMQ frame is disconnected before any buffer is reserved for it.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 1024 * 1024;

/// Longest service, instance or op name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Longest topic, topic pattern or routing key, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;

/// Longest trace id, in bytes.
pub const MAX_TRACE_LEN: usize = 64;

/// Length of the route token frame that precedes a request to a worker and the
/// worker's reply to it.
pub const ROUTE_TOKEN_LEN: usize = 8;

/// What one ZeroMQ frame costs against a bus socket's message cap beyond its
/// bytes. The receive cap (`vendor/zeromq`, patch 1) counts every frame of a
/// multipart message with this overhead, so a sender must count the same way.
pub const FRAME_OVERHEAD: usize = 64;

/// Largest encoded envelope of `kind` that crosses every hop of its way under a
/// message cap of `limit` bytes (the cap every bus socket and the broker set,
/// announced in [`Welcome::max_message`]).
///
/// A request or a reply travels beside a route token on one hop (broker →
/// worker `[token, request]`, worker → broker `[token, reply]`); anything else
/// travels alone. A sender that stays under this never makes a receiver's cap
/// close its connection: over it, the message fails with `too_large` instead.
///
/// ```
/// use switchboard_proto::{max_envelope_len, Kind, DEFAULT_MAX_MESSAGE_LEN as L};
/// assert_eq!(max_envelope_len(L, Kind::Request), L - 8 - 2 * 64);
/// assert_eq!(max_envelope_len(L, Kind::Event), L - 64);
/// ```
pub const fn max_envelope_len(limit: usize, kind: Kind) -> usize {
    let frames = match kind {
        Kind::Request | Kind::Reply => ROUTE_TOKEN_LEN + 2 * FRAME_OVERHEAD,
        _ => FRAME_OVERHEAD,
    };
    limit.saturating_sub(frames)
}

/// Default heartbeat interval between a peer and the broker (both ways).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// Default number of heartbeat intervals without any frame after which the other
/// side is declared dead.
pub const HEARTBEAT_LIVENESS: u32 = 3;

/// The broker's own service name: it answers `stats`, `ls` and `owner`.
pub const BROKER_SERVICE: &str = "$broker";

/// Milliseconds since the Unix epoch, the unit of [`Envelope::deadline`].
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Checks a room, zone or similar client-chosen name that also becomes a topic
/// token: 1 to [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `_` and `-`.
///
/// ```
/// assert!(switchboard_proto::validate_token("lobby-2").is_ok());
/// assert!(switchboard_proto::validate_token("a.b").is_err());
/// ```
///
/// # Errors
///
/// [`ProtoError::Invalid`] naming what is wrong.
pub fn validate_token(name: &str) -> Result<(), ProtoError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ProtoError::Invalid("must be 1 to 64 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ProtoError::Invalid(
            "may hold only ASCII letters, digits, _ and -",
        ));
    }
    Ok(())
}

/// Longest user id (a token's `sub`), in bytes.
pub const MAX_USER_LEN: usize = 128;

/// Checks a user id (a client token's `sub`): 1 to [`MAX_USER_LEN`] bytes of ASCII
/// letters, digits and `_ - @ : + = |`. A user id becomes a topic token
/// (`user.<id>`), so it may never hold `.`, `*`, `>` or whitespace: those would
/// widen or split the topic.
///
/// ```
/// assert!(switchboard_proto::validate_user("auth0|ada@example-com").is_ok());
/// assert!(switchboard_proto::validate_user("ada.lovelace").is_err());
/// assert!(switchboard_proto::validate_user(">").is_err());
/// ```
///
/// # Errors
///
/// [`ProtoError::Invalid`] naming what is wrong.
pub fn validate_user(user: &str) -> Result<(), ProtoError> {
    if user.is_empty() || user.len() > MAX_USER_LEN {
        return Err(ProtoError::Invalid("user id must be 1 to 128 bytes"));
    }
    if !user.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'@' | b':' | b'+' | b'=' | b'|')
    }) {
        return Err(ProtoError::Invalid(
            "user id may hold only ASCII letters, digits and _ - @ : + = |",
        ));
    }
    Ok(())
}

/// Whether a bus endpoint is reachable from this host only: `ipc://`, or TCP
/// on a loopback address. Anything else crosses a network, where the bus
/// secret is required on every hop.
pub fn is_local_endpoint(endpoint: &str) -> bool {
    if endpoint.starts_with("ipc://") {
        return true;
    }
    let Some(rest) = endpoint.strip_prefix("tcp://") else {
        return false;
    };
    let host = match rest.rsplit_once(':') {
        Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => rest,
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks a service, instance or op name: 1 to [`MAX_NAME_LEN`] bytes of ASCII
/// letters, digits and `_ - . $`.
///
/// ```
/// assert!(switchboard_proto::validate_name("loc01").is_ok());
/// assert!(switchboard_proto::validate_name("$echo").is_ok());
/// assert!(switchboard_proto::validate_name("no spaces").is_err());
/// ```
///
/// # Errors
///
/// [`ProtoError::Invalid`] naming what is wrong.
pub fn validate_name(name: &str) -> Result<(), ProtoError> {
    if name.is_empty() {
        return Err(ProtoError::Invalid("empty name"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ProtoError::Invalid("name longer than 64 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'))
    {
        return Err(ProtoError::Invalid(
            "name may hold only ASCII letters, digits and _ - . $",
        ));
    }
    Ok(())
}
