//! Attacks on what a client's input can make grow: metric labels, calls made on
//! its behalf, subscriptions and requests in flight. Each is written as the
//! attack, against the real processes.

use futures::SinkExt;
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Args, System, Ws};
use crate::observe::get;

/// The gateway's `http://127.0.0.1:PORT`.
fn http(system: &System) -> String {
    system.ws.replace("ws://", "http://")
}

/// Sends `frames` requests without waiting, then collects as many replies.
async fn flood(ws: &mut Ws, frames: impl IntoIterator<Item = Value>) -> Vec<Value> {
    let mut ids = Vec::new();
    for frame in frames {
        ids.push(frame["id"].clone());
        ws.send_text(&frame.to_string()).await;
    }
    let mut replies = Vec::new();
    for id in ids {
        replies.push(ws.reply_for(&id).await);
    }
    replies
}

/// Made-up service names (the default policy opens every name) used to become
/// metric labels: 3,500 of them took `/metrics` from 8 KB to 8 MB, and past the
/// bus's message limit the gateway's `$metrics` answer cost it its bus
/// connection. Now a name the policy does not list is counted as `other`.
#[tokio::test]
async fn made_up_service_names_never_become_metric_labels() {
    let system = System::start_with(
        false,
        &["--rate-per-sec", "100000", "--rate-burst", "100000"],
    )
    .await;
    let mut eve = Ws::connect(&format!("{}/ws", system.ws)).await.unwrap();
    let (_, before) = get(&http(&system), "/metrics").await;
    // 40 rounds of 50: within the connection's 64 requests in flight.
    for round in 0..40 {
        let frames = (0..50).map(|i| {
            json!({"id": round * 1000 + i, "to": format!("made-up-{round}-{i}"), "op": "x", "data": {}})
        });
        let replies = flood(&mut eve, frames).await;
        assert!(
            replies
                .iter()
                .all(|r| r["error"]["code"] == "unknown_service"),
            "{:?}",
            &replies[..1]
        );
    }
    let (status, after) = get(&http(&system), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        !after.contains("made-up-"),
        "a client's name became a label"
    );
    assert!(
        after.contains(r#"service="other""#),
        "the requests are still counted: {after}"
    );
    assert!(
        after.len() < before.len() + 8 * 1024,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
}

/// chat `relay` calls another service on a client's behalf. It denied only `db`
/// and `main` and never looked at the op: through it a client read the
/// gateway's `$metrics` and `$health`, chat's `$info`, loc's `$health`. It now
/// applies the gateway's client policy: what a client may not call, it may not
/// relay.
#[tokio::test]
async fn relay_opens_nothing_the_policy_keeps_closed() {
    let system = System::start(false).await;
    let mut eve = Ws::connect(&format!("{}/ws", system.ws)).await.unwrap();
    for (to, op) in [
        ("receive", "$metrics"),
        ("receive", "$health"),
        ("receive", "$trace"),
        ("chat", "$info"),
        ("chat", "$trace"),
        ("loc", "$health"),
        ("loc", "$metrics"),
        ("db", "chat.history"),
        ("main", "ls"),
        ("$broker", "ls"),
    ] {
        let reply = eve
            .request(
                Some("chat"),
                "relay",
                json!({"to": to, "op": op, "data": {}}),
            )
            .await;
        assert_eq!(
            reply["error"]["code"], "forbidden",
            "relay to {to}.{op}: {reply}"
        );
    }
    // What the policy opens still goes through.
    let data = eve
        .ok(
            "chat",
            "relay",
            json!({"to": "loc", "op": "$echo", "data": {"x": 1}}),
        )
        .await;
    assert_eq!(data, json!({"x": 1}));
}

/// An operator closes a service in the policy file (`open = false`): before,
/// a client still reached it through `relay`.
#[tokio::test]
async fn relay_respects_a_service_the_operator_closed() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    let text = format!(
        "{}\n[services.billing]\nopen = false\n",
        switchboard_gateway::policy::DEFAULT_POLICY
    );
    std::fs::write(&policy, text).unwrap();
    let policy = policy.to_str().unwrap();
    let args = Args {
        gateway: &["--policy", policy],
        chat: &["--policy", policy],
        ..Args::default()
    };
    let system = System::start_args(false, &args).await;
    let _billing = switchboard_testkit::spawn_echo(&system.broker, "billing", "billing", None);
    assert!(
        switchboard_testkit::wait_ready(&system.bus, "billing", Duration::from_secs(10)).await,
        "billing ready"
    );
    let mut eve = Ws::connect(&format!("{}/ws", system.ws)).await.unwrap();
    assert_eq!(
        eve.err(Some("billing"), "$echo", json!({})).await,
        "forbidden"
    );
    let reply = eve
        .request(
            Some("chat"),
            "relay",
            json!({"to": "billing", "op": "$echo", "data": {"refund": 100}}),
        )
        .await;
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
}

/// A relayed `loc.move` skipped keyed routing and landed on whichever loc
/// instance was least busy, not the zone's owner: the zone's readers never saw
/// the position. It now carries the routing key the policy names.
#[tokio::test]
async fn a_relayed_move_reaches_the_instance_that_owns_the_zone() {
    let system = System::start(false).await;
    let mut ada = Ws::connect(&format!("{}/ws", system.ws)).await.unwrap();
    let me = ada.ok_gateway("whoami", json!({})).await["user"].clone();
    // Eight zones: with two instances, a move that ignores ownership lands on
    // the wrong one for some of them (all eight right by chance: 1 in 256).
    for i in 0..8 {
        let zone = format!("relayed-{i}");
        ada.ok(
            "chat",
            "relay",
            json!({"to": "loc", "op": "move", "data": {"zone": zone, "x": 1.0, "y": 2.0}}),
        )
        .await;
        let users = ada.ok("loc", "zone", json!({"zone": zone})).await["users"].clone();
        let found = users
            .as_array()
            .is_some_and(|u| u.iter().any(|x| x == &me || x["user"] == me));
        assert!(found, "zone {zone}: {users}");
    }
}

/// What a hoard of topics got: subscriptions answered `ok`, and the codes of
/// those refused (`closed`: the gateway closed the connection instead, with
/// 1013, as it does when a client's own `user.<id>` cannot be subscribed).
struct Hoard {
    conns: Vec<Ws>,
    ok: usize,
    refused: Vec<String>,
}

/// `count` anonymous connections from `source`, each subscribing to as many
/// made-up rooms as its own cap lets it (63 beside its `user.<id>`).
async fn hoard_topics(system: &System, source: Ipv4Addr, count: usize) -> Hoard {
    let url = format!("{}/ws", system.ws);
    let mut hoard = Hoard {
        conns: Vec::new(),
        ok: 0,
        refused: Vec::new(),
    };
    for c in 0..count {
        let mut ws = Ws::connect_from(&url, source).await;
        let mut sent = 0;
        for i in 0..63 {
            let topic = format!("chat.room.hoard-{source}-{c}-{i}");
            let frame = json!({"id": format!("h{i}"), "op": "subscribe", "topic": topic});
            if ws
                .stream
                .send(Message::Text(frame.to_string().into()))
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        let mut answered = 0;
        while answered < sent {
            match ws.next_frame(Duration::from_secs(5)).await {
                Some(frame) if frame.get("id").is_some() => {
                    answered += 1;
                    if frame["ok"] == json!(true) {
                        hoard.ok += 1;
                    } else {
                        let code = frame["error"]["code"].as_str().unwrap_or_default();
                        hoard.refused.push(code.to_owned());
                    }
                }
                Some(_) => {}
                None => {
                    hoard.refused.push("closed".into());
                    break;
                }
            }
        }
        hoard.conns.push(ws);
    }
    hoard
}

/// Whether `listener` (already joined to `room`) hears a `say` from `speaker`.
async fn hears(listener: &mut Ws, speaker: &mut Ws, room: &str) -> bool {
    speaker
        .ok(
            "chat",
            "say",
            json!({"room": room, "text": "can you hear me"}),
        )
        .await;
    listener.event(&format!("chat.room.{room}")).await.is_some()
}

/// The broker caps the subscriptions of one peer (a gateway is one peer for
/// all its clients) and used to drop the rest without a word, while the
/// gateway answered `ok`: idle connections hoarding topics cut every new client
/// off its rooms and direct messages, silently. Now the broker answers a
/// refused subscription, and the gateway passes it on: no `ok` is a lie.
#[tokio::test]
async fn a_subscription_the_broker_refuses_is_never_answered_ok() {
    let args = Args {
        broker: &["--max-subs-per-peer", "300"],
        ..Args::default()
    };
    let system = System::start_args(false, &args).await;
    // Six connections ask for 6 × 64 = 384 topics: past the broker's 300.
    let hoard = hoard_topics(&system, Ipv4Addr::new(127, 0, 0, 1), 6).await;
    assert!(
        hoard.ok < 300
            && hoard
                .refused
                .iter()
                .all(|c| c == "overloaded" || c == "closed"),
        "past the broker's cap, subscriptions are refused out loud: {} ok, {:?}",
        hoard.ok,
        hoard.refused
    );
    // A newcomer is refused out loud too: closed with 1013 at once (its own
    // `user.<id>` cannot be held), or its join refused. Never an `ok` for a
    // room it will not hear.
    let url = format!("{}/ws", system.ws);
    let mut ada = Ws::connect_from(&url, Ipv4Addr::new(127, 0, 0, 2)).await;
    let join = json!({"id": "j", "to": "chat", "op": "join", "data": {"room": "lobby"}});
    let _ = ada
        .stream
        .send(Message::Text(join.to_string().into()))
        .await;
    if let Some(joined) = ada.next_frame(Duration::from_secs(5)).await {
        assert_eq!(joined["error"]["code"], "overloaded", "{joined}");
    }
}

/// The same hoard against the gateway's own caps: one address may bring in
/// only its share of the gateway's topics, so clients from elsewhere still
/// join their rooms and hear them.
#[tokio::test]
async fn one_address_cannot_spend_every_clients_topics() {
    let args = Args {
        broker: &["--max-subs-per-peer", "400"],
        gateway: &["--max-topics", "380", "--max-topics-per-ip", "150"],
        ..Args::default()
    };
    let system = System::start_args(false, &args).await;
    let hoard = hoard_topics(&system, Ipv4Addr::new(127, 0, 0, 1), 6).await;
    assert!(
        hoard.ok <= 150 && !hoard.refused.is_empty(),
        "{} ok, refused {:?}",
        hoard.ok,
        hoard.refused
    );
    assert_eq!(hoard.conns.len(), 6);
    let url = format!("{}/ws", system.ws);
    let mut ada = Ws::connect_from(&url, Ipv4Addr::new(127, 0, 0, 2)).await;
    let mut bob = Ws::connect_from(&url, Ipv4Addr::new(127, 0, 0, 3)).await;
    ada.ok("chat", "join", json!({"room": "lobby"})).await;
    assert!(
        hears(&mut ada, &mut bob, "lobby").await,
        "ada hears the room"
    );
    // bob's direct messages reach him (his `user.<id>` was subscribed).
    let bob_id = bob.ok_gateway("whoami", json!({})).await["user"].clone();
    ada.ok("chat", "dm", json!({"user": bob_id, "text": "hi"}))
        .await;
    assert!(bob
        .event(&format!("user.{}", bob_id.as_str().unwrap()))
        .await
        .is_some());
}

/// All clients of a gateway share one budget of requests in flight at the
/// broker. While loc is down its requests are held, and one user's flood of
/// them used to spend that budget: everyone's `history` failed `overloaded`.
/// Now a user (and an address) gets a share of it.
#[tokio::test]
async fn one_users_flood_of_held_requests_leaves_others_served() {
    let args = Args {
        broker: &["--max-inflight-per-client", "300"],
        gateway: &["--max-inflight-per-user", "100"],
        ..Args::default()
    };
    let mut system = System::start_args(true, &args).await;
    for loc in ["loc01", "loc02"] {
        system
            .proc(loc)
            .signal(switchboard_testkit::Sig::SIGKILL)
            .unwrap();
    }
    assert!(
        switchboard_testkit::eventually(Duration::from_secs(15), || async {
            !switchboard_testkit::broker_ls(&system.bus)
                .await
                .iter()
                .any(|i| i.service == "loc")
        })
        .await,
        "loc is gone from the broker"
    );
    // eve: six connections, 60 moves each, held until loc comes back.
    let mut eves = Vec::new();
    for _ in 0..6 {
        let mut eve = system.client_as("eve").await;
        for i in 0..60 {
            let frame = json!({"id": format!("m{i}"), "to": "loc", "op": "move", "data": {"zone": "z", "x": 1.0, "y": 1.0}});
            eve.send_text(&frame.to_string()).await;
        }
        // Answered after the frames before it were read and sent on.
        eve.ok_gateway("ping", json!({})).await;
        eves.push(eve);
    }
    let mut bob = system.client_as("bob").await;
    let history = bob
        .request(Some("chat"), "history", json!({"room": "lobby"}))
        .await;
    assert_eq!(history["ok"], json!(true), "bob is served: {history}");
}

/// A WebSocket client whose handshake carries `X-Forwarded-For: forwarded`,
/// from the local address `source`.
async fn connect_forwarded(system: &System, source: Ipv4Addr, forwarded: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/ws", system.ws);
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", forwarded.parse().unwrap());
    let addr = system.ws.trim_start_matches("ws://").to_owned();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    let tcp = socket.connect(addr.parse().unwrap()).await.unwrap();
    let (stream, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
    Ws::from_stream(stream)
}

/// How many of `count` new topics `ws` was allowed to subscribe.
async fn subscribed(ws: &mut Ws, tag: &str, count: usize) -> usize {
    let frames = (0..count).map(|i| {
        json!({"id": format!("{tag}{i}"), "op": "subscribe", "topic": format!("chat.room.{tag}-{i}")})
    });
    flood(ws, frames)
        .await
        .iter()
        .filter(|r| r["ok"] == json!(true))
        .count()
}

/// Behind a load balancer every client has the proxy's address, so the
/// per-address shares counted the proxy: one busy proxy was one client. With
/// `--trusted-proxies`, the proxy's `X-Forwarded-For` names the client; anyone
/// else's is ignored (a client cannot choose its own address).
#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_share() {
    let args = Args {
        gateway: &[
            "--trusted-proxies",
            "127.0.0.1/32",
            "--max-topics-per-ip",
            "20",
        ],
        ..Args::default()
    };
    let system = System::start_args(false, &args).await;
    let proxy = Ipv4Addr::new(127, 0, 0, 1);
    // Two clients through the proxy: each its own share of 20 (its own
    // user.<id> is outside the shares).
    let mut ada = connect_forwarded(&system, proxy, "203.0.113.1").await;
    assert_eq!(subscribed(&mut ada, "ada", 30).await, 20, "ada's share");
    let mut bob = connect_forwarded(&system, proxy, "203.0.113.2").await;
    assert_eq!(subscribed(&mut bob, "bob", 10).await, 10, "bob's own share");
    // Not a trusted proxy: the header is ignored, both count under 127.0.0.2.
    let other = Ipv4Addr::new(127, 0, 0, 2);
    let mut eve1 = connect_forwarded(&system, other, "203.0.113.3").await;
    let mut eve2 = connect_forwarded(&system, other, "203.0.113.4").await;
    let got = subscribed(&mut eve1, "eve1", 15).await + subscribed(&mut eve2, "eve2", 15).await;
    assert_eq!(got, 20, "one share for 127.0.0.2");
}

/// A scraper or probe that keeps its HTTP connection alive between requests is
/// closed at the handshake deadline; that was counted as a handshake timeout,
/// hiding real stalls among routine scrapes.
#[tokio::test]
async fn a_kept_alive_scrape_is_not_a_handshake_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Two answers within the deadline even on a loaded machine; then idle.
    let system = System::start_with(false, &["--handshake-timeout-ms", "2000"]).await;
    let addr = system.ws.trim_start_matches("ws://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    for round in 0..2 {
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // One whole answer: the head, then Content-Length bytes of body.
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        let complete = |got: &[u8]| {
            let text = String::from_utf8_lossy(got);
            let (head, body) = text.split_once("\r\n\r\n")?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })?
                .parse()
                .ok()?;
            (body.len() >= len).then_some(head.starts_with("HTTP/1.1 200"))
        };
        let ok = loop {
            if let Some(ok) = complete(&got) {
                break ok;
            }
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "answer {round}: the connection closed: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        };
        assert!(
            ok,
            "answer {round}: {:?}",
            String::from_utf8_lossy(&got[..got.len().min(200)])
        );
    }
    // Kept alive, then closed by the gateway at the deadline.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest))
        .await
        .expect("closed at the deadline")
        .ok();
    let (_, health) = get(&http(&system), "/health").await;
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["handshake_timeouts"], json!(0), "{health}");
}

/// One address used to be able to hold every connection of the gateway (18,686
/// of them in the review, new clients and the probes then got 503). Now an
/// address holds at most `--max-connections-per-ip`; past it a connection is
/// closed with 1013 and other addresses still get in.
#[tokio::test]
async fn one_address_cannot_hold_every_connection() {
    let system = System::start_with(false, &["--max-connections-per-ip", "5"]).await;
    let url = format!("{}/ws", system.ws);
    let flood = Ipv4Addr::new(127, 0, 0, 1);
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut ws = Ws::connect_from(&url, flood).await;
        ws.ok_gateway("ping", json!({})).await;
        held.push(ws);
    }
    let mut sixth = Ws::connect_from(&url, flood).await;
    assert_eq!(sixth.close_code().await, Some(1013));
    let mut other = Ws::connect_from(&url, Ipv4Addr::new(127, 0, 0, 2)).await;
    other.ok("chat", "join", json!({"room": "lobby"})).await;
    // A connection gone gives its place back.
    drop(held.pop());
    assert!(
        switchboard_testkit::eventually(Duration::from_secs(5), || async {
            let mut ws = Ws::connect_from(&url, flood).await;
            let ping = json!({"id": "p", "op": "ping"}).to_string();
            let _ = ws.stream.send(Message::Text(ping.into())).await;
            ws.next_frame(Duration::from_secs(2))
                .await
                .is_some_and(|r| r["ok"] == json!(true))
        })
        .await
    );
}

/// An address's requests in flight are its own until they end, whatever
/// becomes of the connection that sent them: a client that fills its share
/// with slow requests and then has itself closed (an over-size frame: a
/// close that does not wait for them) finds the share still full when it
/// reconnects. Before, the address's entry went with its last connection,
/// and each reconnect brought a fresh share: round after round, one address
/// could hold the gateway's whole budget at the broker.
#[tokio::test]
async fn reconnecting_does_not_renew_an_address_s_share_of_requests() {
    use switchboard_testkit::Sig;
    let mut system = System::start_with(
        false,
        &[
            "--max-inflight-per-ip",
            "3",
            "--request-timeout-ms",
            "15000",
        ],
    )
    .await;
    let url = format!("{}/ws", system.ws);
    // loc stops answering: its requests stay in flight until their deadline.
    for loc in ["loc01", "loc02"] {
        system.proc(loc).signal(Sig::SIGSTOP).unwrap();
    }
    let mut first = Ws::connect(&url).await.unwrap();
    for id in 0..3 {
        let frame =
            json!({"id": id, "to": "loc", "op": "move", "data": {"zone": "z", "x": 1, "y": 1}});
        first.send_text(&frame.to_string()).await;
    }
    // Past its share, at once.
    assert_eq!(
        first
            .err(Some("loc"), "move", json!({"zone": "z", "x": 1, "y": 1}))
            .await,
        "overloaded"
    );
    first
        .send_text(&json!({"id": 9, "to": "chat", "op": "say", "data": {"room": "r", "text": "x".repeat(5000)}}).to_string())
        .await;
    assert_eq!(first.close_code().await, Some(1009));
    let mut again = Ws::connect(&url).await.unwrap();
    assert_eq!(
        again.err(Some("chat"), "$echo", json!({})).await,
        "overloaded",
        "a new connection from the address, its three requests still in flight"
    );
    for loc in ["loc01", "loc02"] {
        system.proc(loc).signal(Sig::SIGCONT).unwrap();
    }
    // Once they end (loc answers them now), the share is back.
    let mut answered = false;
    for _ in 0..120 {
        let reply = again.request(Some("chat"), "$echo", json!({"n": 1})).await;
        if reply["ok"] == json!(true) {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(answered, "the share came back when the requests ended");
}
