//! Pub/sub through the broker: pattern syntax, unsubscribe, slow subscribers.

use std::time::Duration;
use switchboard_bus::proto::{Envelope, Kind};
use switchboard_bus::CallOptions;
use switchboard_testkit::{
    broker_stats, client, eventually, spawn_echo, sync_with_broker, trace_init, wait_ready, whoami,
    RawPeer, TestBroker,
};

use crate::READY;

async fn next_topic(sub: &mut switchboard_bus::Subscription) -> Option<String> {
    tokio::time::timeout(Duration::from_millis(500), sub.next())
        .await
        .ok()
        .flatten()
        .map(|e| e.to)
}

#[tokio::test]
async fn patterns_match_whole_tokens() {
    trace_init();
    let broker = TestBroker::start();
    let bus = client(&broker.endpoint, "t-sub", None).await;
    let publisher = client(&broker.endpoint, "t-pub", None).await;
    let mut star = bus.subscribe("chat.room.*").await.unwrap();
    let mut tail = bus.subscribe("loc.>").await.unwrap();
    let mut exact = bus.subscribe("user.ada").await.unwrap();
    // Subscriptions are in place once a round trip through the broker is done.
    sync_with_broker(&publisher).await;
    sync_with_broker(&bus).await;

    for topic in [
        "chat.room.lobby",
        "chat.room.lobby.x",
        "chat.roomy.a",
        "loc.z1",
        "loc.z1.cell",
        "loc",
        "user.ada",
        "user.adam",
    ] {
        publisher
            .publish(topic, topic.as_bytes().to_vec())
            .await
            .unwrap();
    }
    assert_eq!(
        next_topic(&mut star).await.as_deref(),
        Some("chat.room.lobby")
    );
    assert_eq!(next_topic(&mut star).await, None);
    assert_eq!(next_topic(&mut tail).await.as_deref(), Some("loc.z1"));
    assert_eq!(next_topic(&mut tail).await.as_deref(), Some("loc.z1.cell"));
    assert_eq!(next_topic(&mut tail).await, None);
    assert_eq!(next_topic(&mut exact).await.as_deref(), Some("user.ada"));
    assert_eq!(next_topic(&mut exact).await, None);

    // Invalid topics are refused by the client before they reach the bus.
    assert!(publisher.publish("chat.*", Vec::new()).await.is_err());
    assert!(bus.subscribe("a.>.b").await.is_err());
    assert!(bus.subscribe("a..b").await.is_err());

    // Dropping a subscription unsubscribes.
    drop(star);
    let mut other = bus.subscribe("chat.room.lobby").await.unwrap();
    sync_with_broker(&bus).await;
    publisher
        .publish("chat.room.lobby", Vec::new())
        .await
        .unwrap();
    assert_eq!(
        next_topic(&mut other).await.as_deref(),
        Some("chat.room.lobby")
    );
    assert_eq!(broker_stats(&bus).await.events, 9);
}

#[tokio::test]
async fn events_to_a_subscriber_that_stopped_reading_are_dropped_and_counted() {
    trace_init();
    // A long liveness window: this test is about a slow subscriber, and with
    // the whole suite running on two cores the test process itself can be
    // starved for seconds; nobody here should be declared dead for that (a
    // publisher re-registering mid-flood loses events this test counts).
    let broker = TestBroker::with(switchboard_broker::Settings {
        liveness: 10,
        ..switchboard_broker::Settings::default()
    });
    let _svc = spawn_echo(&broker.endpoint, "echo", "echo-1", None);
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "echo-1", READY).await);

    // A subscriber that never reads: its TCP buffers, then its broker-side queue
    // (100,000 messages) fill up.
    let mut stuck = RawPeer::connect(&broker.endpoint, None).await.unwrap();
    stuck.register("", "stuck", None).await.unwrap();
    let mut sub = Envelope::new(Kind::Subscribe);
    sub.to = "flood.x".into();
    stuck.send_env(&sub).await.unwrap();
    sync_with_broker(&bus).await;

    let publisher = client(&broker.endpoint, "t-pub", None).await;
    let body = vec![7u8; 1024];
    for i in 0..150_000u32 {
        publisher.publish("flood.x", body.clone()).await.unwrap();
        if i % 25_000 == 0 {
            // The broker keeps routing requests while the subscriber is stuck.
            assert_eq!(
                whoami(&bus, "echo", CallOptions::default()).await.unwrap(),
                "echo-1"
            );
        }
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            let s = broker_stats(&bus).await;
            s.events >= 149_000 && s.events_dropped > 0
        })
        .await,
        "{:?}",
        broker_stats(&bus).await
    );
    assert_eq!(
        whoami(&bus, "echo", CallOptions::default()).await.unwrap(),
        "echo-1"
    );
}

/// Dropping many subscriptions at once, more than the client's command queue
/// holds (a gateway whose clients all leave together), loses no unsubscribe:
/// with a shared channel a lost one would deliver that topic's events to whoever
/// subscribes it next, twice. The drops run without yielding, so the socket
/// task cannot drain the queue meanwhile (this runtime has one thread).
#[tokio::test]
async fn no_unsubscribe_is_lost_when_many_subscriptions_end_at_once() {
    trace_init();
    let broker = TestBroker::start();
    let bus = client(&broker.endpoint, "t-many", None).await;
    let publisher = client(&broker.endpoint, "t-many-pub", None).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16_384);
    let n = 6_000;
    let mut subs = Vec::with_capacity(n);
    for i in 0..n {
        subs.push(
            bus.subscribe_into(&format!("many.t{i}"), tx.clone())
                .await
                .unwrap(),
        );
    }
    drop(subs);
    sync_with_broker(&bus).await;
    sync_with_broker(&publisher).await;
    for i in 0..n {
        publisher
            .publish(&format!("many.t{i}"), Vec::new())
            .await
            .unwrap();
    }
    sync_with_broker(&publisher).await;
    sync_with_broker(&bus).await;
    let mut delivered = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        delivered += 1;
    }
    assert_eq!(delivered, 0, "events for topics unsubscribed from");
}

/// A subscription the broker refuses (past its per-peer cap) is an error for
/// the caller, not a subscription that silently delivers nothing; the
/// subscriptions it holds keep working.
#[tokio::test]
async fn a_refused_subscription_is_an_error_for_its_caller() {
    trace_init();
    let broker = TestBroker::with(switchboard_broker::Settings {
        max_subs_per_peer: 2,
        ..switchboard_broker::Settings::default()
    });
    let bus = client(&broker.endpoint, "t-sub", None).await;
    let publisher = client(&broker.endpoint, "t-pub", None).await;
    let mut a = bus.subscribe("a.>").await.unwrap();
    let _b = bus.subscribe("b.>").await.unwrap();
    let refused = bus.subscribe("c.>").await.err().expect("past the cap");
    assert_eq!(refused.code, switchboard_bus::proto::ErrorCode::Overloaded);
    // A second subscription to a held pattern needs no room of its own.
    let mut a2 = bus.subscribe("a.>").await.unwrap();
    publisher.publish("a.x", b"1".to_vec()).await.unwrap();
    assert_eq!(next_topic(&mut a).await.as_deref(), Some("a.x"));
    assert_eq!(next_topic(&mut a2).await.as_deref(), Some("a.x"));
    assert_eq!(
        bus.stats()
            .subs_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// Services drop what a session held on `session.close` and what a gateway's
/// sessions held on `bus.peer_lost`: a peer may not send either for another.
#[tokio::test]
async fn a_peer_cannot_end_another_gateway_s_sessions() {
    use switchboard_bus::proto::{api, to_body};
    trace_init();
    let broker = TestBroker::start();
    let listener = client(&broker.endpoint, "t-listener", None).await;
    let mut close = listener.subscribe(api::SESSION_CLOSE).await.unwrap();
    let mut lost = listener.subscribe(api::PEER_LOST).await.unwrap();
    let gateway = client(&broker.endpoint, "receive-7", None).await;
    let impostor = client(&broker.endpoint, "impostor", None).await;
    sync_with_broker(&listener).await;
    let session = |gateway: &str, n: u64| api::Session {
        user: "ada".into(),
        session: api::session_id(gateway, n),
        gateway: gateway.into(),
    };
    // Another gateway's session, claimed as its own or not: refused.
    for forged in [session("receive-7", 1), {
        let mut s = session("receive-7", 2);
        s.gateway = "impostor".into();
        s
    }] {
        impostor
            .publish(api::SESSION_CLOSE, to_body(&forged).unwrap())
            .await
            .unwrap();
    }
    let grant = api::GrantFailed {
        user: "ada".into(),
        session: api::session_id("receive-7", 3),
        service: "chat".into(),
        topics: vec!["chat.room.x".into()],
    };
    impostor
        .publish(api::GRANT_FAILED, to_body(&grant).unwrap())
        .await
        .unwrap();
    let peer = api::PeerLost {
        service: "receive".into(),
        instance: "receive-7".into(),
    };
    impostor
        .publish(api::PEER_LOST, to_body(&peer).unwrap())
        .await
        .unwrap();
    sync_with_broker(&impostor).await;
    assert_eq!(next_topic(&mut close).await, None, "a forged session.close");
    assert_eq!(next_topic(&mut lost).await, None, "a forged bus.peer_lost");
    assert_eq!(broker_stats(&listener).await.events_refused, 4);
    // The gateway itself, about its own session: delivered.
    gateway
        .publish(
            api::SESSION_CLOSE,
            to_body(&session("receive-7", 1)).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        next_topic(&mut close).await.as_deref(),
        Some(api::SESSION_CLOSE)
    );
    // A session event too large to be one is not even decoded.
    let mut huge = session("receive-7", 4);
    huge.user = "u".repeat(70_000);
    gateway
        .publish(api::SESSION_CLOSE, to_body(&huge).unwrap())
        .await
        .unwrap();
    sync_with_broker(&gateway).await;
    assert_eq!(next_topic(&mut close).await, None, "a 70 KB session.close");
    assert_eq!(broker_stats(&listener).await.events_refused, 5);
    // The broker's own bus.peer_lost does not pass this check (it is
    // published directly): faults::* and the chat and loc tests that kill a
    // gateway see it arrive.
}
