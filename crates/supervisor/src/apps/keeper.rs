//! A keeper: one task per instance, its state machine (idle, running, waiting), health checks, restarts, replacement.

use super::*;

// One Phase lives per keeper; boxing the process would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Phase {
    Idle,
    Running(Proc),
    Waiting(tokio::time::Instant),
}

pub(super) struct Keeper {
    sup: Arc<Supervisor>,
    m: Arc<Managed>,
    bus: Handle,
    unstable: u32,
    misses: u32,
    bin_mtime: Option<SystemTime>,
}

impl Keeper {
    pub(super) fn new(sup: Arc<Supervisor>, m: Arc<Managed>, bus: Handle) -> Self {
        let bin_mtime = mtime(m.app().watched());
        Self {
            sup,
            m,
            bus,
            unstable: 0,
            misses: 0,
            bin_mtime,
        }
    }

    pub(super) fn spec(&self) -> crate::ecosystem::AppSpec {
        self.m.app().spec
    }

    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<(Cmd, Reply)>,
        shutdown: CancellationToken,
    ) {
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
                    s.state = InstanceState::Online;
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
                            self.m.set_state(InstanceState::Stopped);
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
                        self.sup.note(&self.m.instance, format!("exited ({code}) after {} s", p.started.elapsed().as_secs()));
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
    pub(super) async fn start_now(&mut self, reply: Option<Reply>) -> Phase {
        match self.start(false).await {
            Ok(p) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
                Phase::Running(p)
            }
            Err(e) => {
                tracing::warn!(instance = %self.m.instance, error = %e, "start failed");
                self.sup
                    .note(&self.m.instance, format!("did not start: {e}"));
                if let Some(reply) = reply {
                    let _ = reply.send(Err(e));
                }
                self.after_exit(Duration::ZERO)
            }
        }
    }

    /// The restart policy after an exit (or a failed start) of a process that ran
    /// for `uptime`.
    pub(super) fn after_exit(&mut self, uptime: Duration) -> Phase {
        let spec = self.m.app().spec;
        if !spec.autorestart {
            self.m.set_state(InstanceState::Stopped);
            return Phase::Idle;
        }
        if uptime < Duration::from_millis(spec.min_uptime_ms) {
            self.unstable += 1;
        } else {
            self.unstable = 0;
        }
        if self.unstable > spec.max_restarts {
            tracing::error!(instance = %self.m.instance, restarts = spec.max_restarts, "crash loop: errored after max_restarts unstable restarts");
            self.sup.note(
                &self.m.instance,
                format!(
                    "errored: crash loop ({} unstable restarts)",
                    spec.max_restarts
                ),
            );
            self.m.set_state(InstanceState::Errored);
            return Phase::Idle;
        }
        let delay = if spec.exp_backoff_restart_delay_ms > 0 {
            let first = Duration::from_millis(spec.exp_backoff_restart_delay_ms);
            let policy = Backoff::new(first, MAX_RESTART_BACKOFF);
            policy.delay(self.unstable.saturating_sub(1)).as_millis() as u64
        } else {
            spec.restart_delay_ms
        };
        self.m.set_state(InstanceState::Waiting);
        Phase::Waiting(tokio::time::Instant::now() + Duration::from_millis(delay))
    }

    pub(super) async fn on_command(&mut self, mut p: Proc, cmd: Cmd, reply: Reply) -> Phase {
        let kill_timeout = Duration::from_millis(self.spec().kill_timeout_ms);
        match cmd {
            Cmd::Start => {
                let _ = reply.send(Ok(()));
                Phase::Running(p)
            }
            Cmd::Stop => {
                self.m.set_state(InstanceState::Stopping);
                p.stop(kill_timeout).await;
                self.m.set_state(InstanceState::Stopped);
                let _ = reply.send(Ok(()));
                Phase::Idle
            }
            Cmd::Restart => {
                self.m.set_state(InstanceState::Stopping);
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
    pub(super) async fn check(&mut self, mut p: Proc) -> Phase {
        let rss = p.rss();
        let cpu = p.cpu_percent();
        self.m.set(|s| {
            s.rss_bytes = rss;
            s.cpu_percent = (cpu * 10.0).round() / 10.0;
        });
        if self.spec().wait_ready {
            if p.service.is_none() {
                // Adopted from a previous main: ask the broker what it registered as.
                if let Some(list) = broker_ls(&self.bus).await {
                    p.service = list
                        .iter()
                        .find(|i| i.instance == self.m.instance && i.pid == p.pid)
                        .map(|i| i.service.clone());
                }
            }
            let every = self.sup.eco.main.heartbeat_ms;
            let options = CallOptions {
                instance: Some(self.m.instance.clone()),
                timeout: Some(Duration::from_millis(every.max(20))),
                ..CallOptions::default()
            };
            match self
                .bus
                .call(
                    p.service.as_deref().unwrap_or(&self.spec().name),
                    "$health",
                    Vec::new(),
                    options,
                )
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
                            self.m.set_state(if degraded {
                                InstanceState::Degraded
                            } else {
                                InstanceState::Online
                            });
                        }
                    }
                }
                Err(_) if p.exited().is_some() => {
                    // No answer because it is gone: an exit, not a hang.
                    let code = p.exited().unwrap_or_default();
                    tracing::warn!(instance = %self.m.instance, pid = p.pid, status = %code, "process exited");
                    self.sup.note(&self.m.instance, format!("exited ({code})"));
                    return self.after_exit(p.started.elapsed());
                }
                Err(e) if self.sup.broker_ok.load(Ordering::Relaxed) => {
                    self.misses += 1;
                    tracing::debug!(instance = %self.m.instance, misses = self.misses, error = %e, "health check failed");
                    if self.misses >= self.sup.eco.main.liveness {
                        tracing::warn!(instance = %self.m.instance, pid = p.pid, state = %p.state(), misses = self.misses, "hung: no health answer while the process lives; killing it");
                        self.sup.note(
                            &self.m.instance,
                            format!("hung ({} checks unanswered): killed", self.misses),
                        );
                        self.misses = 0;
                        p.kill().await;
                        return self.after_exit(Duration::ZERO);
                    }
                }
                Err(_) => {}
            }
        }
        if let Some(max) = self.m.app().max_memory {
            if rss > max {
                tracing::warn!(instance = %self.m.instance, rss, max, "over max_memory_restart: replacing gracefully");
                self.sup.note(
                    &self.m.instance,
                    format!("over max_memory_restart ({} MiB): replaced", rss >> 20),
                );
                return self.replace_or_keep(p).await;
            }
        }
        if self.spec().watch {
            let now = mtime(self.m.app().watched());
            if now.is_some() && now != self.bin_mtime {
                self.bin_mtime = now;
                tracing::info!(instance = %self.m.instance, "binary changed: reloading");
                return self.replace_or_keep(p).await;
            }
        }
        Phase::Running(p)
    }

    pub(super) async fn replace_or_keep(&mut self, mut p: Proc) -> Phase {
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
    pub(super) async fn replace(&mut self, old: &mut Proc) -> Result<Proc, String> {
        let new = self.start(true).await?;
        tracing::info!(instance = %self.m.instance, old = old.pid, new = new.pid, "successor ready; stopping the old process");
        old.stop(Duration::from_millis(self.spec().kill_timeout_ms))
            .await;
        self.m.set(|s| s.restarts += 1);
        Ok(new)
    }

    /// Spawns a process and waits until it is ready on the bus (`wait_ready`).
    pub(super) async fn start(&mut self, successor: bool) -> Result<Proc, String> {
        let spec = self.spec().clone();
        // Only its own: a safe base and what its `pass_env` names from main's
        // environment, its `env`, and the SB_ variables below; never the
        // rest of main's environment (another app's DATABASE_URL, say).
        let mut env = proc::base_env(&spec.pass_env);
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let broker = self
            .sup
            .broker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        env.push(("SB_BROKER".into(), broker));
        env.push(("SB_INSTANCE".into(), self.m.instance.clone()));
        // The app's name is its service on the bus: said outright, so that a
        // process need not guess it from its instance name (the PM2 layer's
        // `shout2` is not an instance of `shout`). The app's own env may name
        // another.
        if !spec.env.contains_key("SB_SERVICE") {
            env.push(("SB_SERVICE".into(), spec.name.clone()));
        }
        if let Some(secret) = &self.sup.secret {
            env.push(("SB_SECRET".into(), secret.clone()));
        }
        if let Some(var) = &spec.instance_var {
            env.push((var.clone(), self.m.instance.clone()));
        }
        env.push((
            "SB_SUCCESSOR".into(),
            if successor { "1" } else { "0" }.into(),
        ));
        if !successor {
            self.m.set_state(InstanceState::Starting);
        }
        let log_from = std::fs::metadata(self.m.log.path()).map_or(0, |m| m.len());
        let app = self.m.app();
        let mut p = proc::spawn(
            &app.bin,
            &app.argv,
            app.cwd.as_deref(),
            &env,
            self.m.log.clone(),
        )
        .map_err(|e| format!("cannot spawn {}: {e}", app.bin.display()))?;
        tracing::info!(instance = %self.m.instance, pid = p.pid, successor, "spawned");
        let ready = self.wait_ready(&mut p, &spec).await;
        if let Err(e) = ready {
            p.stop(Duration::from_millis(500)).await;
            if !successor {
                self.m.set_state(InstanceState::Stopped);
            }
            // Why, in the app's own words: the last lines it wrote.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Err(match crate::logs::last_words(self.m.log.path(), log_from) {
                Some(words) => format!("{e}: {words}"),
                None => e,
            });
        }
        self.misses = 0;
        let pid = p.pid;
        let started = p.started_ms;
        self.m.set(|s| {
            s.state = InstanceState::Online;
            s.pid = pid;
            s.started_at_ms = started;
            s.inflight = 0;
            s.handled = 0;
        });
        tracing::info!(instance = %self.m.instance, pid, "online");
        Ok(p)
    }

    pub(super) async fn wait_ready(
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
            if let Some(list) = broker_ls(&self.bus).await {
                if let Some(info) = list.iter().find(|i| {
                    i.instance == self.m.instance
                        && i.pid == p.pid
                        && i.state == proto::PeerState::Ready
                }) {
                    let service = info.service.clone();
                    self.m.set(|s| {
                        s.service = if service == spec.name {
                            String::new()
                        } else {
                            service.clone()
                        };
                    });
                    p.service = Some(service);
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

pub(super) fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
