//! The client protocol's frames: parsing what clients send, encoding what they
//! get, in JSON (text frames) or the same structure in MessagePack (binary).

use serde::{Deserialize, Serialize};
use switchboard_bus::proto::{self, ErrorCode};
use tokio_tungstenite::tungstenite::Message;

/// A client frame. `id` is any JSON value, echoed back verbatim.
#[derive(Debug, Deserialize)]
pub struct ClientMsg {
    /// Chosen by the client; echoed in the reply.
    #[serde(default)]
    pub id: serde_json::Value,
    /// Target service; absent for the gateway's own ops.
    #[serde(default)]
    pub to: Option<String>,
    /// Operation.
    #[serde(default)]
    pub op: Option<String>,
    /// Operation data.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    /// Topic, for `subscribe`/`unsubscribe`.
    #[serde(default)]
    pub topic: Option<String>,
    /// Token, for `auth`.
    #[serde(default)]
    pub token: Option<String>,
}

#[derive(Serialize)]
struct OkFrame<'a> {
    id: &'a serde_json::Value,
    ok: bool,
    data: &'a serde_json::Value,
    #[serde(skip_serializing_if = "str::is_empty")]
    trace: &'a str,
}

#[derive(Serialize)]
struct ErrBody<'a> {
    code: ErrorCode,
    message: &'a str,
}

#[derive(Serialize)]
struct ErrFrame<'a> {
    id: &'a serde_json::Value,
    ok: bool,
    error: ErrBody<'a>,
    #[serde(skip_serializing_if = "str::is_empty")]
    trace: &'a str,
}

/// Parses a text or binary frame.
///
/// # Errors
///
/// A message for a `bad_request` reply.
pub fn parse(msg: &Message) -> Result<ClientMsg, String> {
    match msg {
        Message::Text(text) => {
            serde_json::from_str(text.as_str()).map_err(|e| format!("not a JSON request: {e}"))
        }
        Message::Binary(bytes) => {
            rmp_serde::from_slice(bytes).map_err(|e| format!("not a MessagePack request: {e}"))
        }
        _ => Err("unexpected frame".into()),
    }
}

/// A success reply.
pub fn ok(id: &serde_json::Value, data: &serde_json::Value, binary_frame: bool) -> Message {
    ok_traced(id, data, "", binary_frame)
}

/// A success reply to a request that went to a service: with its trace id, for
/// `sbctl trace` and the dashboard.
pub fn ok_traced(
    id: &serde_json::Value,
    data: &serde_json::Value,
    trace: &str,
    binary_frame: bool,
) -> Message {
    encode(
        &OkFrame {
            id,
            ok: true,
            data,
            trace,
        },
        binary_frame,
    )
}

/// An error reply.
pub fn error(
    id: &serde_json::Value,
    code: ErrorCode,
    message: &str,
    binary_frame: bool,
) -> Message {
    error_traced(id, code, message, "", binary_frame)
}

/// An error reply to a request that went to a service, with its trace id.
pub fn error_traced(
    id: &serde_json::Value,
    code: ErrorCode,
    message: &str,
    trace: &str,
    binary_frame: bool,
) -> Message {
    encode(
        &ErrFrame {
            id,
            ok: false,
            error: ErrBody { code, message },
            trace,
        },
        binary_frame,
    )
}

fn encode<T: Serialize>(value: &T, binary_frame: bool) -> Message {
    if binary_frame {
        binary(value)
    } else {
        text(value)
    }
}

#[derive(Serialize)]
struct GoAway<'a> {
    goaway: GoAwayBody<'a>,
}

#[derive(Serialize)]
struct GoAwayBody<'a> {
    reason: &'a str,
}

/// The notice a client gets before the gateway closes it on shutdown or reload:
/// `{"goaway": {"reason"}}`. Send nothing more on this connection; reconnect.
pub fn goaway(reason: &str, binary_frame: bool) -> Message {
    encode(
        &GoAway {
            goaway: GoAwayBody { reason },
        },
        binary_frame,
    )
}

/// A JSON text frame.
pub fn text<T: Serialize>(value: &T) -> Message {
    Message::Text(
        serde_json::to_string(value)
            .unwrap_or_else(|_| "{}".into())
            .into(),
    )
}

/// A MessagePack binary frame.
pub fn binary<T: Serialize>(value: &T) -> Message {
    Message::Binary(rmp_serde::to_vec_named(value).unwrap_or_default().into())
}

/// A bus body (MessagePack) as JSON; an empty body is `{}`.
pub fn body_to_json(body: &[u8]) -> serde_json::Value {
    if body.is_empty() {
        return serde_json::json!({});
    }
    rmp_serde::from_slice(body)
        .unwrap_or_else(|_| serde_json::json!({ "$undecodable": body.len() }))
}

/// Client data as a bus body; absent data is `{}`.
///
/// # Errors
///
/// Only if the value cannot be encoded (it always can).
pub fn json_to_body(data: Option<&serde_json::Value>) -> Result<Vec<u8>, String> {
    match data {
        None | Some(serde_json::Value::Null) => proto::to_body(&serde_json::json!({})),
        Some(v) => proto::to_body(v),
    }
    .map_err(|e| e.to_string())
}
