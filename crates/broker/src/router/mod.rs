//! The broker's state machine: registry, dispatch, holding, pub/sub and liveness.
//!
//! # Layout
//!
//! - this file: the types, [`Router::on_message`] (what each kind does), sending.
//! - `registry`: hello, challenge, register, states, peer loss.
//! - `requests`: placing, picking, keyed ownership, replies.
//! - `admin`: the `$broker` ops (`stats`, `ls`, `owner`, `metrics`, `trace`).
//! - `pubsub`: subscriptions and publishing.
//! - `time`: deadlines, heartbeats, silent peers.
//!
//! [`Router`] owns no socket. Each inbound message goes through
//! [`Router::on_message`], time through [`Router::on_tick`], and everything the
//! broker wants to send is pushed to [`Router::out`] for the socket task to send
//! without ever waiting (see `lib.rs`). That split keeps every routing decision in
//! plain synchronous code.
//!
//! Requests are forwarded as the caller's original bytes: the router decodes only
//! the borrowed [`Head`] to route and never re-encodes a request or a reply. The
//! worker gets `[token, request]` and answers `[token, reply]`; the token maps back
//! to the caller.

mod admin;
mod pubsub;
mod registry;
mod requests;
mod time;

use bytes::Bytes;
use rand::RngCore;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

/// The broker's tables are hashed several times for every message routed.
/// With std's SipHash that was ~6% of the broker's CPU per request (issue 24's
/// profile); foldhash (in the tree already, through hashbrown) is several times
/// cheaper. Peers choose some keys (identities, names, before they prove the
/// secret too), so the seed comes from the OS's random source ([`Seeded`]),
/// not foldhash's own (addresses and the time), and every such table is capped.
type Map<K, V> = HashMap<K, V, Seeded>;
/// See [`Map`].
type Set<K> = HashSet<K, Seeded>;

/// foldhash's `quality` hasher with a process seed and a per-table seed, both
/// from the OS's random source.
#[derive(Clone, Debug)]
struct Seeded(foldhash::quality::SeedableRandomState);

impl Default for Seeded {
    fn default() -> Self {
        static SHARED: std::sync::OnceLock<foldhash::SharedSeed> = std::sync::OnceLock::new();
        let shared = SHARED.get_or_init(|| foldhash::SharedSeed::from_u64(rand::random()));
        Self(foldhash::quality::SeedableRandomState::with_seed(
            rand::random(),
            shared,
        ))
    }
}

impl std::hash::BuildHasher for Seeded {
    type Hasher = foldhash::quality::FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}
use switchboard_proto::{
    self as proto, auth, topic, BrokerStats, Envelope, ErrorBody, ErrorCode, Head, Hello,
    InstanceInfo, Kind, PeerState, Welcome, BROKER_SERVICE,
};
use zeromq::ZmqMessage;

use crate::Settings;

/// Internal handle of a registered peer.
pub type PeerId = u64;
/// Broker-wide id of one routed request (the route token on the wire).
type Token = u64;

/// A message the socket task must send, and whether it is an event (dropping an
/// event to a slow subscriber is normal; dropping anything else is counted apart).
#[derive(Debug)]
pub struct Outgoing {
    /// Frames, identity first.
    pub msg: ZmqMessage,
    /// True for pub/sub deliveries.
    pub event: bool,
}

#[derive(Debug)]
struct Peer {
    identity: Bytes,
    instance: String,
    service: Option<usize>,
    pid: u32,
    state: PeerState,
    credit: u32,
    /// Requests dispatched to this peer and not answered yet.
    inflight: Set<Token>,
    /// Requests this peer sent as a caller and has not had answered yet.
    outstanding: u32,
    handled: u64,
    last_seen: u64,
    registered_at: u64,
    subs: Set<String>,
}

#[derive(Debug)]
struct ServiceEntry {
    name: String,
    instances: Vec<PeerId>,
    /// Held requests, oldest first. May hold tokens already expired or failed;
    /// those are skipped when met and swept on the tick.
    queue: VecDeque<Token>,
    /// Rotates the start of the least-in-flight scan, so ties go round-robin.
    cursor: std::cell::Cell<usize>,
}

#[derive(Debug)]
enum Route {
    Any,
    Instance(String),
    Key(String),
    /// A `$` op (`$health`, `$info`, `$metrics`, `$trace`) pinned to one
    /// instance: dispatched past the instance's credit. A health check queued
    /// behind a busy instance's full credit would read as a hung instance (and
    /// main kills hung instances): one client's flood must not make a busy
    /// service look dead.
    Control(String),
}

#[derive(Debug)]
struct Req {
    caller: PeerId,
    id: u64,
    frame: Bytes,
    service: usize,
    route: Route,
    worker: Option<PeerId>,
    received: u64,
    deadline: u64,
    idem: bool,
    /// Its trace id and op: slices of `frame`, kept from the head decoded on
    /// arrival so that ending it does not decode the frame again.
    trace: Bytes,
    op: Bytes,
    /// Times the request for its span and the latency histogram.
    timer: switchboard_svc::trace::Timer,
}

impl Req {
    fn trace(&self) -> &str {
        std::str::from_utf8(&self.trace).unwrap_or_default()
    }

    fn op(&self) -> &str {
        std::str::from_utf8(&self.op).unwrap_or_default()
    }
}

/// Why a peer is being removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Its connection closed.
    Disconnected,
    /// It missed `liveness` heartbeats.
    Silent,
    /// It said `bye`.
    Bye,
    /// Another peer registered the same instance name, or it registered again.
    Replaced,
}

pub use switchboard_proto::admin::{OwnerQuery, OwnerReply};

/// How long a challenge nonce stays valid, ms.
const CHALLENGE_TTL_MS: u64 = 10_000;
/// Outstanding challenges at most (a flood of hellos cannot grow memory).
const MAX_CHALLENGES: usize = 10_000;
/// How many held requests one queue scan looks at, at most.
const MAX_QUEUE_SCAN: usize = 256;

/// The broker's whole state. See the module docs.
pub struct Router {
    settings: Settings,
    secret: Option<Vec<u8>>,
    peers: Map<PeerId, Peer>,
    by_identity: Map<Bytes, PeerId>,
    by_instance: Map<String, PeerId>,
    services: Vec<ServiceEntry>,
    service_idx: Map<String, usize>,
    reqs: Map<Token, Req>,
    expiry: BinaryHeap<Reverse<(u64, Token)>>,
    challenges: Map<Bytes, ([u8; auth::NONCE_LEN], u64)>,
    /// Every peer's subscriptions, looked up by topic without a scan.
    subs: topic::Index<PeerId>,
    told_bye: Set<Bytes>,
    heartbeat_frame: Bytes,
    next_token: Token,
    next_peer: PeerId,
    next_heartbeat: u64,
    /// When `on_tick` last ran, ms since the epoch (0: never).
    last_tick: u64,
    /// Request metrics by (service index, outcome).
    metrics: crate::metrics::Requests,
    reported_malformed: u64,
    /// Counters since start.
    pub stats: BrokerStats,
    /// Messages to send, drained by the socket task after every step.
    pub out: Vec<Outgoing>,
    /// The broker pair's state machine, when this broker is one of a pair.
    pub ha: Option<crate::ha::Pair>,
    /// When this broker of a pair last became active: for a while after, the
    /// peers of the whole system are still arriving, so a request for a
    /// service not seen yet is held (to its deadline) instead of refused.
    active_since: Option<u64>,
}

impl Router {
    /// Whether peers may still be arriving after this broker of a pair became
    /// active (two liveness windows).
    fn regathering(&self, now: u64) -> bool {
        let window = 2 * self.settings.heartbeat_ms * u64::from(self.settings.liveness);
        self.active_since.is_some_and(|t| now < t + window)
    }
}

fn ha_describe(ha: Option<&crate::ha::Pair>) -> String {
    ha.map(crate::ha::Pair::describe).unwrap_or_default()
}

// === impl Router ===

impl Router {
    /// A router with the services in `settings.services` declared (their requests
    /// are held until an instance is ready, even before any instance was seen).
    pub fn new(settings: Settings) -> Self {
        let heartbeat_frame =
            Bytes::from(proto::encode(&Envelope::new(Kind::Heartbeat)).unwrap_or_default());
        let secret = settings
            .secret
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|s| s.as_bytes().to_vec());
        let mut router = Self {
            secret,
            peers: Map::default(),
            by_identity: Map::default(),
            by_instance: Map::default(),
            services: Vec::new(),
            service_idx: Map::default(),
            reqs: Map::default(),
            expiry: BinaryHeap::new(),
            challenges: Map::default(),
            subs: topic::Index::default(),
            told_bye: Set::default(),
            heartbeat_frame,
            next_token: 1,
            next_peer: 1,
            next_heartbeat: 0,
            last_tick: 0,
            metrics: crate::metrics::Requests::default(),
            reported_malformed: 0,
            stats: BrokerStats::default(),
            out: Vec::new(),
            ha: None,
            active_since: None,
            settings,
        };
        for name in router.settings.services.clone() {
            router.service(&name);
        }
        router
    }

    fn service(&mut self, name: &str) -> usize {
        if let Some(&idx) = self.service_idx.get(name) {
            return idx;
        }
        let idx = self.services.len();
        self.services.push(ServiceEntry {
            name: name.to_owned(),
            instances: Vec::new(),
            queue: VecDeque::new(),
            cursor: std::cell::Cell::new(0),
        });
        self.service_idx.insert(name.to_owned(), idx);
        idx
    }

    /// The partner broker said it is `state`. When this broker yields (both
    /// were active; this is the backup), every peer is dropped: they find the
    /// other broker, which is active.
    pub fn on_partner(&mut self, state: crate::ha::State, now: u64) {
        let Some(ha) = self.ha.as_mut() else {
            return;
        };
        let was_active = ha.state == crate::ha::State::Active;
        let change = ha.on_peer(state, now);
        if !was_active && ha.state == crate::ha::State::Active {
            self.active_since = Some(now);
        }
        if change == crate::ha::Change::Yield {
            let peers: Vec<PeerId> = self.peers.keys().copied().collect();
            tracing::warn!(
                peers = peers.len(),
                "broker pair: yielding; dropping every peer"
            );
            for pid in peers {
                self.peer_lost(pid, Loss::Silent, now);
            }
        }
        self.stats.ha = ha_describe(self.ha.as_ref());
    }

    /// Handles one inbound message (identity first).
    pub fn on_message(&mut self, msg: ZmqMessage, now: u64) {
        let mut frames = msg.into_vecdeque();
        let Some(identity) = frames.pop_front() else {
            return self.malformed(&Bytes::new(), "empty message");
        };
        let (token, payload) = match frames.len() {
            1 => (None, frames.pop_front().unwrap_or_default()),
            2 if frames[0].len() == proto::ROUTE_TOKEN_LEN => {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(&frames[0]);
                (
                    Some(u64::from_be_bytes(raw)),
                    frames.pop_back().unwrap_or_default(),
                )
            }
            _ => return self.malformed(&identity, "wrong frame count"),
        };
        let head = match proto::decode_head(&payload) {
            Ok(head) => head,
            Err(e) => {
                let reason = e.to_string();
                return self.malformed(&identity, &reason);
            }
        };
        if let Err(e) = head.check_lengths() {
            let reason = e.to_string();
            return self.malformed(&identity, &reason);
        }
        if head.kind == Kind::Hello {
            return self.on_hello(identity, &payload, now);
        }
        let Some(&pid) = self.by_identity.get(&identity) else {
            self.stats.unauthenticated += 1;
            // Tell a peer we forgot (broker restart, or declared dead while it was
            // stopped) to hello again; once per identity per heartbeat interval.
            if head.kind != Kind::Bye && self.told_bye.insert(identity.clone()) {
                let mut bye = Envelope::new(Kind::Bye);
                bye.error = Some(ErrorBody::new(
                    ErrorCode::Unauthorized,
                    "not registered: say hello",
                ));
                self.send_env(&identity, &bye, false);
            }
            return;
        };
        if let Some(peer) = self.peers.get_mut(&pid) {
            peer.last_seen = now;
        }
        match (head.kind, token) {
            (Kind::Reply, Some(token)) => self.on_reply(pid, token, head.id, payload.clone()),
            (_, Some(_)) | (Kind::Reply, None) => self.malformed(
                &identity,
                "route token on a non-reply, or reply without one",
            ),
            (Kind::Request, None) => self.on_request(pid, &head, &payload, now),
            (Kind::Heartbeat, None) => {}
            (Kind::Ready, None) => self.set_state(pid, PeerState::Ready),
            (Kind::Drain, None) => match head.instance {
                Some(target)
                    if Some(target) != self.peers.get(&pid).map(|p| p.instance.as_str()) =>
                {
                    self.forward_drain(target)
                }
                _ => {
                    self.set_state(pid, PeerState::Draining);
                    // The ack follows every request already dispatched to the peer on
                    // the same ordered connection: after it, nothing new arrives.
                    let mut ack = Envelope::new(Kind::Drain);
                    ack.op = "ack".into();
                    self.send_to_peer(pid, &ack);
                }
            },
            (Kind::Bye, None) => self.peer_lost(pid, Loss::Bye, now),
            (Kind::Subscribe, None) => self.subscribe(pid, head.to, head.id, &identity),
            (Kind::Unsubscribe, None) => self.unsubscribe(pid, head.to),
            (Kind::Event, None) => {
                if let Some(why) = self.forged_event(pid, head.to, head.body) {
                    return self.event_refused(pid, head.to, why);
                }
                self.publish(head.to, payload.clone(), &identity);
            }
            (Kind::Hello, None) => {}
        }
    }

    /// Counts a message refused for its size; logs the first one (the rest
    /// are in `too_large` of `$broker stats` and `sb_broker_too_large_total`).
    fn too_large(&mut self, what: &str, len: usize, max: usize) {
        self.stats.too_large += 1;
        if self.stats.too_large == 1 {
            tracing::warn!(
                what,
                bytes = len,
                max,
                "message over the bus limit answered too_large (further ones are counted)"
            );
        } else {
            tracing::debug!(
                what,
                bytes = len,
                max,
                "message over the bus limit answered too_large"
            );
        }
    }

    fn malformed(&mut self, identity: &Bytes, reason: &str) {
        self.stats.malformed += 1;
        if self.stats.malformed == 1 {
            tracing::warn!(peer = %hex(identity), reason, "malformed frame dropped (further ones are counted and reported every 10 s)");
        } else {
            tracing::debug!(peer = %hex(identity), reason, "malformed frame dropped");
        }
    }
    // --- sending ---

    fn send_to_peer(&mut self, pid: PeerId, env: &Envelope) {
        if let Some(identity) = self.peers.get(&pid).map(|p| p.identity.clone()) {
            self.send_env(&identity, env, false);
        }
    }

    /// Queues `env` for `identity`. The broker never sends a message over the
    /// cap its peers read with (it would close the peer's connection): a reply
    /// of its own that large (`$broker ls` of a huge bus, say) becomes a
    /// `too_large` error reply; anything else that large is dropped and counted.
    fn send_env(&mut self, identity: &Bytes, env: &Envelope, event: bool) {
        let max = proto::max_envelope_len(self.settings.max_message_bytes, Kind::Event);
        match proto::encode(env) {
            Ok(bytes) if bytes.len() > max => {
                self.too_large("broker message", bytes.len(), max);
                if env.kind == Kind::Reply && env.error.is_none() {
                    let error = ErrorBody::new(
                        ErrorCode::TooLarge,
                        format!(
                            "reply of {} bytes is over the bus limit of {max} bytes",
                            bytes.len()
                        ),
                    );
                    self.send_env(
                        identity,
                        &Envelope::error_reply(env.id, &env.trace, error),
                        event,
                    );
                }
            }
            Ok(bytes) => {
                let mut msg = ZmqMessage::from(bytes);
                msg.push_front(identity.clone());
                self.out.push(Outgoing { msg, event });
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a broker message"),
        }
    }
}

/// Rendezvous weight of `instance` for `key`: FNV-1a over `key 0xff instance`,
/// finished with the splitmix64 mixer. Fixed here (not `std`'s randomized hasher)
/// so that ownership is the same in every broker process and release.
pub fn hrw_weight(key: &str, instance: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key
        .as_bytes()
        .iter()
        .chain([0xffu8].iter())
        .chain(instance.as_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(16).map(|b| format!("{b:02x}")).collect()
}
