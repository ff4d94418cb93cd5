//! main, the supervisor, with real processes and real signals; sbctl as a real
//! command.

use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use switchboard_bus::proto;
use switchboard_bus::{CallOptions, Handle};
use switchboard_testkit::{bin_path, client, eventually, spawn_echo_process, Child, Sig};

/// A supervisor running an ecosystem written for the test.
pub struct Supervised {
    pub main: Child,
    pub endpoint: String,
    pub bus: Handle,
    pub dir: tempfile::TempDir,
}

const FAST: &str = r#"
[main]
heartbeat_ms = 250
liveness = 3
http = "127.0.0.1:0"
"#;

pub fn app(name: &str, depends_on: &[&str], extra: &str) -> String {
    format!(
        "[[apps]]\nname = \"{name}\"\nbin = \"{}\"\nargs = [\"--service\", \"{name}\"]\ndepends_on = {}\nrestart_delay_ms = 50\n{extra}\n",
        bin_path("echo").display(),
        serde_json::to_string(depends_on).unwrap()
    )
}

impl Supervised {
    pub async fn start(apps: &str) -> Self {
        Self::start_with_env(apps, &[]).await
    }

    /// As [`Supervised::start`], with extra environment for main (and so for
    /// the apps it starts).
    pub async fn start_with_env(apps: &str, env: &[(&str, &str)]) -> Self {
        switchboard_testkit::trace_init();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ecosystem.toml");
        let text = format!(
            "{FAST}\n[broker]\nbin = \"{}\"\nbind = \"tcp://127.0.0.1:0\"\n\n{apps}",
            bin_path("broker").display()
        );
        std::fs::write(&file, text).unwrap();
        let main = Child::announcing("main", &["--config", file.to_str().unwrap()], env).unwrap();
        let endpoint = main.first_line.clone().unwrap();
        let bus = client(&endpoint, "t-supervised", None).await;
        Self {
            main,
            endpoint,
            bus,
            dir,
        }
    }

    /// A supervisor running `text`, a whole ecosystem file as given (its own
    /// `[main]` and `[broker]`).
    pub async fn start_file(text: &str) -> Self {
        switchboard_testkit::trace_init();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ecosystem.toml");
        std::fs::write(&file, text).unwrap();
        let main = Child::announcing("main", &["--config", file.to_str().unwrap()], &[]).unwrap();
        let endpoint = main.first_line.clone().unwrap();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bus = client(&endpoint, &format!("t-file-{n}"), None).await;
        Self {
            main,
            endpoint,
            bus,
            dir,
        }
    }

    pub async fn ls(&self) -> Vec<Value> {
        match self
            .bus
            .call("main", "ls", Vec::new(), CallOptions::default())
            .await
        {
            Ok(reply) => proto::from_body::<Value>(&reply.body)
                .unwrap()
                .as_array()
                .cloned()
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    pub async fn instance(&self, name: &str) -> Value {
        self.ls()
            .await
            .into_iter()
            .find(|i| i["instance"] == name && i["managed"] == true)
            .unwrap_or(Value::Null)
    }

    pub async fn all_online(&self, n: usize) -> bool {
        eventually(Duration::from_secs(20), || async {
            let ls = self.ls().await;
            ls.iter()
                .filter(|i| i["state"] == "online" && i["app"] != "broker")
                .count()
                >= n
        })
        .await
    }

    pub fn sbctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin_path("sbctl"))
            .args(args)
            .env("SB_BROKER", &self.endpoint)
            .output()
            .unwrap()
    }

    /// main's HTTP server (`http://ADDR`), from the `dashboard` line it prints.
    pub fn http(&self) -> String {
        let line = self
            .main
            .later_lines()
            .into_iter()
            .find_map(|l| l.strip_prefix("dashboard ").map(str::to_owned))
            .expect("main printed its dashboard address");
        line.trim_end_matches('/').to_owned()
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.dir.path().join("run").join("logs")
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // A graceful stop takes the apps down with main.
        let _ = self.main.signal(Sig::SIGTERM);
        let _ = self.main.wait_exit(Duration::from_secs(10));
    }
}

fn pid(v: &Value) -> u32 {
    v["pid"].as_u64().unwrap_or(0) as u32
}

fn alive(pid: u32) -> bool {
    switchboard_bus::svc::procinfo::alive(pid)
}

#[tokio::test]
async fn starts_in_dependency_order_and_lists_managed_and_unmanaged() {
    let apps = [
        app("gamma", &["beta"], ""),
        app("alpha", &[], ""),
        app("beta", &["alpha"], ""),
    ]
    .concat();
    let s = Supervised::start(&apps).await;
    assert!(s.all_online(3).await, "{:?}", s.ls().await);
    let started = |v: &Value| v["started_at_ms"].as_u64().unwrap();
    let (a, b, c) = (
        s.instance("alpha").await,
        s.instance("beta").await,
        s.instance("gamma").await,
    );
    assert!(
        started(&a) < started(&b) && started(&b) < started(&c),
        "alpha, then beta, then gamma: {a} {b} {c}"
    );
    // A service started by hand joins the bus and shows as unmanaged.
    let _hand = spawn_echo_process(&s.endpoint, "delta", "delta-1", &[]).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            s.ls()
                .await
                .iter()
                .any(|i| i["instance"] == "delta-1" && i["state"] == "unmanaged")
        })
        .await
    );
    let out = s.sbctl(&["ls"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && table.contains("alpha") && table.contains("unmanaged"),
        "{table}"
    );
    // Each instance logs to its own file.
    assert!(s.logs_dir().join("alpha.log").exists() && s.logs_dir().join("broker.log").exists());
    let out = s.sbctl(&["logs", "alpha", "-n", "5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Stopping main stops every app.
    let pids: Vec<u32> = s
        .ls()
        .await
        .iter()
        .filter(|i| i["managed"] == true)
        .map(pid)
        .collect();
    let mut s = s;
    s.main.signal(Sig::SIGTERM).unwrap();
    let status = s
        .main
        .wait_exit(Duration::from_secs(20))
        .expect("main exits");
    assert!(status.success(), "{status}");
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "every app stopped: {pids:?}"
    );
}

#[tokio::test]
async fn kill_9_is_restarted_and_serving_again() {
    let s = Supervised::start(&app("alpha", &[], "")).await;
    assert!(s.all_online(1).await);
    let before = s.instance("alpha").await;
    let killed = Instant::now();
    switchboard_testkit::signal_pid(pid(&before), Sig::SIGKILL);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let now = s.instance("alpha").await;
            now["state"] == "online" && pid(&now) != pid(&before)
        })
        .await
    );
    let reply = s
        .bus
        .call("alpha", "whoami", Vec::new(), CallOptions::default())
        .await;
    assert!(reply.is_ok(), "{reply:?}");
    let took = killed.elapsed();
    // Heartbeat window (0.25 s x 3) plus the restart delay, with room for a busy machine.
    assert!(
        took < Duration::from_secs(5),
        "serving again after {took:?}"
    );
    assert_eq!(s.instance("alpha").await["restarts"], 1);
}

#[tokio::test]
async fn a_stopped_process_is_detected_by_heartbeats_and_replaced() {
    let s = Supervised::start(&app("alpha", &[], "")).await;
    assert!(s.all_online(1).await);
    let before = pid(&s.instance("alpha").await);
    switchboard_testkit::signal_pid(before, Sig::SIGSTOP);
    assert!(
        eventually(Duration::from_secs(15), || async {
            let now = s.instance("alpha").await;
            now["state"] == "online" && pid(&now) != before
        })
        .await,
        "{:?}",
        s.instance("alpha").await
    );
    assert!(
        eventually(Duration::from_secs(5), || async { !alive(before) }).await,
        "the hung process was killed"
    );
    assert!(s
        .bus
        .call("alpha", "whoami", Vec::new(), CallOptions::default())
        .await
        .is_ok());
}

#[tokio::test]
async fn a_crash_loop_stops_at_max_restarts_and_shows_errored() {
    let crashy = format!(
        "[[apps]]\nname = \"crashy\"\nbin = \"{}\"\nargs = [\"--no-such-flag\"]\nmax_restarts = 2\nmin_uptime_ms = 1000\nrestart_delay_ms = 50\nready_timeout_ms = 2000\n",
        bin_path("echo").display()
    );
    let s = Supervised::start(&[app("alpha", &[], ""), crashy].concat()).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            s.instance("crashy").await["state"] == "errored"
        })
        .await,
        "{:?}",
        s.instance("crashy").await
    );
    assert_eq!(s.instance("crashy").await["restarts"], 2);
    // The rest of the ecosystem is unaffected.
    assert_eq!(s.instance("alpha").await["state"], "online");
}

#[tokio::test]
async fn reload_under_steady_load_loses_nothing() {
    let s = Supervised::start(&app("alpha", &[], "")).await;
    assert!(s.all_online(1).await);
    let before = pid(&s.instance("alpha").await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let bus = s.bus.clone();
        let stop = stop.clone();
        loops.push(tokio::spawn(async move {
            let (mut sent, mut ok, mut errors) = (0u32, 0u32, Vec::new());
            let body = proto::to_body(&json!({"ms": 20})).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sent += 1;
                match bus
                    .call("alpha", "sleep", body.clone(), CallOptions::default())
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (sent, ok, errors)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let endpoint = s.endpoint.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin_path("sbctl"))
            .args(["reload", "alpha"])
            .env("SB_BROKER", endpoint)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "sbctl reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut sent, mut ok) = (0, 0);
    for l in loops {
        let (s_, o, errors) = l.await.unwrap();
        assert!(errors.is_empty(), "errors during the reload: {errors:?}");
        sent += s_;
        ok += o;
    }
    assert_eq!(sent, ok, "every request answered");
    assert!(sent > 50, "the load was steady: {sent} requests");
    let after = s.instance("alpha").await;
    assert_ne!(pid(&after), before, "a new process serves");
    assert!(!alive(before), "the old process is gone");
}

#[tokio::test]
async fn sbctl_send_exit_codes() {
    let s = Supervised::start(&app("alpha", &[], "")).await;
    assert!(s.all_online(1).await);
    let ok = s.sbctl(&["send", "alpha", "echo", r#"{"x":1}"#]);
    assert_eq!(ok.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), r#"{"x":1}"#);
    let unknown = s.sbctl(&["send", "nope", "x"]);
    assert_eq!(unknown.status.code(), Some(12));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown_service"));
    let stop = s.sbctl(&["stop", "alpha"]);
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let unavailable = s.sbctl(&["send", "alpha", "echo", "--timeout-ms", "300"]);
    assert_eq!(
        unavailable.status.code(),
        Some(14),
        "{}",
        String::from_utf8_lossy(&unavailable.stderr)
    );
    let json = s.sbctl(&["--json", "send", "nope", "x"]);
    assert_eq!(json.status.code(), Some(12));
    let start = s.sbctl(&["start", "alpha"]);
    assert!(start.status.success());
    assert_eq!(s.sbctl(&["send", "alpha", "echo"]).status.code(), Some(0));
    let unknown_app = s.sbctl(&["restart", "nothing"]);
    assert_eq!(
        unknown_app.status.code(),
        Some(10),
        "bad_request names the apps"
    );
}

#[test]
fn a_broken_ecosystem_is_an_error_naming_app_and_key_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ecosystem.toml");
    for (text, expect) in [
        (
            app("alpha", &[], "instancs = 2"),
            r#"app "alpha": unknown key "instancs""#,
        ),
        (
            [app("alpha", &["beta"], ""), app("beta", &["alpha"], "")].concat(),
            "depends_on cycle",
        ),
        (
            app("alpha", &["ghost"], ""),
            r#"app "alpha": depends_on "ghost""#,
        ),
        (
            "[[apps]]\nname = \"alpha\"\nbin = \"no-such-binary\"\n".to_owned(),
            r#"app "alpha": bin "no-such-binary" not found"#,
        ),
    ] {
        std::fs::write(
            &file,
            format!("[broker]\nbind = \"tcp://127.0.0.1:0\"\n{text}"),
        )
        .unwrap();
        let out = Command::new(bin_path("main"))
            .args(["--config", file.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains(expect), "{stderr} should say {expect}");
        assert!(out.stdout.is_empty(), "no broker was started");
        assert!(
            !dir.path().join("run").exists(),
            "nothing was started or written"
        );
    }
}

#[tokio::test]
async fn no_spawn_only_monitors_what_is_on_the_bus() {
    switchboard_testkit::trace_init();
    let broker = Child::broker("tcp://127.0.0.1:0", &[]).unwrap();
    let endpoint = broker.first_line.clone().unwrap();
    let _by_hand = spawn_echo_process(&endpoint, "alpha", "alpha-hand", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ecosystem.toml");
    std::fs::write(&file, app("alpha", &[], "")).unwrap();
    let mut main = Child::announcing(
        "main",
        &[
            "--no-spawn",
            "--broker",
            &endpoint,
            "--config",
            file.to_str().unwrap(),
        ],
        &[],
    )
    .unwrap();
    let bus = client(&endpoint, "t-observer", None).await;
    let ls = || async {
        match bus
            .call("main", "ls", Vec::new(), CallOptions::default())
            .await
        {
            Ok(r) => proto::from_body::<Value>(&r.body)
                .unwrap()
                .as_array()
                .cloned()
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            ls().await
                .iter()
                .any(|i| i["instance"] == "alpha-hand" && i["state"] == "unmanaged")
        })
        .await
    );
    assert!(
        ls().await.iter().all(|i| i["managed"] == false),
        "nothing is started: {:?}",
        ls().await
    );
    main.signal(Sig::SIGTERM).unwrap();
    assert!(main
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
    // The hand-started service was left alone.
    assert!(bus
        .call("alpha", "whoami", Vec::new(), CallOptions::default())
        .await
        .is_ok());
}

/// An app whose name is not the service it registers as (two gateways
/// `edge_a` and `edge_b` both run `receive`): main health-checks the service it
/// registered as. It used to ask the app's name, get `unknown_service` and kill
/// a healthy process as hung every second.
#[tokio::test]
async fn an_app_named_apart_from_its_service_is_not_killed_as_hung() {
    let apps = format!(
        "[[apps]]\nname = \"edge_x\"\nbin = \"{}\"\nargs = [\"--service\", \"shared_svc\"]\n",
        bin_path("echo").display()
    );
    let s = Supervised::start(&apps).await;
    assert!(s.all_online(1).await, "{:?}", s.ls().await);
    // Twelve heartbeats: three missed checks in a row would have killed it.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let row = s.instance("edge_x").await;
    assert_eq!(row["restarts"], 0, "{row}");
    assert_eq!(row["state"], "online", "{row}");
    assert_eq!(row["service"], "shared_svc", "{row}");
    let reply = s.sbctl(&["send", "shared_svc", "echo", r#"{"x":1}"#]);
    assert!(reply.status.success(), "{reply:?}");
}

/// `HANDLED` (`sbctl ls`, the dashboard's instances) counts requests, not
/// main's own health checks: with no traffic it stays 0 however many
/// heartbeats pass, as the dashboard's services table (which leaves `$` ops out).
#[tokio::test]
async fn handled_counts_requests_not_main_s_health_checks() {
    let s = Supervised::start(&app("echo", &[], "")).await;
    assert!(s.all_online(1).await, "{:?}", s.ls().await);
    // A dozen heartbeats (250 ms each): a $health from main every one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = s.instance("echo").await;
    assert_eq!(idle["handled"], 0, "no request yet: {idle}");
    for _ in 0..3 {
        switchboard_testkit::whoami(&s.bus, "echo", CallOptions::default())
            .await
            .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            s.instance("echo").await["handled"] == 3
        })
        .await,
        "three requests: {}",
        s.instance("echo").await
    );
}

/// `autostart = false` (the demo `echo` in ecosystem.toml): defined, shown as
/// `stopped`, not waited for (main says `ready`), and served once
/// `sbctl start` starts it.
#[tokio::test]
async fn an_app_that_does_not_autostart_waits_for_sbctl_start() {
    let s = Supervised::start(&format!(
        "{}{}",
        app("first", &[], ""),
        app("echo", &[], "autostart = false")
    ))
    .await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            s.main.later_lines().iter().any(|l| l == "ready")
        })
        .await,
        "ready without echo: {:?}",
        s.main.later_lines()
    );
    assert!(!s.main.later_lines().iter().any(|l| l == "starting echo"));
    assert_eq!(s.instance("echo").await["state"], "stopped");
    // A known app that is stopped: held until its deadline, as during a restart.
    let short = CallOptions {
        timeout: Some(Duration::from_millis(300)),
        ..CallOptions::default()
    };
    let err = switchboard_testkit::whoami(&s.bus, "echo", short)
        .await
        .unwrap_err();
    assert_eq!(err.code, proto::ErrorCode::Unavailable, "{err}");
    let out = s.sbctl(&["start", "echo"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        switchboard_testkit::whoami(&s.bus, "echo", CallOptions::default())
            .await
            .unwrap(),
        "echo"
    );
}
