//! `bench slowloris`: a connected client's ping round trips and the gateway's CPU, without and with an attacker holding sockets in the HTTP handshake.

use super::*;
use switchboard_bus::svc::procinfo;

/// `bench slowloris` parameters.
pub struct SlowlorisArgs {
    /// Gateway URL (`ws://HOST:PORT/ws`).
    pub url: String,
    /// Stalled sockets the attacker keeps open.
    pub sockets: usize,
    /// Source addresses the attacker spreads them over (127.0.0.2, .3, …); 1 is
    /// one machine, more is a botnet that the per-IP cap alone cannot stop.
    pub sources: usize,
    /// Ping round trips measured before the attack (one every 10 ms; during the
    /// attack, as many as fit in `duration_ms`).
    pub pings: usize,
    /// How long the attack lasts, ms.
    pub duration_ms: u64,
    /// Client token.
    pub token: Option<String>,
    /// The gateway's process id, when its `/health` does not say.
    pub pid: Option<u64>,
}

/// A real client's ping round trips without and with an attacker holding
/// `sockets` connections in the HTTP handshake (`GET /ws` and one header, then
/// nothing; each opened once and held until the gateway closes it), and the gateway's CPU
/// during the attack (from `/proc/PID/stat`; the gateway must be on this host).
///
/// # Errors
///
/// When the gateway cannot be reached.
pub async fn slowloris(a: SlowlorisArgs) -> anyhow::Result<Report> {
    let url = with_token(&a.url, a.token.as_deref());
    let addr = a
        .url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let health = http_get(&addr, "/health").await?;
    let pid = a.pid.or_else(|| health["pid"].as_u64()).unwrap_or(0);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
    let (baseline, _) = pings(&mut ws, a.pings).await;

    let stop = Arc::new(AtomicBool::new(false));
    let target: std::net::SocketAddr = tokio::net::lookup_host(&addr)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{addr} resolves to nothing"))?;
    let mut attackers = Vec::new();
    for i in 0..a.sockets {
        let stop = stop.clone();
        let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % a.sources.max(1)) as u8);
        attackers.push(tokio::spawn(async move {
            let mut opened = 0u64;
            // One socket per slot, as the slowloris attack does (a reconnect loop
            // would be a connection flood, another attack).
            while !stop.load(Ordering::Relaxed) {
                let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                    break;
                };
                if socket.bind((source, 0).into()).is_err() {
                    break;
                }
                let Ok(mut s) = socket.connect(target).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                opened += 1;
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await;
                let mut buf = [0u8; 256];
                // Hold it until the gateway closes it (or the attack ends).
                loop {
                    tokio::select! {
                        r = s.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
                        () = tokio::time::sleep(Duration::from_millis(200)) => {
                            if stop.load(Ordering::Relaxed) { return opened; }
                        }
                    }
                }
                break;
            }
            opened
        }));
    }
    // Let the attack build up, then measure.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let mut attacked = Vec::new();
    let mut errors = 0;
    while t0.elapsed() < Duration::from_millis(a.duration_ms) {
        let (lat, failed) = pings(&mut ws, 100).await;
        attacked.extend(lat);
        errors += failed;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(pid) - cpu0) / wall;
    stop.store(true, Ordering::Relaxed);
    let mut opened = 0;
    for t in attackers {
        opened += t.await.unwrap_or(0);
    }
    let after = http_get(&addr, "/health").await.unwrap_or_default();
    let mut base = baseline.clone();
    base.sort_unstable();
    let base_p50 = base.get(base.len() / 2).copied().unwrap_or(0);
    let mut report = Report::new(
        "slowloris",
        serde_json::json!({"sockets": a.sockets, "sources": a.sources, "duration_ms": a.duration_ms}),
        attacked,
        errors,
        wall,
    );
    report.extra = serde_json::json!({
        "baseline_ping_p50_us": base_p50,
        "gateway_cpu_percent": (cpu * 1000.0).round() / 10.0,
        "attacker_sockets_opened": opened,
        "gateway_refused": after["refused"], "gateway_handshake_timeouts": after["handshake_timeouts"],
    });
    Ok(report)
}

/// `n` pings, one every [`PING_EVERY`]: a person's pace, well under the
/// gateway's rate limit (a closed loop would measure the rate limiter, and the
/// client's own flood would be the CPU measured). Returns the round trips of the
/// answered ones and how many failed.
async fn pings(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    n: usize,
) -> (Vec<u32>, u64) {
    let mut lat = Vec::with_capacity(n);
    let mut failed = 0;
    let mut pace = tokio::time::interval(PING_EVERY);
    for _ in 0..n {
        pace.tick().await;
        let t0 = Instant::now();
        if ws
            .send(Message::Text(r#"{"id":1,"op":"ping"}"#.into()))
            .await
            .is_err()
        {
            return (lat, failed + 1);
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    if t.as_str().contains("\"ok\":true") {
                        lat.push(t0.elapsed().as_micros() as u32);
                    } else {
                        failed += 1;
                    }
                    break;
                }
                Ok(Some(Ok(_))) => continue,
                _ => return (lat, failed + 1),
            }
        }
    }
    (lat, failed)
}

/// Time between two pings of the measuring client (100/s).
const PING_EVERY: Duration = Duration::from_millis(10);

/// CPU seconds the process has used (0 if unknown).
fn cpu_seconds(pid: u64) -> f64 {
    u32::try_from(pid)
        .ok()
        .and_then(procinfo::cpu_seconds)
        .unwrap_or(0.0)
}

async fn http_get(addr: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text)).await??;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    Ok(serde_json::from_str(body)?)
}
