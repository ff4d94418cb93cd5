//! Node services on the bus (`clients/node`, `@switchboard/bus`): its own suite
//! against the real broker; a Node `chat` (clients/node/examples/chat.js) under
//! main beside the Rust db, loc and gateway, serving real WebSocket clients,
//! reloaded under load, killed with -9, and seen by `sbctl ls`, `/metrics` and
//! `sbctl trace`; and a service written for PM2 (examples/pm2-legacy.js), only
//! its require changed, between a WebSocket client and the Rust chat.
//! Skipped, saying so, without Node 20+ or clients/node's npm dependencies
//! (scripts/node-bus-env.sh installs them; scripts/test.sh runs it).

use mysql_async::prelude::Queryable;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_testkit::{bin_path, eventually, free_port, Sig, TestDatabase};

use crate::harness::{System, Ws, AUTH_SECRET};
use crate::supervisor::Supervised;

fn package() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/node")
}

/// Node 20+ with clients/node's dependencies installed, or why not.
fn node() -> Result<PathBuf, &'static str> {
    let node = crate::client_js::node().ok_or("Node 20+ is not installed")?;
    if !package().join("node_modules/zeromq/package.json").exists() {
        return Err("clients/node's dependencies are not installed (scripts/node-bus-env.sh)");
    }
    Ok(node)
}

macro_rules! node_or_skip {
    () => {
        match node() {
            Ok(node) => node,
            Err(why) => {
                eprintln!("skipped: {why}");
                return;
            }
        }
    };
}

/// A system under main: the Rust db, loc and gateway, and `chat_app` (an
/// `[[apps]]` table) beside them.
struct Mixed {
    s: Supervised,
    ws: String,
    db: TestDatabase,
}

fn node_app(name: &str, script: &str, extra: &str) -> String {
    // As docs/migrating-from-pm2.md writes it: `script =` (node, the default
    // interpreter for .js, looked up on PATH).
    format!(
        "[[apps]]\nname = \"{name}\"\nscript = \"{}\"\ndepends_on = [\"db\"]\nrestart_delay_ms = 50\n{extra}\n",
        package().join("examples").join(script).display()
    )
}

impl Mixed {
    async fn start(apps: &str) -> Self {
        let db = TestDatabase::new();
        let port = free_port();
        let text = format!(
            "[[apps]]\nname = \"db\"\nbin = \"{db_bin}\"\nenv = {{ DATABASE_URL = \"{url}\" }}\n\n\
             [[apps]]\nname = \"loc\"\nbin = \"{loc}\"\ndepends_on = [\"db\"]\n\n\
             {apps}\n\
             [[apps]]\nname = \"receive\"\nbin = \"{receive}\"\ndepends_on = [\"chat\", \"loc\"]\n\
             args = [\"--listen\", \"127.0.0.1:{port}\"]\nenv = {{ SB_AUTH_SECRET = \"{AUTH_SECRET}\" }}\n",
            db_bin = bin_path("db").display(),
            url = db.url,
            loc = bin_path("loc").display(),
            receive = bin_path("receive").display(),
        );
        let s = Supervised::start(&text).await;
        let n = text.matches("[[apps]]").count();
        if !s.all_online(n).await {
            for f in ["chat.log", "legacy.log", "receive.log"] {
                let log = std::fs::read_to_string(s.logs_dir().join(f)).unwrap_or_default();
                eprintln!("== {f}\n{log}");
            }
            panic!("not all online: {:?}", s.ls().await);
        }
        Self {
            s,
            ws: format!("ws://127.0.0.1:{port}/ws"),
            db,
        }
    }

    async fn client(&self, user: &str) -> Ws {
        Ws::connect(&format!("{}?token={}", self.ws, System::token(user)))
            .await
            .unwrap()
    }

    fn log(&self, app: &str) -> String {
        std::fs::read_to_string(self.s.logs_dir().join(format!("{app}.log"))).unwrap_or_default()
    }
}

fn pid(v: &Value) -> u32 {
    v["pid"].as_u64().unwrap_or(0) as u32
}

/// `clients/node` packs as an npm package with both entry points, their
/// types and lib/, and without its tests and examples (offline: `npm pack
/// --dry-run`).
#[test]
fn the_node_bus_packs_for_npm() {
    let Ok(out) = Command::new("npm")
        .current_dir(package())
        .args(["pack", "--dry-run", "--json", "--offline"])
        .output()
    else {
        eprintln!("skipped: npm is not installed");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let packed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let files: Vec<&str> = packed[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    for want in [
        "index.js",
        "index.d.ts",
        "pm2.js",
        "pm2.d.ts",
        "lib/bus.js",
        "lib/service.js",
        "lib/wire.js",
        "package.json",
        "README.md",
    ] {
        assert!(files.contains(&want), "{want} in {files:?}");
    }
    assert!(
        !files
            .iter()
            .any(|f| f.starts_with("test/") || f.starts_with("examples/")),
        "tests and examples stay out: {files:?}"
    );
    assert_eq!(packed[0]["name"], "@switchboard/bus");
}

#[test]
fn the_node_bus_suite_passes_against_the_real_broker() {
    let node = node_or_skip!();
    let out = Command::new(node)
        .current_dir(package())
        .args([
            "--test",
            "--test-reporter=spec",
            "test/bus.test.js",
            "test/pm2.test.js",
            "test/types.test.js",
        ])
        .env("SB_TEST_BROKER", bin_path("broker"))
        .env_remove("SB_BROKER")
        .env_remove("SB_SECRET")
        .env_remove("SB_INSTANCE")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Node suite failed (above)");
    assert!(report.contains("ℹ pass 16"), "every test ran");
    assert!(report.contains("ℹ skipped 0"), "none skipped");
}

#[tokio::test]
async fn a_node_chat_serves_websocket_clients_beside_the_rust_services() {
    let _node = node_or_skip!();
    let m = Mixed::start(&node_app("chat", "chat.js", "")).await;
    let chat = m.s.instance("chat").await;
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", pid(&chat))).unwrap();
    assert!(
        cmdline.contains("chat.js"),
        "chat is the Node one: {cmdline:?}"
    );

    let mut ada = m.client("ada").await;
    let mut bob = m.client("bob").await;
    assert_eq!(
        ada.ok("chat", "join", json!({"room": "lobby"})).await["members"],
        json!(["ada"])
    );
    assert_eq!(
        bob.ok("chat", "join", json!({"room": "lobby"})).await["members"],
        json!(["ada", "bob"])
    );
    let said = ada
        .request(
            Some("chat"),
            "say",
            json!({"room": "lobby", "text": "hello from node"}),
        )
        .await;
    assert_eq!(said["ok"], true, "{said}");
    let seq = said["data"]["seq"].as_u64().expect("seq");
    // The grant reached the gateway: both get the event, with the author from the token.
    for client in [&mut ada, &mut bob] {
        let event = client.event("chat.room.lobby").await.expect("event");
        assert_eq!(
            (
                event["seq"].as_u64(),
                event["user"].as_str(),
                event["text"].as_str()
            ),
            (Some(seq), Some("ada"), Some("hello from node"))
        );
    }
    // Committed by the Rust db, read back through the Node chat.
    let history = bob.ok("chat", "history", json!({"room": "lobby"})).await;
    assert_eq!(history["messages"][0]["seq"], json!(seq));
    assert_eq!(
        bob.err(Some("chat"), "say", json!({"room": "lobby", "text": ""}))
            .await,
        "bad_request"
    );
    assert_eq!(bob.err(Some("chat"), "nope", json!({})).await, "unknown_op");
    // Its presence follows the gateway's session.close.
    drop(bob);
    assert!(
        eventually(Duration::from_secs(5), || async {
            m.s.bus
                .call(
                    "chat",
                    "who",
                    switchboard_bus::proto::to_body(&json!({"room": "lobby"})).unwrap(),
                    switchboard_bus::CallOptions::default(),
                )
                .await
                .is_ok_and(|r| {
                    switchboard_bus::proto::from_body::<Value>(&r.body).unwrap()["users"]
                        == json!(["ada"])
                })
        })
        .await,
        "bob left the room with his connection"
    );

    // `sbctl trace`: the Node chat's spans between the gateway's and the db's.
    let trace = said["trace"].as_str().expect("trace id").to_owned();
    let out = m.s.sbctl(&["--json", "trace", &trace]);
    assert!(out.status.success(), "{out:?}");
    let spans: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
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
        "chat handle chat.say",
        "chat call db.chat.save",
        "db handle db.chat.save",
        "db sql INSERT INTO messages",
    ];
    let mut at = 0;
    for want in order {
        let found = names[at..].iter().position(|n| n.starts_with(want));
        assert!(found.is_some(), "{want} after {at} in {names:#?}");
        at += found.unwrap() + 1;
    }

    // `sbctl ls`: its health and counts, from its `$health`.
    let out = m.s.sbctl(&["--json", "ls"]);
    assert!(out.status.success(), "{out:?}");
    let ls: Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = ls
        .as_array()
        .or_else(|| ls["instances"].as_array())
        .unwrap();
    let chat = list
        .iter()
        .find(|i| i["instance"] == "chat")
        .expect("chat listed");
    assert_eq!(chat["state"], "online", "{chat}");
    // main shows a status only when it is not ok (a degraded state).
    assert_eq!(chat["health"].as_str().unwrap_or(""), "", "{chat}");
    assert!(chat["rss_bytes"].as_u64().unwrap() > 0, "{chat}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            m.s.instance("chat").await["handled"].as_u64().unwrap_or(0) >= 5
        })
        .await,
        "{:?}",
        m.s.instance("chat").await
    );
    let table = m.s.sbctl(&["ls"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().take(3).eq(["chat", "chat", "online"])),
        "{table}"
    );

    // main's /metrics: the Node chat's counters, labelled with its instance.
    let (status, text) = crate::observe::get(&m.s.http(), "/metrics").await;
    assert_eq!(status, 200);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let said_ok: f64 = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == "sb_service_requests_total"
                && s.labels.get("sb_instance") == Some("chat")
                && s.labels.get("op") == Some("say")
                && s.labels.get("code") == Some("ok")
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(said_ok, 1.0, "one say counted by the Node chat");
    assert!(text.contains("sb_node_process_resident_memory_bytes{sb_instance=\"chat\"}"));
}

#[tokio::test]
async fn a_node_chat_reloads_under_load_without_losing_a_message() {
    let _node = node_or_skip!();
    let m = Mixed::start(&node_app("chat", "chat.js", "")).await;
    let before = pid(&m.s.instance("chat").await);
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for n in 0..4 {
        let mut ws = m.client(&format!("user{n}")).await;
        let stop = stop.clone();
        loops.push(tokio::spawn(async move {
            let (mut sent, mut ok, mut errors) = (0u32, 0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                sent += 1;
                let reply = ws
                    .request(
                        Some("chat"),
                        "say",
                        json!({"room": "load", "text": format!("m{n}-{sent}")}),
                    )
                    .await;
                if reply["ok"] == true {
                    ok += 1;
                } else {
                    errors.push(reply);
                }
            }
            (sent, ok, errors)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let endpoint = m.s.endpoint.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin_path("sbctl"))
            .args(["reload", "chat"])
            .env("SB_BROKER", endpoint)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "sbctl reload: {out:?}\n{}",
        m.log("chat")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut ok) = (0u64, 0u64);
    for l in loops {
        let (s, o, errors) = l.await.unwrap();
        assert!(errors.is_empty(), "errors during the reload: {errors:?}");
        sent += u64::from(s);
        ok += u64::from(o);
    }
    assert_eq!(sent, ok, "every say answered");
    assert!(sent > 20, "the load was steady: {sent} says");
    let after = pid(&m.s.instance("chat").await);
    assert_ne!(after, before, "a new Node process serves");
    assert!(
        !switchboard_bus::svc::procinfo::alive(before),
        "the old one drained and exited"
    );
    // Nothing lost, nothing doubled: one row per acknowledged say.
    let mut conn = mysql_async::Conn::from_url(&m.db.url).await.unwrap();
    let rows: Option<u64> = conn
        .query_first("SELECT COUNT(*) FROM messages WHERE room = 'load'")
        .await
        .unwrap();
    assert_eq!(rows, Some(ok));
}

#[tokio::test]
async fn a_killed_node_chat_gives_worker_lost_at_once_and_main_restarts_it() {
    let _node = node_or_skip!();
    let slow_ms = 8_000;
    let m = Mixed::start(&node_app(
        "chat",
        "chat.js",
        &format!("env = {{ CHAT_SLOW_OP_MS = \"{slow_ms}\" }}"),
    ))
    .await;
    let old = pid(&m.s.instance("chat").await);
    let mut ada = m.client("ada").await;
    ada.send_text(r#"{"id": "slow-1", "to": "chat", "op": "slow", "data": {}}"#)
        .await;
    // Let the request reach the Node process (main sees it in flight), then kill it.
    assert!(
        eventually(Duration::from_secs(5), || async {
            m.s.instance("chat").await["inflight"].as_u64().unwrap_or(0) >= 1
        })
        .await,
        "{:?}",
        m.s.instance("chat").await
    );
    let killed = Instant::now();
    switchboard_testkit::signal_pid(old, Sig::SIGKILL);
    let reply = ada.reply_for(&json!("slow-1")).await;
    assert_eq!(reply["error"]["code"], "worker_lost", "{reply}");
    assert!(
        killed.elapsed() < Duration::from_millis(slow_ms),
        "answered when the worker died, not when the op would have ended"
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            let c = m.s.instance("chat").await;
            c["state"] == "online" && pid(&c) != old && pid(&c) != 0 && c["restarts"] == json!(1)
        })
        .await,
        "{:?}",
        m.s.instance("chat").await
    );
    let said = ada
        .ok("chat", "say", json!({"room": "after", "text": "back"}))
        .await;
    assert!(said["seq"].as_u64().is_some(), "{said}");
}

#[tokio::test]
async fn a_pm2_service_runs_with_only_its_require_changed() {
    let node = node_or_skip!();
    // Its source is a PM2 service's: put `require('pm2')` back and nothing
    // else in it names Switchboard.
    let source = std::fs::read_to_string(package().join("examples/pm2-legacy.js")).unwrap();
    let as_pm2 = source.replace(
        "require('@switchboard/bus/pm2'); // was: require('pm2')",
        "require('pm2');",
    );
    let code: String = as_pm2
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect();
    assert!(as_pm2.contains("require('pm2')") && !code.contains("switchboard"));

    let apps = format!(
        "[[apps]]\nname = \"chat\"\nbin = \"{}\"\ndepends_on = [\"db\"]\n\n{}",
        bin_path("chat").display(),
        node_app("legacy", "pm2-legacy.js", "")
    );
    let m = Mixed::start(&apps).await;
    // A PM2 bus listener (the seed's main would be one), also with only its require changed.
    let watcher = "const pm2 = require('@switchboard/bus/pm2');\n\
        pm2.connect(() => pm2.launchBus((err, bus) => {\n\
          bus.on('process:msg', (p) => console.log(JSON.stringify(p)));\n\
          console.log('listening');\n\
        }));";
    let mut child = Command::new(node)
        .current_dir(package())
        .args(["-e", watcher])
        .env("SB_BROKER", &m.s.endpoint)
        .env_remove("SB_INSTANCE")
        .env_remove("SB_SECRET")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(15));
    assert!(matches!(&first, Ok(Ok(l)) if l == "listening"), "{first:?}");

    let mut ada = m.client("ada").await;
    ada.ok("chat", "join", json!({"room": "lobby"})).await;
    // The WebSocket client reaches the PM2 service: its op is the packet's topic.
    let delivered = ada
        .ok("legacy", "shout", json!({"room": "lobby", "text": "hello"}))
        .await;
    assert_eq!(delivered, json!({"success": true}));
    // It called the Rust chat on ada's behalf: the room hears it, from ada.
    let event = ada.event("chat.room.lobby").await.expect("the shout");
    assert_eq!(
        (event["text"].as_str(), event["user"].as_str()),
        (Some("HELLO"), Some("ada"))
    );
    // And its process.send reached the PM2 bus listener.
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a process:msg packet")
        .unwrap();
    let packet: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(packet["process"]["name"], "legacy", "{packet}");
    assert_eq!(packet["data"]["shouted"], "hello", "{packet}");
    assert_eq!(packet["data"]["by"], "ada", "{packet}");
    assert_eq!(packet["data"]["seq"], event["seq"], "{packet}");
    let _ = child.kill();
    let _ = child.wait();
}
