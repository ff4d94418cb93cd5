//! Attacks on the services' own surfaces (issue 21): main's HTTP server (stalled
//! heads from many addresses, a rebound `Host`), loc's zones and replies, chat
//! presence after a failed join, control and bidi characters in user text.

use serde_json::json;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchboard_testkit::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::System;
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
    crate::observe::status_and_body(&text)
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

/// Issue 21, finding 10: `zone` and `nearby` created the zones they read, so
/// cheap reads of made-up names filled an instance's zone cap and every new
/// zone answered `overloaded`. Now reads create nothing, and zones made by
/// `move` past the cap push out the least recently used (whose positions come
/// back from the database) instead of refusing anyone.
#[tokio::test]
async fn reads_of_made_up_zones_and_a_flood_of_new_ones_lock_no_one_out() {
    let system = System::start_full(true, &[], &["--max-zones", "8"]).await;
    let mut eve = system.client_as("eve").await;
    let mut ada = system.client_as("ada").await;
    ada.ok("loc", "move", json!({"zone": "home", "x": 1.0, "y": 2.0}))
        .await;
    // 200 reads of names nobody uses: each reads as empty.
    for i in 0..100 {
        let zone = eve
            .ok("loc", "zone", json!({"zone": format!("probe-{i}")}))
            .await;
        assert_eq!(zone["users"], json!([]), "{zone}");
        let near = eve
            .ok(
                "loc",
                "nearby",
                json!({"zone": format!("probe-n{i}"), "x": 0.0, "y": 0.0, "radius": 5.0}),
            )
            .await;
        assert_eq!(near["users"], json!([]), "{near}");
    }
    // A new zone is still open to everyone.
    ada.ok("loc", "move", json!({"zone": "work", "x": 3.0, "y": 4.0}))
        .await;
    // 40 zones made by moves (five times each instance's cap): every one made,
    // none refused.
    for i in 0..40 {
        eve.ok(
            "loc",
            "move",
            json!({"zone": format!("flood-{i}"), "x": 0.0, "y": 0.0}),
        )
        .await;
    }
    ada.ok("loc", "move", json!({"zone": "later", "x": 5.0, "y": 6.0}))
        .await;
    // The zones the flood pushed out come back with their positions.
    let home = ada.ok("loc", "zone", json!({"zone": "home"})).await;
    assert_eq!(
        home["users"],
        json!([{"user": "ada", "x": 1.0, "y": 2.0, "ts": home["users"][0]["ts"]}]),
        "{home}"
    );
    let work = ada.ok("loc", "zone", json!({"zone": "work"})).await;
    assert_eq!(work["users"][0]["user"], "ada", "{work}");
    assert_eq!(work["users"][0]["x"], 3.0, "{work}");
}

/// Issue 21, findings 1 and 10: a zone's users grew its `zone` reply and its
/// `loc.load` reply without bound; ~10,000 users put both over the bus's 1 MiB
/// message limit (which cost the sender its bus connection). Now `loc.load`
/// pages (1,000 positions) and `zone` pages (500 users, `more`, `after`):
/// 8,000 saved users with long ids (1.4 MB as one reply) are all read back,
/// and the db and loc stay on the bus.
#[tokio::test]
async fn a_zone_of_eight_thousand_long_named_users_is_read_back_in_pages() {
    use mysql_async::prelude::Queryable;
    let system = System::start(true).await;
    let mut ada = system.client_as("ada").await;
    // The schema exists once a first position is saved.
    ada.ok("loc", "move", json!({"zone": "warmup", "x": 0.0, "y": 0.0}))
        .await;
    let mut conn = crate::harness::sql(&system).await;
    let ready = eventually(Duration::from_secs(10), || {
        let url = system.db.url.clone();
        async move {
            let mut c = mysql_async::Conn::from_url(&url).await.unwrap();
            c.query_drop("SELECT 1 FROM positions LIMIT 1")
                .await
                .is_ok()
        }
    })
    .await;
    assert!(ready, "positions table");
    let user = |i: usize| format!("{i:06}-{}", "u".repeat(121));
    for chunk in (0..8_000).collect::<Vec<_>>().chunks(1_000) {
        let rows = vec!["('big', ?, ?, ?, 1)"; chunk.len()].join(",");
        let params: Vec<mysql_async::Value> = chunk
            .iter()
            .flat_map(|&i| [user(i).into(), (i as f64).into(), 0.0f64.into()])
            .collect();
        conn.exec_drop(
            format!("INSERT INTO positions (zone, user_id, x, y, ts) VALUES {rows}"),
            params,
        )
        .await
        .unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = json!({"zone": "big"});
        if let Some(a) = &after {
            q["after"] = json!(a);
        }
        let page = ada.ok("loc", "zone", q).await;
        let users = page["users"].as_array().unwrap().clone();
        assert!(users.len() <= 500, "{}", users.len());
        seen.extend(users.iter().map(|u| u["user"].as_str().unwrap().to_owned()));
        if page["more"] != json!(true) {
            break;
        }
        after = seen.last().cloned();
    }
    assert_eq!(seen.len(), 8_000);
    assert_eq!(
        seen,
        (0..8_000).map(user).collect::<Vec<_>>(),
        "every user once, in order"
    );
    // A smaller page, and nearby's limit.
    let page = ada
        .ok("loc", "zone", json!({"zone": "big", "limit": 3}))
        .await;
    assert_eq!(page["users"].as_array().unwrap().len(), 3);
    assert_eq!(page["more"], json!(true));
    let near = ada
        .ok(
            "loc",
            "nearby",
            json!({"zone": "big", "x": 0.0, "y": 0.0, "radius": 100.0, "limit": 5}),
        )
        .await;
    assert_eq!(near["users"].as_array().unwrap().len(), 5, "{near}");
    assert_eq!(near["more"], json!(true));
    for bad in [json!(0), json!(501)] {
        assert_eq!(
            ada.err(Some("loc"), "zone", json!({"zone": "big", "limit": bad}))
                .await,
            "bad_request"
        );
    }
    // The db is still on the bus: a say commits.
    ada.ok("chat", "say", json!({"room": "r", "text": "still here"}))
        .await;
}

/// Issue 21 (low): a `join` whose grant the gateway could not apply (the
/// client's subscription cap) failed for the client but still showed it in the
/// room's `who`, a member that hears nothing. Now the gateway tells chat
/// (`session.grant_failed`) and the presence goes.
#[tokio::test]
async fn a_join_that_failed_leaves_no_presence() {
    let system = System::start_with(true, &["--max-subscriptions", "2"]).await;
    let mut eve = system.client_as("eve").await;
    let mut bob = system.client_as("bob").await;
    // user.eve and one room: eve is at her cap.
    eve.ok_gateway("subscribe", json!({"topic": "chat.room.elsewhere"}))
        .await;
    assert_eq!(
        eve.err(Some("chat"), "join", json!({"room": "secret"}))
            .await,
        "overloaded"
    );
    // The event and bob's request travel apart: ask until it is gone (5 s).
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let mut listed = json!(null);
    while std::time::Instant::now() < until {
        listed = bob.ok("chat", "who", json!({"room": "secret"})).await["users"].clone();
        if listed == json!([]) {
            break;
        }
    }
    let gone = listed == json!([]);
    assert!(gone, "eve is listed in a room she could not join: {listed}");
    // A join that works still shows her.
    eve.ok_gateway("unsubscribe", json!({"topic": "chat.room.elsewhere"}))
        .await;
    eve.ok("chat", "join", json!({"room": "secret"})).await;
    assert_eq!(
        bob.ok("chat", "who", json!({"room": "secret"})).await["users"],
        json!(["eve"])
    );
}

/// Issue 21 (low): NUL, ESC (a terminal escape) and bidi overrides were
/// accepted in chat text and loc names and shown to other users as sent. Now
/// each is `bad_request` and nothing reaches anyone; a new line and a tab in
/// a message are fine.
#[tokio::test]
async fn control_and_bidi_characters_never_reach_other_users() {
    let system = System::start(true).await;
    let mut eve = system.client_as("eve").await;
    let mut bob = system.client_as("bob").await;
    eve.ok("chat", "join", json!({"room": "lobby"})).await;
    bob.ok("chat", "join", json!({"room": "lobby"})).await;
    bob.ok_gateway("subscribe", json!({"topic": "loc.park"}))
        .await;
    let evil = [
        "nul\u{0}byte",
        "clear\u{1b}[2Jscreen",
        "bell\u{7}",
        "c1\u{9b}31m",
        "invoice\u{202E}fdp.exe",
        "iso\u{2066}late\u{2069}",
        "mark\u{200F}",
        "arabic\u{061C}mark",
        // Invisible: a zero-width space, a byte order mark, tag characters
        // (ASCII no reader sees).
        "zero\u{200B}width",
        "bom\u{FEFF}",
        "tag\u{E0041}\u{E0042}",
    ];
    for text in evil {
        for (to, op, data) in [
            ("chat", "say", json!({"room": "lobby", "text": text})),
            ("chat", "dm", json!({"user": "bob", "text": text})),
            (
                "loc",
                "move",
                json!({"zone": "park", "x": 1.0, "y": 1.0, "name": text}),
            ),
        ] {
            assert_eq!(
                eve.err(Some(to), op, data).await,
                "bad_request",
                "{to}.{op} with {text:?}"
            );
        }
    }
    // A line break that is not a control character, in a one-line name.
    assert_eq!(
        eve.err(
            Some("loc"),
            "move",
            json!({"zone": "park", "x": 1.0, "y": 1.0, "name": "two\u{2028}lines"})
        )
        .await,
        "bad_request"
    );
    for room in ["lob\u{202E}by", "lob\u{1b}by"] {
        assert_eq!(
            eve.err(Some("chat"), "join", json!({"room": room})).await,
            "bad_request"
        );
        assert_eq!(
            eve.err(
                Some("loc"),
                "move",
                json!({"zone": room, "x": 0.0, "y": 0.0})
            )
            .await,
            "bad_request"
        );
    }
    // What is allowed passes, and is the first thing bob hears.
    eve.ok(
        "chat",
        "say",
        json!({"room": "lobby", "text": "two\nlines\tok"}),
    )
    .await;
    let heard = bob.event("chat.room.lobby").await.expect("the message");
    assert_eq!(heard["text"], "two\nlines\tok");
    eve.ok("chat", "dm", json!({"user": "bob", "text": "psst"}))
        .await;
    assert_eq!(bob.event("user.bob").await.expect("the dm")["text"], "psst");
    eve.ok(
        "loc",
        "move",
        json!({"zone": "park", "x": 1.0, "y": 1.0, "name": "Éve ✓"}),
    )
    .await;
    assert_eq!(
        bob.event("loc.park").await.expect("the move")["name"],
        "Éve ✓"
    );
}

/// Two zone names owned by the same loc instance.
async fn two_on_one_instance(system: &System) -> (String, String) {
    let mut by_owner: std::collections::HashMap<String, String> = Default::default();
    for i in 0..64 {
        let zone = format!("pair-{i}");
        let owner = crate::services::owner(system, &zone).await;
        if let Some(first) = by_owner.get(&owner) {
            return (first.clone(), zone);
        }
        by_owner.insert(owner, zone);
    }
    panic!("no two zones on one instance");
}

/// Pushing zones out (least recently used) must not keep a user who left in
/// them: a connection's positions in zones evicted meanwhile go when it
/// closes, instead of coming back from the database as a ghost.
#[tokio::test]
async fn a_user_who_left_is_not_brought_back_by_an_evicted_zone() {
    let system = System::start_full(true, &[], &["--max-zones", "1"]).await;
    let (a, b) = two_on_one_instance(&system).await;
    let mut ada = system.client_as("ada").await;
    let mut bob = system.client_as("bob").await;
    ada.ok("loc", "move", json!({"zone": a, "x": 1.0, "y": 1.0}))
        .await;
    // b pushes a out (cap 1); then ada closes her connection.
    ada.ok("loc", "move", json!({"zone": b, "x": 2.0, "y": 2.0}))
        .await;
    drop(ada);
    // Until the close is handled ada may still show: ask until she is gone.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let mut listed = (json!(null), json!(null));
    while std::time::Instant::now() < until {
        listed = (
            bob.ok("loc", "zone", json!({"zone": a})).await["users"].clone(),
            bob.ok("loc", "zone", json!({"zone": b})).await["users"].clone(),
        );
        if listed == (json!([]), json!([])) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listed, (json!([]), json!([])), "ada left both zones");
}

/// The tables loc keeps from client input refuse loudly past their caps: users
/// in one zone (`--max-zone-users`), zones one connection holds positions in
/// (256 on one loc instance).
#[tokio::test]
async fn a_full_zone_and_a_connection_in_too_many_zones_are_refused_loudly() {
    let system = System::start_full(true, &[], &["--max-zone-users", "2"]).await;
    let mut ada = system.client_as("ada").await;
    let mut bob = system.client_as("bob").await;
    let mut eve = system.client_as("eve").await;
    ada.ok("loc", "move", json!({"zone": "full", "x": 0.0, "y": 0.0}))
        .await;
    bob.ok("loc", "move", json!({"zone": "full", "x": 0.0, "y": 0.0}))
        .await;
    assert_eq!(
        eve.err(
            Some("loc"),
            "move",
            json!({"zone": "full", "x": 0.0, "y": 0.0})
        )
        .await,
        "overloaded"
    );
    // Those inside still move.
    ada.ok("loc", "move", json!({"zone": "full", "x": 1.0, "y": 1.0}))
        .await;
    // 257 zones on one loc instance (each instance keeps its own index).
    let first = crate::services::owner(&system, "many-0").await;
    let mut zones = Vec::new();
    for i in 0.. {
        let zone = format!("many-{i}");
        if crate::services::owner(&system, &zone).await == first {
            zones.push(zone);
            if zones.len() == 257 {
                break;
            }
        }
    }
    for zone in &zones[..256] {
        eve.ok("loc", "move", json!({"zone": zone, "x": 0.0, "y": 0.0}))
            .await;
    }
    assert_eq!(
        eve.err(
            Some("loc"),
            "move",
            json!({"zone": zones[256], "x": 0.0, "y": 0.0})
        )
        .await,
        "overloaded"
    );
    // Leaving one makes room.
    eve.ok("loc", "leave", json!({"zone": zones[0]})).await;
    eve.ok(
        "loc",
        "move",
        json!({"zone": zones[256], "x": 0.0, "y": 0.0}),
    )
    .await;
}
