//! Bodies of the control messages: registration, health, broker statistics.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Body of a peer's `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Hello {
    /// The service this instance serves; empty for a pure client (a gateway
    /// connection pool, `sbctl`), which may send requests but receives none.
    #[serde(default)]
    pub service: String,
    /// The instance name, unique on the bus (`loc01`). A second hello with the same
    /// name replaces the first registration (the old peer is treated as dead).
    pub instance: String,
    /// OS process id, for the supervisor and `sbctl ls`.
    #[serde(default)]
    pub pid: u32,
    /// How many requests the instance takes at once (its handler concurrency); the
    /// broker never has more than this in flight to it.
    #[serde(default)]
    pub credit: u32,
    /// HMAC proof (see [`crate::auth`]), sent in answer to a challenge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<ByteBuf>,
    /// This process takes over from a live instance of the same name (a reload):
    /// the broker drains the old one instead of dropping it, so its in-flight
    /// requests finish. Added in protocol 1.1.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub successor: bool,
    /// A fresh random nonce ([`crate::auth::NONCE_LEN`] bytes) the broker must
    /// answer with [`Welcome::proof`]: sent by a peer that has a secret, so it
    /// never registers with a broker that does not know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<ByteBuf>,
}

/// Body of the broker's answer to `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Welcome {
    /// Registered: the peer may now send anything.
    pub accepted: bool,
    /// Set when the broker needs a proof: hello again with
    /// [`crate::auth::proof`] over this nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<ByteBuf>,
    /// The broker's heartbeat interval, ms.
    #[serde(default)]
    pub heartbeat_ms: u32,
    /// Missed intervals after which either side counts the other dead.
    #[serde(default)]
    pub liveness: u32,
    /// The broker's per-message size cap, bytes.
    #[serde(default)]
    pub max_message: u32,
    /// With [`Welcome::nonce`], when the hello carried a `challenge`: the
    /// broker's [`crate::auth::broker_proof`] that it knows the secret too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<ByteBuf>,
}

/// Reply body of the built-in `$health` op every service answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Health {
    /// Service name.
    pub service: String,
    /// Instance name.
    pub instance: String,
    /// `ok`, `draining`, or a service-specific degraded state (`db_down`).
    pub status: String,
    /// OS process id.
    pub pid: u32,
    /// Milliseconds since the instance started.
    pub uptime_ms: u64,
    /// Resident set size, bytes (0 where the OS does not say).
    pub rss_bytes: u64,
    /// Requests being handled now.
    pub inflight: u64,
    /// Requests handled since start.
    pub handled: u64,
    /// Of those, how many ended in an error reply.
    pub errors: u64,
}

/// Reply body of the built-in `$info` op every service answers: what it is and
/// what it takes (`sbctl info SERVICE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Info {
    /// Service name.
    pub service: String,
    /// Instance name.
    pub instance: String,
    /// The service's own version (its crate's, given to `Service::version`);
    /// empty when it gave none.
    #[serde(default)]
    pub version: String,
    /// Version of the `switchboard-bus` it is built on.
    #[serde(default)]
    pub bus_version: String,
    /// Protocol version it speaks (`1.2`).
    #[serde(default)]
    pub protocol: String,
    /// Its ops, sorted, the built-in `$` ops included.
    #[serde(default)]
    pub ops: Vec<String>,
    /// The topic patterns it handles events of.
    #[serde(default)]
    pub events: Vec<String>,
}

/// The state of a peer as the broker sees it. Encoded as its snake_case name
/// (`ready`), as it was when this was a string.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// Registered, not taking requests (yet).
    #[default]
    Registered,
    /// Taking requests.
    Ready,
    /// Finishing what it has; takes nothing new.
    Draining,
    /// A pure client: registered no service.
    Client,
    /// A state this build does not know (from a newer broker).
    #[serde(other)]
    Unknown,
}

impl PeerState {
    /// Its name on the wire (`ready`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Ready => "ready",
            Self::Draining => "draining",
            Self::Client => "client",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One registered instance, as `$broker` `ls` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct InstanceInfo {
    /// Service name (empty for a pure client).
    pub service: String,
    /// Instance name.
    pub instance: String,
    /// OS process id the peer reported.
    pub pid: u32,
    /// Where it is in its life on the bus (`client` for a pure client).
    pub state: PeerState,
    /// Requests the broker has in flight to it.
    pub inflight: u32,
    /// Its credit (maximum in flight).
    pub credit: u32,
    /// Requests it has answered through this broker.
    pub handled: u64,
    /// Milliseconds since it registered.
    pub age_ms: u64,
}

/// Reply body of `$broker` `stats`: the broker's counters since start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BrokerStats {
    /// In a broker pair: this broker's role and state (`primary active`,
    /// `backup passive`…); empty for a single broker.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ha: String,
    /// Frames that were not a valid message (bad frame count, undecodable envelope,
    /// wrong version, invalid field): counted, logged once, dropped.
    pub malformed: u64,
    /// Valid frames from peers that have not registered (or not authenticated):
    /// counted and dropped.
    pub unauthenticated: u64,
    /// `hello`s with a wrong or missing proof.
    pub auth_failures: u64,
    /// Requests routed to an instance.
    pub routed: u64,
    /// Replies delivered to their caller.
    pub replies: u64,
    /// Replies that arrived after their request expired (or its caller left):
    /// dropped, never delivered twice.
    pub late_replies: u64,
    /// Requests answered by the broker with an error (unavailable, unknown_service,
    /// overloaded, worker_lost, timeout).
    pub errors: u64,
    /// Requests held because no instance was ready.
    pub held: u64,
    /// Requests re-dispatched after their instance died (idempotent only).
    pub retried: u64,
    /// Events published.
    pub events: u64,
    /// Event deliveries dropped because a subscriber's queue was full.
    pub events_dropped: u64,
    /// Messages to a peer dropped because its queue was full or it was gone.
    pub send_dropped: u64,
    /// Instances declared dead (disconnect or missed heartbeats).
    pub peers_lost: u64,
    /// Registered peers now.
    pub peers: u64,
    /// Requests in flight now.
    pub inflight: u64,
    /// Replies from a peer other than the instance the request was dispatched to,
    /// or with another request id: dropped, never delivered.
    #[serde(default)]
    pub rogue_replies: u64,
    /// Subscriptions refused: past the per-peer cap.
    #[serde(default)]
    pub subs_refused: u64,
    /// Registrations refused: a new service name past the cap on services.
    #[serde(default)]
    pub services_refused: u64,
    /// Registrations refused: the instance name is held by a live process.
    #[serde(default)]
    pub names_refused: u64,
    /// Requests whose deadline was further ahead than the cap, cut to it.
    #[serde(default)]
    pub deadlines_capped: u64,
    /// Messages over a peer's size cap answered `too_large` instead of sent
    /// (a request too large to forward, a `$broker` reply too large to send).
    #[serde(default)]
    pub too_large: u64,
    /// Events a peer sent as another's: on the broker's `bus.*` topics, or a
    /// gateway's `session.*` event for a session of another instance. Dropped.
    #[serde(default)]
    pub events_refused: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `InstanceInfo::state` was a string: the enum must travel as the same
    /// names, so an older sbctl or testkit reads a newer broker's `ls` (and the
    /// other way), and a state from a newer broker decodes as `Unknown`.
    #[test]
    fn peer_states_are_the_old_strings_on_the_wire() {
        for (state, name) in [
            (PeerState::Registered, "registered"),
            (PeerState::Ready, "ready"),
            (PeerState::Draining, "draining"),
            (PeerState::Client, "client"),
        ] {
            let body = crate::to_body(&state).unwrap();
            assert_eq!(crate::from_body::<String>(&body).unwrap(), name);
            assert_eq!(crate::from_body::<PeerState>(&body).unwrap(), state);
            assert_eq!(state.as_str(), name);
        }
        let newer = crate::to_body(&"hibernating").unwrap();
        assert_eq!(
            crate::from_body::<PeerState>(&newer).unwrap(),
            PeerState::Unknown
        );
    }
}
