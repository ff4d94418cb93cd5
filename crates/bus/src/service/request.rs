//! What a handler sees and returns: [`Request`], [`Reply`], [`HandlerResult`].

use serde::{de::DeserializeOwned, Serialize};
use switchboard_proto::{self as proto, Envelope, Grants};

use crate::client::Handle;
use crate::Error;

/// What a handler returns: the reply body (MessagePack), or an error. A handler
/// that grants topics returns `Result<Reply, Error>` instead; both are accepted.
pub type HandlerResult = Result<Vec<u8>, Error>;

/// A handler's answer with more than a body: topics granted to (or revoked from)
/// the client whose request it answers. Only service code builds one; the body is
/// never inspected for grants, so a handler that returns client input as its body
/// (`$echo`, `relay`) can never grant anything.
///
/// ```
/// use switchboard_bus::Reply;
/// let reply = Reply::new(vec![0x80]).grant("chat.room.lobby");
/// assert_eq!(reply.grants.subscribe, ["chat.room.lobby"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// The reply body (MessagePack).
    pub body: Vec<u8>,
    /// Topics granted and revoked.
    pub grants: Grants,
}

impl Reply {
    /// A reply with `body` and no grants.
    pub fn new(body: Vec<u8>) -> Self {
        Self {
            body,
            grants: Grants::default(),
        }
    }

    /// Also subscribes the client to `topic` (the gateway checks it against the
    /// service's grantable patterns).
    #[must_use]
    pub fn grant(mut self, topic: impl Into<String>) -> Self {
        self.grants.subscribe.push(topic.into());
        self
    }

    /// Also unsubscribes the client from `topic`.
    #[must_use]
    pub fn revoke(mut self, topic: impl Into<String>) -> Self {
        self.grants.unsubscribe.push(topic.into());
        self
    }
}

impl From<Vec<u8>> for Reply {
    fn from(body: Vec<u8>) -> Self {
        Self::new(body)
    }
}

/// A request as a handler sees it.
pub struct Request {
    /// The request envelope (op, body, user, trace, key, deadline).
    pub env: Envelope,
    /// The bus, for onward requests and publishing.
    pub bus: Handle,
}

impl Request {
    /// The op.
    pub fn op(&self) -> &str {
        &self.env.op
    }

    /// The verified user, if the gateway set one.
    pub fn user(&self) -> Option<&str> {
        self.env.user.as_deref()
    }

    /// The trace id.
    pub fn trace(&self) -> &str {
        &self.env.trace
    }

    /// The client session, if the gateway set one.
    pub fn session(&self) -> Option<&str> {
        self.env.session.as_deref()
    }

    /// The verified user, or `bad_request` when the request carries none (it did
    /// not come through the gateway).
    ///
    /// # Errors
    ///
    /// `bad_request`.
    pub fn require_user(&self) -> Result<&str, Error> {
        self.user()
            .ok_or_else(|| Error::bad_request(format!("{}: no user on the request", self.env.op)))
    }

    /// Options for an onward request made while handling this one: same deadline,
    /// trace, user and session.
    pub fn onward(&self) -> crate::CallOptions {
        crate::CallOptions {
            deadline: Some(self.env.deadline),
            trace: self.env.trace.clone(),
            user: self.env.user.clone(),
            session: self.env.session.clone(),
            ..crate::CallOptions::default()
        }
    }

    /// Decodes the MessagePack body.
    ///
    /// # Errors
    ///
    /// `bad_request` naming what did not fit.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        proto::from_body(&self.env.body)
            .map_err(|e| Error::bad_request(format!("{}: {e}", self.env.op)))
    }

    /// Encodes a reply body (a convenience for handlers).
    ///
    /// # Errors
    ///
    /// `internal` if the value does not serialize.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> HandlerResult {
        proto::to_body(value).map_err(Error::from)
    }
}
