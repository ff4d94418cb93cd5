//! What main reports: the broker's row, recent events, readiness, `ls` (the
//! managed instances and those on the bus it did not start), and the status file
//! written every heartbeat.

use super::*;

impl Supervisor {
    pub(super) fn set_broker(&self, f: impl FnOnce(&mut InstanceStatus)) {
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
            s.state = InstanceState::Online;
            s.pid = pid;
            s.started_at_ms = started_at_ms;
        });
    }

    /// The broker is `restarting` or `stopped`.
    pub fn broker_state(&self, state: InstanceState) {
        self.set_broker(|s| {
            s.state = state;
            s.pid = 0;
            s.started_at_ms = 0;
            s.rss_bytes = 0;
        });
    }

    /// Counts one broker restart.
    pub fn broker_restarted(&self) {
        self.set_broker(|s| s.restarts += 1);
    }

    pub(super) fn broker_row(&self) -> Option<InstanceStatus> {
        let mut row = self
            .broker_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        if row.pid > 0 {
            row.uptime_ms = proto::now_ms().saturating_sub(row.started_at_ms);
            row.rss_bytes = switchboard_bus::svc::procinfo::rss_of(row.pid);
        }
        Some(row)
    }

    /// Remembers that `what` happened to `instance` (for the dashboard).
    pub fn note(&self, instance: &str, what: String) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() >= EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(proto::admin::SupervisorEvent {
            at_ms: proto::now_ms(),
            instance: instance.to_owned(),
            what,
        });
    }

    /// The recent events, newest first.
    pub fn events(&self) -> Vec<proto::admin::SupervisorEvent> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.iter().rev().cloned().collect()
    }

    /// Whether the broker answered main's last check.
    pub fn broker_answers(&self) -> bool {
        self.broker_ok.load(Ordering::Relaxed)
    }

    /// The managed instances that are not online (or degraded) now; empty when
    /// the system is ready.
    pub fn not_ready(&self) -> Vec<String> {
        self.managed()
            .iter()
            // An app that does not start with the system is not waited for
            // while it is stopped.
            .filter(|m| m.app().spec.autostart || m.status().state != InstanceState::Stopped)
            .map(|m| m.status())
            .filter(|s| !matches!(s.state, InstanceState::Online | InstanceState::Degraded))
            .map(|s| format!("{} ({})", s.instance, s.state))
            .collect()
    }

    /// `run_dir/status.json`: what `ls` would say of the managed instances and
    /// the broker, rewritten (atomically) every heartbeat, so that `sbctl ls`
    /// answers while the broker (and with it the bus) is down.
    pub(super) fn write_status_file(&self, broker_ok: bool) {
        let mut instances: Vec<InstanceStatus> = self.broker_row().into_iter().collect();
        instances.extend(self.managed().iter().map(|m| m.status()));
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
}

/// The broker's list of registered instances (`$broker ls`); `None` when it does
/// not answer.
pub(crate) async fn broker_ls(bus: &Handle) -> Option<Vec<InstanceInfo>> {
    bus.broker("ls", Vec::new(), CallOptions::default())
        .await
        .ok()
}

impl Supervisor {
    /// Every instance: the managed ones, and those on the bus that this supervisor
    /// did not start (`unmanaged`).
    pub async fn ls(&self, bus: &Handle) -> Vec<InstanceStatus> {
        let mut out: Vec<InstanceStatus> = self.broker_row().into_iter().collect();
        out.extend(self.managed().iter().map(|m| m.status()));
        let on_bus = broker_ls(bus).await.unwrap_or_default();
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
                    state: InstanceState::Unmanaged,
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
