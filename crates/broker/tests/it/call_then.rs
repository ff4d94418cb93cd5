//! `Handle::call_then`: the outcome handed to a callback instead of awaited.
//! Whichever way a request ends, the callback runs, and runs once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_broker::Settings;
use switchboard_bus::proto::{Envelope, ErrorCode};
use switchboard_bus::{CallOptions, Error, Handle};
use switchboard_testkit::{client, spawn_echo, trace_init, wait_ready, TestBroker};
use tokio::sync::mpsc;

use crate::{timeout, READY};

/// Calls through `call_then`; the outcomes arrive on the receiver, and the
/// counter says how many times the callback ran.
async fn call_then(
    bus: &Handle,
    service: &str,
    op: &str,
    body: Vec<u8>,
    options: CallOptions,
) -> (
    mpsc::UnboundedReceiver<Result<Envelope, Error>>,
    Arc<AtomicUsize>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    bus.call_then(service, op, body, options, move |result| {
        counted.fetch_add(1, Ordering::SeqCst);
        let _ = tx.send(result);
    });
    (rx, runs)
}

/// The one outcome, within `within`; then no second one.
async fn one_outcome(
    mut rx: mpsc::UnboundedReceiver<Result<Envelope, Error>>,
    runs: &AtomicUsize,
    within: Duration,
) -> Result<Envelope, Error> {
    let outcome = tokio::time::timeout(within, rx.recv())
        .await
        .expect("an outcome in time")
        .expect("the callback ran");
    // The callback owned the sender: it is gone once it ran.
    assert!(rx.recv().await.is_none(), "a second outcome");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    outcome
}

#[tokio::test]
async fn a_reply_reaches_the_callback_once() {
    trace_init();
    let broker = TestBroker::start();
    let _svc = spawn_echo(&broker.endpoint, "echo", "echo-1", None);
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "echo-1", READY).await);
    for i in 0..100u32 {
        let body = i.to_be_bytes().to_vec();
        let (rx, runs) =
            call_then(&bus, "echo", "$echo", body.clone(), CallOptions::default()).await;
        let reply = one_outcome(rx, &runs, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(&reply.body[..], &body[..]);
    }
    // A service's error reply is an error.
    let (rx, runs) = call_then(&bus, "echo", "nope", Vec::new(), CallOptions::default()).await;
    let err = one_outcome(rx, &runs, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownOp, "{err}");
}

#[tokio::test]
async fn a_request_that_ends_unanswered_reaches_the_callback_once() {
    trace_init();
    let broker = TestBroker::with(Settings {
        services: vec!["nobody".into()],
        ..Settings::default()
    });
    let bus = client(&broker.endpoint, "t-client", None).await;

    // Held by the broker until its deadline.
    let started = Instant::now();
    let (rx, runs) = call_then(&bus, "nobody", "x", Vec::new(), timeout(300)).await;
    let err = one_outcome(rx, &runs, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(280),
        "{:?}",
        started.elapsed()
    );

    // Refused before it is sent: over the bus limit.
    let (rx, runs) = call_then(&bus, "nobody", "x", vec![0; 64 << 20], timeout(5_000)).await;
    let err = one_outcome(rx, &runs, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLarge, "{err}");

    // In flight when the client closes: the socket task drops it, and the
    // callback hears `unavailable` at once rather than never.
    let (rx, runs) = call_then(&bus, "nobody", "x", Vec::new(), timeout(30_000)).await;
    bus.close(Duration::from_secs(5)).await;
    let err = one_outcome(rx, &runs, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");

    // Made after the close: never sent, answered all the same.
    let (rx, runs) = call_then(&bus, "nobody", "x", Vec::new(), timeout(30_000)).await;
    let err = one_outcome(rx, &runs, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
}

#[tokio::test]
async fn a_callback_that_panics_leaves_the_bus_serving() {
    trace_init();
    let broker = TestBroker::start();
    let _svc = spawn_echo(&broker.endpoint, "echo", "echo-1", None);
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "echo-1", READY).await);
    bus.call_then(
        "echo",
        "$echo",
        b"x".to_vec(),
        CallOptions::default(),
        |_| {
            panic!("a callback's bug");
        },
    );
    // The panic ran on the socket task; the next calls are served all the same.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let reply = bus
            .call("echo", "$echo", b"y".to_vec(), CallOptions::default())
            .await
            .expect("the bus still serves");
        assert_eq!(&reply.body[..], b"y");
    }
}
