//! An honest start: main names an app that cannot start and says why, and the
//! gateway shares its port only with gateways of its own binary.

use std::time::Duration;
use switchboard_bus::svc::procinfo;
use switchboard_testkit::{bin_path, eventually};

use crate::supervisor::Supervised;

/// A port held the way uWebSockets.js holds it: SO_REUSEPORT set, by a process
/// that is not a gateway (this test).
fn foreign_listener() -> (tokio::net::TcpListener, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseport(true).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

fn gateway_app(port: u16, extra: &str) -> String {
    format!(
        "[[apps]]\nname = \"receive\"\nbin = \"{}\"\nargs = [\"--listen\", \"127.0.0.1:{port}\"]\n{extra}\n",
        bin_path("receive").display()
    )
}

use switchboard_testkit::free_port;

#[tokio::test]
async fn a_port_held_by_another_program_is_an_error_naming_port_and_holder() {
    let (_foreign, port) = foreign_listener();
    let s = Supervised::start(&gateway_app(port, "autorestart = false")).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            s.main
                .later_lines()
                .iter()
                .any(|l| l.starts_with("not-ready"))
        })
        .await,
        "main says the start failed: {:?}",
        s.main.later_lines()
    );
    let lines = s.main.later_lines();
    assert!(lines.iter().any(|l| l == "starting receive"), "{lines:?}");
    assert!(!lines.iter().any(|l| l == "ready"), "{lines:?}");
    let failed = lines
        .iter()
        .find(|l| l.starts_with("failed receive: "))
        .unwrap_or_else(|| panic!("no failed line: {lines:?}"));
    let holder = format!("port {port} is in use by pid {}", std::process::id());
    assert!(failed.contains(&holder), "{failed}");
    // Nothing was split: the port's only listener is still the foreign one.
    assert_eq!(procinfo::tcp_listeners(port).pids, [std::process::id()]);
}

#[tokio::test]
async fn instances_of_the_gateway_share_its_port() {
    let port = free_port();
    let s = Supervised::start(&gateway_app(port, "instances = 2")).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            s.main.later_lines().iter().any(|l| l == "ready")
        })
        .await,
        "{:?}",
        s.main.later_lines()
    );
    let lines = s.main.later_lines();
    assert!(lines.iter().any(|l| l == "online receive01"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "online receive02"), "{lines:?}");
    assert_eq!(procinfo::tcp_listeners(port).pids.len(), 2);
}

/// Under a low file limit the gateway raises its soft limit to the hard one and
/// takes its connection cap from it (`max_connections` in /health); an explicit
/// cap over what fits is cut, one under it kept. Run through `prlimit`.
#[tokio::test]
async fn the_connection_cap_follows_the_file_limit() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    let cap = |extra: &'static [&'static str]| async move {
        let mut cmd = std::process::Command::new("prlimit");
        cmd.args(["--nofile=300:400", "--"])
            .arg(bin_path("receive"));
        let mut args = vec!["--listen", "127.0.0.1:0", "--broker", "tcp://127.0.0.1:1"];
        args.extend_from_slice(extra);
        let child = switchboard_testkit::Child::announce(
            switchboard_testkit::Child::spawn_command(cmd, "receive", &args, &[]).unwrap(),
            "receive",
        )
        .unwrap();
        let addr = child
            .first_line
            .clone()
            .unwrap()
            .replace("ws://", "http://");
        let (_, body) = crate::observe::get(&addr, "/health").await;
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        health["max_connections"].as_u64()
    };
    // 400 files (the hard limit, raised to) less 64 + 400/16.
    assert_eq!(cap(&[]).await, Some(311));
    assert_eq!(cap(&["--max-connections", "100000"]).await, Some(311));
    assert_eq!(cap(&["--max-connections", "50"]).await, Some(50));
}

/// A second main on the same run folder (a second `scripts/run-all.sh`, a
/// command pasted into another terminal) used to adopt the running broker and
/// fight the first main for every app. It now refuses at once, naming the first,
/// and the first's clients see nothing of it.
#[tokio::test]
async fn a_second_main_on_the_same_run_folder_refuses_and_disturbs_nothing() {
    use crate::supervisor::app;
    use switchboard_bus::CallOptions;
    let s = Supervised::start(&app("echo", &[], "")).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            s.main.later_lines().iter().any(|l| l == "ready")
        })
        .await,
        "{:?}",
        s.main.later_lines()
    );
    let before = s.ls().await;
    // The first system's clients keep calling while the second main tries.
    let bus = s.bus.clone();
    let traffic = tokio::spawn(async move {
        let mut errors = Vec::new();
        for _ in 0..150 {
            if let Err(e) = switchboard_testkit::whoami(&bus, "echo", CallOptions::default()).await
            {
                errors.push(e.to_string());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        errors
    });
    let file = s.dir.path().join("ecosystem.toml");
    let second = tokio::process::Command::new(bin_path("main"))
        .args(["--config", file.to_str().unwrap()])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .expect("the second main gives up at once")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("another main (pid {})", s.main.pid())),
        "{stderr}"
    );
    assert!(
        stderr.contains("sbctl shutdown"),
        "says what to do: {stderr}"
    );
    assert_eq!(traffic.await.unwrap(), Vec::<String>::new());
    // The same processes as before: nothing restarted, nothing adopted twice.
    assert_eq!(pids(&s.ls().await), pids(&before));
}

/// `main --no-spawn` (the documented monitor) beside a running main: both
/// registered as `main`, knocked each other off the broker every second, and
/// the supervising main read its lost registration as a hung broker and
/// killed it. The monitor now has an instance name of its own, the broker
/// refuses a live instance's name to another process, and a lost
/// registration is never a hung broker.
#[tokio::test]
async fn a_monitor_beside_main_takes_nothing_and_kills_nothing() {
    use crate::supervisor::app;
    let s = Supervised::start(&app("echo", &[], "")).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            s.main.later_lines().iter().any(|l| l == "ready")
        })
        .await
    );
    let before = pids(&s.ls().await);
    assert!(
        before.iter().any(|(i, _)| i.contains("broker")),
        "{before:?}"
    );
    let file = s.dir.path().join("ecosystem.toml");
    let _monitor = switchboard_testkit::Child::spawn(
        "main",
        &[
            "--no-spawn",
            "--broker",
            &s.endpoint,
            "--config",
            file.to_str().unwrap(),
        ],
        &[],
    )
    .unwrap();
    // The monitor registers under its own name.
    assert!(
        eventually(Duration::from_secs(10), || async {
            switchboard_testkit::broker_ls(&s.bus)
                .await
                .iter()
                .any(|i| i.instance.starts_with("main-monitor-"))
        })
        .await,
        "the monitor is on the bus"
    );
    // A dozen of main's broker checks (heartbeat 250 ms, hung after 3 misses).
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let instances = switchboard_testkit::broker_ls(&s.bus).await;
        assert!(
            instances.iter().any(|i| i.instance == "main"),
            "main keeps its registration: {:?}",
            instances.iter().map(|i| &i.instance).collect::<Vec<_>>()
        );
    }
    // Asked of the supervising main itself (the monitor answers `ls` too, as
    // another instance of `main`: sbctl asks each one).
    let pinned = switchboard_bus::CallOptions {
        instance: Some("main".into()),
        ..switchboard_bus::CallOptions::default()
    };
    let reply = s.bus.call("main", "ls", Vec::new(), pinned).await.unwrap();
    let rows: Vec<serde_json::Value> = switchboard_bus::proto::from_body(&reply.body).unwrap();
    assert_eq!(pids(&rows), before, "nothing was killed or restarted");
    let lines = s.main.later_lines();
    assert!(!lines.iter().any(|l| l.contains("hung")), "{lines:?}");
}

/// Each `ls` row's instance and pid: what must not change when nothing restarts.
fn pids(rows: &[serde_json::Value]) -> Vec<(String, serde_json::Value)> {
    rows.iter()
        .map(|r| (r["instance"].to_string(), r["pid"].clone()))
        .collect()
}
