//! The gateway's own contract: errors, limits, authentication, health, shutdown.

use serde_json::json;
use std::time::Duration;
use switchboard_testkit::Sig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{System, Ws};

#[tokio::test]
async fn bad_input_gets_documented_errors_and_the_connection_stays() {
    let system = System::start(true).await;
    let mut ws = system.client_as("ada").await;
    ws.send_text("this is not json").await;
    let reply = ws.next_frame(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (reply["ok"].clone(), reply["error"]["code"].clone()),
        (json!(false), json!("bad_request"))
    );
    assert_eq!(
        ws.err(Some("nosuch"), "x", json!({})).await,
        "unknown_service"
    );
    assert_eq!(ws.err(Some("chat"), "dance", json!({})).await, "unknown_op");
    assert_eq!(ws.err(None, "dance", json!({})).await, "unknown_op");
    assert_eq!(
        ws.err(Some("db"), "chat.save", json!({})).await,
        "forbidden"
    );
    assert_eq!(ws.err(Some("$broker"), "ls", json!({})).await, "forbidden");
    assert_eq!(
        ws.err(None, "subscribe", json!({"topic": "session.close"}))
            .await,
        "forbidden"
    );
    assert_eq!(
        ws.err(None, "subscribe", json!({"topic": "user.bob"}))
            .await,
        "forbidden"
    );
    // Ids are echoed verbatim, strings too.
    ws.send_text(r#"{"id": "abc-1", "op": "ping"}"#).await;
    let pong = ws.next_frame(Duration::from_secs(5)).await.unwrap();
    assert_eq!(pong, json!({"id": "abc-1", "ok": true, "data": {}}));
    // Still fully working.
    assert_eq!(
        ws.ok("chat", "join", json!({"room": "r1"})).await["room"],
        "r1"
    );

    // An over-size frame closes with 1009; other clients are unaffected.
    let mut other = system.client_as("bob").await;
    ws.send_text(&json!({"id": 1, "to": "chat", "op": "say", "data": {"room": "r1", "text": "x".repeat(5000)}}).to_string()).await;
    assert_eq!(ws.close_code().await, Some(1009));
    assert_eq!(
        other.ok("chat", "join", json!({"room": "r2"})).await["members"],
        json!(["bob"])
    );
}

#[tokio::test]
async fn missing_or_forged_tokens_are_refused() {
    let system = System::start(true).await;
    // Forged token in the query: refused before the upgrade.
    let forged = switchboard_gateway::jwt::sign(b"not-the-secret", &json!({"sub": "mallory"}));
    let err = Ws::connect(&format!("{}/ws?token={forged}", system.ws))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("401"), "{err}");
    // No token: connected, but nothing but ping and auth.
    let mut ws = Ws::connect(&format!("{}/uws/app", system.ws))
        .await
        .unwrap();
    assert_eq!(ws.request(None, "ping", json!({})).await["ok"], json!(true));
    assert_eq!(
        ws.err(Some("chat"), "join", json!({"room": "x"})).await,
        "unauthorized"
    );
    assert_eq!(
        ws.err(None, "auth", json!({"token": forged})).await,
        "unauthorized"
    );
    // A good token through the auth op.
    let auth = ws
        .request(None, "auth", json!({"token": System::token("eve")}))
        .await;
    assert_eq!(auth["data"]["user"], "eve");
    assert_eq!(
        ws.ok("chat", "join", json!({"room": "x"})).await["members"],
        json!(["eve"])
    );
}

#[tokio::test]
async fn open_gateway_gives_each_connection_its_own_anonymous_user() {
    let system = System::start(false).await;
    let mut a = Ws::connect(&format!("{}/ws", system.ws)).await.unwrap();
    let mut b = Ws::connect(&format!("{}/ws", system.ws)).await.unwrap();
    let ma = a.ok("chat", "join", json!({"room": "anon"})).await["members"].clone();
    let mb = b.ok("chat", "join", json!({"room": "anon"})).await["members"].clone();
    assert_eq!(ma.as_array().unwrap().len(), 1);
    assert_eq!(mb.as_array().unwrap().len(), 2);
    assert!(mb
        .as_array()
        .unwrap()
        .iter()
        .all(|u| u.as_str().unwrap().starts_with("anon-")));
}

#[tokio::test]
async fn health_endpoint_and_sigterm_close_1001() {
    let mut system = System::start(true).await;
    let addr = system.ws.trim_start_matches("ws://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body: serde_json::Value =
        serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["status"], "ok");

    let mut ws = system.client_as("ada").await;
    ws.ok("chat", "join", json!({"room": "bye"})).await;
    let receive = system.proc("receive");
    receive.signal(Sig::SIGTERM).unwrap();
    // First a goaway notice; what the client sends until it sees it (and a little
    // after) is still answered; then 1001.
    let notice = ws.next_frame(Duration::from_secs(5)).await.unwrap();
    assert!(notice.get("goaway").is_some(), "{notice}");
    let reply = ws
        .request(Some("chat"), "who", json!({"room": "bye"}))
        .await;
    assert_eq!(
        reply["ok"],
        json!(true),
        "answered during the goaway window: {reply}"
    );
    assert_eq!(ws.close_code().await, Some(1001));
    assert!(
        receive
            .wait_exit(Duration::from_secs(15))
            .is_some_and(|s| s.success()),
        "receive exits 0"
    );
}

/// A new service's topics, opened by a policy file that extends the built-in
/// policy (the docs' "Opening it to clients"): the new topic is open, the
/// built-in entries stay (chat's topics open, db closed), and `user.…` stays
/// closed whatever the file says. Before `extends`, a file replaced the whole
/// policy, and without one `shouter.news` was forbidden.
#[tokio::test]
async fn a_policy_that_extends_the_built_in_one_opens_a_new_service_s_topics() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "extends = \"builtin\"\n[services.shouter]\nsubscribe = [\"shouter.>\", \"user.>\"]\n",
    )
    .unwrap();
    let system = System::start_with(false, &["--policy", policy.to_str().unwrap()]).await;
    let mut ws = Ws::connect(&format!("{}/ws", system.ws)).await.unwrap();
    ws.ok_gateway("subscribe", json!({"topic": "shouter.news"}))
        .await;
    ws.ok_gateway("subscribe", json!({"topic": "chat.room.lobby"}))
        .await;
    assert_eq!(
        ws.err(Some("db"), "chat.save", json!({})).await,
        "forbidden"
    );
    assert_eq!(
        ws.err(None, "subscribe", json!({"topic": "user.bob"}))
            .await,
        "forbidden"
    );
}

/// With `--threads 2` the bus runs on a thread of its own and the gateway
/// answers each reply on its own runtime (conn/reply.rs): every kind of reply
/// — plain, error, with grants, large — still arrives, many in flight at once,
/// and what each request held is given back.
#[tokio::test]
async fn a_gateway_on_several_threads_answers_every_kind_of_reply() {
    let system =
        System::start_with(false, &["--threads", "2", "--max-frame-bytes", "300000"]).await;
    let mut ws = Ws::connect(&format!("{}/ws", system.ws)).await.unwrap();
    // With grants: join subscribes the connection to the room.
    ws.ok("chat", "join", json!({"room": "threads"})).await;
    ws.ok("chat", "say", json!({"room": "threads", "text": "hi"}))
        .await;
    let said = ws
        .event("chat.room.threads")
        .await
        .expect("the room's event");
    assert_eq!(said["text"], json!("hi"), "{said}");
    // An error reply.
    assert_eq!(ws.err(Some("chat"), "nope", json!({})).await, "unknown_op");
    // Large: transcoded off the runtime thread.
    let big = "x".repeat(100_000);
    let echoed = ws.ok("chat", "$echo", json!({ "big": big })).await;
    assert_eq!(echoed["big"].as_str().map(str::len), Some(100_000));
    // Many in flight at once, answered each under its own id.
    for round in 0..3 {
        for i in 0..60 {
            let frame = json!({"id": i, "to": "chat", "op": "$echo", "data": {"n": i}});
            ws.send_text(&frame.to_string()).await;
        }
        for i in 0..60 {
            let reply = ws.reply_for(&json!(i)).await;
            assert_eq!(reply["data"]["n"], json!(i), "round {round}: {reply}");
        }
    }
    // Nothing is still held: more error replies and grants than the
    // connection's in-flight cap (64), one after another, then a request.
    for i in 0..100 {
        assert_eq!(ws.err(Some("chat"), "nope", json!({})).await, "unknown_op");
        ws.ok("chat", "join", json!({"room": format!("t{}", i % 8)}))
            .await;
    }
    assert_eq!(ws.ok_gateway("ping", json!({})).await, json!({}));
    ws.ok("chat", "say", json!({"room": "threads", "text": "still"}))
        .await;
}
