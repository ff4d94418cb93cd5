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

/// chat `relay` calls another service on a client's behalf. It denied only `db`
/// and `main` and never looked at the op: through it a client read the
/// gateway's `$metrics` and `$health`, chat's `$info`, loc's `$health`. It now
/// applies the gateway's client policy: what a client may not call, it may not
/// relay.
#[tokio::test]
async fn relay_opens_nothing_the_policy_keeps_closed() {
    let system = System::start(false).await;
    let mut eve = Ws::connect(&format!("{}/ws", system.ws)).await.unwrap();
    for (to, op) in [
        ("receive", "$metrics"),
        ("receive", "$health"),
        ("receive", "$trace"),
        ("chat", "$info"),
        ("chat", "$trace"),
        ("loc", "$health"),
        ("loc", "$metrics"),
        ("db", "chat.history"),
        ("main", "ls"),
        ("$broker", "ls"),
    ] {
        let reply = eve
            .request(
                Some("chat"),
                "relay",
                json!({"to": to, "op": op, "data": {}}),
            )
            .await;
        assert_eq!(
            reply["error"]["code"], "forbidden",
            "relay to {to}.{op}: {reply}"
        );
    }
    // What the policy opens still goes through.
    let data = eve
        .ok(
            "chat",
            "relay",
            json!({"to": "loc", "op": "$echo", "data": {"x": 1}}),
        )
        .await;
    assert_eq!(data, json!({"x": 1}));
}

/// An operator closes a service in the policy file (`open = false`): before,
/// a client still reached it through `relay`.
#[tokio::test]
async fn relay_respects_a_service_the_operator_closed() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    let text = format!(
        "{}\n[services.billing]\nopen = false\n",
        switchboard_gateway::policy::DEFAULT_POLICY
    );
    std::fs::write(&policy, text).unwrap();
    let policy = policy.to_str().unwrap();
    let system = System::start_args(false, &["--policy", policy], &["--policy", policy], &[]).await;
    let _billing = switchboard_testkit::spawn_echo(&system.broker, "billing", "billing", None);
    assert!(
        switchboard_testkit::wait_ready(&system.bus, "billing", Duration::from_secs(10)).await,
        "billing ready"
    );
    let mut eve = Ws::connect(&format!("{}/ws", system.ws)).await.unwrap();
    assert_eq!(
        eve.err(Some("billing"), "$echo", json!({})).await,
        "forbidden"
    );
    let reply = eve
        .request(
            Some("chat"),
            "relay",
            json!({"to": "billing", "op": "$echo", "data": {"refund": 100}}),
        )
        .await;
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
}

/// A relayed `loc.move` skipped keyed routing and landed on whichever loc
/// instance was least busy, not the zone's owner: the zone's readers never saw
/// the position. It now carries the routing key the policy names.
#[tokio::test]
async fn a_relayed_move_reaches_the_instance_that_owns_the_zone() {
    let system = System::start(false).await;
    let mut ada = Ws::connect(&format!("{}/ws", system.ws)).await.unwrap();
    let me = ada.ok_gateway("whoami", json!({})).await["user"].clone();
    // Eight zones: with two instances, a move that ignores ownership lands on
    // the wrong one for some of them (all eight right by chance: 1 in 256).
    for i in 0..8 {
        let zone = format!("relayed-{i}");
        ada.ok(
            "chat",
            "relay",
            json!({"to": "loc", "op": "move", "data": {"zone": zone, "x": 1.0, "y": 2.0}}),
        )
        .await;
        let users = ada.ok("loc", "zone", json!({"zone": zone})).await["users"].clone();
        let found = users
            .as_array()
            .is_some_and(|u| u.iter().any(|x| x == &me || x["user"] == me));
        assert!(found, "zone {zone}: {users}");
    }
}
