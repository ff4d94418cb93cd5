//! Hostile and broken peers: garbage, oversize frames, missing or wrong secrets,
//! stolen identities. The broker counts, drops, disconnects where it must, and
//! keeps serving everyone else.

use bytes::Bytes;
use std::time::Duration;
use switchboard_broker::Settings;
use switchboard_bus::proto::{self, Envelope, ErrorCode, Kind};
use switchboard_bus::CallOptions;
use switchboard_testkit::{
    broker_stats, client, eventually, health, spawn_echo, trace_init, wait_ready, whoami, RawPeer,
    TestBroker,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::READY;

/// A deterministic xorshift generator: reproducible garbage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, max: usize) -> Bytes {
        let len = (self.next() % max as u64) as usize;
        (0..len)
            .map(|_| self.next() as u8)
            .collect::<Vec<u8>>()
            .into()
    }
}

/// Ten kinds of bad message, cycled.
fn garbage(rng: &mut Rng, i: usize) -> Vec<Bytes> {
    let valid = proto::encode(&Envelope::request(
        "echo",
        "echo",
        vec![1, 2, 3],
        proto::now_ms() + 5_000,
    ))
    .unwrap();
    match i % 10 {
        0..=2 => vec![rng.bytes(300)],
        3 => vec![Bytes::new()],
        4 => vec![Bytes::copy_from_slice(
            &valid[..(rng.next() as usize % (valid.len() - 1))],
        )],
        5 => vec![Bytes::from(rmp_like_array())],
        6 => {
            let mut env = Envelope::new(Kind::Request);
            env.v = 0x0200;
            vec![proto::encode(&env).unwrap().into()]
        }
        7 => vec![rng.bytes(20), rng.bytes(20), Bytes::from(valid.clone())],
        8 => vec![Bytes::from_static(b"short"), Bytes::from(valid.clone())],
        _ => {
            // A syntactically valid envelope whose fields break their limits.
            let mut env = Envelope::request("echo", "echo", Vec::new(), 0);
            env.trace = "t".repeat(1000);
            vec![proto::encode(&env).unwrap().into()]
        }
    }
}

/// MessagePack `[1, 2, 3]`: valid MessagePack, not an envelope.
fn rmp_like_array() -> Vec<u8> {
    vec![0x93, 0x01, 0x02, 0x03]
}

#[tokio::test]
async fn ten_thousand_garbage_frames_are_counted_and_routing_goes_on() {
    trace_init();
    let broker = TestBroker::start();
    let _svc = spawn_echo(&broker.endpoint, "echo", "echo-1", None);
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "echo-1", READY).await);

    // Half from a peer that never registered, half from a registered one.
    let mut stranger = RawPeer::connect(&broker.endpoint, None).await.unwrap();
    let mut member = RawPeer::connect(&broker.endpoint, None).await.unwrap();
    member.register("", "member", None).await.unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..5_000 {
        stranger.send_frames(garbage(&mut rng, i)).await.unwrap();
        member.send_frames(garbage(&mut rng, i)).await.unwrap();
        if i % 1000 == 0 {
            // Routing keeps working in the middle of the flood.
            assert_eq!(
                whoami(&bus, "echo", CallOptions::default()).await.unwrap(),
                "echo-1"
            );
        }
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            broker_stats(&bus).await.malformed == 10_000
        })
        .await,
        "malformed counter: {}",
        broker_stats(&bus).await.malformed
    );
    let stats = broker_stats(&bus).await;
    assert_eq!(stats.malformed, 10_000);
    assert_eq!(
        stats.unauthenticated, 0,
        "garbage is counted once, as malformed"
    );
    assert_eq!(
        whoami(&bus, "echo", CallOptions::default()).await.unwrap(),
        "echo-1"
    );
    // The registered peer that sent garbage is still a member.
    let mut env = Envelope::request(
        proto::BROKER_SERVICE,
        "$echo",
        b"still here".to_vec(),
        proto::now_ms() + 5_000,
    );
    env.id = 7;
    member.send_env(&env).await.unwrap();
    let frames = member
        .recv(Duration::from_secs(5))
        .await
        .expect("member still served");
    assert_eq!(&proto::decode(&frames[0]).unwrap().body[..], b"still here");
}

fn tcp_addr(endpoint: &str) -> String {
    endpoint.trim_start_matches("tcp://").to_owned()
}

/// A raw TCP peer that completes the ZMTP 3.0 NULL handshake as a DEALER.
async fn zmtp_handshake(endpoint: &str) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(tcp_addr(endpoint))
        .await
        .unwrap();
    let mut greeting = [0u8; 64];
    greeting[0] = 0xff;
    greeting[9] = 0x7f;
    greeting[10] = 3;
    greeting[12..16].copy_from_slice(b"NULL");
    tcp.write_all(&greeting).await.unwrap();
    let mut ready = vec![0x04, 0];
    ready.push(5);
    ready.extend_from_slice(b"READY");
    ready.push(11);
    ready.extend_from_slice(b"Socket-Type");
    ready.extend_from_slice(&6u32.to_be_bytes());
    ready.extend_from_slice(b"DEALER");
    ready[1] = (ready.len() - 2) as u8;
    tcp.write_all(&ready).await.unwrap();
    tcp
}

/// Reads until the broker closes the connection; false if it is still open after 5 s.
async fn closed_by_peer(tcp: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(until, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn one_tib_frame_header_disconnects_peer_and_broker_keeps_serving() {
    trace_init();
    let broker = TestBroker::start();
    let _svc = spawn_echo(&broker.endpoint, "echo", "echo-1", None);
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "echo-1", READY).await);

    let mut tcp = zmtp_handshake(&broker.endpoint).await;
    let mut header = vec![0x02];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    tcp.write_all(&header).await.unwrap();
    assert!(
        closed_by_peer(&mut tcp).await,
        "the broker closes a peer that announces 1 TiB"
    );
    for _ in 0..5 {
        assert_eq!(
            whoami(&bus, "echo", CallOptions::default()).await.unwrap(),
            "echo-1"
        );
    }
}

#[tokio::test]
async fn oversize_multipart_message_disconnects_peer() {
    trace_init();
    let broker = TestBroker::with(Settings {
        max_message_bytes: 64 * 1024,
        ..Settings::default()
    });
    let _svc = spawn_echo(&broker.endpoint, "echo", "echo-1", None);
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "echo-1", READY).await);

    // Twenty 8 KiB frames with the MORE flag: each under the cap, the message over it.
    let mut tcp = zmtp_handshake(&broker.endpoint).await;
    let mut frame = vec![0x03];
    frame.extend_from_slice(&(8u64 * 1024).to_be_bytes());
    frame.extend_from_slice(&[0u8; 8 * 1024]);
    for _ in 0..20 {
        if tcp.write_all(&frame).await.is_err() {
            break;
        }
    }
    assert!(
        closed_by_peer(&mut tcp).await,
        "the broker closes a peer whose message outgrows the cap"
    );
    assert_eq!(
        whoami(&bus, "echo", CallOptions::default()).await.unwrap(),
        "echo-1"
    );

    // One over-long envelope from a real client: the client knows the broker's
    // cap (from its welcome) and refuses it at once with `too_large`; nothing
    // is sent, and the client stays connected.
    let big = client(&broker.endpoint, "t-big", None).await;
    let err = big
        .call(
            "echo",
            "echo",
            vec![0u8; 100 * 1024],
            CallOptions {
                timeout: Some(Duration::from_secs(2)),
                ..CallOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLarge, "{err}");
    assert_eq!(
        whoami(&big, "echo", CallOptions::default()).await.unwrap(),
        "echo-1"
    );
    assert_eq!(
        big.stats()
            .registrations
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        whoami(&bus, "echo", CallOptions::default()).await.unwrap(),
        "echo-1"
    );
}

const SECRET: &str = "correct horse battery staple";

#[tokio::test]
async fn without_the_secret_a_peer_can_neither_register_nor_reach_a_service() {
    trace_init();
    let broker = TestBroker::with(Settings {
        secret: Some(SECRET.into()),
        ..Settings::default()
    });
    let _svc = spawn_echo(&broker.endpoint, "echo", "echo-1", Some(SECRET));
    let bus = client(&broker.endpoint, "t-client", Some(SECRET)).await;
    assert!(wait_ready(&bus, "echo-1", READY).await);
    assert_eq!(
        whoami(&bus, "echo", CallOptions::default()).await.unwrap(),
        "echo-1"
    );

    // No secret: the bus client never registers.
    let conn = switchboard_bus::connect(switchboard_bus::Config {
        broker: broker.endpoint.clone(),
        instance: "no-secret".into(),
        ..switchboard_bus::Config::default()
    })
    .unwrap();
    assert!(conn
        .handle
        .wait_connected(Duration::from_millis(1_500))
        .await
        .is_err());
    let err = conn
        .handle
        .call(
            "echo",
            "whoami",
            Vec::new(),
            CallOptions {
                timeout: Some(Duration::from_millis(300)),
                ..CallOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");

    // Wrong secret: refused, counted.
    let mut wrong = RawPeer::connect(&broker.endpoint, None).await.unwrap();
    let refused = wrong
        .register("echo", "impostor", Some("guess"))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("unauthorized"), "{refused}");

    // A service with the wrong secret never takes requests.
    let _impostor = spawn_echo(&broker.endpoint, "echo", "impostor-svc", Some("guess"));

    // Skipping hello: requests are dropped and counted, never delivered.
    let mut sneaky = RawPeer::connect(&broker.endpoint, None).await.unwrap();
    let mut env = Envelope::request("echo", "whoami", Vec::new(), proto::now_ms() + 5_000);
    env.id = 1;
    sneaky.send_env(&env).await.unwrap();
    let answer = sneaky.recv(Duration::from_millis(500)).await;
    let answer = answer.map(|f| proto::decode(f.last().unwrap()).unwrap());
    assert!(
        answer.as_ref().is_none_or(|e| e.kind == Kind::Bye),
        "only a bye, never a reply: {answer:?}"
    );

    assert!(
        eventually(Duration::from_secs(5), || async {
            let s = broker_stats(&bus).await;
            // The raw peer's wrong proof is counted; the service with the
            // wrong secret gives up before proving (the broker's own proof
            // does not check out with its secret), so it never reaches one.
            s.auth_failures >= 1 && s.unauthenticated >= 1
        })
        .await
    );
    let ls = switchboard_testkit::broker_ls(&bus).await;
    assert!(
        ls.iter().all(|i| i.instance != "impostor"
            && i.instance != "impostor-svc"
            && i.instance != "no-secret"),
        "{ls:?}"
    );
    for _ in 0..20 {
        assert_eq!(
            whoami(&bus, "echo", CallOptions::default()).await.unwrap(),
            "echo-1"
        );
    }
    let health = health(&bus, "echo").await;
    assert_eq!(
        health.handled, 21,
        "only our own requests reached the service (20 + 1 whoami)"
    );
}

#[tokio::test]
async fn duplicate_identity_cannot_steal_a_peer() {
    trace_init();
    let broker = TestBroker::start();
    let mut first = RawPeer::connect(&broker.endpoint, Some("same-identity"))
        .await
        .unwrap();
    first.register("", "first", None).await.unwrap();
    // The second connection claims the same ZeroMQ identity.
    let second = RawPeer::connect(&broker.endpoint, Some("same-identity")).await;
    if let Ok(mut second) = second {
        let mut hello = Envelope::new(Kind::Hello);
        hello.body = proto::ByteBuf::from(
            proto::to_body(&proto::Hello {
                instance: "second".into(),
                ..Default::default()
            })
            .unwrap(),
        );
        let _ = second.send_env(&hello).await;
        assert!(
            second.recv(Duration::from_millis(500)).await.is_none(),
            "the impostor gets nothing"
        );
    }
    let mut env = Envelope::request(
        proto::BROKER_SERVICE,
        "$echo",
        b"mine".to_vec(),
        proto::now_ms() + 5_000,
    );
    env.id = 1;
    first.send_env(&env).await.unwrap();
    let frames = first
        .recv(Duration::from_secs(5))
        .await
        .expect("the first peer keeps its traffic");
    assert_eq!(&proto::decode(&frames[0]).unwrap().body[..], b"mine");
}
