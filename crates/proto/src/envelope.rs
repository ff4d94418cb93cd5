//! The [`Envelope`], its [`Kind`]s and the codec.

use crate::{ErrorBody, ProtoError, MAX_MESSAGE_LEN, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// What an envelope is for. Encoded as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Peer → broker: register (body [`crate::Hello`]); broker → peer: the answer
    /// (body [`crate::Welcome`]: a challenge, or accepted).
    Hello,
    /// Peer → broker: this instance takes requests now.
    Ready,
    /// Either way, every heartbeat interval; any frame also counts as a sign of life.
    Heartbeat,
    /// A request for service `to`, op `op`, answered by exactly one `reply`.
    Request,
    /// The answer to a request, with the request's `id`; `error` set on failure.
    Reply,
    /// A published message on topic `to`, delivered to every matching subscriber.
    Event,
    /// Peer → broker: deliver events whose topic matches pattern `to`.
    Subscribe,
    /// Peer → broker: stop delivering pattern `to`.
    Unsubscribe,
    /// Instance → broker: take me out of rotation, I finish what I have. Peer →
    /// broker with `instance` set: ask that instance to drain (the broker forwards it).
    Drain,
    /// Instance → broker: I am leaving (after a drain, or at exit). Broker → peer:
    /// I do not know you (say hello again).
    Bye,
}

/// One message on the bus. Field meanings are fixed by DESIGN.md; empty or absent
/// fields are left out of the encoding.
///
/// For `event`, `subscribe` and `unsubscribe`, `to` holds the topic (or pattern).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Protocol version, [`PROTOCOL_VERSION`].
    pub v: u16,
    /// What this envelope is for.
    pub kind: Kind,
    /// Request id, unique per sender; a reply carries the id of its request.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u64,
    /// The sending instance.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from: String,
    /// Target service (requests), or topic/pattern (events, subscriptions).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub to: String,
    /// Exact target instance, overriding balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Routing key: the request goes to the instance that owns the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Operation name within the service.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub op: String,
    /// Absolute deadline, ms since the Unix epoch; 0 means none given.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deadline: u64,
    /// Trace id, carried unchanged from the first hop to the last.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace: String,
    /// The verified user, set by the gateway only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The client connection (session) a request came from, set by the gateway
    /// only: services that keep per-connection state (chat presence) key it by
    /// this and clean it up on the gateway's `session.close` event. Added in
    /// protocol 1.1; older peers skip it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The request may safely run twice: the broker may retry it on another
    /// instance if the first one dies.
    #[serde(default, skip_serializing_if = "is_false")]
    pub idem: bool,
    /// Payload, by convention MessagePack.
    #[serde(default, skip_serializing_if = "is_empty_buf")]
    pub body: ByteBuf,
    /// Set on a failed reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// On a reply only: topics the service grants (or revokes for) the client
    /// whose request this answers. Set by service code through
    /// `switchboard_bus::Reply`, never derived from a body, so nothing a client
    /// sends (an `$echo`, a relayed reply) can become a grant. The gateway applies
    /// a grant only inside that service's grantable patterns. Added in 1.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Grants>,
}

/// Topic grants carried by a reply; see [`Envelope::grants`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Grants {
    /// Subscribe the client to these topics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    /// Unsubscribe the client from these topics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsubscribe: Vec<String>,
}

impl Grants {
    /// Whether there is nothing to grant or revoke.
    pub fn is_empty(&self) -> bool {
        self.subscribe.is_empty() && self.unsubscribe.is_empty()
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_empty_buf(b: &ByteBuf) -> bool {
    b.is_empty()
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Envelope {
    /// An empty envelope of the given kind at the current protocol version.
    pub fn new(kind: Kind) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            kind,
            id: 0,
            from: String::new(),
            to: String::new(),
            instance: None,
            key: None,
            op: String::new(),
            deadline: 0,
            trace: String::new(),
            user: None,
            session: None,
            idem: false,
            body: ByteBuf::new(),
            error: None,
            grants: None,
        }
    }

    /// A request for `service`/`op` with `body` and an absolute `deadline`.
    pub fn request(service: &str, op: &str, body: Vec<u8>, deadline: u64) -> Self {
        let mut env = Self::new(Kind::Request);
        env.to = service.to_owned();
        env.op = op.to_owned();
        env.body = ByteBuf::from(body);
        env.deadline = deadline;
        env
    }

    /// A successful reply to the request with `id`, carrying its trace.
    pub fn reply_to(id: u64, trace: &str, body: Vec<u8>) -> Self {
        let mut env = Self::new(Kind::Reply);
        env.id = id;
        env.trace = trace.to_owned();
        env.body = ByteBuf::from(body);
        env
    }

    /// A failed reply to the request with `id`.
    pub fn error_reply(id: u64, trace: &str, error: ErrorBody) -> Self {
        let mut env = Self::new(Kind::Reply);
        env.id = id;
        env.trace = trace.to_owned();
        env.error = Some(error);
        env
    }
}

/// The routing-relevant fields of an envelope, borrowed from the frame: what the
/// broker decodes to route a message without copying or re-encoding it. Fields it
/// does not route on (`body`, `user`, `error`) are skipped.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Head<'a> {
    /// See [`Envelope::v`].
    pub v: u16,
    /// See [`Envelope::kind`].
    pub kind: Kind,
    /// See [`Envelope::id`].
    #[serde(default)]
    pub id: u64,
    /// See [`Envelope::from`].
    #[serde(default, borrow)]
    pub from: &'a str,
    /// See [`Envelope::to`].
    #[serde(default, borrow)]
    pub to: &'a str,
    /// See [`Envelope::instance`].
    #[serde(default, borrow)]
    pub instance: Option<&'a str>,
    /// See [`Envelope::key`].
    #[serde(default, borrow)]
    pub key: Option<&'a str>,
    /// See [`Envelope::op`].
    #[serde(default, borrow)]
    pub op: &'a str,
    /// See [`Envelope::deadline`].
    #[serde(default)]
    pub deadline: u64,
    /// See [`Envelope::trace`].
    #[serde(default, borrow)]
    pub trace: &'a str,
    /// See [`Envelope::idem`].
    #[serde(default)]
    pub idem: bool,
    /// The body, borrowed (empty when absent).
    #[serde(default, borrow, with = "serde_bytes")]
    pub body: &'a [u8],
}

impl Head<'_> {
    /// Checks the routed fields against their limits ([`crate::MAX_NAME_LEN`] for
    /// names, [`crate::MAX_TOPIC_LEN`] for topics and keys,
    /// [`crate::MAX_TRACE_LEN`] for the trace). The broker drops a frame that
    /// fails this as malformed; the bus client refuses to send one.
    ///
    /// # Errors
    ///
    /// [`ProtoError::Invalid`] naming the field kind.
    pub fn check_lengths(&self) -> Result<(), ProtoError> {
        check_lengths(
            self.to,
            self.op,
            self.from,
            self.trace,
            self.instance,
            self.key,
        )
    }
}

impl Envelope {
    /// As [`Head::check_lengths`].
    ///
    /// # Errors
    ///
    /// [`ProtoError::Invalid`] naming the field kind.
    pub fn check_lengths(&self) -> Result<(), ProtoError> {
        check_lengths(
            &self.to,
            &self.op,
            &self.from,
            &self.trace,
            self.instance.as_deref(),
            self.key.as_deref(),
        )
    }
}

fn check_lengths(
    to: &str,
    op: &str,
    from: &str,
    trace: &str,
    instance: Option<&str>,
    key: Option<&str>,
) -> Result<(), ProtoError> {
    use crate::{MAX_NAME_LEN, MAX_TOPIC_LEN, MAX_TRACE_LEN};
    if op.len() > MAX_NAME_LEN
        || from.len() > MAX_NAME_LEN
        || instance.is_some_and(|i| i.len() > MAX_NAME_LEN)
    {
        return Err(ProtoError::Invalid("name longer than 64 bytes"));
    }
    if to.len() > MAX_TOPIC_LEN || key.is_some_and(|k| k.len() > MAX_TOPIC_LEN) {
        return Err(ProtoError::Invalid(
            "topic or routing key longer than 256 bytes",
        ));
    }
    if trace.len() > MAX_TRACE_LEN {
        return Err(ProtoError::Invalid("trace id longer than 64 bytes"));
    }
    Ok(())
}

/// Encodes an envelope as one MessagePack map (named fields).
///
/// # Errors
///
/// [`ProtoError::Encode`] if serialization fails, [`ProtoError::TooLarge`] past
/// [`MAX_MESSAGE_LEN`].
pub fn encode(env: &Envelope) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::with_capacity(64 + env.body.len());
    rmp_serde::encode::write_named(&mut out, env).map_err(|e| ProtoError::Encode(e.to_string()))?;
    if out.len() > MAX_MESSAGE_LEN {
        return Err(ProtoError::TooLarge {
            len: out.len(),
            max: MAX_MESSAGE_LEN,
        });
    }
    Ok(out)
}

/// Decodes one envelope. Unknown fields (from a newer minor version) are skipped;
/// another major version, garbage, truncation or an oversize frame is an error.
///
/// ```
/// use switchboard_proto::{decode, encode, Envelope, Kind};
/// let env = Envelope::request("chat", "say", vec![0x80], 1_700_000_000_000);
/// let bytes = encode(&env).unwrap();
/// assert_eq!(decode(&bytes).unwrap(), env);
/// assert!(decode(&bytes[..bytes.len() - 1]).is_err());
/// ```
///
/// # Errors
///
/// [`ProtoError::TooLarge`], [`ProtoError::Decode`] or [`ProtoError::Version`].
pub fn decode(bytes: &[u8]) -> Result<Envelope, ProtoError> {
    check_len(bytes)?;
    let env: Envelope = rmp_serde::from_slice(bytes).map_err(decode_error)?;
    check_version(env.v)?;
    Ok(env)
}

/// Decodes the routing fields of an envelope without copying. Same checks as
/// [`decode`].
///
/// # Errors
///
/// As [`decode`].
pub fn decode_head(bytes: &[u8]) -> Result<Head<'_>, ProtoError> {
    check_len(bytes)?;
    // The common shape read directly; anything else through serde (`head.rs`).
    let head: Head<'_> = match crate::head::fast(bytes) {
        Some(head) => head,
        None => rmp_serde::from_slice(bytes).map_err(decode_error)?,
    };
    check_version(head.v)?;
    Ok(head)
}

fn check_len(bytes: &[u8]) -> Result<(), ProtoError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(ProtoError::TooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE_LEN,
        });
    }
    Ok(())
}

fn check_version(v: u16) -> Result<(), ProtoError> {
    if v >> 8 != PROTOCOL_VERSION >> 8 {
        return Err(ProtoError::Version { got: v });
    }
    Ok(())
}

fn decode_error(e: rmp_serde::decode::Error) -> ProtoError {
    ProtoError::Decode(e.to_string())
}

/// Encodes a value as a MessagePack body with named fields.
///
/// # Errors
///
/// [`ProtoError::Encode`] if the value does not serialize.
pub fn to_body<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, ProtoError> {
    rmp_serde::to_vec_named(value).map_err(|e| ProtoError::Encode(e.to_string()))
}

/// Decodes a MessagePack body.
///
/// # Errors
///
/// [`ProtoError::Decode`] if the bytes are not a valid `T`.
pub fn from_body<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ProtoError> {
    rmp_serde::from_slice(bytes).map_err(decode_error)
}
