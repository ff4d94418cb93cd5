//! Topics and subscription patterns.
//!
//! A topic is one or more non-empty tokens separated by `.` (`chat.room.lobby`),
//! at most [`crate::MAX_TOPIC_LEN`] bytes, with no whitespace. A pattern is a topic
//! in which a token may be `*` (exactly one token) and the last token may be `>`
//! (one or more tokens) — the NATS syntax:
//!
//! ```
//! use switchboard_proto::topic::matches;
//! assert!(matches("chat.room.*", "chat.room.lobby"));
//! assert!(!matches("chat.room.*", "chat.room.lobby.x"));
//! assert!(matches("loc.>", "loc.zone1"));
//! assert!(matches("loc.>", "loc.a.b"));
//! assert!(!matches("loc.>", "loc"));
//! ```

use crate::{ProtoError, MAX_TOPIC_LEN};

/// Checks a topic (no wildcards) or, with `pattern`, a subscription pattern.
///
/// # Errors
///
/// [`ProtoError::Invalid`] naming the rule broken.
pub fn validate(topic: &str, pattern: bool) -> Result<(), ProtoError> {
    if topic.is_empty() {
        return Err(ProtoError::Invalid("empty topic"));
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(ProtoError::Invalid("topic longer than 256 bytes"));
    }
    let mut tokens = topic.split('.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() {
            return Err(ProtoError::Invalid("topic has an empty token"));
        }
        if token
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(ProtoError::Invalid("topic holds whitespace"));
        }
        let wild = token == "*" || token == ">";
        if !wild && token.contains(['*', '>']) {
            return Err(ProtoError::Invalid("wildcards must be whole tokens"));
        }
        if wild && !pattern {
            return Err(ProtoError::Invalid(
                "a published topic cannot hold wildcards",
            ));
        }
        if token == ">" && tokens.peek().is_some() {
            return Err(ProtoError::Invalid("`>` must be the last token"));
        }
    }
    Ok(())
}

/// Whether a valid `pattern` matches a valid `topic`.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('.');
    let mut t = topic.split('.');
    loop {
        match (p.next(), t.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// Whether a pattern holds a wildcard (and so cannot be looked up exactly).
pub fn is_wildcard(pattern: &str) -> bool {
    pattern.split('.').any(|t| t == "*" || t == ">")
}
