//! Changing what runs while main runs: `sbctl scale` and `sbctl reload-config`,
//! against a real main with real processes.

use std::collections::HashSet;
use std::time::Duration;
use switchboard_bus::svc::procinfo;
use switchboard_bus::CallOptions;
use switchboard_testkit::{eventually, whoami};

use crate::supervisor::{app, Supervised};

/// The managed instances of `app` and their pids.
async fn instances(s: &Supervised, app: &str) -> Vec<(String, u32, String)> {
    s.ls()
        .await
        .iter()
        .filter(|i| i["app"] == app && i["managed"] == true)
        .map(|i| {
            (
                i["instance"].as_str().unwrap_or("").to_owned(),
                i["pid"].as_u64().unwrap_or(0) as u32,
                i["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn scale_up_and_down() {
    let s = Supervised::start_with_env(
        &app("alpha", &[], ""),
        &[("SB_METRICS_GAUGE_IDLE_SECS", "1")],
    )
    .await;
    assert!(s.all_online(1).await);
    let first = instances(&s, "alpha").await;

    let out = s.sbctl(&["scale", "alpha", "3"]);
    assert!(out.status.success(), "{out:?}");
    let now = instances(&s, "alpha").await;
    let names: Vec<&str> = now.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["alpha01", "alpha02", "alpha03"], "{now:?}");
    assert!(now.iter().all(|(_, _, state)| state == "online"), "{now:?}");
    // The single unnumbered instance was retired once the three were ready.
    assert!(!procinfo::alive(first[0].1));
    // Requests spread over the new instances.
    let mut seen = HashSet::new();
    for _ in 0..30 {
        seen.insert(
            whoami(&s.bus, "alpha", CallOptions::default())
                .await
                .unwrap(),
        );
    }
    assert!(seen.len() >= 2, "{seen:?}");

    // main's /metrics shows alpha03 while it runs.
    let http = s.http();
    let text = crate::observe::get(&http, "/metrics").await.1;
    assert!(
        text.contains(
            "sb_instance_state{app=\"alpha\",sb_instance=\"alpha03\",state=\"online\"} 1"
        ),
        "{text}"
    );

    let out = s.sbctl(&["scale", "alpha", "2"]);
    assert!(out.status.success(), "{out:?}");
    let after = instances(&s, "alpha").await;
    let names: Vec<&str> = after.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["alpha01", "alpha02"]);
    assert!(!procinfo::alive(now[2].1), "alpha03 stopped");
    // Kept instances were not restarted.
    assert_eq!(after[0].1, now[0].1);
    // The retired instance leaves main's /metrics (it does not stay "online").
    let gone = eventually(Duration::from_secs(10), || async {
        let text = crate::observe::get(&http, "/metrics").await.1;
        let states: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("sb_instance_state{"))
            .collect();
        states.iter().any(|l| l.contains("sb_instance=\"alpha02\""))
            && !states.iter().any(|l| l.contains("sb_instance=\"alpha03\""))
    })
    .await;
    assert!(gone, "alpha03's state still in /metrics");

    let out = s.sbctl(&["scale", "alpha", "0"]);
    assert_eq!(out.status.code(), Some(10), "{out:?}");
    let out = s.sbctl(&["scale", "nope", "2"]);
    assert_eq!(out.status.code(), Some(10), "{out:?}");
}

#[tokio::test]
async fn reload_config_adds_removes_and_reloads_changed_apps() {
    let s = Supervised::start(&format!(
        "{}{}",
        app("alpha", &[], ""),
        app("beta", &[], "")
    ))
    .await;
    assert!(s.all_online(2).await);
    let alpha_before = instances(&s, "alpha").await;
    let beta_before = instances(&s, "beta").await;
    let file = s.dir.path().join("ecosystem.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let header = &text[..text.find("[[apps]]").unwrap()];

    // A broken file changes nothing.
    std::fs::write(
        &file,
        format!("{header}[[apps]]\nname = \"x\"\nbogus = 1\n"),
    )
    .unwrap();
    let out = s.sbctl(&["reload-config"]);
    assert_eq!(out.status.code(), Some(10), "{out:?}");
    assert_eq!(instances(&s, "alpha").await, alpha_before);

    // alpha changed (an environment variable), beta removed, gamma new.
    let new = format!(
        "{header}{}{}",
        app("alpha", &[], "env = { SB_FLAVOUR = \"new\" }"),
        app("gamma", &["alpha"], "")
    );
    std::fs::write(&file, new).unwrap();
    let out = s.sbctl(&["--json", "reload-config"]);
    assert!(out.status.success(), "{out:?}");
    let change: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(change["added"], serde_json::json!(["gamma"]));
    assert_eq!(change["removed"], serde_json::json!(["beta"]));
    assert_eq!(change["changed"], serde_json::json!(["alpha"]));

    assert!(instances(&s, "beta").await.is_empty());
    assert!(!procinfo::alive(beta_before[0].1), "beta stopped");
    let gamma = instances(&s, "gamma").await;
    assert_eq!(gamma.len(), 1);
    assert_eq!(gamma[0].2, "online");
    // alpha was reloaded onto the new configuration: a new process, online.
    let alpha = instances(&s, "alpha").await;
    assert_eq!(alpha[0].2, "online");
    assert_ne!(alpha[0].1, alpha_before[0].1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = s.sbctl(&["--json", "describe", "alpha"]);
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["env"]["SB_FLAVOUR"], "new");

    // Nothing changed: nothing happens.
    let out = s.sbctl(&["--json", "reload-config"]);
    let change: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(change["unchanged"], serde_json::json!(["alpha", "gamma"]));
    assert_eq!(instances(&s, "alpha").await[0].1, alpha[0].1);
}
