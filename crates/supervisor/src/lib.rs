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
//! - this file: [`Options`], [`run`], the `main` bus service.

pub mod ecosystem;
pub mod http;
pub mod logs;
pub mod proc;
pub mod apps;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use switchboard_bus::{svc, Config, Error, Request, Service};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use apps::{Cmd, InstanceState, InstanceStatus, Supervisor};

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
    let previous = apps::read_status_file(&eco.run_dir);
    // Another host's main runs the broker: connect to it, start none.
    let external = eco.broker.connect.clone();
    let adopted = if options.no_spawn || external.is_some() {
        None
    } else {
        adoptable_broker(&eco, previous.as_ref()).await
    };
    let broker_restarts = adopted.as_ref().map_or(0, |(_, _, restarts)| *restarts);
    let (endpoint, broker) = if let Some(endpoint) = external {
        (endpoint, None)
    } else if options.no_spawn {
        (options.broker.clone(), None)
    } else if let Some((endpoint, proc, _)) = adopted {
        tracing::info!(%endpoint, pid = proc.pid, "adopted the running broker");
        (endpoint, Some(proc))
    } else {
        match start_broker(&eco, &eco.broker.bind, secret.as_deref()).await {
            Ok((endpoint, proc)) => (endpoint, Some(proc)),
            Err(e) => {
                eprintln!("main: cannot start the broker: {e:#}");
                return svc::EXIT_FAILURE;
            }
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
    let instance = match &eco.main.host {
        Some(host) => format!("main.{host}"),
        None => "main".to_owned(),
    };
    // A monitor is not the system's main: it answers as service `main` (so
    // that `sbctl ls` works where it is the only one) under an instance name of
    // its own, so it never takes the main's registration (the broker refuses a
    // live instance's name to another process anyway).
    let instance = if options.no_spawn {
        format!("{instance}-monitor-{}", std::process::id()).replace('.', "-")
    } else {
        instance
    };
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
        tokio::spawn(keep_broker(
            sup.clone(),
            endpoint.clone(),
            proc,
            stop_broker.clone(),
        ))
    });
    let result = service(sup.clone(), shutdown.clone(), http, http_auth)
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

/// The broker a previous main left running (it was killed, the broker was not):
/// its pid from the status file still runs the broker binary, and its endpoint
/// takes connections. Returns (endpoint, process, restarts so far).
async fn adoptable_broker(
    eco: &ecosystem::Ecosystem,
    previous: Option<&apps::StatusFile>,
) -> Option<(String, proc::Proc, u32)> {
    let file = previous?;
    let row = file.instances.iter().find(|i| i.app == "broker")?;
    let bin = ecosystem::resolve_bin(&eco.broker.bin, &eco.base)?;
    let name = bin.file_name()?.to_string_lossy().into_owned();
    let exe = proc::exe_of(row.pid)?;
    // `/proc/PID/exe` reads "… (deleted)" once the binary was rebuilt: a prefix.
    let runs_broker = exe
        .file_name()
        .is_some_and(|f| f.to_string_lossy().starts_with(&name));
    if !proc::alive(row.pid) || !runs_broker {
        return None;
    }
    // In a pair, the status file holds both endpoints; this host's broker is
    // the one `bind` names (a pair's addresses are fixed, never port 0).
    let local = if eco.broker.pair.is_empty() {
        file.broker_endpoint.clone()
    } else {
        eco.broker.bind.clone()
    };
    let addr = local.strip_prefix("tcp://")?;
    let answers = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .is_ok_and(|c| c.is_ok());
    answers.then(|| {
        (
            local.clone(),
            proc::Proc::adopt(row.pid, row.started_at_ms),
            row.restarts,
        )
    })
}

/// Longest wait before restarting a broker that keeps exiting at once.
const BROKER_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Keeps the broker running: when it exits (killed, crashed) it is started again
/// at once on the same endpoint (the one it bound first, so a port picked by the
/// OS stays), with a growing delay (100 ms doubling to 5 s) only while it keeps
/// exiting within a second of its start. Services, gateways and sbctl reconnect by
/// themselves. Stops it (gracefully) when `stop` is cancelled.
async fn keep_broker(
    sup: Arc<Supervisor>,
    endpoint: String,
    mut proc: proc::Proc,
    stop: CancellationToken,
) {
    let mut quick_exits: u32 = 0;
    loop {
        sup.broker_online(proc.pid, proc.started_ms);
        tokio::select! {
            () = stop.cancelled() => {
                tracing::info!("stopping the broker");
                proc.stop(Duration::from_secs(5)).await;
                sup.broker_state(InstanceState::Stopped);
                return;
            }
            status = proc.wait() => {
                let uptime = proc.started.elapsed();
                tracing::error!(pid = proc.pid, %status, uptime_ms = uptime.as_millis() as u64, "the broker exited; restarting it");
                quick_exits = if uptime < Duration::from_secs(1) { quick_exits + 1 } else { 0 };
            }
        }
        sup.broker_state(InstanceState::Restarting);
        loop {
            let delay = match quick_exits {
                0 => Duration::ZERO,
                n => (Duration::from_millis(100) * 2u32.saturating_pow(n - 1))
                    .min(BROKER_MAX_BACKOFF),
            };
            tokio::select! {
                () = stop.cancelled() => {
                    sup.broker_state(InstanceState::Stopped);
                    return;
                }
                () = tokio::time::sleep(delay) => {}
            }
            match start_broker(&sup.eco, &endpoint, sup.secret.as_deref()).await {
                Ok((_, new)) => {
                    proc = new;
                    sup.broker_restarted();
                    tracing::info!(pid = proc.pid, %endpoint, "broker restarted");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "broker restart failed; retrying");
                    quick_exits += 1;
                }
            }
        }
    }
}

/// Spawns the broker bound to `bind` and reads the endpoint it bound.
async fn start_broker(
    eco: &ecosystem::Ecosystem,
    bind: &str,
    secret: Option<&str>,
) -> anyhow::Result<(String, proc::Proc)> {
    let bin = ecosystem::resolve_bin(&eco.broker.bin, &eco.base)
        .ok_or_else(|| anyhow::anyhow!("broker bin {:?} not found", eco.broker.bin))?;
    let services: Vec<&str> = eco.apps.iter().map(|a| a.spec.name.as_str()).collect();
    let mut args = vec![
        "--bind".to_owned(),
        bind.to_owned(),
        "--services".to_owned(),
        services.join(","),
    ];
    args.extend(eco.broker.args.iter().cloned());
    let mut env = proc::base_env(&[]);
    env.extend(eco.broker.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    // The secret goes in the environment, never in args (`ps` shows args).
    match secret {
        Some(secret) => env.push(("SB_SECRET".into(), secret.into())),
        None => env.push(("SB_INSECURE".into(), "1".into())),
    }
    let log_dir = eco.run_dir.join("logs");
    let log = Arc::new(logs::LogFile::open(
        &log_dir,
        "broker",
        eco.main.log_max_bytes,
        eco.main.log_keep,
    )?);
    let (proc, stdout) = proc::spawn_reporting(&bin, &args, &env, log.clone())?;
    let stdout = stdout.ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .map_err(|_| anyhow::anyhow!("the broker did not report its endpoint within 10 s"))??
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the broker exited at start (see {}/broker.log)",
                log_dir.display()
            )
        })?;
    let endpoint = first
        .strip_prefix("listening ")
        .ok_or_else(|| anyhow::anyhow!("unexpected broker output: {first}"))?
        .to_owned();
    // Anything it prints later goes to its log, like every app's output.
    tokio::spawn(proc::pump(lines.into_inner(), log));
    tracing::info!(%endpoint, pid = proc.pid, "broker started");
    Ok((endpoint, proc))
}

fn decode_name(req: &Request) -> Result<NameArg, Error> {
    req.decode::<NameArg>()
}

fn targets(sup: &Supervisor, name: &str) -> Result<Vec<Arc<apps::Managed>>, Error> {
    let found = sup.find(name);
    if found.is_empty() {
        let known: Vec<String> = sup.apps().into_iter().map(|a| a.spec.name).collect();
        return Err(Error::bad_request(format!(
            "no app or instance {name:?} (apps: {})",
            known.join(", ")
        )));
    }
    Ok(found)
}

async fn order(sup: Arc<Supervisor>, req: Request, cmd: Cmd) -> switchboard_bus::HandlerResult {
    let arg = decode_name(&req)?;
    let found = targets(&sup, &arg.name)?;
    let results = futures::future::join_all(found.iter().map(|m| m.order(cmd))).await;
    let failures: Vec<String> = found
        .iter()
        .zip(&results)
        .filter_map(|(m, r)| r.as_ref().err().map(|e| format!("{}: {e}", m.instance)))
        .collect();
    if !failures.is_empty() {
        return Err(Error::new(
            switchboard_bus::proto::ErrorCode::Unavailable,
            failures.join("; "),
        ));
    }
    let statuses: Vec<InstanceStatus> = found.iter().map(|m| m.status()).collect();
    Request::encode(&statuses)
}

/// The `main` bus service over `sup`.
fn service(
    sup: Arc<Supervisor>,
    shutdown: CancellationToken,
    http: Option<tokio::net::TcpListener>,
    http_auth: http::Access,
) -> Service {
    let shutdown = Arc::new(shutdown);
    let s_task = sup.clone();
    Service::new("main")
        .version(env!("CARGO_PKG_VERSION"))
        .concurrency(64)
        .handle_with("ls", &sup, |req: Request, sup| async move {
            Request::encode(&sup.ls(&req.bus).await)
        })
        .handle_with("start", &sup, |req: Request, sup| {
            order(sup, req, Cmd::Start)
        })
        .handle_with("stop", &sup, |req: Request, sup| order(sup, req, Cmd::Stop))
        .handle_with("restart", &sup, |req: Request, sup| {
            order(sup, req, Cmd::Restart)
        })
        .handle_with("reload", &sup, |req: Request, sup| {
            order(sup, req, Cmd::Reload)
        })
        .handle_with("describe", &sup, |req: Request, sup| async move {
            let arg = decode_name(&req)?;
            let apps = sup.apps();
            let app = apps
                .iter()
                .find(|a| a.spec.name == arg.name)
                .ok_or_else(|| {
                    let known: Vec<&str> = apps.iter().map(|a| a.spec.name.as_str()).collect();
                    Error::bad_request(format!(
                        "no app {:?} (apps: {})",
                        arg.name,
                        known.join(", ")
                    ))
                })?;
            let found = sup.find(&app.spec.name);
            Request::encode(
                &app.describe(
                    found.iter().map(|m| m.status()).collect(),
                    found
                        .iter()
                        .map(|m| m.log_path().display().to_string())
                        .collect(),
                ),
            )
        })
        .handle_with("scale", &sup, |req: Request, sup| async move {
            let arg: switchboard_bus::proto::admin::ScaleArg = req.decode()?;
            sup.scale(&arg.app, arg.instances).await?;
            let statuses: Vec<InstanceStatus> =
                sup.find(&arg.app).iter().map(|m| m.status()).collect();
            Request::encode(&statuses)
        })
        .handle_with("reload-config", &sup, |_req: Request, sup| async move {
            Request::encode(&sup.reload_config().await?)
        })
        .handle_with(
            "shutdown",
            &shutdown,
            |_req: Request, shutdown| async move {
                tracing::warn!("shutdown asked over the bus: stopping every app, then main");
                // After the reply has gone out.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    shutdown.cancel();
                });
                Request::encode(&std::collections::BTreeMap::<String, u8>::new())
            },
        )
        .handle_with("logs", &sup, |req: Request, sup| async move {
            let arg = decode_name(&req)?;
            let (instance, path) = if arg.name == "broker" {
                ("broker".to_owned(), sup.log_dir().join("broker.log"))
            } else {
                let found = targets(&sup, &arg.name)?;
                if found.len() > 1 {
                    let names: Vec<&str> = found.iter().map(|m| m.instance.as_str()).collect();
                    return Err(Error::bad_request(format!(
                        "{} has several instances: {}",
                        arg.name,
                        names.join(", ")
                    )));
                }
                (found[0].instance.clone(), found[0].log_path())
            };
            let read = match arg.offset {
                Some(offset) => logs::since(&path, offset),
                None => {
                    logs::tail(&path, arg.lines.unwrap_or(50).min(10_000)).map(|(lines, size)| {
                        let mut text = lines.join("\n");
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        (text, size)
                    })
                }
            };
            let (text, offset) = read.map_err(|e| {
                Error::new(
                    switchboard_bus::proto::ErrorCode::Unavailable,
                    format!("{}: {e}", path.display()),
                )
            })?;
            Request::encode(&LogsReply {
                instance,
                path: path.display().to_string(),
                text,
                offset,
            })
        })
        .task(move |bus, shutdown| async move {
            let sup = s_task;
            if let Some(listener) = http {
                tokio::spawn(http::serve(
                    listener,
                    sup.clone(),
                    bus.clone(),
                    http_auth,
                    shutdown.clone(),
                ));
            }
            sup.spawn_keepers(&bus, &shutdown);
            tokio::spawn({
                let sup = sup.clone();
                let bus = bus.clone();
                let shutdown = shutdown.clone();
                async move { sup.watch_broker(bus, shutdown).await }
            });
            if !sup.no_spawn {
                tokio::select! {
                    failed = sup.start_all() => {
                        if failed.is_empty() {
                            tracing::info!("every app started");
                            println!("ready");
                        } else {
                            tracing::error!(failed = failed.len(), "some apps did not start");
                            println!("not-ready {}", failed.len());
                        }
                    }
                    () = shutdown.cancelled() => {}
                }
            }
            shutdown.cancelled().await;
            tracing::info!("stopping the apps in reverse dependency order");
            sup.stop_all().await;
        })
}
