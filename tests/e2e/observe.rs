//! Seeing inside: main's `/metrics` (parsed by a Prometheus parser) moves by
//! exactly the requests sent; `/health` and `/ready`; the gateway's `/health`
//! is 503 without a broker; `sbctl trace` lists a `say` from the gateway to the
//! SQL statement in order; the dashboard in a real headless Chromium.

use serde_json::json;
use std::process::Command;
use std::time::Duration;
use switchboard_bus::CallOptions;
use switchboard_testkit::{bin_path, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::System;
use crate::supervisor::{app, Supervised};

/// `GET path` on `addr` (`http://HOST:PORT`): status and body; status 0 when
/// the connection is refused, reset or closed without an answer.
pub async fn get(addr: &str, path: &str) -> (u16, String) {
    let host = addr.trim_start_matches("http://");
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(host).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        Ok::<_, std::io::Error>(text)
    };
    match tokio::time::timeout(Duration::from_secs(10), ask).await {
        Ok(Ok(text)) => status_and_body(&text),
        Ok(Err(_)) => (0, String::new()),
        Err(_) => panic!("GET {path}: no answer within 10 s"),
    }
}

/// An HTTP/1.1 answer read to its end: its status (0 when there is none) and body.
pub fn status_and_body(text: &str) -> (u16, String) {
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text")
}

fn counter(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn metrics_count_exactly_the_requests_sent_and_probes_answer() {
    let s = Supervised::start(&app("alpha", &[], "")).await;
    assert!(s.all_online(1).await);
    let http = s.http();
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(&http, "/ready").await.0 == 200
        })
        .await,
        "ready once every instance is online"
    );
    assert_eq!(get(&http, "/health").await.0, 200);

    let labels = [
        ("sb_instance", "alpha"),
        ("service", "alpha"),
        ("op", "echo"),
        ("code", "ok"),
    ];
    let before = counter(
        &parse(&get(&http, "/metrics").await.1),
        "sb_service_requests_total",
        &labels,
    );
    for _ in 0..7 {
        s.bus
            .call("alpha", "echo", b"\x80".to_vec(), CallOptions::default())
            .await
            .unwrap();
    }
    let (status, text) = get(&http, "/metrics").await;
    assert_eq!(status, 200);
    let scrape = parse(&text);
    assert_eq!(
        counter(&scrape, "sb_service_requests_total", &labels) - before,
        7.0
    );
    // The broker's and main's own are in the same scrape.
    assert!(
        counter(
            &scrape,
            "sb_broker_requests_total",
            &[
                ("sb_instance", "broker"),
                ("service", "alpha"),
                ("outcome", "ok")
            ]
        ) >= 7.0
    );
    assert_eq!(
        counter(
            &scrape,
            "sb_instance_state",
            &[("sb_instance", "alpha"), ("state", "online")]
        ),
        1.0
    );
    // Label values stay bounded: an op the service lacks is "other".
    let _ = s
        .bus
        .call(
            "alpha",
            "no-such-op-1234",
            Vec::new(),
            CallOptions::default(),
        )
        .await;
    let scrape = parse(&get(&http, "/metrics").await.1);
    assert!(!scrape
        .samples
        .iter()
        .any(|x| x.labels.get("op") == Some("no-such-op-1234")));
    assert_eq!(
        counter(
            &scrape,
            "sb_service_requests_total",
            &[
                ("service", "alpha"),
                ("op", "other"),
                ("code", "unknown_op")
            ]
        ),
        1.0
    );

    // Event streams are capped: the 17th is refused while 16 are open.
    let host = http.trim_start_matches("http://").to_owned();
    let mut open = Vec::new();
    for _ in 0..16 {
        let mut c = tokio::net::TcpStream::connect(&host).await.unwrap();
        c.write_all(format!("GET /api/events HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut first = [0u8; 12];
        c.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        open.push(c);
    }
    assert_eq!(get(&http, "/api/events").await.0, 503);
    drop(open);
    assert!(
        eventually(Duration::from_secs(5), || async {
            let mut c = tokio::net::TcpStream::connect(&host).await.unwrap();
            c.write_all(format!("GET /api/events HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut first = [0u8; 12];
            c.read_exact(&mut first).await.is_ok() && &first == b"HTTP/1.1 200"
        })
        .await,
        "slots come back when the viewers go"
    );

    // Connections are capped, 32 per address: with 256 opened and held idle
    // from one address, the newest 32 stay and the rest were pushed out (each
    // newcomer takes its address's longest idle place); a probe still answers.
    let mut held = Vec::new();
    for _ in 0..256 {
        held.push(tokio::net::TcpStream::connect(&host).await.unwrap());
    }
    assert_eq!(
        get(&http, "/health").await.0,
        200,
        "a probe among idle connections"
    );
    let mut closed = 0;
    for c in &mut held {
        let mut buf = [0u8; 1];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(50), c.read(&mut buf)).await {
            assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
            closed += 1;
        }
    }
    assert!(
        closed >= 256 - 32,
        "{closed} of 256 idle connections pushed out"
    );
    drop(held);

    // Which instance owns a key, as the dashboard asks it.
    let (status, body) = get(&http, "/api/owner/alpha/some-key").await;
    assert_eq!(status, 200);
    let owner: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(owner["instance"], "alpha", "{body}");

    // Stopping an app: not ready.
    let out = Command::new(bin_path("sbctl"))
        .args(["stop", "alpha"])
        .env("SB_BROKER", &s.endpoint)
        .output()
        .unwrap();
    assert!(out.status.success());
    let (status, body) = get(&http, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("alpha"), "{body}");

    // The broker stopped (SIGSTOP): main's /health is 503 until it answers again.
    let broker = s
        .ls()
        .await
        .iter()
        .find(|i| i["app"] == "broker")
        .and_then(|i| i["pid"].as_u64())
        .unwrap() as i32;
    let pid = nix::unistd::Pid::from_raw(broker);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let down = eventually(Duration::from_secs(10), || async {
        get(&http, "/health").await.0 == 503
    })
    .await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(down, "503 while the broker does not answer");
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(&http, "/health").await.0 == 200
        })
        .await,
        "200 again once it answers"
    );
}

#[tokio::test]
async fn a_say_is_traced_from_the_frame_to_the_sql_statement() {
    let system = System::start(true).await;
    let mut ada = system.client_as("ada").await;
    ada.ok("chat", "join", json!({"room": "traced"})).await;
    let reply = ada
        .request(
            Some("chat"),
            "say",
            json!({"room": "traced", "text": "follow me"}),
        )
        .await;
    let trace = reply["trace"]
        .as_str()
        .expect("every reply carries its trace id")
        .to_owned();
    let out = Command::new(bin_path("sbctl"))
        .args(["--json", "trace", &trace])
        .env("SB_BROKER", &system.broker)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let spans: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<String> = spans
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s["instance"].as_str().unwrap(),
                s["name"].as_str().unwrap()
            )
        })
        .collect();
    let order = [
        "receive ws chat.say",
        "broker dispatch chat.say",
        "chat handle chat.say",
        "chat call db.chat.save",
        "broker dispatch db.chat.save",
        "db handle db.chat.save",
        "db sql INSERT INTO messages",
    ];
    let mut at = 0;
    for want in order {
        let found = names[at..].iter().position(|n| n.starts_with(want));
        assert!(found.is_some(), "{want} after {at} in {names:#?}");
        at += found.unwrap() + 1;
    }
    assert!(spans.iter().all(|s| s["duration_us"].as_u64().is_some()));
    assert!(spans.iter().all(|s| s["outcome"] == "ok"), "{spans:#?}");
    // A trace no process holds (the docs' sample id, on another system) is
    // not bad usage (64): it exits 66 and says what a trace id is.
    let out = Command::new(bin_path("sbctl"))
        .args(["trace", "f06ade1084543e02"])
        .env("SB_BROKER", &system.broker)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(66), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gateway reply"),
        "{out:?}"
    );
}

#[tokio::test]
async fn the_gateways_health_is_503_without_a_broker() {
    let system = System::start(false).await;
    let http = system.ws.replace("ws://", "http://");
    let http = http.trim_end_matches("/ws");
    assert_eq!(get(http, "/health").await.0, 200);
    let (status, text) = get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(parse(&text)
        .samples
        .iter()
        .any(|s| s.metric == "sb_gateway_connections"));
    let broker = &system.procs.iter().find(|(n, _)| n == "broker").unwrap().1;
    broker.signal(switchboard_testkit::Sig::SIGKILL).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(http, "/health").await.0 == 503
        })
        .await,
        "503 once the bus is gone"
    );
}
