//! `/metrics` as Prometheus consumes it: `promtool check metrics` on live
//! scrapes of main (the whole system, merged) and of the gateway after real
//! traffic; the merged per-process label never `instance` (Prometheus's own
//! target label); and a peer on the bus whose `$metrics` answer is malformed,
//! oversized or contradicts another's types cannot break main's scrape: its
//! answer is dropped and counted, everyone else's is served.

use crate::harness::Ws;
use crate::observe::get;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;
use switchboard_bus::proto;
use switchboard_testkit::{eventually, Child, RawPeer, Sig, TestDatabase};

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The repository's ecosystem.toml run by main on ports picked by the OS.
struct Whole {
    main: Child,
    dir: tempfile::TempDir,
    _db: TestDatabase,
}

impl Drop for Whole {
    fn drop(&mut self) {
        let _ = self.main.signal(Sig::SIGTERM);
        let _ = self.main.wait_exit(Duration::from_secs(20));
    }
}

impl Whole {
    async fn start() -> Self {
        switchboard_testkit::trace_init();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ecosystem.toml");
        std::fs::copy(root().join("ecosystem.toml"), &file).unwrap();
        let db = TestDatabase::new();
        let main = Child::announcing(
            "main",
            &["--config", file.to_str().unwrap()],
            &[
                ("DATABASE_URL", db.url.as_str()),
                ("SB_ECO__BROKER__BIND", "tcp://127.0.0.1:0"),
                ("SB_ECO__MAIN__HTTP", "127.0.0.1:0"),
                ("SB_ECO__MAIN__HEARTBEAT_MS", "250"),
                (
                    "SB_ECO__APPS__RECEIVE__ENV",
                    r#"{"SB_LISTEN": "127.0.0.1:0"}"#,
                ),
            ],
        )
        .unwrap();
        let whole = Self { main, dir, _db: db };
        assert!(
            eventually(Duration::from_secs(60), || async {
                whole.main.later_lines().iter().any(|l| l == "ready")
            })
            .await,
            "main ready: {:?}",
            whole.main.later_lines()
        );
        whole
    }

    fn endpoint(&self) -> String {
        self.main.first_line.clone().unwrap()
    }

    /// main's HTTP address (`http://ADDR`).
    fn http(&self) -> String {
        self.main
            .later_lines()
            .iter()
            .find_map(|l| l.strip_prefix("dashboard "))
            .unwrap()
            .trim_end_matches('/')
            .to_owned()
    }

    /// The gateway's address (`ws://ADDR`), from its log.
    fn ws(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("run/logs/receive.log"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("listening ").map(str::to_owned))
            .unwrap()
    }
}

/// `promtool check metrics` on `text`: its complaints (empty when clean), or
/// `None` when promtool is not installed.
fn promtool(text: &str) -> Option<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(if out.status.success() && said.trim().is_empty() {
        String::new()
    } else {
        format!("exit {:?}: {said}", out.status.code())
    })
}

/// A family's samples' label sets (the part in braces).
fn labels_of<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| l.split_once('{').and_then(|(_, r)| r.split_once('}')))
        .map(|(labels, _)| labels)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_passes_live_scrapes_of_main_and_the_gateway() {
    if promtool("").is_none() {
        eprintln!("skipped: promtool is not installed (scripts/deploy-tools.sh installs Debian's prometheus)");
        return;
    }
    let whole = Whole::start().await;
    let ws = whole.ws();
    let mut client = Ws::connect(&format!("{ws}/ws")).await.unwrap();
    client.ok("chat", "join", json!({"room": "lobby"})).await;
    client
        .ok("chat", "say", json!({"room": "lobby", "text": "scraped"}))
        .await;
    let _ = client.request(Some("chat"), "no-such-op", json!({})).await;

    let (status, merged) = get(&whole.http(), "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(promtool(&merged).unwrap(), "", "main's /metrics:\n{merged}");
    let (status, gateway) = get(&ws.replace("ws://", "http://"), "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        promtool(&gateway).unwrap(),
        "",
        "the gateway's /metrics:\n{gateway}"
    );

    // The per-process label is sb_instance, never Prometheus's `instance`.
    let says = labels_of(&merged, "sb_service_requests_total");
    assert!(
        says.iter()
            .any(|l| l.contains("sb_instance=\"chat\"") && l.contains("op=\"say\"")),
        "{says:?}"
    );
    for line in merged.lines().filter(|l| !l.starts_with('#')) {
        let labels = line.split_once('{').map_or("", |(_, r)| r);
        assert!(
            !labels.starts_with("instance=") && !labels.contains(",instance="),
            "{line}"
        );
    }
}

/// A peer on the bus as an instance of service `liar`, answering every
/// request with the string `answer` (and heartbeats) until aborted.
pub(crate) async fn lying_peer(
    endpoint: &str,
    instance: &str,
    answer: String,
) -> tokio::task::JoinHandle<()> {
    let mut peer = RawPeer::connect(endpoint, None).await.unwrap();
    peer.register("liar", instance, None).await.unwrap();
    let instance = instance.to_owned();
    peer.send_env(&proto::Envelope::new(proto::Kind::Ready))
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            let Some(frames) = peer.recv(Duration::from_millis(300)).await else {
                let _ = peer
                    .send_env(&proto::Envelope::new(proto::Kind::Heartbeat))
                    .await;
                continue;
            };
            let Ok(env) = proto::decode(frames.last().unwrap()) else {
                continue;
            };
            match env.kind {
                // A request comes as [token, envelope]; its reply goes back
                // the same way (docs/protocol.md).
                proto::Kind::Request if frames.len() == 2 => {
                    let body = proto::to_body(&answer).unwrap();
                    let mut reply = proto::Envelope::reply_to(env.id, &env.trace, body);
                    reply.from = instance.clone();
                    let reply = proto::encode(&reply).unwrap().into();
                    let _ = peer.send_frames(vec![frames[0].clone(), reply]).await;
                }
                proto::Kind::Heartbeat => {
                    let _ = peer
                        .send_env(&proto::Envelope::new(proto::Kind::Heartbeat))
                        .await;
                }
                _ => {}
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_oversized_metrics_answer_is_dropped_and_counted_not_served() {
    let whole = Whole::start().await;
    let endpoint = whole.endpoint();
    let http = whole.http();
    // Not exposition text; a type that contradicts every other process's;
    // a sample claiming to be another process's; valid text past the size cap.
    let oversized: String = (0..15_000)
        .map(|i| format!("sb_liar_padding_total{{n=\"{i}\"}} 1\n"))
        .collect();
    let liars = [
        ("liar01", "sb_x{ 1\n<html>not metrics</html>\n".to_owned()),
        (
            "liar02",
            "# TYPE sb_service_requests_total gauge\nsb_service_requests_total 5\n".to_owned(),
        ),
        (
            "liar03",
            "# TYPE sb_forged_total counter\nsb_forged_total{sb_instance=\"chat\"} 99\n".to_owned(),
        ),
        ("liar04", oversized),
    ];
    let mut peers = Vec::new();
    for (instance, answer) in &liars {
        peers.push(lying_peer(&endpoint, instance, answer.clone()).await);
    }
    // main's scrape asks every instance on the bus, the liars included.
    let dropped = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("sb_metrics_answers_dropped_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let served = eventually(Duration::from_secs(20), || async {
        let (status, text) = get(&http, "/metrics").await;
        status == 200 && dropped(&text) >= 4.0
    })
    .await;
    assert!(
        served,
        "the liars' answers dropped and counted:\n{}",
        get(&http, "/metrics").await.1
    );
    let (_, text) = get(&http, "/metrics").await;
    for (instance, _) in &liars {
        assert!(
            !text.contains(&format!("sb_instance=\"{instance}\"")),
            "{instance} served:\n{text}"
        );
    }
    assert!(!text.contains("sb_forged_total") && !text.contains("<html>"));
    assert!(!text.contains("sb_liar_padding_total"));
    // Everyone else's is there, and the whole is still clean exposition text.
    assert!(
        text.contains("# TYPE sb_service_requests_total counter"),
        "{text}"
    );
    assert!(
        labels_of(&text, "sb_instance_state")
            .iter()
            .any(|l| l.contains("sb_instance=\"chat\"")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("sb_broker_peers") && l.contains("sb_instance=\"broker\"")),
        "{text}"
    );
    if let Some(said) = promtool(&text) {
        assert_eq!(said, "", "{text}");
    }
    for p in peers {
        p.abort();
    }
}

/// docs/observability.md's scrape config, as Prometheus reads it: checked by `promtool
/// check config` verbatim, then run by a real Prometheus for a few seconds
/// against a live system (only the ports, picked by the OS here, and the
/// interval changed): both targets up, and a service's counter found by
/// `sb_instance` as documented (an `instance` label from main would have been
/// renamed `exported_instance` by Prometheus).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_scrape_config_runs_in_a_real_prometheus() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "skipped: prometheus is not installed (scripts/deploy-tools.sh installs Debian's)"
        );
        return;
    }
    let readme = std::fs::read_to_string(root().join("docs/observability.md")).unwrap();
    let config: String = readme
        .split("```yaml\n# prometheus.yml\n")
        .nth(1)
        .and_then(|r| r.split("```").next())
        .expect("docs/observability.md's prometheus.yml")
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prometheus.yml");
    std::fs::write(&file, &config).unwrap();
    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    let whole = Whole::start().await;
    let main = whole.http().trim_start_matches("http://").to_owned();
    let gateway = whole.ws().trim_start_matches("ws://").to_owned();
    let mut client = Ws::connect(&format!("ws://{gateway}/ws")).await.unwrap();
    client.ok("chat", "join", json!({"room": "lobby"})).await;
    std::fs::write(
        &file,
        config
            .replace("127.0.0.1:9100", &main)
            .replace("127.0.0.1:3000", &gateway)
            .replace("scrape_interval: 15s", "scrape_interval: 1s")
            .replace(
                "  - job_name: switchboard-gateway\n",
                "  - job_name: switchboard-gateway\n    scrape_interval: 1s\n",
            ),
    )
    .unwrap();
    let port = switchboard_testkit::free_port();
    let _prometheus = Child::spawn_command(
        Command::new("prometheus"),
        "prometheus",
        &[
            &format!("--config.file={}", file.display()),
            &format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
        ],
        &[],
    )
    .unwrap();
    let api = format!("http://127.0.0.1:{port}");
    let query = |q: &'static str| {
        let api = api.clone();
        async move {
            let path = format!("/api/v1/query?query={q}");
            let (status, body) = get(&api, &path).await;
            if status != 200 {
                return 0;
            }
            serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .map_or(0, |v| v["data"]["result"].as_array().map_or(0, Vec::len))
        }
    };
    let found = eventually(Duration::from_secs(30), || async {
        query("up%3D%3D1").await == 2
            && query("sb_service_requests_total%7Bsb_instance%3D%22chat%22%7D").await > 0
    })
    .await;
    assert!(
        found,
        "up: {}, by sb_instance: {}, exported_instance: {}",
        query("up%3D%3D1").await,
        query("sb_service_requests_total%7Bsb_instance%3D%22chat%22%7D").await,
        query("%7Bexported_instance%21%3D%22%22%7D").await
    );
    assert_eq!(query("%7Bexported_instance%21%3D%22%22%7D").await, 0);
}
