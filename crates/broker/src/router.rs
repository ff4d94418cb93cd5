//! The broker's state machine: registry, dispatch, holding, pub/sub and liveness.
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

use bytes::Bytes;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use switchboard_proto::{
    self as proto, auth, topic, BrokerStats, Envelope, ErrorBody, ErrorCode, Head, Hello,
    InstanceInfo, Kind, Welcome, BROKER_SERVICE,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerState {
    /// Registered, not taking requests (yet).
    Registered,
    /// Taking requests.
    Ready,
    /// Finishing what it has; takes nothing new.
    Draining,
}

impl PeerState {
    fn as_str(self) -> &'static str {
        match self {
            PeerState::Registered => "registered",
            PeerState::Ready => "ready",
            PeerState::Draining => "draining",
        }
    }
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
    inflight: HashSet<Token>,
    /// Requests this peer sent as a caller and has not had answered yet.
    outstanding: u32,
    handled: u64,
    last_seen: u64,
    registered_at: u64,
    subs: HashSet<String>,
}

#[derive(Debug)]
struct Service {
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

/// Body of a `$broker` `owner` request.
#[derive(Debug, Deserialize, Serialize)]
pub struct OwnerQuery {
    /// Service name.
    pub service: String,
    /// Routing key.
    pub key: String,
}

/// Body of the `$broker` `owner` reply.
#[derive(Debug, Deserialize, Serialize)]
pub struct OwnerReply {
    /// The instance that owns the key now, if any instance is ready.
    pub instance: Option<String>,
}

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
    peers: HashMap<PeerId, Peer>,
    by_identity: HashMap<Bytes, PeerId>,
    by_instance: HashMap<String, PeerId>,
    services: Vec<Service>,
    service_idx: HashMap<String, usize>,
    reqs: HashMap<Token, Req>,
    expiry: BinaryHeap<Reverse<(u64, Token)>>,
    challenges: HashMap<Bytes, ([u8; auth::NONCE_LEN], u64)>,
    /// Every peer's subscriptions, looked up by topic without a scan.
    subs: topic::Index<PeerId>,
    told_bye: HashSet<Bytes>,
    heartbeat_frame: Bytes,
    next_token: Token,
    next_peer: PeerId,
    next_heartbeat: u64,
    reported_malformed: u64,
    /// Counters since start.
    pub stats: BrokerStats,
    /// Messages to send, drained by the socket task after every step.
    pub out: Vec<Outgoing>,
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
            peers: HashMap::new(),
            by_identity: HashMap::new(),
            by_instance: HashMap::new(),
            services: Vec::new(),
            service_idx: HashMap::new(),
            reqs: HashMap::new(),
            expiry: BinaryHeap::new(),
            challenges: HashMap::new(),
            subs: topic::Index::default(),
            told_bye: HashSet::new(),
            heartbeat_frame,
            next_token: 1,
            next_peer: 1,
            next_heartbeat: 0,
            reported_malformed: 0,
            stats: BrokerStats::default(),
            out: Vec::new(),
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
        self.services.push(Service {
            name: name.to_owned(),
            instances: Vec::new(),
            queue: VecDeque::new(),
            cursor: std::cell::Cell::new(0),
        });
        self.service_idx.insert(name.to_owned(), idx);
        idx
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
            (Kind::Subscribe, None) => self.subscribe(pid, head.to, &identity),
            (Kind::Unsubscribe, None) => self.unsubscribe(pid, head.to),
            (Kind::Event, None) => self.publish(head.to, payload.clone(), &identity),
            (Kind::Hello, None) => {}
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

    // --- registration ---

    fn on_hello(&mut self, identity: Bytes, payload: &[u8], now: u64) {
        let hello =
            match proto::decode(payload).and_then(|env| proto::from_body::<Hello>(&env.body)) {
                Ok(hello) => hello,
                Err(e) => return self.malformed(&identity, &e.to_string()),
            };
        let names_ok = proto::validate_name(&hello.instance).is_ok()
            && (hello.service.is_empty()
                || (proto::validate_name(&hello.service).is_ok()
                    && !hello.service.starts_with('$')));
        if !names_ok {
            return self.malformed(&identity, "hello with an invalid service or instance name");
        }
        if let Some(secret) = self.secret.clone() {
            match &hello.proof {
                None => return self.challenge(identity, now),
                Some(proof) => {
                    let nonce = self.challenges.remove(&identity);
                    let valid = nonce.is_some_and(|(nonce, _)| {
                        auth::verify(&secret, &nonce, &hello.service, &hello.instance, proof)
                    });
                    if !valid {
                        self.stats.auth_failures += 1;
                        tracing::warn!(instance = %hello.instance, "hello with a bad proof refused");
                        let mut env = Envelope::new(Kind::Hello);
                        env.error = Some(ErrorBody::new(ErrorCode::Unauthorized, "bad proof"));
                        return self.send_env(&identity, &env, false);
                    }
                }
            }
        }
        self.register(identity, hello, now);
    }

    fn challenge(&mut self, identity: Bytes, now: u64) {
        if self.challenges.len() >= MAX_CHALLENGES && !self.challenges.contains_key(&identity) {
            self.stats.auth_failures += 1;
            return;
        }
        let mut nonce = [0u8; auth::NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        self.challenges.insert(identity.clone(), (nonce, now));
        let welcome = Welcome {
            accepted: false,
            nonce: Some(proto::ByteBuf::from(nonce.to_vec())),
            ..self.welcome()
        };
        self.send_welcome(&identity, &welcome);
    }

    fn welcome(&self) -> Welcome {
        Welcome {
            accepted: true,
            nonce: None,
            heartbeat_ms: self.settings.heartbeat_ms as u32,
            liveness: self.settings.liveness,
            max_message: self.settings.max_message_bytes as u32,
        }
    }

    fn send_welcome(&mut self, identity: &Bytes, welcome: &Welcome) {
        let mut env = Envelope::new(Kind::Hello);
        env.body = proto::ByteBuf::from(proto::to_body(welcome).unwrap_or_default());
        self.send_env(identity, &env, false);
    }

    fn register(&mut self, identity: Bytes, hello: Hello, now: u64) {
        if !hello.service.is_empty()
            && !self.service_idx.contains_key(&hello.service)
            && self.services.len() >= self.settings.max_services
        {
            self.stats.services_refused += 1;
            tracing::warn!(service = %hello.service, cap = self.settings.max_services, "registration of a new service past the cap refused");
            let mut env = Envelope::new(Kind::Hello);
            env.error = Some(ErrorBody::new(
                ErrorCode::Overloaded,
                format!("more than {} services", self.settings.max_services),
            ));
            return self.send_env(&identity, &env, false);
        }
        if let Some(&old) = self.by_identity.get(&identity) {
            self.peer_lost(old, Loss::Replaced, now);
        }
        if let Some(&old) = self.by_instance.get(&hello.instance) {
            if hello.successor && self.peers.contains_key(&old) {
                // A reload: the old process finishes what it has and leaves.
                tracing::info!(instance = %hello.instance, "successor registered; draining the previous process");
                self.set_state(old, PeerState::Draining);
                if let Some(identity) = self.peers.get(&old).map(|p| p.identity.clone()) {
                    let mut env = Envelope::new(Kind::Drain);
                    env.instance = Some(hello.instance.clone());
                    self.send_env(&identity, &env, false);
                }
            } else {
                tracing::info!(instance = %hello.instance, "instance registered again; the previous registration is dropped");
                self.peer_lost(old, Loss::Replaced, now);
            }
        }
        self.told_bye.remove(&identity);
        let pid = self.next_peer;
        self.next_peer += 1;
        let service = (!hello.service.is_empty()).then(|| self.service(&hello.service));
        if let Some(idx) = service {
            self.services[idx].instances.push(pid);
        }
        let credit = if hello.credit == 0 { 64 } else { hello.credit };
        tracing::info!(service = %hello.service, instance = %hello.instance, pid = hello.pid, credit, "registered");
        self.by_identity.insert(identity.clone(), pid);
        self.by_instance.insert(hello.instance.clone(), pid);
        self.peers.insert(
            pid,
            Peer {
                identity: identity.clone(),
                instance: hello.instance,
                service,
                pid: hello.pid,
                state: PeerState::Registered,
                credit: credit.min(self.settings.max_credit),
                inflight: HashSet::new(),
                outstanding: 0,
                handled: 0,
                last_seen: now,
                registered_at: now,
                subs: HashSet::new(),
            },
        );
        self.stats.peers = self.peers.len() as u64;
        let welcome = self.welcome();
        self.send_welcome(&identity, &welcome);
    }

    fn set_state(&mut self, pid: PeerId, state: PeerState) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        let Some(svc) = peer.service else {
            return;
        };
        if peer.state != state {
            tracing::info!(instance = %peer.instance, state = state.as_str(), "instance state");
        }
        peer.state = state;
        if state == PeerState::Ready {
            self.drain_queue(svc);
        }
    }

    fn forward_drain(&mut self, target: &str) {
        let Some(identity) = self
            .by_instance
            .get(target)
            .and_then(|pid| self.peers.get(pid))
            .map(|p| p.identity.clone())
        else {
            return;
        };
        let mut env = Envelope::new(Kind::Drain);
        env.instance = Some(target.to_owned());
        self.send_env(&identity, &env, false);
    }

    /// Removes a peer: its in-flight requests get `worker_lost` (or are retried
    /// elsewhere when idempotent and their deadline allows), its subscriptions end.
    pub fn peer_lost(&mut self, pid: PeerId, why: Loss, now: u64) {
        let Some(peer) = self.peers.remove(&pid) else {
            return;
        };
        self.by_identity.remove(&peer.identity);
        if self.by_instance.get(&peer.instance) == Some(&pid) {
            self.by_instance.remove(&peer.instance);
        }
        if let Some(svc) = peer.service {
            self.services[svc].instances.retain(|&p| p != pid);
        }
        for pattern in &peer.subs {
            self.subs.remove(pattern, &pid);
        }
        if why != Loss::Bye {
            self.stats.peers_lost += 1;
        }
        if matches!(why, Loss::Disconnected | Loss::Silent) {
            // Gone without a goodbye: whoever kept state for it (a gateway's
            // client sessions) cleans up now.
            let lost = proto::api::PeerLost {
                service: peer
                    .service
                    .map(|s| self.services[s].name.clone())
                    .unwrap_or_default(),
                instance: peer.instance.clone(),
            };
            self.announce(proto::api::PEER_LOST, &lost);
        }
        if why == Loss::Disconnected || why == Loss::Silent || !peer.inflight.is_empty() {
            tracing::warn!(instance = %peer.instance, reason = ?why, inflight = peer.inflight.len(), "peer lost");
        } else {
            tracing::info!(instance = %peer.instance, reason = ?why, "peer left");
        }
        self.stats.peers = self.peers.len() as u64;
        let mut retry_services = Vec::new();
        for token in peer.inflight {
            let Some(req) = self.reqs.get_mut(&token) else {
                continue;
            };
            req.worker = None;
            if req.idem && req.deadline > now {
                self.stats.retried += 1;
                retry_services.push(req.service);
                self.place(token);
            } else {
                let message = match why {
                    Loss::Bye => format!("{}: instance left without replying", peer.instance),
                    _ => format!(
                        "{}: instance lost with the request in flight",
                        peer.instance
                    ),
                };
                self.fail(token, ErrorCode::WorkerLost, message);
            }
        }
    }

    // --- requests ---

    fn on_request(&mut self, caller: PeerId, head: &Head<'_>, payload: &Bytes, now: u64) {
        if head.to == BROKER_SERVICE {
            return self.broker_op(caller, head, now);
        }
        let fail_now = |router: &mut Self, code: ErrorCode, message: String| {
            router.stats.errors += 1;
            let env = Envelope::error_reply(head.id, head.trace, ErrorBody::new(code, message));
            router.send_to_peer(caller, &env);
        };
        if proto::validate_name(head.to).is_err() || proto::validate_name(head.op).is_err() {
            return fail_now(
                self,
                ErrorCode::BadRequest,
                "invalid service or op name".into(),
            );
        }
        let Some(&svc) = self.service_idx.get(head.to) else {
            return fail_now(
                self,
                ErrorCode::UnknownService,
                format!("{}: no such service", head.to),
            );
        };
        let Some(peer) = self.peers.get_mut(&caller) else {
            return;
        };
        if peer.outstanding >= self.settings.max_inflight_per_client {
            let cap = self.settings.max_inflight_per_client;
            return fail_now(
                self,
                ErrorCode::Overloaded,
                format!("more than {cap} requests in flight from this peer"),
            );
        }
        let latest = now + self.settings.max_deadline_ms;
        let deadline = if head.deadline == 0 {
            now + self
                .settings
                .default_deadline_ms
                .min(self.settings.max_deadline_ms)
        } else if head.deadline > latest {
            // A far-future deadline would hold the request (and its frame) for
            // that long: cut it to the cap.
            self.stats.deadlines_capped += 1;
            latest
        } else {
            head.deadline
        };
        if deadline <= now {
            return fail_now(self, ErrorCode::Timeout, "deadline already passed".into());
        }
        peer.outstanding += 1;
        let token = self.next_token;
        self.next_token += 1;
        let route = match (head.instance, head.key) {
            (Some(instance), _) => Route::Instance(instance.to_owned()),
            (None, Some(key)) => Route::Key(key.to_owned()),
            (None, None) => Route::Any,
        };
        self.reqs.insert(
            token,
            Req {
                caller,
                id: head.id,
                frame: payload.clone(),
                service: svc,
                route,
                worker: None,
                received: now,
                deadline,
                idem: head.idem,
            },
        );
        self.expiry.push(Reverse((deadline, token)));
        self.place(token);
    }

    /// Dispatches a request, or holds it in its service's queue.
    fn place(&mut self, token: Token) {
        let Some(req) = self.reqs.get(&token) else {
            return;
        };
        let svc = req.service;
        if let Some(worker) = self.pick(svc, &req.route) {
            return self.dispatch(token, worker);
        }
        if self.services[svc].queue.len() >= self.settings.max_held_per_service {
            let name = self.services[svc].name.clone();
            return self.fail(
                token,
                ErrorCode::Overloaded,
                format!("{name}: request queue full"),
            );
        }
        self.stats.held += 1;
        self.services[svc].queue.push_back(token);
    }

    /// The instance a request should go to now, if one can take it.
    fn pick(&self, svc: usize, route: &Route) -> Option<PeerId> {
        let has_room =
            |p: &Peer| p.state == PeerState::Ready && (p.inflight.len() as u32) < p.credit;
        let service = &self.services[svc];
        match route {
            Route::Any => {
                // Fewest in flight; among equals, the first after the rotating
                // cursor, so that an idle service still spreads its load.
                let n = service.instances.len();
                let start = service.cursor.get() % n.max(1);
                let pick = (0..n)
                    .map(|i| service.instances[(start + i) % n])
                    .filter_map(|pid| self.peers.get(&pid).map(|p| (pid, p)))
                    .filter(|(_, p)| has_room(p))
                    .min_by_key(|(_, p)| p.inflight.len())
                    .map(|(pid, _)| pid);
                if pick.is_some() {
                    service.cursor.set(start + 1);
                }
                pick
            }
            Route::Instance(name) => self
                .by_instance
                .get(name)
                .filter(|pid| service.instances.contains(pid))
                .filter(|pid| self.peers.get(pid).is_some_and(has_room))
                .copied(),
            Route::Key(key) => self
                .owner(svc, key)
                .filter(|pid| self.peers.get(pid).is_some_and(has_room)),
        }
    }

    /// The ready instance of `svc` that owns `key`: rendezvous (highest random
    /// weight) hashing over the ready instances' names. Stable: an instance joining
    /// takes over only the keys it now wins (about 1/n of them); an instance leaving
    /// gives up only its own keys.
    fn owner(&self, svc: usize, key: &str) -> Option<PeerId> {
        self.services[svc]
            .instances
            .iter()
            .filter_map(|pid| self.peers.get(pid).map(|p| (pid, p)))
            .filter(|(_, p)| p.state == PeerState::Ready)
            .max_by_key(|(_, p)| (hrw_weight(key, &p.instance), p.instance.as_str()))
            .map(|(&pid, _)| pid)
    }

    fn dispatch(&mut self, token: Token, worker: PeerId) {
        let (Some(req), Some(peer)) = (self.reqs.get_mut(&token), self.peers.get_mut(&worker))
        else {
            return;
        };
        req.worker = Some(worker);
        peer.inflight.insert(token);
        let mut msg = ZmqMessage::from(req.frame.clone());
        msg.push_front(Bytes::copy_from_slice(&token.to_be_bytes()));
        msg.push_front(peer.identity.clone());
        self.stats.routed += 1;
        self.out.push(Outgoing { msg, event: false });
    }

    /// Dispatches held requests of `svc` that can go now (bounded scan).
    fn drain_queue(&mut self, svc: usize) {
        let mut kept = Vec::new();
        for _ in 0..MAX_QUEUE_SCAN {
            let Some(token) = self.services[svc].queue.pop_front() else {
                break;
            };
            let Some(req) = self.reqs.get(&token) else {
                continue;
            };
            if !self.peers.contains_key(&req.caller) {
                self.reqs.remove(&token);
                continue;
            }
            match self.pick(svc, &req.route) {
                Some(worker) => self.dispatch(token, worker),
                None => {
                    let any = matches!(req.route, Route::Any);
                    kept.push(token);
                    if any {
                        break;
                    }
                }
            }
        }
        let queue = &mut self.services[svc].queue;
        for token in kept.into_iter().rev() {
            queue.push_front(token);
        }
    }

    fn on_reply(&mut self, worker: PeerId, token: Token, id: u64, payload: Bytes) {
        match self.reqs.get(&token) {
            // Expired (already answered with `timeout`) or already answered.
            None => {
                self.stats.late_replies += 1;
                return;
            }
            // Retried elsewhere after this worker was declared lost: late.
            Some(r) if r.worker.is_none() => {
                self.stats.late_replies += 1;
                return;
            }
            // Another peer answering a request it was not given, or the right
            // peer with the wrong id: never delivered.
            Some(r) if r.worker != Some(worker) || r.id != id => {
                self.stats.rogue_replies += 1;
                if self.stats.rogue_replies == 1 {
                    let from = self.peers.get(&worker).map(|p| p.instance.clone());
                    tracing::warn!(?from, "reply from a peer the request was not dispatched to dropped (further ones are counted)");
                }
                return;
            }
            Some(_) => {}
        }
        let Some(req) = self.reqs.remove(&token) else {
            return;
        };
        if let Some(peer) = self.peers.get_mut(&worker) {
            peer.inflight.remove(&token);
            peer.handled += 1;
        }
        match self.peers.get_mut(&req.caller) {
            Some(caller) => {
                caller.outstanding = caller.outstanding.saturating_sub(1);
                let mut msg = ZmqMessage::from(payload);
                msg.push_front(caller.identity.clone());
                self.stats.replies += 1;
                self.out.push(Outgoing { msg, event: false });
            }
            None => self.stats.late_replies += 1,
        }
        self.drain_queue(req.service);
    }

    /// Ends a request with an error reply from the broker.
    fn fail(&mut self, token: Token, code: ErrorCode, message: String) {
        let Some(req) = self.reqs.remove(&token) else {
            return;
        };
        if let Some(worker) = req.worker.and_then(|w| self.peers.get_mut(&w)) {
            worker.inflight.remove(&token);
        }
        self.stats.errors += 1;
        let trace = proto::decode_head(&req.frame)
            .map(|h| h.trace.to_owned())
            .unwrap_or_default();
        let env = Envelope::error_reply(req.id, &trace, ErrorBody::new(code, message));
        if let Some(caller) = self.peers.get_mut(&req.caller) {
            caller.outstanding = caller.outstanding.saturating_sub(1);
        }
        self.send_to_peer(req.caller, &env);
    }

    fn broker_op(&mut self, caller: PeerId, head: &Head<'_>, now: u64) {
        let body = match head.op {
            "stats" => {
                self.stats.inflight = self.reqs.len() as u64;
                proto::to_body(&self.stats)
            }
            "ls" => proto::to_body(&self.list(now)),
            "owner" => match proto::from_body::<OwnerQuery>(head.body) {
                Ok(q) => {
                    let instance = self
                        .service_idx
                        .get(&q.service)
                        .and_then(|&svc| self.owner(svc, &q.key))
                        .and_then(|pid| self.peers.get(&pid))
                        .map(|p| p.instance.clone());
                    proto::to_body(&OwnerReply { instance })
                }
                Err(e) => {
                    let env = Envelope::error_reply(
                        head.id,
                        head.trace,
                        ErrorBody::new(
                            ErrorCode::BadRequest,
                            format!("owner wants {{service, key}}: {e}"),
                        ),
                    );
                    return self.send_to_peer(caller, &env);
                }
            },
            "$echo" => Ok(head.body.to_vec()),
            op => {
                let env = Envelope::error_reply(
                    head.id,
                    head.trace,
                    ErrorBody::new(
                        ErrorCode::UnknownOp,
                        format!("$broker has no op {op:?} (stats, ls, owner, $echo)"),
                    ),
                );
                return self.send_to_peer(caller, &env);
            }
        };
        let env = match body {
            Ok(body) => Envelope::reply_to(head.id, head.trace, body),
            Err(e) => Envelope::error_reply(
                head.id,
                head.trace,
                ErrorBody::new(ErrorCode::Internal, e.to_string()),
            ),
        };
        self.send_to_peer(caller, &env);
    }

    fn list(&self, now: u64) -> Vec<InstanceInfo> {
        let mut list: Vec<InstanceInfo> = self
            .peers
            .values()
            .map(|p| InstanceInfo {
                service: p
                    .service
                    .map(|s| self.services[s].name.clone())
                    .unwrap_or_default(),
                instance: p.instance.clone(),
                pid: p.pid,
                state: if p.service.is_some() {
                    p.state.as_str()
                } else {
                    "client"
                }
                .to_owned(),
                inflight: p.inflight.len() as u32,
                credit: p.credit,
                handled: p.handled,
                age_ms: now.saturating_sub(p.registered_at),
            })
            .collect();
        list.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
        list
    }

    // --- pub/sub ---

    fn subscribe(&mut self, pid: PeerId, pattern: &str, identity: &Bytes) {
        if topic::validate(pattern, true).is_err() {
            return self.malformed(identity, "invalid subscription pattern");
        }
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        if peer.subs.contains(pattern) {
            return;
        }
        if peer.subs.len() >= self.settings.max_subs_per_peer {
            self.stats.subs_refused += 1;
            if self.stats.subs_refused == 1 {
                tracing::warn!(instance = %peer.instance, cap = self.settings.max_subs_per_peer, "subscription past the per-peer cap refused (further ones are counted)");
            }
            return;
        }
        peer.subs.insert(pattern.to_owned());
        self.subs.insert(pattern, pid);
    }

    fn unsubscribe(&mut self, pid: PeerId, pattern: &str) {
        if let Some(peer) = self.peers.get_mut(&pid) {
            if peer.subs.remove(pattern) {
                self.subs.remove(pattern, &pid);
            }
        }
    }

    fn publish(&mut self, topic_name: &str, payload: Bytes, identity: &Bytes) {
        if topic::validate(topic_name, false).is_err() {
            return self.malformed(identity, "invalid event topic");
        }
        self.stats.events += 1;
        let mut targets = Vec::new();
        self.subs
            .for_each_match(topic_name, |&pid| targets.push(pid));
        if targets.len() > 1 {
            // A peer under two matching patterns gets the event once.
            targets.sort_unstable();
            targets.dedup();
        }
        for pid in targets {
            if let Some(peer) = self.peers.get(&pid) {
                let mut msg = ZmqMessage::from(payload.clone());
                msg.push_front(peer.identity.clone());
                self.out.push(Outgoing { msg, event: true });
            }
        }
    }

    /// Publishes an event of the broker's own to the subscribers of `topic`.
    fn announce<T: Serialize>(&mut self, topic_name: &str, body: &T) {
        let mut env = Envelope::new(Kind::Event);
        env.to = topic_name.to_owned();
        env.from = BROKER_SERVICE.to_owned();
        env.body = proto::ByteBuf::from(proto::to_body(body).unwrap_or_default());
        match proto::encode(&env) {
            Ok(frame) => self.publish(topic_name, Bytes::from(frame), &Bytes::new()),
            Err(e) => tracing::error!(error = %e, "cannot encode a broker event"),
        }
    }

    // --- time ---

    /// Expires requests, sends heartbeats, declares silent peers dead. Call often
    /// (every few ms); heartbeat work happens once per interval.
    pub fn on_tick(&mut self, now: u64) {
        let mut swept = HashSet::new();
        while let Some(&Reverse((deadline, token))) = self.expiry.peek() {
            if deadline > now {
                break;
            }
            self.expiry.pop();
            let Some(req) = self.reqs.get(&token) else {
                continue;
            };
            let name = self.services[req.service].name.clone();
            if req.worker.is_some() {
                let waited = deadline.saturating_sub(req.received);
                self.fail(
                    token,
                    ErrorCode::Timeout,
                    format!("{name}: no reply within {waited} ms"),
                );
            } else {
                swept.insert(req.service);
                let waited = deadline.saturating_sub(req.received);
                self.fail(
                    token,
                    ErrorCode::Unavailable,
                    format!("{name}: no instance ready within {waited} ms"),
                );
            }
        }
        for svc in swept {
            let reqs = &self.reqs;
            self.services[svc].queue.retain(|t| reqs.contains_key(t));
        }
        if now < self.next_heartbeat {
            return;
        }
        self.next_heartbeat = now + self.settings.heartbeat_ms;
        self.told_bye.clear();
        let dead_after = self.settings.heartbeat_ms * u64::from(self.settings.liveness);
        let silent: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| now.saturating_sub(p.last_seen) > dead_after)
            .map(|(&pid, _)| pid)
            .collect();
        for pid in silent {
            self.peer_lost(pid, Loss::Silent, now);
        }
        for peer in self.peers.values() {
            let mut msg = ZmqMessage::from(self.heartbeat_frame.clone());
            msg.push_front(peer.identity.clone());
            self.out.push(Outgoing { msg, event: false });
        }
        self.challenges
            .retain(|_, (_, at)| now.saturating_sub(*at) < CHALLENGE_TTL_MS);
        if self.stats.malformed != self.reported_malformed
            && now % 10_000 < self.settings.heartbeat_ms
        {
            tracing::warn!(
                total = self.stats.malformed,
                new = self.stats.malformed - self.reported_malformed,
                "malformed frames dropped"
            );
            self.reported_malformed = self.stats.malformed;
        }
    }

    /// A connection closed (from the socket monitor).
    pub fn on_disconnect(&mut self, identity: &Bytes, now: u64) {
        self.challenges.remove(identity);
        if let Some(&pid) = self.by_identity.get(identity) {
            self.peer_lost(pid, Loss::Disconnected, now);
        }
    }

    // --- sending ---

    fn send_to_peer(&mut self, pid: PeerId, env: &Envelope) {
        if let Some(identity) = self.peers.get(&pid).map(|p| p.identity.clone()) {
            self.send_env(&identity, env, false);
        }
    }

    fn send_env(&mut self, identity: &Bytes, env: &Envelope, event: bool) {
        match proto::encode(env) {
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
