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

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use switchboard_bus::proto::{self, Health, InstanceInfo};
use switchboard_bus::{CallOptions, Handle};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::ecosystem::{App, Ecosystem};
use crate::logs::LogFile;
use crate::proc::{self, Proc};

/// Longest exponential restart delay.
const MAX_BACKOFF_MS: u64 = 15_000;

/// What `ls` shows of one instance.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct InstanceStatus {
    /// App (service) name.
    pub app: String,
    /// Instance name.
    pub instance: String,
    /// `starting`, `online`, `degraded` (answers, but reports a dependency down:
    /// left alone), `stopping`, `stopped`, `waiting` (restart delay), `errored`
    /// (kept exiting), or `unmanaged` (on the bus, not started by this supervisor).
    pub state: String,
    /// What its last `$health` said when not `ok` (`db_down`); empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub health: String,
    /// Process id.
    pub pid: u32,
    /// Start time, ms since the epoch (0 when not running).
    pub started_at_ms: u64,
    /// Milliseconds since the start.
    pub uptime_ms: u64,
    /// Restarts since the supervisor started.
    pub restarts: u32,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// CPU, percent of one core, over the last heartbeat.
    pub cpu_percent: f64,
    /// Requests in flight (its last `$health`).
    pub inflight: u64,
    /// Requests handled (its last `$health`).
    pub handled: u64,
    /// Started by this supervisor.
    pub managed: bool,
}

/// Name of main's status file in its `run_dir`.
pub const STATUS_FILE: &str = "status.json";

/// What main writes to [`STATUS_FILE`] every heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusFile {
    /// When, ms since the epoch.
    pub written_at_ms: u64,
    /// The broker answered main's last check.
    pub broker_ok: bool,
    /// The broker and the managed instances.
    pub instances: Vec<InstanceStatus>,
    /// The endpoint the broker bound.
    #[serde(default)]
    pub broker_endpoint: String,
}

impl StatusFile {
    /// Reads `run_dir/status.json`, if there is one.
    pub fn read(run_dir: &std::path::Path) -> Option<Self> {
        let text = std::fs::read_to_string(run_dir.join(STATUS_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// Whether `pid` runs and is the instance named `instance` (its environment says
/// `SB_INSTANCE=instance`, which main gives every app it starts): the test for
/// adopting a process a previous main started. The environment, not the binary
/// path, so that a binary rebuilt on disk does not stop the adoption.
pub fn is_instance(pid: u32, instance: &str) -> bool {
    if !proc::alive(pid) {
        return false;
    }
    let want = format!("SB_INSTANCE={instance}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == want.as_bytes()))
}

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
    /// Its app.
    pub app: App,
    /// Its name.
    pub instance: String,
    status: Mutex<InstanceStatus>,
    cmd: mpsc::Sender<(Cmd, Reply)>,
    rx: Mutex<Option<mpsc::Receiver<(Cmd, Reply)>>>,
    log: Arc<LogFile>,
    /// A live process of this instance that a previous main started, to adopt
    /// instead of starting another: (pid, started_at_ms, restarts).
    adopt: Mutex<Option<(u32, u64, u32)>>,
}

impl Managed {
    fn set(&self, f: impl FnOnce(&mut InstanceStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn set_state(&self, state: &str) {
        self.set(|s| {
            if s.state != state {
                tracing::info!(instance = %s.instance, from = %s.state, to = state, "state");
            }
            s.state = state.to_owned();
            if state != "online" && state != "degraded" {
                s.health.clear();
            }
            if state != "online" && state != "starting" && state != "degraded" {
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
    /// Managed instances, in start order.
    pub managed: Vec<Arc<Managed>>,
    /// The broker endpoint children connect to.
    pub broker: Mutex<String>,
    /// The broker answered the last check (hung detection pauses when it does not).
    broker_ok: AtomicBool,
    /// Only monitor; spawn nothing.
    pub no_spawn: bool,
    /// The broker's row in `ls` (none with `no_spawn`: not ours).
    broker_status: Mutex<Option<InstanceStatus>>,
    log_dir: PathBuf,
}

impl Supervisor {
    /// Prepares the managed instances (opening their log files).
    ///
    /// # Errors
    ///
    /// When a log file cannot be created.
    pub fn new(eco: Ecosystem, broker: String, no_spawn: bool) -> anyhow::Result<Arc<Self>> {
        let log_dir = eco.base.join(&eco.main.run_dir).join("logs");
        // A previous main's record (after a crash): its instances still running.
        let previous = StatusFile::read(&eco.base.join(&eco.main.run_dir));
        let mut managed = Vec::new();
        if !no_spawn {
            for app in &eco.apps {
                for instance in &app.instances {
                    let log = LogFile::open(
                        &log_dir,
                        instance,
                        eco.main.log_max_bytes,
                        eco.main.log_keep,
                    )?;
                    let (cmd, rx) = mpsc::channel(16);
                    managed.push(Arc::new(Managed {
                        app: app.clone(),
                        instance: instance.clone(),
                        status: Mutex::new(InstanceStatus {
                            app: app.spec.name.clone(),
                            instance: instance.clone(),
                            state: "stopped".into(),
                            managed: true,
                            ..InstanceStatus::default()
                        }),
                        cmd,
                        rx: Mutex::new(Some(rx)),
                        log: Arc::new(log),
                        adopt: Mutex::new(previous.as_ref().and_then(|file| {
                            let was = file.instances.iter().find(|i| {
                                i.instance == *instance && i.app == app.spec.name && i.pid > 0
                            })?;
                            is_instance(was.pid, instance).then_some((
                                was.pid,
                                was.started_at_ms,
                                was.restarts,
                            ))
                        })),
                    }));
                }
            }
        }
        Ok(Arc::new(Self {
            eco,
            managed,
            broker: Mutex::new(broker),
            broker_ok: AtomicBool::new(true),
            broker_status: Mutex::new((!no_spawn).then(|| InstanceStatus {
                app: "broker".into(),
                instance: "broker".into(),
                state: "starting".into(),
                managed: true,
                ..InstanceStatus::default()
            })),
            no_spawn,
            log_dir,
        }))
    }

    fn set_broker(&self, f: impl FnOnce(&mut InstanceStatus)) {
        if let Some(s) = self
            .broker_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            f(s);
        }
    }

    /// The broker process is up.
    pub fn broker_online(&self, pid: u32, started_at_ms: u64) {
        self.set_broker(|s| {
            s.state = "online".into();
            s.pid = pid;
            s.started_at_ms = started_at_ms;
        });
    }

    /// The broker is `restarting` or `stopped`.
    pub fn broker_state(&self, state: &str) {
        self.set_broker(|s| {
            s.state = state.to_owned();
            s.pid = 0;
            s.started_at_ms = 0;
            s.rss_bytes = 0;
        });
    }

    /// Counts one broker restart.
    pub fn broker_restarted(&self) {
        self.set_broker(|s| s.restarts += 1);
    }

    fn broker_row(&self) -> Option<InstanceStatus> {
        let mut row = self
            .broker_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        if row.pid > 0 {
            row.uptime_ms = proto::now_ms().saturating_sub(row.started_at_ms);
            row.rss_bytes = proc::rss_of(row.pid);
        }
        Some(row)
    }

    /// The log folder.
    pub fn log_dir(&self) -> &std::path::Path {
        &self.log_dir
    }

    /// Instances matching `name`: an app's instances, or one instance.
    pub fn find(&self, name: &str) -> Vec<Arc<Managed>> {
        self.managed
            .iter()
            .filter(|m| m.app.spec.name == name || m.instance == name)
            .cloned()
            .collect()
    }

    /// Starts one keeper per instance on the current runtime.
    pub fn spawn_keepers(self: &Arc<Self>, bus: &Handle, shutdown: &CancellationToken) {
        for m in &self.managed {
            let rx = m.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(rx) = rx {
                tokio::spawn(
                    Keeper::new(self.clone(), m.clone(), bus.clone()).run(rx, shutdown.clone()),
                );
            }
        }
    }

    /// Starts every app in dependency order: an app starts once every instance of
    /// what it depends on is ready.
    pub async fn start_all(&self) {
        for app in &self.eco.apps {
            let instances = self.find(&app.spec.name);
            let results =
                futures::future::join_all(instances.iter().map(|m| m.order(Cmd::Start))).await;
            for (m, r) in instances.iter().zip(results) {
                if let Err(e) = r {
                    tracing::error!(instance = %m.instance, error = %e, "did not start");
                }
            }
        }
    }

    /// Stops every app in reverse dependency order, each gracefully.
    pub async fn stop_all(&self) {
        for app in self.eco.apps.iter().rev() {
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
            let ok = bus
                .call(proto::BROKER_SERVICE, "$echo", Vec::new(), options)
                .await
                .is_ok();
            self.broker_ok.store(ok, Ordering::Relaxed);
            if !self.no_spawn {
                self.write_status_file(ok);
                let (pid, uptime_ms) = self.broker_row().map_or((0, 0), |b| (b.pid, b.uptime_ms));
                misses = if ok || pid == 0 || uptime_ms < grace_ms {
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

    /// `run_dir/status.json`: what `ls` would say of the managed instances and
    /// the broker, rewritten (atomically) every heartbeat, so that `sbctl ls`
    /// answers while the broker (and with it the bus) is down.
    fn write_status_file(&self, broker_ok: bool) {
        let mut instances: Vec<InstanceStatus> = self.broker_row().into_iter().collect();
        instances.extend(self.managed.iter().map(|m| m.status()));
        let file = StatusFile {
            written_at_ms: proto::now_ms(),
            broker_ok,
            instances,
            broker_endpoint: self
                .broker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        };
        let dir = self.log_dir.parent().unwrap_or(&self.log_dir);
        let path = dir.join(STATUS_FILE);
        let tmp = dir.join(format!("{STATUS_FILE}.tmp"));
        let written = serde_json::to_vec(&file)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::debug!(error = %e, path = %path.display(), "status file not written");
        }
    }

    /// Every instance: the managed ones, and those on the bus that this supervisor
    /// did not start (`unmanaged`).
    pub async fn ls(&self, bus: &Handle) -> Vec<InstanceStatus> {
        let mut out: Vec<InstanceStatus> = self.broker_row().into_iter().collect();
        out.extend(self.managed.iter().map(|m| m.status()));
        let reply = bus
            .call(
                proto::BROKER_SERVICE,
                "ls",
                Vec::new(),
                CallOptions::default(),
            )
            .await;
        let on_bus: Vec<InstanceInfo> = reply
            .ok()
            .and_then(|r| proto::from_body(&r.body).ok())
            .unwrap_or_default();
        for info in on_bus {
            if info.service.is_empty() || info.service == "main" {
                continue;
            }
            if let Some(s) = out
                .iter_mut()
                .find(|s| s.instance == info.instance && s.pid == info.pid)
            {
                s.inflight = u64::from(info.inflight);
                continue;
            }
            {
                out.push(InstanceStatus {
                    app: info.service,
                    instance: info.instance,
                    state: "unmanaged".into(),
                    pid: info.pid,
                    started_at_ms: proto::now_ms().saturating_sub(info.age_ms),
                    uptime_ms: info.age_ms,
                    inflight: u64::from(info.inflight),
                    handled: info.handled,
                    ..InstanceStatus::default()
                });
            }
        }
        out
    }
}

// === Keeper ===

// One Phase lives per keeper; boxing the process would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Phase {
    Idle,
    Running(Proc),
    Waiting(tokio::time::Instant),
}

struct Keeper {
    sup: Arc<Supervisor>,
    m: Arc<Managed>,
    bus: Handle,
    unstable: u32,
    misses: u32,
    bin_mtime: Option<SystemTime>,
}

impl Keeper {
    fn new(sup: Arc<Supervisor>, m: Arc<Managed>, bus: Handle) -> Self {
        let bin_mtime = mtime(&m.app.bin);
        Self {
            sup,
            m,
            bus,
            unstable: 0,
            misses: 0,
            bin_mtime,
        }
    }

    fn spec(&self) -> &crate::ecosystem::AppSpec {
        &self.m.app.spec
    }

    async fn run(mut self, mut rx: mpsc::Receiver<(Cmd, Reply)>, shutdown: CancellationToken) {
        let adopted = self
            .m
            .adopt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut phase = match adopted {
            // Running already (a previous main started it): health checks resume.
            Some((pid, started_ms, restarts)) => {
                tracing::info!(instance = %self.m.instance, pid, "adopted a running process");
                self.m.set(|s| {
                    s.state = "online".into();
                    s.pid = pid;
                    s.started_at_ms = started_ms;
                    s.restarts = restarts;
                });
                Phase::Running(Proc::adopt(pid, started_ms))
            }
            None => Phase::Idle,
        };
        let mut tick = tokio::time::interval(Duration::from_millis(
            self.sup.eco.main.heartbeat_ms.max(10),
        ));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            phase = match phase {
                Phase::Idle => tokio::select! {
                    () = shutdown.cancelled() => return,
                    cmd = rx.recv() => match cmd {
                        None => return,
                        Some((Cmd::Stop, reply)) => {
                            let _ = reply.send(Ok(()));
                            Phase::Idle
                        }
                        Some((_, reply)) => {
                            self.unstable = 0;
                            self.start_now(Some(reply)).await
                        }
                    },
                },
                Phase::Waiting(until) => tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(until) => {
                        self.m.set(|s| s.restarts += 1);
                        self.start_now(None).await
                    }
                    cmd = rx.recv() => match cmd {
                        None => return,
                        Some((Cmd::Stop, reply)) => {
                            self.m.set_state("stopped");
                            let _ = reply.send(Ok(()));
                            Phase::Idle
                        }
                        Some((_, reply)) => {
                            self.unstable = 0;
                            self.start_now(Some(reply)).await
                        }
                    },
                },
                // Biased, exit first: a failing health check holds the loop for a
                // heartbeat, after which the next tick is due at once; a random
                // pick would then often take the tick over an exit already
                // there, and a dead process would be "hung" 3 checks later.
                Phase::Running(mut p) => tokio::select! {
                    biased;
                    () = shutdown.cancelled() => {
                        p.stop(Duration::from_millis(self.spec().kill_timeout_ms)).await;
                        return;
                    }
                    code = p.wait() => {
                        tracing::warn!(instance = %self.m.instance, pid = p.pid, status = %code, uptime_ms = p.started.elapsed().as_millis() as u64, "process exited");
                        self.after_exit(p.started.elapsed())
                    }
                    cmd = rx.recv() => match cmd {
                        None => return,
                        Some((cmd, reply)) => self.on_command(p, cmd, reply).await,
                    },
                    _ = tick.tick() => self.check(p).await,
                },
            };
        }
    }

    /// Spawns and waits for readiness; on failure, applies the restart policy.
    async fn start_now(&mut self, reply: Option<Reply>) -> Phase {
        match self.start(false).await {
            Ok(p) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
                Phase::Running(p)
            }
            Err(e) => {
                tracing::warn!(instance = %self.m.instance, error = %e, "start failed");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(e));
                }
                self.after_exit(Duration::ZERO)
            }
        }
    }

    /// The restart policy after an exit (or a failed start) of a process that ran
    /// for `uptime`.
    fn after_exit(&mut self, uptime: Duration) -> Phase {
        let spec = self.m.app.spec.clone();
        if !spec.autorestart {
            self.m.set_state("stopped");
            return Phase::Idle;
        }
        if uptime < Duration::from_millis(spec.min_uptime_ms) {
            self.unstable += 1;
        } else {
            self.unstable = 0;
        }
        if self.unstable > spec.max_restarts {
            tracing::error!(instance = %self.m.instance, restarts = spec.max_restarts, "crash loop: errored after max_restarts unstable restarts");
            self.m.set_state("errored");
            return Phase::Idle;
        }
        let delay = if spec.exp_backoff_restart_delay_ms > 0 {
            let exp = self.unstable.saturating_sub(1).min(20);
            spec.exp_backoff_restart_delay_ms
                .saturating_mul(1 << exp)
                .min(MAX_BACKOFF_MS)
        } else {
            spec.restart_delay_ms
        };
        self.m.set_state("waiting");
        Phase::Waiting(tokio::time::Instant::now() + Duration::from_millis(delay))
    }

    async fn on_command(&mut self, mut p: Proc, cmd: Cmd, reply: Reply) -> Phase {
        let kill_timeout = Duration::from_millis(self.spec().kill_timeout_ms);
        match cmd {
            Cmd::Start => {
                let _ = reply.send(Ok(()));
                Phase::Running(p)
            }
            Cmd::Stop => {
                self.m.set_state("stopping");
                p.stop(kill_timeout).await;
                self.m.set_state("stopped");
                let _ = reply.send(Ok(()));
                Phase::Idle
            }
            Cmd::Restart => {
                self.m.set_state("stopping");
                p.stop(kill_timeout).await;
                self.m.set(|s| s.restarts += 1);
                self.unstable = 0;
                self.start_now(Some(reply)).await
            }
            Cmd::Reload => match self.replace(&mut p).await {
                Ok(new) => {
                    let _ = reply.send(Ok(()));
                    Phase::Running(new)
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                    Phase::Running(p)
                }
            },
        }
    }

    /// One heartbeat: health over the bus, memory, CPU, the binary on disk.
    async fn check(&mut self, mut p: Proc) -> Phase {
        let rss = p.rss();
        let cpu = p.cpu_percent();
        self.m.set(|s| {
            s.rss_bytes = rss;
            s.cpu_percent = (cpu * 10.0).round() / 10.0;
        });
        if self.spec().wait_ready {
            let every = self.sup.eco.main.heartbeat_ms;
            let options = CallOptions {
                instance: Some(self.m.instance.clone()),
                timeout: Some(Duration::from_millis(every.max(20))),
                ..CallOptions::default()
            };
            match self
                .bus
                .call(&self.spec().name, "$health", Vec::new(), options)
                .await
            {
                Ok(reply) => {
                    // It answered: alive. A status other than ok is a dependency
                    // it reports down (db_down): degraded, never killed for it.
                    self.misses = 0;
                    if let Ok(h) = proto::from_body::<Health>(&reply.body) {
                        if h.pid == p.pid {
                            let degraded = h.status != "ok" && h.status != "draining";
                            self.m.set(|s| {
                                s.inflight = h.inflight;
                                s.handled = h.handled;
                                s.health = if degraded {
                                    h.status.clone()
                                } else {
                                    String::new()
                                };
                            });
                            self.m
                                .set_state(if degraded { "degraded" } else { "online" });
                        }
                    }
                }
                Err(_) if p.exited().is_some() => {
                    // No answer because it is gone: an exit, not a hang.
                    let code = p.exited().unwrap_or_default();
                    tracing::warn!(instance = %self.m.instance, pid = p.pid, status = %code, "process exited");
                    return self.after_exit(p.started.elapsed());
                }
                Err(e) if self.sup.broker_ok.load(Ordering::Relaxed) => {
                    self.misses += 1;
                    tracing::debug!(instance = %self.m.instance, misses = self.misses, error = %e, "health check failed");
                    if self.misses >= self.sup.eco.main.liveness {
                        tracing::warn!(instance = %self.m.instance, pid = p.pid, state = %p.state(), misses = self.misses, "hung: no health answer while the process lives; killing it");
                        self.misses = 0;
                        p.kill().await;
                        return self.after_exit(Duration::ZERO);
                    }
                }
                Err(_) => {}
            }
        }
        if let Some(max) = self.m.app.max_memory {
            if rss > max {
                tracing::warn!(instance = %self.m.instance, rss, max, "over max_memory_restart: replacing gracefully");
                return self.replace_or_keep(p).await;
            }
        }
        if self.spec().watch {
            let now = mtime(&self.m.app.bin);
            if now.is_some() && now != self.bin_mtime {
                self.bin_mtime = now;
                tracing::info!(instance = %self.m.instance, "binary changed: reloading");
                return self.replace_or_keep(p).await;
            }
        }
        Phase::Running(p)
    }

    async fn replace_or_keep(&mut self, mut p: Proc) -> Phase {
        match self.replace(&mut p).await {
            Ok(new) => Phase::Running(new),
            Err(e) => {
                tracing::warn!(instance = %self.m.instance, error = %e, "replacement failed; keeping the running process");
                Phase::Running(p)
            }
        }
    }

    /// Zero-downtime replacement: the new process registers as the old one's
    /// successor (the broker drains the old one), then the old one is stopped
    /// (it finishes its in-flight requests first).
    async fn replace(&mut self, old: &mut Proc) -> Result<Proc, String> {
        let new = self.start(true).await?;
        tracing::info!(instance = %self.m.instance, old = old.pid, new = new.pid, "successor ready; stopping the old process");
        old.stop(Duration::from_millis(self.spec().kill_timeout_ms))
            .await;
        self.m.set(|s| s.restarts += 1);
        Ok(new)
    }

    /// Spawns a process and waits until it is ready on the bus (`wait_ready`).
    async fn start(&mut self, successor: bool) -> Result<Proc, String> {
        let spec = self.spec().clone();
        let mut env: Vec<(String, String)> = spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let broker = self
            .sup
            .broker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        env.push(("SB_BROKER".into(), broker));
        env.push(("SB_INSTANCE".into(), self.m.instance.clone()));
        if let Some(var) = &spec.instance_var {
            env.push((var.clone(), self.m.instance.clone()));
        }
        env.push((
            "SB_SUCCESSOR".into(),
            if successor { "1" } else { "0" }.into(),
        ));
        if !successor {
            self.m.set_state("starting");
        }
        let mut p = proc::spawn(&self.m.app.bin, &spec.args, &env, self.m.log.clone())
            .map_err(|e| format!("cannot spawn {}: {e}", self.m.app.bin.display()))?;
        tracing::info!(instance = %self.m.instance, pid = p.pid, successor, "spawned");
        let ready = self.wait_ready(&mut p, &spec).await;
        if let Err(e) = ready {
            p.stop(Duration::from_millis(500)).await;
            if !successor {
                self.m.set_state("stopped");
            }
            return Err(e);
        }
        self.misses = 0;
        let pid = p.pid;
        let started = p.started_ms;
        self.m.set(|s| {
            s.state = "online".into();
            s.pid = pid;
            s.started_at_ms = started;
            s.inflight = 0;
            s.handled = 0;
        });
        tracing::info!(instance = %self.m.instance, pid, "online");
        Ok(p)
    }

    async fn wait_ready(
        &self,
        p: &mut Proc,
        spec: &crate::ecosystem::AppSpec,
    ) -> Result<(), String> {
        let until = tokio::time::Instant::now() + Duration::from_millis(spec.ready_timeout_ms);
        if !spec.wait_ready {
            // Only the process has to exist; give it a moment to fail fast.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return match p.exited() {
                Some(status) => Err(format!("exited at once: {status}")),
                None => Ok(()),
            };
        }
        loop {
            if let Some(status) = p.exited() {
                return Err(format!("exited before it was ready: {status}"));
            }
            let reply = self
                .bus
                .call(
                    proto::BROKER_SERVICE,
                    "ls",
                    Vec::new(),
                    CallOptions::default(),
                )
                .await;
            if let Ok(list) = reply.and_then(|r| {
                proto::from_body::<Vec<InstanceInfo>>(&r.body)
                    .map_err(|e| switchboard_bus::Error::internal(e.to_string()))
            }) {
                if list
                    .iter()
                    .any(|i| i.instance == self.m.instance && i.pid == p.pid && i.state == "ready")
                {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= until {
                return Err(format!(
                    "not ready on the bus within {} ms",
                    spec.ready_timeout_ms
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
