//! `sbctl bench`: closed-loop load generators with latency percentiles.
//!
//! - `rr`: request/reply through the broker to a service's `$echo`.
//! - `ws`: the path a real client takes: WebSocket connections to `receive`, each
//!   keeping W requests in flight to a service and op.
//! - `idle`: N idle WebSocket connections held open; all must answer a ping at the
//!   end; reports the gateway's memory per connection.
//! - `fanout` (its own module): one publisher, one topic, N WebSocket
//!   subscribers; deliveries per second and delivery latency.
//! - `slowloris` (its own module): a real client's pings and the gateway's CPU while
//!   an attacker holds sockets in the HTTP handshake.
//!
//! `rr` and `ws` (and `say`, `ws` with chat's `say`) take `--cpu`: each local
//! process's CPU time per answered request beside the throughput (module `cpu`).
//!
//! Every run is bounded: a warm-up, then a measured duration; a request that does
//! not come back within its deadline counts as an error. Latency is measured per
//! request from send to reply.

pub mod cpu;
mod fanout;
mod slowloris;

pub use fanout::{fanout, FanoutArgs};
pub use slowloris::{slowloris, SlowlorisArgs};

use futures::{SinkExt, StreamExt};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_bus::proto::{self, Health};
use switchboard_bus::{CallOptions, Config, Handle};
use tokio_tungstenite::tungstenite::Message;

/// Handshakes the idle bench has in flight at once: the gateway's default
/// `--max-handshakes-per-ip`.
const HANDSHAKES_AT_ONCE: usize = 32;

/// A finished run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// What ran.
    pub bench: String,
    /// Parameters, for the record.
    pub params: serde_json::Value,
    /// Requests answered in the measured period.
    pub requests: u64,
    /// Requests that failed or timed out.
    pub errors: u64,
    /// Measured period, seconds.
    pub seconds: f64,
    /// Requests per second.
    pub rps: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest.
    pub max_us: u64,
    /// Extra figures (idle: memory per connection).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub extra: serde_json::Value,
    /// With `--cpu`: each process's CPU over the measured period.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cpu: Vec<cpu::CpuRow>,
}

impl Report {
    fn new(
        bench: &str,
        params: serde_json::Value,
        mut lat: Vec<u32>,
        errors: u64,
        seconds: f64,
    ) -> Self {
        lat.sort_unstable();
        let pct = |p: f64| -> u64 {
            if lat.is_empty() {
                return 0;
            }
            let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
            u64::from(lat[i.min(lat.len() - 1)])
        };
        Self {
            bench: bench.into(),
            params,
            requests: lat.len() as u64,
            errors,
            seconds,
            rps: lat.len() as f64 / seconds.max(1e-9),
            p50_us: pct(0.50),
            p90_us: pct(0.90),
            p99_us: pct(0.99),
            max_us: lat.last().copied().map(u64::from).unwrap_or(0),
            extra: serde_json::Value::Null,
            cpu: Vec::new(),
        }
    }

    /// Prints a table, or JSON.
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_string(self).unwrap_or_default());
            return;
        }
        println!("{} {}", self.bench, self.params);
        println!(
            "  {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "req/s", "p50 µs", "p90 µs", "p99 µs", "max µs", "ok", "errors"
        );
        println!(
            "  {:>12.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            self.rps,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.max_us,
            self.requests,
            self.errors
        );
        if !self.extra.is_null() {
            println!("  {}", self.extra);
        }
        if !self.cpu.is_empty() {
            println!(
                "  {:<16} {:>8} {:>8} {:>8} {:>10}",
                "process", "pid", "cpu s", "% core", "µs/req"
            );
            for row in &self.cpu {
                println!(
                    "  {:<16} {:>8} {:>8.3} {:>8.1} {:>10.2}",
                    row.name, row.pid, row.cpu_s, row.core_pct, row.us_per_req
                );
            }
        }
    }
}

/// Shared run timing: warm-up, then measure.
#[derive(Clone)]
struct Clock {
    start: Instant,
    warmup: Duration,
    end: Instant,
}

impl Clock {
    fn new(warmup_ms: u64, duration_ms: u64) -> Self {
        let start = Instant::now();
        let warmup = Duration::from_millis(warmup_ms);
        Self {
            start,
            warmup,
            end: start + warmup + Duration::from_millis(duration_ms),
        }
    }

    fn measuring(&self, at: Instant) -> bool {
        at >= self.start + self.warmup
    }

    fn done(&self) -> bool {
        Instant::now() >= self.end
    }

    /// Starts sampling the watched processes' CPU over the measured period.
    fn watch(&self, cpu: Option<cpu::Watch>) -> Option<tokio::task::JoinHandle<cpu::Taken>> {
        cpu.map(|w| w.spawn(self.start + self.warmup, self.end))
    }
}

/// Puts the CPU rows of a run into its report.
async fn with_cpu(
    mut report: Report,
    watch: Option<tokio::task::JoinHandle<cpu::Taken>>,
) -> Report {
    if let Some(watch) = watch {
        if let Ok(taken) = watch.await {
            report.cpu = taken.rows(report.requests);
        }
    }
    report
}

/// `bench rr` parameters.
pub struct RrArgs {
    /// Broker endpoint.
    pub broker: String,
    /// Bus secret.
    pub secret: Option<String>,
    /// Target service.
    pub service: String,
    /// Op (default `$echo`).
    pub op: String,
    /// Body bytes.
    pub size: usize,
    /// Requests in flight per connection.
    pub window: usize,
    /// Bus connections.
    pub connections: usize,
    /// Measured time.
    pub duration_ms: u64,
    /// Warm-up time.
    pub warmup_ms: u64,
    /// Processes whose CPU to report (`--cpu`).
    pub cpu: Option<cpu::Watch>,
}

/// Request/reply through the broker.
///
/// # Errors
///
/// When no broker answers.
pub async fn rr(a: RrArgs) -> anyhow::Result<Report> {
    let mut handles = Vec::new();
    for c in 0..a.connections.max(1) {
        let conn = switchboard_bus::connect(Config {
            broker: a.broker.clone(),
            instance: format!("bench-{}-{c}", std::process::id()),
            secret: a.secret.clone(),
            ..Config::default()
        })?;
        conn.handle.wait_connected(Duration::from_secs(5)).await?;
        handles.push(conn.handle);
    }
    // The body: MessagePack binary of `size` bytes (what `$echo` sends back).
    let body = proto::to_body(&proto::ByteBuf::from(vec![0x5au8; a.size]))?;
    let clock = Clock::new(a.warmup_ms, a.duration_ms);
    let watch = clock.watch(a.cpu);
    let mut tasks = Vec::new();
    for bus in &handles {
        for _ in 0..a.window.max(1) {
            let (bus, body, clock) = (bus.clone(), body.clone(), clock.clone());
            let (service, op) = (a.service.clone(), a.op.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(1 << 16);
                let mut errors = 0u64;
                let options = CallOptions {
                    timeout: Some(Duration::from_secs(5)),
                    ..CallOptions::default()
                };
                while !clock.done() {
                    let t0 = Instant::now();
                    let r = bus.call(&service, &op, body.clone(), options.clone()).await;
                    if clock.measuring(t0) {
                        match r {
                            Ok(_) => {
                                lat.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32)
                            }
                            Err(_) => errors += 1,
                        }
                    }
                }
                (lat, errors)
            }));
        }
    }
    let (lat, errors) = collect(tasks).await;
    for h in &handles {
        h.close(Duration::from_millis(200)).await;
    }
    let params = serde_json::json!({
        "service": a.service, "op": a.op, "size": a.size, "window": a.window,
        "connections": a.connections, "duration_ms": a.duration_ms,
    });
    let report = Report::new("rr", params, lat, errors, a.duration_ms as f64 / 1000.0);
    Ok(with_cpu(report, watch).await)
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<(Vec<u32>, u64)>>) -> (Vec<u32>, u64) {
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            lat.extend(l);
            errors += e;
        }
    }
    (lat, errors)
}

/// `bench ws` parameters.
pub struct WsArgs {
    /// Gateway URL.
    pub url: String,
    /// Target service.
    pub service: String,
    /// Op.
    pub op: String,
    /// Data (JSON) of each request.
    pub data: serde_json::Value,
    /// Connections.
    pub connections: usize,
    /// Requests in flight per connection.
    pub window: usize,
    /// Measured time.
    pub duration_ms: u64,
    /// Warm-up time.
    pub warmup_ms: u64,
    /// Client token.
    pub token: Option<String>,
    /// Processes whose CPU to report (`--cpu`).
    pub cpu: Option<cpu::Watch>,
}

/// WebSocket clients through the gateway: each connection keeps `window`
/// requests in flight (a reader matches replies by id).
///
/// # Errors
///
/// When a connection cannot be opened.
pub async fn ws(a: WsArgs) -> anyhow::Result<Report> {
    let url = with_token(&a.url, a.token.as_deref());
    let clock = Clock::new(a.warmup_ms, a.duration_ms);
    let watch = clock.watch(a.cpu);
    let mut tasks = Vec::new();
    for _ in 0..a.connections.max(1) {
        let (ws, _) = tokio_tungstenite::connect_async(&url).await?;
        let (clock, window) = (clock.clone(), a.window.max(1));
        // The frame without its id, written once: the load generator's own cost
        // per request is kept small, so that it measures the gateway.
        let rest = serde_json::json!({"to": a.service, "op": a.op, "data": a.data}).to_string();
        let rest = rest[1..].to_owned();
        let frame_for = move |id: u64| format!("{{\"id\":{id},{rest}");
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let mut sent_at: std::collections::HashMap<u64, Instant> =
                std::collections::HashMap::new();
            let mut next_id = 0u64;
            let mut lat = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            // Frames to send before the next read: the window at first, then
            // one per reply while the clock runs.
            let mut to_send = window;
            'run: loop {
                for _ in 0..std::mem::take(&mut to_send) {
                    next_id += 1;
                    sent_at.insert(next_id, Instant::now());
                    if tx
                        .send(Message::Text(frame_for(next_id).into()))
                        .await
                        .is_err()
                    {
                        errors += 1;
                        break 'run;
                    }
                }
                if sent_at.is_empty() {
                    break;
                }
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                let msg = match tokio::time::timeout_at(deadline, rx.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => t,
                    Ok(Some(Ok(_))) => continue,
                    _ => {
                        errors += sent_at.len() as u64;
                        break;
                    }
                };
                // Only `id` and `ok` are read; the rest is skipped unparsed.
                let Ok(reply) = serde_json::from_str::<ReplyHead>(msg.as_str()) else {
                    continue;
                };
                let Some(id) = reply.id else { continue };
                let Some(t0) = sent_at.remove(&id) else {
                    continue;
                };
                if clock.measuring(t0) {
                    if reply.ok == Some(true) {
                        lat.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    } else {
                        errors += 1;
                    }
                }
                if !clock.done() {
                    to_send = 1;
                }
            }
            let _ = tx.send(Message::Close(None)).await;
            (lat, errors)
        }));
    }
    let (lat, errors) = collect(tasks).await;
    let params = serde_json::json!({
        "service": a.service, "op": a.op, "connections": a.connections, "window": a.window,
        "duration_ms": a.duration_ms,
    });
    let report = Report::new("ws", params, lat, errors, a.duration_ms as f64 / 1000.0);
    Ok(with_cpu(report, watch).await)
}

/// A WebSocket client connection to `url` (`ws://IP:PORT/…`) from `source`.
async fn connect_from(
    url: &str,
    source: std::net::Ipv4Addr,
) -> anyhow::Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let host = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| anyhow::anyhow!("idle takes a ws://IP:PORT/… URL, not {url}"))?;
    let addr: std::net::SocketAddr = host
        .parse()
        .map_err(|_| anyhow::anyhow!("idle takes an IP address and port, not {host}"))?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    let stream = socket.connect(addr).await?;
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await?;
    Ok(ws)
}

/// What the ws bench reads of a reply.
#[derive(serde::Deserialize)]
struct ReplyHead {
    id: Option<u64>,
    ok: Option<bool>,
}

/// `url` with the client token as its `token` query parameter (`ws-send`
/// and every WebSocket benchmark).
pub(crate) fn with_token(url: &str, token: Option<&str>) -> String {
    match token {
        Some(t) => format!(
            "{url}{}token={t}",
            if url.contains('?') { '&' } else { '?' }
        ),
        None => url.to_owned(),
    }
}

/// `bench idle` parameters.
pub struct IdleArgs {
    /// Gateway URL.
    pub url: String,
    /// Connections to hold.
    pub connections: usize,
    /// How long to hold them.
    pub hold_ms: u64,
    /// Source addresses (127.0.0.1, .2, …) to spread them over: one address
    /// reaches one port with at most ~28,000 connections (the ephemeral ports).
    pub sources: usize,
    /// Client token.
    pub token: Option<String>,
    /// The bus, to read the gateway's memory (`receive` `$health`).
    pub bus: Handle,
}

/// Opens and holds idle connections; all must answer a ping at the end.
///
/// # Errors
///
/// When connections cannot be opened (raise `ulimit -n`).
pub async fn idle(a: IdleArgs) -> anyhow::Result<Report> {
    let rss = |bus: Handle| async move {
        bus.call("receive", "$health", Vec::new(), CallOptions::default())
            .await
            .ok()
            .and_then(|r| proto::from_body::<Health>(&r.body).ok())
            .map(|h| h.rss_bytes)
            .unwrap_or(0)
    };
    let before = rss(a.bus.clone()).await;
    let url = with_token(&a.url, a.token.as_deref());
    let opened = Instant::now();
    let mut conns = Vec::with_capacity(a.connections);
    let failed = Arc::new(AtomicBool::new(false));
    // Open in parallel batches so that 50,000 do not take minutes, but no more
    // at once than the gateway lets one address have in the handshake (its
    // --max-handshakes-per-ip, 32 by default): the bench holds connections
    // under the gateway's defaults, as a real crowd of clients would arrive.
    let mut i = 0;
    while i < a.connections {
        let batch = (a.connections - i).min(HANDSHAKES_AT_ONCE);
        let mut pending = Vec::new();
        for k in 0..batch {
            let url = url.clone();
            let source = std::net::Ipv4Addr::new(127, 0, 0, 1 + ((i + k) % a.sources.max(1)) as u8);
            pending.push(tokio::spawn(
                async move { connect_from(&url, source).await },
            ));
        }
        for p in pending {
            match p.await {
                Ok(Ok(ws)) => conns.push(ws),
                _ => failed.store(true, Ordering::Relaxed),
            }
        }
        i += batch;
        if failed.load(Ordering::Relaxed) {
            anyhow::bail!(
                "could not open connection {} of {} (the gateway's --max-connections, or this shell's file limit: `ulimit -n`)",
                conns.len() + 1,
                a.connections
            );
        }
    }
    let open_s = opened.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(a.hold_ms)).await;
    let during = rss(a.bus.clone()).await;
    // Every connection answers a ping through the gateway.
    let mut lat = Vec::with_capacity(conns.len());
    let mut errors = 0u64;
    for ws in conns.iter_mut() {
        let t0 = Instant::now();
        if ws
            .send(Message::Text(r#"{"id":1,"op":"ping"}"#.into()))
            .await
            .is_err()
        {
            errors += 1;
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"ok\":true") => {
                lat.push(t0.elapsed().as_micros() as u32);
            }
            _ => errors += 1,
        }
    }
    let n = conns.len();
    drop(conns);
    let per_conn = during.saturating_sub(before) as f64 / n.max(1) as f64;
    let mut report = Report::new(
        "idle",
        serde_json::json!({"connections": a.connections, "hold_ms": a.hold_ms, "sources": a.sources}),
        lat,
        errors,
        a.hold_ms as f64 / 1000.0,
    );
    report.extra = serde_json::json!({
        "gateway_rss_before": before, "gateway_rss_held": during,
        "bytes_per_connection": per_conn.round(), "open_seconds": (open_s * 100.0).round() / 100.0,
    });
    Ok(report)
}
