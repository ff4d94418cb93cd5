//! Liveness with real processes and real signals: a worker killed mid-request, a
//! worker stopped while flooded, the broker itself killed and restarted.

use std::time::{Duration, Instant};
use switchboard_bus::proto::ErrorCode;
use switchboard_bus::CallOptions;
use switchboard_testkit::{
    broker_ls, broker_stats, client, eventually, sleep_in_flight, spawn_echo, spawn_echo_process,
    trace_init, wait_ready, whoami, Child, Sig, TestBroker,
};

use crate::{timeout, READY};

#[tokio::test]
async fn sigkill_mid_request_gives_worker_lost_within_a_heartbeat_window() {
    trace_init();
    let broker = TestBroker::start();
    let worker = spawn_echo_process(&broker.endpoint, "echo", "victim", &[]).unwrap();
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "victim", READY).await);

    let call = sleep_in_flight(&bus, "echo", 20_000, timeout(30_000)).await;
    let killed = Instant::now();
    worker.signal(Sig::SIGKILL).unwrap();
    let err = call.await.unwrap().unwrap_err();
    let waited = killed.elapsed();
    assert_eq!(err.code, ErrorCode::WorkerLost, "{err}");
    assert!(err.message.contains("victim"), "{err}");
    // Heartbeat window: 1 s x 3. The connection close makes it much faster.
    assert!(
        waited < Duration::from_secs(3),
        "worker_lost after {waited:?}"
    );
    assert_eq!(broker_stats(&bus).await.peers_lost, 1);
}

#[tokio::test]
async fn idempotent_request_is_retried_on_another_instance_when_its_worker_dies() {
    trace_init();
    let broker = TestBroker::start();
    let a = spawn_echo_process(&broker.endpoint, "echo", "idem-a", &[]).unwrap();
    let b = spawn_echo_process(&broker.endpoint, "echo", "idem-b", &[]).unwrap();
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "idem-a", READY).await && wait_ready(&bus, "idem-b", READY).await);
    let options = CallOptions {
        idem: true,
        ..timeout(10_000)
    };
    let call = sleep_in_flight(&bus, "echo", 500, options).await;
    let busy = broker_ls(&bus)
        .await
        .into_iter()
        .find(|i| i.inflight == 1)
        .unwrap()
        .instance;
    let victim = if busy == "idem-a" { &a } else { &b };
    victim.signal(Sig::SIGKILL).unwrap();
    let reply = call
        .await
        .unwrap()
        .expect("retried on the surviving instance");
    assert!(reply.error.is_none());
    assert_eq!(broker_stats(&bus).await.retried, 1);
}

#[tokio::test]
async fn a_stopped_worker_is_declared_dead_by_heartbeats() {
    trace_init();
    let broker = TestBroker::start();
    let worker = spawn_echo_process(&broker.endpoint, "echo", "sleeper", &[]).unwrap();
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "sleeper", READY).await);
    let call = sleep_in_flight(&bus, "echo", 100, timeout(20_000)).await;
    // Hung, PID alive, connection open: only heartbeats can tell.
    worker.signal(Sig::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code, ErrorCode::WorkerLost, "{err}");
    let waited = stopped.elapsed();
    assert!(
        waited >= Duration::from_millis(2_000) && waited < Duration::from_millis(5_500),
        "declared dead after {waited:?}"
    );
    // Woken up, it is told to register again and serves once more.
    worker.signal(Sig::SIGCONT).unwrap();
    assert!(
        wait_ready(&bus, "sleeper", READY).await,
        "the instance re-registers after SIGCONT"
    );
    assert_eq!(
        whoami(&bus, "echo", CallOptions::default()).await.unwrap(),
        "sleeper"
    );
}

#[tokio::test]
async fn sigstopped_flooded_worker_does_not_stall_another_service() {
    trace_init();
    let broker = TestBroker::start();
    let slow =
        spawn_echo_process(&broker.endpoint, "slow", "slow-1", &["--concurrency", "64"]).unwrap();
    let _fast = spawn_echo(&broker.endpoint, "fast", "fast-1", None);
    let flooder = client(&broker.endpoint, "t-flooder", None).await;
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "slow-1", READY).await && wait_ready(&bus, "fast-1", READY).await);

    slow.signal(Sig::SIGSTOP).unwrap();
    // Flood the stopped worker: 64 go to it (its credit), the rest are held, and
    // past the per-client cap the flooder is told `overloaded` at once.
    let flood: Vec<_> = (0..12_000)
        .map(|_| {
            let f = flooder.clone();
            tokio::spawn(async move {
                f.call("slow", "echo", vec![0u8; 100], timeout(20_000))
                    .await
            })
        })
        .collect();
    assert!(
        eventually(READY, || async { broker_stats(&bus).await.held >= 9_000 }).await,
        "flood is held"
    );

    // Meanwhile every request to the healthy service is answered, quickly.
    let mut worst = Duration::ZERO;
    for i in 0..300 {
        let started = Instant::now();
        let reply = bus
            .call("fast", "echo", vec![i as u8; 100], timeout(2_000))
            .await;
        worst = worst.max(started.elapsed());
        assert!(
            reply.is_ok(),
            "request {i} to the healthy service: {reply:?}"
        );
    }
    assert!(
        worst < Duration::from_secs(1),
        "worst latency to the healthy service {worst:?} (deadline 2 s)"
    );
    assert_eq!(
        process_state(slow.pid()),
        'T',
        "the flooded worker stayed stopped throughout"
    );

    slow.signal(Sig::SIGCONT).unwrap();
    let mut ok = 0;
    let mut overloaded = 0;
    let mut other = Vec::new();
    for call in flood {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if e.code == ErrorCode::Overloaded => overloaded += 1,
            Err(e) => other.push(e.code),
        }
    }
    // Every flood request got an answer: served, refused at once, or lost with
    // the (stopped, so declared dead) worker.
    assert_eq!(ok + overloaded + other.len(), 12_000);
    assert!(
        overloaded >= 1_900,
        "past the 10,000 per-client cap: overloaded {overloaded}"
    );
    assert!(
        other.iter().all(|c| *c == ErrorCode::WorkerLost),
        "{other:?}"
    );
}

/// The one-letter state of a process from /proc (`T` = stopped).
fn process_state(pid: u32) -> char {
    switchboard_bus::svc::procinfo::state(pid)
}

#[tokio::test]
async fn broker_restart_needs_no_service_restart() {
    trace_init();
    let broker = Child::broker("tcp://127.0.0.1:0", &["--heartbeat-ms", "500"]).unwrap();
    let endpoint = broker.first_line.clone().unwrap();
    let _worker = spawn_echo_process(&endpoint, "echo", "survivor", &[]).unwrap();
    let bus = client(&endpoint, "t-client", None).await;
    let mut sub = bus.subscribe("news.>").await.unwrap();
    assert!(wait_ready(&bus, "survivor", READY).await);
    assert_eq!(
        whoami(&bus, "echo", CallOptions::default()).await.unwrap(),
        "survivor"
    );

    // A request in flight when the broker dies is answered at once.
    let inflight = sleep_in_flight(&bus, "echo", 5_000, timeout(20_000)).await;
    broker.signal(Sig::SIGKILL).unwrap();
    let died = Instant::now();
    drop(broker);
    let err = inflight.await.unwrap().unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    assert!(
        died.elapsed() < Duration::from_secs(2),
        "answered {:?} after the broker died",
        died.elapsed()
    );

    let _broker = Child::broker(&endpoint, &["--heartbeat-ms", "500"]).unwrap();
    let restarted = Instant::now();
    // Same client, same service processes: both re-register by themselves.
    assert!(
        eventually(Duration::from_secs(10), || async {
            whoami(&bus, "echo", timeout(500))
                .await
                .is_ok_and(|w| w == "survivor")
        })
        .await,
        "service reachable again after the broker restart"
    );
    assert!(
        restarted.elapsed() < Duration::from_secs(5),
        "reachable after {:?}",
        restarted.elapsed()
    );
    // Subscriptions were restored too.
    bus.publish("news.today", b"back".to_vec()).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&event.body[..], b"back");
}

/// A whole host paused (a VM suspended, every process starved): the broker and
/// the service stop together and resume together. Neither may count its own
/// stall as the other's silence: the service keeps its registration.
#[tokio::test]
async fn a_stall_of_broker_and_service_together_declares_nobody_dead() {
    trace_init();
    let broker = Child::broker("tcp://127.0.0.1:0", &["--heartbeat-ms", "200"]).unwrap();
    let endpoint = broker.first_line.clone().unwrap();
    let worker = spawn_echo_process(&endpoint, "echo", "sleeper", &[]).unwrap();
    {
        let bus = client(&endpoint, "t-before", None).await;
        assert!(wait_ready(&bus, "sleeper", READY).await);
        bus.close(Duration::from_millis(100)).await;
    }
    // Both stopped for 2 s: more than three times the liveness window (600 ms).
    broker.signal(Sig::SIGSTOP).unwrap();
    worker.signal(Sig::SIGSTOP).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.signal(Sig::SIGCONT).unwrap();
    worker.signal(Sig::SIGCONT).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;

    let bus = client(&endpoint, "t-after", None).await;
    assert_eq!(
        whoami(&bus, "echo", timeout(2_000)).await.unwrap(),
        "sleeper"
    );
    let stats = broker_stats(&bus).await;
    let ls = broker_ls(&bus).await;
    let sleeper = ls.iter().find(|i| i.instance == "sleeper").unwrap();
    assert!(
        sleeper.age_ms >= 2_000,
        "the registration survived the stall (age {} ms; {stats:?})",
        sleeper.age_ms
    );
    assert_eq!(stats.peers_lost, 0, "nobody declared dead: {stats:?}");
}
