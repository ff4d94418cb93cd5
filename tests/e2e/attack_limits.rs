//! Attacks on what a client's input can make grow: metric labels, calls made on
//! its behalf, subscriptions and requests in flight. Each is written as the
//! attack, against the real processes.

use serde_json::{json, Value};
use std::time::Duration;

use crate::harness::{System, Ws};
use crate::observe::get;

/// The gateway's `http://127.0.0.1:PORT`.
fn http(system: &System) -> String {
    system.ws.replace("ws://", "http://")
}

/// Sends `frames` requests without waiting, then collects as many replies.
async fn flood(ws: &mut Ws, frames: impl IntoIterator<Item = Value>) -> Vec<Value> {
    let mut ids = Vec::new();
    for frame in frames {
        ids.push(frame["id"].clone());
        ws.send_text(&frame.to_string()).await;
    }
    let mut replies = Vec::new();
    for id in ids {
        replies.push(ws.reply_for(&id).await);
    }
    replies
}

/// Made-up service names (the default policy opens every name) used to become
/// metric labels: 3,500 of them took `/metrics` from 8 KB to 8 MB, and past the
/// bus's message limit the gateway's `$metrics` answer cost it its bus
/// connection. Now a name the policy does not list is counted as `other`.
#[tokio::test]
async fn made_up_service_names_never_become_metric_labels() {
    let system = System::start_with(
        false,
        &["--rate-per-sec", "100000", "--rate-burst", "100000"],
    )
    .await;
    let mut eve = Ws::connect(&format!("{}/ws", system.ws)).await.unwrap();
    let (_, before) = get(&http(&system), "/metrics").await;
    // 40 rounds of 50: within the connection's 64 requests in flight.
    for round in 0..40 {
        let frames = (0..50).map(|i| {
            json!({"id": round * 1000 + i, "to": format!("made-up-{round}-{i}"), "op": "x", "data": {}})
        });
        let replies = flood(&mut eve, frames).await;
        assert!(
            replies
                .iter()
                .all(|r| r["error"]["code"] == "unknown_service"),
            "{:?}",
            &replies[..1]
        );
    }
    let (status, after) = get(&http(&system), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        !after.contains("made-up-"),
        "a client's name became a label"
    );
    assert!(
        after.contains(r#"service="other""#),
        "the requests are still counted: {after}"
    );
    assert!(
        after.len() < before.len() + 8 * 1024,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
}
