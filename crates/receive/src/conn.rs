//! One client connection: the HTTP head (health, path, token), the upgrade, the
//! reader (frames → requests), the writer (outbox → socket), and the goodbye.

use futures::{SinkExt, StreamExt};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard_bus::proto::{self, api, ErrorCode, REPLY_SUBSCRIBE, REPLY_UNSUBSCRIBE};
use switchboard_bus::{new_trace_id, CallOptions};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::hub::ConnOut;
use crate::outbox::{Next, Outbox};
use crate::{jwt, wire, Gateway};

/// Close code: idle (no pong).
pub const CLOSE_IDLE: u16 = 4000;
/// Close code: flooding past the rate limit.
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: frame too large.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: shutting down.
pub const CLOSE_AWAY: u16 = 1001;

/// Longest HTTP request head read before the upgrade.
const MAX_HEAD: usize = 8 * 1024;
/// Initial read buffer of a connection (grown for larger frames).
const READ_BUFFER: usize = 1024;
/// Time a client has to send its HTTP request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// What the HTTP request head asks for.
enum Route {
    Health,
    Upgrade { token: Option<String> },
    NotFound,
}

/// Serves one TCP connection to its end.
pub async fn handle(
    gw: Arc<Gateway>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    shutdown: CancellationToken,
) {
    let mut stream = stream;
    let route = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&stream)).await {
        Ok(Some(route)) => route,
        _ => {
            let _ = respond(
                &mut stream,
                "400 Bad Request",
                r#"{"error":"bad or slow HTTP request"}"#,
            )
            .await;
            return;
        }
    };
    let token = match route {
        Route::Health => {
            let _ = respond(&mut stream, "200 OK", &gw.health_json()).await;
            return;
        }
        Route::NotFound => {
            let _ = respond(
                &mut stream,
                "404 Not Found",
                r#"{"error":"WebSocket paths are /ws and /uws/*; health is /health"}"#,
            )
            .await;
            return;
        }
        Route::Upgrade { token } => token,
    };
    if gw.stats.open.load(Ordering::Relaxed) >= gw.settings.max_connections {
        gw.stats.refused.fetch_add(1, Ordering::Relaxed);
        let _ = respond(
            &mut stream,
            "503 Service Unavailable",
            r#"{"error":"too many connections"}"#,
        )
        .await;
        return;
    }
    let user = match (&gw.settings.auth_secret, token) {
        (Some(secret), Some(token)) => {
            match jwt::verify(secret.as_bytes(), &token, proto::now_ms() / 1000) {
                Ok(sub) => Some(sub),
                Err(reason) => {
                    let body =
                        serde_json::json!({"error": {"code": "unauthorized", "message": reason}})
                            .to_string();
                    let _ = respond(&mut stream, "401 Unauthorized", &body).await;
                    return;
                }
            }
        }
        (Some(_), None) => None,
        (None, _) => Some(format!(
            "anon-{:012x}",
            rand::random::<u64>() & 0xffff_ffff_ffff
        )),
    };
    // tungstenite's defaults (128 KiB read and write buffers per connection) cost
    // 140 KiB an idle connection; frames here are at most a few KiB.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(gw.settings.max_frame_bytes))
        .max_frame_size(Some(gw.settings.max_frame_bytes));
    let ws = match tokio_tungstenite::accept_async_with_config(stream, Some(config)).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "handshake failed");
            return;
        }
    };
    gw.stats.accepted.fetch_add(1, Ordering::Relaxed);
    gw.stats.open.fetch_add(1, Ordering::Relaxed);
    let session = format!("{}-{id}", gw.bus.instance());
    let conn = Connection {
        out: Arc::new(ConnOut {
            outbox: Outbox::new(gw.settings.send_buffer, gw.settings.send_buffer_hard),
            binary: AtomicBool::new(false),
        }),
        gw: gw.clone(),
        id,
        session,
        user: Mutex::new(None),
        topics: Mutex::new(HashSet::new()),
        inflight: AtomicUsize::new(0),
    };
    let conn = Arc::new(conn);
    if let Some(user) = user {
        conn.open_session(user).await;
    }
    tracing::debug!(%peer, session = %conn.session, "client connected");
    let (sink, stream) = ws.split();
    let writer = tokio::spawn(write_loop(sink, conn.out.clone()));
    let why = conn.clone().read_loop(stream, &shutdown).await;
    conn.finish(why, writer).await;
    gw.stats.open.fetch_sub(1, Ordering::Relaxed);
}

/// Why the reader stopped.
enum Why {
    ClientGone,
    Shutdown,
    Closing,
}

struct Connection {
    gw: Arc<Gateway>,
    out: Arc<ConnOut>,
    id: u64,
    session: String,
    user: Mutex<Option<String>>,
    topics: Mutex<HashSet<String>>,
    inflight: AtomicUsize,
}

/// Token bucket for the per-connection request rate.
struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
    /// Requests refused in a row; past `burst` of them the client is flooding.
    refused: u32,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused = 0;
            true
        } else {
            self.refused += 1;
            false
        }
    }
}

// === impl Connection ===

impl Connection {
    fn user(&self) -> Option<String> {
        self.user.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets the user and tells the services the session opened; subscribes the
    /// client to its direct-message topic.
    async fn open_session(self: &Arc<Self>, user: String) {
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

    async fn subscribe(self: &Arc<Self>, topic: &str) -> Result<(), switchboard_bus::Error> {
        self.gw
            .hub
            .subscribe(topic, self.id, self.out.clone())
            .await?;
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_owned());
        Ok(())
    }

    fn unsubscribe(&self, topic: &str) {
        self.gw.hub.unsubscribe(topic, self.id);
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
    }

    async fn read_loop<S>(self: Arc<Self>, mut stream: S, shutdown: &CancellationToken) -> Why
    where
        S: futures::Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let settings = &self.gw.settings;
        let mut bucket = Bucket {
            tokens: f64::from(settings.rate_burst),
            last: Instant::now(),
            rate: f64::from(settings.rate_per_sec),
            burst: f64::from(settings.rate_burst.max(1)),
            refused: 0,
        };
        let idle = Duration::from_millis(settings.idle_timeout_ms);
        let mut ping =
            tokio::time::interval(Duration::from_millis(settings.ping_interval_ms.max(10)));
        ping.tick().await;
        let mut last_seen = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Why::Shutdown,
                () = self.out.outbox.closing.cancelled() => return Why::Closing,
                _ = ping.tick() => {
                    if last_seen.elapsed() >= idle {
                        self.out.outbox.close(CLOSE_IDLE, "idle timeout: no frame or pong");
                        return Why::Closing;
                    }
                    self.out.outbox.reply(Message::Ping(bytes::Bytes::from_static(b"sb")));
                }
                frame = stream.next() => {
                    let msg = match frame {
                        None => return Why::ClientGone,
                        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                            tracing::debug!(session = %self.session, size, max_size, "frame too large");
                            self.out.outbox.close(CLOSE_TOO_BIG, &format!("frame of {size} bytes exceeds {max_size}"));
                            return Why::Closing;
                        }
                        Some(Err(e)) => {
                            tracing::debug!(session = %self.session, error = %e, "read error");
                            return Why::ClientGone;
                        }
                        Some(Ok(msg)) => msg,
                    };
                    last_seen = Instant::now();
                    match msg {
                        Message::Text(_) | Message::Binary(_) => {
                            let binary = matches!(msg, Message::Binary(_));
                            if binary {
                                self.out.binary.store(true, Ordering::Relaxed);
                            }
                            if !bucket.take() {
                                if bucket.refused > settings.rate_burst {
                                    self.out.outbox.close(CLOSE_POLICY, "flooding past the rate limit");
                                    return Why::Closing;
                                }
                                let id = wire::parse(&msg).map(|m| m.id).unwrap_or_default();
                                let text = format!("rate limit: {} requests/s", settings.rate_per_sec);
                                self.out.outbox.reply(wire::error(&id, ErrorCode::Overloaded, &text, binary));
                                continue;
                            }
                            self.on_frame(&msg, binary).await;
                        }
                        Message::Close(_) => return Why::ClientGone,
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
            }
        }
    }

    async fn on_frame(self: &Arc<Self>, msg: &Message, binary: bool) {
        let reply_err = |id: &serde_json::Value, code: ErrorCode, text: &str| {
            self.out.outbox.reply(wire::error(id, code, text, binary));
        };
        let m = match wire::parse(msg) {
            Ok(m) => m,
            Err(e) => return reply_err(&serde_json::Value::Null, ErrorCode::BadRequest, &e),
        };
        let Some(op) = m.op.as_deref() else {
            return reply_err(&m.id, ErrorCode::BadRequest, "missing op");
        };
        let Some(to) = m.to.as_deref() else {
            return self.gateway_op(&m, op, binary).await;
        };
        let Some(user) = self.user() else {
            return reply_err(
                &m.id,
                ErrorCode::Unauthorized,
                "authenticate first: token query parameter or the auth op",
            );
        };
        if proto::validate_name(to).is_err() || proto::validate_name(op).is_err() {
            return reply_err(&m.id, ErrorCode::BadRequest, "invalid service or op name");
        }
        if to.starts_with('$') || self.gw.settings.deny_services.iter().any(|s| s == to) {
            return reply_err(
                &m.id,
                ErrorCode::Forbidden,
                &format!("{to} is not open to clients"),
            );
        }
        if self.inflight.load(Ordering::Relaxed) >= self.gw.settings.max_inflight_per_conn {
            let text = format!(
                "more than {} requests in flight on this connection",
                self.gw.settings.max_inflight_per_conn
            );
            return reply_err(&m.id, ErrorCode::Overloaded, &text);
        }
        let body = match wire::json_to_body(m.data.as_ref()) {
            Ok(body) => body,
            Err(e) => return reply_err(&m.id, ErrorCode::BadRequest, &e),
        };
        let key = self
            .gw
            .settings
            .route_keys
            .get(to)
            .and_then(|field| m.data.as_ref()?.get(field)?.as_str())
            .map(str::to_owned);
        let options = CallOptions {
            timeout: Some(Duration::from_millis(self.gw.settings.request_timeout_ms)),
            trace: new_trace_id(),
            user: Some(user),
            session: Some(self.session.clone()),
            key,
            ..CallOptions::default()
        };
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.gw.stats.requests.fetch_add(1, Ordering::Relaxed);
        let conn = self.clone();
        let (to, op, id) = (to.to_owned(), op.to_owned(), m.id);
        tokio::spawn(async move {
            let reply = match conn.gw.bus.call(&to, &op, body, options).await {
                Ok(env) => {
                    let mut data = wire::body_to_json(&env.body);
                    conn.apply_directives(&mut data).await;
                    wire::ok(&id, &data, binary)
                }
                Err(e) => wire::error(&id, e.code, &e.message, binary),
            };
            conn.out.outbox.reply(reply);
            conn.inflight.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Applies and strips `$subscribe` / `$unsubscribe` in a service's reply.
    async fn apply_directives(self: &Arc<Self>, data: &mut serde_json::Value) {
        let Some(map) = data.as_object_mut() else {
            return;
        };
        let subscribe = map.remove(REPLY_SUBSCRIBE);
        let unsubscribe = map.remove(REPLY_UNSUBSCRIBE);
        for topic in topics_of(subscribe.as_ref()) {
            if proto::topic::validate(topic, true).is_ok() {
                self.subscribe(topic).await.ok();
            }
        }
        for topic in topics_of(unsubscribe.as_ref()) {
            self.unsubscribe(topic);
        }
    }

    async fn gateway_op(self: &Arc<Self>, m: &wire::ClientMsg, op: &str, binary: bool) {
        let ok = |data: serde_json::Value| self.out.outbox.reply(wire::ok(&m.id, &data, binary));
        let err = |code: ErrorCode, text: &str| {
            self.out
                .outbox
                .reply(wire::error(&m.id, code, text, binary))
        };
        let field = |name: &str| {
            m.topic
                .clone()
                .filter(|_| name == "topic")
                .or_else(|| m.token.clone().filter(|_| name == "token"))
                .or_else(|| m.data.as_ref()?.get(name)?.as_str().map(str::to_owned))
        };
        match op {
            "ping" => ok(serde_json::json!({})),
            "subscribe" | "unsubscribe" => {
                let Some(topic) = field("topic") else {
                    return err(ErrorCode::BadRequest, "missing topic");
                };
                if let Err(e) = proto::topic::validate(&topic, true) {
                    return err(ErrorCode::BadRequest, &e.to_string());
                }
                if self.user().is_none() {
                    return err(ErrorCode::Unauthorized, "authenticate first");
                }
                if op == "unsubscribe" {
                    self.unsubscribe(&topic);
                    return ok(serde_json::json!({}));
                }
                let first = topic.split('.').next().unwrap_or_default();
                if !self.gw.settings.client_topics.iter().any(|t| t == first) {
                    let allowed = self.gw.settings.client_topics.join(", ");
                    return err(ErrorCode::Forbidden, &format!("clients may subscribe under {allowed} only"));
                }
                match self.subscribe(&topic).await {
                    Ok(()) => ok(serde_json::json!({})),
                    Err(e) => err(e.code, &e.message),
                }
            }
            "auth" => {
                let Some(secret) = self.gw.settings.auth_secret.clone() else {
                    return err(ErrorCode::BadRequest, "this gateway runs without authentication");
                };
                let Some(token) = field("token") else {
                    return err(ErrorCode::BadRequest, "missing token");
                };
                match jwt::verify(secret.as_bytes(), &token, proto::now_ms() / 1000) {
                    Ok(sub) => {
                        if let Some(current) = self.user() {
                            if current != sub {
                                return err(ErrorCode::Forbidden, "already authenticated as another user");
                            }
                            return ok(serde_json::json!({ "user": current }));
                        }
                        self.open_session(sub.clone()).await;
                        ok(serde_json::json!({ "user": sub }))
                    }
                    Err(reason) => err(ErrorCode::Unauthorized, reason),
                }
            }
            other => err(
                ErrorCode::UnknownOp,
                &format!("the gateway has no op {other:?} (ping, subscribe, unsubscribe, auth); name a service in \"to\""),
            ),
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
        let topics: Vec<String> = self
            .topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for topic in topics {
            self.gw.hub.unsubscribe(&topic, self.id);
        }
        if let Some(user) = self.user() {
            self.publish_session(api::SESSION_CLOSE, &user).await;
        }
        tracing::debug!(session = %self.session, "client disconnected");
    }
}

fn topics_of(value: Option<&serde_json::Value>) -> impl Iterator<Item = &str> {
    value
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str())
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

/// Reads the HTTP request head without consuming it (the WebSocket handshake
/// reads it again) and decides what it asks for.
async fn read_head(stream: &TcpStream) -> Option<Route> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut seen = 0;
    loop {
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if let Some(end) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(route(&buf[..end]));
        }
        if n >= MAX_HEAD {
            return None;
        }
        if n == seen {
            // Only part of the head has arrived: wait a little for the rest.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        seen = n;
    }
}

fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Route::NotFound;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if method == "GET" && path == "/health" {
        return Route::Health;
    }
    if method != "GET" || !(path == "/ws" || path == "/uws" || path.starts_with("/uws/")) {
        return Route::NotFound;
    }
    let token = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| percent_decode(v));
    Route::Upgrade { token }
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_path() {
        assert!(matches!(route(b"GET /health HTTP/1.1"), Route::Health));
        assert!(matches!(
            route(b"GET /ws HTTP/1.1"),
            Route::Upgrade { token: None }
        ));
        assert!(matches!(
            route(b"GET /uws/anything/here HTTP/1.1"),
            Route::Upgrade { token: None }
        ));
        assert!(matches!(route(b"GET /other HTTP/1.1"), Route::NotFound));
        assert!(matches!(route(b"POST /ws HTTP/1.1"), Route::NotFound));
        match route(b"GET /ws?a=1&token=ab%2Ec HTTP/1.1") {
            Route::Upgrade { token } => assert_eq!(token.as_deref(), Some("ab.c")),
            _ => panic!("expected an upgrade"),
        }
    }

    #[test]
    fn percent_decoding_is_total() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("x%41y"), "xAy");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%é1"), "%é1");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
