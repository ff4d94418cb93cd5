//! `deploy/` checked: the Kubernetes manifests against the Kubernetes schemas
//! (`kubernetes-validate`, offline: the package carries them), and the
//! Dockerfile, the manifests, the systemd units and the multi-host recipe name
//! only files and binaries that exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `[[bin]]` name in the workspace's crates.
fn workspace_bins() -> BTreeSet<String> {
    let mut bins = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let Ok(text) = std::fs::read_to_string(entry.unwrap().path().join("Cargo.toml")) else {
            continue;
        };
        let mut in_bin = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if in_bin {
                if let Some(name) = line.strip_prefix("name = ") {
                    bins.insert(name.trim_matches('"').to_owned());
                }
            }
        }
    }
    bins
}

/// The quoted words after `key` on each line that has it.
fn quoted_after(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_once(key).map(|(_, rest)| rest))
        .filter_map(|rest| rest.split('"').nth(1).map(str::to_owned))
        .collect()
}

#[test]
fn the_kubernetes_manifests_pass_the_schemas() {
    let Some(python) = std::env::var_os("SB_TEST_PYTHON").map(PathBuf::from) else {
        eprintln!("skipped: SB_TEST_PYTHON is not set (scripts/python-peer-env.sh makes it; scripts/test.sh sets it)");
        return;
    };
    let validate = python.with_file_name("kubernetes-validate");
    if !validate.exists() {
        eprintln!("skipped: {} is not installed", validate.display());
        return;
    }
    let manifests: Vec<PathBuf> = ["namespace.yaml", "broker.yaml", "apps.yaml", "network.yaml"]
        .iter()
        .map(|f| root().join("deploy/k8s").join(f))
        .collect();
    let out = std::process::Command::new(&validate)
        .args(["--strict", "-k", "1.30.0"])
        .args(&manifests)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    for resource in [
        "namespace/switchboard",
        "deployment/broker-primary",
        "deployment/broker-backup",
        "service/broker-primary",
        "service/broker-backup",
        "deployment/db",
        "deployment/chat",
        "statefulset/loc",
        "service/loc",
        "poddisruptionbudget/loc",
        "deployment/receive",
        "service/receive",
        "poddisruptionbudget/receive",
        "poddisruptionbudget/broker",
        "deployment/main",
        "networkpolicy/default-deny-ingress",
    ] {
        assert!(
            report.contains(&format!("passed for resource {resource}")),
            "{resource}: {report}"
        );
    }
    // The validator can fail: an unknown field is refused.
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        bad.path(),
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {portz: []}\n",
    )
    .unwrap();
    let refused = std::process::Command::new(&validate)
        .args(["--strict", "-k", "1.30.0"])
        .arg(bad.path())
        .output()
        .unwrap();
    assert!(!refused.status.success(), "the validator can fail");
}

#[test]
fn the_dockerfile_manifests_and_units_name_what_exists() {
    let bins = workspace_bins();
    assert!(
        bins.contains("main") && bins.contains("receive"),
        "{bins:?}"
    );
    let docker = read("deploy/Dockerfile");

    // The toolchain the repository pins.
    let channel = quoted_after(&read("rust-toolchain.toml"), "channel");
    assert!(
        docker.contains(&format!("FROM rust:{}-", channel[0])),
        "the build stage uses Rust {}",
        channel[0]
    );
    // What is built and copied exists, and the image holds every service.
    let built: BTreeSet<String> = docker
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "--bin")
        .map(|w| w[1].to_owned())
        .collect();
    let copied: BTreeSet<String> = docker
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("/src/target/release/"))
        .map(str::to_owned)
        .collect();
    assert_eq!(built, copied, "every binary built is copied");
    for bin in &built {
        assert!(bins.contains(bin), "{bin} is not a binary of the workspace");
    }
    for needed in ["broker", "main", "receive", "chat", "loc", "db", "sbctl"] {
        assert!(built.contains(needed), "the image lacks {needed}");
    }
    // COPY sources (outside the build stage's own output) exist.
    for line in docker
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        for source in &words[1..words.len() - 1] {
            assert!(root().join(source).exists(), "COPY {source}: no such path");
        }
    }
    assert!(docker.contains("USER 10001"), "runs as a non-root user");
    let cmd = docker.lines().find(|l| l.starts_with("CMD")).unwrap();
    assert!(cmd.contains("\"main\""), "{cmd}");

    // Kubernetes: the commands are binaries of the image; the Secret's keys
    // are those the documented `kubectl create secret` command makes (no
    // Secret is applied from deploy/k8s: it would overwrite the real one).
    let readme = read("deploy/README.md");
    let secret_keys: BTreeSet<String> = readme
        .split("--from-literal=")
        .skip(1)
        .filter_map(|rest| rest.split_once('=').map(|(k, _)| k.to_owned()))
        .collect();
    assert!(
        !secret_keys.is_empty(),
        "deploy/README.md: kubectl create secret"
    );
    assert!(!root().join("deploy/k8s/secret.yaml").exists());
    for file in ["broker.yaml", "apps.yaml"] {
        let text = read(&format!("deploy/k8s/{file}"));
        let containers: String = text
            .lines()
            .filter(|l| l.trim_start().starts_with("command: ["))
            .map(|l| format!("{l}\n"))
            .collect();
        let commands = quoted_after(&containers, "command: [");
        assert!(!commands.is_empty(), "{file} runs something");
        for command in commands {
            assert!(
                copied.contains(&command),
                "{file}: {command} is not in the image"
            );
        }
        for key in text
            .lines()
            .filter(|l| l.contains("secretKeyRef"))
            .filter_map(|l| l.split("key: ").nth(1))
            .map(|k| k.trim_end_matches(['}', ' ']))
        {
            assert!(
                secret_keys.contains(key),
                "{file}: no key {key} in the Secret"
            );
        }
        assert!(text.contains("runAsNonRoot: true"), "{file}: non-root");
        assert!(!text.contains(":latest"), "{file}: a fixed image tag");
        assert_eq!(
            text.matches("image: switchboard:").count(),
            text.matches("resources:").count(),
            "{file}: every container has resources"
        );
    }

    // systemd: the binaries exist, and the units run as the service user.
    let whole = read("deploy/systemd/switchboard.service");
    let exec = whole.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    let program = exec["ExecStart=".len()..]
        .split_whitespace()
        .next()
        .unwrap();
    assert!(
        bins.contains(program.trim_start_matches("/opt/switchboard/bin/")),
        "{exec}"
    );
    let one = read("deploy/systemd/switchboard-app@.service");
    for unit in [&whole, &one] {
        assert!(unit.contains("User=switchboard"), "non-root");
        assert!(
            unit.contains("StateDirectory=switchboard"),
            "a state directory"
        );
    }
    assert!(
        one.contains("/opt/switchboard/bin/\"$SB_BIN\""),
        "runs the binary its env file names"
    );

    // The multi-host recipe's binaries.
    for host in ["a", "b", "c"] {
        for bin in quoted_after(
            &read(&format!("deploy/multi-host/host-{host}.toml")),
            "bin = ",
        ) {
            assert!(bins.contains(&bin), "host-{host}.toml: {bin}");
        }
    }
}
