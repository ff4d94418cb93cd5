//! chat, loc and db through the real gateway.

use mysql_async::prelude::*;
use serde_json::json;
use std::time::Duration;
use switchboard_bus::proto;
use switchboard_bus::CallOptions;
use switchboard_testkit::{wait_ready, Child, Sig};

use crate::harness::{sql, System};

#[tokio::test]
async fn two_clients_chat_and_the_message_is_committed() {
    let system = System::start(true).await;
    let mut ada = system.client_as("ada").await;
    let mut bob = system.client_as("bob").await;
    let joined = ada.ok("chat", "join", json!({"room": "lobby"})).await;
    assert_eq!(joined["room"], "lobby");
    assert!(
        joined.get("$subscribe").is_none(),
        "directives are stripped: {joined}"
    );
    let joined = bob.ok("chat", "join", json!({"room": "lobby"})).await;
    assert_eq!(joined["members"], json!(["ada", "bob"]));
    assert_eq!(
        ada.ok("chat", "who", json!({"room": "lobby"})).await["users"],
        json!(["ada", "bob"])
    );

    let text = "hi bob'); DROP TABLE messages; -- \\ \" ünï 🚀";
    let said = ada
        .ok("chat", "say", json!({"room": "lobby", "text": text}))
        .await;
    let seq = said["seq"].as_u64().expect("seq");
    for client in [&mut ada, &mut bob] {
        let event = client
            .event("chat.room.lobby")
            .await
            .expect("message event");
        assert_eq!(
            (
                event["seq"].as_u64(),
                event["user"].as_str(),
                event["text"].as_str()
            ),
            (Some(seq), Some("ada"), Some(text))
        );
    }
    let history = bob.ok("chat", "history", json!({"room": "lobby"})).await;
    assert_eq!(history["messages"][0]["text"], json!(text));
    assert_eq!(history["messages"][0]["seq"], json!(seq));
    // Catch-up: bob saw `seq`; what came after it, oldest first.
    let mut later = Vec::new();
    for text in ["one", "two"] {
        let said = ada
            .ok("chat", "say", json!({"room": "lobby", "text": text}))
            .await;
        later.push(said["seq"].clone());
    }
    let missed = bob
        .ok("chat", "history", json!({"room": "lobby", "after": seq}))
        .await;
    let got: Vec<_> = missed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["seq"].clone(), m["text"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (later[0].clone(), json!("one")),
            (later[1].clone(), json!("two"))
        ]
    );
    let code = bob
        .err(
            Some("chat"),
            "history",
            json!({"room": "lobby", "after": seq, "before": seq}),
        )
        .await;
    assert_eq!(code, "bad_request");

    // In the table, verbatim, with the author from the token.
    let mut conn = sql(&system).await;
    let row: Option<(String, String, String)> = conn
        .exec_first(
            "SELECT room, user_id, text FROM messages WHERE seq = ?",
            (seq,),
        )
        .await
        .unwrap();
    assert_eq!(row, Some(("lobby".into(), "ada".into(), text.into())));

    // A client cannot choose its user: `user` in data is just data.
    let said = bob
        .ok(
            "chat",
            "say",
            json!({"room": "lobby", "text": "me", "user": "ada"}),
        )
        .await;
    let author: Option<String> = conn
        .exec_first(
            "SELECT user_id FROM messages WHERE seq = ?",
            (said["seq"].as_u64(),),
        )
        .await
        .unwrap();
    assert_eq!(author.as_deref(), Some("bob"));

    // Direct message, and presence cleaned up when a client goes away.
    ada.ok("chat", "dm", json!({"user": "bob", "text": "psst"}))
        .await;
    let dm = bob.event("user.bob").await.expect("dm event");
    assert_eq!(
        (dm["from"].as_str(), dm["text"].as_str()),
        (Some("ada"), Some("psst"))
    );
    drop(bob);
    let mut gone = false;
    for _ in 0..100 {
        if ada.ok("chat", "who", json!({"room": "lobby"})).await["users"] == json!(["ada"]) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "bob leaves the room when his connection closes");
    // Validation errors.
    assert_eq!(
        ada.err(Some("chat"), "say", json!({"room": "lobby", "text": ""}))
            .await,
        "bad_request"
    );
    assert_eq!(
        ada.err(
            Some("chat"),
            "say",
            json!({"room": "lobby", "text": "x".repeat(1001)})
        )
        .await,
        "bad_request"
    );
    assert_eq!(
        ada.err(Some("chat"), "join", json!({"room": "no.dots"}))
            .await,
        "bad_request"
    );
    assert_eq!(
        ada.err(Some("chat"), "join", json!({})).await,
        "bad_request"
    );
}

#[tokio::test]
async fn relay_reaches_another_service_and_comes_back() {
    let system = System::start(true).await;
    let mut ada = system.client_as("ada").await;
    let back = ada
        .ok(
            "chat",
            "relay",
            json!({"to": "loc", "op": "$echo", "data": {"ping": [1, 2, 3]}}),
        )
        .await;
    assert_eq!(back, json!({"ping": [1, 2, 3]}));
    // The relay applies the client policy, as the gateway does: `$health` and
    // internal services stay closed.
    assert_eq!(
        ada.err(Some("chat"), "relay", json!({"to": "loc", "op": "$health"}))
            .await,
        "forbidden"
    );
    assert_eq!(
        ada.err(
            Some("chat"),
            "relay",
            json!({"to": "db", "op": "chat.save", "data": {}})
        )
        .await,
        "forbidden"
    );
    assert_eq!(
        ada.err(Some("chat"), "relay", json!({"to": "nowhere", "op": "x"}))
            .await,
        "unknown_service"
    );
    assert_eq!(
        ada.err(Some("chat"), "relay", json!({"to": "chat", "op": "relay"}))
            .await,
        "bad_request"
    );
}

/// The loc instance that owns `zone`.
pub async fn owner(system: &System, zone: &str) -> String {
    let query = proto::admin::OwnerQuery {
        service: "loc".into(),
        key: zone.into(),
    };
    let reply: proto::admin::OwnerReply = system
        .bus
        .broker(
            "owner",
            proto::to_body(&query).unwrap(),
            CallOptions::default(),
        )
        .await
        .unwrap();
    reply.instance.expect("a ready loc instance")
}

/// Two zones owned by different loc instances.
async fn split_zones(system: &System) -> (String, String) {
    let zones = ["lobby", "z1", "z2", "z3", "z4", "z5", "z6", "z7", "z8"];
    let first = owner(system, zones[0]).await;
    for z in &zones[1..] {
        if owner(system, z).await != first {
            return (zones[0].to_owned(), (*z).to_owned());
        }
    }
    panic!("all zones on one instance");
}

#[tokio::test]
async fn positions_across_two_zones_on_two_loc_instances() {
    let system = System::start(true).await;
    let (za, zb) = split_zones(&system).await;
    let mut ann = system.client_as("ann").await;
    let mut bob = system.client_as("bob").await;
    let mut cat = system.client_as("cat").await;
    bob.request(None, "subscribe", json!({"topic": format!("loc.{za}")}))
        .await;
    for (client, zone, x, y) in [
        (&mut ann, &za, 0.0, 0.0),
        (&mut bob, &za, 3.0, 4.0),
        (&mut cat, &za, 30.0, 40.0),
    ] {
        client
            .ok("loc", "move", json!({"zone": zone, "x": x, "y": y}))
            .await;
    }
    let moved = bob.event(&format!("loc.{za}")).await.expect("move event");
    assert_eq!(moved["zone"], json!(za));
    let near = ann
        .ok(
            "loc",
            "nearby",
            json!({"zone": za, "x": 0.0, "y": 0.0, "radius": 10.0}),
        )
        .await;
    assert_eq!(
        near["users"],
        json!([{"user": "ann", "x": 0.0, "y": 0.0, "dist": 0.0}, {"user": "bob", "x": 3.0, "y": 4.0, "dist": 5.0}])
    );
    let far = ann
        .ok(
            "loc",
            "nearby",
            json!({"zone": za, "x": 0.0, "y": 0.0, "radius": 100.0}),
        )
        .await;
    assert_eq!(far["users"].as_array().unwrap().len(), 3);
    assert_eq!(far["users"][2]["user"], "cat", "sorted by distance");

    // The other zone lives on the other instance and knows nothing of the first.
    cat.ok("loc", "move", json!({"zone": zb, "x": 1.0, "y": 1.0}))
        .await;
    let zone_b = ann.ok("loc", "zone", json!({"zone": zb})).await;
    assert_eq!(zone_b["users"].as_array().unwrap().len(), 1);
    let ls = switchboard_testkit::broker_ls(&system.bus).await;
    let handled = |name: &str| {
        ls.iter()
            .find(|i| i.instance == name)
            .map(|i| i.handled)
            .unwrap_or(0)
    };
    assert!(
        handled("loc01") > 0 && handled("loc02") > 0,
        "both instances served: {ls:?}"
    );

    // Bad input.
    assert_eq!(
        ann.err(
            Some("loc"),
            "move",
            json!({"zone": "atlantis.deep", "x": 0, "y": 0})
        )
        .await,
        "bad_request"
    );
    assert_eq!(
        ann.err(Some("loc"), "move", json!({"zone": za, "x": 1e300, "y": 0}))
            .await,
        "bad_request"
    );
    assert_eq!(
        ann.err(Some("loc"), "move", json!({"zone": za, "x": "NaN", "y": 0}))
            .await,
        "bad_request"
    );
    assert_eq!(
        ann.err(
            Some("loc"),
            "nearby",
            json!({"zone": za, "x": 0, "y": 0, "radius": -1})
        )
        .await,
        "bad_request"
    );

    // A display name rides along (a label: `user` still comes from the token).
    bob.ok(
        "loc",
        "move",
        json!({"zone": za, "x": 5.0, "y": 5.0, "name": "Bob 🚲", "user": "eve"}),
    )
    .await;
    let named = loop {
        let e = bob.event(&format!("loc.{za}")).await.expect("move event");
        if e["x"] == 5.0 {
            break e;
        }
    };
    assert_eq!(
        (named["user"].as_str(), named["name"].as_str()),
        (Some("bob"), Some("Bob 🚲"))
    );
    let zone_a = ann.ok("loc", "zone", json!({"zone": za})).await;
    let listed = zone_a["users"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|u| u["user"] == "bob" && u["name"] == "Bob 🚲"),
        "{zone_a}"
    );
    for bad in [json!(""), json!("x".repeat(33)), json!("bell\u{7}")] {
        assert_eq!(
            ann.err(
                Some("loc"),
                "move",
                json!({"zone": za, "x": 0, "y": 0, "name": bad})
            )
            .await,
            "bad_request"
        );
    }
}

#[tokio::test]
async fn last_positions_survive_a_loc_restart() {
    let mut system = System::start(true).await;
    let zone = "z3";
    let owner_name = owner(&system, zone).await;
    let mut ann = system.client_as("ann").await;
    ann.ok("loc", "move", json!({"zone": zone, "x": 7.0, "y": 8.0}))
        .await;
    // A graceful stop saves what is pending.
    let endpoint = system.broker.clone();
    let proc = system.proc(&owner_name);
    proc.signal(Sig::SIGTERM).unwrap();
    assert!(
        proc.wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success()),
        "loc exits 0 on SIGTERM"
    );
    let args = [
        "--broker",
        endpoint.as_str(),
        "--instance",
        owner_name.as_str(),
    ];
    let restarted = Child::spawn("loc", &args, &[]).unwrap();
    system.procs.push((format!("{owner_name}-2"), restarted));
    assert!(wait_ready(&system.bus, &owner_name, Duration::from_secs(10)).await);
    let snapshot = ann.ok("loc", "zone", json!({"zone": zone})).await;
    assert_eq!(snapshot["users"][0]["user"], "ann");
    assert_eq!(
        (
            snapshot["users"][0]["x"].as_f64(),
            snapshot["users"][0]["y"].as_f64()
        ),
        (Some(7.0), Some(8.0))
    );
    // The reloaded position knows no session; it still ends when ann's does.
    drop(ann);
    let mut bob = system.client_as("bob").await;
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while bob.ok("loc", "zone", json!({"zone": zone})).await["users"] != json!([]) {
        assert!(
            std::time::Instant::now() < until,
            "ann's reloaded position is gone after her session closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
