//! The WebSocket gateway: clients connect to one port; each client frame becomes
//! a bus request, each reply and subscribed event goes back to the client.
//!
//! # Layout
//!
//! - this file: [`Settings`], [`Gateway`], [`serve`] (the accept loop).
//! - [`cli`]: the `receive` binary's command line ([`Settings`] flattened in).
//! - [`listen`]: binding the port, shared only with this same binary.
//! - [`admission`]: the connection cap and the handshake table, at accept.
//! - [`http`]: a connection before it is a WebSocket: hyper reads the request
//!   head; `/live`, `/ready`, `/health`, refusals, the upgrade.
//! - [`tls`]: TLS on the same port (`wss://`, `https://`).
//! - [`conn`]: one client connection after the upgrade: auth, reader, writer,
//!   requests.
//! - [`outbox`]: a connection's bounded send buffer and its slow-client policy.
//! - [`hub`]: topic subscriptions shared by all clients.
//! - [`shares`]: what one user or one address holds across its connections.
//! - [`wire`]: the client protocol's frames (JSON text, MessagePack binary).
//! - [`jwt`]: HS256 token verification.
//! - [`static_files`]: the demo app and the JavaScript client, served at `/`.
//! - `metrics`: the gateway's metrics, served on `GET /metrics` and `$metrics`.
//!
//! # Close codes
//!
//! | code | why |
//! |---|---|
//! | 1000 | normal close (the client closed) |
//! | 1001 | the gateway is shutting down: sent `goaway_ms` after a `{"goaway"}` notice, once in-flight replies were sent |
//! | 1008 | flooding: the client kept sending past its rate limit |
//! | 1009 | a frame over `max_frame_bytes` |
//! | 1013 | try again later: the user already has `max_connections_per_user` connections, or its address `max_connections_per_ip`, or its own `user.<id>` topic could not be subscribed (the gateway's topic budget is spent) |
//! | 4000 | idle: no frame (or pong) for `idle_timeout_ms` |
//! | 4001 | slow client: its send buffer reached `send_buffer_hard` messages or `send_buffer_hard_bytes` |
//! | 4002 | the client's token expired (and no newer one was presented with `auth`) |
//! | 4003 | not authenticated within `auth_timeout_ms` |
//!
//! Before the upgrade, the HTTP answers are: 400 (not a WebSocket handshake), 401
//! (bad token), 403 (Origin not allowed), 404 (unknown path), 503 (too many
//! connections, all of them WebSockets); a head not complete within
//! `handshake_timeout_ms`, or closed to make room for a newer handshake (see
//! [`admission`]), is dropped without an answer.

pub mod admission;
pub mod cli;
pub mod conn;
pub mod http;
pub mod hub;
pub mod jwt;
pub mod listen;
pub(crate) mod metrics;
pub mod outbox;
pub mod shares;
pub mod static_files;
pub mod tls;
pub mod wire;

/// The client policy lives in the bus crate: chat's `relay` applies it too.
pub use switchboard_bus::policy;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_bus::Handle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Gateway settings, and the command-line flags of each (`receive --help`; each
/// also read from `SB_<NAME>`). Defaults are in docs/services.md with the reasons for them.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Largest client frame; a larger one closes the connection with 1009.
    #[arg(long, env = "SB_MAX_FRAME_BYTES", default_value_t = DEFAULTS.max_frame_bytes)]
    pub max_frame_bytes: usize,
    /// No frame (or pong) for this long closes the connection with 4000.
    #[arg(long, env = "SB_IDLE_TIMEOUT_MS", default_value_t = DEFAULTS.idle_timeout_ms)]
    pub idle_timeout_ms: u64,
    /// How often the gateway pings each client.
    #[arg(long, env = "SB_PING_INTERVAL_MS", default_value_t = DEFAULTS.ping_interval_ms)]
    pub ping_interval_ms: u64,
    /// Messages queued for a client before events are dropped or coalesced.
    #[arg(long, env = "SB_SEND_BUFFER", default_value_t = DEFAULTS.send_buffer)]
    pub send_buffer: usize,
    /// Messages queued for a client before it is closed with 4001.
    #[arg(long, env = "SB_SEND_BUFFER_HARD", default_value_t = DEFAULTS.send_buffer_hard)]
    pub send_buffer_hard: usize,
    /// Bytes queued for a client before events are dropped or coalesced.
    #[arg(long, env = "SB_SEND_BUFFER_BYTES", default_value_t = DEFAULTS.send_buffer_bytes)]
    pub send_buffer_bytes: usize,
    /// Bytes queued for a client (replies included) before it is closed with 4001.
    #[arg(long, env = "SB_SEND_BUFFER_HARD_BYTES", default_value_t = DEFAULTS.send_buffer_hard_bytes)]
    pub send_buffer_hard_bytes: usize,
    /// Requests per second a connection may send (token bucket rate).
    #[arg(long, env = "SB_RATE_PER_SEC", default_value_t = DEFAULTS.rate_per_sec)]
    pub rate_per_sec: u32,
    /// Bucket size: the burst a connection may send at once.
    #[arg(long, env = "SB_RATE_BURST", default_value_t = DEFAULTS.rate_burst)]
    pub rate_burst: u32,
    /// TCP connections at once, counted from accept (handshakes included); more
    /// get HTTP 503.
    #[arg(skip = DEFAULTS.max_connections)]
    pub max_connections: usize,
    /// Connections still in the HTTP handshake at once; past it, the oldest
    /// handshake of the busiest source is closed to admit the new one.
    #[arg(long, env = "SB_MAX_HANDSHAKES", default_value_t = DEFAULTS.max_handshakes)]
    pub max_handshakes: usize,
    /// Connections from one source (IPv4 address, IPv6 /64) still in the
    /// handshake at once; past it, that source's oldest handshake is closed.
    #[arg(long, env = "SB_MAX_HANDSHAKES_PER_IP", default_value_t = DEFAULTS.max_handshakes_per_ip)]
    pub max_handshakes_per_ip: usize,
    /// Time a client has to send its HTTP request head (and get the upgrade).
    #[arg(long, env = "SB_HANDSHAKE_TIMEOUT_MS", default_value_t = DEFAULTS.handshake_timeout_ms)]
    pub handshake_timeout_ms: u64,
    /// With an auth secret: time a connection without a token has to `auth`
    /// before it is closed with 4003.
    #[arg(long, env = "SB_AUTH_TIMEOUT_MS", default_value_t = DEFAULTS.auth_timeout_ms)]
    pub auth_timeout_ms: u64,
    /// Topics one connection may be subscribed to; more get `overloaded`.
    #[arg(long, env = "SB_MAX_SUBSCRIPTIONS", default_value_t = DEFAULTS.max_subscriptions)]
    pub max_subscriptions: usize,
    /// Requests in flight per connection; more get `overloaded`.
    #[arg(long, env = "SB_MAX_INFLIGHT_PER_CONN", default_value_t = DEFAULTS.max_inflight_per_conn)]
    pub max_inflight_per_conn: usize,
    /// Requests in flight per user, all its connections together; more get
    /// `overloaded`.
    #[arg(long, env = "SB_MAX_INFLIGHT_PER_USER", default_value_t = DEFAULTS.max_inflight_per_user)]
    pub max_inflight_per_user: usize,
    /// Requests in flight per address (IPv4, or IPv6 /64); more get `overloaded`.
    /// Every client of the gateway shares one budget at the broker
    /// (`max_inflight_per_client`, 10,000): keep this well under it.
    #[arg(long, env = "SB_MAX_INFLIGHT_PER_IP", default_value_t = DEFAULTS.max_inflight_per_ip)]
    pub max_inflight_per_ip: usize,
    /// Connections one user may hold at once; more are closed with 1013.
    #[arg(long, env = "SB_MAX_CONNECTIONS_PER_USER", default_value_t = DEFAULTS.max_connections_per_user)]
    pub max_connections_per_user: usize,
    /// WebSocket connections from one address (IPv4, IPv6 /64; behind a trusted
    /// proxy, the forwarded client) at once; more are closed with 1013.
    #[arg(long, env = "SB_MAX_CONNECTIONS_PER_IP", default_value_t = DEFAULTS.max_connections_per_ip)]
    pub max_connections_per_ip: usize,
    /// Distinct topics the gateway holds on the bus for all its clients; a
    /// subscription (or grant) that would add one more gets `overloaded`. The
    /// broker holds at most `max_subs_per_peer` (100,000) for the gateway: keep
    /// this under it, and raise both together.
    #[arg(long, env = "SB_MAX_TOPICS", default_value_t = DEFAULTS.max_topics)]
    pub max_topics: usize,
    /// Of those, topics that clients of one address brought in (subscribed
    /// first) and that are still held.
    #[arg(long, env = "SB_MAX_TOPICS_PER_IP", default_value_t = DEFAULTS.max_topics_per_ip)]
    pub max_topics_per_ip: usize,
    /// Deadline of each request.
    #[arg(long, env = "SB_REQUEST_TIMEOUT_MS", default_value_t = DEFAULTS.request_timeout_ms)]
    pub request_timeout_ms: u64,
    /// Client tokens; `None` runs open (anonymous users).
    #[arg(skip)]
    pub tokens: Option<jwt::TokenRules>,
    /// TLS on the port (`wss://`, `https://`); `None`: plain TCP.
    #[arg(skip)]
    pub tls: Option<tls::Tls>,
    /// Serve the demo app and `clients/js` at `/` (`--demo false` turns it off).
    #[arg(long, env = "SB_DEMO", default_value_t = true, action = clap::ArgAction::Set)]
    pub demo: bool,
    /// Browser origins allowed to connect (the `Origin` header) besides the
    /// gateway's own (its scheme and the `Host` it was reached at); `*` allows
    /// any; `null` allows pages opened from files. A request without `Origin`
    /// (not a browser) is always allowed. Comma-separated on the command line.
    #[arg(long, env = "SB_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Proxies (load balancers) whose `X-Forwarded-For` is believed: a client
    /// behind one is counted (shares of requests in flight and topics) and
    /// logged under the address the proxy forwards. Empty: none. CIDRs,
    /// comma-separated on the command line.
    #[arg(long, env = "SB_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// What clients may call, subscribe to and be granted.
    #[arg(skip)]
    pub policy: policy::Policy,
    /// How long a shutdown waits for in-flight replies.
    #[arg(skip = DEFAULTS.shutdown_grace_ms)]
    pub shutdown_grace_ms: u64,
    /// On shutdown: how long a client is still served after its `goaway` notice
    /// (frames it sent before it saw the notice are answered).
    #[arg(long, env = "SB_GOAWAY_MS", default_value_t = DEFAULTS.goaway_ms)]
    pub goaway_ms: u64,
}

/// The defaults, shown by `--help`.
static DEFAULTS: std::sync::LazyLock<Settings> = std::sync::LazyLock::new(Settings::default);

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_frame_bytes: 8 * 1024,
            idle_timeout_ms: 60_000,
            ping_interval_ms: 20_000,
            send_buffer: 256,
            send_buffer_hard: 1_024,
            send_buffer_bytes: 1024 * 1024,
            send_buffer_hard_bytes: 4 * 1024 * 1024,
            rate_per_sec: 200,
            rate_burst: 400,
            max_connections: 10_000,
            max_handshakes: 1_024,
            max_handshakes_per_ip: 32,
            handshake_timeout_ms: 5_000,
            auth_timeout_ms: 10_000,
            max_subscriptions: 64,
            max_inflight_per_conn: 64,
            max_inflight_per_user: 256,
            max_inflight_per_ip: 1_000,
            max_connections_per_ip: 1_024,
            max_connections_per_user: 32,
            max_topics: 90_000,
            max_topics_per_ip: 4_096,
            request_timeout_ms: 5_000,
            tokens: None,
            tls: None,
            demo: true,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            policy: policy::Policy::default(),
            shutdown_grace_ms: 10_000,
            goaway_ms: 500,
        }
    }
}

/// Counters of the gateway.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Open WebSocket connections now.
    pub open: AtomicUsize,
    /// Connections refused at accept (`max_connections`, every one a WebSocket).
    pub refused: AtomicU64,
    /// Handshakes closed to make room for newer ones (see [`admission`]).
    pub handshakes_evicted: AtomicU64,
    /// TCP connections now, from accept (handshakes included).
    pub tcp: AtomicUsize,
    /// Handshakes that did not finish within `handshake_timeout_ms`.
    pub handshake_timeouts: AtomicU64,
    /// Clients closed for not reading (4001). The close frame itself may never
    /// reach a client that does not read; this says why it went.
    pub closed_slow: AtomicU64,
    /// Client requests forwarded to the bus.
    pub requests: AtomicU64,
}

/// Everything the connections share.
pub struct Gateway {
    /// Settings.
    pub settings: Settings,
    /// The bus.
    pub bus: Handle,
    /// Shared subscriptions.
    pub hub: Arc<hub::Hub>,
    /// Counters.
    pub stats: Stats,
    /// Per user: connections and requests in flight.
    pub users: shares::Shares,
    /// Per address: requests in flight and topics brought in.
    pub addresses: Arc<shares::Shares>,
    /// Connections in the handshake (see [`admission::Admission`]).
    pub(crate) handshaking: std::sync::Mutex<admission::Handshaking>,
    next_conn: AtomicU64,
    started: Instant,
}

impl Gateway {
    /// A gateway over `bus`.
    pub fn new(settings: Settings, bus: Handle) -> Arc<Self> {
        let addresses = Arc::new(shares::Shares::default());
        let limits = hub::Limits {
            max_topics: settings.max_topics,
            max_topics_per_ip: settings.max_topics_per_ip,
        };
        Arc::new(Self {
            hub: hub::Hub::new(
                bus.clone(),
                settings.policy.clone(),
                limits,
                addresses.clone(),
            ),
            users: shares::Shares::default(),
            addresses,
            settings,
            bus,
            stats: Stats::default(),
            handshaking: std::sync::Mutex::new(admission::Handshaking::default()),
            next_conn: AtomicU64::new(first_conn_id()),
            started: Instant::now(),
        })
    }

    /// The JSON `GET /health` answers.
    pub fn health_json(&self) -> String {
        serde_json::json!({
            "status": if self.bus.is_connected() { "ok" } else { "degraded" },
            "bus": if self.bus.is_connected() { "connected" } else { "disconnected" },
            "instance": self.bus.instance(),
            "connections": self.stats.open.load(Ordering::Relaxed),
            "max_connections": self.settings.max_connections,
            "tcp": self.stats.tcp.load(Ordering::Relaxed),
            "refused": self.stats.refused.load(Ordering::Relaxed),
            "handshaking": self.handshaking.lock().map_or(0, |h| h.len()),
            "handshakes_evicted": self.stats.handshakes_evicted.load(Ordering::Relaxed),
            "handshake_timeouts": self.stats.handshake_timeouts.load(Ordering::Relaxed),
            "closed_slow": self.stats.closed_slow.load(Ordering::Relaxed),
            "pid": std::process::id(),
            "accepted": self.stats.accepted.load(Ordering::Relaxed),
            "requests": self.stats.requests.load(Ordering::Relaxed),
            "topics": self.hub.topics(),
            "uptime_ms": self.started.elapsed().as_millis() as u64,
        })
        .to_string()
    }
}

/// Accepts connections on `listener` until `shutdown`; then stops accepting,
/// lets every connection finish its in-flight replies, closes it with 1001, and
/// returns once all are closed (or the grace period has passed).
pub async fn serve(gateway: Arc<Gateway>, listener: TcpListener, shutdown: CancellationToken) {
    if gateway.settings.tokens.is_none() {
        tracing::warn!(
            "no auth secret: the gateway runs open, every connection is its own anonymous user"
        );
    }
    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Admission before any byte is read: a connection over a cap
                    // costs one non-blocking write and a close.
                    let admission = match admission::Admission::try_new(&gateway, peer.ip()) {
                        Ok(admission) => admission,
                        Err(why) => {
                            gateway.stats.refused.fetch_add(1, Ordering::Relaxed);
                            http::refuse_now(&stream, why);
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let id = gateway.next_conn.fetch_add(1, Ordering::Relaxed);
                    tracker.spawn(conn::handle(gateway.clone(), stream, admission, id, shutdown.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    tracker.close();
    let grace = Duration::from_millis(gateway.settings.shutdown_grace_ms + 2_000);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("connections still open after the grace period");
    }
    tracing::info!("gateway stopped");
}

/// Where this process's connection ids (and so its session ids,
/// `INSTANCE-ID`) start: at a random point, so that two processes under
/// one instance name — the old and the new one of `sbctl reload receive` —
/// never give two clients the same session id. Counting from 1 in each, the
/// old process's `session.close` for its first client (sent as it drains)
/// could end what chat and loc hold for the new process's first client.
fn first_conn_id() -> u64 {
    // 2^32 starting points, 2^24 connections apart: far more connections
    // than one process makes before another start could come near it.
    (u64::from(rand::random::<u32>()) << 24) | 1
}

#[cfg(test)]
mod conn_id_tests {
    /// Two processes (two calls) start far apart: counting from 1 in each was
    /// the collision this prevents (a 2^-32 chance of a false failure).
    #[test]
    fn each_process_starts_its_connection_ids_elsewhere() {
        let (a, b) = (super::first_conn_id(), super::first_conn_id());
        assert_ne!(a, b);
        assert_ne!(a, 1);
        assert!(a.abs_diff(b) >= 1 << 24, "{a} {b}");
    }
}
