//! The docs kept true where a machine can tell.
//!
//! - Every shell block of README.md, docs/, clients/, deploy/ and templates/
//!   (```sh, ```bash, ```console; BENCHMARKS.md's and RELIABILITY.md's are the
//!   long runs, commands rather than tests)
//!   is run against a live system that `scripts/run-all.sh` started, as a reader
//!   would paste it; a block that cannot run here says so, and why, on the line
//!   before it: `<!-- docs-test: skip REASON -->`.
//! - Every relative link resolves (the file, and the heading an anchor names).
//! - Every `sbctl` subcommand and every `ecosystem.toml` key is in the docs, and
//!   every module of a crate is named in its layout doc (the crate root's `//!`).
//! - Metrics are recorded as `crates/svc/src/metrics.rs` and
//!   docs/observability.md say: only in a crate's own `src/metrics.rs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use switchboard_testkit::{bin_path, free_port, TestDatabase};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// The documents a reader is sent to: README.md, the other top-level ones, and
/// every Markdown file under docs/, clients/, deploy/ and templates/.
fn documents() -> Vec<PathBuf> {
    let root = root();
    let mut out: Vec<PathBuf> = [
        "README.md",
        "CHANGELOG.md",
        "BENCHMARKS.md",
        "RELIABILITY.md",
    ]
    .iter()
    .map(|f| root.join(f))
    .collect();
    for dir in ["docs", "clients", "deploy", "templates"] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap().flatten() {
                let path = entry.path();
                let name = entry.file_name();
                if path.is_dir() && name != "node_modules" && name != "target" {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "md") {
                    out.push(path);
                }
            }
        }
    }
    out.sort();
    out
}

/// One fenced shell block: where it is, whether it is marked skipped (and why),
/// its lines.
struct Block {
    at: String,
    skip: Option<String>,
    lines: Vec<String>,
}

const SKIP: &str = "<!-- docs-test: skip";

fn shell_blocks(file: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(file).unwrap();
    let rel = file.strip_prefix(root()).unwrap().display().to_string();
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    let mut previous = "";
    for (n, line) in text.lines().enumerate() {
        let fence = line.trim();
        match &mut current {
            None if ["```sh", "```bash", "```console", "```shell"].contains(&fence) => {
                let skip = previous
                    .trim()
                    .strip_prefix(SKIP)
                    .map(|r| r.trim_end_matches("-->").trim().to_owned());
                current = Some(Block {
                    at: format!("{rel}:{}", n + 1),
                    skip,
                    lines: Vec::new(),
                });
            }
            Some(_) if fence.starts_with("```") => out.push(current.take().unwrap()),
            Some(block) => block.lines.push(line.to_owned()),
            None => {}
        }
        previous = line;
    }
    out
}

/// A command of a block and what the block shows it printing.
struct Step {
    command: String,
    shown: Vec<String>,
}

/// A transcript (`$ ` lines, output after each) or a script (every line a
/// command, `\` continuing it).
fn steps(block: &Block) -> Vec<Step> {
    let transcript = block.lines.iter().any(|l| l.starts_with("$ "));
    let mut out: Vec<Step> = Vec::new();
    let mut continuing = false;
    for line in &block.lines {
        if transcript {
            if let Some(command) = line.strip_prefix("$ ") {
                out.push(Step {
                    command: command.to_owned(),
                    shown: Vec::new(),
                });
            } else if let Some(last) = out.last_mut() {
                last.shown.push(line.clone());
            }
            continue;
        }
        let trimmed = line.trim();
        if continuing {
            let last = out.last_mut().unwrap();
            last.command.push('\n');
            last.command.push_str(line);
        } else if !trimmed.is_empty() && !trimmed.starts_with('#') {
            out.push(Step {
                command: line.clone(),
                shown: Vec::new(),
            });
        }
        continuing = trimmed.ends_with('\\');
    }
    out
}

/// A whole system as `scripts/run-all.sh` starts it, on ports of its own.
struct Running {
    run: tempfile::TempDir,
    ws: String,
    broker: String,
    child: std::process::Child,
    _db: TestDatabase,
}

impl Running {
    fn start() -> Self {
        let root = root();
        let run = tempfile::tempdir().unwrap();
        let (ws_port, broker_port) = (free_port(), free_port());
        let ws = format!("127.0.0.1:{ws_port}");
        let broker = format!("tcp://127.0.0.1:{broker_port}");
        let eco = std::fs::read_to_string(root.join("ecosystem.toml"))
            .unwrap()
            .replace("127.0.0.1:3000", &ws)
            .replace("tcp://127.0.0.1:5555", &broker);
        std::fs::write(run.path().join("ecosystem.toml"), eco).unwrap();
        let db = TestDatabase::new();
        let out = std::fs::File::create(run.path().join("run-all.out")).unwrap();
        let child = Command::new("setsid")
            .arg(root.join("scripts/run-all.sh"))
            .current_dir(&root)
            .env("SB_BIN_DIR", bin_path("main").parent().unwrap())
            .env("SB_RUN_DIR", run.path())
            .env("SB_ECOSYSTEM", run.path().join("ecosystem.toml"))
            // main's dashboard on a port of its own too (no block uses it).
            .env("SB_ECO__MAIN__HTTP", "127.0.0.1:0")
            .env("DATABASE_URL", &db.url)
            .env_remove("SB_AUTH_SECRET")
            .env_remove("SB_AUTH")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let running = Self {
            child,
            run,
            ws,
            broker,
            _db: db,
        };
        let until = Instant::now() + Duration::from_secs(90);
        loop {
            let said = running.said();
            if said.contains("Ctrl-C stops everything") {
                break;
            }
            assert!(
                Instant::now() < until && !said.contains("exited"),
                "run-all.sh did not start the system:\n{said}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        running
    }

    fn said(&self) -> String {
        std::fs::read_to_string(self.run.path().join("run-all.out")).unwrap_or_default()
    }

    /// Runs one documented command as a reader would at the repository root,
    /// against this system: the documented address and the release build are
    /// this run's (`127.0.0.1:3000`, `target/release/`), `sbctl` is on PATH.
    /// A command that follows (`-f`, `--watch`) runs for two seconds.
    fn run(&self, command: &str) -> (Option<i32>, String, String) {
        let bin = bin_path("sbctl").parent().unwrap().to_path_buf();
        let command = command
            .replace("127.0.0.1:3000", &self.ws)
            .replace("target/release/", &format!("{}/", bin.display()));
        let follows = command.contains(" -f") || command.contains("--watch");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut child = Command::new("bash")
            .args(["-c", &command])
            .current_dir(root())
            .env("PATH", path)
            .env("SB_RUN_DIR", self.run.path())
            .env("SB_BROKER", &self.broker)
            .env("SB_WS_URL", format!("ws://{}/ws", self.ws))
            .env_remove("SB_AUTH_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let limit = if follows {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(60)
        };
        let until = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code();
            }
            if Instant::now() > until {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let _ = child.wait();
                // A follower still following is what it is for.
                break if follows { Some(0) } else { None };
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = child.wait_with_output().unwrap();
        (
            status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // run-all.sh, in a session of its own: SIGTERM stops main and every
        // app gracefully.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(40);
        while Instant::now() < until && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use std::os::unix::process::CommandExt;

/// `"ok":true` / `"ok":false` in a line, if it is a reply frame.
fn ok_of(line: &str) -> Option<bool> {
    let value: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    value.get("ok")?.as_bool()
}

#[test]
fn every_shell_block_of_the_docs_runs_against_a_live_system() {
    // BENCHMARKS.md's and RELIABILITY.md's blocks are the benchmark and chaos
    // commands: long runs, commands rather than tests.
    let long_runs = [root().join("BENCHMARKS.md"), root().join("RELIABILITY.md")];
    let blocks: Vec<Block> = documents()
        .iter()
        .filter(|f| !long_runs.contains(f))
        .flat_map(|f| shell_blocks(f))
        .collect();
    assert!(blocks.len() > 5, "the docs have shell blocks");
    for block in &blocks {
        if let Some(why) = &block.skip {
            assert!(
                why.len() > 10,
                "{}: a skipped block says why it cannot run here",
                block.at
            );
        }
    }
    let system = Running::start();
    let mut failures = Vec::new();
    let mut ran = 0;
    for block in blocks.iter().filter(|b| b.skip.is_none()) {
        for step in steps(block) {
            ran += 1;
            let (status, stdout, stderr) = system.run(&step.command);
            let shown_ok = step.shown.iter().find_map(|l| ok_of(l));
            let got_ok = stdout.lines().find_map(ok_of);
            if status != Some(0) || (shown_ok.is_some() && shown_ok != got_ok) {
                failures.push(format!(
                    "{}: `{}` exited {status:?} (the docs show {shown_ok:?}, it said {got_ok:?})\n{stdout}{stderr}",
                    block.at, step.command
                ));
            }
        }
    }
    assert!(ran > 10, "the runnable blocks were run ({ran} commands)");
    assert!(
        failures.is_empty(),
        "{} documented command(s) failed:\n{}\n--- run-all.sh said:\n{}",
        failures.len(),
        failures.join("\n"),
        system.said()
    );
}

/// GitHub's anchor for a heading: lower case, punctuation but `-` and `_`
/// dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
            }
            !fenced
        })
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| slug(h.trim_start_matches('#')))
        .collect()
}

#[test]
fn every_relative_link_of_the_docs_resolves() {
    let mut broken = Vec::new();
    for file in documents() {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut fenced = false;
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
            }
            if fenced {
                continue;
            }
            for part in line.split("](").skip(1) {
                let Some(target) = part.split(')').next() else {
                    continue;
                };
                if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                    continue;
                }
                let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
                let resolved = if path.is_empty() {
                    file.clone()
                } else {
                    file.parent().unwrap().join(path)
                };
                let at = format!("{}:{}", file.strip_prefix(root()).unwrap().display(), n + 1);
                if !resolved.exists() {
                    broken.push(format!("{at}: {target} (no such file)"));
                } else if !anchor.is_empty()
                    && resolved.extension().is_some_and(|e| e == "md")
                    && !anchors(&resolved).contains(anchor)
                {
                    broken.push(format!("{at}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

fn all_docs_text() -> String {
    documents()
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_sbctl_subcommand_is_in_the_docs() {
    let help = Command::new(bin_path("sbctl"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() > 15, "{commands:?}");
    let docs = all_docs_text();
    // `sbctl NAME`, or NAME in a group such as `sbctl start|stop|restart NAME`.
    let named: BTreeSet<&str> = docs
        .split("sbctl ")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| {
                !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '|')
            })
            .next()
        })
        .flat_map(|group| group.split('|'))
        .collect();
    let missing: Vec<&&str> = commands.iter().filter(|c| !named.contains(**c)).collect();
    assert!(
        missing.is_empty(),
        "sbctl subcommands no doc names as `sbctl NAME`: {missing:?}"
    );
}

/// The keys main accepts, read from the lists its loader checks against.
fn ecosystem_keys() -> Vec<String> {
    let source =
        std::fs::read_to_string(root().join("crates/supervisor/src/ecosystem/mod.rs")).unwrap();
    let mut keys = Vec::new();
    for list in ["APP_KEYS", "BROKER_KEYS", "MAIN_KEYS"] {
        let body = source
            .split(&format!("const {list}: &[&str] = &["))
            .nth(1)
            .unwrap_or_else(|| panic!("{list} in the loader"))
            .split("];")
            .next()
            .unwrap();
        keys.extend(body.split('"').skip(1).step_by(2).map(str::to_owned));
    }
    keys
}

#[test]
fn every_ecosystem_key_is_in_the_docs() {
    let keys = ecosystem_keys();
    assert!(keys.len() > 25, "{keys:?}");
    let docs = all_docs_text();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !docs.contains(&format!("`{k}`")) && !docs.contains(&format!("] {k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "ecosystem keys no doc names as `KEY`: {missing:?}"
    );
}

#[test]
fn every_module_of_a_crate_is_named_in_its_layout_doc() {
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root().join("crates")).unwrap().flatten() {
        let src = entry.path().join("src");
        let Some(crate_root) = ["lib.rs", "main.rs"]
            .iter()
            .map(|f| src.join(f))
            .find(|p| p.exists())
        else {
            continue;
        };
        let doc: String = std::fs::read_to_string(&crate_root)
            .unwrap()
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        for module in std::fs::read_dir(&src).unwrap().flatten() {
            let path = module.path();
            let name = if path.is_dir() {
                module.file_name().to_string_lossy().into_owned()
            } else if path.extension().is_some_and(|e| e == "rs") {
                path.file_stem().unwrap().to_string_lossy().into_owned()
            } else {
                continue;
            };
            if ["lib", "main"].contains(&name.as_str()) {
                continue;
            }
            if !doc.contains(&format!("`{name}`")) && !doc.contains(&format!("[`{name}`]")) {
                missing.push(format!("{}: `{name}`", crate_root.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "modules the crate's layout doc (its //! lines) does not name:\n{}",
        missing.join("\n")
    );
}

/// One way to record metrics: a crate's metric names and label sets live in its
/// `src/metrics.rs`, and the rest of the crate calls that module's functions.
/// A `counter!(`, `gauge!(` or `histogram!(` anywhere else under `crates/*/src`
/// is a second way.
#[test]
fn metrics_are_recorded_only_in_a_crates_metrics_rs() {
    let mut found = Vec::new();
    for krate in std::fs::read_dir(root().join("crates")).unwrap().flatten() {
        let src = krate.path().join("src");
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") || path == src.join("metrics.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                for (n, line) in text.lines().enumerate() {
                    if ["counter!(", "gauge!(", "histogram!("]
                        .iter()
                        .any(|m| line.contains(m))
                    {
                        found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "metrics recorded outside a crate's src/metrics.rs (add a function there):\n{}",
        found.join("\n")
    );
}

/// The gateway takes any SB_AUTH_SECRET, however short: one pasted from the
/// docs as written (`SB_AUTH_SECRET = "..."`) is one every reader knows, and
/// with it anyone mints tokens for any user. The docs never give one to paste.
#[test]
fn no_doc_gives_a_client_token_secret_to_paste() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                if line.contains("SB_AUTH_SECRET = \"") {
                    found.push(format!("{}:{}: {line}", path.display(), n + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}
