//! Several hosts for real: network namespaces joined by veth pairs and a bridge
//! (`switchboard_testkit::netns`), a main per host, one broker, the bus
//! authenticated with a secret on every hop, MariaDB reached over the veth
//! through a relay on the bridge. Skipped, saying why, where namespaces cannot
//! be made (they need root; CI runs as root).

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use switchboard_bus::proto;
use switchboard_bus::CallOptions;
use switchboard_testkit::netns::Lab;
use switchboard_testkit::{bin_path, broker_ls, client, eventually, Child, TcpRelay, TestDatabase};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "netns-bus-secret";

fn app(name: &str, bin: &str, args: &[&str], extra: &str) -> String {
    format!(
        "[[apps]]\nname = \"{name}\"\nbin = \"{}\"\nargs = {}\nrestart_delay_ms = 100\n{extra}\n",
        bin_path(bin).display(),
        serde_json::to_string(args).unwrap()
    )
}

/// main on host `h` with `text` as its ecosystem file (in a folder of its
/// own: its run folder is beside it).
fn main_on(lab: &Lab, h: usize, dir: &std::path::Path, text: &str) -> Child {
    main_with_env(lab, h, dir, text, &[])
}

fn main_with_env(
    lab: &Lab,
    h: usize,
    dir: &std::path::Path,
    text: &str,
    env: &[(&str, &str)],
) -> Child {
    let folder = dir.join(format!("host{h}"));
    std::fs::create_dir_all(&folder).unwrap();
    let file = folder.join("ecosystem.toml");
    std::fs::write(&file, text).unwrap();
    let mut env = env.to_vec();
    env.push(("SB_SECRET", SECRET));
    lab.announcing(h, "main", &["--config", file.to_str().unwrap()], &env)
        .unwrap()
}

fn sbctl(endpoint: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin_path("sbctl"))
        .args(args)
        .env("SB_BROKER", endpoint)
        .env("SB_SECRET", SECRET)
        .output()
        .unwrap()
}

/// Whether every instance in `all` is online, as `sbctl ls` sees it, within 30 s.
async fn all_online(endpoint: &str, all: &[&str]) -> bool {
    eventually(Duration::from_secs(30), || async {
        let rows = ls(endpoint);
        all.iter().all(|i| {
            rows.iter()
                .any(|r| r["instance"] == *i && r["state"] == "online")
        })
    })
    .await
}

fn ls(endpoint: &str) -> Vec<Value> {
    serde_json::from_slice::<Value>(&sbctl(endpoint, &["--json", "ls"]).stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

async fn ws(
    url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket")
        .0
}

async fn next_json(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    want: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let until = Instant::now() + Duration::from_secs(10);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until.into(), ws.next()).await {
        if let Ok(v) = serde_json::from_str::<Value>(msg.to_text().unwrap_or("")) {
            if want(&v) {
                return Some(v);
            }
        }
    }
    None
}

/// Three hosts and a database of this test's own that they reach over their
/// veths (MariaDB listens on this machine's loopback: through a relay on the
/// bridge). `None`, having said why, where namespaces cannot be made.
struct Hosts {
    lab: Lab,
    tdb: TestDatabase,
    relay: TcpRelay,
    db_url: String,
}

fn hosts() -> Option<Hosts> {
    let lab = match Lab::new(3) {
        Ok(lab) => lab,
        Err(why) => {
            eprintln!("skipped: network namespaces cannot be made here ({why}); they need root");
            return None;
        }
    };
    let tdb = TestDatabase::new();
    let relay = TcpRelay::start_on(&format!("{}:0", lab.bridge_ip), "127.0.0.1:3306");
    let (scheme_user, rest) = tdb.url.split_once('@').unwrap();
    let db_name = rest.split_once('/').unwrap().1;
    let db_url = format!("{scheme_user}@{}/{db_name}?prefer_socket=false", relay.addr);
    Some(Hosts {
        lab,
        tdb,
        relay,
        db_url,
    })
}

#[tokio::test]
async fn three_hosts_one_system_across_real_links() {
    let Some(Hosts {
        lab,
        tdb: _tdb,
        relay,
        db_url,
    }) = hosts()
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (&lab.hosts[0].ip, &lab.hosts[1].ip);

    let main_conf = "heartbeat_ms = 250\nliveness = 4\nhttp = \"\"\n";
    let endpoint = format!("tcp://{a}:5555");
    let main_a = main_on(
        &lab,
        0,
        dir.path(),
        &format!(
            "[main]\nhost = \"a\"\nrun_dir = \"run-a\"\n{main_conf}\n[broker]\nbin = \"{}\"\nbind = \"{endpoint}\"\n\n{}{}{}{}",
            bin_path("broker").display(),
            app("db", "db", &[], &format!("env = {{ DATABASE_URL = \"{db_url}\" }}")),
            app("chat", "chat", &[], "depends_on = [\"db\"]"),
            app("receive", "receive", &["--listen", &format!("{a}:3000")], "depends_on = [\"chat\"]"),
            app("svc", "echo", &["--service", "svc"], ""),
        ),
    );
    assert_eq!(main_a.first_line.as_deref(), Some(endpoint.as_str()));
    let _main_b = main_on(
        &lab,
        1,
        dir.path(),
        &format!(
            "[main]\nhost = \"b\"\nrun_dir = \"run-b\"\n{main_conf}\n[broker]\nconnect = \"{endpoint}\"\n\n{}{}",
            app("receive", "receive", &["--listen", &format!("{b}:3000")], ""),
            app("svc", "echo", &["--service", "svc"], ""),
        ),
    );
    let _main_c = main_on(
        &lab,
        2,
        dir.path(),
        &format!(
            "[main]\nhost = \"c\"\nrun_dir = \"run-c\"\n{main_conf}\n[broker]\nconnect = \"{endpoint}\"\n\n{}",
            app("svc", "echo", &["--service", "svc"], ""),
        ),
    );
    let all = [
        "db.a",
        "chat.a",
        "receive.a",
        "svc.a",
        "receive.b",
        "svc.b",
        "svc.c",
    ];
    let online = all_online(&endpoint, &all).await;
    assert!(
        online,
        "{:?}\nmain a: {:?}",
        ls(&endpoint),
        main_a.later_lines()
    );

    // One table: every host's apps, with the host.
    let table = String::from_utf8_lossy(&sbctl(&endpoint, &["ls"]).stdout).into_owned();
    for (host, instance) in [("a", "chat.a"), ("b", "receive.b"), ("c", "svc.c")] {
        assert!(
            table
                .lines()
                .any(|l| l.trim_start().starts_with(host) && l.contains(instance)),
            "{instance} on {host}: {table}"
        );
    }

    // A client on gateway A says; a client on gateway B, another host, hears it.
    let mut ada = ws(&format!("ws://{a}:3000/ws")).await;
    let mut bob = ws(&format!("ws://{b}:3000/ws")).await;
    for (i, client) in [&mut ada, &mut bob].into_iter().enumerate() {
        let join = json!({"id": i, "to": "chat", "op": "join", "data": {"room": "hosts"}});
        client
            .send(Message::Text(join.to_string().into()))
            .await
            .unwrap();
        let reply = next_json(client, |v| v["id"] == i)
            .await
            .expect("join reply");
        assert_eq!(reply["ok"], true, "{reply}");
    }
    let say = json!({"id": 9, "to": "chat", "op": "say", "data": {"room": "hosts", "text": "across hosts"}});
    ada.send(Message::Text(say.to_string().into()))
        .await
        .unwrap();
    let heard = next_json(&mut bob, |v| v["topic"] == "chat.room.hosts").await;
    assert_eq!(
        heard.expect("bob hears ada")["data"]["text"],
        "across hosts"
    );

    // sbctl reload of an app on another host.
    let before = ls(&endpoint)
        .into_iter()
        .find(|r| r["instance"] == "svc.c")
        .unwrap()["pid"]
        .clone();
    let reload = sbctl(&endpoint, &["reload", "svc.c"]);
    assert!(reload.status.success(), "{reload:?}");
    let after = ls(&endpoint)
        .into_iter()
        .find(|r| r["instance"] == "svc.c")
        .unwrap();
    assert_ne!(after["pid"], before);
    assert_eq!(after["host"], "c");

    // Host c's link is cut with a request in flight on it: its caller gets
    // worker_lost within the heartbeat window (3 × 1 s), not at its 20 s
    // deadline; requests go on to the instances that remain; host c rejoins
    // when its link is back.
    let bus = client(&endpoint, "t-netns", Some(SECRET)).await;
    let body = proto::to_body(&json!({"ms": 15_000})).unwrap();
    let pinned = CallOptions {
        instance: Some("svc.c".into()),
        timeout: Some(Duration::from_secs(20)),
        ..CallOptions::default()
    };
    let caller = bus.clone();
    let in_flight = tokio::spawn(async move { caller.call("svc", "sleep", body, pinned).await });
    assert!(
        eventually(Duration::from_secs(5), || async {
            broker_ls(&bus)
                .await
                .iter()
                .any(|i| i.instance == "svc.c" && i.inflight == 1)
        })
        .await
    );
    let cut_at = Instant::now();
    lab.cut(2);
    let lost = in_flight.await.unwrap().expect_err("the host is gone");
    let detected = cut_at.elapsed();
    assert_eq!(lost.code, proto::ErrorCode::WorkerLost, "{lost:?}");
    assert!(
        detected < Duration::from_secs(6),
        "worker_lost after {detected:?}"
    );
    let mut served_by = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let reply = bus
            .call("svc", "whoami", Vec::new(), CallOptions::default())
            .await
            .expect("the remaining instances serve");
        let who: Value = proto::from_body(&reply.body).unwrap();
        served_by.insert(who["instance"].as_str().unwrap_or("?").to_owned());
    }
    assert!(!served_by.contains("svc.c"), "{served_by:?}");
    lab.restore(2);
    let back_at = Instant::now();
    let rejoined = eventually(Duration::from_secs(20), || async {
        broker_ls(&bus)
            .await
            .iter()
            .any(|i| i.instance == "svc.c" && i.state == proto::PeerState::Ready)
    })
    .await;
    assert!(rejoined, "svc.c rejoins");
    eprintln!(
        "netns: say across hosts ok; cut host c: worker_lost after {} ms; rejoined {} ms after the link came back",
        detected.as_millis(),
        back_at.elapsed().as_millis()
    );
    drop(relay);
}

/// A broker pair on two hosts, the services on a third. The primary's host is
/// killed (every process in it, `kill -9`) while a client says things through
/// the gateway: the backup takes over, every request gets an answer (none
/// waits for its deadline), and every acknowledged `say` is in MariaDB.
#[tokio::test]
async fn the_primary_brokers_host_dies_under_load_and_nothing_acknowledged_is_lost() {
    let Some(Hosts {
        lab,
        tdb,
        relay,
        db_url,
    }) = hosts()
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (&lab.hosts[0].ip, &lab.hosts[1].ip, &lab.hosts[2].ip);
    let (ea, eb) = (format!("tcp://{a}:5555"), format!("tcp://{b}:5555"));
    let pair = format!("{ea},{eb}");
    // docs/operations.md's multi-host recipe, as it is in deploy/multi-host/, with
    // this lab's addresses for 10.0.0.1-3.
    let recipe = |host: &str| {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../deploy/multi-host/host-{host}.toml")),
        )
        .unwrap()
        .replace("10.0.0.1", a)
        .replace("10.0.0.2", b)
        .replace("10.0.0.3", c)
    };
    let _main_a = main_on(&lab, 0, dir.path(), &recipe("a"));
    let _main_b = main_on(&lab, 1, dir.path(), &recipe("b"));
    let _main_c = main_with_env(
        &lab,
        2,
        dir.path(),
        &recipe("c"),
        &[("DATABASE_URL", &db_url)],
    );
    let all = ["loc01.a", "loc01.b", "db.c", "chat.c", "receive.c"];
    let online = all_online(&pair, &all).await;
    assert!(online, "{:?}", ls(&pair));
    let settled = eventually(Duration::from_secs(5), || async {
        String::from_utf8_lossy(&sbctl(&pair, &["ls"]).stdout)
            .contains("broker pair: primary active, partner passive")
    })
    .await;
    assert!(
        settled,
        "{}",
        String::from_utf8_lossy(&sbctl(&pair, &["ls"]).stdout)
    );

    // A client says one thing at a time through the gateway on host c, each
    // with its own idempotency key, retrying a failed one with the same key.
    let mut talker = ws(&format!("ws://{c}:3000/ws")).await;
    let mut acked: Vec<u64> = Vec::new();
    let mut codes: Vec<String> = Vec::new();
    let mut unanswered = 0;
    let mut killed_at: Option<Instant> = None;
    let mut recovered: Option<Duration> = None;
    let mut id = 0u64;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(12) && acked.len() < 100_000 {
        if killed_at.is_none() && started.elapsed() > Duration::from_secs(2) {
            lab.kill_host(0);
            killed_at = Some(Instant::now());
        }
        n += 1;
        let key = format!("k{n}");
        loop {
            id += 1;
            let say = json!({"id": id, "to": "chat", "op": "say", "data": {"room": "pair", "text": format!("m{n}"), "idempotency_key": key}});
            talker
                .send(Message::Text(say.to_string().into()))
                .await
                .unwrap();
            match next_json(&mut talker, |v| v["id"] == id).await {
                None => {
                    unanswered += 1;
                    break;
                }
                Some(reply) if reply["ok"] == true => {
                    acked.push(reply["data"]["seq"].as_u64().unwrap());
                    if let (Some(at), None) = (killed_at, recovered) {
                        recovered = Some(at.elapsed());
                    }
                    break;
                }
                Some(reply) => {
                    codes.push(reply["error"]["code"].as_str().unwrap_or("?").to_owned());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    let recovered = recovered.expect("serving again after the primary's host died");
    let bus = client(&pair, "t-pair-netns", Some(SECRET)).await;
    let stats: proto::BrokerStats = bus
        .broker("stats", Vec::new(), CallOptions::default())
        .await
        .unwrap();
    assert!(stats.ha.starts_with("backup active"), "{}", stats.ha);
    // Every acknowledged say is in MariaDB, once.
    let mut conn = mysql_async::Conn::from_url(tdb.url.as_str()).await.unwrap();
    use mysql_async::prelude::Queryable;
    let stored: Vec<u64> = conn
        .query("SELECT seq FROM messages WHERE room = 'pair' ORDER BY seq")
        .await
        .unwrap();
    let lost: Vec<&u64> = acked.iter().filter(|s| !stored.contains(s)).collect();
    eprintln!(
        "netns pair: primary's host killed; serving again after {} ms; {} says acknowledged, {} lost, {} unanswered; errors on the way: {:?}",
        recovered.as_millis(),
        acked.len(),
        lost.len(),
        unanswered,
        codes
    );
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    assert_eq!(unanswered, 0, "every request was answered");
    assert!(
        recovered < Duration::from_secs(3),
        "failover took {recovered:?}"
    );
    // What was in flight when the broker died is answered at once
    // (`unavailable`, or `worker_lost` for a request a dying connection took
    // with it); never left to its deadline.
    assert!(
        !codes.iter().any(|c| c == "timeout"),
        "answered at once, never left to a deadline: {codes:?}"
    );
    assert!(
        codes.len() <= 3,
        "only what was in flight at the kill failed: {codes:?}"
    );
    assert_eq!(stored.len(), acked.len(), "each say stored once");
    drop(relay);
}
