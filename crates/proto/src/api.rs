//! Payloads of the services' ops, shared by the services that call each other.
//! Encoded as MessagePack bodies with named fields, like everything else.
//!
//! The client-facing ops (what a WebSocket client sends to `chat` and `loc`) are
//! documented in docs/services.md; the types here are the internal contracts, chiefly the
//! `db` service's named operations.

use serde::{Deserialize, Serialize};

/// Names of the db service's operations.
pub mod db_ops {
    /// [`super::ChatSave`] → [`super::ChatSaved`].
    pub const CHAT_SAVE: &str = "chat.save";
    /// [`super::ChatHistory`] → [`super::ChatMessages`].
    pub const CHAT_HISTORY: &str = "chat.history";
    /// [`super::LocSave`] → `{}`.
    pub const LOC_SAVE: &str = "loc.save";
    /// [`super::LocLoad`] → [`super::LocPositions`].
    pub const LOC_LOAD: &str = "loc.load";
}

/// Longest chat message text, in characters (chat and db hold it to this).
pub const MAX_TEXT_CHARS: usize = 1000;
/// Default history page.
pub const HISTORY_DEFAULT: u32 = 50;
/// Largest history page.
pub const HISTORY_MAX: u32 = 200;

/// Store one chat message; acknowledged after commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatSave {
    /// Room name.
    pub room: String,
    /// Author (the verified user).
    pub user: String,
    /// Text, stored verbatim.
    pub text: String,
    /// Time, ms since the epoch.
    pub ts: u64,
    /// The client's idempotency key: a save with the same user and key as a
    /// stored message stores nothing and answers that message's `seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The committed message's sequence number (increasing; unique across rooms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatSaved {
    /// Sequence number.
    pub seq: u64,
    /// The message was already stored (same user and idempotency key).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// Longest idempotency key of a `say`, bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 64;

/// A page of a room's history, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatHistory {
    /// Room name.
    pub room: String,
    /// How many messages at most.
    pub limit: u32,
    /// Only messages with a smaller `seq` (the next page), newest first.
    #[serde(default)]
    pub before: Option<u64>,
    /// Only messages with a larger `seq`, oldest first: what a client missed
    /// after the last one it saw (catch-up after a reconnect). Not with `before`.
    #[serde(default)]
    pub after: Option<u64>,
}

/// One stored chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Sequence number.
    pub seq: u64,
    /// Author.
    pub user: String,
    /// Text.
    pub text: String,
    /// Time, ms since the epoch.
    pub ts: u64,
}

/// Reply of `chat.history` (and of chat's `history` op).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessages {
    /// Newest first.
    pub messages: Vec<ChatMessage>,
}

/// One user's last position in a zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Zone.
    pub zone: String,
    /// User.
    pub user: String,
    /// X coordinate.
    pub x: f64,
    /// Y coordinate.
    pub y: f64,
    /// Time, ms since the epoch.
    pub ts: u64,
}

/// A user that left a zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gone {
    /// Zone.
    pub zone: String,
    /// User.
    pub user: String,
}

/// Save positions (latest wins) and forget users that left, in one transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LocSave {
    /// Positions to upsert.
    #[serde(default)]
    pub positions: Vec<Position>,
    /// Positions to delete.
    #[serde(default)]
    pub gone: Vec<Gone>,
}

/// Load a zone's last known positions, a page at a time (by user, ascending):
/// a zone's positions grow with its users, and one reply must stay under the
/// bus's message limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocLoad {
    /// Zone.
    pub zone: String,
    /// Only users after this one (the last of the previous page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Positions per page at most (1 to [`LOC_LOAD_PAGE_MAX`]; absent: the max).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Most positions one `loc.load` reply carries: a position is at most about
/// 64 + 128 bytes of names and 3 numbers, so a page stays near 250 KB, well
/// under the bus's message limit.
pub const LOC_LOAD_PAGE_MAX: u32 = 1_000;

/// Reply of `loc.load`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocPositions {
    /// The zone's positions on this page, by user.
    pub positions: Vec<Position>,
    /// More positions follow: ask again with `after` = the last user here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

/// Body of the gateway's `session.open` / `session.close` events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The connection's user.
    pub user: String,
    /// The connection's id, unique per gateway instance.
    pub session: String,
    /// The gateway instance.
    pub gateway: String,
}

/// Topic of the gateway's session-opened events.
pub const SESSION_OPEN: &str = "session.open";
/// Topic of the gateway's session-closed events.
pub const SESSION_CLOSE: &str = "session.close";

/// Topic of the gateway's grant-failed events ([`GrantFailed`]): a service's
/// reply granted a client topics that the gateway could not subscribe it to
/// (its subscription cap, or the connection closing), and the client got an
/// error instead. A service that recorded something with the grant (chat: the
/// user's presence in the room) undoes it.
pub const GRANT_FAILED: &str = "session.grant_failed";

/// Body of a [`GRANT_FAILED`] event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantFailed {
    /// The connection's user.
    pub user: String,
    /// The connection's id (as in [`Session`]).
    pub session: String,
    /// The service whose reply carried the grant.
    pub service: String,
    /// The granted topics the client was not subscribed to.
    pub topics: Vec<String>,
}

/// Topic of the broker's peer-lost events ([`PeerLost`]): a peer disconnected or
/// went silent without saying bye. Services that keep per-session state drop the
/// sessions of a lost gateway instance ([`session_gateway`]).
pub const PEER_LOST: &str = "bus.peer_lost";

/// Body of a [`PEER_LOST`] event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLost {
    /// Its service (empty for a pure client).
    pub service: String,
    /// Its instance name.
    pub instance: String,
}

/// The session id a gateway instance gives its `n`th connection.
pub fn session_id(gateway: &str, n: u64) -> String {
    format!("{gateway}-{n}")
}

/// The gateway instance a session id (from [`session_id`]) belongs to.
///
/// ```
/// use switchboard_proto::api::{session_gateway, session_id};
/// assert_eq!(session_gateway(&session_id("receive-2", 17)), Some("receive-2"));
/// assert_eq!(session_gateway("no-number-x"), None);
/// ```
pub fn session_gateway(session: &str) -> Option<&str> {
    let (gateway, n) = session.rsplit_once('-')?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(gateway)
}

#[cfg(test)]
mod history_size {
    use super::*;
    use crate::{encode, max_envelope_len, to_body, Envelope, Kind, DEFAULT_MAX_MESSAGE_LEN};

    /// The largest history page there can be (`HISTORY_MAX` messages of
    /// `MAX_TEXT_CHARS` 4-byte characters by the longest user id, the largest
    /// numbers) still fits one reply on the bus, with room for the route token:
    /// history needs no paging by bytes as long as this holds.
    #[test]
    fn the_largest_history_page_fits_the_bus_limit() {
        let message = ChatMessage {
            seq: u64::MAX,
            user: "u".repeat(crate::MAX_USER_LEN),
            text: "\u{10FFFF}".repeat(MAX_TEXT_CHARS),
            ts: u64::MAX,
        };
        let page = ChatMessages {
            messages: vec![message; HISTORY_MAX as usize],
        };
        let body = to_body(&page).unwrap();
        let reply = Envelope::reply_to(u64::MAX, &"t".repeat(crate::MAX_TRACE_LEN), body);
        let len = encode(&reply).unwrap().len();
        let max = max_envelope_len(DEFAULT_MAX_MESSAGE_LEN, Kind::Reply);
        assert!(len <= max, "{len} > {max}");
    }
}
