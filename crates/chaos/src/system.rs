//! The system under test: main with an ecosystem of the run's own (free ports, a
//! database of its own behind a cuttable relay), its processes found through
//! main's status file, and the faults done to them.

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchboard_testkit::TcpRelay;

/// A running system. Dropping it stops main (which stops the apps).
pub struct System {
    /// Binaries (`target/<profile>`).
    pub bin: PathBuf,
    /// The run's folder (ecosystem file, `run/` with logs and status).
    pub dir: tempfile::TempDir,
    /// Broker endpoint.
    pub broker: String,
    /// `ws://127.0.0.1:PORT/ws`.
    pub ws: String,
    /// The relay in front of MariaDB (an outage is a cut).
    pub relay: TcpRelay,
    /// `mysql://…/DB` straight to the server, for checking what was stored.
    pub db_url: String,
    db_name: String,
    server_url: String,
    main: Option<Child>,
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl System {
    /// Writes the ecosystem and starts main; returns once every app is online.
    ///
    /// # Errors
    ///
    /// When main does not start or the apps do not come online in 60 s.
    pub async fn start(server_url: &str) -> anyhow::Result<Self> {
        let bin = std::env::current_exe()?
            .parent()
            .context("the chaos binary's folder")?
            .to_path_buf();
        let dir = tempfile::tempdir()?;
        let (broker_port, ws_port) = (free_port()?, free_port()?);
        let broker = format!("tcp://127.0.0.1:{broker_port}");
        let server = server_url
            .trim_end_matches('/')
            .rsplit_once('@')
            .map_or(server_url, |(_, host)| host)
            .trim_start_matches("mysql://")
            .to_owned();
        let relay = TcpRelay::start(&server);
        let db_name = format!("sb_chaos_{}_{}", std::process::id(), now_ms() % 1_000_000);
        let user = server_url
            .trim_start_matches("mysql://")
            .split_once('@')
            .map_or("root", |(user, _)| user)
            .to_owned();
        // mysql_async moves a loopback connection to the Unix socket unless told
        // not to, which would bypass the relay.
        let via_relay = format!(
            "mysql://{user}@{}/{db_name}?prefer_socket=false",
            relay.addr
        );
        let b = |name: &str| bin.join(name).display().to_string();
        let eco = format!(
            r#"[main]
heartbeat_ms = 1000
liveness = 3

[broker]
bin = "{broker_bin}"
bind = "{broker}"

[[apps]]
name = "db"
bin = "{db}"
env = {{ DATABASE_URL = "{via_relay}", RUST_LOG = "warn" }}

[[apps]]
name = "chat"
bin = "{chat}"
depends_on = ["db"]
env = {{ RUST_LOG = "warn" }}

[[apps]]
name = "loc"
bin = "{loc}"
instances = 2
instance_var = "SB_INSTANCE"
depends_on = ["db"]
args = ["--save-interval-ms", "500"]
env = {{ RUST_LOG = "warn" }}

[[apps]]
name = "receive"
bin = "{receive}"
depends_on = ["chat", "loc"]
args = ["--listen", "127.0.0.1:{ws_port}", "--rate-per-sec", "1000", "--rate-burst", "2000"]
env = {{ RUST_LOG = "warn" }}
"#,
            broker_bin = b("broker"),
            db = b("db"),
            chat = b("chat"),
            loc = b("loc"),
            receive = b("receive"),
        );
        std::fs::write(dir.path().join("ecosystem.toml"), eco)?;
        let mut system = Self {
            bin,
            broker,
            ws: format!("ws://127.0.0.1:{ws_port}/ws"),
            relay,
            db_url: format!("{}/{db_name}", server_url.trim_end_matches('/')),
            db_name,
            server_url: server_url.to_owned(),
            main: None,
            dir,
        };
        system.start_main().await?;
        system.wait_online(Duration::from_secs(60)).await?;
        Ok(system)
    }

    /// Starts main on the run's ecosystem (again, after a kill: it adopts).
    ///
    /// # Errors
    ///
    /// When main does not report its broker endpoint in 15 s.
    pub async fn start_main(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new(self.bin.join("main"))
            .arg("--config")
            .arg(self.dir.path().join("ecosystem.toml"))
            .env("RUST_LOG", "warn")
            // Its run_dir is beside its file, even under systemd's StateDirectory=.
            .env_remove("STATE_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.dir.path().join("main.log"))?)
            .spawn()
            .context("spawn main")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = tokio::time::timeout(Duration::from_secs(15), rx)
            .await
            .ok()
            .and_then(Result::ok)
            .context("main did not report its broker")?;
        if line.trim() != format!("listening {}", self.broker) {
            bail!("main reported {line:?}, expected {}", self.broker);
        }
        self.main = Some(child);
        Ok(())
    }

    /// Kills main with -9 and reaps it.
    pub fn kill_main(&mut self) {
        if let Some(mut main) = self.main.take() {
            let _ = main.kill();
            let _ = main.wait();
        }
    }

    /// main's status file.
    pub fn status(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("run").join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The row of `instance` in main's status file.
    pub fn instance(&self, instance: &str) -> Option<serde_json::Value> {
        self.status()?["instances"]
            .as_array()?
            .iter()
            .find(|i| i["instance"] == instance)
            .cloned()
    }

    /// The pid of `instance` now (0 when not running).
    pub fn pid(&self, instance: &str) -> u32 {
        self.instance(instance)
            .and_then(|i| i["pid"].as_u64())
            .unwrap_or(0) as u32
    }

    /// Waits until every app and the broker are online.
    ///
    /// # Errors
    ///
    /// Not within `timeout`.
    pub async fn wait_online(&self, timeout: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + timeout;
        loop {
            let online = self.status().is_some_and(|s| {
                let all = s["instances"].as_array().cloned().unwrap_or_default();
                all.len() == 6 && all.iter().all(|i| i["state"] == "online")
            });
            if online {
                return Ok(());
            }
            if Instant::now() > until {
                bail!(
                    "not every app online within {timeout:?}: {:?} (logs in {})",
                    self.status(),
                    self.logs().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The logs folder.
    pub fn logs(&self) -> PathBuf {
        self.dir.path().join("run").join("logs")
    }

    /// `sbctl` against this system.
    ///
    /// # Errors
    ///
    /// When it exits non-zero (its output is in the error).
    pub async fn sbctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = tokio::process::Command::new(self.bin.join("sbctl"))
            .args(["--broker", &self.broker, "--timeout-ms", "60000"])
            // The bus secret main made for this run is in its run folder.
            .arg("--run-dir")
            .arg(self.dir.path().join("run"))
            .args(args)
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "sbctl {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The run folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Stops main (and with it every app), drops the run's database.
    pub async fn stop(mut self) {
        if let Some(mut main) = self.main.take() {
            switchboard_testkit::signal_pid(main.id(), nix::sys::signal::Signal::SIGTERM);
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until {
                if matches!(main.try_wait(), Ok(Some(_))) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = main.kill();
        }
        if let Ok(mut conn) = mysql_async::Conn::from_url(self.server_url.as_str()).await {
            use mysql_async::prelude::Queryable;
            let _ = conn
                .query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.db_name))
                .await;
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if let Some(main) = self.main.as_ref() {
            switchboard_testkit::signal_pid(main.id(), nix::sys::signal::Signal::SIGTERM);
        }
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
