//! Routing: by name, balancing, pinning, keys, holding, and the immediate errors.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use switchboard_broker::router::{OwnerQuery, OwnerReply};
use switchboard_broker::Settings;
use switchboard_bus::proto::{self, ErrorCode};
use switchboard_bus::CallOptions;
use switchboard_testkit::{
    broker_ls, broker_stats, client, eventually, health, spawn_echo, trace_init, wait_ready,
    whoami, TestBroker,
};

use crate::{keyed, pinned, timeout, READY};

#[tokio::test]
async fn routes_by_service_name() {
    trace_init();
    let broker = TestBroker::start();
    let _a = spawn_echo(&broker.endpoint, "alpha", "alpha-1", None);
    let _b = spawn_echo(&broker.endpoint, "beta", "beta-1", None);
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "alpha-1", READY).await);
    assert!(wait_ready(&bus, "beta-1", READY).await);
    for _ in 0..10 {
        assert_eq!(
            whoami(&bus, "alpha", CallOptions::default()).await.unwrap(),
            "alpha-1"
        );
        assert_eq!(
            whoami(&bus, "beta", CallOptions::default()).await.unwrap(),
            "beta-1"
        );
    }
    let reply = bus
        .call("alpha", "echo", b"payload".to_vec(), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(&reply.body[..], b"payload");
    let reply = bus
        .call("beta", "$echo", b"raw".to_vec(), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(&reply.body[..], b"raw");
    let health = health(&bus, "beta").await;
    assert_eq!(
        (
            health.service.as_str(),
            health.instance.as_str(),
            health.status.as_str()
        ),
        ("beta", "beta-1", "ok")
    );
    // The ten whoami: `$echo`, and main's or wait_ready's `$health`, are not
    // requests a service handled.
    assert_eq!(health.handled, 10, "handled {}", health.handled);
}

#[tokio::test]
async fn balances_over_two_instances() {
    trace_init();
    let broker = TestBroker::start();
    let _a = spawn_echo(&broker.endpoint, "echo", "echo-a", None);
    let _b = spawn_echo(&broker.endpoint, "echo", "echo-b", None);
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "echo-a", READY).await && wait_ready(&bus, "echo-b", READY).await);

    // One at a time: ties rotate.
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..100 {
        *counts
            .entry(whoami(&bus, "echo", CallOptions::default()).await.unwrap())
            .or_default() += 1;
    }
    assert!(
        counts["echo-a"] >= 40 && counts["echo-b"] >= 40,
        "{counts:?}"
    );

    // Concurrent: fewest in flight wins, so both carry slow requests.
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            bus.call(
                "echo",
                "sleep",
                proto::to_body(&serde_json::json!({"ms": 100})).unwrap(),
                CallOptions::default(),
            )
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ls = broker_ls(&bus).await;
    let inflight: Vec<u32> = ls
        .iter()
        .filter(|i| i.service == "echo")
        .map(|i| i.inflight)
        .collect();
    assert_eq!(inflight.len(), 2);
    assert!(
        inflight.iter().all(|&n| n >= 15),
        "in flight per instance: {inflight:?}"
    );
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn instance_pinning_overrides_balancing() {
    trace_init();
    let broker = TestBroker::start();
    let _a = spawn_echo(&broker.endpoint, "echo", "echo-a", None);
    let _b = spawn_echo(&broker.endpoint, "echo", "echo-b", None);
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "echo-a", READY).await && wait_ready(&bus, "echo-b", READY).await);
    for _ in 0..20 {
        assert_eq!(
            whoami(&bus, "echo", pinned("echo-b")).await.unwrap(),
            "echo-b"
        );
    }
    // Pinning an instance of another service does not reach it.
    let _c = spawn_echo(&broker.endpoint, "other", "other-1", None);
    assert!(wait_ready(&bus, "other-1", READY).await);
    let err = whoami(
        &bus,
        "echo",
        CallOptions {
            timeout: Some(Duration::from_millis(200)),
            ..pinned("other-1")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
}

async fn owners(bus: &switchboard_bus::Handle, keys: &[String]) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for key in keys {
        let served_by = whoami(bus, "loc", keyed(key)).await.unwrap();
        let reply = bus
            .call(
                proto::BROKER_SERVICE,
                "owner",
                proto::to_body(&OwnerQuery {
                    service: "loc".into(),
                    key: key.clone(),
                })
                .unwrap(),
                CallOptions::default(),
            )
            .await
            .unwrap();
        let owner: OwnerReply = proto::from_body(&reply.body).unwrap();
        assert_eq!(
            owner.instance.as_deref(),
            Some(served_by.as_str()),
            "$broker owner agrees with routing for {key}"
        );
        map.insert(key.clone(), served_by);
    }
    map
}

#[tokio::test]
async fn key_ownership_is_stable_and_moves_only_to_a_joining_instance() {
    trace_init();
    let broker = TestBroker::start();
    let _a = spawn_echo(&broker.endpoint, "loc", "loc01", None);
    let _b = spawn_echo(&broker.endpoint, "loc", "loc02", None);
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "loc01", READY).await && wait_ready(&bus, "loc02", READY).await);
    let keys: Vec<String> = (0..120).map(|i| format!("zone-{i}")).collect();
    let first = owners(&bus, &keys).await;
    let second = owners(&bus, &keys).await;
    assert_eq!(first, second, "same keys, same owners");
    let on_a = first.values().filter(|v| *v == "loc01").count();
    assert!(
        (30..=90).contains(&on_a),
        "keys spread over both instances: {on_a} of 120 on loc01"
    );

    // A third instance joins: a key either stays where it was or moves to loc03.
    let _c = spawn_echo(&broker.endpoint, "loc", "loc03", None);
    assert!(wait_ready(&bus, "loc03", READY).await);
    let third = owners(&bus, &keys).await;
    let mut moved = 0;
    for key in &keys {
        if third[key] != first[key] {
            assert_eq!(third[key], "loc03", "{key} moved between old instances");
            moved += 1;
        }
    }
    assert!(
        (15..=70).contains(&moved),
        "about a third of the keys move to loc03: {moved}"
    );
}

#[tokio::test]
async fn request_for_a_declared_service_is_held_until_it_starts() {
    trace_init();
    let broker = TestBroker::with(Settings {
        services: vec!["late".into()],
        ..Settings::default()
    });
    let bus = client(&broker.endpoint, "t-client", None).await;
    let caller = bus.clone();
    let call = tokio::spawn(async move { whoami(&caller, "late", timeout(10_000)).await });
    assert!(
        eventually(Duration::from_secs(5), || async {
            broker_stats(&bus).await.held >= 1
        })
        .await,
        "the request is held"
    );
    let started = Instant::now();
    let _svc = spawn_echo(&broker.endpoint, "late", "late-1", None);
    let who = call.await.unwrap().unwrap();
    assert_eq!(who, "late-1");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered once the service started: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn request_for_a_service_seen_before_is_held_while_it_restarts() {
    trace_init();
    let broker = TestBroker::start();
    let bus = client(&broker.endpoint, "t-client", None).await;
    let svc = spawn_echo(&broker.endpoint, "flaky", "flaky-1", None);
    assert!(wait_ready(&bus, "flaky-1", READY).await);
    svc.stop().await;
    assert!(
        eventually(READY, || async {
            broker_ls(&bus)
                .await
                .iter()
                .all(|i| i.instance != "flaky-1")
        })
        .await
    );
    let caller = bus.clone();
    let call = tokio::spawn(async move { whoami(&caller, "flaky", timeout(10_000)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _svc = spawn_echo(&broker.endpoint, "flaky", "flaky-2", None);
    assert_eq!(call.await.unwrap().unwrap(), "flaky-2");
}

#[tokio::test]
async fn held_request_gets_unavailable_at_its_deadline() {
    trace_init();
    let broker = TestBroker::with(Settings {
        services: vec!["nobody".into()],
        ..Settings::default()
    });
    let bus = client(&broker.endpoint, "t-client", None).await;
    let started = Instant::now();
    let err = whoami(&bus, "nobody", timeout(400)).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    assert!(err.message.contains("nobody"), "{err}");
    assert!(
        waited >= Duration::from_millis(380) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

#[tokio::test]
async fn unknown_service_is_refused_at_once() {
    trace_init();
    let broker = TestBroker::start();
    let bus = client(&broker.endpoint, "t-client", None).await;
    let started = Instant::now();
    let err = whoami(&bus, "never-heard-of", timeout(5_000))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownService, "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(1_000),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unknown_op_and_bad_body_get_their_codes() {
    trace_init();
    let broker = TestBroker::start();
    let _svc = spawn_echo(&broker.endpoint, "echo", "echo-1", None);
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "echo-1", READY).await);
    let err = bus
        .call("echo", "nope", Vec::new(), CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownOp);
    let err = bus
        .call("echo", "sleep", b"\xc1".to_vec(), CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BadRequest);
    let err = bus
        .call("bad name!", "x", Vec::new(), CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BadRequest);
}
