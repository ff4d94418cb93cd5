//! The client protocol's frames: parsing what clients send, encoding what they
//! get, in JSON (text frames) or the same structure in MessagePack (binary).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_bus::proto::{self, ErrorCode};
use tokio_tungstenite::tungstenite::Message;

/// A value the client chose (`id`, `data`), kept as it came: the exact JSON
/// text of a text frame, so that it goes on to the bus (transcoded) and back to
/// the client (verbatim) without a `serde_json::Value` tree in between, or the
/// decoded value of a MessagePack frame.
#[derive(Debug, Clone)]
pub enum Raw {
    /// From a JSON text frame.
    Json(Box<RawValue>),
    /// From a MessagePack frame (or made by the gateway).
    Value(serde_json::Value),
}

impl Default for Raw {
    fn default() -> Self {
        Self::Value(serde_json::Value::Null)
    }
}

impl Serialize for Raw {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            // Verbatim into JSON; a MessagePack frame never carries JSON text,
            // but if one did it is decoded first rather than written as text.
            Self::Json(raw) if s.is_human_readable() => raw.serialize(s),
            Self::Json(raw) => serde_json::from_str::<serde_json::Value>(raw.get())
                .unwrap_or_default()
                .serialize(s),
            Self::Value(v) => v.serialize(s),
        }
    }
}

impl Raw {
    /// The string field `name` of an object value.
    pub fn str_field(&self, name: &str) -> Option<String> {
        let field = |v: &serde_json::Value| v.get(name)?.as_str().map(str::to_owned);
        match self {
            Self::Json(raw) => field(&serde_json::from_str(raw.get()).ok()?),
            Self::Value(v) => field(v),
        }
    }
}

/// A client frame. `id` is any JSON value, echoed back verbatim.
#[derive(Debug, Default)]
pub struct ClientMsg {
    /// Chosen by the client; echoed in the reply.
    pub id: Raw,
    /// Target service; absent for the gateway's own ops.
    pub to: Option<String>,
    /// Operation.
    pub op: Option<String>,
    /// Operation data (`null` is none).
    pub data: Option<Raw>,
    /// Topic, for `subscribe`/`unsubscribe`.
    pub topic: Option<String>,
    /// Token, for `auth`.
    pub token: Option<String>,
}

/// A JSON text frame's fields; `id` and `data` stay JSON text.
#[derive(Deserialize)]
struct TextMsg {
    #[serde(default)]
    id: Option<Box<RawValue>>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

/// A MessagePack frame's fields.
#[derive(Deserialize)]
struct BinaryMsg {
    #[serde(default)]
    id: serde_json::Value,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

#[derive(Serialize)]
struct OkFrame<'a> {
    id: &'a Raw,
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
    id: &'a Raw,
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
            let m: TextMsg = serde_json::from_str(text.as_str())
                .map_err(|e| format!("not a JSON request: {e}"))?;
            Ok(ClientMsg {
                id: m.id.map(Raw::Json).unwrap_or_default(),
                to: m.to,
                op: m.op,
                data: m.data.map(Raw::Json),
                topic: m.topic,
                token: m.token,
            })
        }
        Message::Binary(bytes) => {
            let m: BinaryMsg = rmp_serde::from_slice(bytes)
                .map_err(|e| format!("not a MessagePack request: {e}"))?;
            Ok(ClientMsg {
                id: Raw::Value(m.id),
                to: m.to,
                op: m.op,
                data: m.data.filter(|d| !d.is_null()).map(Raw::Value),
                topic: m.topic,
                token: m.token,
            })
        }
        _ => Err("unexpected frame".into()),
    }
}

/// A success reply.
pub fn ok(id: &Raw, data: &serde_json::Value, binary_frame: bool) -> Message {
    encode(
        &OkFrame {
            id,
            ok: true,
            data,
            trace: "",
        },
        binary_frame,
    )
}

/// A success reply to a request that went to a service, its data the reply's
/// bus body (MessagePack) as it came, with the trace id (for `sbctl trace` and
/// the dashboard). The body is transcoded straight into the frame (JSON) or
/// copied into it (MessagePack), never built into a tree: this is the path of
/// every reply.
pub fn ok_body(id: &Raw, body: &[u8], trace: &str, binary_frame: bool) -> Message {
    if binary_frame {
        let mut out = Vec::with_capacity(body.len() + 48 + trace.len());
        let fields = if trace.is_empty() { 3 } else { 4 };
        let _ = rmp::encode::write_map_len(&mut out, fields);
        let _ = rmp::encode::write_str(&mut out, "id");
        let _ = rmp_serde::encode::write_named(&mut out, id);
        let _ = rmp::encode::write_str(&mut out, "ok");
        let _ = rmp::encode::write_bool(&mut out, true);
        let _ = rmp::encode::write_str(&mut out, "data");
        body_into_msgpack(&mut out, body);
        if !trace.is_empty() {
            let _ = rmp::encode::write_str(&mut out, "trace");
            let _ = rmp::encode::write_str(&mut out, trace);
        }
        return Message::Binary(out.into());
    }
    let mut out = Vec::with_capacity(body.len() * 2 + 48 + trace.len());
    out.extend_from_slice(b"{\"id\":");
    let _ = serde_json::to_writer(&mut out, id);
    out.extend_from_slice(b",\"ok\":true,\"data\":");
    body_into_json(&mut out, body);
    if !trace.is_empty() {
        out.extend_from_slice(b",\"trace\":");
        let _ = serde_json::to_writer(&mut out, trace);
    }
    out.push(b'}');
    text_frame(out)
}

/// Reply bodies at least this large are turned into a frame off the runtime
/// thread ([`ok_body_off_thread`]).
pub const OFF_THREAD_BYTES: usize = 64 * 1024;

/// Large replies turned into frames at once. The gateway's runtime thread also
/// runs its bus socket: ~1 MiB history pages transcoded there (tens of ms each
/// in a debug build, 64 in flight per client) held up its heartbeats until the
/// broker declared the gateway dead and every client's requests failed. Off
/// the thread, two at a time (the cores of the machines it is sized for): more
/// would only compete with the runtime thread. Small replies never wait here;
/// large ones take turns in arrival order, so a greedy client slows other
/// clients' large replies by its share of two threads, never their small
/// ones nor the gateway's bus connection.
static LARGE_TRANSCODES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// [`ok_body`], on a blocking-pool thread when the body is large (see
/// [`OFF_THREAD_BYTES`]), so that no client's reply can stall the runtime
/// thread and the bus socket on it.
pub async fn ok_body_off_thread(
    id: Raw,
    body: Vec<u8>,
    trace: String,
    binary_frame: bool,
) -> Message {
    if body.len() < OFF_THREAD_BYTES {
        return ok_body(&id, &body, &trace, binary_frame);
    }
    let Ok(_permit) = LARGE_TRANSCODES.acquire().await else {
        return ok_body(&id, &body, &trace, binary_frame);
    };
    let for_error = id.clone();
    match tokio::task::spawn_blocking(move || ok_body(&id, &body, &trace, binary_frame)).await {
        Ok(frame) => frame,
        Err(_) => error(
            &for_error,
            ErrorCode::Internal,
            "reply could not be encoded",
            binary_frame,
        ),
    }
}

/// An event frame, `{"topic", "data"}`, its data the event's bus body: as
/// [`ok_body`], encoded once per format for all of a topic's subscribers.
pub fn event(topic: &str, body: &[u8], binary_frame: bool) -> Message {
    if binary_frame {
        let mut out = Vec::with_capacity(body.len() + 16 + topic.len());
        let _ = rmp::encode::write_map_len(&mut out, 2);
        let _ = rmp::encode::write_str(&mut out, "topic");
        let _ = rmp::encode::write_str(&mut out, topic);
        let _ = rmp::encode::write_str(&mut out, "data");
        body_into_msgpack(&mut out, body);
        return Message::Binary(out.into());
    }
    let mut out = Vec::with_capacity(body.len() * 2 + 24 + topic.len());
    out.extend_from_slice(b"{\"topic\":");
    let _ = serde_json::to_writer(&mut out, topic);
    out.extend_from_slice(b",\"data\":");
    body_into_json(&mut out, body);
    out.push(b'}');
    text_frame(out)
}

/// What a body that is not one MessagePack value becomes.
fn undecodable(len: usize) -> serde_json::Value {
    serde_json::json!({ "$undecodable": len })
}

/// Appends a bus body as JSON: `{}` when empty, `{"$undecodable": len}` when it
/// is not MessagePack (or not one value).
fn body_into_json(out: &mut Vec<u8>, body: &[u8]) {
    if body.is_empty() {
        out.extend_from_slice(b"{}");
        return;
    }
    let mark = out.len();
    let mut rest = body;
    let done = {
        let mut de = rmp_serde::Deserializer::new(&mut rest);
        let mut ser = serde_json::Serializer::new(&mut *out);
        serde_transcode::transcode(&mut de, &mut ser).is_ok()
    };
    if !done || !rest.is_empty() {
        out.truncate(mark);
        let _ = serde_json::to_writer(&mut *out, &undecodable(body.len()));
    }
}

/// Appends a bus body as MessagePack: copied when it is exactly one value,
/// else as [`body_into_json`] says.
fn body_into_msgpack(out: &mut Vec<u8>, body: &[u8]) {
    if body.is_empty() {
        let _ = rmp::encode::write_map_len(out, 0);
        return;
    }
    let mut rest = body;
    let valid = serde::de::IgnoredAny::deserialize(&mut rmp_serde::Deserializer::new(&mut rest))
        .is_ok()
        && rest.is_empty();
    if valid {
        out.extend_from_slice(body);
    } else {
        let _ = rmp_serde::encode::write_named(out, &undecodable(body.len()));
    }
}

/// A text frame of what serde_json wrote (always UTF-8).
fn text_frame(out: Vec<u8>) -> Message {
    match String::from_utf8(out) {
        Ok(text) => Message::Text(text.into()),
        Err(_) => Message::Text("{}".into()),
    }
}

/// An error reply.
pub fn error(id: &Raw, code: ErrorCode, message: &str, binary_frame: bool) -> Message {
    error_traced(id, code, message, "", binary_frame)
}

/// An error reply to a request that went to a service, with its trace id.
pub fn error_traced(
    id: &Raw,
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

/// A bus body (MessagePack) as a JSON tree; an empty body is `{}`. For the
/// gateway's own uses (a coalescing key); replies and events go through
/// [`ok_body`] and [`event`].
pub fn body_to_json(body: &[u8]) -> serde_json::Value {
    if body.is_empty() {
        return serde_json::json!({});
    }
    rmp_serde::from_slice(body).unwrap_or_else(|_| undecodable(body.len()))
}

/// Client data as a bus body; absent data is `{}`. JSON text is transcoded to
/// MessagePack as it is read, without a tree in between.
///
/// # Errors
///
/// Only if the value cannot be encoded (it always can: the frame parsed).
pub fn data_to_body(data: Option<&Raw>) -> Result<Vec<u8>, String> {
    match data {
        None => proto::to_body(&serde_json::json!({})).map_err(|e| e.to_string()),
        Some(Raw::Json(raw)) => {
            let text = raw.get();
            let mut out = Vec::with_capacity(text.len());
            let mut de = serde_json::Deserializer::from_str(text);
            let mut ser = rmp_serde::Serializer::new(&mut out);
            serde_transcode::transcode(&mut de, &mut ser).map_err(|e| e.to_string())?;
            Ok(out)
        }
        Some(Raw::Value(v)) => proto::to_body(v).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(msg: &Message) -> serde_json::Value {
        match msg {
            Message::Text(t) => serde_json::from_str(t.as_str()).expect("JSON"),
            other => panic!("not text: {other:?}"),
        }
    }

    fn binary_of(msg: &Message) -> serde_json::Value {
        match msg {
            Message::Binary(b) => rmp_serde::from_slice(b).expect("MessagePack"),
            other => panic!("not binary: {other:?}"),
        }
    }

    #[test]
    fn json_id_comes_back_verbatim_and_data_goes_to_the_bus_as_messagepack() {
        let frame = r#"{"id":{"n":1.50,"s":"é\"x"},"to":"chat","op":"say","data":{"room":"r","n":[1,-2,3.5,null,true]}}"#;
        let m = parse(&Message::Text(frame.into())).unwrap();
        let body = data_to_body(m.data.as_ref()).unwrap();
        let on_bus: serde_json::Value = rmp_serde::from_slice(&body).unwrap();
        assert_eq!(
            on_bus,
            serde_json::json!({"room":"r","n":[1,-2,3.5,null,true]})
        );
        let reply = ok_body(&m.id, &body, "t1", false);
        let Message::Text(t) = &reply else { panic!() };
        // The id's exact text, not a re-encoding of it (1.50 stays 1.50).
        assert!(
            t.as_str()
                .starts_with(r#"{"id":{"n":1.50,"s":"é\"x"},"ok":true,"data":"#),
            "{t}"
        );
        assert_eq!(text_of(&reply)["data"], on_bus);
        assert_eq!(text_of(&reply)["trace"], "t1");
    }

    #[test]
    fn absent_or_null_data_is_an_empty_map_and_absent_id_is_null() {
        for frame in [
            r#"{"to":"a","op":"b"}"#,
            r#"{"to":"a","op":"b","data":null}"#,
        ] {
            let m = parse(&Message::Text(frame.into())).unwrap();
            assert_eq!(data_to_body(m.data.as_ref()).unwrap(), vec![0x80]);
            let reply = text_of(&ok_body(&m.id, &[], "", false));
            assert_eq!(
                reply,
                serde_json::json!({"id": null, "ok": true, "data": {}})
            );
        }
    }

    #[test]
    fn a_body_that_is_not_one_messagepack_value_is_undecodable_in_both_formats() {
        let one = rmp_serde::to_vec(&serde_json::json!({"a": 1})).unwrap();
        let mut two = one.clone();
        two.extend_from_slice(&one);
        for body in [vec![0xc1], vec![0x92, 0x01], two] {
            let id = Raw::default();
            let want = serde_json::json!({"$undecodable": body.len()});
            assert_eq!(text_of(&ok_body(&id, &body, "", false))["data"], want);
            assert_eq!(binary_of(&ok_body(&id, &body, "", true))["data"], want);
            assert_eq!(text_of(&event("x.y", &body, false))["data"], want);
            assert_eq!(binary_of(&event("x.y", &body, true))["data"], want);
        }
    }

    #[test]
    fn binary_replies_and_events_carry_the_body_as_it_came() {
        let m = parse(&Message::Binary(
            rmp_serde::to_vec_named(
                &serde_json::json!({"id": 7, "to": "a", "op": "b", "data": {"k": "v"}}),
            )
            .unwrap()
            .into(),
        ))
        .unwrap();
        let body = data_to_body(m.data.as_ref()).unwrap();
        let reply = binary_of(&ok_body(&m.id, &body, "tr", true));
        assert_eq!(
            reply,
            serde_json::json!({"id": 7, "ok": true, "data": {"k": "v"}, "trace": "tr"})
        );
        let ev = binary_of(&event("chat.room.r", &body, true));
        assert_eq!(
            ev,
            serde_json::json!({"topic": "chat.room.r", "data": {"k": "v"}})
        );
        let ev = text_of(&event("chat.room.r", &body, false));
        assert_eq!(
            ev,
            serde_json::json!({"topic": "chat.room.r", "data": {"k": "v"}})
        );
    }

    #[test]
    fn key_fields_are_read_from_json_text_and_from_messagepack() {
        let m = parse(&Message::Text(
            r#"{"to":"loc","op":"move","data":{"zone":"z\u0031"}}"#.into(),
        ))
        .unwrap();
        assert_eq!(
            m.data.as_ref().and_then(|d| d.str_field("zone")).as_deref(),
            Some("z1")
        );
        assert_eq!(m.data.as_ref().and_then(|d| d.str_field("nope")), None);
    }
}
