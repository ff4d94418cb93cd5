//! What the broker trusts and what it bounds: replies only from the instance a
//! request went to, caps on services, subscriptions and deadlines, and no open bus
//! on a public address without a secret.

use std::time::Duration;
use switchboard_broker::Settings;
use switchboard_bus::proto::{self, ErrorCode};
use switchboard_bus::CallOptions;
use switchboard_testkit::{
    broker_stats, client, eventually, trace_init, wait_ready, Child, RawPeer, TestBroker,
};

use crate::{timeout, READY};

/// A hand-driven worker for `service`, registered and ready.
async fn raw_worker(endpoint: &str, service: &str, instance: &str) -> RawPeer {
    let mut worker = RawPeer::connect(endpoint, None).await.unwrap();
    worker.register(service, instance, None).await.unwrap();
    worker
        .send_env(&proto::Envelope::new(proto::Kind::Ready))
        .await
        .unwrap();
    worker
}

#[tokio::test]
async fn a_rogue_peer_cannot_answer_another_callers_request() {
    trace_init();
    let broker = TestBroker::start();
    let mut worker = raw_worker(&broker.endpoint, "vault", "vault-1").await;
    // The rogue is a full, registered bus peer of its own service.
    let mut rogue = raw_worker(&broker.endpoint, "other", "rogue-1").await;
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "vault-1", READY).await);
    assert!(wait_ready(&bus, "rogue-1", READY).await);

    let caller = bus.clone();
    let call = tokio::spawn(async move {
        caller
            .call("vault", "get", Vec::new(), timeout(5_000))
            .await
    });
    let frames = worker.recv(Duration::from_secs(5)).await.expect("request");
    let request = proto::decode(&frames[1]).unwrap();

    // The rogue answers first with the right route token (tokens are easy to
    // guess) and the right id, then the worker itself with a wrong id.
    let reply = |id: u64, body: &[u8]| {
        let env = proto::Envelope::reply_to(id, &request.trace, body.to_vec());
        vec![frames[0].clone(), proto::encode(&env).unwrap().into()]
    };
    rogue
        .send_frames(reply(request.id, b"forged"))
        .await
        .unwrap();
    worker
        .send_frames(reply(request.id + 1, b"wrong id"))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            broker_stats(&bus).await.rogue_replies == 2
        })
        .await,
        "both counted as rogue"
    );
    // The real answer still gets through, and only it.
    worker
        .send_frames(reply(request.id, b"genuine"))
        .await
        .unwrap();
    assert_eq!(&call.await.unwrap().unwrap().body[..], b"genuine");
}

#[tokio::test]
async fn subscriptions_past_the_per_peer_cap_are_refused_and_counted() {
    trace_init();
    let broker = TestBroker::with(Settings {
        max_subs_per_peer: 100,
        ..Settings::default()
    });
    let mut peer = RawPeer::connect(&broker.endpoint, None).await.unwrap();
    peer.register("", "subscriber", None).await.unwrap();
    for i in 0..10_000 {
        let mut env = proto::Envelope::new(proto::Kind::Subscribe);
        env.to = format!("t.{i}.>");
        peer.send_env(&env).await.unwrap();
    }
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            broker_stats(&bus).await.subs_refused == 9_900
        })
        .await,
        "9,900 refused: {:?}",
        broker_stats(&bus).await
    );
    // The ones within the cap work: an event on t.5.x reaches the peer, after
    // an answer for each refused one (`overloaded`, naming its pattern).
    bus.publish("t.5.x", b"hi".to_vec()).await.unwrap();
    let mut refusals = 0;
    loop {
        let frames = peer.recv(Duration::from_secs(5)).await.expect("a frame");
        let env = proto::decode(&frames[0]).unwrap();
        if env.kind == proto::Kind::Subscribe {
            let error = env
                .error
                .expect("only refusals are answered (no id was sent)");
            assert_eq!(error.code, proto::ErrorCode::Overloaded);
            assert!(env.to.starts_with("t."), "{}", env.to);
            refusals += 1;
            continue;
        }
        assert_eq!(&env.body[..], b"hi");
        break;
    }
    assert_eq!(refusals, 9_900);
}

#[tokio::test]
async fn a_subscription_with_an_id_is_answered() {
    trace_init();
    let broker = TestBroker::with(Settings {
        max_subs_per_peer: 1,
        ..Settings::default()
    });
    let mut peer = RawPeer::connect(&broker.endpoint, None).await.unwrap();
    peer.register("", "subscriber", None).await.unwrap();
    for (id, pattern) in [(7, "a.>"), (8, "a.>"), (9, "b.>"), (10, "a..b")] {
        let mut env = proto::Envelope::new(proto::Kind::Subscribe);
        env.to = pattern.into();
        env.id = id;
        peer.send_env(&env).await.unwrap();
    }
    let mut answers = Vec::new();
    for _ in 0..4 {
        let frames = peer.recv(Duration::from_secs(5)).await.expect("an answer");
        let env = proto::decode(&frames[0]).unwrap();
        assert_eq!(env.kind, proto::Kind::Subscribe);
        answers.push((env.id, env.to, env.op, env.error.map(|e| e.code)));
    }
    assert_eq!(
        answers,
        vec![
            (7, "a.>".into(), "ack".into(), None),
            (8, "a.>".into(), "ack".into(), None),
            (
                9,
                "b.>".into(),
                String::new(),
                Some(proto::ErrorCode::Overloaded)
            ),
            (
                10,
                "a..b".into(),
                String::new(),
                Some(proto::ErrorCode::BadRequest)
            ),
        ]
    );
}

#[tokio::test]
async fn new_service_names_past_the_cap_are_refused() {
    trace_init();
    let broker = TestBroker::with(Settings {
        max_services: 3,
        services: vec!["declared".into()],
        ..Settings::default()
    });
    let mut accepted = 0;
    let mut refused = 0;
    let mut peers = Vec::new();
    for i in 0..50 {
        let mut peer = RawPeer::connect(&broker.endpoint, None).await.unwrap();
        match peer
            .register(&format!("svc{i}"), &format!("svc{i}-1"), None)
            .await
        {
            Ok(_) => accepted += 1,
            Err(e) => {
                assert!(e.to_string().contains("overloaded"), "{e}");
                refused += 1;
            }
        }
        peers.push(peer);
    }
    assert_eq!(
        (accepted, refused),
        (2, 48),
        "declared + 2 new = the cap of 3"
    );
    // An existing service still takes new instances.
    let mut more = RawPeer::connect(&broker.endpoint, None).await.unwrap();
    more.register("svc0", "svc0-2", None).await.unwrap();
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert_eq!(broker_stats(&bus).await.services_refused, 48);
}

#[tokio::test]
async fn a_far_future_deadline_is_cut_to_the_cap() {
    trace_init();
    let broker = TestBroker::with(Settings {
        max_deadline_ms: 300,
        services: vec!["absent".into()],
        ..Settings::default()
    });
    let bus = client(&broker.endpoint, "t-client", None).await;
    let options = CallOptions {
        deadline: Some(proto::now_ms() + 3_600_000),
        ..CallOptions::default()
    };
    // Held for a service that never comes, and also pinned to an instance that
    // never comes: both end at the cap, not in an hour.
    let pinned = CallOptions {
        instance: Some("ghost-1".into()),
        ..options.clone()
    };
    let held = tokio::time::timeout(
        Duration::from_secs(10),
        bus.call("absent", "x", Vec::new(), options),
    );
    let err = held.await.expect("answered by the cap").unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        bus.call("absent", "x", Vec::new(), pinned),
    )
    .await
    .expect("answered by the cap")
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    assert_eq!(broker_stats(&bus).await.deadlines_capped, 2);
}

#[test]
fn a_public_bind_without_a_secret_is_refused_even_insecure() {
    let mut open = Child::spawn("broker", &["--bind", "tcp://0.0.0.0:0"], &[]).unwrap();
    let status = open.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(64), "usage error");
    let secured = Child::broker("tcp://0.0.0.0:0", &["--secret", "s3cret"]).unwrap();
    assert!(secured.first_line.is_some());
    // --insecure is for a loopback (or ipc://) bus only.
    let mut insecure =
        Child::spawn("broker", &["--bind", "tcp://0.0.0.0:0", "--insecure"], &[]).unwrap();
    let status = insecure.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(64), "--insecure on a public address");
}

/// The other side of the same rule: a peer refuses to join a bus on another
/// host without the secret (every hop authenticated), unless told it is
/// insecure; on this host it needs none.
#[tokio::test]
async fn a_peer_refuses_a_remote_broker_without_a_secret() {
    let remote = |secret: Option<&str>, insecure: bool| {
        switchboard_bus::connect(switchboard_bus::Config {
            broker: "tcp://192.0.2.10:5555".into(),
            secret: secret.map(str::to_owned),
            insecure,
            ..switchboard_bus::Config::default()
        })
        .map(|_| ())
    };
    let err = remote(None, false).unwrap_err();
    assert_eq!(err.code, ErrorCode::BadRequest);
    assert!(err.message.contains("SB_SECRET"), "{err:?}");
    assert!(remote(Some(""), false).is_err(), "an empty secret is none");
    assert!(remote(Some("s3cret"), false).is_ok());
    assert!(remote(None, true).is_ok());
    // A real service binary says so and exits 64.
    let mut echo = Child::spawn(
        "echo",
        &["--broker", "tcp://192.0.2.10:5555"],
        &[("SB_SECRET", ""), ("SB_INSECURE", "0")],
    )
    .unwrap();
    let status = echo.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(64));
}

/// A second process that registers under a live instance's name (a copy
/// started by hand, a second main) is refused; the first keeps its name and
/// its requests. Taking the name over made the two knock each other off the
/// broker every heartbeat.
#[tokio::test]
async fn a_live_instance_name_is_not_taken_by_another_process() {
    trace_init();
    let broker = TestBroker::start();
    let bus = client(&broker.endpoint, "t-client", None).await;
    let _first =
        switchboard_testkit::spawn_echo_process(&broker.endpoint, "echo", "echo-1", &[]).unwrap();
    assert!(switchboard_testkit::wait_ready(&bus, "echo-1", Duration::from_secs(10)).await);
    let _second =
        switchboard_testkit::spawn_echo_process(&broker.endpoint, "echo", "echo-1", &[]).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            broker_stats(&bus).await.names_refused > 0
        })
        .await,
        "the second registration is refused"
    );
    let first_pid = _first.pid();
    for _ in 0..5 {
        let ls = switchboard_testkit::broker_ls(&bus).await;
        let holder = ls.iter().find(|i| i.instance == "echo-1").expect("echo-1");
        assert_eq!(holder.pid, first_pid, "the first keeps its name");
        switchboard_testkit::sync_with_broker(&bus).await;
    }
}

/// The peer's challenge, what an unauthenticated peer controls in the mutual
/// handshake: any length but 32 bytes (none, one, 33, a whole message) is
/// dropped as malformed and answered with nothing; a good one is answered with
/// a proof that checks out over that challenge only.
#[tokio::test]
async fn a_hello_challenge_of_the_wrong_length_gets_nothing() {
    trace_init();
    let secret = "mutual";
    let broker = TestBroker::with(Settings {
        secret: Some(secret.into()),
        ..Settings::default()
    });
    let hello = |challenge: Vec<u8>| {
        let mut env = proto::Envelope::new(proto::Kind::Hello);
        env.body = proto::ByteBuf::from(
            proto::to_body(&proto::Hello {
                instance: "probe".into(),
                challenge: Some(proto::ByteBuf::from(challenge)),
                ..Default::default()
            })
            .unwrap(),
        );
        env
    };
    for len in [0, 1, 31, 33, 512 * 1024] {
        let mut peer = RawPeer::connect(&broker.endpoint, None).await.unwrap();
        peer.send_env(&hello(vec![9; len])).await.unwrap();
        assert!(
            peer.recv(Duration::from_millis(300)).await.is_none(),
            "a {len}-byte challenge is answered"
        );
    }
    let mut peer = RawPeer::connect(&broker.endpoint, None).await.unwrap();
    let challenge = [5u8; proto::auth::NONCE_LEN];
    peer.send_env(&hello(challenge.to_vec())).await.unwrap();
    let frames = peer.recv(Duration::from_secs(5)).await.expect("challenged");
    let welcome: proto::Welcome =
        proto::from_body(&proto::decode(frames.last().unwrap()).unwrap().body).unwrap();
    let (nonce, proof) = (welcome.nonce.unwrap(), welcome.proof.unwrap());
    assert!(proto::auth::verify_broker(
        secret.as_bytes(),
        &challenge,
        &nonce,
        "",
        "probe",
        &proof
    ));
    assert!(!proto::auth::verify_broker(
        secret.as_bytes(),
        &[6u8; proto::auth::NONCE_LEN],
        &nonce,
        "",
        "probe",
        &proof
    ));
    let bus = client(&broker.endpoint, "t-mutual", Some(secret)).await;
    assert!(broker_stats(&bus).await.malformed >= 5);
}

/// A health check pinned to an instance whose credit is all taken (one
/// client's flood) used to wait behind it, so the instance looked hung and
/// main killed it. `$` ops pinned to an instance go past its credit.
#[tokio::test]
async fn a_health_check_is_not_held_behind_a_busy_instances_credit() {
    trace_init();
    let broker = TestBroker::start();
    let config = switchboard_bus::Config {
        broker: broker.endpoint.clone(),
        instance: "busy-1".into(),
        ..switchboard_bus::Config::default()
    };
    // One request at a time: the credit it gives the broker is 1.
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    tokio::spawn(
        switchboard_echo::service("busy")
            .concurrency(1)
            .run(config, stop),
    );
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "busy-1", Duration::from_secs(10)).await);
    let _sleeping = switchboard_testkit::sleep_in_flight(
        &bus,
        "busy",
        5_000,
        switchboard_bus::CallOptions::default(),
    )
    .await;
    let pinned = switchboard_bus::CallOptions {
        instance: Some("busy-1".into()),
        timeout: Some(Duration::from_millis(1_500)),
        ..switchboard_bus::CallOptions::default()
    };
    let health = bus
        .call("busy", "$health", Vec::new(), pinned.clone())
        .await;
    assert!(health.is_ok(), "answered past the credit: {health:?}");
    // Ordinary work still waits for the credit.
    let body = proto::to_body(&std::collections::BTreeMap::from([("ms", 1u64)])).unwrap();
    let held = bus.call("busy", "sleep", body, pinned).await;
    let code = held.unwrap_err().code;
    assert!(
        matches!(
            code,
            proto::ErrorCode::Timeout | proto::ErrorCode::Unavailable
        ),
        "{code:?}"
    );
}
