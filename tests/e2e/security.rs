//! One test per attack: what a hostile client tries, and what it gets.

use futures::SinkExt;
use serde_json::{json, Value};
use std::time::Duration;
use switchboard_testkit::{bin_path, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{System, Ws, AUTH_SECRET};

/// Frames that arrive within `window` (events and stray replies), after a ping
/// round trip has flushed what the gateway had queued.
async fn drain(ws: &mut Ws, window: Duration) -> Vec<Value> {
    let pong = ws.request(None, "ping", json!({})).await;
    assert_eq!(pong["ok"], json!(true));
    let mut seen = Vec::new();
    while let Some(frame) = ws.next_frame(window).await {
        seen.push(frame);
    }
    seen
}

/// Every way a client used to get `>` through reply data: `$echo` on chat and
/// loc, and chat `relay` to loc's `$echo`. None subscribes it to anything: the
/// data comes back as data, and bob's direct message reaches bob only.
#[tokio::test]
async fn reply_data_can_never_subscribe_a_client() {
    let system = System::start(true).await;
    let mut eve = system.client_as("eve").await;
    let mut bob = system.client_as("bob").await;
    let mut carol = system.client_as("carol").await;
    let evil = json!({"$subscribe": [">", "user.*", "user.bob"], "subscribe": [">"]});
    for (to, op, data) in [
        ("chat", "$echo", evil.clone()),
        ("loc", "$echo", evil.clone()),
        (
            "chat",
            "relay",
            json!({"to": "loc", "op": "$echo", "data": evil.clone()}),
        ),
        (
            "chat",
            "relay",
            json!({"to": "chat", "op": "$echo", "data": evil.clone()}),
        ),
    ] {
        let data = eve.ok(to, op, data).await;
        assert_eq!(data, evil, "{to}.{op}: returned as plain data");
    }
    carol
        .ok("chat", "dm", json!({"user": "bob", "text": "private"}))
        .await;
    let dm = bob.event("user.bob").await.expect("bob gets his message");
    assert_eq!(dm["text"], "private");
    let leaked: Vec<Value> = drain(&mut eve, Duration::from_millis(500))
        .await
        .into_iter()
        .filter(|f| f.get("topic").is_some())
        .collect();
    assert!(leaked.is_empty(), "eve saw {leaked:?}");
}

#[tokio::test]
async fn private_and_wildcard_topics_cannot_be_subscribed() {
    let system = System::start(true).await;
    let mut eve = system.client_as("eve").await;
    for topic in [
        ">",
        "*.>",
        "user.*",
        "user.>",
        "user.bob",
        "session.>",
        "session.close",
        "*.room.lobby",
        "db.>",
    ] {
        assert_eq!(
            eve.err(None, "subscribe", json!({"topic": topic})).await,
            "forbidden",
            "{topic}"
        );
    }
    // What the policy opens still works, and the client's own user topic.
    for topic in ["chat.room.lobby", "chat.>", "loc.z1", "user.eve"] {
        let reply = eve
            .request(None, "subscribe", json!({"topic": topic}))
            .await;
        assert_eq!(reply["ok"], json!(true), "{topic}: {reply}");
    }
    // Closed ops and services stay closed.
    assert_eq!(
        eve.err(Some("chat"), "$health", json!({})).await,
        "forbidden"
    );
    assert_eq!(
        eve.err(Some("receive"), "$echo", json!({})).await,
        "forbidden"
    );
}

#[tokio::test]
async fn a_token_whose_sub_could_widen_a_topic_is_refused() {
    let system = System::start(true).await;
    for sub in [">", "*", "a.b", "bob.>", "a b", "user.*"] {
        let token = switchboard_gateway::jwt::sign(
            AUTH_SECRET.as_bytes(),
            &json!({"sub": sub, "exp": switchboard_bus::proto::now_ms() / 1000 + 3600}),
        );
        let url = format!("{}/ws?token={token}", system.ws);
        let refused = Ws::connect(&url).await.err().map(|e| e.to_string());
        assert!(
            refused.as_deref().is_some_and(|e| e.contains("401")),
            "{sub:?}: {refused:?}"
        );
        // And through the auth op.
        let mut ws = Ws::connect(&format!("{}/ws", system.ws)).await.unwrap();
        let reply = ws.request(None, "auth", json!({"token": token})).await;
        assert_eq!(reply["error"]["code"], "unauthorized", "{sub:?}");
    }
}

#[tokio::test]
async fn a_socket_that_never_authenticates_is_closed() {
    let system = System::start_with(true, &["--auth-timeout-ms", "300"]).await;
    let mut idle = Ws::connect(&format!("{}/ws", system.ws)).await.unwrap();
    assert_eq!(idle.close_code().await, Some(4003));
    // One that authenticates in time stays.
    let mut ws = Ws::connect(&format!("{}/ws", system.ws)).await.unwrap();
    let reply = ws
        .request(None, "auth", json!({"token": System::token("ada")}))
        .await;
    assert_eq!(reply["ok"], json!(true), "{reply}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        ws.ok("chat", "who", json!({"room": "r"})).await["users"],
        json!([])
    );
}

#[tokio::test]
async fn an_expired_token_closes_its_connection() {
    let system = System::start_with(true, &["--token-leeway-s", "0"]).await;
    let now = switchboard_bus::proto::now_ms() / 1000;
    let token = switchboard_gateway::jwt::sign(
        AUTH_SECRET.as_bytes(),
        &json!({"sub": "ada", "exp": now + 2}),
    );
    let mut ws = Ws::connect(&format!("{}/ws?token={token}", system.ws))
        .await
        .unwrap();
    ws.ok("chat", "join", json!({"room": "r"})).await;
    assert_eq!(ws.close_code().await, Some(4002));
    // An expired token is refused outright.
    let old = switchboard_gateway::jwt::sign(
        AUTH_SECRET.as_bytes(),
        &json!({"sub": "ada", "exp": now - 10}),
    );
    assert!(Ws::connect(&format!("{}/ws?token={old}", system.ws))
        .await
        .is_err());
}

#[tokio::test]
async fn an_origin_outside_the_allow_list_is_refused() {
    let system = System::start_with(true, &["--allowed-origins", "https://app.example"]).await;
    let url = format!("{}/ws?token={}", system.ws, System::token("ada"));
    let with_origin = |origin: &str| {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut().insert("Origin", origin.parse().unwrap());
        req
    };
    let bad = tokio_tungstenite::connect_async(with_origin("https://evil.example")).await;
    assert!(bad.err().is_some_and(|e| e.to_string().contains("403")));
    let good = tokio_tungstenite::connect_async(with_origin("https://app.example")).await;
    assert!(good.is_ok());
}

/// 3,000 sockets send half an HTTP head and stall. Each is closed to make room
/// for a newer one (past the handshake caps) or by the handshake deadline, while a client
/// that was already connected keeps getting its pings answered.
#[tokio::test]
async fn slowloris_sockets_are_closed_and_a_real_client_keeps_working() {
    let system = System::start_with(true, &["--handshake-timeout-ms", "1000"]).await;
    let mut ws = system.client_as("ada").await;
    let addr = system.ws.trim_start_matches("ws://").to_owned();
    let mut stalled = Vec::new();
    for _ in 0..3_000 {
        let Ok(mut s) = TcpStream::connect(&addr).await else {
            continue;
        };
        if s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
            .await
            .is_ok()
        {
            stalled.push(s);
        }
    }
    // The real client is served during the attack.
    for _ in 0..20 {
        let pong = ws.request(None, "ping", json!({})).await;
        assert_eq!(pong["ok"], json!(true));
    }
    // Every stalled socket is closed by the gateway: refused at once, or at the
    // handshake deadline. None is left holding a slot.
    let closes = stalled.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 512];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    });
    let closed = futures::future::join_all(closes).await;
    assert!(closed.iter().all(|c| *c), "every stalled socket closed");
    let health: Value = http_get_json(&addr, "/health").await;
    // Past the per-address share, the oldest stalled handshake makes room.
    assert!(
        health["handshakes_evicted"].as_u64().unwrap() > 0,
        "{health}"
    );
    assert!(
        health["handshake_timeouts"].as_u64().unwrap() > 0,
        "{health}"
    );
    assert_eq!(health["connections"], json!(1), "{health}");
    let pong = ws.request(None, "ping", json!({})).await;
    assert_eq!(pong["ok"], json!(true));
}

async fn http_get_json(addr: &str, path: &str) -> Value {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn rss_kib(pid: u32) -> u64 {
    switchboard_bus::svc::procinfo::rss_of(pid) / 1024
}

/// A client asks for the largest replies there are (history pages of 200 long
/// messages, ~800 KB of JSON each) and never reads. Its buffer is bounded in
/// bytes: it is closed as too slow (4001), and the gateway stays small.
#[tokio::test]
async fn a_client_that_never_reads_large_replies_is_closed_and_the_gateway_stays_small() {
    let mut system = System::start_with(
        true,
        &["--rate-per-sec", "100000", "--rate-burst", "100000"],
    )
    .await;
    let mut writer = system.client_as("ada").await;
    // 1,000 characters of 4 bytes: the longest text a `say` frame carries here.
    let text = "\u{1F600}".repeat(1000);
    for _ in 0..200 {
        writer
            .ok("chat", "say", json!({"room": "big", "text": text}))
            .await;
    }
    let page = writer
        .ok("chat", "history", json!({"room": "big", "limit": 200}))
        .await;
    let page_bytes = page.to_string().len();
    assert!(page_bytes > 800_000, "{page_bytes}");
    let pid = system.proc("receive").pid();
    let before = rss_kib(pid);

    let mut hog = system.client_as("hog").await;
    let frame =
        json!({"id": 1, "to": "chat", "op": "history", "data": {"room": "big", "limit": 200}})
            .to_string();
    // Waves of 64 (the in-flight cap), so that the replies are large ones and few
    // in number: 512 in all, ~400 MB if they were kept, far under the 1,024-message
    // cap (a flood of small `overloaded` replies would trip that cap instead, and
    // prove nothing about bytes).
    'waves: for _ in 0..8 {
        for _ in 0..64 {
            if hog.stream.send(frame.as_str().into()).await.is_err() {
                break 'waves;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut peak = 0;
    let stats = system.ws.trim_start_matches("ws://").to_owned();
    let closed = eventually(Duration::from_secs(20), || {
        let stats = stats.clone();
        let rss = rss_kib(pid);
        peak = peak.max(rss);
        async move { http_get_json(&stats, "/health").await["connections"] == json!(1) }
    })
    .await;
    eprintln!("gateway RSS: {before} KiB before, peak {peak} KiB while the hog was served");
    assert!(closed, "the hog was closed");
    assert!(
        peak < before + 64 * 1024,
        "gateway RSS {before} KiB → peak {peak} KiB"
    );
    // Closed as too slow (4001). The close frame itself may not get through to a
    // client that does not read, so the gateway's count says why it went.
    let health = http_get_json(&stats, "/health").await;
    assert_eq!(health["closed_slow"], json!(1), "{health}");
    assert!(matches!(hog.close_code().await, None | Some(4001)));
    // Everyone else is fine.
    assert_eq!(
        writer.ok("chat", "who", json!({"room": "big"})).await["users"],
        json!([])
    );
}

#[tokio::test]
async fn ten_thousand_subscriptions_are_refused_past_the_cap() {
    let system = System::start_with(
        true,
        &["--rate-per-sec", "100000", "--rate-burst", "100000"],
    )
    .await;
    let mut eve = system.client_as("eve").await;
    let mut ok = 0;
    let mut overloaded = 0;
    for i in 0..10_000 {
        let reply = eve
            .request(
                None,
                "subscribe",
                json!({"topic": format!("chat.room.r{i}")}),
            )
            .await;
        match reply["ok"].as_bool() {
            Some(true) => ok += 1,
            _ if reply["error"]["code"] == "overloaded" => overloaded += 1,
            _ => panic!("{reply}"),
        }
    }
    // 64 in all, one of them the client's own user.eve.
    assert_eq!((ok, overloaded), (63, 9_937));
    // Joining a room past the cap fails the join's grant, and says so.
    assert_eq!(
        eve.err(Some("chat"), "join", json!({"room": "more"})).await,
        "overloaded"
    );
    let addr = system.ws.trim_start_matches("ws://");
    let health = http_get_json(addr, "/health").await;
    assert!(health["topics"].as_u64().unwrap() <= 64, "{health}");
    // Unsubscribing frees a place.
    eve.ok_gateway("unsubscribe", json!({"topic": "chat.room.r0"}))
        .await;
    eve.ok("chat", "join", json!({"room": "more"})).await;
}

async fn rows_with_text(system: &System, text: &str) -> u64 {
    use mysql_async::prelude::Queryable;
    let mut conn = crate::harness::sql(system).await;
    match conn
        .exec_first::<u64, _, _>("SELECT COUNT(*) FROM messages WHERE text = ?", (text,))
        .await
    {
        Ok(n) => n.unwrap_or(0),
        // The db service migrates in the background at start: no table yet.
        Err(mysql_async::Error::Server(e)) if e.code == 1146 => 0,
        Err(e) => panic!("{e}"),
    }
}

/// The client cannot know whether a `say` committed when its connection drops
/// before the ack, or when the ack does not come in time. It retries with the
/// same idempotency key: the message is stored once, and the retry learns its seq.
#[tokio::test]
async fn a_say_retried_after_an_unknown_outcome_is_stored_once() {
    let mut system = System::start_with(true, &["--request-timeout-ms", "800"]).await;
    // 1. The connection drops right after the frame is sent: the commit happens,
    //    the ack is lost with the socket.
    let mut ws = system.client_as("ada").await;
    let say = json!({"id": 1, "to": "chat", "op": "say",
        "data": {"room": "r", "text": "once", "idempotency_key": "m-1"}});
    ws.send_text(&say.to_string()).await;
    drop(ws);
    assert!(
        eventually(Duration::from_secs(10), || async {
            rows_with_text(&system, "once").await == 1
        })
        .await,
        "the first attempt committed"
    );
    let mut ws = system.client_as("ada").await;
    let retry = ws
        .ok(
            "chat",
            "say",
            json!({"room": "r", "text": "once", "idempotency_key": "m-1"}),
        )
        .await;
    assert_eq!(retry["duplicate"], json!(true), "{retry}");
    assert_eq!(rows_with_text(&system, "once").await, 1);
    // Another user's same key is another message.
    let mut bob = system.client_as("bob").await;
    let other = bob
        .ok(
            "chat",
            "say",
            json!({"room": "r", "text": "once", "idempotency_key": "m-1"}),
        )
        .await;
    assert!(other.get("duplicate").is_none(), "{other}");
    assert_eq!(rows_with_text(&system, "once").await, 2);

    // 2. The db process stalls: the client's request times out with its outcome
    //    unknown. After the db resumes, the retry with the same key stores at most
    //    one message in all.
    let db = system.proc("db").pid();
    switchboard_testkit::signal_pid(db, nix::sys::signal::Signal::SIGSTOP);
    let stalled = json!({"room": "r", "text": "stalled", "idempotency_key": "m-2"});
    let first = ws.request(Some("chat"), "say", stalled.clone()).await;
    switchboard_testkit::signal_pid(db, nix::sys::signal::Signal::SIGCONT);
    assert_eq!(first["ok"], json!(false), "{first}");
    let mut stored = None;
    for _ in 0..20 {
        let retry = ws.request(Some("chat"), "say", stalled.clone()).await;
        if retry["ok"] == json!(true) {
            stored = Some(retry);
            break;
        }
    }
    assert!(stored.is_some(), "a retry succeeds once the db is back");
    assert_eq!(rows_with_text(&system, "stalled").await, 1);
    // A key that cannot be stored is refused before anything is.
    assert_eq!(
        ws.err(
            Some("chat"),
            "say",
            json!({"room": "r", "text": "x", "idempotency_key": "k".repeat(65)})
        )
        .await,
        "bad_request"
    );
}

/// A routing key (`room`, `zone`) longer than the bus allows is refused at once
/// with `bad_request`; the broker would drop the frame, and the client would wait
/// for its deadline.
#[tokio::test]
async fn an_oversize_routing_key_is_refused_at_once() {
    let system = System::start(true).await;
    let mut ws = system.client_as("ada").await;
    let started = std::time::Instant::now();
    let room = "r".repeat(300);
    assert_eq!(
        ws.err(Some("chat"), "join", json!({"room": room})).await,
        "bad_request"
    );
    assert_eq!(
        ws.err(
            Some("loc"),
            "move",
            json!({"zone": "z".repeat(257), "x": 1, "y": 1})
        )
        .await,
        "bad_request"
    );
    // Well within the 5 s request deadline (the failure was a wait for it).
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        ws.ok("chat", "join", json!({"room": "ok"})).await["room"],
        "ok"
    );
}

/// `sbctl token` mints what the gateway accepts: its `sub` is the user, with the
/// gateway's audience when it requires one; the wrong secret or audience is refused.
#[tokio::test]
async fn sbctl_token_is_accepted_by_the_gateway() {
    let system = System::start_with(true, &["--token-audience", "web"]).await;
    // The secret in the environment, as the gateway takes it.
    let mint_with = |args: &[&str], secret: Option<&str>| {
        let mut cmd = std::process::Command::new(bin_path("sbctl"));
        cmd.arg("token")
            .args(args)
            .env_remove("SB_AUTH_SECRET")
            .env_remove("SB_AUTH_SECRET_FILE");
        if let Some(secret) = secret {
            cmd.env("SB_AUTH_SECRET", secret);
        }
        let out = cmd
            .env_remove("SB_TOKEN_AUDIENCE")
            .env_remove("SB_TOKEN_ISSUER")
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let mint = |args: &[&str]| mint_with(args, Some(AUTH_SECRET));
    let (code, token, err) = mint(&["--sub", "ada", "--exp", "10m", "--aud", "web"]);
    assert_eq!(code, Some(0), "{err}");
    let mut ada = Ws::connect(&format!("{}/ws?token={token}", system.ws))
        .await
        .expect("the gateway accepts the minted token");
    let said = ada
        .ok("chat", "say", json!({"room": "tok", "text": "hello"}))
        .await;
    let history = ada.ok("chat", "history", json!({"room": "tok"})).await;
    assert_eq!(history["messages"][0]["seq"], said["seq"]);
    assert_eq!(
        history["messages"][0]["user"], "ada",
        "the token's sub is the user"
    );

    // The same through the `auth` op, on a connection opened without a token.
    let (_, bob_token, _) = mint(&["--sub", "bob", "--aud", "web"]);
    let mut anon = Ws::connect(&format!("{}/ws", system.ws)).await.unwrap();
    let auth = anon.ok_gateway("auth", json!({"token": bob_token})).await;
    assert_eq!(auth["user"], "bob");

    // Minted without the audience the gateway requires, or with another secret:
    // refused before the upgrade.
    for (args, secret) in [
        (vec!["--sub", "eve"], AUTH_SECRET),
        (vec!["--sub", "eve", "--aud", "web"], "guess"),
    ] {
        let (code, token, err) = mint_with(&args, Some(secret));
        assert_eq!(code, Some(0), "{err}");
        let refused = Ws::connect(&format!("{}/ws?token={token}", system.ws)).await;
        assert!(refused.is_err(), "{args:?} must be refused");
    }

    // No secret anywhere: a usage error that says how to set one.
    let (code, token, err) = mint_with(&["--sub", "ada"], None);
    assert_eq!(code, Some(64), "{token}");
    assert!(err.contains("SB_AUTH_SECRET"), "{err}");
    // A sub the gateway would refuse is refused at once.
    let (code, _, err) = mint(&["--sub", "a.b"]);
    assert_eq!(code, Some(64), "{err}");
}
