//! Hand-overs: a late reply after the deadline, a drain that finishes its work,
//! and a successor that takes over an instance name during a reload.

use std::time::Duration;
use switchboard_bus::proto::{self, ErrorCode, PeerState};
use switchboard_bus::CallOptions;
use switchboard_testkit::{
    broker_ls, broker_stats, client, eventually, health, sleep_in_flight, spawn_echo, trace_init,
    wait_ready, whoami, RawPeer, TestBroker,
};

use crate::{timeout, READY};

#[tokio::test]
async fn late_reply_is_dropped_and_counted_never_delivered_twice() {
    trace_init();
    let broker = TestBroker::start();
    // A hand-driven worker that answers after the deadline (a well-behaved service
    // gives up at the deadline itself).
    let mut worker = RawPeer::connect(&broker.endpoint, None).await.unwrap();
    worker
        .register("slowpoke", "slowpoke-1", None)
        .await
        .unwrap();
    worker
        .send_env(&proto::Envelope::new(proto::Kind::Ready))
        .await
        .unwrap();
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "slowpoke-1", READY).await);

    let caller = bus.clone();
    let call =
        tokio::spawn(async move { caller.call("slowpoke", "x", Vec::new(), timeout(200)).await });
    let frames = worker
        .recv(Duration::from_secs(5))
        .await
        .expect("request reaches the worker");
    assert_eq!(frames.len(), 2, "route token + request");
    let request = proto::decode(&frames[1]).unwrap();
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code, ErrorCode::Timeout, "{err}");

    // Now the reply, twice: both are late, both dropped and counted.
    let reply = proto::encode(&proto::Envelope::reply_to(
        request.id,
        &request.trace,
        b"late".to_vec(),
    ))
    .unwrap();
    for _ in 0..2 {
        worker
            .send_frames(vec![frames[0].clone(), reply.clone().into()])
            .await
            .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            broker_stats(&bus).await.late_replies == 2
        })
        .await,
        "late replies counted"
    );
    // The client is still healthy and in sync: a fresh request gets its own answer.
    let caller = bus.clone();
    let call = tokio::spawn(async move {
        caller
            .call("slowpoke", "y", Vec::new(), timeout(5_000))
            .await
    });
    let frames = worker
        .recv(Duration::from_secs(5))
        .await
        .expect("second request");
    let request = proto::decode(&frames[1]).unwrap();
    assert_eq!(request.op, "y");
    let reply = proto::encode(&proto::Envelope::reply_to(
        request.id,
        &request.trace,
        b"on time".to_vec(),
    ))
    .unwrap();
    worker
        .send_frames(vec![frames[0].clone(), reply.into()])
        .await
        .unwrap();
    assert_eq!(&call.await.unwrap().unwrap().body[..], b"on time");
}

#[tokio::test]
async fn drain_finishes_in_flight_work_and_takes_no_new_requests() {
    trace_init();
    let broker = TestBroker::start();
    let a = spawn_echo(&broker.endpoint, "echo", "echo-a", None);
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "echo-a", READY).await);
    let slow = sleep_in_flight(&bus, "echo", 500, CallOptions::default()).await;
    let _b = spawn_echo(&broker.endpoint, "echo", "echo-b", None);
    assert!(wait_ready(&bus, "echo-b", READY).await);
    let stopping = tokio::spawn(a.stop());
    assert!(
        eventually(READY, || async {
            broker_ls(&bus)
                .await
                .iter()
                .any(|i| i.instance == "echo-a" && i.state == PeerState::Draining)
        })
        .await
    );
    for _ in 0..10 {
        assert_eq!(
            whoami(&bus, "echo", CallOptions::default()).await.unwrap(),
            "echo-b"
        );
    }
    let slept = slow
        .await
        .unwrap()
        .expect("in-flight request finished during the drain");
    assert!(slept.error.is_none());
    stopping.await.unwrap();
    assert!(
        eventually(READY, || async {
            broker_ls(&bus).await.iter().all(|i| i.instance != "echo-a")
        })
        .await
    );
    assert_eq!(
        broker_stats(&bus).await.peers_lost,
        0,
        "a drained instance leaves, it is not lost"
    );
}

#[tokio::test]
async fn a_successor_takes_over_while_the_old_process_finishes_its_work() {
    trace_init();
    let broker = TestBroker::start();
    let old = spawn_echo(&broker.endpoint, "echo", "echo-1", None);
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "echo-1", READY).await);
    let slow = sleep_in_flight(&bus, "echo", 600, CallOptions::default()).await;
    // The new process registers under the same name as a successor.
    let config = switchboard_bus::Config {
        broker: broker.endpoint.clone(),
        instance: "echo-1".into(),
        successor: true,
        ..switchboard_bus::Config::default()
    };
    let _new = switchboard_testkit::spawn_echo_with("echo", config);
    assert!(
        eventually(READY, || async {
            let ls = broker_ls(&bus).await;
            ls.iter()
                .any(|i| i.instance == "echo-1" && i.state == PeerState::Draining)
                && ls
                    .iter()
                    .any(|i| i.instance == "echo-1" && i.state == PeerState::Ready)
        })
        .await
    );
    // New work goes to the successor; the old one finishes, then leaves by itself.
    for _ in 0..5 {
        let health = health(&bus, "echo").await;
        assert_eq!(
            health.inflight, 0,
            "the successor answers, not the busy old process"
        );
    }
    let reply = slow
        .await
        .unwrap()
        .expect("in-flight request finished on the old process");
    assert!(reply.error.is_none());
    assert!(
        eventually(READY, || async {
            broker_ls(&bus)
                .await
                .iter()
                .filter(|i| i.instance == "echo-1")
                .count()
                == 1
        })
        .await
    );
    old.stop().await;
    let stats = broker_stats(&bus).await;
    assert_eq!((stats.peers_lost, stats.errors), (0, 0), "{stats:?}");
}
