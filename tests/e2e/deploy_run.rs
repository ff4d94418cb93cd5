//! `deploy/` run by what consumes it: the systemd units checked by
//! `systemd-analyze` (verify, security) and their `ExecStart` run the way
//! systemd would run it, and the container image's `CMD` run the way a
//! container engine would, each serving a chat `say` through the gateway.
//!
//! Neither systemd (as PID 1) nor a container engine runs here, so the
//! sandbox is made by hand, as root, in a mount namespace of the command's own
//! (`unshare -m`): the files the artifact installs overlaid read-only at their
//! real paths (`/etc/switchboard`, `/opt/switchboard/bin`, `/usr/local/bin`,
//! owned by root), the root file system remounted read-only, a private `/tmp`,
//! only the state directory writable (bind-mounted, owned by the user), then
//! the exact command under `setpriv` as the artifact's user and group, no
//! supplementary groups, no capabilities, no new privileges, the umask and
//! the open-files limit of the unit. What stays unproven: the seccomp filter
//! and the other kernel-side settings of the unit (`systemd-analyze security`
//! rates them, nothing enforces them here), and `docker build` itself.

use crate::harness::Ws;
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use switchboard_testkit::{bin_path, eventually, Child, Sig, TestDatabase};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Why the sandbox cannot be made here, if it cannot.
fn unavailable() -> Option<String> {
    if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
        return Some("not root (setpriv and mounts need it)".into());
    }
    for tool in ["unshare", "setpriv", "prlimit", "mount"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("{tool} is not installed (util-linux)"));
        }
    }
    None
}

/// `s` quoted for sh.
fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A uid and gid by name from /etc/passwd, or `nobody`'s when there is no
/// such user here (the unit's `switchboard` user is made by its installer).
fn user_ids(name: &str) -> (u32, u32, String) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let find = |n: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == n).then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
        })
    };
    match find(name) {
        Some((u, g)) => (u, g, name.to_owned()),
        None => (65534, 65534, format!("nobody (no user {name} here)")),
    }
}

/// The file tree an artifact installs, laid over the real one in a mount
/// namespace of the command's own.
struct Jail {
    /// Holds `tree/` (overlaid on `/`) and `state/` (the writable folder).
    dir: tempfile::TempDir,
    uid: u32,
    gid: u32,
    /// The image path of the state directory.
    state_at: String,
}

/// The folders overlaid, each from `tree/FOLDER` over the real one.
const OVERLAID: &[&str] = &["/etc", "/opt", "/usr/local", "/var/lib"];

impl Jail {
    fn new(uid: u32, gid: u32, state_at: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let jail = Self {
            dir,
            uid,
            gid,
            state_at: state_at.to_owned(),
        };
        for folder in OVERLAID {
            std::fs::create_dir_all(jail.at(folder)).unwrap();
        }
        // The state directory: empty in the tree (a mount point), the real one
        // beside it, owned by the user, 0700 (what StateDirectory= makes).
        std::fs::create_dir_all(jail.at(state_at)).unwrap();
        let state = jail.state();
        std::fs::create_dir_all(&state).unwrap();
        std::os::unix::fs::chown(&state, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        jail
    }

    /// Where image path `path` is in the tree.
    fn at(&self, path: &str) -> PathBuf {
        self.dir
            .path()
            .join("tree")
            .join(path.trim_start_matches('/'))
    }

    /// The real folder behind the state directory.
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Installs `text` at image path `path`, owned by root, mode 0644.
    fn file(&self, path: &str, text: &str) {
        let at = self.at(path);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(&at, text).unwrap();
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// Installs our binaries in image folder `folder`: hard links to
    /// target/debug (a copy across file systems). Not symbolic links: the jail
    /// has a private /tmp, and a checkout under /tmp would vanish behind it.
    fn binaries(&self, folder: &str) {
        std::fs::create_dir_all(self.at(folder)).unwrap();
        for bin in [
            "broker", "main", "receive", "chat", "loc", "db", "sbctl", "echo",
        ] {
            let (from, to) = (bin_path(bin), self.at(folder).join(bin));
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).unwrap();
            }
        }
    }

    /// `argv` as the artifact runs it: in the jail, in `workdir`, as the user,
    /// with exactly `env`.
    fn command(
        &self,
        workdir: &str,
        umask: &str,
        nofile: u64,
        env: &[(String, String)],
        argv: &[String],
    ) -> Command {
        let mut script = String::from("set -e\n");
        for folder in OVERLAID {
            script.push_str(&format!(
                "mount -t overlay overlay -o lowerdir={}:{folder} {folder}\n",
                self.at(folder).display()
            ));
        }
        script.push_str(&format!(
            "mount --bind {} {}\n",
            sq(&self.state().display().to_string()),
            sq(&self.state_at)
        ));
        // Read-only root (ProtectSystem=strict, readOnlyRootFilesystem), private /tmp.
        script.push_str("mount -o remount,bind,ro /\nmount -t tmpfs -o mode=1777 tmpfs /tmp\n");
        script.push_str(&format!("cd {}\numask {umask}\n", sq(workdir)));
        // The unit's LimitNOFILE=, or this sandbox's hard limit when lower (it
        // cannot be raised here).
        script.push_str(&format!(
            "n=$(ulimit -Hn); if [ \"$n\" = unlimited ] || [ \"$n\" -gt {nofile} ]; then n={nofile}; fi\n"
        ));
        script.push_str(&format!(
            "exec prlimit --nofile=$n:$n -- setpriv --reuid={} --regid={} --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all -- env -i",
            self.uid, self.gid
        ));
        for (k, v) in env {
            script.push_str(&format!(" {}", sq(&format!("{k}={v}"))));
        }
        for a in argv {
            script.push_str(&format!(" {}", sq(a)));
        }
        script.push('\n');
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
        cmd
    }

    /// Every file main and the apps wrote in the state directory: owned by the
    /// user; the folders and logs readable by no one else, whatever the umask.
    fn assert_state_private(&self) {
        let mut stack = vec![self.state()];
        let mut files = 0;
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let meta = entry.metadata().unwrap();
                assert_eq!(meta.uid(), self.uid, "{}", entry.path().display());
                // Folders closed to others, and the logs (the status file is
                // inside them).
                let log = entry.path().extension().is_some_and(|e| e == "log");
                if !meta.is_dir() && !log {
                    continue;
                }
                assert_eq!(
                    meta.mode() & 0o077,
                    0,
                    "{} is open to others: {:o}",
                    entry.path().display(),
                    meta.mode()
                );
                if meta.is_dir() {
                    stack.push(entry.path());
                } else {
                    files += 1;
                }
            }
        }
        assert!(files > 0, "main wrote nothing in the state directory");
    }
}

/// A system started by an artifact's command; stopped as its consumer stops it
/// (SIGTERM, then the grace).
struct Started {
    main: Child,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.main.signal(Sig::SIGTERM);
        let _ = self.main.wait_exit(Duration::from_secs(20));
    }
}

/// Starts `cmd` (main at the end of it), waits for main's `ready`, then
/// reads the gateway's address from its log in the state directory and has a
/// client join a room and `say` in it.
async fn serves_say(jail: &Jail, cmd: Command, run_dir: &Path) -> Started {
    let main = Child::announce(Child::spawn_command(cmd, "main", &[], &[]).unwrap(), "main")
        .expect("main started as the artifact starts it");
    let started = Started { main };
    assert!(
        eventually(Duration::from_secs(60), || async {
            started.main.later_lines().iter().any(|l| l == "ready")
        })
        .await,
        "main did not report ready: {:?}",
        started.main.later_lines()
    );
    let log = run_dir.join("logs").join("receive.log");
    let ws = std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("{}: {e}", log.display()))
        .lines()
        .find_map(|l| l.strip_prefix("listening ").map(str::to_owned))
        .expect("the gateway's address in its log");
    let mut client = Ws::connect(&format!("{ws}/ws")).await.unwrap();
    client.ok("chat", "join", json!({"room": "lobby"})).await;
    let said = client
        .ok("chat", "say", json!({"room": "lobby", "text": "deployed"}))
        .await;
    assert!(said["seq"].as_u64().is_some(), "{said}");
    jail.assert_state_private();
    started
}

/// `KEY=VALUE` lines of a unit, each key's values in order.
fn unit_settings(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in unit.lines() {
        if let Some((k, v)) = line.split_once('=') {
            if !k.starts_with('#') && !k.contains(' ') {
                out.entry(k.to_owned()).or_default().push(v.to_owned());
            }
        }
    }
    out
}

/// The test's ports: the system's fixed ones (5555, 3000, 9100) may be taken
/// on the machine running the suite; an administrator would put these in the
/// environment file too.
fn port_zero_env(db: &TestDatabase) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", db.url.as_str()),
        ("SB_ECO__BROKER__BIND", "tcp://127.0.0.1:0"),
        ("SB_ECO__MAIN__HTTP", "127.0.0.1:0"),
        (
            "SB_ECO__APPS__RECEIVE__ENV",
            r#"{"SB_LISTEN": "127.0.0.1:0"}"#,
        ),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_unit_runs_as_its_user_with_a_read_only_config_and_serves_say() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    switchboard_testkit::trace_init();
    let unit = unit_settings(&read("deploy/systemd/switchboard.service"));
    let one = |k: &str| unit[k].last().unwrap().clone();
    let (uid, gid, who) = user_ids(&one("User"));
    eprintln!("running as {who}");
    let state_at = format!("/var/lib/{}", one("StateDirectory"));
    let jail = Jail::new(uid, gid, &state_at);
    let exec: Vec<String> = one("ExecStart")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    // The binaries where the unit runs them; the config where it reads it.
    let program = Path::new(&exec[0]);
    jail.binaries(program.parent().unwrap().to_str().unwrap());
    let config = &exec[exec.iter().position(|a| a == "--config").unwrap() + 1];
    jail.file(config, &read("ecosystem.toml"));
    // What systemd gives the service: its EnvironmentFile (read by systemd as
    // root: here, the test's values), STATE_DIRECTORY, the user's basics.
    let db = TestDatabase::new();
    let mut env = port_zero_env(&db);
    env.extend(
        [
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ),
            ("STATE_DIRECTORY", state_at.as_str()),
            ("HOME", state_at.as_str()),
            ("RUST_LOG", "warn"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let nofile = one("LimitNOFILE").parse().unwrap();
    let cmd = jail.command(&one("WorkingDirectory"), &one("UMask"), nofile, &env, &exec);
    let run_dir = jail.state().join("run");
    let _system = serves_say(&jail, cmd, &run_dir).await;
    // Nothing was written beside the config (the overlay is read-only anyway:
    // main would have failed on it, naming the folder).
    assert!(!jail.at("/etc/switchboard/run").exists());
}

#[test]
fn a_run_dir_main_cannot_write_is_named_and_nothing_starts() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    // The unit's command without systemd's STATE_DIRECTORY: run_dir ("run")
    // is then beside the read-only, root-owned config.
    let (uid, gid, _) = user_ids("switchboard");
    let jail = Jail::new(uid, gid, "/var/lib/switchboard");
    jail.binaries("/opt/switchboard/bin");
    jail.file("/etc/switchboard/ecosystem.toml", &read("ecosystem.toml"));
    let env = vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
    let argv: Vec<String> = [
        "/opt/switchboard/bin/main",
        "--config",
        "/etc/switchboard/ecosystem.toml",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let out = jail
        .command("/var/lib/switchboard", "0077", 1024, &env, &argv)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("run_dir is not writable: /etc/switchboard/run/logs:"),
        "the folder is named: {stderr}"
    );
    assert!(
        !stderr.contains("cannot start the broker"),
        "the broker is not blamed: {stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "nothing started"
    );
}

/// The units as systemd reads them: `systemd-analyze verify` finds nothing to
/// say (its binary at the unit's path, in a mount namespace), and `security`
/// rates each at 3.5 or less.
#[test]
fn the_systemd_units_verify_and_rate_at_most_3_5() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "skipped: systemd-analyze is not installed (scripts/deploy-tools.sh installs it)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("opt/switchboard/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(bin_path("main"), bin.join("main")).unwrap();
    for (file, as_unit) in [
        ("switchboard.service", "switchboard.service"),
        ("switchboard-app@.service", "switchboard-app@loc01.service"),
    ] {
        std::fs::copy(
            root().join("deploy/systemd").join(file),
            dir.path().join(file),
        )
        .unwrap();
        let unit = dir.path().join(as_unit);
        let verify = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t overlay overlay -o lowerdir={}:/opt /opt && exec systemd-analyze verify --man=no {}",
                dir.path().join("opt").display(),
                unit.display()
            ))
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        assert!(
            verify.status.success() && said.trim().is_empty(),
            "{file}: {said}"
        );
        let security = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&unit)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&security.stdout);
        let level: f64 = report
            .lines()
            .find_map(|l| l.split_once("Overall exposure level for "))
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{file}: {report}"));
        eprintln!("{as_unit}: exposure {level}");
        assert!(level <= 3.5, "{file} rates {level}:\n{report}");
    }
    // verify can fail: a misspelt setting is reported.
    let bad = dir.path().join("bad.service");
    std::fs::write(
        &bad,
        "[Service]\nExecStart=/bin/true\nProtectSystm=strict\n",
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("ProtectSystm"));
}

/// The Dockerfile's final stage: its USER, WORKDIR, ENV (in order), CMD and
/// HEALTHCHECK command, and what it COPYs where.
struct Image {
    user: (u32, u32),
    workdir: String,
    env: Vec<(String, String)>,
    cmd: Vec<String>,
    healthcheck: Vec<String>,
    copies: Vec<(Vec<String>, String)>,
}

/// The final stage of `text`, instructions joined across `\` continuations.
fn image(text: &str) -> Image {
    let joined = text.replace("\\\n", " ");
    let stages: Vec<&str> = joined.split("\nFROM ").collect();
    let last = stages.last().unwrap();
    let mut image = Image {
        user: (0, 0),
        workdir: "/".into(),
        env: Vec::new(),
        cmd: Vec::new(),
        healthcheck: Vec::new(),
        copies: Vec::new(),
    };
    let json_array = |s: &str| -> Vec<String> {
        serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("{s}: {e}"))
    };
    for line in last.lines().map(str::trim) {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "USER" => {
                let (u, g) = rest.trim().split_once(':').expect("USER uid:gid");
                image.user = (u.parse().unwrap(), g.parse().unwrap());
            }
            "WORKDIR" => image.workdir = rest.trim().to_owned(),
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (k, v) = pair.split_once('=').expect("ENV K=V");
                    image.env.push((k.to_owned(), v.to_owned()));
                }
            }
            "CMD" => image.cmd = json_array(rest),
            "HEALTHCHECK" => {
                let (_, cmd) = rest.split_once("CMD ").expect("HEALTHCHECK … CMD");
                image.healthcheck = json_array(cmd);
            }
            "COPY" => {
                let words: Vec<String> = rest
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .map(str::to_owned)
                    .collect();
                let (to, from) = words.split_last().unwrap();
                image.copies.push((from.to_vec(), to.clone()));
            }
            _ => {}
        }
    }
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_cmd_runs_as_its_user_with_its_env_and_serves_say_on_every_interface() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    switchboard_testkit::trace_init();
    let docker = read("deploy/Dockerfile");
    let image = image(&docker);
    let (uid, gid) = image.user;
    assert_ne!(uid, 0, "not root");
    assert!(
        docker.contains(&format!("--gid {gid}")) && docker.contains(&format!("--uid {uid}")),
        "USER {uid}:{gid} names a user and a group the image makes"
    );
    let jail = Jail::new(uid, gid, &image.workdir);
    // Its files at their image paths: binaries from the build stage, the rest
    // from the repository.
    for (from, to) in &image.copies {
        if from.iter().all(|f| f.starts_with("/out/")) {
            jail.binaries(to.trim_end_matches('/'));
        } else {
            assert_eq!(from.len(), 1, "COPY {from:?} {to}");
            jail.file(to, &read(&from[0]));
        }
    }
    // A container's environment: the image's PATH, then its ENV; the test's
    // database and ports (the image's fixed ports, made 0 here, on the same
    // interfaces).
    let db = TestDatabase::new();
    let mut env = vec![
        (
            "PATH".to_owned(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        ),
        ("HOME".to_owned(), image.workdir.clone()),
    ];
    for (k, v) in &image.env {
        let v = if k == "SB_ECO__MAIN__HTTP" {
            assert!(
                v.starts_with("0.0.0.0:"),
                "the dashboard on every interface: {v}"
            );
            "0.0.0.0:0".to_owned()
        } else {
            v.clone()
        };
        env.push((k.clone(), v));
    }
    env.retain(|(k, _)| k != "RUST_LOG");
    env.push(("RUST_LOG".into(), "warn".into()));
    env.push(("DATABASE_URL".into(), db.url.clone()));
    env.push(("SB_ECO__BROKER__BIND".into(), "tcp://127.0.0.1:0".into()));
    let eco = read("ecosystem.toml");
    let container = eco
        .lines()
        .skip_while(|l| *l != "name = \"receive\"")
        .find_map(|l| l.strip_prefix("env_container = "))
        .expect("the gateway's container profile");
    assert!(container.contains("\"0.0.0.0:3000\""), "{container}");
    env.push((
        "SB_ECO__APPS__RECEIVE__ENV_CONTAINER".into(),
        container
            .replace("0.0.0.0:3000", "0.0.0.0:0")
            .replace(" = ", "\": ")
            .replace("{ ", "{\"")
            .replace(", ", ", \""),
    ));
    let run_dir = jail.state().join(
        Path::new(
            &env.iter()
                .find(|(k, _)| k == "SB_ECO__MAIN__RUN_DIR")
                .unwrap()
                .1,
        )
        .strip_prefix(&image.workdir)
        .expect("run_dir in the workdir, the writable folder"),
    );
    let cmd = jail.command(&image.workdir, "0022", 1024, &env, &image.cmd);
    let system = serves_say(&jail, cmd, &run_dir).await;
    let logged = std::fs::read_to_string(run_dir.join("logs/receive.log")).unwrap();
    assert!(logged.contains("listening ws://0.0.0.0:"), "{logged}");
    assert!(
        system
            .main
            .later_lines()
            .iter()
            .any(|l| l.starts_with("dashboard http://0.0.0.0:")),
        "{:?}",
        system.main.later_lines()
    );
    // The HEALTHCHECK, run the same way beside it (the broker's port is the
    // test's, not the image's 5555).
    let mut env = env.clone();
    env.push(("SB_BROKER".into(), system.main.first_line.clone().unwrap()));
    let health = jail
        .command(&image.workdir, "0022", 1024, &env, &image.healthcheck)
        .output()
        .unwrap();
    assert!(
        health.status.success(),
        "healthcheck: {}",
        String::from_utf8_lossy(&health.stderr)
    );
}

/// checkov, the scanner a platform team runs on an image's Dockerfile.
#[test]
fn checkov_passes_the_dockerfile() {
    let Some(checkov) = std::env::var_os("SB_TEST_CHECKOV").filter(|c| !c.is_empty()) else {
        eprintln!("skipped: SB_TEST_CHECKOV is not set (scripts/deploy-tools.sh installs checkov; scripts/test.sh sets it)");
        return;
    };
    checkov_passes(
        &checkov,
        &["--framework", "dockerfile", "-f"],
        "deploy/Dockerfile",
    );
}

/// Runs checkov on `path` and asserts zero failed checks.
fn checkov_passes(checkov: &std::ffi::OsStr, args: &[&str], path: &str) {
    let out = Command::new(checkov)
        .args(args)
        // A path with `..` in it finds nothing: checkov needs it canonical.
        .arg(root().join(path).canonicalize().unwrap())
        .args(["--compact", "--quiet", "--skip-download", "-o", "json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let reports = match report {
        serde_json::Value::Array(all) => all,
        one => vec![one],
    };
    for report in &reports {
        let summary = &report["summary"];
        assert_eq!(
            summary["failed"], 0,
            "{path}: {:#}",
            report["results"]["failed_checks"]
        );
        assert!(
            summary["passed"].as_u64().unwrap_or(0) > 0,
            "{path}: checked nothing"
        );
    }
}

/// checkov on the Kubernetes manifests: zero failures (each skip carries its
/// reason in the manifest).
#[test]
fn checkov_passes_the_kubernetes_manifests() {
    let Some(checkov) = std::env::var_os("SB_TEST_CHECKOV").filter(|c| !c.is_empty()) else {
        eprintln!("skipped: SB_TEST_CHECKOV is not set (scripts/deploy-tools.sh installs checkov; scripts/test.sh sets it)");
        return;
    };
    checkov_passes(&checkov, &["--framework", "kubernetes", "-d"], "deploy/k8s");
    // A skip is a reasoned exception, and there are few kinds of them.
    let manifests = read("deploy/k8s/apps.yaml") + &read("deploy/k8s/broker.yaml");
    let kinds: std::collections::BTreeSet<&str> = manifests
        .lines()
        .filter_map(|l| l.trim().strip_prefix("checkov.io/skip"))
        .map(|l| {
            let (_, rest) = l.split_once(": ").unwrap();
            let (check, reason) = rest.split_once('=').unwrap();
            assert!(reason.len() > 40, "{check}: a reason");
            check
        })
        .collect();
    assert!(kinds.len() <= 3, "{kinds:?}");
}

/// A probe of a container in deploy/k8s, as the kubelet runs it.
#[derive(Debug)]
enum Probe {
    Exec(Vec<String>),
    Tcp(u16),
    Http(String),
}

/// The `kind` probe (`readinessProbe`, `livenessProbe`) of the workload
/// named `name` in `manifest`.
fn probe(manifest: &str, name: &str, kind: &str) -> Probe {
    let doc = manifest
        .split("\n---\n")
        .find(|d| {
            d.contains(&format!("\n  name: {name}\n"))
                && (d.contains("kind: Deployment") || d.contains("kind: StatefulSet"))
        })
        .unwrap_or_else(|| panic!("no workload {name}"));
    let mut lines = doc.lines().skip_while(|l| l.trim() != format!("{kind}:"));
    lines
        .next()
        .unwrap_or_else(|| panic!("{name} has no {kind}"));
    let how = lines.next().unwrap().trim();
    let inner = |prefix: &str| {
        how.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix('}'))
            .unwrap()
            .to_owned()
    };
    let field = |text: &str, key: &str| -> String {
        text.split(", ")
            .find_map(|kv| kv.strip_prefix(&format!("{key}: ")))
            .unwrap()
            .to_owned()
    };
    if how.starts_with("exec:") {
        Probe::Exec(serde_json::from_str(&inner("exec: {command: ")).unwrap())
    } else if how.starts_with("tcpSocket:") {
        Probe::Tcp(field(&inner("tcpSocket: {"), "port").parse().unwrap())
    } else if how.starts_with("httpGet:") {
        let text = inner("httpGet: {");
        Probe::Http(field(&text, "path"))
    } else {
        panic!("{name} {kind}: {how}")
    }
}

/// Whether `probe` passes, run against this test's processes: `port` is
/// where the container's port is here; `env` the container's environment.
async fn passes(probe: &Probe, port: u16, env: &[(&str, &str)]) -> bool {
    match probe {
        Probe::Exec(argv) => {
            let path = format!(
                "{}:/usr/bin:/bin",
                bin_path("sbctl").parent().unwrap().display()
            );
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..]).env_clear().env("PATH", path);
            for (k, v) in env {
                cmd.env(k, v);
            }
            cmd.output().await.unwrap().status.success()
        }
        Probe::Tcp(_) => tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok(),
        Probe::Http(path) => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                return false;
            };
            let head = format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: kube-probe/1.30\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            let status = String::from_utf8_lossy(&answer)
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or(0);
            (200..400).contains(&status)
        }
    }
}

/// The manifests' probes run against the real processes: every process is
/// ready while the broker is up; with the broker gone, the gateway and the
/// services are no longer ready (out of their Service) but every liveness
/// probe still passes, so Kubernetes restarts none of them and no client is
/// dropped. Before: the gateway's liveness was its /health, 503 without the
/// broker (every gateway restarted a minute into a broker outage), and db,
/// chat and loc had no probes at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_fails_readiness_but_no_liveness_probe() {
    let manifest = read("deploy/k8s/apps.yaml");
    let brokers = read("deploy/k8s/broker.yaml");
    let mut system = crate::harness::System::start(false).await;
    let gateway_port: u16 = system.ws.rsplit(':').next().unwrap().parse().unwrap();
    let broker_port: u16 = system.broker.rsplit(':').next().unwrap().parse().unwrap();
    let broker = system.broker.clone();
    // (workload, instance here, port here)
    let workloads = [
        ("db", "db", 0),
        ("chat", "chat", 0),
        ("loc", "loc01", 0),
        ("receive", "receive", gateway_port),
    ];
    let check = |kind: &'static str| {
        let manifest = &manifest;
        let broker = &broker;
        async move {
            let mut failing = Vec::new();
            for (name, instance, port) in workloads {
                let p = probe(manifest, name, kind);
                let env = [("SB_INSTANCE", instance), ("SB_BROKER", broker.as_str())];
                if !passes(&p, port, &env).await {
                    failing.push(format!("{name} {kind} {p:?}"));
                }
            }
            failing
        }
    };
    assert_eq!(
        check("readinessProbe").await,
        Vec::<String>::new(),
        "all ready"
    );
    assert_eq!(
        check("livenessProbe").await,
        Vec::<String>::new(),
        "all alive"
    );
    for kind in ["readinessProbe", "livenessProbe"] {
        assert!(matches!(
            probe(&brokers, "broker-primary", kind),
            Probe::Tcp(5555)
        ));
        assert!(passes(&probe(&brokers, "broker-primary", kind), broker_port, &[]).await);
    }

    system.proc("broker").signal(Sig::SIGKILL).unwrap();
    system.proc("broker").wait_exit(Duration::from_secs(5));
    // Readiness follows the bus: each one fails once the broker is gone.
    let unready = eventually(Duration::from_secs(20), || async {
        check("readinessProbe").await.len() == workloads.len()
    })
    .await;
    assert!(
        unready,
        "not ready without the broker: {:?}",
        check("readinessProbe").await
    );
    // Liveness does not: nothing would be restarted.
    assert_eq!(
        check("livenessProbe").await,
        Vec::<String>::new(),
        "liveness independent of the broker"
    );
}

/// A unit's `ExecStart=` as systemd splits it (words; a single-quoted part is
/// one word).
fn exec_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('\'') {
            let (word, after) = quoted.split_once('\'').expect("closing quote");
            words.push(word.to_owned());
            rest = after.trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            words.push(rest[..end].to_owned());
            rest = rest[end..].trim_start();
        }
    }
    words
}

/// The instance template run as systemd would run `switchboard-app@echo01`:
/// its exact ExecStart (a shell running the binary its env file names) as its
/// user, in the same sandbox as the main unit, joins the bus and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_template_runs_as_its_user_and_answers_on_the_bus() {
    use switchboard_bus::CallOptions;
    use switchboard_testkit::{client, wait_ready};
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    switchboard_testkit::trace_init();
    let text = read("deploy/systemd/switchboard-app@.service");
    let unit = unit_settings(&text);
    let one = |k: &str| unit[k].last().unwrap().replace("%i", "echo01");
    let (uid, gid, _) = user_ids(&one("User"));
    let jail = Jail::new(uid, gid, &format!("/var/lib/{}", one("StateDirectory")));
    jail.binaries("/opt/switchboard/bin");
    let broker = Child::broker("tcp://127.0.0.1:0", &[]).unwrap();
    let endpoint = broker.first_line.clone().unwrap();
    // The EnvironmentFile the template names, as its header comment shows it.
    let env_file = one("EnvironmentFile");
    jail.file(&env_file, &format!("SB_BIN=echo\nSB_BROKER={endpoint}\n"));
    let mut env: Vec<(String, String)> = std::fs::read_to_string(jail.at(&env_file))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for setting in &unit["Environment"] {
        let (k, v) = setting.split_once('=').unwrap();
        env.push((k.to_owned(), v.replace("%i", "echo01")));
    }
    env.push(("PATH".into(), "/usr/bin:/bin".into()));
    env.push(("RUST_LOG".into(), "warn".into()));
    let exec = exec_words(&one("ExecStart"));
    assert_eq!(exec.len(), 3, "{exec:?}");
    let cmd = jail.command(&one("WorkingDirectory"), &one("UMask"), 1024, &env, &exec);
    let app = Started {
        main: Child::spawn_command(cmd, "echo", &[], &[]).unwrap(),
    };
    let bus = client(&endpoint, "t-template", None).await;
    assert!(
        wait_ready(&bus, "echo01", Duration::from_secs(20)).await,
        "switchboard-app@echo01 joined the bus"
    );
    let reply = bus
        .call("echo", "$echo", b"\x80".to_vec(), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(reply.body.as_ref(), b"\x80", "the echo came back");
    drop(app);
}
