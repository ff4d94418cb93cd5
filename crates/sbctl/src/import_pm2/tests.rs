use super::values::{millis, size};
use super::*;
use serde_json::Value;

/// True (and said) where Node is not installed: the tests that evaluate a
/// file skip there; scripts/test.sh runs where it is.
fn no_node() -> bool {
    let missing = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err();
    if missing {
        eprintln!("skipped: node is not installed");
    }
    missing
}

/// A folder of this test's own (tests run in parallel; each removes its own).
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sb-import-pm2-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_output_is_private_and_never_written_through_a_link() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("output");
    let victim = dir.join("victim");
    std::fs::write(&victim, "keep").unwrap();
    let out = dir.join("ecosystem.toml");
    let _ = std::fs::remove_file(&out);
    std::os::unix::fs::symlink(&victim, &out).unwrap();
    write_private(&out, "[[apps]]\n").unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    let meta = std::fs::symlink_metadata(&out).unwrap();
    assert!(meta.is_file(), "the link was replaced by a file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    std::fs::remove_dir_all(&dir).ok();
}
use serde_json::json;

fn conv(pm2: Value) -> Imported {
    let here = Path::new("/srv/app");
    convert(&pm2, here, here, &here.join("ecosystem.config.js")).unwrap()
}

#[test]
fn every_seed_field_maps() {
    let out = conv(json!({"apps": [{
        "name": "chat", "script": "services/chat.js", "args": "--port 3000 --name 'a b'",
        "node_args": ["--enable-source-maps"], "instances": 2, "exec_mode": "fork",
        "env": {"PORT": 3000, "DEBUG": true, "MODE": "dev"},
        "env_production": {"MODE": "prod"},
        "max_memory_restart": "300MB", "kill_timeout": 3000, "autorestart": true, "autostart": false,
        "max_restarts": 5, "min_uptime": "10s", "restart_delay": 200,
        "exp_backoff_restart_delay": 100, "watch": false, "ignore_watch": ["node_modules"],
        "wait_ready": true, "listen_timeout": 8000,
    }]}));
    assert!(out.notes.is_empty(), "{:?}", out.notes);
    let t: toml::Table = toml::from_str(&out.toml).unwrap();
    let app = &t["apps"].as_array().unwrap()[0];
    assert_eq!(app["name"].as_str(), Some("chat"));
    assert_eq!(app["script"].as_str(), Some("services/chat.js"));
    assert!(app.get("interpreter").is_none());
    assert_eq!(
        app["args"],
        toml::Value::try_from(["--port", "3000", "--name", "a b"]).unwrap()
    );
    assert_eq!(
        app["interpreter_args"],
        toml::Value::try_from(["--enable-source-maps"]).unwrap()
    );
    assert_eq!(app["instances"].as_integer(), Some(2));
    assert_eq!(app["env"]["PORT"].as_str(), Some("3000"));
    assert_eq!(app["env"]["DEBUG"].as_str(), Some("true"));
    assert_eq!(app["env_production"]["MODE"].as_str(), Some("prod"));
    assert_eq!(app["max_memory_restart"].as_str(), Some("300M"));
    assert_eq!(app["kill_timeout_ms"].as_integer(), Some(3000));
    assert_eq!(app["min_uptime_ms"].as_integer(), Some(10_000));
    assert_eq!(app["restart_delay_ms"].as_integer(), Some(200));
    assert_eq!(app["exp_backoff_restart_delay_ms"].as_integer(), Some(100));
    assert_eq!(app["max_restarts"].as_integer(), Some(5));
    assert_eq!(app["ready_timeout_ms"].as_integer(), Some(8000));
    assert_eq!(app["wait_ready"].as_bool(), Some(true));
    assert_eq!(app["watch"].as_bool(), Some(false));
    assert_eq!(app["autorestart"].as_bool(), Some(true));
    assert_eq!(app["autostart"].as_bool(), Some(false));
}

#[test]
fn what_cannot_be_carried_is_said() {
    let out = conv(json!({"apps": [{
        "name": "api", "script": "api.js", "exec_mode": "cluster", "instances": "max",
        "cron_restart": "0 * * * *", "merge_logs": true, "out_file": "/var/log/api.log",
        "watch": ["src"], "env": {"OBJ": {"a": 1}}
    }], "deploy": {}}));
    let all = out.notes.join("\n");
    for word in [
        "exec_mode cluster",
        "cron_restart",
        "merge_logs",
        "out_file",
        "watch [\"src\"]",
        "env.OBJ",
        "`deploy`",
        "instances \"max\"",
    ] {
        assert!(all.contains(word), "{word}: {all}");
    }
}

#[test]
fn hostile_values_stay_data() {
    let evil = "x\"\n[[apps]]\nname = \"evil\"\nbin = \"/bin/sh\"\n#";
    let out = conv(json!({"apps": [{
        "name": "chat", "script": evil,
        "interpreter": "node",
        "args": [evil], "env": {"K": evil, "B\n[x]": "v", "C=1": "v"},
        "env_production": {"\"]\n[[apps]]": evil},
    }]}));
    let t: toml::Table = toml::from_str(&out.toml).unwrap();
    let apps = t["apps"].as_array().unwrap();
    assert_eq!(apps.len(), 1, "{}", out.toml);
    assert_eq!(apps[0]["script"].as_str(), Some(evil));
    assert_eq!(apps[0]["env"]["K"].as_str(), Some(evil));
    assert_eq!(apps[0]["env"]["B\n[x]"].as_str(), Some("v"));
    assert!(apps[0]["env"].get("C=1").is_none());
    assert!(
        out.notes.iter().any(|n| n.contains("C=1")),
        "{:?}",
        out.notes
    );
    assert_eq!(t.len(), 1, "only [[apps]] at the top: {}", out.toml);
    // A name that is not a bus name is refused, not written.
    let err = convert(
        &json!({"apps": [{"name": "a\"\nb", "script": "a.js"}]}),
        Path::new("/"),
        Path::new("/"),
        Path::new("f.js"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not a name on the bus"), "{err}");
    // The header cannot be ended by a file name.
    let out = convert(
        &json!([{"script": "a.js"}]),
        Path::new("/"),
        Path::new("/"),
        Path::new("a\n[[apps]]\nname=\"x\"\n.js"),
    )
    .unwrap();
    let t: toml::Table = toml::from_str(&out.toml).unwrap();
    assert_eq!(t["apps"].as_array().unwrap().len(), 1, "{}", out.toml);
    assert_eq!(t["apps"][0]["name"].as_str(), Some("a"));
}

#[test]
fn paths_become_absolute_when_the_toml_is_elsewhere() {
    let out = convert(
        &json!({"apps": [{"name": "a", "script": "a.js"}, {"name": "b", "script": "b.js", "cwd": "svc"}, {"name": "c", "script": "./run", "interpreter": "none"}, {"name": "d", "script": "npm", "args": "start"}]}),
        Path::new("/srv/app"),
        Path::new("/etc/sb"),
        Path::new("/srv/app/ecosystem.config.js"),
    )
    .unwrap();
    let t: toml::Table = toml::from_str(&out.toml).unwrap();
    let apps = t["apps"].as_array().unwrap();
    assert_eq!(apps[0]["script"].as_str(), Some("/srv/app/a.js"));
    assert_eq!(apps[1]["script"].as_str(), Some("b.js"));
    assert_eq!(apps[1]["cwd"].as_str(), Some("/srv/app/svc"));
    assert_eq!(apps[2]["bin"].as_str(), Some("/srv/app/./run"));
    assert_eq!(apps[3]["bin"].as_str(), Some("npm"));
}

#[test]
fn sizes_and_durations() {
    assert_eq!(size(&json!("200M")).as_deref(), Some("200M"));
    assert_eq!(size(&json!("1gb")).as_deref(), Some("1G"));
    assert_eq!(size(&json!(1024)).as_deref(), Some("1024"));
    assert_eq!(size(&json!("lots")), None);
    assert_eq!(millis(&json!("1m")), Some(60_000));
    assert_eq!(millis(&json!("500")), Some(500));
    assert_eq!(millis(&json!(true)), None);
}

/// A PM2 file is a program: one that logs while it loads (`console.log`)
/// printed its line into the JSON, and one that leaves a timer or a socket
/// open (a config that reads a vault, say) kept node, and sbctl, waiting
/// for ever. Node is needed; without it the test says so and passes.
#[test]
fn a_file_that_logs_or_keeps_node_busy_still_evaluates() {
    if no_node() {
        return;
    }
    let dir = scratch("eval");
    let apps = "module.exports = { apps: [{ name: 'api', script: 'api.js' }] };\n";
    for (name, head) in [
        (
            "logs.config.js",
            "console.log('loading the config'); process.stdout.write('x');\n",
        ),
        ("busy.config.js", "setInterval(() => {}, 1000);\n"),
    ] {
        let file = dir.join(name);
        std::fs::write(&file, format!("{head}{apps}")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let f = file.clone();
        std::thread::spawn(move || {
            tx.send(
                evaluate(&f, "node", std::time::Duration::from_secs(30)).map_err(|e| e.to_string()),
            )
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{name}: node still running after 20 s"));
        assert_eq!(
            got.unwrap_or_else(|e| panic!("{name}: {e}")),
            json!({"apps": [{"name": "api", "script": "api.js"}]}),
            "{name}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_file_that_never_finishes_loading_is_given_up_on() {
    if no_node() {
        return;
    }
    let dir = scratch("hang");
    let file = dir.join("hangs.config.mjs");
    // The interval keeps node's loop alive; the await never settles.
    std::fs::write(
        &file,
        "setInterval(() => {}, 1000);\nawait new Promise(() => {});\nexport default { apps: [] };\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let err = evaluate(&file, "node", std::time::Duration::from_secs(2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("had not finished reading"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_es_module_with_a_top_level_await_evaluates() {
    if no_node() {
        return;
    }
    let dir = scratch("tla");
    let file = dir.join("awaits.config.mjs");
    std::fs::write(
        &file,
        "const port = await Promise.resolve(3000);\nexport default { apps: [{ name: 'api', script: 'api.js', env: { PORT: port } }] };\n",
    )
    .unwrap();
    let got = evaluate(&file, "node", std::time::Duration::from_secs(30)).unwrap();
    assert_eq!(
        got,
        json!({"apps": [{"name": "api", "script": "api.js", "env": {"PORT": 3000}}]})
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A file that starts a process holding Node's output open: it goes with
/// Node's process group, and the import is not held up by it; one that
/// also never finishes loading is given up on at the limit, its child ended.
#[test]
fn what_a_file_starts_does_not_hold_the_import() {
    if no_node() {
        return;
    }
    let dir = scratch("child");
    let spawn =
        "require('child_process').spawn('sleep', ['1000'], { stdio: 'inherit' }).unref();\n";
    let file = dir.join("spawns.config.js");
    std::fs::write(
        &file,
        format!("{spawn}module.exports = {{ apps: [{{ name: 'api', script: 'api.js' }}] }};\n"),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let got = evaluate(&file, "node", std::time::Duration::from_secs(20)).unwrap();
    assert_eq!(got, json!({"apps": [{"name": "api", "script": "api.js"}]}));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let hangs = dir.join("spawns-and-hangs.config.js");
    std::fs::write(
        &hangs,
        format!("{spawn}setInterval(() => {{}}, 1000);\nwhile (true) {{}}\n"),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let err = evaluate(&hangs, "node", std::time::Duration::from_secs(2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("had not finished reading"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    std::fs::remove_dir_all(&dir).ok();
}
