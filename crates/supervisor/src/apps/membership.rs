//! Changing which instances run while main runs: `scale` an app, and
//! `reload-config` (re-read `ecosystem.toml` and apply the difference).
//!
//! New instances are started (and ready) before old ones are retired, so an app
//! that keeps running never has a gap; an instance whose app's configuration
//! changed is reloaded (successor first, then the old process drains), one at a
//! time.

use super::*;
use crate::ecosystem::{self, instance_names};
use switchboard_bus::proto::admin::ConfigChange;
use switchboard_bus::proto::ErrorCode;
use switchboard_bus::Error;

/// Instances that did not start: `unavailable`, naming them and why.
fn not_started(why: String) -> Error {
    Error::new(ErrorCode::Unavailable, why)
}

impl Supervisor {
    /// Remembers where the ecosystem came from, for `reload-config`.
    pub fn set_source(&self, path: PathBuf, profile: Option<String>) {
        *self.source.lock().unwrap_or_else(|p| p.into_inner()) = Some((path, profile));
    }

    /// Runs `instances` instances of app `name`.
    ///
    /// # Errors
    ///
    /// An unknown app, a count outside 1 to 99, or instances that did not start.
    pub async fn scale(self: &Arc<Self>, name: &str, instances: u32) -> Result<(), Error> {
        if !(1..=99).contains(&instances) {
            return Err(Error::bad_request(format!(
                "instances must be 1 to 99, not {instances}"
            )));
        }
        let Some(mut app) = self.apps().into_iter().find(|a| a.spec.name == name) else {
            return Err(Error::bad_request(format!("no app {name:?}")));
        };
        app.spec.instances = instances;
        app.instances = instance_names(&app.spec, self.eco.main.host.as_deref());
        self.apply_app(app, false).await.map_err(not_started)
    }

    /// Makes app `app.spec.name` run as `app` says: starts the instances it names
    /// that do not run, retires those it no longer names; with `reload`, the
    /// instances kept are reloaded one at a time onto the new configuration.
    async fn apply_app(self: &Arc<Self>, app: App, reload: bool) -> Result<(), String> {
        let current = self.find(&app.spec.name);
        let kept: Vec<Arc<Managed>> = current
            .iter()
            .filter(|m| app.instances.contains(&m.instance))
            .cloned()
            .collect();
        let retired: Vec<Arc<Managed>> = current
            .iter()
            .filter(|m| !app.instances.contains(&m.instance))
            .cloned()
            .collect();
        let new_names: Vec<String> = app
            .instances
            .iter()
            .filter(|n| !current.iter().any(|m| &m.instance == *n))
            .cloned()
            .collect();
        for m in &kept {
            *m.app.lock().unwrap_or_else(|p| p.into_inner()) = app.clone();
        }
        self.set_app(&app);
        let started = self.add_instances(&app, &new_names).await;
        self.retire(retired).await;
        started?;
        if reload {
            for m in &kept {
                m.order(Cmd::Reload)
                    .await
                    .map_err(|e| format!("{}: {e}", m.instance))?;
            }
        }
        Ok(())
    }

    /// Puts `app` in the app list (replacing the app of that name, or at the end).
    fn set_app(&self, app: &App) {
        let mut apps = self.apps.write().unwrap_or_else(|p| p.into_inner());
        match apps.iter_mut().find(|a| a.spec.name == app.spec.name) {
            Some(a) => *a = app.clone(),
            None => apps.push(app.clone()),
        }
    }

    /// Creates, spawns the keepers of, and starts the instances `names` of `app`
    /// (after the app's other instances in start order); waits for each to start.
    async fn add_instances(self: &Arc<Self>, app: &App, names: &[String]) -> Result<(), String> {
        let previous = None;
        let mut added = Vec::new();
        for name in names {
            let m = Managed::new(app, name, &self.eco.main, &self.log_dir, previous)
                .map_err(|e| format!("{name}: {e:#}"))?;
            {
                let mut managed = self.managed.write().unwrap_or_else(|p| p.into_inner());
                let at = managed
                    .iter()
                    .rposition(|o| o.app().spec.name == app.spec.name)
                    .map_or(managed.len(), |i| i + 1);
                managed.insert(at, m.clone());
            }
            self.spawn_keeper(&m);
            added.push(m);
        }
        let results = futures::future::join_all(added.iter().map(|m| m.order(Cmd::Start))).await;
        let failures: Vec<String> = added
            .iter()
            .zip(results)
            .filter_map(|(m, r)| r.err().map(|e| format!("{}: {e}", m.instance)))
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }

    /// Stops `instances` gracefully (each within its kill timeout) and drops them.
    async fn retire(&self, instances: Vec<Arc<Managed>>) {
        let stops = instances.iter().map(|m| async move {
            m.set_state(InstanceState::Stopping);
            let keeper = m.keeper.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some((token, task)) = keeper {
                token.cancel();
                let bound =
                    Duration::from_millis(m.app().spec.kill_timeout_ms) + Duration::from_secs(5);
                if tokio::time::timeout(bound, task).await.is_err() {
                    tracing::warn!(instance = %m.instance, "keeper did not end in time");
                }
            }
            tracing::info!(instance = %m.instance, "retired");
        });
        futures::future::join_all(stops).await;
        self.managed
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|m| !instances.iter().any(|r| Arc::ptr_eq(r, m)));
    }

    /// Re-reads the ecosystem file main started from and applies the difference:
    /// new apps started (in dependency order), removed apps stopped, changed apps
    /// scaled and reloaded. `[main]` and `[broker]` changes are reported, not
    /// applied (they need main restarted).
    ///
    /// # Errors
    ///
    /// A file that does not load (nothing is applied), or apps that did not start.
    pub async fn reload_config(self: &Arc<Self>) -> Result<ConfigChange, Error> {
        let source = self
            .source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some((path, profile)) = source else {
            return Err(Error::bad_request(
                "main was started without an ecosystem file",
            ));
        };
        let new = ecosystem::load(&path, profile.as_deref())
            .map_err(|e| Error::bad_request(format!("{}: {e}; nothing changed", path.display())))?;
        let old = self.apps();
        let mut change = ConfigChange::default();
        if new.main != self.eco.main {
            change.needs_restart.push("[main]".into());
        }
        if new.broker != self.eco.broker {
            change.needs_restart.push("[broker]".into());
        }
        let mut failures = Vec::new();
        // Removed apps: their dependents go first (reverse start order).
        for app in old.iter().rev() {
            if !new.apps.iter().any(|a| a.spec.name == app.spec.name) {
                self.retire(self.find(&app.spec.name)).await;
                self.apps
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|a| a.spec.name != app.spec.name);
                change.removed.push(app.spec.name.clone());
            }
        }
        // New and changed apps, dependencies first.
        for app in &new.apps {
            match old.iter().find(|a| a.spec.name == app.spec.name) {
                Some(was) if was == app => change.unchanged.push(app.spec.name.clone()),
                Some(was) => {
                    let mut same_but_count = was.clone();
                    same_but_count.spec.instances = app.spec.instances;
                    same_but_count.instances = app.instances.clone();
                    let reload = same_but_count != *app;
                    if let Err(e) = self.apply_app(app.clone(), reload).await {
                        failures.push(e);
                    }
                    change.changed.push(app.spec.name.clone());
                }
                None => {
                    if let Err(e) = self.apply_app(app.clone(), false).await {
                        failures.push(e);
                    }
                    change.added.push(app.spec.name.clone());
                }
            }
        }
        // The app list in the new start order.
        {
            let mut apps = self.apps.write().unwrap_or_else(|p| p.into_inner());
            apps.sort_by_key(|a| new.apps.iter().position(|n| n.spec.name == a.spec.name));
        }
        tracing::info!(?change, "ecosystem reloaded");
        if failures.is_empty() {
            Ok(change)
        } else {
            Err(not_started(failures.join("; ")))
        }
    }
}
