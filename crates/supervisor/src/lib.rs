//! `main`, the supervisor: what PM2 did for the Node.js system, knowing from the
//! bus, not from a PID, whether a service is alive.
//!
//! It reads `ecosystem.toml` ([`ecosystem`]), starts the broker, then the apps in
//! `depends_on` order, each counted as started once its instance is ready on the
//! bus; health-checks every instance over the bus and restarts dead, hung or
//! over-memory ones ([`apps`]); serves `ls`, `start`, `stop`, `restart`,
//! `reload` and `logs` as the bus service `main` (what `sbctl` talks to); writes
//! each instance's output to its own rotated log file ([`logs`]). SIGTERM/SIGINT
//! stops the apps in reverse dependency order, gracefully, then the broker.
//!
//! # Layout
//!
//! - [`ecosystem`]: the file, checked before anything starts.
//! - [`apps`]: the process manager: keepers (one per instance), start/stop
//!   order, `ls`, `scale`, `reload-config`.
//! - [`proc`]: spawning, signals, /proc readings.
//! - [`logs`]: log files.
//! - [`http`]: main's HTTP server: the dashboard, `/metrics`, `/health`, `/ready`.
//! - `metrics`: every metric main records itself (`sb_instance_*`,
//!   `sb_metrics_answers_dropped_total`); `http` serves and merges them.
//! - `broker`: keeping the broker: adopt, start, restart, stop it last.
//! - `service`: the `main` bus service (what `sbctl` talks to).
//! - this file: [`Options`], [`run`]: the run folder's lock, the bus secret,
//!   the broker, then the service until SIGTERM/SIGINT.

pub mod apps;
mod broker;
pub mod ecosystem;
pub mod http;
pub mod logs;
mod metrics;
pub mod proc;
mod service;

use std::path::PathBuf;
use switchboard_bus::{svc, Config};
use tokio_util::sync::CancellationToken;

use apps::Supervisor;

/// Command-line options.
#[derive(Debug, Clone)]
pub struct Options {
    /// The ecosystem file.
    pub config: PathBuf,
    /// Profile (`env_<profile>` tables).
    pub env: Option<String>,
    /// Only monitor: start nothing, connect to `broker`.
    pub no_spawn: bool,
    /// Broker endpoint for `--no-spawn`.
    pub broker: String,
    /// Shared bus secret; without it, `RUN_DIR/bus.secret` (made on the first
    /// run) unless `insecure`.
    pub secret: Option<String>,
    /// No secret at all: a loopback-only bus any local user can join.
    pub insecure: bool,
}

/// The bus secret main runs with: the one given, else the run folder's
/// `bus.secret` (made on the first run), else none when `insecure`.
///
/// # Errors
///
/// When the secret file cannot be made or read, or other users can read it.
pub fn bus_secret(options: &Options, eco: &ecosystem::Ecosystem) -> anyhow::Result<Option<String>> {
    if let Some(secret) = options.secret.as_ref().filter(|s| !s.is_empty()) {
        return Ok(Some(secret.clone()));
    }
    if options.insecure {
        return Ok(None);
    }
    let run_dir = eco.run_dir.clone();
    let secret = switchboard_bus::secret_file::load_or_create(&run_dir)
        .map_err(|e| anyhow::anyhow!("the bus secret in {}: {e}", run_dir.display()))?;
    Ok(Some(secret))
}

/// The lock a running main holds on its run folder: one system per run folder.
/// A second `main` (or `scripts/run-all.sh`, which checks the same lock with
/// `flock`) on the same folder finds it held and refuses, touching nothing of
/// the first: not its logs, its processes or its ports. Adoption (of a broker
/// a killed main left running) needs the lock, so it only ever happens after a
/// main that is gone. The kernel drops the lock with the process, however it ends.
pub const LOCK_FILE: &str = "main.lock";

/// Takes the run folder's lock (making the folder if needed) and writes this
/// process's pid into the lock file; the lock lasts while the file is open.
///
/// # Errors
///
/// Another live main holds it (the message names its pid and what to do), or the
/// folder or file cannot be made.
pub fn lock_run_dir(run_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(run_dir)
        .map_err(|e| anyhow::anyhow!("cannot make the run folder {}: {e}", run_dir.display()))?;
    let path = run_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            anyhow::bail!(
                "another main (pid {}) already runs the system of {}: see it with `sbctl ls`, \
                 stop it with `sbctl shutdown`, or give this one another run_dir and other ports",
                if pid.is_empty() { "?" } else { pid },
                run_dir.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            anyhow::bail!("cannot lock {}: {e}", path.display())
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}

pub use switchboard_bus::proto::admin::{LogsReply, NameArg};

/// `main --check`: loads the ecosystem file and prints the start order (app,
/// binary, instances), or what is wrong with it; returns the exit code.
pub fn check(config: &std::path::Path, env: Option<&str>) -> i32 {
    match ecosystem::load(config, env) {
        Ok(eco) => {
            for app in &eco.apps {
                // What runs: the binary, and the script it runs if any.
                let mut what = app.bin.display().to_string();
                if let Some(script) = app.script.as_ref().filter(|s| **s != app.bin) {
                    what = format!("{what} {}", script.display());
                }
                println!("{:<12} {what} {}", app.spec.name, app.instances.join(","));
            }
            0
        }
        Err(e) => {
            eprintln!("main: {}: {e}", config.display());
            svc::EXIT_USAGE
        }
    }
}

/// Runs the supervisor until SIGTERM/SIGINT; returns the exit code.
pub async fn run(options: Options) -> i32 {
    let eco = match ecosystem::load(&options.config, options.env.as_deref()) {
        Ok(eco) => eco,
        Err(e) => {
            eprintln!("main: {}: {e}", options.config.display());
            return svc::EXIT_USAGE;
        }
    };
    // main writes logs and its status file in run_dir: a folder it cannot write
    // to is named now, before the broker (whose log is the first file) starts.
    if !options.no_spawn {
        if let Err(e) = logs::check_writable(&eco.run_dir.join("logs")) {
            eprintln!(
                "main: run_dir is not writable: {e} (set [main] run_dir to a writable \
                 absolute folder, or SB_ECO__MAIN__RUN_DIR; under systemd, a relative \
                 run_dir is inside StateDirectory=)"
            );
            return svc::EXIT_FAILURE;
        }
    }
    // One system per run folder: before anything else is touched.
    let _lock = if options.no_spawn {
        None
    } else {
        match lock_run_dir(&eco.run_dir) {
            Ok(lock) => Some(lock),
            Err(e) => {
                eprintln!("main: {e:#}");
                return svc::EXIT_FAILURE;
            }
        }
    };
    let secret = match bus_secret(&options, &eco) {
        Ok(secret) => secret,
        Err(e) => {
            eprintln!("main: {e:#}");
            return svc::EXIT_USAGE;
        }
    };
    if secret.is_none() {
        tracing::warn!(
            "--insecure: no bus secret; every local user can join the bus as any service"
        );
    }
    let shutdown = svc::shutdown_on_signal();
    let found = broker::find_or_start(&eco, &options, secret.as_deref()).await;
    let (endpoint, broker, broker_restarts) = match found {
        Ok(found) => found,
        Err(e) => {
            eprintln!("main: cannot start the broker: {e:#}");
            return svc::EXIT_FAILURE;
        }
    };
    // What main and its apps connect to: the pair's endpoints when there is a
    // pair, else the one broker.
    let bus_endpoint = if eco.broker.pair.is_empty() {
        endpoint.clone()
    } else {
        eco.broker.pair.join(",")
    };
    println!("listening {endpoint}");
    let (http, http_auth) = http_server(&eco).await;
    let instance = instance_name(&eco, options.no_spawn);
    let manages_broker = broker.is_some() || (!options.no_spawn && eco.broker.connect.is_none());
    let sup = match Supervisor::new(
        eco,
        bus_endpoint.clone(),
        options.no_spawn,
        manages_broker,
        secret.clone(),
    ) {
        Ok(sup) => sup,
        Err(e) => {
            eprintln!("main: {e:#}");
            return svc::EXIT_FAILURE;
        }
    };
    sup.set_source(options.config.clone(), options.env.clone());
    let config = Config {
        broker: bus_endpoint,
        instance,
        secret,
        successor: false,
        ..Config::default()
    };
    for _ in 0..broker_restarts {
        sup.broker_restarted();
    }
    // The broker is supervised like an app, but stops last: after the apps.
    let stop_broker = CancellationToken::new();
    let keeper = broker.map(|proc| {
        tokio::spawn(broker::keep_broker(
            sup.clone(),
            endpoint.clone(),
            proc,
            stop_broker.clone(),
        ))
    });
    let result = service::service(sup.clone(), shutdown.clone(), http, http_auth)
        .run(config, shutdown)
        .await;
    stop_broker.cancel();
    if let Some(keeper) = keeper {
        let _ = keeper.await;
    }
    match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "main failed");
            svc::EXIT_FAILURE
        }
    }
}

/// main's HTTP server, bound (`dashboard http://ADDR/` on stdout), and who may
/// use it; a warning when it listens beyond this host without auth.
async fn http_server(
    eco: &ecosystem::Ecosystem,
) -> (Option<tokio::net::TcpListener>, http::Access) {
    if eco.main.http_auth.is_none()
        && !eco.main.http.is_empty()
        && !http::is_loopback_bind(&eco.main.http)
    {
        tracing::warn!(http = %eco.main.http, "main's HTTP server listens beyond this host without http_auth: anyone who reaches it reads the dashboard, traces and metrics");
    }
    let http_auth = http::Access {
        auth: eco.main.http_auth.clone(),
        hosts: eco.main.http_hosts.clone(),
    };
    let http = http::bind(&eco.main.http).await;
    if let Some(addr) = http.as_ref().and_then(|l| l.local_addr().ok()) {
        println!("dashboard http://{addr}/");
    }
    (http, http_auth)
}

/// main's instance name on the bus: `main`, or `main.HOST` on several hosts.
/// A monitor is not the system's main: it answers as service `main` (so
/// that `sbctl ls` works where it is the only one) under an instance name of
/// its own, so it never takes the main's registration (the broker refuses a
/// live instance's name to another process anyway).
fn instance_name(eco: &ecosystem::Ecosystem, no_spawn: bool) -> String {
    let instance = match &eco.main.host {
        Some(host) => format!("main.{host}"),
        None => "main".to_owned(),
    };
    if no_spawn {
        format!("{instance}-monitor-{}", std::process::id()).replace('.', "-")
    } else {
        instance
    }
}
