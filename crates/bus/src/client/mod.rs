//! The bus client: one DEALER socket owned by one task.
//!
//! [`connect`] runs the socket actor on a current_thread runtime (the zeromq crate
//! is 2.5x faster there than on a multi_thread runtime): the caller's, when it is
//! one (every service binary), else a thread of its own ([`Config::io_thread`]);
//! it returns a cloneable [`Handle`] that any runtime can use. The actor:
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
//!
//! # Layout
//!
//! - `actor`: the socket actor: reconnects, heartbeats, requests, subscriptions.
//! - `handle`: [`Handle`], what every task holds to use the bus.
//! - `handshake`: one connection attempt, the `hello` and its challenge.
//! - `pending`: a request in flight, and where its outcome goes (a waiting
//!   task, or a callback).
//! - `subs`: the local subscriptions, each with its queue, matched by topic.
//! - this file: [`Config`], [`connect`], the shared state.

mod actor;
mod handle;
mod handshake;
mod pending;
mod subs;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// Broker endpoint, [`proto::DEFAULT_BROKER`] by default.
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
    /// Connect to a broker on another host without a secret. Off by default
    /// (from `SB_INSECURE=1`): a bus that crosses a network is authenticated
    /// on every hop, and [`connect`] refuses otherwise.
    pub insecure: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            broker: proto::DEFAULT_BROKER.into(),
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
            insecure: std::env::var("SB_INSECURE").is_ok_and(|v| v == "1"),
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
    /// Registrations the broker refused (an answer all the same: the broker
    /// is alive).
    pub refusals: AtomicU64,
    /// Events dropped because a local subscriber was not keeping up.
    pub events_dropped: AtomicU64,
    /// Subscriptions the broker refused (past its per-peer cap).
    pub subs_refused: AtomicU64,
    /// Messages refused here for their size (`too_large`): requests, events,
    /// and replies replaced by a `too_large` error reply.
    pub too_large: AtomicU64,
}

/// Where the answer to a subscription goes: `Ok` once the broker holds its
/// pattern, or the broker's refusal (`overloaded` past its per-peer cap).
pub(super) type SubAck = oneshot::Sender<Result<(), Error>>;

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
    /// The message cap this client sends under: its own `max_message_bytes`,
    /// lowered to the broker's when its welcome announces a smaller one.
    max_message: AtomicUsize,
    /// Whether the socket task runs on a thread of its own (`bus-io`) rather
    /// than on the caller's runtime.
    own_thread: bool,
}

enum Cmd {
    /// A request to send, kept (by id) until its reply or its deadline.
    Request {
        id: u64,
        pending: pending::Pending,
    },
    /// Frames to send as they are (replies, events, control).
    Send(ZmqMessage),
    Subscribe {
        sub: u64,
        pattern: String,
        tx: mpsc::Sender<Box<Envelope>>,
        /// Answered once the broker has taken (or refused) the pattern.
        ack: SubAck,
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
        unsubscribe_on_drop(&self.tx, self.sub);
    }
}

/// Tells the socket task a subscription ended, from a `Drop`: at once when the
/// command queue has room, else from a task (an unsubscribe lost to a full
/// queue would leave the broker delivering to nobody, or, for a shared
/// channel, to whoever subscribes the topic next: twice).
fn unsubscribe_on_drop(tx: &mpsc::Sender<Cmd>, sub: u64) {
    if let Err(mpsc::error::TrySendError::Full(cmd)) = tx.try_send(Cmd::Unsubscribe { sub }) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let tx = tx.clone();
            rt.spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }
}

/// A subscription made with [`Handle::subscribe_into`]: its events go to the
/// channel given then. [`SharedSubscription::close`] unsubscribes in order
/// with the commands sent after it; dropping it unsubscribes too, but a
/// subscription made meanwhile may be told to the broker first.
#[derive(Debug)]
pub struct SharedSubscription {
    sub: u64,
    tx: mpsc::Sender<Cmd>,
    closed: bool,
}

impl SharedSubscription {
    /// Unsubscribes: once this returns, the socket task has the unsubscribe
    /// ahead of anything sent after it (a new subscription to the same topic
    /// never overlaps this one).
    pub async fn close(mut self) {
        self.closed = true;
        let _ = self.tx.send(Cmd::Unsubscribe { sub: self.sub }).await;
    }
}

impl Drop for SharedSubscription {
    fn drop(&mut self) {
        if !self.closed {
            unsubscribe_on_drop(&self.tx, self.sub);
        }
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
    /// Do not record this call as a span of its trace (the caller records the
    /// hop itself: the gateway's `ws` span covers its bus call).
    pub no_span: bool,
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
    let has_secret = config.secret.as_ref().is_some_and(|s| !s.is_empty());
    let remote = endpoints(&config.broker)
        .iter()
        .any(|e| !proto::is_local_endpoint(e));
    if !has_secret && !config.insecure && remote {
        return Err(Error::bad_request(format!(
            "refusing to join the bus at {} without a secret: it is not on this host, so              every hop must be authenticated (set SB_SECRET to the broker's, or SB_INSECURE=1)",
            config.broker
        )));
    }
    proto::validate_name(&config.instance)
        .map_err(|e| Error::bad_request(format!("instance name: {e}")))?;
    if !config.service.is_empty() {
        proto::validate_name(&config.service)
            .map_err(|e| Error::bad_request(format!("service name: {e}")))?;
    }
    let (tx, rx) = mpsc::channel(CMD_CAPACITY);
    let (in_tx, in_rx) = mpsc::channel(config.credit.max(1) as usize + 64);
    // ZeroMQ I/O belongs on a current_thread runtime. When the caller runs one
    // (every service binary does), the socket task joins it: no thread hop
    // between handlers and the socket. Otherwise (a multi_thread runtime, or no
    // runtime) it gets a thread of its own with a current_thread runtime.
    let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
    let same_runtime = match config.io_thread {
        Some(thread) => !thread && flavor.is_ok(),
        None => matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::CurrentThread)),
    };
    let shared = Arc::new(Shared {
        own_thread: !same_runtime,
        instance: config.instance.clone(),
        service: config.service.clone(),
        default_timeout_ms: config.default_timeout_ms,
        next_id: AtomicU64::new(1),
        next_sub: AtomicU64::new(1),
        connected: AtomicBool::new(false),
        connected_notify: Notify::new(),
        drain_requested: Notify::new(),
        stats: ClientStats::default(),
        max_message: AtomicUsize::new(config.max_message_bytes),
    });
    let actor = actor::Actor::new(config, rx, in_tx, shared.clone());
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

/// Checks an encoded envelope of `kind` against the cap it must cross (see
/// [`proto::max_envelope_len`]); over it, counts it and answers `too_large`.
/// Sending it would make the broker (or, for a request, the worker it is
/// forwarded to) close the connection, and with it every request in flight.
fn check_size(shared: &Shared, kind: Kind, len: usize) -> Result<(), Error> {
    let limit = shared.max_message.load(Ordering::Relaxed);
    let max = proto::max_envelope_len(limit, kind);
    if len <= max {
        return Ok(());
    }
    shared.stats.too_large.fetch_add(1, Ordering::Relaxed);
    let what = match kind {
        Kind::Request => "request",
        Kind::Reply => "reply",
        Kind::Event => "event",
        _ => "message",
    };
    crate::metrics::too_large(what);
    warn_too_large(what, len, max);
    Err(Error::new(
        ErrorCode::TooLarge,
        format!("{what} of {len} bytes is over the bus limit of {max} bytes"),
    ))
}

/// Logs a message refused for its size at most once per [`TOO_LARGE_LOG_MS`]
/// per process, with how many were refused since the last line: a client that
/// asks for oversized replies in a loop must not flood the log. (A few lines of
/// atomics; a rate-limiting crate would bring a clock and a map for one site.)
fn warn_too_large(what: &'static str, len: usize, max: usize) {
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    static SINCE: AtomicU64 = AtomicU64::new(0);
    let now = proto::now_ms();
    let last = LAST_MS.load(Ordering::Relaxed);
    let suppressed = SINCE.fetch_add(1, Ordering::Relaxed);
    if now.saturating_sub(last) < TOO_LARGE_LOG_MS
        || LAST_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    SINCE.store(0, Ordering::Relaxed);
    tracing::warn!(
        kind = what,
        bytes = len,
        max,
        suppressed,
        "message over the bus limit refused: too_large (further ones are counted in sb_bus_too_large_total)"
    );
}

/// Least time between two "message over the bus limit" log lines.
const TOO_LARGE_LOG_MS: u64 = 10_000;

fn closed() -> Error {
    Error::new(ErrorCode::Unavailable, "bus client closed")
}

/// A fresh random trace id (16 hex digits).
pub fn new_trace_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The endpoints in a `broker` setting: one, or a pair separated by a comma.
fn endpoints(broker: &str) -> Vec<String> {
    let list: Vec<String> = broker
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    if list.is_empty() {
        vec![broker.to_owned()]
    } else {
        list
    }
}
