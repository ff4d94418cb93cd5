//! loc zones are created on first use like chat rooms: name rules, a cap on live
//! zones per instance (the least recently used makes room), and idle zones
//! evicted with their positions saved.

use serde_json::json;
use std::time::Duration;

use crate::harness::System;
use crate::services::owner;

/// Three new zone names owned by the same loc instance.
async fn three_on_one_instance(system: &System) -> Vec<String> {
    let mut by_owner: std::collections::HashMap<String, Vec<String>> = Default::default();
    for i in 0..64 {
        let zone = format!("fresh-{i}");
        let o = owner(system, &zone).await;
        let list = by_owner.entry(o).or_default();
        list.push(zone);
        if list.len() == 3 {
            return list.clone();
        }
    }
    panic!("no three zones on one instance");
}

#[tokio::test]
async fn zones_are_made_on_first_use_within_a_cap_and_evicted_when_idle_or_least_used() {
    let system =
        System::start_full(true, &[], &["--max-zones", "2", "--zone-idle-ms", "600"]).await;
    let mut ada = system.client_as("ada").await;
    let zones = three_on_one_instance(&system).await;
    let (a, b, c) = (&zones[0], &zones[1], &zones[2]);

    // Names follow the chat room rules.
    for bad in ["a.b", "", "x y", &"z".repeat(65)] {
        assert_eq!(
            ada.err(
                Some("loc"),
                "move",
                json!({"zone": bad, "x": 1.0, "y": 1.0})
            )
            .await,
            "bad_request",
            "{bad:?}"
        );
    }

    // Two zones, never configured, exist from their first use.
    ada.ok("loc", "move", json!({"zone": a, "x": 1.0, "y": 2.0}))
        .await;
    ada.ok("loc", "move", json!({"zone": b, "x": 3.0, "y": 4.0}))
        .await;
    let listed = ada.ok("loc", "zone", json!({"zone": a})).await;
    assert_eq!(listed["users"][0]["user"], "ada", "{listed}");

    // The instance's cap is 2 and neither zone is idle: a third evicts the
    // least recently used (b: a was read since), never refused.
    ada.ok("loc", "move", json!({"zone": c, "x": 5.0, "y": 6.0}))
        .await;

    // The evicted zone comes back from the database with its last positions.
    let listed = ada.ok("loc", "zone", json!({"zone": b})).await;
    assert_eq!(listed["users"][0]["user"], "ada", "{listed}");
    assert_eq!(listed["users"][0]["x"], 3.0);
    assert_eq!(listed["users"][0]["y"], 4.0);

    // Idle past 600 ms (positions saved every 100 ms), zones are evicted and
    // come back the same way.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let listed = ada.ok("loc", "zone", json!({"zone": a})).await;
    assert_eq!(listed["users"][0]["user"], "ada", "{listed}");
    assert_eq!(listed["users"][0]["x"], 1.0);
    assert_eq!(listed["users"][0]["y"], 2.0);
}
