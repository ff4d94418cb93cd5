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

/// A broker, an echo service on it, and a client that sees it ready.
async fn echo_bus() -> (TestBroker, switchboard_testkit::ServiceGuard, Handle) {
    let broker = TestBroker::start();
    let svc = spawn_echo(&broker.endpoint, "echo", "echo-1", None);
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "echo-1", READY).await);
    (broker, svc, bus)
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
    let (_broker, _svc, bus) = echo_bus().await;
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
    let (_broker, _svc, bus) = echo_bus().await;
    let panicked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ran = panicked.clone();
    bus.call_then(
        "echo",
        "$echo",
        b"x".to_vec(),
        CallOptions::default(),
        move |_| {
            ran.store(true, Ordering::SeqCst);
            panic!("a callback's bug");
        },
    );
    // The panic ran on the socket task; the next calls are served all the same.
    assert!(
        switchboard_testkit::eventually(Duration::from_secs(10), || {
            let ran = panicked.clone();
            async move { ran.load(Ordering::SeqCst) }
        })
        .await,
        "the callback ran"
    );
    for _ in 0..3 {
        let reply = bus
            .call("echo", "$echo", b"y".to_vec(), CallOptions::default())
            .await
            .expect("the bus still serves");
        assert_eq!(&reply.body[..], b"y");
    }
}

/// Counts of outcomes: ok, overloaded, anything else, and callback runs.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    overloaded: AtomicUsize,
    other: AtomicUsize,
    runs: AtomicUsize,
}

impl Tally {
    fn callback(self: &Arc<Self>) -> impl FnOnce(Result<Envelope, Error>) + Send + Sync + 'static {
        let tally = self.clone();
        move |result| {
            tally.runs.fetch_add(1, Ordering::SeqCst);
            let slot = match result {
                Ok(_) => &tally.ok,
                Err(e) if e.code == ErrorCode::Overloaded => &tally.overloaded,
                Err(_) => &tally.other,
            };
            slot.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn settled(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.runs.load(Ordering::SeqCst) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Any late second run would show here.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// More requests at once than the socket task's queue holds (4,096): those
/// past it wait for room on tasks of their own, and each is answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_queue_is_answered_once_each() {
    trace_init();
    let (_broker, _svc, bus) = echo_bus().await;
    let tally = Arc::new(Tally::default());
    let mut floods = Vec::new();
    for _ in 0..4 {
        let (bus, tally) = (bus.clone(), tally.clone());
        floods.push(tokio::spawn(async move {
            for _ in 0..3_000 {
                bus.call_then(
                    "echo",
                    "$echo",
                    b"x".to_vec(),
                    timeout(20_000),
                    tally.callback(),
                );
            }
        }));
    }
    for flood in floods {
        flood.await.unwrap();
    }
    tally.settled(12_000).await;
    assert_eq!(tally.runs.load(Ordering::SeqCst), 12_000);
    assert_eq!(tally.ok.load(Ordering::SeqCst), 12_000);
}

/// From a thread with no runtime, while the socket task cannot run (its
/// runtime's one thread is busy): past the queue there is nothing to wait
/// on, and the rest are answered `overloaded` at once, each once.
#[tokio::test]
async fn past_the_queue_with_no_runtime_the_rest_are_overloaded() {
    trace_init();
    let (_broker, _svc, bus) = echo_bus().await;
    let tally = Arc::new(Tally::default());
    let (flood_bus, flood_tally) = (bus.clone(), tally.clone());
    // Joined without awaiting: this runtime's thread (the socket task's too)
    // is held until the flood is done.
    std::thread::spawn(move || {
        for _ in 0..6_000 {
            flood_bus.call_then(
                "echo",
                "$echo",
                b"x".to_vec(),
                timeout(20_000),
                flood_tally.callback(),
            );
        }
    })
    .join()
    .unwrap();
    let overloaded = tally.overloaded.load(Ordering::SeqCst);
    assert!(overloaded >= 1_000, "overloaded {overloaded}");
    tally.settled(6_000).await;
    assert_eq!(tally.runs.load(Ordering::SeqCst), 6_000);
    assert_eq!(
        tally.ok.load(Ordering::SeqCst) + tally.overloaded.load(Ordering::SeqCst),
        6_000,
        "other: {}",
        tally.other.load(Ordering::SeqCst)
    );
}

/// Where a callback runs is what `has_own_thread` says: on the caller's
/// current_thread runtime, or on `bus-io` when the caller's runtime is a
/// multi_thread one (the gateway with `--threads` > 1 then moves the work off
/// it).
#[test]
fn has_own_thread_says_where_callbacks_run() {
    trace_init();
    let broker = TestBroker::start();
    for multi in [false, true] {
        let rt = if multi {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        .unwrap();
        let endpoint = broker.endpoint.clone();
        let (own, thread) = rt.block_on(async move {
            let _svc = spawn_echo(&endpoint, "echo", "echo-1", None);
            let bus = client(&endpoint, "t-client", None).await;
            assert!(wait_ready(&bus, "echo-1", READY).await);
            let (tx, mut rx) = mpsc::unbounded_channel();
            bus.call_then(
                "echo",
                "$echo",
                Vec::new(),
                CallOptions::default(),
                move |_| {
                    let _ = tx.send(std::thread::current().name().map(str::to_owned));
                },
            );
            let thread = rx.recv().await.unwrap();
            (bus.has_own_thread(), thread)
        });
        assert_eq!(own, multi);
        assert_eq!(thread.as_deref() == Some("bus-io"), multi, "{thread:?}");
    }
}
