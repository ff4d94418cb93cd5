//! The chat service: rooms, messages, history, presence, direct messages, relay.
//!
//! Its ops, what each takes and answers, are one table in docs/services.md
//! (chat); the handlers below are named after them.
//!
//! `relay` calls another service on the caller's behalf, so it applies the same
//! client policy as the gateway ([`switchboard_bus::policy`], `--policy`: give chat
//! the gateway's file): what a client may not call directly it may not call
//! through chat either, and the call carries the target's routing key (a relayed
//! `loc.move` reaches the instance that owns its zone).
//!
//! Presence is kept per client session (a user with two connections stays in a
//! room until both leave or close) and cleaned up on the gateway's
//! `session.close` events. The gateway routes chat requests by `room` (keyed
//! routing), so each room's presence lives on one chat instance.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use switchboard_bus::policy::Policy;
use switchboard_bus::proto::{self, api};
use switchboard_bus::{Error, HandlerResult, Reply, Request, Service, SessionsEnded};

/// The limits chat holds clients to (defined with the types they limit).
pub use api::{HISTORY_DEFAULT, HISTORY_MAX, MAX_TEXT_CHARS};

/// Prefix of the idempotency keys chat makes for saves without a client key;
/// client keys are ASCII letters, digits, `_` and `-`, so they never start with it.
pub const OWN_KEY_PREFIX: &str = "~";

/// Who is in which room: room → user → that user's sessions in the room.
#[derive(Default)]
pub struct Rooms {
    rooms: Mutex<HashMap<String, BTreeMap<String, BTreeSet<String>>>>,
}

impl Rooms {
    fn join(&self, room: &str, user: &str, session: &str) -> Vec<String> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let members = rooms.entry(room.to_owned()).or_default();
        members
            .entry(user.to_owned())
            .or_default()
            .insert(session.to_owned());
        members.keys().cloned().collect()
    }

    fn leave(&self, room: &str, user: &str, session: &str) -> Vec<String> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let Some(members) = rooms.get_mut(room) else {
            return Vec::new();
        };
        if let Some(sessions) = members.get_mut(user) {
            sessions.remove(session);
            if sessions.is_empty() {
                members.remove(user);
            }
        }
        let left: Vec<String> = members.keys().cloned().collect();
        if members.is_empty() {
            rooms.remove(room);
        }
        left
    }

    fn who(&self, room: &str) -> Vec<String> {
        let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms
            .get(room)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets every session `ended` covers (a lost gateway's); returns how many.
    fn close_covered(&self, ended: &SessionsEnded) -> usize {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = 0;
        rooms.retain(|_, members| {
            members.retain(|_, sessions| {
                let before = sessions.len();
                sessions.retain(|s| !ended.covers(s));
                closed += before - sessions.len();
                !sessions.is_empty()
            });
            !members.is_empty()
        });
        closed
    }

    /// Forgets a closed session everywhere.
    fn close_session(&self, user: &str, session: &str) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms.retain(|_, members| {
            if let Some(sessions) = members.get_mut(user) {
                sessions.remove(session);
                if sessions.is_empty() {
                    members.remove(user);
                }
            }
            !members.is_empty()
        });
    }
}

#[derive(Deserialize)]
struct RoomArg {
    room: String,
}

#[derive(Deserialize)]
struct SayArg {
    room: String,
    text: String,
    /// Chosen by the client (a UUID, say): a retry with the same key after an
    /// unknown outcome stores nothing new and gets the first message's `seq`.
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct HistoryArg {
    room: String,
    limit: Option<u32>,
    before: Option<u64>,
    after: Option<u64>,
}

#[derive(Deserialize)]
struct DmArg {
    user: String,
    text: String,
}

#[derive(Deserialize)]
struct RelayArg {
    to: String,
    op: String,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Members<'a> {
    room: &'a str,
    members: Vec<String>,
}

#[derive(Serialize)]
struct Said {
    seq: u64,
    /// Present (true) when this was a retry of a message already stored.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

#[derive(Serialize)]
struct RoomEvent<'a> {
    room: &'a str,
    seq: u64,
    user: &'a str,
    text: &'a str,
    ts: u64,
}

#[derive(Serialize)]
struct Users {
    users: Vec<String>,
}

#[derive(Serialize)]
struct DmEvent<'a> {
    from: &'a str,
    text: &'a str,
    ts: u64,
}

#[derive(Serialize)]
struct Empty {}

fn room_topic(room: &str) -> String {
    format!("chat.room.{room}")
}

fn check_room(room: &str) -> Result<(), Error> {
    proto::validate_token(room).map_err(|e| Error::bad_request(format!("room {e}")))
}

fn check_text(text: &str) -> Result<(), Error> {
    if text.trim().is_empty() {
        return Err(Error::bad_request("text is empty"));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(Error::bad_request(format!(
            "text longer than {MAX_TEXT_CHARS} characters"
        )));
    }
    // Shown to other users: no terminal escapes, NUL or bidi overrides (a new
    // line and a tab are fine).
    proto::text::check(text, proto::text::Lines::Allowed)
        .map_err(|e| Error::bad_request(format!("text: {e}")))
}

fn session_of(req: &Request) -> String {
    req.session().unwrap_or("direct").to_owned()
}

/// The chat service, ready to `run`.
pub fn service() -> Service {
    service_with(Policy::default())
}

/// The chat service, its `relay` held to `policy` (the gateway's client policy).
pub fn service_with(policy: Policy) -> Service {
    let rooms = Arc::new(Rooms::default());
    let policy = Arc::new(policy);
    Service::new("chat")
        .version(env!("CARGO_PKG_VERSION"))
        .handle_with("join", &rooms, |req: Request, rooms| async move {
            let arg: RoomArg = req.decode()?;
            check_room(&arg.room)?;
            let members = rooms.join(&arg.room, req.require_user()?, &session_of(&req));
            let body = Request::encode(&Members {
                room: &arg.room,
                members,
            })?;
            // A typed grant: the gateway subscribes the client to the room.
            Ok(Reply::new(body).grant(room_topic(&arg.room)))
        })
        .handle_with("leave", &rooms, |req: Request, rooms| async move {
            let arg: RoomArg = req.decode()?;
            check_room(&arg.room)?;
            let members = rooms.leave(&arg.room, req.require_user()?, &session_of(&req));
            let body = Request::encode(&Members {
                room: &arg.room,
                members,
            })?;
            Ok(Reply::new(body).revoke(room_topic(&arg.room)))
        })
        .handle("say", say)
        .handle("history", history)
        .handle_with("who", &rooms, |req: Request, rooms| async move {
            let arg: RoomArg = req.decode()?;
            check_room(&arg.room)?;
            Request::encode(&Users {
                users: rooms.who(&arg.room),
            })
        })
        .handle("dm", dm)
        .handle_with("relay", &policy, relay)
        // A closed connection; or a gateway that died (or was cut off) and
        // sent no session.close for its clients.
        .on_sessions_ended_with(&rooms, |ended, _bus, rooms| async move {
            match &ended {
                SessionsEnded::One { user, session } => rooms.close_session(user, session),
                SessionsEnded::Gateway(gateway) => {
                    let closed = rooms.close_covered(&ended);
                    if closed > 0 {
                        tracing::info!(%gateway, sessions = closed, "sessions of a lost gateway closed");
                    }
                }
            }
        })
        // The gateway could not subscribe the client to a room it joined (its
        // subscription cap, or the connection closing): the join failed for
        // the client, so its presence goes too.
        .on_event_with(api::GRANT_FAILED, &rooms, |event, _bus, rooms| async move {
            let Ok(failed) = proto::from_body::<api::GrantFailed>(&event.body) else {
                tracing::warn!("bad session.grant_failed event");
                return;
            };
            if failed.service != "chat" {
                return;
            }
            for topic in &failed.topics {
                if let Some(room) = topic.strip_prefix("chat.room.") {
                    rooms.leave(room, &failed.user, &failed.session);
                }
            }
        })
}

async fn say(req: Request) -> HandlerResult {
    let arg: SayArg = req.decode()?;
    check_room(&arg.room)?;
    check_text(&arg.text)?;
    if let Some(key) = &arg.idempotency_key {
        proto::validate_token(key)
            .map_err(|e| Error::bad_request(format!("idempotency_key {e}")))?;
    }
    let user = req.require_user()?.to_owned();
    let ts = proto::now_ms();
    // Every save carries a key: the client's, or one of ours for this request
    // (`~…`, which no client key can be). So a retry below us — the db's own
    // after a connection lost at COMMIT, or the broker's on another db instance —
    // finds the committed row instead of storing the message twice.
    let client_key = arg.idempotency_key.is_some();
    let key = arg
        .idempotency_key
        .unwrap_or_else(|| format!("{OWN_KEY_PREFIX}{}", switchboard_bus::new_trace_id()));
    let save = api::ChatSave {
        room: arg.room.clone(),
        user: user.clone(),
        text: arg.text.clone(),
        ts,
        idempotency_key: Some(key),
    };
    let body = proto::to_body(&save)?;
    // Acknowledged only after the db service has committed it; idempotent, so the
    // broker may retry it on another db instance.
    let mut options = req.onward();
    options.idem = true;
    let reply = req
        .bus
        .call("db", api::db_ops::CHAT_SAVE, body, options)
        .await?;
    let saved: api::ChatSaved = proto::from_body(&reply.body)?;
    if saved.duplicate && client_key {
        // The client's retry: stored (and published) the first time; it only
        // learns the seq. (A duplicate under our own key is a retry of this very
        // request below us: not yet published, so it goes on as new.)
        return Request::encode(&Said {
            seq: saved.seq,
            duplicate: true,
        });
    }
    let event = RoomEvent {
        room: &arg.room,
        seq: saved.seq,
        user: &user,
        text: &arg.text,
        ts,
    };
    let event = proto::to_body(&event)?;
    if let Err(e) = req.bus.publish(&room_topic(&arg.room), event).await {
        tracing::warn!(error = %e, "message committed but not published");
    }
    Request::encode(&Said {
        seq: saved.seq,
        duplicate: false,
    })
}

async fn history(req: Request) -> HandlerResult {
    let arg: HistoryArg = req.decode()?;
    check_room(&arg.room)?;
    let q = api::ChatHistory {
        room: arg.room,
        limit: arg.limit.unwrap_or(HISTORY_DEFAULT).clamp(1, HISTORY_MAX),
        before: arg.before,
        after: arg.after,
    };
    if q.before.is_some() && q.after.is_some() {
        return Err(Error::bad_request(
            "history takes `before` or `after`, not both",
        ));
    }
    let body = proto::to_body(&q)?;
    let reply = req
        .bus
        .call("db", api::db_ops::CHAT_HISTORY, body, req.onward())
        .await?;
    // Same shape as the db's reply: pass it through.
    Ok(reply.body.into_vec())
}

async fn dm(req: Request) -> HandlerResult {
    let arg: DmArg = req.decode()?;
    check_text(&arg.text)?;
    let topic = format!("user.{}", arg.user);
    proto::topic::validate(&topic, false)
        .map_err(|e| Error::bad_request(format!("user {:?}: {e}", arg.user)))?;
    let event = DmEvent {
        from: req.require_user()?,
        text: &arg.text,
        ts: proto::now_ms(),
    };
    let body = proto::to_body(&event)?;
    req.bus.publish(&topic, body).await?;
    Request::encode(&Empty {})
}

async fn relay(req: Request, policy: Arc<Policy>) -> HandlerResult {
    let arg: RelayArg = req.decode()?;
    proto::validate_name(&arg.to).map_err(|e| Error::bad_request(format!("to: {e}")))?;
    proto::validate_name(&arg.op).map_err(|e| Error::bad_request(format!("op: {e}")))?;
    if arg.to == "chat" && arg.op == "relay" {
        return Err(Error::bad_request("relay to chat relay would loop"));
    }
    // Relay opens nothing the gateway keeps closed to clients: the same
    // policy, the same answer (`forbidden`), whoever asks.
    policy
        .check_call(&arg.to, &arg.op)
        .map_err(|why| Error::new(proto::ErrorCode::Forbidden, format!("relay: {why}")))?;
    // And the same routing: the key the gateway would have taken from the data.
    let key = policy
        .key_field(&arg.to)
        .and_then(|field| arg.data.as_ref()?.get(field)?.as_str().map(str::to_owned));
    let body = match &arg.data {
        Some(data) => proto::to_body(data)?,
        None => proto::to_body(&Empty {})?,
    };
    let mut options = req.onward();
    options.key = key;
    let reply = req.bus.call(&arg.to, &arg.op, body, options).await?;
    Ok(reply.body.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_is_per_session() {
        let rooms = Rooms::default();
        rooms.join("lobby", "ada", "s1");
        rooms.join("lobby", "ada", "s2");
        rooms.join("lobby", "bob", "s3");
        assert_eq!(rooms.who("lobby"), vec!["ada", "bob"]);
        rooms.close_session("ada", "s1");
        assert_eq!(rooms.who("lobby"), vec!["ada", "bob"], "ada still has s2");
        rooms.leave("lobby", "ada", "s2");
        assert_eq!(rooms.who("lobby"), vec!["bob"]);
        rooms.close_session("bob", "s3");
        assert!(rooms.who("lobby").is_empty());
        assert!(
            rooms.rooms.lock().unwrap().is_empty(),
            "empty rooms are forgotten"
        );
    }

    #[test]
    fn a_lost_gateway_takes_its_sessions_only() {
        let rooms = Rooms::default();
        rooms.join("lobby", "ada", &api::session_id("receive-1", 1));
        rooms.join("lobby", "ada", &api::session_id("receive-2", 1));
        rooms.join("lobby", "bob", &api::session_id("receive-1", 2));
        rooms.join("den", "cy", &api::session_id("receive-1", 3));
        assert_eq!(
            rooms.close_covered(&SessionsEnded::Gateway("receive-1".into())),
            3
        );
        assert_eq!(rooms.who("lobby"), vec!["ada"], "ada is still on receive-2");
        assert!(rooms.who("den").is_empty());
    }

    #[test]
    fn text_and_room_limits() {
        assert!(check_text("hi").is_ok());
        assert!(check_text("  ").is_err());
        assert!(check_text(&"é".repeat(MAX_TEXT_CHARS)).is_ok());
        assert!(check_text(&"é".repeat(MAX_TEXT_CHARS + 1)).is_err());
        assert!(check_text("two\nlines\tand a tab").is_ok());
        for bad in [
            "nul\0",
            "esc\u{1b}[2J",
            "rlo\u{202E}gnp.exe",
            "isolate\u{2066}x",
        ] {
            assert!(check_text(bad).is_err(), "{bad:?}");
        }
        assert!(check_room("lobby").is_ok());
        assert!(check_room("chat.room").is_err());
        assert!(check_room("").is_err());
    }
}
