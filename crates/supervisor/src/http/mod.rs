//! main's HTTP server (`[main] http`, 127.0.0.1:9100 by default): the live
//! dashboard, `/metrics` for the whole system, `/health` and `/ready` for
//! systemd and Kubernetes probes, and the JSON the dashboard reads.
//!
//! | path | answer |
//! |---|---|
//! | `/` | the dashboard (one page, no CDN: everything is served from here) |
//! | `/metrics` | Prometheus text: main's and every instance's, merged (`http/metrics.rs`) |
//! | `/health` | 200 while main runs and the broker answers; else 503 |
//! | `/ready` | 200 once every managed instance is online (or degraded); else 503 and which are not |
//! | `/api/status` | every instance, services' rates and latencies, the gateway, the broker |
//! | `/api/events` | the same, as server-sent events, one a second |
//! | `/api/trace/ID` | the spans of one trace, from every process, in order |
//! | `/api/slowest` | the slowest recent client requests (the gateway's spans) |
//! | `/api/owner/SERVICE/KEY` | which instance of a keyed service owns a key (`$broker owner`) |
//!
//! At most [`MAX_CONNECTIONS`] connections, [`MAX_PER_ADDRESS`] from one
//! address; past either a new connection takes the place of an idle one
//! (`http/admission.rs`), so stalled heads cannot lock a probe out. A request
//! head must arrive within [`HEADER_TIMEOUT`]. At most [`MAX_EVENT_STREAMS`]
//! event streams and [`MAX_BUS_REQUESTS`] other requests that ask the bus
//! (503 past either) at once, so connections being answered, which are never
//! pushed out, cannot fill the table.
//! Optional basic auth (`http_auth = "user:password"`, compared in constant
//! time) covers every path but `/health` and `/ready`. Without it, those other
//! paths answer only a `Host` that is an IP address, `localhost`, or one of
//! `http_hosts` (421 otherwise): a web page whose name was rebound to
//! 127.0.0.1 (DNS rebinding) cannot read the dashboard's data.
//!
//! # Layout
//!
//! - `admission`: which connections the server holds, and which one gives way.
//! - `metrics`: `/metrics` for the whole system, merged from every instance.
//! - `status`: the dashboard's JSON, read from the merged metrics.
//! - this file: the server, its routes, auth and `Host` checks.

mod admission;
pub(crate) mod metrics;
mod status;

pub use admission::{MAX_CONNECTIONS, MAX_PER_ADDRESS};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use switchboard_bus::Handle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::apps::Supervisor;

type Body = BoxBody<Bytes, Infallible>;

/// A header read that takes longer than this ends the connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const DASHBOARD: &str = include_str!("dashboard.html");

/// Requests that ask the bus (a scrape, the status, a trace) answered at once
/// at most, 503 past it: each is busy (so never pushed out of the table) for
/// up to a second, and this keeps most of the table for everyone else.
pub const MAX_BUS_REQUESTS: usize = 32;

/// Event streams open at once at most: each one asks every instance for its
/// metrics once a second, so the cap bounds what viewers cost the system.
pub const MAX_EVENT_STREAMS: usize = 16;

/// Who may read the dashboard: `[main] http_auth` and `http_hosts`.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `user:password` for basic auth.
    pub auth: Option<String>,
    /// Host names (besides IP addresses and `localhost`) the dashboard answers
    /// when there is no auth.
    pub hosts: Vec<String>,
}

/// What the server needs.
struct Ctx {
    sup: Arc<Supervisor>,
    bus: Handle,
    /// `Basic base64(user:password)`, when auth is on.
    auth: Option<String>,
    /// Extra host names allowed without auth, lowercase.
    hosts: Vec<String>,
    /// Event streams open now.
    streams: Arc<std::sync::atomic::AtomicUsize>,
    /// Requests asking the bus now ([`MAX_BUS_REQUESTS`]).
    bus_requests: Arc<tokio::sync::Semaphore>,
}

/// Binds `addr`; `None` (and a warning) when it cannot: the dashboard is not worth
/// failing the system for.
/// Whether `addr` (`HOST:PORT`) binds loopback only.
pub fn is_loopback_bind(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub async fn bind(addr: &str) -> Option<TcpListener> {
    if addr.is_empty() {
        return None;
    }
    match TcpListener::bind(addr).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(addr, error = %e, "main's HTTP server (dashboard, /metrics) not started");
            None
        }
    }
}

/// Serves until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    sup: Arc<Supervisor>,
    bus: Handle,
    access: Access,
    shutdown: CancellationToken,
) {
    use base64::Engine;
    let auth = access.auth.map(|a| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(a.as_bytes())
        )
    });
    let ctx = Arc::new(Ctx {
        sup,
        bus,
        auth,
        hosts: access
            .hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        streams: Arc::default(),
        bus_requests: Arc::new(tokio::sync::Semaphore::new(MAX_BUS_REQUESTS)),
    });
    let admission = admission::Admission::new(MAX_CONNECTIONS, MAX_PER_ADDRESS);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ticket = match admission.admit(peer.ip()) {
            Ok(ticket) => Arc::new(ticket),
            Err(admission::Full) => {
                // Every held connection is being answered: say so, best effort
                // (a client that does not read gets nothing, never a wait).
                let (held, evicted, refused) = admission.counts();
                tracing::warn!(peer = %peer, held, evicted, refused, "main's HTTP server full: connection refused");
                let _ = stream.try_write(
                    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 5\r\n\r\nfull\n",
                );
                continue;
            }
        };
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let evicted = ticket.evicted.clone();
            let held = ticket.clone();
            let service = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                let shutdown = shutdown.clone();
                // Busy until the response body (an event stream, say) is gone.
                let busy = held.busy();
                async move {
                    let response = answer(&ctx, req, shutdown).await;
                    Ok::<_, Infallible>(
                        response.map(|inner| Guarded { inner, _busy: busy }.boxed()),
                    )
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                // Another connection took this idle one's place.
                () = evicted.cancelled() => {}
            }
            drop(ticket);
        });
    }
}

/// A response body that keeps its connection marked busy while alive, and
/// says what its inner body says (its length: a `Content-Length`, not chunks).
struct Guarded {
    inner: Body,
    _busy: admission::Busy,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `host` (a `Host` header's value) names this server in a way no web
/// page on another origin can: an IP address, `localhost` (or a name under
/// it), or a configured name. With a port or without; `[::1]` as IPv6 is
/// written in a `Host`.
fn host_allowed(host: &str, configured: &[String]) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => match rest.split_once(']') {
            Some((v6, _)) => return v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        },
        None => host.rsplit_once(':').map_or(host.as_str(), |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                ""
            }
        }),
    };
    let name = name.trim_end_matches('.');
    !name.is_empty()
        && (name.parse::<std::net::Ipv4Addr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || configured.iter().any(|c| c == name))
}

/// Basic auth's credentials against the configured ones, in constant time (the
/// `subtle` crate): how long the compare takes says nothing about how much of
/// a guess was right.
fn auth_ok(given: Option<&[u8]>, want: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.is_some_and(|g| bool::from(g.ct_eq(want.as_bytes())))
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    full(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

async fn answer(ctx: &Ctx, req: Request<Incoming>, shutdown: CancellationToken) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if req.method() != hyper::Method::GET {
        return full(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match path.as_str() {
        "/health" => {
            let ok = ctx.sup.broker_answers();
            let body =
                serde_json::json!({"status": if ok { "ok" } else { "degraded" }, "broker": ok});
            return json(
                if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                &body,
            );
        }
        "/ready" => {
            let waiting = ctx.sup.not_ready();
            let status = if waiting.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            return json(
                status,
                &serde_json::json!({"ready": waiting.is_empty(), "waiting": waiting}),
            );
        }
        _ => {}
    }
    if let Some(want) = &ctx.auth {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if !auth_ok(given, want) {
            let mut r = full(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "authentication required\n",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"switchboard\""),
            );
            return r;
        }
    } else {
        // No password: only a Host no other origin can put in a browser's
        // request (see `host_allowed`). A request without one is not a
        // browser's.
        let host = req.headers().get(header::HOST).map(|h| h.to_str());
        if let Some(host) = host {
            if !host.is_ok_and(|h| host_allowed(h, &ctx.hosts)) {
                return full(
                    StatusCode::MISDIRECTED_REQUEST,
                    "text/plain",
                    "unknown Host: add the name to [main] http_hosts (or set http_auth)\n",
                );
            }
        }
    }
    if path == "/" || path == "/index.html" {
        return full(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD);
    }
    // Every other path asks the bus (or opens an event stream, capped apart).
    let _permit = if path == "/api/events" {
        None
    } else {
        match ctx.bus_requests.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                return full(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("{MAX_BUS_REQUESTS} requests are being answered already\n"),
                )
            }
        }
    };
    match path.as_str() {
        "/metrics" => full(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics::scrape(&ctx.sup, &ctx.bus).await,
        ),
        "/api/status" => json(StatusCode::OK, &status::snapshot(&ctx.sup, &ctx.bus).await),
        "/api/events" => events(ctx, shutdown),
        "/api/slowest" => json(StatusCode::OK, &status::slowest(&ctx.bus).await),
        p if p.starts_with("/api/owner/") => {
            let rest = &p["/api/owner/".len()..];
            let Some((service, key)) = rest.split_once('/') else {
                return json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "/api/owner/SERVICE/KEY"}),
                );
            };
            json(StatusCode::OK, &status::owner(&ctx.bus, service, key).await)
        }
        p if p.starts_with("/api/trace/") => {
            let id = &p["/api/trace/".len()..];
            if id.is_empty()
                || id.len() > 64
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "bad trace id"}),
                );
            }
            json(StatusCode::OK, &status::trace(&ctx.bus, id).await)
        }
        _ => full(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// `/api/events`: a status snapshot every second as server-sent events, until
/// the client goes or main stops.
fn events(ctx: &Ctx, shutdown: CancellationToken) -> Response<Body> {
    use std::sync::atomic::Ordering;
    let open = ctx.streams.fetch_add(1, Ordering::AcqRel);
    if open >= MAX_EVENT_STREAMS {
        ctx.streams.fetch_sub(1, Ordering::AcqRel);
        return full(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("{MAX_EVENT_STREAMS} event streams are open already\n"),
        );
    }
    // Gives the slot back when the stream (and so the response) is dropped.
    struct Slot(Arc<std::sync::atomic::AtomicUsize>);
    impl Drop for Slot {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
    let slot = Arc::new(Slot(ctx.streams.clone()));
    let (sup, bus) = (ctx.sup.clone(), ctx.bus.clone());
    let stream = futures::stream::unfold(
        (sup, bus, shutdown, true, slot),
        |(sup, bus, shutdown, first, slot)| async move {
            if !first {
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            let snapshot = status::snapshot(&sup, &bus).await;
            let text = format!(
                "data: {}\n\n",
                serde_json::to_string(&snapshot).unwrap_or_default()
            );
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(text))),
                (sup, bus, shutdown, false, slot),
            ))
        },
    );
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::{auth_ok, host_allowed};

    #[test]
    fn hosts_a_rebound_name_cannot_use() {
        let configured = vec!["dash.example".to_owned()];
        for ok in [
            "127.0.0.1:9100",
            "127.0.0.1",
            "10.1.2.3:80",
            "localhost:9100",
            "LOCALHOST",
            "app.localhost",
            "[::1]:9100",
            "[2001:db8::1]",
            "dash.example:9100",
            "dash.example.",
        ] {
            assert!(host_allowed(ok, &configured), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9100",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "",
            ":9100",
            "[::1",
            "dash.example:x",
            "127.0.0.1:9100:1",
        ] {
            assert!(!host_allowed(bad, &configured), "{bad}");
        }
    }

    #[test]
    fn basic_auth_compares_whole_values() {
        assert!(auth_ok(Some(b"Basic YTpi"), "Basic YTpi"));
        assert!(!auth_ok(Some(b"Basic YTp"), "Basic YTpi"));
        assert!(!auth_ok(Some(b"Basic YTpiX"), "Basic YTpi"));
        assert!(!auth_ok(None, "Basic YTpi"));
    }
}
