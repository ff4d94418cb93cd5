//! Fan-out: one publisher, one subject, N subscriber connections, on NATS core
//! pub/sub, measured the way `sbctl bench fanout` measures Switchboard: an open
//! loop publisher at a fixed rate, each event stamped with its publish time
//! (µs since the epoch) so every subscriber measures each delivery's latency;
//! events published in the measured window count; deliveries per second are
//! their deliveries over the window. `compare` runs both, interleaved.

use crate::{machine, median, run_json, spawn_quiet, Procs};
use futures::StreamExt;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn event_time(payload: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(payload).ok()?;
    let at = text.find("\"t\":")? + 4;
    let digits = &text[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

static SINK: Mutex<Vec<u32>> = Mutex::new(Vec::new());

struct Flush(Vec<u32>);

impl Drop for Flush {
    fn drop(&mut self) {
        SINK.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(self.0.drain(..));
    }
}

/// The NATS side: `subscribers` connections, one publisher connection.
pub async fn nats(
    url: String,
    subject: String,
    subscribers: usize,
    rate: u32,
    size: usize,
    duration_ms: u64,
    warmup_ms: u64,
) -> anyhow::Result<Value> {
    let opened = Instant::now();
    let mut subs = Vec::with_capacity(subscribers);
    let mut clients = Vec::with_capacity(subscribers);
    let mut i = 0;
    while i < subscribers {
        let batch = (subscribers - i).min(32);
        let mut pending = Vec::new();
        for _ in 0..batch {
            let (url, subject) = (url.clone(), subject.clone());
            pending.push(tokio::spawn(async move {
                let client = async_nats::connect(&url).await?;
                let sub = client.subscribe(subject).await?;
                client.flush().await?;
                anyhow::Ok((client, sub))
            }));
        }
        for p in pending {
            let (client, sub) = p.await??;
            clients.push(client);
            subs.push(sub);
        }
        i += batch;
    }
    let open_s = opened.elapsed().as_secs_f64();
    let start = now_us() + 200_000;
    let from = start + warmup_ms * 1000;
    let to = from + duration_ms * 1000;
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(subs.len());
    for mut sub in subs {
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            let mut lat = Flush(Vec::with_capacity(256));
            while let Some(msg) = sub.next().await {
                let Some(t) = event_time(&msg.payload) else {
                    continue;
                };
                if t < from || t >= to {
                    continue;
                }
                lat.0
                    .push(now_us().saturating_sub(t).min(u64::from(u32::MAX)) as u32);
                received.fetch_add(1, Ordering::Relaxed);
                if lat.0.len() >= 256 {
                    SINK.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(lat.0.drain(..));
                }
            }
        }));
    }
    let publisher = async_nats::connect(&url).await?;
    let pad = "x".repeat(size);
    tokio::time::sleep(Duration::from_micros(start.saturating_sub(now_us()))).await;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut published, mut publish_errors) = (0u64, 0u64);
    loop {
        tick.tick().await;
        let t = now_us();
        if t >= to {
            break;
        }
        let payload = json!({"t": t, "pad": pad}).to_string();
        match publisher.publish(subject.clone(), payload.into()).await {
            Ok(()) if t >= from => published += 1,
            Ok(()) => {}
            Err(_) => publish_errors += 1,
        }
        let _ = publisher.flush().await;
    }
    let expected = published * subscribers as u64;
    let until = Instant::now() + Duration::from_secs(2);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for r in &readers {
        r.abort();
    }
    for r in readers {
        let _ = r.await;
    }
    drop(clients);
    let mut lat = std::mem::take(&mut *SINK.lock().unwrap_or_else(|p| p.into_inner()));
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let delivered = lat.len() as u64;
    let seconds = duration_ms as f64 / 1000.0;
    Ok(json!({
        "bench": "nats-fanout", "requests": delivered, "errors": expected.abs_diff(delivered) + publish_errors,
        "rps": delivered as f64 / seconds,
        "p50_us": pct(0.5), "p90_us": pct(0.9), "p99_us": pct(0.99), "max_us": lat.last().copied().unwrap_or(0),
        "extra": {
            "published": published, "expected_deliveries": expected, "delivered": delivered,
            "lost": expected.saturating_sub(delivered), "extra": delivered.saturating_sub(expected), "publish_errors": publish_errors,
            "deliveries_per_second": (delivered as f64 / seconds).round(), "open_seconds": (open_s * 100.0).round() / 100.0,
        },
    }))
}

/// Both sides for each rate, `rounds` times, interleaved; writes a markdown table.
pub fn compare(
    rounds: usize,
    duration_ms: u64,
    subscribers: usize,
    rates: &[u32],
    out: &PathBuf,
    bin: &Path,
    nats: &str,
) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let endpoint = "tcp://127.0.0.1:5597";
    let listen = "127.0.0.1:3997";
    let mut procs = Procs(Vec::new());
    procs.0.push(spawn_quiet(
        Command::new(bin.join("broker")).args(["--bind", endpoint]),
    )?);
    std::thread::sleep(Duration::from_millis(300));
    procs.0.push(spawn_quiet(
        Command::new(bin.join("receive")).args(["--broker", endpoint, "--listen", listen]),
    )?);
    std::thread::sleep(Duration::from_millis(700));
    let url = format!("ws://{listen}/ws");
    let mut rows = Vec::new();
    for &rate in rates {
        let (mut sb, mut nt) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            eprintln!("rate {rate}/s × {subscribers} round {}/{rounds}", round + 1);
            let (n, r, d) = (
                subscribers.to_string(),
                rate.to_string(),
                duration_ms.to_string(),
            );
            sb.push(run_json(Command::new(bin.join("sbctl")).args([
                "--broker",
                endpoint,
                "--json",
                "bench",
                "fanout",
                "--url",
                &url,
                "--subscribers",
                &n,
                "--rate",
                &r,
                "--duration-ms",
                &d,
            ]))?);
            nt.push(run_json(Command::new(&me).args([
                "nats-fanout",
                "--url",
                nats,
                "--subscribers",
                &n,
                "--rate",
                &r,
                "--duration-ms",
                &d,
            ]))?);
        }
        let m = |runs: &[Value], key: &str| {
            median(
                runs.iter()
                    .map(|r| r[key].as_f64().unwrap_or(0.0))
                    .collect(),
            )
        };
        let lost = |runs: &[Value]| {
            runs.iter()
                .map(|r| r["extra"]["lost"].as_u64().unwrap_or(0) + r["extra"]["extra"].as_u64().unwrap_or(0))
                .sum::<u64>()
        };
        rows.push(json!({
            "rate": rate, "offered": u64::from(rate) * subscribers as u64,
            "sb": m(&sb, "rps"), "sb_p50": m(&sb, "p50_us"), "sb_p99": m(&sb, "p99_us"), "sb_lost": lost(&sb),
            "nats": m(&nt, "rps"), "nats_p50": m(&nt, "p50_us"), "nats_p99": m(&nt, "p99_us"), "nats_lost": lost(&nt),
            "sb_runs": sb, "nats_runs": nt,
        }));
    }
    drop(procs);
    let mut s = String::from("## Fan-out: Switchboard vs NATS\n\n");
    s.push_str(&format!(
        "Machine: {}. One run of `compare fanout --rounds {rounds} --duration-ms {duration_ms} --subscribers {subscribers}`: one publisher, one topic, {subscribers} subscriber connections (WebSocket to `receive` for Switchboard, the publisher on the bus; NATS core for NATS); for each rate, {rounds} rounds, Switchboard then NATS; medians.\n\n",
        machine()
    ));
    s.push_str("| events/s | offered deliveries/s | Switchboard deliveries/s | NATS deliveries/s | ratio | Switchboard p50 / p99 ms | NATS p50 / p99 ms | lost or extra (SB / NATS, all rounds) |\n|---|---|---|---|---|---|---|---|\n");
    for r in &rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        s.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | **{:.2}x** | {:.1} / {:.1} | {:.1} / {:.1} | {} / {} |\n",
            r["rate"],
            r["offered"],
            f("sb"),
            f("nats"),
            f("sb") / f("nats").max(1.0),
            f("sb_p50") / 1000.0,
            f("sb_p99") / 1000.0,
            f("nats_p50") / 1000.0,
            f("nats_p99") / 1000.0,
            r["sb_lost"],
            r["nats_lost"],
        ));
    }
    s.push_str("\nEvery round, raw (deliveries/s, p50 µs, p99 µs):\n\n```\n");
    for r in &rows {
        let fmt = |runs: &Value| {
            runs.as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| {
                            format!(
                                "{:.0}/{}/{}",
                                x["rps"].as_f64().unwrap_or(0.0),
                                x["p50_us"],
                                x["p99_us"]
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("  ")
                })
                .unwrap_or_default()
        };
        s.push_str(&format!(
            "{}/s: SB {}   NATS {}\n",
            r["rate"],
            fmt(&r["sb_runs"]),
            fmt(&r["nats_runs"])
        ));
    }
    s.push_str("```\n\nReproduce: `cargo build --release --workspace --bins && cd bench && cargo run --release -- fanout --rounds 3` (nats-server on 127.0.0.1:4222).\n");
    std::fs::write(out, &s)?;
    eprintln!("wrote {}", out.display());
    println!("{s}");
    Ok(())
}
