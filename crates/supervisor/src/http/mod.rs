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
//! At most [`MAX_CONNECTIONS`] connections (one past it is closed at accept)
//! and [`MAX_EVENT_STREAMS`] event streams (503 past it) at once.
//! Optional basic auth (`http_auth = "user:password"`) covers every path but
//! `/health` and `/ready`.

pub(crate) mod metrics;
mod status;

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

use crate::supervisor::Supervisor;

type Body = BoxBody<Bytes, Infallible>;

/// A header read that takes longer than this ends the connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const DASHBOARD: &str = include_str!("dashboard.html");

/// Connections open at once at most; one past it is closed at accept.
pub const MAX_CONNECTIONS: usize = 256;

/// Event streams open at once at most: each one asks every instance for its
/// metrics once a second, so the cap bounds what viewers cost the system.
pub const MAX_EVENT_STREAMS: usize = 16;

/// What the server needs.
struct Ctx {
    sup: Arc<Supervisor>,
    bus: Handle,
    /// `Basic base64(user:password)`, when auth is on.
    auth: Option<String>,
    /// Event streams open now.
    streams: Arc<std::sync::atomic::AtomicUsize>,
}

/// Binds `addr`; `None` (and a warning) when it cannot: the dashboard is not worth
/// failing the system for.
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
    auth: Option<String>,
    shutdown: CancellationToken,
) {
    use base64::Engine;
    let auth = auth.map(|a| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(a.as_bytes())
        )
    });
    let ctx = Arc::new(Ctx {
        sup,
        bus,
        auth,
        streams: Arc::default(),
    });
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        use std::sync::atomic::Ordering;
        if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::AcqRel);
            drop(stream);
            continue;
        }
        let open = open.clone();
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                let shutdown = shutdown.clone();
                async move { Ok::<_, Infallible>(answer(&ctx, req, shutdown).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = conn.await;
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
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
            .and_then(|v| v.to_str().ok());
        if given != Some(want.as_str()) {
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
    }
    match path.as_str() {
        "/" | "/index.html" => full(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD),
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
