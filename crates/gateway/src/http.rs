//! The HTTP side of a connection, before it is a WebSocket: after admission at
//! accept ([`crate::admission`]), hyper reads the request head and the gateway
//! answers `/live`, `/ready`, `/health`, refuses what it must (path, Origin,
//! token), or upgrades. The whole handshake runs under `handshake_timeout_ms`, so a client
//! that sends half a head and stalls (slowloris) holds its slot only that long,
//! and a stalled socket costs nothing while it waits: hyper reads only when the
//! socket is readable (the old hand-written reader polled every 2 ms).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_bus::proto;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::admission::Admission;
use crate::{jwt, Gateway};

/// Initial read buffer of a connection (grown for larger frames).
pub const READ_BUFFER: usize = 512;
/// Bytes of queued frames gathered into one write to the socket.
pub const WRITE_BATCH: usize = 16 * 1024;

/// The upgraded connection a WebSocket runs on.
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// Answers a refused connection with a 503 if the socket takes it at once, then
/// drops it: never a wait.
pub fn refuse_now(stream: &TcpStream, why: &str) {
    let body = format!(r#"{{"error":{{"code":"overloaded","message":"{why}"}}}}"#);
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(head.as_bytes());
}

/// What the handshake produced.
pub struct Upgrade {
    /// The WebSocket.
    pub ws: WebSocketStream<Upgraded>,
    /// The verified token from the URL, if one was given (and a secret is set).
    pub token: Option<jwt::Verified>,
    /// The client's address as a trusted proxy forwarded it (`X-Forwarded-For`
    /// from one of `--trusted-proxies`), when it did.
    pub forwarded_for: Option<IpAddr>,
}

struct Pending {
    on_upgrade: hyper::upgrade::OnUpgrade,
    token: Option<jwt::Verified>,
    forwarded_for: Option<IpAddr>,
}

/// Runs the TLS handshake (when the gateway has a certificate), then the HTTP
/// one, both under one deadline. `None`: the connection was answered (health,
/// a page, an error), failed or timed out, and is done.
pub async fn handshake(
    gw: &Arc<Gateway>,
    stream: TcpStream,
    peer: Option<IpAddr>,
    admission: &mut Admission,
) -> Option<Upgrade> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(gw.settings.handshake_timeout_ms);
    // `admission` is lent to the handshake, which gives its place back once
    // upgraded; the eviction token is the same for both.
    let evicted = admission.eviction();
    tokio::select! {
        biased;
        () = evicted.cancelled() => None,
        upgrade = tls_then_http(gw, stream, peer, admission, deadline) => upgrade,
    }
}

async fn tls_then_http(
    gw: &Arc<Gateway>,
    stream: TcpStream,
    peer: Option<IpAddr>,
    admission: &mut Admission,
    deadline: tokio::time::Instant,
) -> Option<Upgrade> {
    let Some(tls) = &gw.settings.tls else {
        return http_handshake(gw, stream, peer, admission, deadline).await;
    };
    match tokio::time::timeout_at(deadline, tls.0.accept(stream)).await {
        Ok(Ok(stream)) => http_handshake(gw, stream, peer, admission, deadline).await,
        Ok(Err(e)) => {
            // A plain-HTTP request to a TLS port, an unknown CA, a scanner.
            crate::metrics::TLS_FAILURES.increment(1);
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            gw.stats.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

async fn http_handshake<S>(
    gw: &Arc<Gateway>,
    stream: S,
    peer: Option<IpAddr>,
    admission: &mut Admission,
    deadline: tokio::time::Instant,
) -> Option<Upgrade>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let slot: Arc<Mutex<Option<Pending>>> = Arc::new(Mutex::new(None));
    // Requests answered on this connection: a scraper or a probe that keeps
    // its connection alive between requests and is closed at the deadline did
    // not time out in a handshake.
    let answered = Arc::new(AtomicU32::new(0));
    let service = {
        let gw = gw.clone();
        let slot = slot.clone();
        let answered = answered.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            answered.fetch_add(1, Ordering::Relaxed);
            let response = answer(&gw, req, peer, &slot);
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(8 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    match tokio::time::timeout_at(deadline, conn).await {
        Err(_) => {
            if answered.load(Ordering::Relaxed) == 0 {
                gw.stats.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            return None;
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "http connection failed");
            return None;
        }
        Ok(Ok(())) => {}
    }
    let pending = slot.lock().unwrap_or_else(|p| p.into_inner()).take()?;
    let upgraded = match tokio::time::timeout_at(deadline, pending.on_upgrade).await {
        Ok(Ok(upgraded)) => upgraded,
        _ => return None,
    };
    admission.handshake_done();
    // tungstenite's defaults (128 KiB read and write buffers per connection) cost
    // 140 KiB an idle connection; frames here are at most a few KiB. The write
    // buffer gathers a batch from the outbox into one write: with 0, every frame
    // was a send(2) of its own, a third of the gateway's CPU under load. It grows
    // only as far as a connection's largest batch needs (an idle one stays tiny).
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BATCH)
        .max_message_size(Some(gw.settings.max_frame_bytes))
        .max_frame_size(Some(gw.settings.max_frame_bytes));
    let ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    Some(Upgrade {
        ws,
        token: pending.token,
        forwarded_for: pending.forwarded_for,
    })
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // One request per connection: hyper closes after this answer. (Not
    // `keep_alive(false)`, which would also overwrite the upgrade's `Connection`.)
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({"error": {"code": code, "message": message}}).to_string(),
    )
}

/// Answers one request: health, an error, or the switch to WebSocket (leaving
/// the pending upgrade in `slot`).
fn answer(
    gw: &Arc<Gateway>,
    mut req: Request<Incoming>,
    peer: Option<IpAddr>,
    slot: &Mutex<Option<Pending>>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if req.method() == hyper::Method::GET && path == "/live" {
        // Liveness: the process accepts and answers. Never the bus: a broker
        // outage must not make Kubernetes restart every gateway.
        return json(StatusCode::OK, r#"{"status":"live"}"#.to_owned());
    }
    if req.method() == hyper::Method::GET && (path == "/health" || path == "/ready") {
        // 503 while the gateway cannot serve (no bus): a load balancer's or a
        // readiness probe takes it out of rotation.
        let status = if gw.bus.is_connected() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return json(status, gw.health_json());
    }
    if req.method() == hyper::Method::GET && path == "/metrics" {
        let mut response = Response::new(Full::new(Bytes::from(crate::metrics::text(gw))));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return response;
    }
    if req.method() == hyper::Method::GET && gw.settings.demo {
        if let Some(response) = crate::static_files::get(gw, path) {
            return response;
        }
    }
    let ws_path = path == "/ws" || path == "/uws" || path.starts_with("/uws/");
    if req.method() != hyper::Method::GET || !ws_path {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "WebSocket paths are /ws and /uws/*; probes /live, /ready and /health, metrics /metrics, the demo app /",
        );
    }
    let headers = req.headers();
    let has = |name: header::HeaderName, want: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(want))
            })
        })
    };
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not a WebSocket handshake",
        );
    };
    if !has(header::UPGRADE, "websocket")
        || !has(header::CONNECTION, "upgrade")
        || !has(header::SEC_WEBSOCKET_VERSION, "13")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not a WebSocket 13 handshake",
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let tls = gw.settings.tls.is_some();
        let allowed = origin
            .to_str()
            .is_ok_and(|o| origin_allowed(&gw.settings.allowed_origins, o, host, tls));
        if !allowed {
            return error(StatusCode::FORBIDDEN, "forbidden", "origin not allowed");
        }
    }
    let accept = derive_accept_key(key.as_bytes());
    let token = match (&gw.settings.tokens, query_token(req.uri().query())) {
        (Some(rules), Some(token)) => match jwt::verify(rules, &token, proto::now_ms() / 1000) {
            Ok(verified) => Some(verified),
            Err(reason) => {
                crate::metrics::AUTH_FAILURES.increment(1);
                return error(StatusCode::UNAUTHORIZED, "unauthorized", &reason);
            }
        },
        _ => None,
    };
    let forwarded_for = peer.and_then(|peer| {
        let values = req.headers().get_all("x-forwarded-for");
        forwarded_client(&gw.settings.trusted_proxies, peer, values.iter())
    });
    let on_upgrade = hyper::upgrade::on(&mut req);
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Pending {
        on_upgrade,
        token,
        forwarded_for,
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    response
}

/// The client's address behind trusted proxies: when `peer` is one of
/// `trusted`, the `X-Forwarded-For` addresses read from the right (the nearest
/// hop first), the first that is not itself a trusted proxy. `None` when the
/// peer is not trusted (a client cannot choose its own address by sending the
/// header), or the header is missing or malformed.
pub fn forwarded_client<'a>(
    trusted: &[ipnet::IpNet],
    peer: IpAddr,
    values: impl Iterator<Item = &'a HeaderValue>,
) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return None;
    }
    // Several headers are one list, in order.
    let hops: Vec<&str> = values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    // At most 32 hops are looked at: the header is the client's to make long.
    for hop in hops.iter().rev().take(32) {
        let ip: IpAddr = hop.parse().ok()?;
        if !is_trusted(&ip) {
            return Some(ip);
        }
    }
    None
}

/// Whether a browser page from `origin` may open a WebSocket: the gateway's own
/// origin (the scheme it serves and the `Host` it was reached at, as the demo
/// page served here), one in `allowed` (exact), or any when `allowed` holds
/// `*`. `null` (a file, a sandboxed frame) only when listed. A request
/// without `Origin` is not a browser's and never comes here: browsers always
/// send it on a WebSocket handshake, other clients choose it freely.
pub fn origin_allowed(allowed: &[String], origin: &str, host: Option<&str>, tls: bool) -> bool {
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let (Ok(origin), Some(Ok(host))) = (
        origin.parse::<hyper::Uri>(),
        host.map(str::parse::<hyper::http::uri::Authority>),
    ) else {
        return false;
    };
    let scheme = if tls { "https" } else { "http" };
    let default_port = if tls { 443 } else { 80 };
    // A browser's Origin is scheme://host[:port], never with a user or a path.
    origin.scheme_str() == Some(scheme)
        && origin.path() == "/"
        && origin
            .authority()
            .is_some_and(|a| !a.as_str().contains('@'))
        && origin
            .host()
            .is_some_and(|h| h.eq_ignore_ascii_case(host.host()))
        && origin.port_u16().unwrap_or(default_port) == host.port_u16().unwrap_or(default_port)
}

/// The `token` query parameter, percent-decoded.
fn query_token(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_gateways_own_origin_by_default() {
        let none: &[String] = &[];
        let own = Some("127.0.0.1:3000");
        assert!(origin_allowed(none, "http://127.0.0.1:3000", own, false));
        assert!(origin_allowed(none, "HTTP://127.0.0.1:3000", own, false));
        assert!(origin_allowed(
            none,
            "http://chat.example",
            Some("Chat.Example:80"),
            false
        ));
        assert!(origin_allowed(
            none,
            "https://chat.example",
            Some("chat.example"),
            true
        ));
        for (origin, host) in [
            ("https://evil.example", own),
            ("http://127.0.0.1:3001", own),
            ("https://127.0.0.1:3000", own),
            ("http://127.0.0.1:3000.evil.example", own),
            ("http://user@127.0.0.1:3000", own),
            ("null", own),
            ("", own),
            ("http://127.0.0.1:3000", None),
            ("http://127.0.0.1:3000", Some("bad host header")),
        ] {
            assert!(
                !origin_allowed(none, origin, host, false),
                "{origin} {host:?}"
            );
        }
        let listed = ["https://app.example".to_owned(), "null".to_owned()];
        assert!(origin_allowed(&listed, "https://app.example", own, false));
        assert!(origin_allowed(&listed, "null", own, false));
        assert!(origin_allowed(&listed, "http://127.0.0.1:3000", own, false));
        assert!(!origin_allowed(&listed, "https://evil.example", own, false));
        assert!(origin_allowed(
            &["*".to_owned()],
            "https://evil.example",
            own,
            false
        ));
    }

    #[test]
    fn a_forwarded_address_counts_only_from_a_trusted_proxy() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let h = |v: &str| HeaderValue::from_str(v).unwrap();
        let one = [h("203.0.113.7")];
        assert_eq!(
            forwarded_client(&trusted, proxy, one.iter()),
            Some("203.0.113.7".parse().unwrap())
        );
        // A client's own header is not believed.
        let client: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(forwarded_client(&trusted, client, one.iter()), None);
        // The nearest untrusted hop wins: what the client wrote on the left is
        // not believed either.
        let chain = [h("1.2.3.4, 203.0.113.7"), h("10.9.9.9")];
        assert_eq!(
            forwarded_client(&trusted, proxy, chain.iter()),
            Some("203.0.113.7".parse().unwrap())
        );
        for bad in ["", "not-an-address", "203.0.113.7:443", "10.0.0.1"] {
            let v = [h(bad)];
            assert_eq!(forwarded_client(&trusted, proxy, v.iter()), None, "{bad:?}");
        }
        let long = [h(&vec!["10.0.0.1"; 10_000].join(","))];
        assert_eq!(forwarded_client(&trusted, proxy, long.iter()), None);
        let v6 = [h("2001:db8::1")];
        assert_eq!(
            forwarded_client(&trusted, proxy, v6.iter()),
            Some("2001:db8::1".parse().unwrap())
        );
    }

    #[test]
    fn token_from_the_query() {
        assert_eq!(
            query_token(Some("a=1&token=ab%2Ec")).as_deref(),
            Some("ab.c")
        );
        assert_eq!(query_token(Some("a=1")), None);
        assert_eq!(query_token(None), None);
    }
}
