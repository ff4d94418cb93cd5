//! The steady load: WebSocket clients that each keep sending a mix of chat `say`
//! (with an idempotency key, so every acknowledged message can be looked up),
//! loc `move` and `$echo`, one request at a time, and record what became of each.
//! A client whose connection drops reconnects at once (every 100 ms until it can).

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// What a request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// chat `say` (stored in MariaDB).
    Say,
    /// loc `move`.
    Move,
    /// chat `$echo`.
    Echo,
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered `ok`.
    Ok,
    /// Answered with this error code.
    Error(String),
    /// The connection dropped with the request in flight (a gateway restart).
    LostWithSocket,
    /// No answer within the deadline while the connection stayed up.
    Unanswered,
}

/// One request's record.
#[derive(Debug, Clone)]
pub struct Record {
    /// The phase (fault) in which it completed: a request in flight when a
    /// fault hits belongs to that fault.
    pub phase: usize,
    /// What it was.
    pub kind: Kind,
    /// When it was sent.
    pub sent: Instant,
    /// When its answer came (or it was given up).
    pub done: Instant,
    /// Its outcome.
    pub outcome: Outcome,
    /// For a `say`: its idempotency key.
    pub key: Option<String>,
}

/// Shared by the clients and the conductor.
#[derive(Default)]
pub struct Book {
    /// Every request, in completion order.
    pub records: Mutex<Vec<Record>>,
    /// The current phase.
    pub phase: AtomicUsize,
    /// Set to stop the clients.
    pub stop: AtomicBool,
}

/// A client's longest wait for an answer; the gateway's own deadline is 5 s.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// Zones the load moves in (loc's default zones).
const ZONES: [&str; 4] = ["z1", "z2", "z3", "z4"];

/// Runs client `n` until the book says stop: `rate` requests per second.
pub async fn client(n: usize, url: String, rate: u32, book: Arc<Book>) {
    let every = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut seq: u64 = 0;
    while !book.stop.load(Ordering::Relaxed) {
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut pace = tokio::time::interval(every);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if book.stop.load(Ordering::Relaxed) {
                let _ = ws.close(None).await;
                return;
            }
            pace.tick().await;
            seq += 1;
            let (kind, frame, key) = request(n, seq);
            let sent = Instant::now();
            let (outcome, goaway) = if ws
                .send(Message::Text(frame.to_string().into()))
                .await
                .is_err()
            {
                (Outcome::LostWithSocket, false)
            } else {
                answer(&mut ws, seq).await
            };
            // A gateway that is going away said so: nothing more on this socket.
            let lost = outcome == Outcome::LostWithSocket || goaway;
            let phase = book.phase.load(Ordering::Relaxed);
            book.records
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Record {
                    phase,
                    kind,
                    sent,
                    done: Instant::now(),
                    outcome,
                    key,
                });
            if lost {
                break; // reconnect
            }
        }
    }
}

fn request(n: usize, seq: u64) -> (Kind, Value, Option<String>) {
    match seq % 10 {
        0..=3 => {
            let key = format!("c{n}-{seq}");
            let frame = json!({"id": seq, "to": "chat", "op": "say", "data": {
                "room": format!("chaos-r{}", n % 4),
                "text": format!("chaos {key}"),
                "idempotency_key": key,
            }});
            (Kind::Say, frame, Some(key))
        }
        4..=6 => {
            let frame = json!({"id": seq, "to": "loc", "op": "move", "data": {
                "zone": ZONES[n % ZONES.len()], "x": seq as f64, "y": n as f64,
            }});
            (Kind::Move, frame, None)
        }
        _ => (
            Kind::Echo,
            json!({"id": seq, "to": "chat", "op": "$echo", "data": {"n": seq}}),
            None,
        ),
    }
}

/// Waits for the answer to `id`; also says whether the gateway sent `goaway`
/// meanwhile (then the client reconnects before its next request).
async fn answer<S>(ws: &mut S, id: u64) -> (Outcome, bool)
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let until = tokio::time::Instant::now() + ANSWER_WITHIN;
    let mut goaway = false;
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => return (Outcome::Unanswered, goaway),
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {
                return (Outcome::LostWithSocket, goaway)
            }
            Ok(Some(Ok(Message::Text(t)))) => {
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                if v.get("goaway").is_some() {
                    goaway = true;
                    continue;
                }
                if v["id"] != json!(id) {
                    continue; // an event, or a stray
                }
                let outcome = match v["ok"].as_bool() {
                    Some(true) => Outcome::Ok,
                    _ => Outcome::Error(v["error"]["code"].as_str().unwrap_or("?").to_owned()),
                };
                return (outcome, goaway);
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// A client that asks for large replies and never reads: it must be closed
/// (4001) without slowing the others. Returns whether the gateway closed it.
pub async fn slow_reader(url: String, for_: Duration) -> bool {
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
        return false;
    };
    let frame =
        json!({"id": 1, "to": "chat", "op": "history", "data": {"room": "chaos-r0", "limit": 200}})
            .to_string();
    let until = Instant::now() + for_;
    while Instant::now() < until {
        for _ in 0..32 {
            if ws.send(Message::Text(frame.as_str().into())).await.is_err() {
                return true; // closed by the gateway
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reading now: the stream ends (closed) within a few seconds.
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(end, ws.next()).await {
            Err(_) => return false,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => {}
        }
    }
}
