//! `sbctl import-pm2`: a PM2 ecosystem file with every field the seed uses,
//! converted by the real sbctl (Node evaluates the file), then loaded and run
//! by the real main; hostile values stay data.

use crate::node_apps::{online_pid, proc_strings};
use crate::supervisor::Supervised;
use std::process::Command;
use switchboard_testkit::{bin_path, client, Child};

/// The seed's shape: computed paths and values, a chat with two instances in
/// cluster mode, db with its restart policy, profiles.
const PM2_FILE: &str = r#"
const path = require('path');
const evil = 'x"\n[[apps]]\nname = "evil"\nbin = "/bin/sh"\n#';
module.exports = {
  apps: [
    {
      name: 'chat',
      script: path.join(__dirname, 'services', 'chat.js'),
      args: '--room lobby',
      node_args: ['--enable-source-maps'],
      instances: 2,
      exec_mode: 'cluster',
      increment_var: 'CHAT_INSTANCE',
      env: { NODE_ENV: 'development', PORT: 3001, EVIL: evil },
      env_production: { NODE_ENV: 'production' },
      max_memory_restart: '256M',
      kill_timeout: 3000,
      autorestart: true,
      max_restarts: 10,
      min_uptime: '2s',
      restart_delay: 100,
      exp_backoff_restart_delay: 100,
      watch: false,
      ignore_watch: ['node_modules'],
      wait_ready: false,
      listen_timeout: 8000,
      merge_logs: true,
      out_file: '/var/log/chat.out.log',
      cron_restart: '0 3 * * *',
    },
    {
      name: 'db',
      script: 'services/db.js',
      cwd: '.',
      interpreter: 'node',
      interpreter_args: '--max-old-space-size=96',
      wait_ready: false,
      env_production: { DB_POOL: 8 },
    },
  ],
};
"#;

/// Stays alive until SIGTERM (it does not join the bus: wait_ready false).
const STAY: &str = "process.on('SIGTERM', () => process.exit(0)); setInterval(() => {}, 1000);\n";

#[tokio::test]
async fn a_pm2_file_with_the_seeds_fields_imports_and_runs_under_main() {
    switchboard_testkit::trace_init();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("services")).unwrap();
    std::fs::write(dir.path().join("services/chat.js"), STAY).unwrap();
    std::fs::write(dir.path().join("services/db.js"), STAY).unwrap();
    let pm2 = dir.path().join("ecosystem.config.js");
    std::fs::write(&pm2, PM2_FILE).unwrap();
    let toml = dir.path().join("ecosystem.toml");

    let out = Command::new(bin_path("sbctl"))
        .args(["import-pm2", pm2.to_str().unwrap(), "-o"])
        .arg(&toml)
        .output()
        .unwrap();
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{notes}");
    for said in [
        "exec_mode cluster",
        "merge_logs",
        "out_file",
        "cron_restart",
        "wait_ready false",
    ] {
        assert!(notes.contains(said), "{said}: {notes}");
    }
    // Never over a file already there.
    let again = Command::new(bin_path("sbctl"))
        .args(["import-pm2", pm2.to_str().unwrap(), "-o"])
        .arg(&toml)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(64), "{again:?}");

    // main's own loader takes it: two apps, chat01/chat02 (hostile env value
    // and all), nothing injected.
    let check = Command::new(bin_path("main"))
        .args(["--check", "--config", toml.to_str().unwrap()])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(listed.contains("chat01,chat02"), "{listed}");
    assert!(!listed.contains("evil"), "{listed}");

    // Run it, with the production profile: a port-0 broker and HTTP added.
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push_str(&format!(
        "\n[main]\nheartbeat_ms = 250\nhttp = \"127.0.0.1:0\"\n\n[broker]\nbin = \"{}\"\nbind = \"tcp://127.0.0.1:0\"\n",
        bin_path("broker").display()
    ));
    std::fs::write(&toml, text).unwrap();
    let main = Child::announcing(
        "main",
        &["--config", toml.to_str().unwrap(), "--env", "production"],
        &[],
    )
    .unwrap();
    let endpoint = main.first_line.clone().unwrap();
    let bus = client(&endpoint, "t-import-pm2", None).await;
    let s = Supervised {
        main,
        endpoint,
        bus,
        dir,
    };
    let chat = online_pid(&s, "chat02", 0).await;
    let environ = proc_strings(chat, "environ");
    for want in [
        "NODE_ENV=production",
        "PORT=3001",
        "CHAT_INSTANCE=chat02",
        "EVIL=x\"\n[[apps]]\nname = \"evil\"\nbin = \"/bin/sh\"\n#",
    ] {
        assert!(environ.iter().any(|e| e == want), "{want:?}: {environ:?}");
    }
    let cmdline = proc_strings(chat, "cmdline");
    let script = s.dir.path().join("services/chat.js").display().to_string();
    assert_eq!(
        cmdline[1..],
        [
            "--enable-source-maps",
            // 90 % of 256 MiB.
            "--max-old-space-size=230",
            &script,
            "--room",
            "lobby"
        ]
    );
    let db = online_pid(&s, "db", 0).await;
    let cmdline = proc_strings(db, "cmdline");
    // The PM2 file's own heap flag wins (no max_memory_restart here anyway).
    assert_eq!(cmdline[1], "--max-old-space-size=96", "{cmdline:?}");
    assert!(proc_strings(db, "environ").contains(&"DB_POOL=8".to_owned()));
    let chat_app = s.sbctl(&["--json", "describe", "chat"]);
    let described: serde_json::Value = serde_json::from_slice(&chat_app.stdout).unwrap();
    assert_eq!(described["kill_timeout_ms"], 3000, "{described}");
    assert_eq!(described["min_uptime_ms"], 2000, "{described}");
    assert_eq!(described["max_restarts"], 10, "{described}");
}
