//! Attacks on the services' own surfaces (issue 21): main's HTTP server (stalled
//! heads from many addresses, a rebound `Host`), loc's zones and replies, chat
//! presence after a failed join, control and bidi characters in user text.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchboard_testkit::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::observe::get;
use crate::supervisor::{app, Supervised};

/// Attackers from 127.0.0.2, .3, … each holding `per_source` sockets in a
/// half-sent request head, opening another as soon as one is closed (after
/// `pause`). Stops when dropped.
struct StalledHeads {
    stop: Arc<AtomicBool>,
    /// Sockets connected with their partial head written, so far.
    opened: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl StalledHeads {
    fn start(target: SocketAddr, sources: u8, per_source: usize, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for s in 0..sources {
            let source = Ipv4Addr::new(127, 0, 0, 2 + s);
            for _ in 0..per_source {
                let (stop, opened) = (stop.clone(), opened.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let socket = tokio::net::TcpSocket::new_v4().unwrap();
                        socket.bind((source, 0).into()).unwrap();
                        if let Ok(mut s) = socket.connect(target).await {
                            if s.write_all(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                                .await
                                .is_ok()
                            {
                                opened.fetch_add(1, Ordering::Relaxed);
                                // Held until the server closes it.
                                let mut buf = [0u8; 64];
                                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                            }
                        }
                        // The attacker's own pace of re-opening, not a wait for
                        // the system under test.
                        tokio::time::sleep(pause).await;
                    }
                }));
            }
        }
        Self {
            stop,
            opened,
            tasks,
        }
    }
}

impl Drop for StalledHeads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn target(http: &str) -> SocketAddr {
    http.trim_start_matches("http://").parse().unwrap()
}

/// Issue 21, finding 8: 256 half-sent request heads, re-opened when closed,
/// locked `/health` and the dashboard out. Now 320 of them from ten addresses
/// (32 each, the per-address share) push out only each other: a probe and a
/// viewer from another address get their answers all through the attack.
#[tokio::test]
async fn stalled_heads_from_many_addresses_never_lock_out_health_or_the_dashboard() {
    let s = Supervised::start(&app("alpha", &[], "")).await;
    assert!(s.all_online(1).await);
    let http = s.http();
    let attack = StalledHeads::start(target(&http), 10, 32, Duration::from_millis(100));
    // Past the whole table (256) before the first probe.
    let filled = eventually(Duration::from_secs(20), || async {
        attack.opened.load(Ordering::Relaxed) >= 400
    })
    .await;
    assert!(
        filled,
        "the attack opened {} sockets",
        attack.opened.load(Ordering::Relaxed)
    );
    for _ in 0..10 {
        let (status, body) = get(&http, "/health").await;
        assert_eq!(status, 200, "/health during the attack: {body:?}");
        let (status, body) = get(&http, "/api/status").await;
        assert_eq!(status, 200, "the dashboard's data during the attack");
        assert!(body.contains("alpha"), "{body}");
    }
    assert!(
        attack.opened.load(Ordering::Relaxed) > 420,
        "the attackers were being pushed out and kept re-opening"
    );
}

/// A raw GET with the given `Host` header.
async fn get_with_host(http: &str, path: &str, host: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(target(http)).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text))
        .await
        .expect("an answer")
        .unwrap();
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

/// Issue 21 (low): without `http_auth` the dashboard answered any `Host`, so a
/// page on evil.example whose name was rebound to 127.0.0.1 could read it.
/// Now a name that is not an IP address, `localhost` or in `http_hosts` gets
/// 421 and none of the data; probes still answer.
#[tokio::test]
async fn a_rebound_host_name_gets_no_dashboard_data() {
    let s = Supervised::start(&app("alpha", &[], "")).await;
    assert!(s.all_online(1).await);
    let http = s.http();
    for path in ["/", "/api/status", "/metrics", "/api/slowest"] {
        let (status, body) = get_with_host(&http, path, "evil.example").await;
        assert_eq!(status, 421, "{path}: {body}");
        assert!(
            !body.contains("alpha") && !body.contains("<html"),
            "{path}: {body}"
        );
        let port = target(&http).port();
        let (status, _) = get_with_host(&http, path, &format!("evil.example:{port}")).await;
        assert_eq!(status, 421, "{path} with the port");
    }
    let (status, body) = get_with_host(&http, "/api/status", "localhost").await;
    assert_eq!(status, 200);
    assert!(body.contains("alpha"), "{body}");
    assert_eq!(
        get(&http, "/api/status").await.0,
        200,
        "Host: 127.0.0.1:PORT"
    );
    // Probes carry whatever Host the prober uses.
    assert_eq!(get_with_host(&http, "/health", "evil.example").await.0, 200);
}

/// With `http_hosts` configured a name is answered; with `http_auth` every
/// name is, but only with the password (compared in constant time).
#[tokio::test]
async fn configured_names_and_basic_auth_are_answered() {
    let s = Supervised::start_file(&format!(
        "[main]\nhttp = \"127.0.0.1:0\"\nhttp_hosts = [\"dash.example\"]\n\n[broker]\nbin = \"{}\"\nbind = \"tcp://127.0.0.1:0\"\n\n{}",
        switchboard_testkit::bin_path("broker").display(),
        app("alpha", &[], "")
    ))
    .await;
    let http = s.http();
    assert_eq!(
        get_with_host(&http, "/api/status", "dash.example").await.0,
        200
    );
    assert_eq!(
        get_with_host(&http, "/api/status", "DASH.example:80")
            .await
            .0,
        200
    );
    assert_eq!(
        get_with_host(&http, "/api/status", "other.example").await.0,
        421
    );

    let s = Supervised::start_file(&format!(
        "[main]\nhttp = \"127.0.0.1:0\"\nhttp_auth = \"ops:s3cret\"\n\n[broker]\nbin = \"{}\"\nbind = \"tcp://127.0.0.1:0\"\n\n{}",
        switchboard_testkit::bin_path("broker").display(),
        app("alpha", &[], "")
    ))
    .await;
    let http = s.http();
    let with_auth = |auth: &'static str| {
        let http = http.clone();
        async move {
            let mut s = tokio::net::TcpStream::connect(target(&http)).await.unwrap();
            let req = format!(
                "GET /api/status HTTP/1.1\r\nHost: any.example\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).await.unwrap();
            text.split(' ')
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(0)
        }
    };
    // base64("ops:s3cret"), then a prefix of it, then a wrong password.
    assert_eq!(with_auth("b3BzOnMzY3JldA==").await, 200);
    assert_eq!(with_auth("b3BzOnMzY3Jl").await, 401);
    assert_eq!(with_auth("b3BzOnMzY3JldB==").await, 401);
    assert_eq!(
        get_with_host(&http, "/api/status", "any.example").await.0,
        401
    );
}
