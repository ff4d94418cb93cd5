//! Several hosts, one system: a main per host (`[main] host`), one broker. Here
//! the two "hosts" are two mains on this machine with ecosystem files of their
//! own; host b's main connects to the broker host a's main runs
//! (`[broker] connect`). sbctl sees both hosts' apps in one table and sends an
//! order to the main that runs the app.

use serde_json::Value;
use std::time::Duration;
use switchboard_testkit::{bin_path, broker_ls, eventually};

use crate::supervisor::Supervised;

fn echo_app(name: &str) -> String {
    format!(
        "[[apps]]\nname = \"{name}\"\nbin = \"{}\"\nargs = [\"--service\", \"{name}\"]\nrestart_delay_ms = 50\nenv = {{ RUST_LOG = \"info\" }}\n",
        bin_path("echo").display()
    )
}

const MAIN: &str = "heartbeat_ms = 250\nliveness = 3\nhttp = \"\"\n";

/// Every host's rows, from `sbctl --json ls`.
fn ls(s: &Supervised) -> Vec<Value> {
    let out = s.sbctl(&["--json", "ls"]);
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn row<'a>(rows: &'a [Value], instance: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["instance"] == instance)
        .unwrap_or_else(|| panic!("{instance} in {rows:?}"))
}

#[tokio::test]
async fn two_hosts_one_table_and_orders_reach_the_other_host() {
    let a = Supervised::start_file(&format!(
        "[main]\nhost = \"a\"\n{MAIN}\n[broker]\nbin = \"{}\"\nbind = \"tcp://127.0.0.1:0\"\n\n{}",
        bin_path("broker").display(),
        echo_app("alpha")
    ))
    .await;
    let b = Supervised::start_file(&format!(
        "[main]\nhost = \"b\"\n{MAIN}\n[broker]\nconnect = \"{}\"\n\n{}\n{}",
        a.endpoint,
        echo_app("alpha"),
        echo_app("beta")
    ))
    .await;
    assert_eq!(b.endpoint, a.endpoint, "b uses a's broker");
    let online = eventually(Duration::from_secs(20), || async {
        let rows = ls(&a);
        ["alpha.a", "alpha.b", "beta.b"].iter().all(|i| {
            rows.iter()
                .any(|r| r["instance"] == *i && r["state"] == "online")
        })
    })
    .await;
    assert!(online, "{:?}", ls(&a));

    // Two mains, two names: no collision on the bus.
    let on_bus = broker_ls(&a.bus).await;
    let mains: Vec<&str> = on_bus
        .iter()
        .filter(|i| i.service == "main")
        .map(|i| i.instance.as_str())
        .collect();
    assert_eq!(mains.len(), 2, "{on_bus:?}");
    assert!(
        mains.contains(&"main.a") && mains.contains(&"main.b"),
        "{mains:?}"
    );

    // One table with a HOST column: a's broker and alpha, b's alpha and beta.
    let rows = ls(&a);
    assert_eq!(row(&rows, "alpha.a")["host"], "a");
    assert_eq!(row(&rows, "alpha.b")["host"], "b");
    assert_eq!(row(&rows, "beta.b")["host"], "b");
    assert_eq!(row(&rows, "broker")["host"], "a");
    let table = String::from_utf8_lossy(&a.sbctl(&["ls"]).stdout).into_owned();
    assert!(table.trim_start().starts_with("HOST"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.trim_start().starts_with('b') && l.contains("beta.b")),
        "{table}"
    );

    // A reload asked of host a's broker endpoint reaches beta on host b.
    let before = row(&rows, "beta.b")["pid"].clone();
    let reload = a.sbctl(&["reload", "beta"]);
    assert!(reload.status.success(), "{reload:?}");
    let rows = ls(&a);
    assert_ne!(
        row(&rows, "beta.b")["pid"],
        before,
        "a new process on host b"
    );
    assert_eq!(row(&rows, "beta.b")["state"], "online");

    // One instance of an app on two hosts: only that one restarts.
    let restart = a.sbctl(&["restart", "alpha.b"]);
    assert!(restart.status.success(), "{restart:?}");
    let rows = ls(&a);
    assert_eq!(row(&rows, "alpha.b")["restarts"], 1);
    assert_eq!(row(&rows, "alpha.a")["restarts"], 0);

    // Logs of an app on two hosts: both instances, prefixed.
    let logs = a.sbctl(&["logs", "alpha", "-n", "5"]);
    assert!(logs.status.success(), "{logs:?}");
    let text = String::from_utf8_lossy(&logs.stdout);
    for instance in ["alpha.a", "alpha.b"] {
        assert!(
            text.lines().any(|l| l.starts_with(instance)),
            "{instance} in {text}"
        );
    }
    // A name no host has is refused, naming the hosts asked.
    let nope = a.sbctl(&["restart", "gamma"]);
    assert_eq!(nope.status.code(), Some(10), "{nope:?}");
    assert!(String::from_utf8_lossy(&nope.stderr).contains("main.a, main.b"));

    // Requests reach both hosts' instances.
    for _ in 0..2 {
        let sent = a.sbctl(&["send", "alpha", "echo", r#"{"x":1}"#]);
        assert!(sent.status.success(), "{sent:?}");
    }
}

/// A `[main] host` that would not make bus names is refused at load.
#[test]
fn a_bad_host_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ecosystem.toml");
    for host in ["a.b", "", "x y", &"h".repeat(25)] {
        std::fs::write(&file, format!("[main]\nhost = \"{host}\"\n")).unwrap();
        let out = std::process::Command::new(bin_path("main"))
            .args(["--config", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{host:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("host"),
            "{out:?}"
        );
    }
}
