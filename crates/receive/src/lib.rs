//! The WebSocket gateway: clients connect to one port; each client frame becomes
//! a bus request, each reply and subscribed event goes back to the client.
//!
//! # Layout
//!
//! - this file: [`Settings`], [`Gateway`], [`serve`] (the accept loop).
//! - [`conn`]: one client connection: HTTP head, auth, reader, writer, requests.
//! - [`outbox`]: a connection's bounded send buffer and its slow-client policy.
//! - [`hub`]: topic subscriptions shared by all clients.
//! - [`wire`]: the client protocol's frames (JSON text, MessagePack binary).
//! - [`jwt`]: HS256 token verification.
//!
//! # Close codes
//!
//! | code | why |
//! |---|---|
//! | 1000 | normal close (the client closed) |
//! | 1001 | the gateway is shutting down (after in-flight replies were sent) |
//! | 1008 | flooding: the client kept sending past its rate limit |
//! | 1009 | a frame over `max_frame_bytes` |
//! | 4000 | idle: no frame (or pong) for `idle_timeout_ms` |
//! | 4001 | slow client: its send buffer reached `send_buffer_hard` |

pub mod conn;
pub mod hub;
pub mod jwt;
pub mod outbox;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_bus::Handle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Gateway settings. Defaults are in the README with the reasons for them.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest client frame; a larger one closes the connection with 1009.
    pub max_frame_bytes: usize,
    /// No frame (or pong) for this long closes the connection with 4000.
    pub idle_timeout_ms: u64,
    /// How often the gateway pings each client.
    pub ping_interval_ms: u64,
    /// Messages queued for a client before events are dropped or coalesced.
    pub send_buffer: usize,
    /// Messages queued for a client before it is closed with 4001.
    pub send_buffer_hard: usize,
    /// Requests per second a connection may send (token bucket rate).
    pub rate_per_sec: u32,
    /// Bucket size: the burst a connection may send at once.
    pub rate_burst: u32,
    /// Connections at once; more get HTTP 503 before the upgrade.
    pub max_connections: usize,
    /// Requests in flight per connection; more get `overloaded`.
    pub max_inflight_per_conn: usize,
    /// Deadline of each request.
    pub request_timeout_ms: u64,
    /// HS256 secret for client tokens; `None` runs open (anonymous users).
    pub auth_secret: Option<String>,
    /// Service → data field whose value is the routing key (`loc` → `zone`).
    pub route_keys: HashMap<String, String>,
    /// Services clients may not call (internal ones).
    pub deny_services: Vec<String>,
    /// First topic tokens clients may subscribe under (`chat`, `loc`).
    pub client_topics: Vec<String>,
    /// How long a shutdown waits for in-flight replies.
    pub shutdown_grace_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_frame_bytes: 8 * 1024,
            idle_timeout_ms: 60_000,
            ping_interval_ms: 20_000,
            send_buffer: 256,
            send_buffer_hard: 1_024,
            rate_per_sec: 200,
            rate_burst: 400,
            max_connections: 10_000,
            max_inflight_per_conn: 64,
            request_timeout_ms: 5_000,
            auth_secret: None,
            route_keys: HashMap::from([
                ("loc".to_owned(), "zone".to_owned()),
                ("chat".to_owned(), "room".to_owned()),
            ]),
            deny_services: vec!["db".into(), "main".into()],
            client_topics: vec!["chat".into(), "loc".into()],
            shutdown_grace_ms: 10_000,
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
    /// Connections refused for `max_connections`.
    pub refused: AtomicU64,
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
    next_conn: AtomicU64,
    started: Instant,
}

impl Gateway {
    /// A gateway over `bus`.
    pub fn new(settings: Settings, bus: Handle) -> Arc<Self> {
        Arc::new(Self {
            hub: hub::Hub::new(bus.clone()),
            settings,
            bus,
            stats: Stats::default(),
            next_conn: AtomicU64::new(1),
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
    if gateway.settings.auth_secret.is_none() {
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
                    let _ = stream.set_nodelay(true);
                    let id = gateway.next_conn.fetch_add(1, Ordering::Relaxed);
                    tracker.spawn(conn::handle(gateway.clone(), stream, peer, id, shutdown.clone()));
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
