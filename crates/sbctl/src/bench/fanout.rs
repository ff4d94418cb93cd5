//! `sbctl bench fanout`: one publisher, one topic, N WebSocket subscribers.
//!
//! The subscribers connect to the gateway and `subscribe` to the topic (a topic
//! clients may subscribe to under the policy, `chat.room.*` by default). The
//! publisher publishes on the bus at a fixed rate, open loop: each event carries
//! the wall-clock time it was published (`t`, µs since the epoch), so each
//! subscriber measures the delivery latency of every event it gets. Events
//! published during the measured window are counted; deliveries per second are
//! those events' deliveries divided by the window. `bench/` has the same run
//! against NATS core pub/sub (`compare nats-fanout`), and `compare fanout` runs
//! both interleaved.
//!
//! The subscribers run on a runtime of their own with one worker per core
//! (sbctl's is a single thread): on the subscriber side the bench measures the
//! server, not one core's worth of client.

use futures::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchboard_bus::proto;
use switchboard_bus::Handle;
use tokio_tungstenite::tungstenite::Message;

use super::{with_token, Report, HANDSHAKES_AT_ONCE};

/// `bench fanout` parameters.
pub struct FanoutArgs {
    /// Gateway URL.
    pub url: String,
    /// Topic (clients must be allowed to subscribe to it).
    pub topic: String,
    /// WebSocket subscribers.
    pub subscribers: usize,
    /// Events published per second.
    pub rate: u32,
    /// Padding bytes in each event.
    pub size: usize,
    /// Measured time.
    pub duration_ms: u64,
    /// Warm-up time.
    pub warmup_ms: u64,
    /// Client token.
    pub token: Option<String>,
    /// The bus, to publish on.
    pub bus: Handle,
}

/// How long subscribers wait for the last events after the publisher stops.
const DRAIN: Duration = Duration::from_secs(2);

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The `t` of an event frame, without parsing the whole frame: `"t":DIGITS`.
fn event_time(frame: &str) -> Option<u64> {
    let at = frame.find("\"t\":")? + 4;
    let digits: &str = &frame[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Runs the fan-out benchmark.
///
/// # Errors
///
/// When subscribers cannot connect or subscribe, or nothing can be published.
pub async fn fanout(a: FanoutArgs) -> anyhow::Result<Report> {
    switchboard_bus::svc::raise_file_limit();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let background = Background(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?,
    ));
    let rt = background
        .0
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no runtime"))?;
    let url = with_token(&a.url, a.token.as_deref());
    take_latencies();
    // Subscribers: opened HANDSHAKES_AT_ONCE at a time (the gateway's per-IP
    // handshake cap), each subscribed before the next batch.
    let opened = Instant::now();
    let mut conns = Vec::with_capacity(a.subscribers);
    let mut i = 0;
    while i < a.subscribers {
        let batch = (a.subscribers - i).min(HANDSHAKES_AT_ONCE);
        let mut pending = Vec::with_capacity(batch);
        for _ in 0..batch {
            let (url, topic) = (url.clone(), a.topic.clone());
            pending.push(rt.spawn(async move { open_subscriber(&url, &topic).await }));
        }
        for p in pending {
            match p.await {
                Ok(Ok(ws)) => conns.push(ws),
                Ok(Err(e)) => {
                    anyhow::bail!("subscriber {} of {}: {e}", conns.len() + 1, a.subscribers)
                }
                Err(e) => anyhow::bail!("subscriber task: {e}"),
            }
        }
        i += batch;
    }
    let open_s = opened.elapsed().as_secs_f64();

    // The measured window, in publish time (µs since the epoch).
    let start = now_us() + 200_000;
    let from = start + a.warmup_ms * 1000;
    let to = from + a.duration_ms * 1000;
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(conns.len());
    for ws in conns {
        let received = received.clone();
        readers.push(rt.spawn(read_events(ws, from, to, received)));
    }

    // The publisher: open loop at `rate`, on sbctl's own runtime.
    let pad = "x".repeat(a.size);
    let period = Duration::from_secs_f64(1.0 / f64::from(a.rate.max(1)));
    tokio::time::sleep(Duration::from_micros(start.saturating_sub(now_us()))).await;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut published, mut publish_errors) = (0u64, 0u64);
    loop {
        tick.tick().await;
        let t = now_us();
        if t >= to {
            break;
        }
        let body = proto::to_body(&serde_json::json!({ "t": t, "pad": pad }))?;
        match a.bus.publish(&a.topic, body).await {
            Ok(()) if t >= from => published += 1,
            Ok(()) => {}
            Err(_) => publish_errors += 1,
        }
    }
    // Subscribers stop DRAIN after the window, or earlier once all is in.
    let expected = published * a.subscribers as u64;
    let drain_until = Instant::now() + DRAIN;
    while received.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for r in &readers {
        r.abort();
    }
    for r in readers {
        let _ = r.await;
    }
    // Each reader left its latencies in the sink as it was dropped.
    let lat = take_latencies();
    let delivered = lat.len() as u64;
    let seconds = a.duration_ms as f64 / 1000.0;
    let mut report = Report::new(
        "fanout",
        serde_json::json!({
            "topic": a.topic, "subscribers": a.subscribers, "rate": a.rate, "size": a.size,
            "duration_ms": a.duration_ms,
        }),
        lat,
        // Missing and extra deliveries are both errors (an extra is an event a
        // subscriber got twice).
        expected.abs_diff(delivered) + publish_errors,
        seconds,
    );
    report.extra = serde_json::json!({
        "published": published, "expected_deliveries": expected, "delivered": delivered,
        "lost": expected.saturating_sub(delivered), "extra": delivered.saturating_sub(expected),
        "publish_errors": publish_errors,
        "deliveries_per_second": (delivered as f64 / seconds).round(),
        "open_seconds": (open_s * 100.0).round() / 100.0,
    });
    Ok(report)
}

/// The subscribers' runtime, shut down without blocking when the bench ends
/// (dropping a runtime inside sbctl's would panic).
struct Background(Option<tokio::runtime::Runtime>);

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open_subscriber(url: &str, topic: &str) -> anyhow::Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let frame = serde_json::json!({"id": 1, "op": "subscribe", "topic": topic}).to_string();
    ws.send(Message::Text(frame.into())).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"id\":1") => {
                anyhow::ensure!(t.as_str().contains("\"ok\":true"), "subscribe refused: {t}");
                return Ok(ws);
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => anyhow::bail!("closed before the subscribe reply"),
            Err(_) => anyhow::bail!("no subscribe reply in 10 s"),
        }
    }
}

/// Latencies of readers that were stopped before they could return them.
static SINK: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn take_latencies() -> Vec<u32> {
    std::mem::take(&mut *SINK.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Reads events until aborted, recording the latency of those published in
/// `[from, to)`. Latencies go to [`SINK`] every 256 events and on drop.
async fn read_events(mut ws: Ws, from: u64, to: u64, received: Arc<AtomicU64>) {
    struct Flush(Vec<u32>);
    impl Drop for Flush {
        fn drop(&mut self) {
            SINK.lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(self.0.drain(..));
        }
    }
    let mut lat = Flush(Vec::with_capacity(256));
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let Some(t) = event_time(text.as_str()) else {
            continue;
        };
        if t < from || t >= to {
            continue;
        }
        let us = now_us().saturating_sub(t).min(u64::from(u32::MAX)) as u32;
        lat.0.push(us);
        received.fetch_add(1, Ordering::Relaxed);
        if lat.0.len() >= 256 {
            let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
            sink.extend(lat.0.drain(..));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::event_time;

    #[test]
    fn event_time_reads_the_t_field_only() {
        let f = r#"{"topic":"chat.room.b","data":{"pad":"xx","t":1700000000123456}}"#;
        assert_eq!(event_time(f), Some(1_700_000_000_123_456));
        assert_eq!(event_time(r#"{"topic":"x","data":{}}"#), None);
        assert_eq!(event_time(r#"{"t":}"#), None);
    }
}
