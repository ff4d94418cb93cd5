//! Attacks on the bus's trust: a local user joining the bus of a default
//! system, a fake broker, the broker pair's state datagrams, and one app
//! reading another's secrets from its environment.

use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;
use switchboard_bus::proto::{self, Envelope, Kind};
use switchboard_testkit::RawPeer;
use switchboard_testkit::{bin_path, Child};
use tokio::sync::mpsc;
use zeromq::{Socket, SocketRecv, SocketSend};

use crate::harness::Ws;

/// One echo app named `name`, started by main.
fn echo_app(name: &str, extra: &str) -> String {
    format!(
        "[[apps]]\nname = \"{name}\"\nbin = \"{}\"\nargs = [\"--service\", \"{name}\"]\nrestart_delay_ms = 50\n{extra}\n",
        bin_path("echo").display()
    )
}

/// main on `apps` with its defaults (no SB_SECRET, no --insecure: what
/// `scripts/run-all.sh` and the default ecosystem do), in a fresh folder.
fn default_main(apps: &str, env: &[(&str, &str)]) -> (Child, String, tempfile::TempDir) {
    switchboard_testkit::trace_init();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ecosystem.toml");
    let text = format!(
        "[main]\nhttp = \"\"\n\n[broker]\nbin = \"{}\"\nbind = \"tcp://127.0.0.1:0\"\n\n{apps}",
        bin_path("broker").display()
    );
    std::fs::write(&file, text).unwrap();
    // An empty SB_SECRET is none, main's default; giving it tells the
    // testkit (which otherwise runs main insecure for tests that do not care)
    // that this test picks the bus secret itself.
    let mut env = env.to_vec();
    env.push(("SB_SECRET", ""));
    let main = Child::announcing("main", &["--config", file.to_str().unwrap()], &env).unwrap();
    let endpoint = main.first_line.clone().unwrap();
    (main, endpoint, dir)
}

fn sbctl(run_dir: &std::path::Path, endpoint: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin_path("sbctl"))
        .args(["--broker", endpoint, "--run-dir"])
        .arg(run_dir)
        .args(["--timeout-ms", "15000"])
        .args(args)
        .env_remove("SB_SECRET")
        .output()
        .unwrap()
}

/// Issue 21, item 4: with no SB_SECRET, any local user owned the bus. Now the
/// first run makes a secret (run/bus.secret, 0600) that the broker and every
/// app get; a peer without it cannot register as `db`, nor as a pure client
/// that would run `main stop`; `sbctl` finds the secret in the run folder, so
/// the daily commands work as before.
#[tokio::test]
async fn a_local_user_cannot_join_a_default_bus_as_db_or_stop_main() {
    let (_main, endpoint, dir) = default_main(&echo_app("chat", ""), &[]);
    // The attack first: register as the database, then as a client of main.
    for (service, instance) in [("db", "db"), ("", "evil-sbctl")] {
        let mut evil = RawPeer::connect(&endpoint, None).await.unwrap();
        let answer = evil.register(service, instance, None).await;
        assert!(
            answer.is_err(),
            "a peer without the secret registered as {instance:?}: {answer:?}"
        );
        // Nor does anything it sends get through: `main stop chat`.
        let mut stop = Envelope::request(
            "main",
            "stop",
            proto::to_body(&json!({"name": "chat"})).unwrap(),
            proto::now_ms() + 2_000,
        );
        stop.from = instance.into();
        evil.send_env(&stop).await.unwrap();
        while let Some(frames) = evil.recv(Duration::from_millis(300)).await {
            let env = proto::decode(frames.last().unwrap()).unwrap();
            assert!(
                env.kind != Kind::Reply || env.error.is_some(),
                "an unregistered peer got a reply: {env:?}"
            );
        }
    }
    // The secret main made, only its owner can read.
    let run = dir.path().join("run");
    let file = run.join("bus.secret");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "bus.secret mode {mode:o}");
    let secret = std::fs::read_to_string(&file).unwrap();
    assert_eq!(secret.trim().len(), 64, "32 random bytes, hex");
    // The daily commands, as documented, find it: the app answers, and `ls`
    // shows it (still running: the attacker's `stop` never reached main).
    let out = sbctl(&run, &endpoint, &["send", "chat", "$echo", r#"{"x":1}"#]);
    assert!(out.status.success(), "sbctl send: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"x\""));
    let out = sbctl(&run, &endpoint, &["ls"]);
    assert!(out.status.success(), "sbctl ls: {out:?}");
    let ls = String::from_utf8_lossy(&out.stdout);
    assert!(
        ls.lines()
            .any(|l| l.contains("chat") && l.contains("online")),
        "{ls}"
    );
}

/// The broker binary alone: without a secret it does not start unless told
/// `--insecure`, and `--insecure` is for loopback only.
#[test]
fn the_broker_refuses_to_run_without_a_secret_unless_insecure_on_loopback() {
    // An empty SB_SECRET is none (and keeps the testkit's --insecure off).
    let mut open = Child::spawn(
        "broker",
        &["--bind", "tcp://127.0.0.1:0"],
        &[("SB_SECRET", "")],
    )
    .unwrap();
    let status = open.wait_exit(Duration::from_secs(10)).expect("it exits");
    assert_eq!(status.code(), Some(64), "no secret, no --insecure");
    let mut public =
        Child::spawn("broker", &["--bind", "tcp://0.0.0.0:0", "--insecure"], &[]).unwrap();
    let status = public.wait_exit(Duration::from_secs(10)).expect("it exits");
    assert_eq!(status.code(), Some(64), "--insecure on a public address");
    let local = Child::broker("tcp://127.0.0.1:0", &["--insecure"]).unwrap();
    assert!(local.first_line.is_some(), "--insecure on loopback runs");
}

/// How a fake broker answers a hello.
#[derive(Clone, Copy, Debug)]
enum Fake {
    /// Accepts at once: never challenges, never proves.
    Accepts,
    /// Challenges (a nonce) but gives no proof of its own, then accepts.
    ChallengesWithoutProof,
    /// Challenges with a proof made with another secret.
    ProvesWrongSecret,
}

/// A ROUTER on a free port that plays broker as `mode` says, and reports
/// every envelope it receives (kind, op).
async fn fake_broker(mode: Fake) -> (String, mpsc::UnboundedReceiver<(Kind, String)>) {
    let mut socket = zeromq::RouterSocket::new();
    let endpoint = socket.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(msg) = socket.recv().await {
            let frames = msg.into_vec();
            let (Some(identity), Some(last)) = (frames.first().cloned(), frames.last()) else {
                continue;
            };
            let Ok(env) = proto::decode(last) else {
                continue;
            };
            let _ = tx.send((env.kind, env.op.clone()));
            let answer = match env.kind {
                Kind::Heartbeat => Envelope::new(Kind::Heartbeat),
                Kind::Hello => {
                    let hello: proto::Hello = proto::from_body(&env.body).unwrap();
                    let nonce = [7u8; proto::auth::NONCE_LEN];
                    let mut welcome = proto::Welcome {
                        accepted: true,
                        heartbeat_ms: 1000,
                        liveness: 3,
                        max_message: 1 << 20,
                        ..Default::default()
                    };
                    if hello.proof.is_none() {
                        match mode {
                            Fake::Accepts => {}
                            Fake::ChallengesWithoutProof => {
                                welcome.accepted = false;
                                welcome.nonce = Some(proto::ByteBuf::from(nonce.to_vec()));
                            }
                            Fake::ProvesWrongSecret => {
                                welcome.accepted = false;
                                welcome.nonce = Some(proto::ByteBuf::from(nonce.to_vec()));
                                let challenge = hello.challenge.clone().unwrap_or_default();
                                welcome.proof = Some(proto::ByteBuf::from(
                                    proto::auth::broker_proof(
                                        b"not the secret",
                                        &challenge,
                                        &nonce,
                                        &hello.service,
                                        &hello.instance,
                                    )
                                    .to_vec(),
                                ));
                            }
                        }
                    }
                    let mut answer = Envelope::new(Kind::Hello);
                    answer.body = proto::ByteBuf::from(proto::to_body(&welcome).unwrap());
                    answer
                }
                _ => continue,
            };
            let out = vec![identity, proto::encode(&answer).unwrap().into()];
            if socket
                .send(zeromq::ZmqMessage::try_from(out).unwrap())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    (endpoint, rx)
}

/// Issue 21, item 5: a gateway with SB_SECRET connected to a fake ROUTER that
/// never challenged it, and sent it a user's `say`. Now a peer with a secret
/// challenges the broker and registers only with one that proves the secret:
/// each kind of fake (accepts at once, challenges without a proof, proves
/// another secret) sees hellos and nothing else.
#[tokio::test]
async fn a_fake_broker_that_cannot_prove_the_secret_gets_no_say_from_the_gateway() {
    switchboard_testkit::trace_init();
    for mode in [
        Fake::Accepts,
        Fake::ChallengesWithoutProof,
        Fake::ProvesWrongSecret,
    ] {
        let (endpoint, mut seen) = fake_broker(mode).await;
        let receive = Child::announcing(
            "receive",
            &["--listen", "127.0.0.1:0", "--broker", &endpoint],
            &[("SB_SECRET", "the real secret")],
        )
        .unwrap();
        // The gateway has said hello to the fake (and been answered).
        let first = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("the gateway says hello to the fake")
            .unwrap();
        assert_eq!(first.0, Kind::Hello, "{mode:?}");
        let url = format!("{}/ws", receive.first_line.clone().unwrap());
        let mut ws = Ws::connect(&url).await.unwrap();
        ws.send_text(
            r#"{"id":1,"to":"chat","op":"say","data":{"room":"lobby","text":"secret plans"}}"#,
        )
        .await;
        // The client gets an answer (an error: no broker) within its
        // deadline; whatever it is, the fake must have had no request.
        let reply = ws.next_frame(Duration::from_secs(15)).await;
        let mut kinds = Vec::new();
        while let Ok((kind, op)) = seen.try_recv() {
            kinds.push((kind, op));
        }
        assert!(
            kinds.iter().all(|(k, _)| *k == Kind::Hello),
            "{mode:?}: the fake broker got {kinds:?} (client saw {reply:?})"
        );
        if let Some(reply) = reply {
            assert_eq!(reply["ok"], json!(false), "{mode:?}: {reply}");
        }
    }
}

// === the broker pair's state datagrams ===

const PAIR_SECRET: &str = "pair-secret";
const PAIR_HB_MS: &str = "200";

fn udp_addr() -> String {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

fn pair_broker(role: &str, bind: &str, ha_bind: &str, ha_peer: &str) -> Child {
    Child::broker(
        bind,
        &[
            "--secret",
            PAIR_SECRET,
            "--heartbeat-ms",
            PAIR_HB_MS,
            "--ha-role",
            role,
            "--ha-bind",
            ha_bind,
            "--ha-peer",
            ha_peer,
        ],
    )
    .unwrap()
}

async fn pair_ha(bus: &switchboard_bus::Handle) -> String {
    bus.broker::<proto::BrokerStats>("stats", Vec::new(), Default::default())
        .await
        .map(|s| s.ha)
        .unwrap_or_else(|e| format!("error: {e}"))
}

/// A primary and a backup on real UDP, settled (primary active, backup
/// passive), then the primary killed; the attacker takes the dead primary's
/// UDP address, so what it sends comes from the address the backup expects
/// its partner at. Returns (backup, endpoints "EA,EB", the attacker's socket,
/// the backup's UDP address).
async fn pair_with_a_dead_primary() -> (Child, String, tokio::net::UdpSocket, String) {
    switchboard_testkit::trace_init();
    let (pa, pb) = (udp_addr(), udp_addr());
    let ea = format!("tcp://127.0.0.1:{}", switchboard_testkit::free_port());
    let eb = format!("tcp://127.0.0.1:{}", switchboard_testkit::free_port());
    let primary = pair_broker("primary", &ea, &pa, &pb);
    let backup = pair_broker("backup", &eb, &pb, &pa);
    let watcher = switchboard_testkit::client(&ea, "t-pair-watch", Some(PAIR_SECRET)).await;
    let settled = switchboard_testkit::eventually(Duration::from_secs(10), || async {
        pair_ha(&watcher).await == "primary active, partner passive"
    })
    .await;
    assert!(settled, "the pair settles: {}", pair_ha(&watcher).await);
    watcher.close(Duration::from_millis(200)).await;
    drop(primary);
    let attacker = tokio::net::UdpSocket::bind(&pa).await.unwrap();
    (backup, format!("{ea},{eb}"), attacker, pb)
}

/// Issue 21, item 6: the backup fed its own `passive` datagrams (reflected
/// from the dead primary's address) never took over. Now a datagram with the
/// backup's own role is refused: a service arriving with both endpoints makes
/// the backup active and is served.
#[tokio::test]
async fn a_backup_fed_its_own_passive_datagrams_still_takes_over_from_a_dead_primary() {
    let (backup, endpoints, attacker, pb) = pair_with_a_dead_primary().await;
    // Reflect every datagram the backup sends back to it, from the primary's
    // address; count them.
    let reflected = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = reflected.clone();
    let reflector = tokio::spawn(async move {
        let mut buf = [0u8; 256];
        while let Ok((n, _)) = attacker.recv_from(&mut buf).await {
            let _ = attacker.send_to(&buf[..n], &pb).await;
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    // The reflection runs before any peer arrives.
    assert!(
        switchboard_testkit::eventually(Duration::from_secs(10), || async {
            reflected.load(std::sync::atomic::Ordering::SeqCst) >= 5
        })
        .await,
        "the backup's datagrams reach the attacker"
    );
    let _svc = Child::spawn(
        "echo",
        &[
            "--broker",
            &endpoints,
            "--service",
            "svc",
            "--instance",
            "svc-pair",
        ],
        &[("SB_SECRET", PAIR_SECRET)],
    )
    .unwrap();
    let bus = switchboard_testkit::client(&endpoints, "t-pair-reflect", Some(PAIR_SECRET)).await;
    assert!(
        switchboard_testkit::wait_ready(&bus, "svc-pair", Duration::from_secs(15)).await,
        "the backup took over: {}",
        pair_ha(&bus).await
    );
    let ha = pair_ha(&bus).await;
    assert!(ha.starts_with("backup active"), "{ha}");
    let stats: proto::BrokerStats = bus
        .broker("stats", Vec::new(), Default::default())
        .await
        .unwrap();
    assert!(stats.unauthenticated > 0, "reflections counted: {stats:?}");
    reflector.abort();
    drop(backup);
}

/// Issue 21, item 6: one reflected `active` made an active backup yield and
/// drop every peer. Now it is refused and counted; the backup stays active and
/// its peers are served.
#[tokio::test]
async fn one_reflected_active_does_not_make_an_active_backup_drop_its_peers() {
    let (_backup, endpoints, attacker, pb) = pair_with_a_dead_primary().await;
    let _svc = Child::spawn(
        "echo",
        &[
            "--broker",
            &endpoints,
            "--service",
            "svc",
            "--instance",
            "svc-active",
        ],
        &[("SB_SECRET", PAIR_SECRET)],
    )
    .unwrap();
    let bus = switchboard_testkit::client(&endpoints, "t-pair-active", Some(PAIR_SECRET)).await;
    assert!(switchboard_testkit::wait_ready(&bus, "svc-active", Duration::from_secs(15)).await);
    assert!(pair_ha(&bus).await.starts_with("backup active"));
    // The backup's own `active`, as it sent it to the (dead) primary's
    // address: what it sent before it took over (`passive`) is drained, and the
    // next one, sent since, is reflected back once, fresh.
    let mut buf = [0u8; 256];
    while attacker.try_recv_from(&mut buf).is_ok() {}
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), attacker.recv_from(&mut buf))
        .await
        .expect("the active backup keeps sending its state")
        .unwrap();
    let active = buf[..n].to_vec();
    let before: proto::BrokerStats = bus
        .broker("stats", Vec::new(), Default::default())
        .await
        .unwrap();
    attacker.send_to(&active, &pb).await.unwrap();
    // The broker has read it once it counts it as refused.
    let refused = switchboard_testkit::eventually(Duration::from_secs(5), || async {
        bus.broker::<proto::BrokerStats>("stats", Vec::new(), Default::default())
            .await
            .is_ok_and(|s| s.unauthenticated > before.unauthenticated)
    })
    .await;
    let after: proto::BrokerStats = bus
        .broker("stats", Vec::new(), Default::default())
        .await
        .unwrap();
    assert!(
        refused,
        "the reflected datagram is refused and counted: {after:?}"
    );
    assert!(after.ha.starts_with("backup active"), "{}", after.ha);
    assert_eq!(after.peers_lost, before.peers_lost, "no peer dropped");
    let reply = bus
        .call("svc", "$echo", b"\x80".to_vec(), Default::default())
        .await;
    assert!(reply.is_ok(), "still served: {reply:?}");
}

// === each app's environment ===

/// Variables of a live process, from /proc/PID/environ (`None` once it is gone).
fn environ(pid: u32) -> Option<std::collections::HashMap<String, String>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect(),
    )
}

/// The environment of each app's instance (named as the app), read again if
/// an instance was restarted between `ls` and the read (a loaded machine).
fn environs(
    run: &std::path::Path,
    endpoint: &str,
    apps: &[&str],
) -> Vec<std::collections::HashMap<String, String>> {
    let mut last = Vec::new();
    for _ in 0..10 {
        last = pids(run, endpoint, apps);
        let found: Option<Vec<_>> = last.iter().map(|p| environ(*p)).collect();
        if let Some(found) = found {
            return found;
        }
    }
    panic!("{apps:?}: no live process among pids {last:?}");
}

/// The pid of each instance `sbctl --json ls` lists, once each app answered.
fn pids(run: &std::path::Path, endpoint: &str, apps: &[&str]) -> Vec<u32> {
    // Up once each answers (requests are held until it is ready).
    for app in apps {
        let out = sbctl(run, endpoint, &["send", app, "$echo", "{}"]);
        assert!(out.status.success(), "{app}: {out:?}");
    }
    let out = sbctl(run, endpoint, &["--json", "ls"]);
    assert!(out.status.success(), "sbctl ls: {out:?}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    apps.iter()
        .map(|app| {
            rows.as_array()
                .into_iter()
                .flatten()
                .find(|r| r["instance"] == *app)
                .and_then(|r| r["pid"].as_u64())
                .unwrap_or_else(|| panic!("{app} in {rows}")) as u32
        })
        .collect()
}

const MAINS_SECRETS: &[(&str, &str)] = &[
    ("DATABASE_URL", "mysql://root:hunter2@127.0.0.1/secret"),
    ("SB_AUTH_SECRET", "client-token-secret"),
    ("AWS_SECRET_ACCESS_KEY", "cloud-key"),
];

/// Issue 21, low: every app inherited main's DATABASE_URL and token secret.
/// Now an app is given its own `env`, the SB_ variables main sets and a safe
/// base: nothing else of main's environment.
#[tokio::test]
async fn an_app_holds_no_secret_of_mains_environment() {
    let (_main, endpoint, dir) = default_main(&echo_app("plain", ""), MAINS_SECRETS);
    let run = dir.path().join("run");
    let plain = environs(&run, &endpoint, &["plain"]).remove(0);
    for (leaked, _) in MAINS_SECRETS {
        assert!(
            !plain.contains_key(*leaked),
            "plain holds {leaked}: {plain:?}"
        );
    }
    for given in [
        "SB_BROKER",
        "SB_INSTANCE",
        "SB_SECRET",
        "SB_SUCCESSOR",
        "PATH",
    ] {
        assert!(plain.contains_key(given), "plain lacks {given}: {plain:?}");
    }
}

/// What an app needs of main's environment it names in `pass_env` (db:
/// DATABASE_URL), and it gets that and nothing more; its neighbour gets none.
#[tokio::test]
async fn pass_env_gives_an_app_only_what_it_names() {
    let apps = format!(
        "{}{}",
        echo_app("plain", ""),
        echo_app(
            "dbish",
            "pass_env = [\"DATABASE_URL\"]\nenv = { OWN = \"mine\" }"
        )
    );
    let (_main, endpoint, dir) = default_main(&apps, MAINS_SECRETS);
    let run = dir.path().join("run");
    let mut found = environs(&run, &endpoint, &["plain", "dbish"]);
    let (dbish, plain) = (found.remove(1), found.remove(0));
    assert!(!plain.contains_key("DATABASE_URL"), "{plain:?}");
    assert!(!plain.contains_key("OWN"), "{plain:?}");
    assert_eq!(
        dbish.get("DATABASE_URL").map(String::as_str),
        Some("mysql://root:hunter2@127.0.0.1/secret"),
        "pass_env passes it"
    );
    assert_eq!(dbish.get("OWN").map(String::as_str), Some("mine"));
    for leaked in ["SB_AUTH_SECRET", "AWS_SECRET_ACCESS_KEY"] {
        assert!(!dbish.contains_key(leaked), "dbish holds {leaked}");
    }
}

/// `scripts/run-all.sh` keeps the client-token secret in RUN_DIR/auth.secret.
/// A local user who can make entries in the run folder (SB_RUN_DIR under
/// /tmp, made by them first) pre-made that file: as a symlink, the script
/// wrote the operator's SB_AUTH_SECRET through it and chmod-ed its target (any
/// file the operator, often root, may write); as a file of their own, SB_AUTH=1
/// took what it held for the secret, and they minted tokens the gateway took.
/// The script now holds auth.secret to main's rule for bus.secret: ours, not a
/// symlink, closed to others, or it stops before anything starts.
#[test]
fn run_all_refuses_an_auth_secret_it_did_not_make() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let secret_file = run.join("auth.secret");
    let run_all = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(root.join("scripts/run-all.sh"));
        cmd.env("SB_RUN_DIR", &run)
            .env("SB_BIN_DIR", dir.path().join("no-binaries-here"))
            .env(
                "DATABASE_URL",
                format!("{}/sb_rv_auth", switchboard_testkit::mysql_server_url()),
            )
            .env_remove("SB_AUTH")
            .env_remove("SB_AUTH_SECRET");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };

    // A symlink to a file of the operator's: never written through.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&victim, &secret_file).unwrap();
    for env in [
        [("SB_AUTH_SECRET", "the-operators-secret")],
        [("SB_AUTH", "1")],
    ] {
        let out = run_all(&env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?}: {out:?}");
        assert!(err.contains("auth.secret"), "{env:?}: {err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "{env:?}: the target was chmod-ed");
    }

    // A file others may read (or that they wrote): not a secret.
    std::fs::remove_file(&secret_file).unwrap();
    std::fs::write(&secret_file, "known-to-others\n").unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    for env in [
        [("SB_AUTH_SECRET", "the-operators-secret")],
        [("SB_AUTH", "1")],
    ] {
        let out = run_all(&env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?}: {out:?}");
        assert!(err.contains("auth.secret"), "{env:?}: {err}");
        assert_eq!(
            std::fs::read_to_string(&secret_file).unwrap(),
            "known-to-others\n",
            "{env:?}"
        );
    }
}
