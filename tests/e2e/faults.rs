//! Faults an operator meets, with real processes: a database outage under main,
//! a gateway killed with its clients' state in the services.

use serde_json::{json, Value};
use std::time::Duration;
use switchboard_bus::proto;
use switchboard_bus::svc::procinfo;
use switchboard_bus::CallOptions;
use switchboard_testkit::{bin_path, eventually, TcpRelay, TestDatabase};

use crate::supervisor::Supervised;

/// An ecosystem's one app: `alpha`, the echo service.
fn alpha() -> String {
    format!(
        "[[apps]]\nname = \"alpha\"\nbin = \"{}\"\nargs = [\"--service\", \"alpha\"]\n",
        bin_path("echo").display()
    )
}

/// `url` with its `host:port` replaced by `addr`.
fn via(url: &str, addr: &str) -> (String, String) {
    let (scheme_user, rest) = url.split_once('@').expect("user@host in the URL");
    let (host, db) = rest.split_once('/').expect("a database in the URL");
    (format!("{scheme_user}@{addr}/{db}"), host.to_owned())
}

async fn say(s: &Supervised, text: &str, timeout_ms: u64) -> Result<Value, String> {
    let body = proto::to_body(&json!({"room": "r", "text": text})).unwrap();
    let options = CallOptions {
        timeout: Some(Duration::from_millis(timeout_ms)),
        user: Some("ada".into()),
        key: Some("r".into()),
        ..CallOptions::default()
    };
    s.bus
        .call("chat", "say", body, options)
        .await
        .map(|r| proto::from_body::<Value>(&r.body).unwrap())
        .map_err(|e| e.code.to_string())
}

/// MariaDB goes away (every connection dropped, new ones refused) for several
/// times main's hung threshold. db keeps answering `$health` with `db_down`: it is
/// `degraded`, never killed, never `errored`; requests meanwhile fail within their
/// deadline; the first one after the database is back succeeds.
#[tokio::test]
async fn a_database_outage_leaves_db_degraded_and_serving_after_it() {
    let tdb = TestDatabase::new();
    let (_, server) = via(&tdb.url, "x");
    let relay = TcpRelay::start(&server);
    // mysql_async moves a loopback connection to the server's Unix socket unless
    // told not to, which would bypass the relay.
    let (url, _) = via(&tdb.url, &relay.addr);
    let url = format!("{url}?prefer_socket=false");
    let apps = format!(
        "[[apps]]\nname = \"db\"\nbin = \"{}\"\nenv = {{ DATABASE_URL = \"{url}\" }}\n\n\
         [[apps]]\nname = \"chat\"\nbin = \"{}\"\ndepends_on = [\"db\"]\n",
        bin_path("db").display(),
        bin_path("chat").display()
    );
    let s = Supervised::start(&apps).await;
    assert!(s.all_online(2).await, "{:?}", s.ls().await);
    say(&s, "before", 5_000)
        .await
        .expect("say before the outage");
    let db = s.instance("db").await;

    relay.cut();
    assert!(
        eventually(Duration::from_secs(10), || async {
            let db = s.instance("db").await;
            db["state"] == "degraded" && db["health"] == "db_down"
        })
        .await,
        "{:?}",
        s.instance("db").await
    );
    // A request during the outage is answered within its deadline.
    let during = say(&s, "during", 1_500).await;
    assert!(
        during
            .as_ref()
            .is_err_and(|code| code == "unavailable" || code == "timeout"),
        "{during:?}"
    );
    // Several times the hung threshold (3 x 250 ms): still the same process.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = s.instance("db").await;
        assert_eq!(now["pid"], db["pid"], "db was not restarted: {now}");
        assert_eq!(now["state"], "degraded", "{now}");
        assert_eq!(now["restarts"], json!(0), "{now}");
    }

    relay.restore();
    // No operator step: the first say after the database is back succeeds.
    let after = match say(&s, "after", 5_000).await {
        Ok(after) => after,
        Err(e) => {
            for f in ["db.log", "chat.log"] {
                let log = std::fs::read_to_string(s.logs_dir().join(f)).unwrap_or_default();
                eprintln!("== {f}\n{log}");
            }
            panic!("first say after the outage: {e}");
        }
    };
    assert!(after["seq"].as_u64().is_some(), "{after}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            s.instance("db").await["state"] == "online"
        })
        .await
    );
    assert_eq!(s.instance("db").await["pid"], db["pid"]);
}

/// The members and positions of a room and a zone, asked over the bus.
async fn presence(system: &crate::harness::System, room: &str, zone: &str) -> (Value, Value) {
    let ask = |service: &'static str, op: &'static str, data: Value, key: &str| {
        let options = CallOptions {
            key: Some(key.to_owned()),
            user: Some("inspector".into()),
            ..CallOptions::default()
        };
        let body = proto::to_body(&data).unwrap();
        let bus = system.bus.clone();
        async move {
            let reply = bus.call(service, op, body, options).await.unwrap();
            proto::from_body::<Value>(&reply.body).unwrap()
        }
    };
    (
        ask("chat", "who", json!({"room": room}), room).await["users"].clone(),
        ask("loc", "zone", json!({"zone": zone}), zone).await["users"].clone(),
    )
}

/// A gateway killed with -9 sends no `session.close`: the broker's peer-lost
/// event does, for all its clients at once. Their presence in chat and their
/// positions in loc are gone within a few seconds.
#[tokio::test]
async fn a_killed_gateway_leaves_no_ghosts() {
    let mut system = crate::harness::System::start(true).await;
    let mut ada = system.client_as("ada").await;
    ada.ok("chat", "join", json!({"room": "g"})).await;
    ada.ok("loc", "move", json!({"zone": "z2", "x": 1.0, "y": 2.0}))
        .await;
    let (members, users) = presence(&system, "g", "z2").await;
    assert_eq!(members, json!(["ada"]));
    assert_eq!(users[0]["user"], "ada");

    system
        .proc("receive")
        .signal(switchboard_testkit::Sig::SIGKILL)
        .unwrap();
    let gone = eventually(Duration::from_secs(5), || async {
        presence(&system, "g", "z2").await == (json!([]), json!([]))
    })
    .await;
    assert!(
        gone,
        "ghosts left: {:?}",
        presence(&system, "g", "z2").await
    );
}

/// `kill -9` of the broker under main: main starts it again at once on the same
/// endpoint, counts the restart, and every process reconnects by itself.
#[tokio::test]
async fn a_killed_broker_is_restarted_by_main_and_the_system_serves_again() {
    let apps = alpha();
    let s = Supervised::start(&apps).await;
    assert!(s.all_online(1).await, "{:?}", s.ls().await);
    let broker = s.instance("broker").await;
    assert_eq!(broker["state"], "online", "{broker}");
    let old = broker["pid"].as_u64().unwrap() as u32;
    switchboard_testkit::signal_pid(old, switchboard_testkit::Sig::SIGKILL);
    let killed = std::time::Instant::now();
    let echo = || async {
        let options = CallOptions {
            timeout: Some(Duration::from_millis(500)),
            ..CallOptions::default()
        };
        s.bus
            .call("alpha", "$echo", b"hi".to_vec(), options)
            .await
            .is_ok_and(|r| &r.body[..] == b"hi")
    };
    assert!(
        eventually(Duration::from_secs(15), echo).await,
        "alpha serving again through the new broker"
    );
    eprintln!("first success {:?} after the kill", killed.elapsed());
    // main itself reconnects too (its `ls` answers again once it has).
    assert!(
        eventually(Duration::from_secs(10), || async {
            let b = s.instance("broker").await;
            b["state"] == "online"
                && b["pid"] != json!(old)
                && b["restarts"] == json!(1)
                && s.instance("alpha").await["state"] == "online"
        })
        .await,
        "{:?}",
        s.ls().await
    );
}

/// A broker that hangs (SIGSTOP) is held to the apps' rule: main kills it after
/// `liveness` failed checks and starts a new one. While the bus cannot be
/// reached, `sbctl ls` answers from main's status file and says so.
#[tokio::test]
async fn a_hung_broker_is_replaced_and_sbctl_ls_answers_meanwhile() {
    let apps = alpha();
    let s = Supervised::start(&apps).await;
    assert!(s.all_online(1).await, "{:?}", s.ls().await);
    // main's status file, read by sbctl when no broker answers (here: a port
    // where nothing listens).
    let run_dir = s.dir.path().join("run");
    let out = std::process::Command::new(bin_path("sbctl"))
        .args([
            "--broker",
            "tcp://127.0.0.1:1",
            "--timeout-ms",
            "300",
            "--json",
            "ls",
        ])
        .arg("--run-dir")
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = shown["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["instance"].as_str())
        .collect();
    assert_eq!(names, ["broker", "alpha"], "{shown}");
    assert!(shown["age_ms"].as_u64().unwrap() < 5_000, "{shown}");

    let old = s.instance("broker").await["pid"].as_u64().unwrap() as u32;
    switchboard_testkit::signal_pid(old, switchboard_testkit::Sig::SIGSTOP);
    assert!(
        eventually(Duration::from_secs(15), || async {
            let b = s.instance("broker").await;
            b["state"] == "online" && b["pid"] != json!(old) && b["restarts"] == json!(1)
        })
        .await,
        "{:?}",
        s.ls().await
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            s.bus
                .call("alpha", "$echo", b"x".to_vec(), CallOptions::default())
                .await
                .is_ok()
        })
        .await
    );
}

/// `kill -9` of main leaves its broker and apps running (their own process
/// groups); they keep serving. A new main started on the same file adopts them
/// (same names, same pids) instead of starting duplicates, and supervises them:
/// a later `kill -9` of an app is restarted.
#[tokio::test]
async fn a_restarted_main_adopts_its_running_apps() {
    let apps = alpha();
    let mut s = Supervised::start(&apps).await;
    assert!(s.all_online(1).await, "{:?}", s.ls().await);
    let broker = s.instance("broker").await["pid"].clone();
    let alpha = s.instance("alpha").await["pid"].clone();
    // Let main write its status file at least once with both.
    let run_dir = s.dir.path().join("run");
    assert!(
        eventually(Duration::from_secs(5), || async {
            std::fs::read_to_string(run_dir.join("status.json"))
                .is_ok_and(|t| t.contains(&format!("\"pid\":{alpha}")))
        })
        .await
    );

    s.main.signal(switchboard_testkit::Sig::SIGKILL).unwrap();
    s.main.wait_exit(Duration::from_secs(5)).expect("main died");
    // The apps serve on without main.
    let broker_pid = broker.as_u64().unwrap() as u32;
    assert!(
        procinfo::alive(broker_pid),
        "the broker outlives main: state {}",
        procinfo::state(broker_pid)
    );
    let echo = s
        .bus
        .call("alpha", "$echo", b"x".to_vec(), CallOptions::default())
        .await;
    assert!(echo.is_ok(), "{echo:?}");

    let file = s.dir.path().join("ecosystem.toml");
    let main =
        switchboard_testkit::Child::announcing("main", &["--config", file.to_str().unwrap()], &[])
            .unwrap();
    assert_eq!(
        main.first_line.as_deref(),
        Some(s.endpoint.as_str()),
        "same broker"
    );
    s.main = main;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (b, a) = (s.instance("broker").await, s.instance("alpha").await);
            b["pid"] == broker && a["pid"] == alpha && a["state"] == "online"
        })
        .await,
        "adopted, not duplicated: {:?}",
        s.ls().await
    );
    let echoes: Vec<Value> = s
        .ls()
        .await
        .into_iter()
        .filter(|i| i["app"] == "alpha")
        .collect();
    assert_eq!(
        echoes.len(),
        1,
        "one alpha, no unmanaged duplicate: {echoes:?}"
    );

    // Supervision resumed: an adopted app that dies is restarted.
    switchboard_testkit::signal_pid(
        alpha.as_u64().unwrap() as u32,
        switchboard_testkit::Sig::SIGKILL,
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            let a = s.instance("alpha").await;
            a["state"] == "online" && a["pid"] != alpha && a["pid"] != json!(0)
        })
        .await,
        "{:?}",
        s.ls().await
    );
}

/// A process whose stderr is a pipe to a supervisor that died must survive its
/// next log line (tracing-subscriber used to panic reporting the failed write,
/// and a killed main took the broker and every app down with it).
#[tokio::test]
async fn a_broken_log_pipe_is_not_fatal() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(bin_path("broker"))
        .args(["--bind", "tcp://127.0.0.1:0", "--insecure"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let endpoint = first.trim().strip_prefix("listening ").unwrap().to_owned();
    // The reader of its stderr goes away, as a killed main's would.
    drop(child.stderr.take());
    // Something it logs at warn: a malformed frame.
    let mut peer = switchboard_testkit::RawPeer::connect(&endpoint, None)
        .await
        .unwrap();
    peer.send_frames(vec![bytes_of(b"garbage")]).await.unwrap();
    let bus = switchboard_testkit::client(&endpoint, "t-after", None).await;
    let stats = switchboard_testkit::broker_stats(&bus).await;
    assert!(stats.malformed >= 1, "{stats:?}");
    assert!(child.try_wait().unwrap().is_none(), "the broker is alive");
    let _ = child.kill();
    let _ = child.wait();
}

fn bytes_of(b: &'static [u8]) -> bytes::Bytes {
    bytes::Bytes::from_static(b)
}
