//! One client connection after the handshake ([`crate::http`]): the reader
//! (frames → requests), the writer (outbox → socket), grants, and the goodbye.
//!
//! - this file: the connection's state, its topics, the writer and the goodbye;
//! - [`read`]: the read loop (rate limit, pings, token expiry, go-away);
//! - [`frame`]: one client frame → a bus call or a gateway op, and grants.

mod frame;
mod read;

use futures::{SinkExt, StreamExt};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard_bus::proto::{self, api, ErrorCode};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::http::Admission;
use crate::hub::ConnOut;
use crate::outbox::{Limits, Next, Outbox};
use crate::{jwt, Gateway};

/// Close code: idle (no pong).
pub const CLOSE_IDLE: u16 = 4000;
/// Close code: the token expired.
pub const CLOSE_EXPIRED: u16 = 4002;
/// Close code: not authenticated in time.
pub const CLOSE_AUTH_TIMEOUT: u16 = 4003;
/// Close code: flooding past the rate limit.
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: frame too large.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: shutting down.
pub const CLOSE_AWAY: u16 = 1001;

/// Initial read buffer of a connection (grown for larger frames).
pub const READ_BUFFER: usize = 1024;

/// Serves one TCP connection to its end.
pub async fn handle(
    gw: Arc<Gateway>,
    stream: TcpStream,
    mut admission: Admission,
    id: u64,
    shutdown: CancellationToken,
) {
    let peer = stream.peer_addr().ok();
    let Some(upgrade) = crate::http::handshake(&gw, stream, &mut admission).await else {
        return;
    };
    gw.stats.accepted.fetch_add(1, Ordering::Relaxed);
    gw.stats.open.fetch_add(1, Ordering::Relaxed);
    let session = api::session_id(gw.bus.instance(), id);
    let s = &gw.settings;
    let conn = Client {
        out: Arc::new(ConnOut {
            outbox: Outbox::new(Limits {
                soft: s.send_buffer,
                hard: s.send_buffer_hard,
                soft_bytes: s.send_buffer_bytes,
                hard_bytes: s.send_buffer_hard_bytes,
            }),
            binary: AtomicBool::new(false),
        }),
        gw: gw.clone(),
        id,
        session,
        user: Mutex::new(None),
        expires_ms: AtomicU64::new(0),
        topics: Mutex::new(Some(HashSet::new())),
        inflight: AtomicUsize::new(0),
    };
    let conn = Arc::new(conn);
    match (&gw.settings.tokens, upgrade.token) {
        (Some(_), Some(token)) => conn.open_session(token).await,
        (Some(_), None) => {
            // Must authenticate with the `auth` op before the auth timeout.
            let limit = proto::now_ms() + gw.settings.auth_timeout_ms;
            conn.expires_ms.store(limit, Ordering::Relaxed);
        }
        (None, _) => {
            let user = format!("anon-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
            conn.open_session(jwt::Verified { user, expires_s: 0 })
                .await;
        }
    }
    tracing::debug!(?peer, session = %conn.session, "client connected");
    let (sink, stream) = upgrade.ws.split();
    let writer = tokio::spawn(write_loop(sink, conn.out.clone()));
    let why = conn.clone().read_loop(stream, &shutdown).await;
    conn.finish(why, writer).await;
    gw.stats.open.fetch_sub(1, Ordering::Relaxed);
    drop(admission);
}

/// Why the reader stopped.
enum Why {
    ClientGone,
    Shutdown,
    Closing,
}

struct Client {
    gw: Arc<Gateway>,
    out: Arc<ConnOut>,
    id: u64,
    session: String,
    user: Mutex<Option<String>>,
    /// When the connection must be closed, ms since the epoch (0: never): the
    /// token's end, or before authentication the auth deadline.
    expires_ms: AtomicU64,
    /// The connection's topics; `None` once it is closing, so that a reply that
    /// arrives late cannot subscribe a connection that is gone.
    topics: Mutex<Option<HashSet<String>>>,
    inflight: AtomicUsize,
}

// === impl Client ===

impl Client {
    fn user(&self) -> Option<String> {
        self.user.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets the user and tells the services the session opened; subscribes the
    /// client to its direct-message topic.
    async fn open_session(self: &Arc<Self>, token: jwt::Verified) {
        let user = token.user;
        self.expires_ms
            .store(token.expires_s.saturating_mul(1000), Ordering::Relaxed);
        *self.user.lock().unwrap_or_else(|p| p.into_inner()) = Some(user.clone());
        self.publish_session(api::SESSION_OPEN, &user).await;
        let topic = format!("user.{user}");
        if proto::topic::validate(&topic, false).is_ok() {
            self.subscribe(&topic).await.ok();
        }
    }

    async fn publish_session(&self, topic: &str, user: &str) {
        let body = proto::to_body(&api::Session {
            user: user.to_owned(),
            session: self.session.clone(),
            gateway: self.gw.bus.instance().to_owned(),
        });
        if let Ok(body) = body {
            if let Err(e) = self.gw.bus.publish(topic, body).await {
                tracing::warn!(error = %e, topic, "session event not published");
            }
        }
    }

    fn topics(&self) -> std::sync::MutexGuard<'_, Option<HashSet<String>>> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes the client to `topic`, within its subscription cap.
    async fn subscribe(self: &Arc<Self>, topic: &str) -> Result<(), switchboard_bus::Error> {
        {
            let topics = self.topics();
            let Some(topics) = topics.as_ref() else {
                return Err(switchboard_bus::Error::new(
                    ErrorCode::Unavailable,
                    "connection closing",
                ));
            };
            if topics.contains(topic) {
                return Ok(());
            }
            let cap = self.gw.settings.max_subscriptions;
            if topics.len() >= cap {
                return Err(switchboard_bus::Error::new(
                    ErrorCode::Overloaded,
                    format!("this connection already holds {cap} subscriptions: unsubscribe first"),
                ));
            }
        }
        self.gw
            .hub
            .subscribe(topic, self.id, self.out.clone())
            .await?;
        let mut topics = self.topics();
        match topics.as_mut() {
            Some(topics) => {
                topics.insert(topic.to_owned());
            }
            // Closed while the bus subscribed: undo at once.
            None => self.gw.hub.unsubscribe(topic, self.id),
        }
        Ok(())
    }

    fn unsubscribe(&self, topic: &str) {
        if let Some(topics) = self.topics().as_mut() {
            if topics.remove(topic) {
                self.gw.hub.unsubscribe(topic, self.id);
            }
        }
    }

    /// Stops the connection: waits (within the grace period) for in-flight replies
    /// to be queued, closes with the right code, tells the services.
    async fn finish(self: Arc<Self>, why: Why, writer: tokio::task::JoinHandle<()>) {
        if matches!(why, Why::Shutdown | Why::ClientGone) {
            let until = Instant::now() + Duration::from_millis(self.gw.settings.shutdown_grace_ms);
            while self.inflight.load(Ordering::Relaxed) > 0
                && Instant::now() < until
                && !self.out.outbox.is_closing()
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if self.out.outbox.too_slow.load(Ordering::Relaxed) {
            self.gw.stats.closed_slow.fetch_add(1, Ordering::Relaxed);
        }
        match why {
            Why::Shutdown => self.out.outbox.close(CLOSE_AWAY, "server shutting down"),
            Why::ClientGone => self.out.outbox.close(1000, ""),
            Why::Closing => {}
        }
        // The writer sends what is queued and the close frame; a client that does
        // not read gets a second, then the socket is dropped.
        let abort = writer.abort_handle();
        if tokio::time::timeout(Duration::from_secs(1), writer)
            .await
            .is_err()
        {
            abort.abort();
        }
        let topics = self.topics().take().unwrap_or_default();
        for topic in topics {
            self.gw.hub.unsubscribe(&topic, self.id);
        }
        if let Some(user) = self.user() {
            self.publish_session(api::SESSION_CLOSE, &user).await;
        }
        tracing::debug!(session = %self.session, "client disconnected");
    }
}

async fn write_loop<S>(mut sink: S, out: Arc<ConnOut>)
where
    S: futures::Sink<Message, Error = WsError> + Unpin,
{
    loop {
        match out.outbox.next().await {
            Next::Send(batch) => {
                for msg in batch {
                    if sink.feed(msg).await.is_err() {
                        out.outbox.close(1000, "");
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    out.outbox.close(1000, "");
                    return;
                }
            }
            Next::Close(frame) => {
                let _ = sink.send(Message::Close(Some(frame))).await;
                let _ = sink.close().await;
                return;
            }
        }
    }
}
