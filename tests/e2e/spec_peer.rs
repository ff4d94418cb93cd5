//! A peer written only from docs/protocol.md (tests/peers/spec_peer.py, Python with
//! pyzmq and msgpack) joins the real broker, answers `sbctl`, and leaves with `bye`.
//! The Python environment comes from scripts/python-peer-env.sh (scripts/test.sh
//! runs it and passes `SB_TEST_PYTHON`); without Python the test says it is skipped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use switchboard_testkit::{bin_path, Child, Sig};

fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SB_TEST_PYTHON").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/py/bin/python");
    venv.exists().then_some(venv)
}

fn sbctl(endpoint: &str, secret: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin_path("sbctl"))
        .args(["--broker", endpoint])
        .args(args)
        .env("SB_SECRET", secret)
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_peer_written_from_the_spec_serves_sbctl() {
    let Some(python) = python() else {
        eprintln!("skipped: no Python with pyzmq and msgpack (run scripts/python-peer-env.sh)");
        return;
    };
    let secret = "spec-secret";
    let broker = Child::broker("tcp://127.0.0.1:0", &["--secret", secret]).unwrap();
    let endpoint = broker.first_line.clone().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/spec_peer.py");
    let mut peer = Command::new(&python)
        .arg(&script)
        .args([&endpoint, "reverse", "py-1"])
        .env("SB_SECRET", secret)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // "ready" once registered (it answered the secret's challenge to get there).
    let stdout = peer.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let line = BufReader::new(stdout).lines().next();
        let _ = tx.send(line);
    });
    let first = rx.recv_timeout(Duration::from_secs(15));
    assert!(
        matches!(&first, Ok(Some(Ok(line))) if line == "ready"),
        "the Python peer did not register: {first:?}"
    );

    let out = sbctl(
        &endpoint,
        secret,
        &["send", "reverse", "reverse", r#"{"text":"switchboard"}"#],
    );
    assert!(out.status.success(), "{out:?}");
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        reply,
        serde_json::json!({"text": "draobhctiws", "lang": "python"})
    );

    // Its errors are typed too: unknown_op is sbctl's exit status 13.
    let out = sbctl(&endpoint, secret, &["send", "reverse", "nope"]);
    assert_eq!(out.status.code(), Some(13), "{out:?}");

    // The broker lists it as a ready instance of `reverse`.
    let out = sbctl(&endpoint, secret, &["--json", "ls"]);
    let ls: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        ls.as_array()
            .unwrap()
            .iter()
            .any(|i| i["instance"] == "py-1" && i["service"] == "reverse" && i["state"] == "ready"),
        "{ls}"
    );

    // SIGTERM: it says bye; the broker no longer routes to it.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(peer.id() as i32), Sig::SIGTERM).unwrap();
    let _ = peer.wait();
    let out = sbctl(
        &endpoint,
        secret,
        &["--timeout-ms", "300", "send", "reverse", "reverse", "{}"],
    );
    assert_eq!(
        out.status.code(),
        Some(14),
        "unavailable after bye: {out:?}"
    );
}
