//! The process manager: one keeper task per instance.
//!
//! A keeper owns its instance's process and runs a small state machine:
//!
//! - **idle** (`stopped` or `errored`): waits for `start`/`restart`/`reload`;
//! - **running** (`online`): watches the process exit, health-checks it over the
//!   bus every heartbeat (`$health`, pinned to the instance), and reads its memory
//!   and CPU from /proc. A process that exits is restarted with the policy; one
//!   whose health checks fail `liveness` times in a row while its PID lives is
//!   hung: it is killed and restarted. Past `max_memory_restart`, or when its
//!   binary changes with `watch`, it is replaced gracefully;
//! - **waiting**: the restart delay before the next start.
//!
//! A start counts only when the instance has registered on the bus and is ready
//! (with `wait_ready`), or fails after `ready_timeout_ms`. A graceful replacement
//! (reload) starts the new process as the old one's *successor*: the broker
//! drains the old one, new requests go to the new one, the old one finishes what
//! it has and exits; nothing is lost.
//!
//! Restart policy, as PM2's: an exit after less than `min_uptime_ms` is unstable;
//! after `max_restarts` unstable restarts in a row the instance is `errored` and
//! left alone until told to start. The delay is `restart_delay_ms`, or with
//! `exp_backoff_restart_delay_ms` that value doubled per unstable restart (15 s at
//! most).
//!
//! # Layout
//!
//! - `keeper`: one instance's task and state machine (idle, running, waiting).
//! - `membership`: `scale` and `reload-config`: which instances run.
//! - `report`: what main reports: `ls`, events, readiness, the status file.
//! - `status`: reading the status file; which processes are instances to adopt.
//! - this file: [`Supervisor`], the keepers' shared state, [`Cmd`], start/stop order.

mod keeper;
mod membership;
mod report;
mod status;

pub(crate) use report::broker_ls;

use keeper::Keeper;
pub use status::{
    is_instance, read_status_file, InstanceState, InstanceStatus, StatusFile, STATUS_FILE,
};

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use switchboard_bus::proto::{self, Health, InstanceInfo};
use switchboard_bus::svc::Backoff;
use switchboard_bus::{CallOptions, Handle};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::ecosystem::{App, Ecosystem};
use crate::logs::LogFile;
use crate::proc::{self, Proc};

/// Events main keeps for the dashboard.
const EVENTS_KEPT: usize = 100;

/// Longest exponential restart delay (`exp_backoff_restart_delay_ms` is the
/// first).
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(15);

/// Orders a keeper takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    /// Start if not running.
    Start,
    /// Stop gracefully (SIGTERM, then SIGKILL after `kill_timeout_ms`).
    Stop,
    /// Stop, then start.
    Restart,
    /// Zero-downtime replacement (start if not running).
    Reload,
}

type Reply = oneshot::Sender<Result<(), String>>;

/// One managed instance.
pub struct Managed {
    /// Its app (replaced when `reload-config` changes the app).
    app: Mutex<App>,
    /// Its name.
    pub instance: String,
    status: Mutex<InstanceStatus>,
    cmd: mpsc::Sender<(Cmd, Reply)>,
    rx: Mutex<Option<mpsc::Receiver<(Cmd, Reply)>>>,
    log: Arc<LogFile>,
    /// A live process of this instance that a previous main started, to adopt
    /// instead of starting another: (pid, started_at_ms, restarts).
    adopt: Mutex<Option<(u32, u64, u32)>>,
    /// Its keeper's token and task: cancelling the token retires the instance
    /// (its keeper stops the process and ends).
    keeper: Mutex<Option<(CancellationToken, tokio::task::JoinHandle<()>)>>,
}

impl Managed {
    /// A stopped instance `instance` of `app`, its log in `log_dir`; `previous`
    /// (a status file) names a live process of it to adopt.
    fn new(
        app: &App,
        instance: &str,
        main: &crate::ecosystem::MainConf,
        log_dir: &std::path::Path,
        previous: Option<&StatusFile>,
    ) -> anyhow::Result<Arc<Self>> {
        let log = LogFile::open(log_dir, instance, main.log_max_bytes, main.log_keep)?;
        let (cmd, rx) = mpsc::channel(16);
        Ok(Arc::new(Managed {
            app: Mutex::new(app.clone()),
            instance: instance.to_owned(),
            status: Mutex::new(InstanceStatus {
                app: app.spec.name.clone(),
                instance: instance.to_owned(),
                host: main.host.clone().unwrap_or_default(),
                state: InstanceState::Stopped,
                managed: true,
                ..InstanceStatus::default()
            }),
            cmd,
            rx: Mutex::new(Some(rx)),
            log: Arc::new(log),
            adopt: Mutex::new(previous.and_then(|file| {
                let was = file
                    .instances
                    .iter()
                    .find(|i| i.instance == instance && i.app == app.spec.name && i.pid > 0)?;
                is_instance(was.pid, instance).then_some((was.pid, was.started_at_ms, was.restarts))
            })),
            keeper: Mutex::new(None),
        }))
    }

    /// Its app, as configured now.
    pub fn app(&self) -> App {
        self.app.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, f: impl FnOnce(&mut InstanceStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn set_state(&self, state: InstanceState) {
        self.set(|s| {
            if s.state != state {
                tracing::info!(instance = %s.instance, from = %s.state, to = %state, "state");
            }
            s.state = state;
            if !matches!(state, InstanceState::Online | InstanceState::Degraded) {
                s.health.clear();
            }
            if !state.running() {
                s.pid = 0;
                s.started_at_ms = 0;
                s.uptime_ms = 0;
                s.rss_bytes = 0;
                s.cpu_percent = 0.0;
                s.inflight = 0;
            }
        });
    }

    /// A snapshot of its status.
    pub fn status(&self) -> InstanceStatus {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if s.started_at_ms > 0 {
            s.uptime_ms = proto::now_ms().saturating_sub(s.started_at_ms);
        }
        s
    }

    /// Sends an order and waits for its outcome.
    ///
    /// # Errors
    ///
    /// What went wrong (a start that never became ready, say).
    pub async fn order(&self, cmd: Cmd) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send((cmd, tx))
            .await
            .map_err(|_| "supervisor stopping".to_owned())?;
        rx.await.map_err(|_| "supervisor stopping".to_owned())?
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        self.log.path().to_path_buf()
    }
}

/// The supervisor's state shared by keepers and the bus handlers.
pub struct Supervisor {
    /// The ecosystem.
    pub eco: Ecosystem,
    /// The apps, in start order (changed by `scale` and `reload-config`).
    apps: RwLock<Vec<App>>,
    /// Managed instances, in start order.
    managed: RwLock<Vec<Arc<Managed>>>,
    /// What keepers started later need: the bus and main's shutdown token.
    keeper_ctx: Mutex<Option<(Handle, CancellationToken)>>,
    /// The ecosystem file and profile main started from (`reload-config`).
    source: Mutex<Option<(PathBuf, Option<String>)>>,
    /// What happened to the instances lately (exits, failed starts, hung kills),
    /// newest last; at most [`EVENTS_KEPT`].
    events: Mutex<std::collections::VecDeque<proto::admin::SupervisorEvent>>,
    /// The broker endpoint children connect to.
    pub broker: Mutex<String>,
    /// The broker answered the last check (hung detection pauses when it does not).
    broker_ok: AtomicBool,
    /// Only monitor; spawn nothing.
    pub no_spawn: bool,
    /// The broker's row in `ls` (none with `no_spawn`: not ours).
    broker_status: Mutex<Option<InstanceStatus>>,
    log_dir: PathBuf,
    /// The bus secret the broker and every app are given (none: `--insecure`).
    pub secret: Option<String>,
}

impl Supervisor {
    /// Prepares the managed instances (opening their log files).
    ///
    /// # Errors
    ///
    /// When a log file cannot be created.
    pub fn new(
        eco: Ecosystem,
        broker: String,
        no_spawn: bool,
        manages_broker: bool,
        secret: Option<String>,
    ) -> anyhow::Result<Arc<Self>> {
        let log_dir = eco.run_dir.join("logs");
        // A previous main's record (after a crash): its instances still running.
        let previous = read_status_file(&eco.run_dir);
        let mut managed = Vec::new();
        if !no_spawn {
            for app in &eco.apps {
                for instance in &app.instances {
                    managed.push(Managed::new(
                        app,
                        instance,
                        &eco.main,
                        &log_dir,
                        previous.as_ref(),
                    )?);
                }
            }
        }
        let host = eco.main.host.clone().unwrap_or_default();
        Ok(Arc::new(Self {
            apps: RwLock::new(eco.apps.clone()),
            eco,
            managed: RwLock::new(managed),
            keeper_ctx: Mutex::new(None),
            source: Mutex::new(None),
            events: Mutex::new(std::collections::VecDeque::new()),
            broker: Mutex::new(broker),
            broker_ok: AtomicBool::new(true),
            broker_status: Mutex::new(manages_broker.then(|| InstanceStatus {
                app: "broker".into(),
                instance: "broker".into(),
                host: host.clone(),
                state: InstanceState::Starting,
                managed: true,
                ..InstanceStatus::default()
            })),
            no_spawn,
            log_dir,
            secret,
        }))
    }

    /// The log folder.
    pub fn log_dir(&self) -> &std::path::Path {
        &self.log_dir
    }

    /// Instances matching `name`: an app's instances, or one instance.
    pub fn find(&self, name: &str) -> Vec<Arc<Managed>> {
        self.managed()
            .into_iter()
            .filter(|m| m.app().spec.name == name || m.instance == name)
            .collect()
    }

    /// Every managed instance, in start order.
    pub fn managed(&self) -> Vec<Arc<Managed>> {
        self.managed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The apps, in start order.
    pub fn apps(&self) -> Vec<App> {
        self.apps.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Starts one keeper per instance on the current runtime.
    pub fn spawn_keepers(self: &Arc<Self>, bus: &Handle, shutdown: &CancellationToken) {
        *self.keeper_ctx.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((bus.clone(), shutdown.clone()));
        for m in self.managed() {
            self.spawn_keeper(&m);
        }
    }

    /// Starts `m`'s keeper (once), under a token of its own that main's shutdown
    /// also cancels.
    fn spawn_keeper(self: &Arc<Self>, m: &Arc<Managed>) {
        let Some((bus, shutdown)) = self
            .keeper_ctx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return;
        };
        let rx = m.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(rx) = rx {
            let token = shutdown.child_token();
            let task =
                tokio::spawn(Keeper::new(self.clone(), m.clone(), bus).run(rx, token.clone()));
            *m.keeper.lock().unwrap_or_else(|p| p.into_inner()) = Some((token, task));
        }
    }

    /// Starts every app in dependency order: an app starts once every instance of
    /// what it depends on is ready.
    ///
    /// Says on stdout, for scripts/run-all.sh to show: `starting INSTANCE`,
    /// `online INSTANCE`, `failed INSTANCE: WHY` (a failed app is then left to its
    /// restart policy). Returns the instances that failed, with why.
    pub async fn start_all(&self) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        for app in self.apps() {
            if !app.spec.autostart {
                continue;
            }
            let instances = self.find(&app.spec.name);
            for m in &instances {
                println!("starting {}", m.instance);
            }
            let results =
                futures::future::join_all(instances.iter().map(|m| m.order(Cmd::Start))).await;
            for (m, r) in instances.iter().zip(results) {
                match r {
                    Ok(()) => println!("online {}", m.instance),
                    Err(e) => {
                        tracing::error!(instance = %m.instance, error = %e, "did not start");
                        println!("failed {}: {}", m.instance, e.replace('\n', " "));
                        failed.push((m.instance.clone(), e));
                    }
                }
            }
        }
        failed
    }

    /// Stops every app in reverse dependency order, each gracefully.
    pub async fn stop_all(&self) {
        for app in self.apps().iter().rev() {
            let instances = self.find(&app.spec.name);
            futures::future::join_all(instances.iter().map(|m| m.order(Cmd::Stop))).await;
        }
    }

    /// Watches the broker so that hung detection pauses while the bus is down.
    ///
    /// The broker is held to the apps' rule for hung: `liveness` failed checks in
    /// a row while its process lives (and not within the grace after its start,
    /// while everyone, main included, reconnects) and it is killed; its keeper
    /// starts a new one.
    pub async fn watch_broker(&self, bus: Handle, shutdown: CancellationToken) {
        let every = Duration::from_millis(self.eco.main.heartbeat_ms);
        let grace_ms = self.eco.main.heartbeat_ms * u64::from(self.eco.main.liveness) * 2;
        let mut misses = 0;
        loop {
            let options = CallOptions {
                timeout: Some(every),
                ..CallOptions::default()
            };
            // Registrations and refusals: answers of the broker to our hello.
            let registrations = || {
                let stats = bus.stats();
                stats.registrations.load(Ordering::Relaxed) + stats.refusals.load(Ordering::Relaxed)
            };
            let before = registrations();
            let ok = bus
                .call(proto::BROKER_SERVICE, "$echo", Vec::new(), options)
                .await
                .is_ok();
            // The broker registered us again meanwhile (it had dropped our
            // registration: told "I do not know you"), or refused our name (a
            // live process holds it): it answers, it is not hung. Losing our
            // own registration is never read as a hung broker.
            let answered = ok || registrations() != before;
            self.broker_ok.store(ok, Ordering::Relaxed);
            if !self.no_spawn {
                self.write_status_file(ok);
                let (pid, uptime_ms) = self.broker_row().map_or((0, 0), |b| (b.pid, b.uptime_ms));
                misses = if answered || pid == 0 || uptime_ms < grace_ms {
                    0
                } else {
                    misses + 1
                };
                if misses >= self.eco.main.liveness {
                    tracing::error!(
                        pid,
                        misses,
                        "broker hung: no answer while its process lives; killing it"
                    );
                    proc::signal(pid, nix::sys::signal::Signal::SIGKILL);
                    misses = 0;
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}
