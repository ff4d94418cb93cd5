//! The bus client: one DEALER socket owned by one task on its own thread.
//!
//! [`connect`] starts a thread running a current_thread runtime (the zeromq crate
//! is 2.5x faster there than on a multi_thread runtime) with the socket actor on it,
//! and returns a cloneable [`Handle`] that any runtime can use. The actor:
//!
//! - connects with a short timeout and retries with backoff (the crate's own
//!   `connect` would wait 30 s on a peer that accepts but never handshakes);
//! - says `hello` (answering the broker's challenge when a secret is set), restores
//!   subscriptions, says `ready` again if the service was ready;
//! - heartbeats every interval and counts the broker dead after `liveness` silent
//!   intervals, or at once when the connection closes; then it rebuilds the DEALER
//!   (the crate's DEALER never reconnects) and registers again;
//! - never awaits a send that can block: a send into a full queue fails the request
//!   at once with `overloaded`.
//!
//! Requests in flight when the connection is lost are answered at once with
//! `unavailable`, except idempotent ones, which are sent again after reconnecting
//! if their deadline allows. A request made while disconnected waits for the
//! connection until its deadline.

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchboard_proto::{self as proto, auth, topic, Envelope, ErrorCode, Hello, Kind, Welcome};
use tokio::sync::{mpsc, oneshot, Notify};
use zeromq::{
    DealerSocket, Socket, SocketEvent, SocketOptions, SocketRecv, SocketSend, ZmqMessage,
};

use crate::Error;

/// Bus client settings. Units are in the names.
#[derive(Debug, Clone)]
pub struct Config {
    /// Broker endpoint, `tcp://127.0.0.1:5555` by default.
    pub broker: String,
    /// Service this process serves; empty for a pure client.
    pub service: String,
    /// Instance name, unique on the bus.
    pub instance: String,
    /// Shared bus secret, if the broker requires one.
    pub secret: Option<String>,
    /// Requests handled at once (the credit announced to the broker).
    pub credit: u32,
    /// Heartbeat interval until the broker's welcome says otherwise.
    pub heartbeat_ms: u64,
    /// Silent intervals after which the broker is counted dead.
    pub liveness: u32,
    /// Timeout of one connect attempt (handshake included).
    pub connect_timeout_ms: u64,
    /// Largest message accepted from the broker.
    pub max_message_bytes: usize,
    /// Deadline of a request that gives none.
    pub default_timeout_ms: u64,
    /// This process takes over from a live instance of the same name (a reload by
    /// the supervisor): the broker drains the old one instead of dropping it. The
    /// default comes from `SB_SUCCESSOR=1`, which the supervisor sets.
    pub successor: bool,
    /// Where the socket task runs: `None` (default) joins the caller's runtime
    /// when it is a current_thread one and takes a thread of its own otherwise;
    /// `Some(true)` always a thread of its own; `Some(false)` always the caller's
    /// runtime.
    pub io_thread: Option<bool>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            broker: "tcp://127.0.0.1:5555".into(),
            service: String::new(),
            instance: format!("client-{}", std::process::id()),
            secret: None,
            credit: 256,
            heartbeat_ms: proto::HEARTBEAT_INTERVAL.as_millis() as u64,
            liveness: proto::HEARTBEAT_LIVENESS,
            connect_timeout_ms: 1_000,
            max_message_bytes: proto::DEFAULT_MAX_MESSAGE_LEN,
            default_timeout_ms: 5_000,
            successor: std::env::var("SB_SUCCESSOR").is_ok_and(|v| v == "1"),
            io_thread: None,
        }
    }
}

/// A request delivered to this instance by the broker.
#[derive(Debug)]
pub struct Incoming {
    /// The broker's route token; the reply must carry it back.
    pub token: Bytes,
    /// The request.
    pub env: Box<Envelope>,
}

/// What [`connect`] returns: the handle, and for a service the stream of requests.
pub struct Connection {
    /// Cloneable front-end to the socket task.
    pub handle: Handle,
    /// Requests for this instance (never fed for a pure client).
    pub inbound: mpsc::Receiver<Incoming>,
}

/// Counters of one client, readable at any time.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Successful registrations (1 + reconnects).
    pub registrations: AtomicU64,
    /// Events dropped because a local subscriber was not keeping up.
    pub events_dropped: AtomicU64,
}

struct Shared {
    instance: String,
    service: String,
    default_timeout_ms: u64,
    next_id: AtomicU64,
    next_sub: AtomicU64,
    connected: AtomicBool,
    connected_notify: Notify,
    drain_requested: Notify,
    stats: ClientStats,
}

enum Cmd {
    Request {
        id: u64,
        frame: Bytes,
        deadline: u64,
        idem: bool,
        tx: oneshot::Sender<Result<Envelope, Error>>,
    },
    /// Frames to send as they are (replies, events, control).
    Send(ZmqMessage),
    Subscribe {
        sub: u64,
        pattern: String,
        tx: mpsc::Sender<Box<Envelope>>,
    },
    Unsubscribe {
        sub: u64,
    },
    /// Mark this instance ready (remembered across reconnects).
    Ready,
    /// Ask the broker to stop sending us work; answer when it has acknowledged.
    Drain(oneshot::Sender<()>),
    /// Say bye and stop the socket task.
    Close(oneshot::Sender<()>),
}

/// Cloneable front-end to the socket task. Dropping every handle closes the
/// connection (with a `bye`).
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
}

/// A stream of events for one pattern; unsubscribes when dropped.
pub struct Subscription {
    // Boxed: a tokio channel allocates a block of 32 slots up front, and an
    // envelope is a few hundred bytes; a gateway holds one subscription per client.
    rx: mpsc::Receiver<Box<Envelope>>,
    sub: u64,
    tx: mpsc::Sender<Cmd>,
}

impl Subscription {
    /// The next event, or `None` once the client is closed.
    pub async fn next(&mut self) -> Option<Envelope> {
        self.rx.recv().await.map(|e| *e)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.tx.try_send(Cmd::Unsubscribe { sub: self.sub });
    }
}

/// Options of one request beyond service, op and body.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Deadline relative to now; the client default when `None`.
    pub timeout: Option<Duration>,
    /// Pin an instance.
    pub instance: Option<String>,
    /// Route by key to the owning instance.
    pub key: Option<String>,
    /// Trace id to carry; a fresh one when empty.
    pub trace: String,
    /// Verified user (gateways only).
    pub user: Option<String>,
    /// Client session (gateways only).
    pub session: Option<String>,
    /// Absolute deadline (ms since the epoch), e.g. the one of the request being
    /// handled; wins over `timeout`.
    pub deadline: Option<u64>,
    /// Safe to run twice: may be retried on another instance.
    pub idem: bool,
}

/// Capacity of the command channel from handles to the socket task.
const CMD_CAPACITY: usize = 4096;
/// Capacity of a subscription's event queue; past it events are dropped.
const SUB_CAPACITY: usize = 1024;
/// How often the socket task looks for requests past their deadline.
const SWEEP: Duration = Duration::from_millis(50);
/// Grace past a request's deadline before the client gives up on the broker's answer.
const DEADLINE_GRACE_MS: u64 = 250;

/// Starts the socket task for `config` and returns at once; the task connects in
/// the background (see [`Handle::wait_connected`]).
///
/// # Errors
///
/// When the configuration is invalid or the thread cannot be started.
pub fn connect(config: Config) -> Result<Connection, Error> {
    proto::validate_name(&config.instance)
        .map_err(|e| Error::bad_request(format!("instance name: {e}")))?;
    if !config.service.is_empty() {
        proto::validate_name(&config.service)
            .map_err(|e| Error::bad_request(format!("service name: {e}")))?;
    }
    let (tx, rx) = mpsc::channel(CMD_CAPACITY);
    let (in_tx, in_rx) = mpsc::channel(config.credit.max(1) as usize + 64);
    let shared = Arc::new(Shared {
        instance: config.instance.clone(),
        service: config.service.clone(),
        default_timeout_ms: config.default_timeout_ms,
        next_id: AtomicU64::new(1),
        next_sub: AtomicU64::new(1),
        connected: AtomicBool::new(false),
        connected_notify: Notify::new(),
        drain_requested: Notify::new(),
        stats: ClientStats::default(),
    });
    let actor = Actor {
        config,
        rx,
        inbound: in_tx,
        shared: shared.clone(),
        pending: HashMap::new(),
        subs: Subs::default(),
        ready: false,
        draining: None,
        heartbeat_ms: 0,
        liveness: 0,
    };
    // ZeroMQ I/O belongs on a current_thread runtime. When the caller runs one
    // (every service binary does), the socket task joins it: no thread hop
    // between handlers and the socket. Otherwise (a multi_thread runtime, or no
    // runtime) it gets a thread of its own with a current_thread runtime.
    let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
    let same_runtime = match actor.config.io_thread {
        Some(thread) => !thread && flavor.is_ok(),
        None => matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::CurrentThread)),
    };
    if same_runtime {
        tokio::spawn(actor.run());
    } else {
        std::thread::Builder::new()
            .name("bus-io".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the bus runtime");
                        return;
                    }
                };
                rt.block_on(actor.run());
            })
            .map_err(|e| Error::internal(format!("cannot start the bus thread: {e}")))?;
    }
    Ok(Connection {
        handle: Handle { tx, shared },
        inbound: in_rx,
    })
}

// === impl Handle ===

impl Handle {
    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    /// This instance's service (empty for a pure client).
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// Whether the client is registered with a broker now.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Client counters.
    pub fn stats(&self) -> &ClientStats {
        &self.shared.stats
    }

    /// Waits until registered with the broker, at most `timeout`.
    ///
    /// # Errors
    ///
    /// `unavailable` when the timeout passes first.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), Error> {
        let wait = async {
            loop {
                let notified = self.shared.connected_notify.notified();
                if self.is_connected() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::new(ErrorCode::Unavailable, "no broker connection"))
    }

    /// Completes when the broker (or the supervisor through it) asks this instance
    /// to drain.
    pub async fn drain_requested(&self) {
        self.shared.drain_requested.notified().await;
    }

    /// Sends a request and waits for its reply (or the error that ends it).
    ///
    /// # Errors
    ///
    /// The reply's error, or `unavailable`/`timeout`/`overloaded` from the bus.
    pub async fn call(
        &self,
        service: &str,
        op: &str,
        body: Vec<u8>,
        options: CallOptions,
    ) -> Result<Envelope, Error> {
        let timeout_ms = options
            .timeout
            .map(|t| t.as_millis() as u64)
            .unwrap_or(self.shared.default_timeout_ms);
        let deadline = options
            .deadline
            .unwrap_or_else(|| proto::now_ms() + timeout_ms);
        let mut env = Envelope::request(service, op, body, deadline);
        env.instance = options.instance;
        env.key = options.key;
        env.user = options.user;
        env.session = options.session;
        env.idem = options.idem;
        env.trace = if options.trace.is_empty() {
            new_trace_id()
        } else {
            options.trace
        };
        self.request(env).await
    }

    /// Sends a fully built request envelope (its `id` and `from` are set here).
    ///
    /// # Errors
    ///
    /// As [`Handle::call`].
    pub async fn request(&self, mut env: Envelope) -> Result<Envelope, Error> {
        env.kind = Kind::Request;
        env.id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        env.from.clone_from(&self.shared.instance);
        if env.deadline == 0 {
            env.deadline = proto::now_ms() + self.shared.default_timeout_ms;
        }
        // The broker would drop it as malformed and the caller would wait for its
        // deadline: refuse it here, at once.
        env.check_lengths()
            .map_err(|e| Error::bad_request(e.to_string()))?;
        let frame =
            proto::encode(&env).map_err(|e| Error::new(ErrorCode::TooLarge, e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        let deadline = env.deadline;
        self.tx
            .send(Cmd::Request {
                id: env.id,
                frame: Bytes::from(frame),
                deadline,
                idem: env.idem,
                tx,
            })
            .await
            .map_err(|_| closed())?;
        // The socket task answers every request by its deadline (plus grace) and
        // drops the sender if it stops, so this wait ends without a timer of its own.
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(closed()),
        }
    }

    /// Publishes an event on `topic`.
    ///
    /// # Errors
    ///
    /// `bad_request` for an invalid topic; `unavailable` when closed.
    pub async fn publish(&self, topic_name: &str, body: Vec<u8>) -> Result<(), Error> {
        topic::validate(topic_name, false).map_err(|e| Error::bad_request(e.to_string()))?;
        let mut env = Envelope::new(Kind::Event);
        env.to = topic_name.to_owned();
        env.from.clone_from(&self.shared.instance);
        env.body = proto::ByteBuf::from(body);
        self.send_env(&env).await
    }

    /// Subscribes to a pattern (see [`switchboard_proto::topic`]).
    ///
    /// # Errors
    ///
    /// `bad_request` for an invalid pattern; `unavailable` when closed.
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, Error> {
        topic::validate(pattern, true).map_err(|e| Error::bad_request(e.to_string()))?;
        let (tx, rx) = mpsc::channel(SUB_CAPACITY);
        let sub = self.shared.next_sub.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Cmd::Subscribe {
                sub,
                pattern: pattern.to_owned(),
                tx,
            })
            .await
            .map_err(|_| closed())?;
        Ok(Subscription {
            rx,
            sub,
            tx: self.tx.clone(),
        })
    }

    /// Sends the reply to an [`Incoming`] request.
    ///
    /// # Errors
    ///
    /// `unavailable` when the client is closed.
    pub async fn reply(&self, token: Bytes, env: &Envelope) -> Result<(), Error> {
        let frame = proto::encode(env).map_err(|e| Error::internal(e.to_string()))?;
        let mut msg = ZmqMessage::from(frame);
        msg.push_front(token);
        self.tx.send(Cmd::Send(msg)).await.map_err(|_| closed())
    }

    /// Tells the broker this instance takes requests (and again after reconnects).
    ///
    /// # Errors
    ///
    /// `unavailable` when the client is closed.
    pub async fn ready(&self) -> Result<(), Error> {
        self.tx.send(Cmd::Ready).await.map_err(|_| closed())
    }

    /// Takes this instance out of rotation and waits (at most `timeout`) until the
    /// broker has acknowledged: after that no new request arrives.
    ///
    /// # Errors
    ///
    /// `unavailable` when closed or not acknowledged in time.
    pub async fn drain(&self, timeout: Duration) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Drain(tx)).await.map_err(|_| closed())?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Error::new(ErrorCode::Unavailable, "drain not acknowledged")),
        }
    }

    /// Asks the broker to drain another instance (supervisor use).
    ///
    /// # Errors
    ///
    /// `unavailable` when the client is closed.
    pub async fn drain_instance(&self, instance: &str) -> Result<(), Error> {
        let mut env = Envelope::new(Kind::Drain);
        env.instance = Some(instance.to_owned());
        self.send_env(&env).await
    }

    /// Says `bye` and stops the socket task, waiting at most `timeout`.
    pub async fn close(&self, timeout: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close(tx)).await.is_ok() {
            let _ = tokio::time::timeout(timeout, rx).await;
        }
    }

    async fn send_env(&self, env: &Envelope) -> Result<(), Error> {
        let frame =
            proto::encode(env).map_err(|e| Error::new(ErrorCode::TooLarge, e.to_string()))?;
        self.tx
            .send(Cmd::Send(ZmqMessage::from(frame)))
            .await
            .map_err(|_| closed())
    }
}

fn closed() -> Error {
    Error::new(ErrorCode::Unavailable, "bus client closed")
}

/// A fresh random trace id (16 hex digits).
pub fn new_trace_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

// === impl Actor ===

struct Pending {
    frame: Bytes,
    deadline: u64,
    idem: bool,
    sent: bool,
    tx: oneshot::Sender<Result<Envelope, Error>>,
}

struct Actor {
    config: Config,
    rx: mpsc::Receiver<Cmd>,
    inbound: mpsc::Sender<Incoming>,
    shared: Arc<Shared>,
    pending: HashMap<u64, Pending>,
    subs: Subs,
    ready: bool,
    draining: Option<oneshot::Sender<()>>,
    heartbeat_ms: u64,
    liveness: u32,
}

/// The local subscriptions: each has an id and a queue; several may share a
/// pattern (the broker is told of a pattern once). Events are matched through a
/// [`topic::Index`], so delivering one does not scan every subscription.
#[derive(Default)]
struct Subs {
    by_id: HashMap<u64, (String, mpsc::Sender<Box<Envelope>>)>,
    index: topic::Index<u64>,
    /// Subscriptions per pattern.
    patterns: HashMap<String, usize>,
}

impl Subs {
    /// Adds a subscription; true when its pattern is new (tell the broker).
    fn add(&mut self, id: u64, pattern: String, tx: mpsc::Sender<Box<Envelope>>) -> bool {
        self.index.insert(&pattern, id);
        let count = self.patterns.entry(pattern.clone()).or_insert(0);
        *count += 1;
        let first = *count == 1;
        self.by_id.insert(id, (pattern, tx));
        first
    }

    /// Removes a subscription; its pattern if it was the last one on it.
    fn remove(&mut self, id: u64) -> Option<String> {
        let (pattern, _) = self.by_id.remove(&id)?;
        self.index.remove(&pattern, &id);
        let count = self.patterns.get_mut(&pattern)?;
        *count -= 1;
        if *count > 0 {
            return None;
        }
        self.patterns.remove(&pattern);
        Some(pattern)
    }

    fn patterns(&self) -> Vec<String> {
        self.patterns.keys().cloned().collect()
    }

    /// Queues `env` for every matching subscription; returns how many were full.
    fn deliver(&self, env: &Envelope) -> u64 {
        let mut dropped = 0;
        self.index.for_each_match(&env.to, |id| {
            if let Some((_, tx)) = self.by_id.get(id) {
                if tx.try_send(Box::new(env.clone())).is_err() {
                    dropped += 1;
                }
            }
        });
        dropped
    }
}

/// Why a connected session ended.
enum End {
    /// Reconnect.
    Lost(&'static str),
    /// Every handle is gone or `close` was called.
    Closed,
}

impl Actor {
    async fn run(mut self) {
        let mut backoff_ms = 50;
        loop {
            // One connect attempt, serving commands (requests wait in `pending`)
            // while it runs.
            let attempt = connect_once(self.config.clone());
            tokio::pin!(attempt);
            let mut sweep = tokio::time::interval(SWEEP);
            let connected = loop {
                tokio::select! {
                    result = &mut attempt => break result,
                    _ = sweep.tick() => self.expire(proto::now_ms()),
                    cmd = self.rx.recv() => match cmd {
                        None => return,
                        Some(Cmd::Close(done)) => { let _ = done.send(()); return; }
                        Some(cmd) => self.on_cmd_offline(cmd),
                    },
                }
            };
            self.expire(proto::now_ms());
            let Some((mut socket, welcome)) = connected else {
                if let End::Closed = self.wait_while_disconnected(backoff_ms).await {
                    return;
                }
                backoff_ms = (backoff_ms * 2).min(1_000);
                continue;
            };
            backoff_ms = 50;
            self.heartbeat_ms = u64::from(welcome.heartbeat_ms).max(10);
            self.liveness = welcome.liveness.max(1);
            let end = self.session(&mut socket).await;
            self.shared.connected.store(false, Ordering::Release);
            self.fail_unsent_safe();
            // A drain waiting for its ack is complete: without a connection
            // nothing can be routed to us.
            if let Some(done) = self.draining.take() {
                let _ = done.send(());
            }
            match end {
                End::Closed => {
                    let bye = encode_simple(Kind::Bye);
                    let _ = try_send(&mut socket.0, ZmqMessage::from(bye));
                    // Give the writer task a moment to put the bye on the wire.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    return;
                }
                End::Lost(why) => {
                    tracing::warn!(reason = why, "broker connection lost; reconnecting");
                }
            }
        }
    }

    /// While no connection is up: serve commands for `ms` (requests wait in
    /// `pending`), expire what passes its deadline.
    async fn wait_while_disconnected(&mut self, ms: u64) -> End {
        let until = tokio::time::Instant::now() + Duration::from_millis(ms);
        let mut sweep = tokio::time::interval(SWEEP);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return End::Lost("backoff"),
                _ = sweep.tick() => {}
                cmd = self.rx.recv() => match cmd {
                    None => return End::Closed,
                    Some(Cmd::Close(done)) => { let _ = done.send(()); return End::Closed; }
                    Some(cmd) => self.on_cmd_offline(cmd),
                }
            }
            self.expire(proto::now_ms());
        }
    }

    fn on_cmd_offline(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Request {
                id,
                frame,
                deadline,
                idem,
                tx,
            } => {
                self.pending.insert(
                    id,
                    Pending {
                        frame,
                        deadline,
                        idem,
                        sent: false,
                        tx,
                    },
                );
            }
            Cmd::Subscribe { sub, pattern, tx } => {
                self.subs.add(sub, pattern, tx);
            }
            Cmd::Unsubscribe { sub } => {
                self.subs.remove(sub);
            }
            Cmd::Ready => self.ready = true,
            Cmd::Drain(done) => {
                // Not connected: nothing can be routed to us.
                self.ready = false;
                let _ = done.send(());
            }
            Cmd::Send(_) | Cmd::Close(_) => {}
        }
    }

    async fn session(&mut self, (socket, monitor): &mut Session) -> End {
        self.shared.connected.store(true, Ordering::Release);
        self.shared.connected_notify.notify_waiters();
        self.shared
            .stats
            .registrations
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(broker = %self.config.broker, instance = %self.config.instance, "registered with the broker");
        // Restore state: subscriptions, readiness, then requests that waited.
        for pattern in self.subs.patterns() {
            let _ = try_send(
                socket,
                ZmqMessage::from(encode_topic(Kind::Subscribe, &pattern)),
            );
        }
        if self.ready {
            let _ = try_send(socket, ZmqMessage::from(encode_simple(Kind::Ready)));
        }
        let now = proto::now_ms();
        let resend: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline > now && (!p.sent || p.idem))
            .map(|(&id, _)| id)
            .collect();
        for id in resend {
            if let Some(p) = self.pending.get_mut(&id) {
                p.sent = try_send(socket, ZmqMessage::from(p.frame.clone()));
            }
        }

        let mut last_recv = proto::now_ms();
        let mut heartbeat = tokio::time::interval(Duration::from_millis(self.heartbeat_ms));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(SWEEP);
        let heartbeat_frame = encode_simple(Kind::Heartbeat);
        loop {
            // Not biased: a steady stream of incoming messages must not starve the
            // commands (replies and new requests) waiting to go out.
            tokio::select! {
                event = monitor.next() => {
                    if let Some(SocketEvent::Disconnected(_)) | None = event {
                        return End::Lost("connection closed");
                    }
                }
                msg = socket.recv() => {
                    match msg {
                        Ok(msg) => {
                            last_recv = proto::now_ms();
                            if let Some(end) = self.on_message(socket, msg) { return end; }
                            for _ in 0..255 {
                                match socket.recv().now_or_never() {
                                    Some(Ok(msg)) => if let Some(end) = self.on_message(socket, msg) { return end; },
                                    Some(Err(_)) | None => break,
                                }
                            }
                        }
                        Err(_) => return End::Lost("receive error"),
                    }
                }
                cmd = self.rx.recv() => {
                    match cmd {
                        None => return End::Closed,
                        Some(cmd) => if let Some(end) = self.on_cmd(socket, cmd) { return end; },
                    }
                    for _ in 0..255 {
                        match self.rx.try_recv() {
                            Ok(cmd) => if let Some(end) = self.on_cmd(socket, cmd) { return end; },
                            Err(_) => break,
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    let now = proto::now_ms();
                    if now.saturating_sub(last_recv) > self.heartbeat_ms * u64::from(self.liveness) {
                        return End::Lost("broker silent for too long");
                    }
                    let _ = try_send(socket, ZmqMessage::from(heartbeat_frame.clone()));
                }
                _ = sweep.tick() => self.expire(proto::now_ms()),
            }
            // Let the socket's writer task (and, on a shared runtime, the
            // handlers) run between batches: zeromq's reads do not yield by
            // themselves.
            tokio::task::yield_now().await;
        }
    }

    fn on_cmd(&mut self, socket: &mut DealerSocket, cmd: Cmd) -> Option<End> {
        match cmd {
            Cmd::Request {
                id,
                frame,
                deadline,
                idem,
                tx,
            } => {
                if try_send(socket, ZmqMessage::from(frame.clone())) {
                    self.pending.insert(
                        id,
                        Pending {
                            frame,
                            deadline,
                            idem,
                            sent: true,
                            tx,
                        },
                    );
                } else {
                    let _ = tx.send(Err(Error::new(
                        ErrorCode::Overloaded,
                        "bus send queue full",
                    )));
                }
            }
            Cmd::Send(msg) => {
                let _ = try_send(socket, msg);
            }
            Cmd::Subscribe { sub, pattern, tx } => {
                if self.subs.add(sub, pattern.clone(), tx) {
                    let _ = try_send(
                        socket,
                        ZmqMessage::from(encode_topic(Kind::Subscribe, &pattern)),
                    );
                }
            }
            Cmd::Unsubscribe { sub } => {
                if let Some(pattern) = self.subs.remove(sub) {
                    let _ = try_send(
                        socket,
                        ZmqMessage::from(encode_topic(Kind::Unsubscribe, &pattern)),
                    );
                }
            }
            Cmd::Ready => {
                self.ready = true;
                let _ = try_send(socket, ZmqMessage::from(encode_simple(Kind::Ready)));
            }
            Cmd::Drain(done) => {
                self.ready = false;
                self.draining = Some(done);
                let _ = try_send(socket, ZmqMessage::from(encode_simple(Kind::Drain)));
            }
            Cmd::Close(done) => {
                let _ = done.send(());
                return Some(End::Closed);
            }
        }
        None
    }

    fn on_message(&mut self, socket: &mut DealerSocket, msg: ZmqMessage) -> Option<End> {
        let mut frames = msg.into_vecdeque();
        let (token, payload) = match frames.len() {
            1 => (None, frames.pop_front()?),
            2 => (frames.pop_front(), frames.pop_front()?),
            _ => return None,
        };
        let env = match proto::decode(&payload) {
            Ok(env) => env,
            Err(e) => {
                tracing::debug!(error = %e, "undecodable message from the broker dropped");
                return None;
            }
        };
        match (env.kind, token) {
            (Kind::Request, Some(token)) => self.on_request(socket, token, env),
            (Kind::Reply, None) => {
                if let Some(p) = self.pending.remove(&env.id) {
                    let result = match env.error.clone() {
                        Some(error) => Err(error.into()),
                        None => Ok(env),
                    };
                    let _ = p.tx.send(result);
                }
            }
            (Kind::Event, None) => {
                let dropped = self.subs.deliver(&env);
                if dropped > 0 {
                    self.shared
                        .stats
                        .events_dropped
                        .fetch_add(dropped, Ordering::Relaxed);
                }
            }
            (Kind::Drain, None) if env.op == "ack" => {
                if let Some(done) = self.draining.take() {
                    let _ = done.send(());
                }
            }
            (Kind::Drain, None) => self.shared.drain_requested.notify_waiters(),
            (Kind::Bye, None) => return Some(End::Lost("the broker does not know us")),
            _ => {}
        }
        None
    }

    fn on_request(&mut self, socket: &mut DealerSocket, token: Bytes, env: Envelope) {
        if self.config.service.is_empty() {
            return;
        }
        if let Err(e) = self.inbound.try_send(Incoming {
            token,
            env: Box::new(env),
        }) {
            // Only when the service stopped reading or exceeded its own credit.
            let (token, env) = match e {
                mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i) => {
                    (i.token, i.env)
                }
            };
            let reply = Envelope::error_reply(
                env.id,
                &env.trace,
                proto::ErrorBody::new(ErrorCode::Overloaded, "instance request queue full"),
            );
            tracing::warn!(op = %env.op, "request refused: instance queue full");
            if let Ok(frame) = proto::encode(&reply) {
                let mut msg = ZmqMessage::from(frame);
                msg.push_front(token);
                let _ = try_send(socket, msg);
            }
        }
    }

    /// Fails requests whose deadline (plus grace) has passed.
    fn expire(&mut self, now: u64) {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline + DEADLINE_GRACE_MS <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                let error = if p.sent {
                    Error::new(ErrorCode::Timeout, "no reply before the deadline")
                } else {
                    Error::new(
                        ErrorCode::Unavailable,
                        "no broker connection before the deadline",
                    )
                };
                let _ = p.tx.send(Err(error));
            }
        }
    }

    /// After a connection loss: requests that were sent and are not idempotent
    /// cannot be known to be safe to send again; they fail now with `unavailable`.
    fn fail_unsent_safe(&mut self) {
        let lost: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.sent && !p.idem)
            .map(|(&id, _)| id)
            .collect();
        for id in lost {
            if let Some(p) = self.pending.remove(&id) {
                let _ = p.tx.send(Err(Error::new(
                    ErrorCode::Unavailable,
                    "broker connection lost with the request in flight",
                )));
            }
        }
        for p in self.pending.values_mut() {
            p.sent = false;
        }
    }
}

type Session = (DealerSocket, futures::channel::mpsc::Receiver<SocketEvent>);

/// One connect attempt, handshake and registration included.
async fn connect_once(config: Config) -> Option<(Session, Welcome)> {
    let mut options = SocketOptions::default();
    options.max_message_size(config.max_message_bytes);
    options.connect_timeout(Duration::from_millis(config.connect_timeout_ms));
    let mut socket = DealerSocket::with_options(options);
    let monitor = socket.monitor();
    let attempt = tokio::time::timeout(
        Duration::from_millis(config.connect_timeout_ms),
        socket.connect(&config.broker),
    )
    .await;
    match attempt {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, broker = %config.broker, "connect failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(broker = %config.broker, "connect timed out");
            return None;
        }
    }
    match tokio::time::timeout(
        Duration::from_millis(config.connect_timeout_ms.max(500) * 2),
        register(&config, &mut socket),
    )
    .await
    {
        Ok(Ok(welcome)) => Some(((socket, monitor), welcome)),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "registration refused");
            None
        }
        Err(_) => {
            tracing::debug!("registration timed out");
            None
        }
    }
}

async fn register(config: &Config, socket: &mut DealerSocket) -> Result<Welcome, Error> {
    let mut hello = Hello {
        service: config.service.clone(),
        instance: config.instance.clone(),
        pid: std::process::id(),
        credit: config.credit,
        proof: None,
        successor: config.successor,
    };
    send_hello(socket, &hello).await?;
    loop {
        let msg = socket
            .recv()
            .await
            .map_err(|e| Error::new(ErrorCode::Unavailable, e.to_string()))?;
        let Some(env) = msg.iter().last().and_then(|f| proto::decode(f).ok()) else {
            continue;
        };
        if env.kind != Kind::Hello {
            continue;
        }
        if let Some(error) = env.error {
            return Err(error.into());
        }
        let welcome: Welcome =
            proto::from_body(&env.body).map_err(|e| Error::internal(e.to_string()))?;
        if welcome.accepted {
            return Ok(welcome);
        }
        let (Some(nonce), Some(secret)) = (&welcome.nonce, &config.secret) else {
            return Err(Error::new(
                ErrorCode::Unauthorized,
                "the broker requires a secret and none is configured",
            ));
        };
        let proof = auth::proof(secret.as_bytes(), nonce, &hello.service, &hello.instance);
        hello.proof = Some(proto::ByteBuf::from(proof.to_vec()));
        send_hello(socket, &hello).await?;
    }
}

/// Sends without waiting: `false` if the peer queue is full or there is no peer.
fn try_send(socket: &mut DealerSocket, msg: ZmqMessage) -> bool {
    matches!(socket.send(msg).now_or_never(), Some(Ok(())))
}

async fn send_hello(socket: &mut DealerSocket, hello: &Hello) -> Result<(), Error> {
    let mut env = Envelope::new(Kind::Hello);
    env.from.clone_from(&hello.instance);
    env.body =
        proto::ByteBuf::from(proto::to_body(hello).map_err(|e| Error::internal(e.to_string()))?);
    let frame = proto::encode(&env).map_err(|e| Error::internal(e.to_string()))?;
    socket
        .send(ZmqMessage::from(frame))
        .await
        .map_err(|e| Error::new(ErrorCode::Unavailable, e.to_string()))
}

fn encode_simple(kind: Kind) -> Bytes {
    Bytes::from(proto::encode(&Envelope::new(kind)).unwrap_or_default())
}

fn encode_topic(kind: Kind, pattern: &str) -> Bytes {
    let mut env = Envelope::new(kind);
    env.to = pattern.to_owned();
    Bytes::from(proto::encode(&env).unwrap_or_default())
}
