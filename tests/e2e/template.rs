//! The service template (templates/service: its own workspace, depending on
//! switchboard-bus by path as a crate outside this repository would) started by
//! main from its ecosystem entry: it becomes ready, answers a request, and tells
//! `sbctl info` what it is. scripts/test.sh builds it into target/debug/greeter.

use std::process::Command;
use switchboard_bus::proto;
use switchboard_bus::CallOptions;
use switchboard_testkit::bin_path;

use crate::supervisor::Supervised;

#[tokio::test]
async fn the_template_service_runs_under_main_and_answers() {
    // The template's own ecosystem entry, with the binary's path made absolute.
    let entry = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../templates/service/ecosystem.toml"),
    )
    .unwrap()
    .replace(
        "target/debug/greeter",
        &bin_path("greeter").display().to_string(),
    );
    let s = Supervised::start(&entry).await;
    assert!(s.all_online(1).await, "{:?}", s.ls().await);

    let body = proto::to_body(&serde_json::json!({"name": "ada"})).unwrap();
    let reply = s
        .bus
        .call("greeter", "hello", body, CallOptions::default())
        .await
        .unwrap();
    let reply: serde_json::Value = proto::from_body(&reply.body).unwrap();
    assert_eq!(reply, serde_json::json!({"greeting": "hello, ada"}));

    let body = proto::to_body(&serde_json::json!({"name": ""})).unwrap();
    let err = s
        .bus
        .call("greeter", "hello", body, CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code, proto::ErrorCode::BadRequest);

    let out = Command::new(bin_path("sbctl"))
        .args(["--json", "info", "greeter"])
        .env("SB_BROKER", &s.endpoint)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let info: proto::Info = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info.service, "greeter");
    assert_eq!(info.version, "0.1.0");
    assert_eq!(info.protocol, "1.3");
    assert_eq!(
        info.ops,
        ["$echo", "$health", "$info", "$metrics", "$trace", "hello"]
    );
}

/// A service made by `scripts/new-service.sh shouter` (scripts/test.sh runs it
/// and builds the result, as a user would): the entry the script printed,
/// pasted as printed into an ecosystem file in another folder, runs under main.
/// (The template's own entry, `bin = "target/debug/greeter"`, failed once pasted:
/// a relative bin is resolved from the folder of the file it is pasted into.)
#[tokio::test]
async fn a_service_made_by_new_service_sh_runs_from_its_printed_entry() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let made = std::fs::read_to_string(root.join("target/new-service/made.txt"))
        .expect("scripts/test.sh runs scripts/new-service.sh shouter first");
    let entry = made
        .split_once("\n\n")
        .map(|(_, entry)| entry.to_owned())
        .expect("the script prints the entry after a blank line");
    assert!(entry.contains("name = \"shouter\""), "{entry}");
    let s = Supervised::start(&entry).await;
    assert!(s.all_online(1).await, "{:?}", s.ls().await);
    let body = proto::to_body(&serde_json::json!({"name": "ada"})).unwrap();
    let reply = s
        .bus
        .call("shouter", "hello", body, CallOptions::default())
        .await
        .unwrap();
    let reply: serde_json::Value = proto::from_body(&reply.body).unwrap();
    assert_eq!(reply, serde_json::json!({"greeting": "hello, ada"}));
}

/// The script refuses a name that is not a bus name (or is one of ours) and a
/// folder that exists, before it writes anything.
#[test]
fn new_service_sh_refuses_bad_names_and_existing_folders() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, to: &std::path::Path| {
        Command::new(root.join("scripts/new-service.sh"))
            .arg(name)
            .arg(to)
            .output()
            .unwrap()
    };
    for bad in ["", "../x", "a b", "Shout", "x\"y", "-rf", "main", "chat"] {
        let to = dir.path().join("made");
        let out = run(bad, &to);
        assert_eq!(out.status.code(), Some(64), "{bad:?}: {out:?}");
        assert!(!to.exists(), "{bad:?} wrote nothing");
    }
    let out = run("shouter", dir.path());
    assert_eq!(out.status.code(), Some(73), "an existing folder: {out:?}");
    // A folder whose path would end a TOML string or a sed expression.
    for bad in ["a\"b", "a\\b", "a|b", "a&b", "a\nb"] {
        let to = dir.path().join(bad);
        let out = run("shouter", &to);
        assert_eq!(out.status.code(), Some(64), "{bad:?}: {out:?}");
        assert!(!to.exists(), "{bad:?} wrote nothing");
    }
    // A CARGO_TARGET_DIR that would end the printed entry's `bin = "..."`.
    let to = dir.path().join("made");
    let out = Command::new(root.join("scripts/new-service.sh"))
        .arg("shouter")
        .arg(&to)
        .env("CARGO_TARGET_DIR", "/tmp/t\"\nbin = \"/bin/sh")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(!to.exists(), "a bad CARGO_TARGET_DIR wrote nothing");
}

/// Names the script took that Cargo then refuses for the binary (`build`,
/// `deps`, `examples`, `incremental`: the folders of target/debug), so the
/// service it made never built. Refused up front, as Switchboard's own are,
/// before anything is copied.
#[test]
fn new_service_sh_refuses_names_cargo_cannot_build() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    for name in ["build", "deps", "examples", "incremental"] {
        let to = dir.path().join(name);
        let out = Command::new(root.join("scripts/new-service.sh"))
            .arg(name)
            .arg(&to)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{name}: {out:?}");
        assert!(!to.exists(), "{name}: nothing is made");
    }
}
