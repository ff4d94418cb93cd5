//! PM2's daily commands in sbctl, against a real main: `logs` of every app,
//! `ls --watch`, `describe`, `shutdown`.

use std::process::{Command, Stdio};
use std::time::Duration;
use switchboard_testkit::bin_path;

use crate::supervisor::{app, Supervised};

#[tokio::test]
async fn logs_describe_watch_and_shutdown() {
    let apps = format!(
        "{}{}",
        app("alpha", &[], "env = { RUST_LOG = \"info\", SB_API_TOKEN = \"hunter2\", DATABASE_URL = \"mysql://u:pw@h/db\" }"),
        app("beta", &[], "instances = 2\ninstance_var = \"SB_INSTANCE\"\nenv = { RUST_LOG = \"info\" }")
    );
    let mut s = Supervised::start(&apps).await;
    assert!(s.all_online(3).await, "{:?}", s.ls().await);

    // logs with no name: every instance's lines, prefixed with its name.
    let out = s.sbctl(&["logs", "-n", "20"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    // (The broker runs with the tests' RUST_LOG=warn: its log is empty.)
    for instance in ["alpha", "beta01", "beta02"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{instance:<6} | "))),
            "no line of {instance}: {text}"
        );
    }
    // --err keeps only warnings and errors: none here.
    let out = s.sbctl(&["logs", "--err"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .all(|l| l.contains("WARN") || l.contains("ERROR")),
        "{text}"
    );

    // --json on logs too: one object a line.
    let out = s.sbctl(&["--json", "logs", "beta01", "-n", "5"]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty() && lines.iter().all(|l| l["instance"] == "beta01"));
    // In a pipe, tables carry no colour codes.
    let out = s.sbctl(&["ls"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains('\x1b'));
    // Shell completions, with no broker needed.
    let out = Command::new(bin_path("sbctl"))
        .args(["--broker", "tcp://127.0.0.1:1", "completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("_sbctl()"));

    // describe: the configuration, secrets redacted, and the instances.
    let out = s.sbctl(&["--json", "describe", "alpha"]);
    assert!(out.status.success(), "{out:?}");
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["name"], "alpha");
    assert_eq!(d["env"]["SB_API_TOKEN"], "***");
    assert_eq!(d["env"]["DATABASE_URL"], "mysql://u:***@h/db");
    assert_eq!(d["status"][0]["state"], "online");
    let out = s.sbctl(&["describe", "beta"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("beta01") && text.contains("beta02"), "{text}");
    assert!(!text.contains("hunter2"));
    let out = s.sbctl(&["describe", "nope"]);
    assert_eq!(out.status.code(), Some(10), "bad_request: {out:?}");

    // ls --watch in a pipe: a JSON line a second.
    let watch = Command::new(bin_path("sbctl"))
        .args(["ls", "--watch"])
        .env("SB_BROKER", &s.endpoint)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watch.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = watch.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let frames: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(frames.len() >= 2, "{frames:?}");
    assert!(frames
        .iter()
        .all(|f| f.as_array().is_some_and(|a| a.len() >= 4)));

    // shutdown: every app, then main, stops; main exits 0.
    let pids: Vec<u32> = s
        .ls()
        .await
        .iter()
        .filter_map(|i| i["pid"].as_u64().map(|p| p as u32))
        .filter(|&p| p > 0)
        .collect();
    assert!(pids.len() >= 4, "{pids:?}");
    let out = s.sbctl(&["shutdown"]);
    assert!(out.status.success(), "{out:?}");
    let status = s.main.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|st| st.success()), "{status:?}");
    for pid in pids {
        assert!(
            !switchboard_bus::svc::procinfo::alive(pid),
            "{pid} still runs"
        );
    }
}
