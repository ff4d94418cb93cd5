//! `clients/js` against the real system: its Node test suite
//! (`clients/js/test/*.test.js`, Node's built-in runner) runs against a broker,
//! db on MariaDB, chat, loc and two gateways under main; the suite stops and
//! starts gateway A with `sbctl` to test reconnects. Skipped, saying so, where
//! Node is not installed.

use std::path::{Path, PathBuf};
use std::process::Command;
use switchboard_testkit::{bin_path, TestDatabase};

use crate::supervisor::Supervised;

/// Gateway B's client-token secret.
pub const DEMO_SECRET: &str = "js-client-secret";

/// A whole system under main for browser-side tests: db, chat, one loc, and
/// two gateways — `edge_a` open (anonymous users), `edge_b` with auth and no
/// token leeway — on ports of their own.
pub struct DemoSystem {
    pub s: Supervised,
    pub a: String,
    pub b: String,
    _db: TestDatabase,
}

use switchboard_testkit::free_port;

impl DemoSystem {
    pub async fn start() -> Self {
        let db = TestDatabase::new();
        let (pa, pb) = (free_port(), free_port());
        let apps = format!(
            "[[apps]]\nname = \"db\"\nbin = \"{db_bin}\"\nenv = {{ DATABASE_URL = \"{url}\" }}\n\n\
             [[apps]]\nname = \"chat\"\nbin = \"{chat}\"\ndepends_on = [\"db\"]\n\n\
             [[apps]]\nname = \"loc\"\nbin = \"{loc}\"\ndepends_on = [\"db\"]\nargs = [\"--save-interval-ms\", \"100\"]\n\n\
             [[apps]]\nname = \"edge_a\"\nbin = \"{receive}\"\ndepends_on = [\"chat\", \"loc\"]\n\
             args = [\"--listen\", \"127.0.0.1:{pa}\", \"--goaway-ms\", \"100\"]\n\n\
             [[apps]]\nname = \"edge_b\"\nbin = \"{receive}\"\ndepends_on = [\"chat\", \"loc\"]\n\
             args = [\"--listen\", \"127.0.0.1:{pb}\", \"--token-leeway-s\", \"0\"]\n\
             env = {{ SB_AUTH_SECRET = \"{DEMO_SECRET}\" }}\n",
            db_bin = bin_path("db").display(),
            url = db.url,
            chat = bin_path("chat").display(),
            loc = bin_path("loc").display(),
            receive = bin_path("receive").display(),
        );
        let s = Supervised::start(&apps).await;
        assert!(s.all_online(5).await, "{:?}", s.ls().await);
        Self {
            s,
            a: format!("127.0.0.1:{pa}"),
            b: format!("127.0.0.1:{pb}"),
            _db: db,
        }
    }
}

/// Node 20 or later, if installed.
pub fn node() -> Option<PathBuf> {
    let out = Command::new("node").arg("--version").output().ok()?;
    let version = String::from_utf8_lossy(&out.stdout);
    let major: u32 = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()?;
    (out.status.success() && major >= 20).then(|| PathBuf::from("node"))
}

/// `clients/js` packs as an npm package holding the module, its types and the
/// codec (offline: `npm pack --dry-run`).
#[test]
fn the_js_client_packs_for_npm() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js");
    let Ok(out) = Command::new("npm")
        .current_dir(&dir)
        .args(["pack", "--dry-run", "--json", "--offline"])
        .output()
    else {
        eprintln!("skipped: npm is not installed");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let packed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files: Vec<&str> = packed[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    for want in [
        "switchboard.js",
        "switchboard.d.ts",
        "msgpack.js",
        "msgpack.d.ts",
        "package.json",
        "README.md",
    ] {
        assert!(files.contains(&want), "{want} in {files:?}");
    }
    assert!(
        !files.iter().any(|f| f.starts_with("test/")),
        "tests stay out: {files:?}"
    );
    assert_eq!(packed[0]["name"], "@switchboard/client");
}

#[tokio::test]
async fn the_js_client_suite_passes_against_the_real_gateway() {
    let Some(node) = node() else {
        eprintln!("skipped: Node 20+ is not installed (it runs clients/js/test)");
        return;
    };
    let system = DemoSystem::start().await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js");
    let out = Command::new(node)
        .current_dir(&dir)
        .args([
            "--experimental-websocket",
            "--no-warnings",
            "--test",
            "--test-reporter=spec",
            "test/msgpack.test.js",
            "test/client.test.js",
        ])
        .env("SB_WS_A", format!("ws://{}/ws", system.a))
        .env("SB_WS_B", format!("ws://{}/ws", system.b))
        .env("SB_GW_A", "edge_a")
        .env("SB_GW_B", "edge_b")
        .env("SB_SBCTL", bin_path("sbctl"))
        .env("SB_BROKER", &system.s.endpoint)
        .env("SB_AUTH_SECRET", DEMO_SECRET)
        .env_remove("SB_TOKEN_AUDIENCE")
        .env_remove("SB_TOKEN_ISSUER")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        eprintln!("--- main\n{}", system.s.main.later_lines().join("\n"));
        for app in ["edge_a", "edge_b"] {
            let log = std::fs::read_to_string(system.s.logs_dir().join(format!("{app}.log")));
            eprintln!("--- {app}.log\n{}", log.unwrap_or_default());
        }
    }
    assert!(out.status.success(), "the Node suite failed (above)");
    assert!(report.contains("ℹ pass 12"), "every test ran");
    assert!(report.contains("ℹ skipped 0"), "none skipped");
}

/// docs/clients.md's example, as a Node user runs it: `npm install` of
/// clients/js into a project of their own, the block saved as `example.mjs`,
/// `node --experimental-websocket example.mjs` against a running system (the
/// block's `127.0.0.1:3000` is this test's gateway). It used to fail at its
/// import, call functions it never defined (`show`, `moveDot`) and print
/// nothing while a `getToken` failed.
#[tokio::test]
async fn the_docs_js_example_runs_in_node_as_written() {
    let Some(node) = node() else {
        eprintln!("skipped: Node 20+ is not installed");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("docs/clients.md")).unwrap();
    let example = doc
        .split("```js\n")
        .find(|b| b.starts_with("import { connect, SwitchboardError } from '@switchboard/client';"))
        .and_then(|b| b.split("```").next())
        .expect("docs/clients.md's example")
        .to_owned();
    let system = crate::harness::System::start(false).await;
    let project = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("package.json"), "{\"private\": true}\n").unwrap();
    let install = Command::new("npm")
        .args(["install", "--offline", "--no-audit", "--no-fund"])
        .arg(root.join("clients/js").canonicalize().unwrap())
        .current_dir(project.path())
        .output()
        .unwrap();
    assert!(install.status.success(), "npm install: {install:?}");
    let port = system.ws.rsplit(':').next().unwrap();
    std::fs::write(
        project.path().join("example.mjs"),
        example.replace("127.0.0.1:3000", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::process::Command::new(&node)
            .args(["--experimental-websocket", "example.mjs"])
            .current_dir(project.path())
            .output(),
    )
    .await
    .expect("the example ends by itself")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for want in [
        "connection connecting",
        "connection open",
        ": hi",
        "moved",
        "db is closed to clients: forbidden",
    ] {
        assert!(stdout.contains(want), "{want:?} in:\n{stdout}");
    }
}
