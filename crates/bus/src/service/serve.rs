//! One request's task: the built-in ops (`$echo`, `$health`), the handler
//! under its deadline and a panic guard, the counters, and the reply.

use futures::FutureExt;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use switchboard_proto::{self as proto, Envelope, ErrorBody, ErrorCode, Health};

use super::{Handler, HealthFn, Reply, Request};
use crate::client::{Handle, Incoming};
use crate::Error;

/// Counters a service keeps for `$health`.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) inflight: AtomicU64,
    pub(super) handled: AtomicU64,
    pub(super) errors: AtomicU64,
    /// `sb_service_requests_total` and `…_duration_seconds` by (op, code).
    pub(super) metrics: crate::metrics::ServiceRequests,
}

/// What one request's task needs from the service.
pub(super) struct Ctx<'a> {
    pub(super) handlers: &'a HashMap<String, Handler>,
    pub(super) counters: &'a Counters,
    pub(super) name: &'a str,
    pub(super) started: Instant,
    pub(super) health: Option<&'a HealthFn>,
    /// The encoded `$info` answer.
    pub(super) info: &'a [u8],
}

/// The ops every service answers without a handler.
pub(super) const BUILTIN_OPS: [&str; 5] = ["$echo", "$health", "$info", "$metrics", "$trace"];

pub(super) async fn serve_one(incoming: Incoming, handle: Handle, ctx: Ctx<'_>) {
    let Incoming { token, env } = incoming;
    let env = *env;
    let Ctx {
        handlers,
        counters,
        name,
        started,
        health,
        info,
    } = ctx;
    counters.inflight.fetch_add(1, Ordering::Relaxed);
    let id = env.id;
    let trace = env.trace.clone();
    let op = env.op.clone();
    // Every log line of this request, in any service, carries its trace id.
    let span = tracing::debug_span!(
        "request",
        service = name,
        op = %op,
        trace = %trace,
        user = env.user.as_deref().unwrap_or("")
    );
    let timer = crate::svc::trace::Timer::start();
    let result: Result<Reply, Error> = match op.as_str() {
        "$echo" => Ok(Reply::new(env.body.into_vec())),
        "$info" => Ok(Reply::new(info.to_vec())),
        "$metrics" => Request::encode(&crate::svc::metrics::render()).map(Reply::new),
        "$trace" => match proto::from_body::<proto::admin::TraceQuery>(&env.body) {
            Ok(q) if q.trace.is_empty() => {
                let n = q.slowest.min(100) as usize;
                Request::encode(&crate::svc::trace::slowest("ws ", n)).map(Reply::new)
            }
            Ok(q) => Request::encode(&crate::svc::trace::spans_of(&q.trace)).map(Reply::new),
            Err(e) => Err(Error::bad_request(e.to_string())),
        },
        "$health" => health_reply(name, &handle, started, health, counters).await,
        _ => match handlers.get(&op) {
            None => Err(Error::new(
                ErrorCode::UnknownOp,
                format!("{name} has no op {op:?}"),
            )),
            Some(handler) => call(handler, env, &handle, &span).await,
        },
    };
    // `handled` counts requests: main's own health checks and the other built-in
    // `$` ops are left out, as in the dashboard's services table.
    if !op.starts_with('$') {
        counters.handled.fetch_add(1, Ordering::Relaxed);
    }
    let code = match &result {
        Ok(_) => "ok",
        Err(e) => e.code.as_str(),
    };
    // Label values stay bounded: an op this service does not have is "other".
    let op_label: &str = if handlers.contains_key(&op) || BUILTIN_OPS.contains(&op.as_str()) {
        &op
    } else {
        "other"
    };
    // One clock read for the histogram and the span.
    let elapsed = timer.elapsed();
    counters.metrics.done(name, op_label, code, elapsed);
    if !op.starts_with('$') {
        timer.finish_after(
            elapsed,
            &trace,
            handle.instance(),
            format_args!("handle {name}.{op_label}"),
            code,
        );
    }
    let reply = match result {
        Ok(Reply { body, grants }) => {
            let mut env = Envelope::reply_to(id, &trace, body);
            env.grants = (!grants.is_empty()).then_some(grants);
            env
        }
        Err(e) => {
            tracing::debug!(parent: &span, code = %e.code, error = %e.message, "request failed");
            counters.errors.fetch_add(1, Ordering::Relaxed);
            Envelope::error_reply(id, &trace, ErrorBody::from(e))
        }
    };
    match handle.reply(token, &reply).await {
        Ok(()) => {}
        // Answered `too_large` instead (counted and logged by the client).
        Err(e) if e.code == ErrorCode::TooLarge => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tracing::debug!(error = %e, "reply not sent"),
    }
    counters.inflight.fetch_sub(1, Ordering::Relaxed);
}

/// The `$health` answer: the service's own check (or `ok`) and its counters.
async fn health_reply(
    name: &str,
    handle: &Handle,
    started: Instant,
    health: Option<&HealthFn>,
    counters: &Counters,
) -> Result<Reply, Error> {
    let status = match health {
        Some(check) => check().await,
        None => "ok".to_owned(),
    };
    Request::encode(&Health {
        service: name.to_owned(),
        instance: handle.instance().to_owned(),
        status,
        pid: std::process::id(),
        uptime_ms: started.elapsed().as_millis() as u64,
        rss_bytes: crate::svc::rss_bytes(),
        inflight: counters.inflight.load(Ordering::Relaxed).saturating_sub(1),
        handled: counters.handled.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
    })
    .map(Reply::new)
}

/// Runs `handler` on the request under its deadline, a panic becoming
/// `internal` and the deadline `timeout`.
async fn call(
    handler: &Handler,
    env: Envelope,
    handle: &Handle,
    span: &tracing::Span,
) -> Result<Reply, Error> {
    let deadline = env.deadline;
    let fut = tracing::Instrument::instrument(
        handler(Request {
            env,
            bus: handle.clone(),
        }),
        span.clone(),
    );
    let left = Duration::from_millis(deadline.saturating_sub(proto::now_ms()));
    match tokio::time::timeout(left, AssertUnwindSafe(fut).catch_unwind()).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => {
            tracing::error!(parent: span, "handler panicked");
            Err(Error::internal("handler panicked"))
        }
        Err(_) => Err(Error::new(
            ErrorCode::Timeout,
            "handler did not finish before the deadline",
        )),
    }
}
