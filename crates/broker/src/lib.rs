//! The Switchboard broker: one ZeroMQ ROUTER socket that every process's DEALER
//! connects to.
//!
//! It keeps the registry of services and their instances, routes each request to
//! the ready instance with the fewest requests in flight (or the pinned instance,
//! or the owner of the request's key), holds requests for a known service that has
//! no ready instance until one is ready or the deadline passes, fans events out to
//! subscribers, and watches every peer's heartbeats. It knows nothing about chat or
//! locations.
//!
//! # Layout
//!
//! - [`cli`]: the `broker` binary's command line.
//! - [`router`]: the state machine ([`router::Router`]); all routing decisions.
//! - [`ha`]: a broker pair (primary and backup, the ZeroMQ guide's Binary Star).
//! - `metrics`: every metric the broker records (`sb_broker_*`).
//! - this file: [`Settings`], [`bind`] and [`run`], the socket task.
//!
//! # Never blocking on a send
//!
//! The zeromq crate's ROUTER `send` waits when a peer's 100,000-message queue is
//! full, which would stall the broker for every peer behind one stuck peer. The
//! socket task therefore polls each send exactly once (`now_or_never`): the crate
//! first tries a non-blocking `try_send` into that peer's queue, so a send either
//! completes at once or the message is dropped and counted. Requests cannot be
//! dropped that way, because an instance never has more than its credit in flight;
//! a caller never has more than `max_inflight_per_client` replies owed. Events to a
//! slow subscriber are what gets dropped (`events_dropped`).

pub mod cli;
pub mod ha;
mod metrics;
pub mod router;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use zeromq::{RouterSocket, Socket, SocketEvent, SocketOptions, SocketRecv, SocketSend};

pub use router::Router;
pub use switchboard_proto::BrokerStats;

/// Broker settings. Units are in the names.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Endpoint to bind, [`switchboard_proto::DEFAULT_BROKER`] by default (loopback unless told
    /// otherwise); `ipc:///path` also works.
    pub bind: String,
    /// Shared bus secret; when set, every peer must prove it knows it in `hello`.
    pub secret: Option<String>,
    /// Heartbeat interval both ways.
    pub heartbeat_ms: u64,
    /// Missed intervals after which a silent peer is dead.
    pub liveness: u32,
    /// Largest message a peer may send; a longer frame closes its connection.
    pub max_message_bytes: usize,
    /// Deadline given to a request that carries none.
    pub default_deadline_ms: u64,
    /// Held requests per service at most; past that, `overloaded`.
    pub max_held_per_service: usize,
    /// Requests in flight from one peer at most; past that, `overloaded`.
    pub max_inflight_per_client: u32,
    /// Upper bound on the credit an instance may ask for.
    pub max_credit: u32,
    /// Services declared up front: their requests are held, not refused, before
    /// any instance registers.
    pub services: Vec<String>,
    /// Distinct service names at most (declared and registered); a `hello` with a
    /// new name past it is refused (`overloaded`).
    pub max_services: usize,
    /// Subscriptions one peer may hold; more are dropped and counted.
    pub max_subs_per_peer: usize,
    /// Furthest a request's deadline may be ahead, ms; a later one is cut to it.
    pub max_deadline_ms: u64,
    /// Run without a secret (loopback and `ipc://` only): every local user
    /// can then join the bus as any service. Off by default: without a secret
    /// and without this, [`bind`] refuses.
    pub insecure: bool,
    /// One of a broker pair (failover), or a single broker (`None`).
    pub ha: Option<ha::HaSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bind: switchboard_proto::DEFAULT_BROKER.into(),
            secret: None,
            heartbeat_ms: switchboard_proto::HEARTBEAT_INTERVAL.as_millis() as u64,
            liveness: switchboard_proto::HEARTBEAT_LIVENESS,
            max_message_bytes: switchboard_proto::DEFAULT_MAX_MESSAGE_LEN,
            default_deadline_ms: 5_000,
            max_held_per_service: 10_000,
            max_inflight_per_client: 10_000,
            max_credit: 1_024,
            services: Vec::new(),
            max_services: 1_024,
            max_subs_per_peer: 100_000,
            max_deadline_ms: 5 * 60 * 1000,
            insecure: false,
            ha: None,
        }
    }
}

/// How often the socket task ticks the router (deadline expiry resolution).
const TICK: Duration = Duration::from_millis(5);
/// Pair state datagrams read per turn of the loop at most.
const HA_BATCH: usize = 8;

/// How many already-arrived messages the socket task takes in one go before it
/// flushes sends and checks the clock.
const RECV_BATCH: usize = 256;

/// Creates the ROUTER socket with our options and binds it.
///
/// # Errors
///
/// When the endpoint cannot be bound.
pub async fn bind(settings: &Settings) -> anyhow::Result<(RouterSocket, String)> {
    let has_secret = settings.secret.as_ref().is_some_and(|s| !s.is_empty());
    if !has_secret && !settings.insecure {
        anyhow::bail!(
            "refusing to run without a bus secret: any local user could join the bus as any \
             service (set --secret / SB_SECRET; main makes one in its run folder), or pass \
             --insecure for a loopback-only bus without one"
        );
    }
    if !has_secret && !is_local(&settings.bind) {
        anyhow::bail!(
            "refusing to bind {} without a secret: any host that reaches it could join the bus \
             (--insecure is for loopback and ipc:// only; set --secret / SB_SECRET)",
            settings.bind
        );
    }
    let mut options = SocketOptions::default();
    options.max_message_size(settings.max_message_bytes);
    let mut socket = RouterSocket::with_options(options);
    let endpoint = socket
        .bind(&settings.bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", settings.bind))?;
    Ok((socket, endpoint.to_string()))
}

/// Whether an endpoint is reachable from this host only: `ipc://`, or TCP on a
/// loopback address.
pub fn is_local(endpoint: &str) -> bool {
    switchboard_proto::is_local_endpoint(endpoint)
}

/// The partner's address (a broker pair's), looked up off the loop (a name
/// that does not resolve yet, a Service not created yet, must never hold up
/// routing): every heartbeat until it resolves, then every 30 s in case it
/// moves. `None` (no pair): never an address.
fn resolve_partner(
    peer: Option<String>,
    heartbeat: Duration,
) -> tokio::sync::watch::Receiver<Option<std::net::SocketAddr>> {
    let (addr_tx, peer_addr) = tokio::sync::watch::channel(None::<std::net::SocketAddr>);
    if let Some(peer) = peer {
        tokio::spawn(async move {
            loop {
                match tokio::net::lookup_host(peer.as_str()).await {
                    Ok(mut found) => {
                        if let Some(addr) = found.next() {
                            addr_tx.send_replace(Some(addr));
                        }
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "partner not resolved yet"),
                }
                let wait = if addr_tx.borrow().is_some() {
                    Duration::from_secs(30)
                } else {
                    heartbeat
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = addr_tx.closed() => return,
                }
            }
        });
    }
    peer_addr
}

/// Runs the broker on a bound socket until `shutdown` is cancelled. Must run on a
/// current_thread runtime (the zeromq crate is 2.5x slower on multi_thread).
///
/// Returns the final counters.
pub async fn run(
    settings: Settings,
    mut socket: RouterSocket,
    shutdown: CancellationToken,
) -> BrokerStats {
    let mut monitor = socket.monitor();
    let ha = settings.ha.clone();
    let secret = settings.secret.clone().filter(|s| !s.is_empty());
    let heartbeat = Duration::from_millis(settings.heartbeat_ms);
    let mut router = Router::new(settings);
    // The pair's state channel: a UDP socket, our state to the partner every
    // heartbeat, theirs in (see `ha`).
    let pair = match &ha {
        Some(h) => match tokio::net::UdpSocket::bind(h.bind).await {
            Ok(udp) => {
                router.ha = Some(ha::Pair::new(
                    h.role,
                    heartbeat.as_millis() as u64,
                    switchboard_proto::now_ms(),
                ));
                router.stats.ha = router
                    .ha
                    .as_ref()
                    .map(ha::Pair::describe)
                    .unwrap_or_default();
                tracing::info!(role = ?h.role, bind = %h.bind, peer = %h.peer, "one of a broker pair");
                Some((udp, h.peer.clone()))
            }
            Err(e) => {
                tracing::error!(bind = %h.bind, error = %e, "cannot bind the broker pair's state socket");
                return router.stats.clone();
            }
        },
        None => None,
    };
    let mut state_tick = tokio::time::interval(heartbeat);
    let peer_addr = resolve_partner(pair.as_ref().map(|(_, peer)| peer.clone()), heartbeat);
    let mut datagram = [0u8; 128];
    let mut ha_wrong_source_logged = false;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    router.on_tick(switchboard_proto::now_ms());
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = state_tick.tick(), if pair.is_some() => {
                if let (Some((udp, _)), Some(p)) = (&pair, router.ha.as_mut()) {
                    let addr = *peer_addr.borrow();
                    if let Some(addr) = addr {
                        let d = p.next_datagram(switchboard_proto::now_ms());
                        let _ = udp.try_send_to(&ha::encode(&d, secret.as_deref()), addr);
                    }
                }
            }
            event = monitor.next() => {
                if let Some(SocketEvent::Disconnected(peer)) = event {
                    router.on_disconnect(&Bytes::from(peer), switchboard_proto::now_ms());
                }
            }
            msg = socket.recv() => {
                let now = switchboard_proto::now_ms();
                match msg {
                    Ok(msg) => router.on_message(msg, now),
                    Err(e) => tracing::debug!(error = %e, "recv error"),
                }
                for _ in 1..RECV_BATCH {
                    match socket.recv().now_or_never() {
                        Some(Ok(msg)) => router.on_message(msg, now),
                        Some(Err(_)) | None => break,
                    }
                }
            }
            _ = tick.tick() => router.on_tick(switchboard_proto::now_ms()),
        }
        if let Some((udp, _)) = &pair {
            // The partner's state: a few datagrams a turn (the loop turns at
            // least every tick), read without waiting and never ahead of the
            // bus, so a flood on the pair's port cannot hold up routing; the
            // kernel drops what does not fit its buffer.
            //
            // A datagram counts only from the partner's address (as resolved
            // from --ha-peer), proven with the secret, carrying the partner's
            // role (not ours: a reflection) and a counter above the last one
            // taken (not a replay); anything else is refused and counted.
            for _ in 0..HA_BATCH {
                let Ok((n, from)) = udp.try_recv_from(&mut datagram) else {
                    break;
                };
                let now = switchboard_proto::now_ms();
                let partner = *peer_addr.borrow();
                // An IPv6 socket sees an IPv4 partner as ::ffff:a.b.c.d.
                let canonical = |a: std::net::SocketAddr| (a.ip().to_canonical(), a.port());
                let taken = if partner.map(canonical) != Some(canonical(from)) {
                    if !ha_wrong_source_logged {
                        ha_wrong_source_logged = true;
                        tracing::warn!(%from, partner = ?partner, "broker pair: a state datagram not from the partner's address refused (further ones are counted in `unauthenticated`)");
                    }
                    None
                } else {
                    ha::decode(&datagram[..n], now, secret.as_deref())
                        .filter(|d| router.ha.as_mut().is_some_and(|p| p.accept(d)))
                };
                match taken {
                    Some(d) => router.on_partner(d.state, now),
                    None => router.stats.unauthenticated += 1,
                }
            }
        }
        flush(&mut socket, &mut router);
        // The zeromq crate's reads are not under tokio's cooperative budget, so
        // under steady input this loop would never yield, and the per-peer writer
        // tasks (same thread) would not run until the input paused: requests
        // would go out in bursts. Yield after every batch.
        tokio::task::yield_now().await;
    }
    tracing::info!("broker stopping");
    router.stats.clone()
}

fn flush(socket: &mut RouterSocket, router: &mut Router) {
    for out in router.out.drain(..) {
        let sent = matches!(socket.send(out.msg).now_or_never(), Some(Ok(())));
        if !sent {
            if out.event {
                router.stats.events_dropped += 1;
            } else {
                router.stats.send_dropped += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_endpoints() {
        for local in [
            "tcp://127.0.0.1:5555",
            "tcp://127.0.0.2:0",
            "tcp://localhost:1",
            "tcp://[::1]:5555",
            "ipc:///tmp/sb.sock",
        ] {
            assert!(super::is_local(local), "{local}");
        }
        for open in [
            "tcp://0.0.0.0:5555",
            "tcp://*:5555",
            "tcp://10.0.0.1:5555",
            "tcp://[::]:1",
        ] {
            assert!(!super::is_local(open), "{open}");
        }
    }
}
