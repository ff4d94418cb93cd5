//! The soak: clients churn (connect, join, say, move, then leave with a close or
//! by dropping the socket without one) for the whole run, while every process's
//! memory is sampled. Memory must be flat after warm-up: the mean of the last
//! fifth of the samples within 10% of the mean of the fifth after warm-up.

use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::system::System;

/// Processes sampled.
const INSTANCES: [&str; 6] = ["broker", "db", "chat", "loc01", "loc02", "receive"];
/// Allowed growth after warm-up.
const FLAT: f64 = 0.10;

/// Runs the soak for `secs`; prints the table; returns whether memory was flat.
pub async fn run(system: &System, secs: u64, clients: usize) -> anyhow::Result<bool> {
    let stop = Arc::new(AtomicBool::new(false));
    let sessions = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|n| tokio::spawn(churn(n, system.ws.clone(), stop.clone(), sessions.clone())))
        .collect();
    let started = Instant::now();
    let mut samples: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let every = Duration::from_secs(10);
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(every).await;
        for i in INSTANCES {
            let rss = system
                .instance(i)
                .and_then(|r| r["rss_bytes"].as_u64())
                .unwrap_or(0);
            samples.entry(i).or_default().push(rss);
        }
        eprintln!(
            "soak: {:>4} s, {} sessions so far",
            started.elapsed().as_secs(),
            sessions.load(Ordering::Relaxed)
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    println!(
        "Soak: {secs} s, {clients} churning clients, {} sessions (connect, join, say, move, leave; half dropped without a close).\n",
        sessions.load(Ordering::Relaxed)
    );
    println!(
        "| process | RSS after warm-up (MiB) | RSS at the end (MiB) | change | flat (≤ 10%) |"
    );
    println!("|---|---|---|---|---|");
    let mut flat = true;
    for (name, s) in &samples {
        let fifth = (s.len() / 5).max(1);
        // Warm-up: the first fifth is skipped; then the next fifth vs the last.
        let mean = |xs: &[u64]| xs.iter().sum::<u64>() as f64 / xs.len().max(1) as f64;
        let early = mean(&s[fifth.min(s.len() - 1)..(2 * fifth).min(s.len())]);
        let late = mean(&s[s.len().saturating_sub(fifth)..]);
        let change = if early > 0.0 { late / early - 1.0 } else { 0.0 };
        let ok = change <= FLAT;
        flat &= ok;
        println!(
            "| {name} | {:.1} | {:.1} | {:+.1}% | {} |",
            early / 1048576.0,
            late / 1048576.0,
            change * 100.0,
            if ok { "yes" } else { "NO" }
        );
    }
    Ok(flat)
}

async fn churn(n: usize, url: String, stop: Arc<AtomicBool>, sessions: Arc<AtomicU64>) {
    let mut round: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let room = format!("soak-{}", (n as u64 + round) % 50);
        let zone = ["z1", "z2", "z3", "z4"][(n + round as usize) % 4];
        let frames = [
            json!({"id": 1, "to": "chat", "op": "join", "data": {"room": room}}),
            json!({"id": 2, "to": "chat", "op": "say", "data": {"room": room, "text": format!("soak {n} {round}")}}),
            json!({"id": 3, "to": "loc", "op": "move", "data": {"zone": zone, "x": 1.0, "y": round as f64}}),
            json!({"id": 4, "to": "chat", "op": "history", "data": {"room": room, "limit": 20}}),
        ];
        for frame in frames {
            if ws
                .send(Message::Text(frame.to_string().into()))
                .await
                .is_err()
            {
                break;
            }
            // Read until this frame's reply (events in between).
            let until = tokio::time::Instant::now() + Duration::from_secs(5);
            while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until, ws.next()).await {
                if matches!(msg, Message::Text(ref t) if t.as_str().contains("\"ok\"")) {
                    break;
                }
            }
        }
        sessions.fetch_add(1, Ordering::Relaxed);
        if round.is_multiple_of(2) {
            let _ = ws.close(None).await;
        }
        // Odd rounds: dropped without a close, like a phone losing its network.
        drop(ws);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
