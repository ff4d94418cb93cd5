//! main runs Node apps from `script =` (issue 25, item 3): the command line,
//! environment and folder it gives `node`, read back from /proc and from what
//! node itself says it was given; a restart after a `kill -9`; a graceful stop
//! by SIGTERM; and the errors that name the paths tried.

use crate::supervisor::Supervised;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use switchboard_testkit::{bin_path, client, eventually, Child};

/// A Node program that stays alive, prints what it was given (one JSON line),
/// and exits on SIGTERM saying so. It does not join the bus (the bus for Node
/// is clients/node): its app has `wait_ready = false`.
const STAY_ALIVE_JS: &str = r#"
process.on('SIGTERM', () => process.stdout.write('sigterm: exiting\n', () => process.exit(0)));
console.log(JSON.stringify({
  given: { argv: process.argv.slice(1), execArgv: process.execArgv, cwd: process.cwd(),
           instance: process.env.SB_INSTANCE, greeting: process.env.GREETING },
}));
setInterval(() => {}, 1000);
"#;

const FAST: &str = "[main]\nheartbeat_ms = 250\nhttp = \"127.0.0.1:0\"\n";

/// main on an ecosystem file written into a fresh folder beside `files`
/// (relative path, content), with `main_args` added.
pub async fn supervise_in_dir(
    apps: &str,
    files: &[(&str, &str)],
    main_args: &[&str],
) -> Supervised {
    switchboard_testkit::trace_init();
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let file = dir.path().join("ecosystem.toml");
    let text = format!(
        "{FAST}\n[broker]\nbin = \"{}\"\nbind = \"tcp://127.0.0.1:0\"\n\n{apps}",
        bin_path("broker").display()
    );
    std::fs::write(&file, text).unwrap();
    let mut args = vec!["--config", file.to_str().unwrap()];
    args.extend_from_slice(main_args);
    let main = Child::announcing("main", &args, &[]).unwrap();
    let endpoint = main.first_line.clone().unwrap();
    let bus = client(&endpoint, "t-node-apps", None).await;
    Supervised {
        main,
        endpoint,
        bus,
        dir,
    }
}

/// `/proc/PID/cmdline` (or `environ`) as its NUL-separated strings.
pub fn proc_strings(pid: u32, what: &str) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/{what}"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// The pid main reports for a running (online) instance, once it does.
pub async fn online_pid(s: &Supervised, instance: &str, not: u32) -> u32 {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let i = s.instance(instance).await;
        let pid = i["pid"].as_u64().unwrap_or(0) as u32;
        if i["state"] == "online" && pid != 0 && pid != not {
            return pid;
        }
        assert!(
            std::time::Instant::now() < until,
            "{instance} online (not pid {not}): {:?}",
            s.ls().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn which_node() -> String {
    let out = Command::new("sh")
        .args(["-c", "command -v node"])
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!path.is_empty(), "node on PATH (Node 20 is on the machine)");
    std::fs::canonicalize(path).unwrap().display().to_string()
}

#[tokio::test]
async fn main_runs_a_node_script_with_its_flags_env_and_folder_and_restarts_it() {
    let apps = r#"
[[apps]]
name = "nodeapp"
script = "svc/app.js"
cwd = "work"
interpreter_args = ["--enable-source-maps"]
args = ["--flag", "two words"]
max_memory_restart = "200M"
wait_ready = false
restart_delay_ms = 50
env = { GREETING = "hi there" }
"#;
    let s = supervise_in_dir(
        // The script is read from `cwd` (PM2's rule): work/svc/app.js.
        apps,
        &[("work/svc/app.js", STAY_ALIVE_JS), ("work/.keep", "")],
        &[],
    )
    .await;
    let pid = online_pid(&s, "nodeapp", 0).await;
    let script = s.dir.path().join("work/svc/app.js").display().to_string();

    // The command line: <interpreter> <interpreter_args…>
    // --max-old-space-size=<90 % of 200 MiB> <script> <args…>.
    let cmdline = proc_strings(pid, "cmdline");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe.display().to_string(), which_node());
    assert_eq!(
        cmdline[1..],
        [
            "--enable-source-maps",
            "--max-old-space-size=180",
            &script,
            "--flag",
            "two words"
        ],
        "{cmdline:?}"
    );
    // The environment main gives every app, and the app's own.
    let environ = proc_strings(pid, "environ");
    for want in [
        format!("SB_BROKER={}", s.endpoint),
        "SB_INSTANCE=nodeapp".into(),
        "SB_SUCCESSOR=0".into(),
        "GREETING=hi there".into(),
    ] {
        assert!(environ.contains(&want), "{want}: {environ:?}");
    }
    // (No SB_SECRET here: the testkit runs main with SB_INSECURE; the
    // secret's path to every app is the same code for any app.)
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(
        cwd,
        std::fs::canonicalize(s.dir.path().join("work")).unwrap()
    );

    // What node says it got: V8 took the heap flag.
    let log = s.logs_dir().join("nodeapp.log");
    let read_given = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
    };
    assert!(
        eventually(Duration::from_secs(10), || async { read_given().is_some() }).await,
        "node's line in {}",
        log.display()
    );
    let given = read_given().unwrap()["given"].clone();
    assert_eq!(
        given["execArgv"],
        serde_json::json!(["--enable-source-maps", "--max-old-space-size=180"])
    );
    assert_eq!(given["argv"][1], "--flag");
    assert_eq!(given["instance"], "nodeapp");
    assert_eq!(given["greeting"], "hi there");

    // kill -9: main starts it again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let again = online_pid(&s, "nodeapp", pid).await;
    assert_eq!(proc_strings(again, "cmdline")[1..], cmdline[1..]);
    assert!(s.instance("nodeapp").await["restarts"].as_u64() >= Some(1));

    // `sbctl stop`: SIGTERM, which the script handles and exits on (once it
    // has started: its line, after its handler is set, is in the log twice).
    let started_twice = || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("\"given\"")
            .count()
            >= 2
    };
    assert!(eventually(Duration::from_secs(10), started_twice).await);
    let out = s.sbctl(&["stop", "nodeapp"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            !switchboard_bus::svc::procinfo::alive(again)
        })
        .await
    );
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("sigterm: exiting"));
}

/// `main --check` on an ecosystem file in its own folder.
fn check(text: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, std::process::Output) {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let file = dir.path().join("ecosystem.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(bin_path("main"))
        .args(["--check", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    (dir, out)
}

#[test]
fn a_missing_script_or_bin_names_the_absolute_paths_tried() {
    let (dir, out) = check(
        "[[apps]]\nname = \"chat\"\nscript = \"services/chat.js\"\n",
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    let tried = dir.path().join("services/chat.js");
    assert!(
        err.contains(&format!("not found at {}", tried.display())),
        "{err}"
    );

    let (dir, out) = check("[[apps]]\nname = \"svc\"\nbin = \"bin/svc\"\n", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    let tried = dir.path().join("bin/svc");
    assert!(err.contains(&format!("tried {}", tried.display())), "{err}");

    // A bare name: next to main, then each PATH folder.
    let (_dir, out) = check(
        "[[apps]]\nname = \"svc\"\nbin = \"no-such-sb-program\"\n",
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let beside = bin_path("main").with_file_name("no-such-sb-program");
    assert!(err.contains(&beside.display().to_string()), "{err}");
    assert!(err.contains("/usr/bin/no-such-sb-program"), "{err}");

    // A script that is there: the check prints node and the script.
    let (dir, out) = check(
        "[[apps]]\nname = \"chat\"\nscript = \"chat.js\"\n",
        &[("chat.js", "")],
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let script = dir.path().join("chat.js");
    assert!(
        said.contains(&which_node()) || said.contains("node "),
        "{said}"
    );
    assert!(said.contains(&script.display().to_string()), "{said}");
}

/// main says which service each app is (`SB_SERVICE`, the app's name), so a
/// process need not guess it from its instance name: the PM2 layer took
/// `shout2` for an instance of `shout` and registered under that service, and
/// requests to `shout2` found no instance. An app's own env may name another.
#[tokio::test]
async fn main_tells_each_app_its_service_name() {
    let apps = r#"
[[apps]]
name = "shout2"
script = "app.js"
wait_ready = false

[[apps]]
name = "other"
script = "app.js"
wait_ready = false
env = { SB_SERVICE = "custom" }
"#;
    let s = supervise_in_dir(apps, &[("app.js", STAY_ALIVE_JS)], &[]).await;
    for (instance, want) in [
        ("shout2", "SB_SERVICE=shout2"),
        ("other", "SB_SERVICE=custom"),
    ] {
        let pid = online_pid(&s, instance, 0).await;
        let environ = proc_strings(pid, "environ");
        assert!(
            environ.iter().any(|e| e == want),
            "{instance}: {want} in {environ:?}"
        );
        assert_eq!(
            environ
                .iter()
                .filter(|e| e.starts_with("SB_SERVICE="))
                .count(),
            1,
            "{environ:?}"
        );
    }
}
