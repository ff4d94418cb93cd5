//! A loc instance's zones: positions in memory, what is still to be saved, the
//! checks on what clients send, loading a zone's saved positions, and sessions
//! ending.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use switchboard_bus::proto::{self, api};
use switchboard_bus::{CallOptions, Error, Handle, Request};

use crate::Settings;

#[derive(Debug, Clone)]
pub(crate) struct Pos {
    pub(crate) x: f64,
    pub(crate) y: f64,
    pub(crate) ts: u64,
    pub(crate) session: String,
}

#[derive(Default)]
pub(crate) struct Zone {
    pub(crate) users: HashMap<String, Pos>,
    pub(crate) loaded: bool,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) zones: HashMap<String, Zone>,
    /// Positions to save: (zone, user) → latest.
    pub(crate) dirty: HashMap<(String, String), api::Position>,
    /// Users that left, to delete.
    pub(crate) gone: HashSet<(String, String)>,
}

pub(crate) struct Loc {
    pub(crate) settings: Settings,
    pub(crate) zones: HashSet<String>,
    pub(crate) state: Mutex<State>,
}

// === impl Loc ===

impl Loc {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn check_zone(&self, zone: &str) -> Result<(), Error> {
        if self.zones.contains(zone) {
            Ok(())
        } else {
            Err(Error::bad_request(format!("unknown zone {zone:?}")))
        }
    }

    pub(crate) fn check_point(&self, x: f64, y: f64) -> Result<(), Error> {
        let max = self.settings.max_coord;
        if !x.is_finite() || !y.is_finite() {
            return Err(Error::bad_request("coordinates must be finite numbers"));
        }
        if x.abs() > max || y.abs() > max {
            return Err(Error::bad_request(format!(
                "coordinates must be within ±{max}"
            )));
        }
        Ok(())
    }

    /// Loads a zone's saved positions the first time this instance touches it.
    /// If the db cannot answer, the zone works from memory and loading is tried
    /// again on the next request.
    pub(crate) async fn ensure_loaded(&self, zone: &str, req: &Request) {
        if self.lock().zones.get(zone).is_some_and(|z| z.loaded) {
            return;
        }
        let body = match proto::to_body(&api::LocLoad {
            zone: zone.to_owned(),
        }) {
            Ok(body) => body,
            Err(_) => return,
        };
        let loaded = req
            .bus
            .call("db", api::db_ops::LOC_LOAD, body, req.onward())
            .await;
        let positions = match loaded
            .and_then(|r| proto::from_body::<api::LocPositions>(&r.body).map_err(Error::from))
        {
            Ok(p) => p.positions,
            Err(e) => {
                tracing::warn!(zone, error = %e, "could not load saved positions; serving from memory");
                return;
            }
        };
        let mut state = self.lock();
        let z = state.zones.entry(zone.to_owned()).or_default();
        if z.loaded {
            return;
        }
        for p in positions {
            // Anything that moved since we asked is newer than the saved row.
            z.users.entry(p.user).or_insert(Pos {
                x: p.x,
                y: p.y,
                ts: p.ts,
                session: String::new(),
            });
        }
        z.loaded = true;
        tracing::debug!(zone, users = z.users.len(), "zone loaded");
    }

    pub(crate) fn take_pending(&self) -> api::LocSave {
        let mut state = self.lock();
        api::LocSave {
            positions: state.dirty.drain().map(|(_, p)| p).collect(),
            gone: state
                .gone
                .drain()
                .map(|(zone, user)| api::Gone { zone, user })
                .collect(),
        }
    }

    /// Puts back what could not be saved, unless something newer arrived since.
    pub(crate) fn restore_pending(&self, save: api::LocSave) {
        let mut state = self.lock();
        for g in save.gone {
            let key = (g.zone, g.user);
            if !state.dirty.contains_key(&key) {
                state.gone.insert(key);
            }
        }
        for p in save.positions {
            let key = (p.zone.clone(), p.user.clone());
            if !state.dirty.contains_key(&key) && !state.gone.contains(&key) {
                state.dirty.insert(key, p);
            }
        }
    }

    pub(crate) async fn flush(&self, bus: &Handle) {
        let save = self.take_pending();
        if save.positions.is_empty() && save.gone.is_empty() {
            return;
        }
        let Ok(body) = proto::to_body(&save) else {
            return;
        };
        let options = CallOptions {
            timeout: Some(Duration::from_secs(5)),
            ..CallOptions::default()
        };
        if let Err(e) = bus.call("db", api::db_ops::LOC_SAVE, body, options).await {
            tracing::warn!(error = %e, positions = save.positions.len(), "saving positions failed; will retry");
            self.restore_pending(save);
        }
    }

    /// Drops `user`'s positions set by `session`, and those reloaded after a
    /// restart (no session known: any session of the user closing ends them).
    /// Returns the zones left.
    pub(crate) fn close_session(&self, user: &str, session: &str) -> Vec<String> {
        self.remove_where(|u, p| u == user && (p.session == session || p.session.is_empty()))
            .into_iter()
            .map(|(zone, _)| zone)
            .collect()
    }

    /// Drops every position set through a lost gateway instance; returns the
    /// (zone, user) pairs removed.
    pub(crate) fn close_gateway(&self, gateway: &str) -> Vec<(String, String)> {
        self.remove_where(|_, p| api::session_gateway(&p.session) == Some(gateway))
    }

    /// Removes the positions `doomed` picks, marking them gone for the next save.
    pub(crate) fn remove_where(
        &self,
        doomed: impl Fn(&str, &Pos) -> bool,
    ) -> Vec<(String, String)> {
        let mut state = self.lock();
        let mut removed = Vec::new();
        for (name, zone) in state.zones.iter_mut() {
            zone.users.retain(|user, p| {
                let gone = doomed(user, p);
                if gone {
                    removed.push((name.clone(), user.clone()));
                }
                !gone
            });
        }
        for key in &removed {
            state.dirty.remove(key);
            state.gone.insert(key.clone());
        }
        removed
    }
}
