//! A loc instance's zones: positions in memory, what is still to be saved, the
//! checks on what clients send, loading a zone's saved positions, and sessions
//! ending.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use switchboard_bus::proto::{self, api};
use switchboard_bus::{CallOptions, Error, Handle, Request};

use crate::Settings;

/// Longest display name a `move` may carry, characters.
pub(crate) const MAX_NAME: usize = 32;

#[derive(Debug, Clone)]
pub(crate) struct Pos {
    pub(crate) x: f64,
    pub(crate) y: f64,
    pub(crate) ts: u64,
    pub(crate) session: String,
    /// A display name the client gave (not stored: a zone reloaded from
    /// MariaDB has none until its users move again).
    pub(crate) name: Option<String>,
}

#[derive(Default)]
pub(crate) struct Zone {
    pub(crate) users: HashMap<String, Pos>,
    pub(crate) loaded: bool,
    /// The last request that named it, ms since the epoch.
    pub(crate) used_ms: u64,
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

impl Zone {
    /// A zone used now, not loaded yet.
    pub(crate) fn fresh() -> Self {
        Self {
            used_ms: proto::now_ms(),
            ..Self::default()
        }
    }
}

// === impl Loc ===

impl Loc {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A zone name a client may use: a chat room's rules (1 to 64 ASCII letters,
    /// digits, `_`, `-`), and within the allow-list when one is configured.
    pub(crate) fn check_zone(&self, zone: &str) -> Result<(), Error> {
        if let Err(e) = proto::validate_token(zone) {
            return Err(Error::bad_request(format!("zone name {e}")));
        }
        if !self.zones.is_empty() && !self.zones.contains(zone) {
            return Err(Error::bad_request(format!("unknown zone {zone:?}")));
        }
        Ok(())
    }

    /// Marks `zone` used now, creating it (a zone exists from its first use, like
    /// a chat room) within the cap on live zones: when full, idle zones are
    /// evicted first; still full, `overloaded`.
    pub(crate) fn touch(&self, zone: &str) -> Result<(), Error> {
        let now = proto::now_ms();
        let mut state = self.lock();
        if let Some(z) = state.zones.get_mut(zone) {
            z.used_ms = now;
            return Ok(());
        }
        if state.zones.len() >= self.settings.max_zones {
            evict_idle(&mut state, now, self.settings.zone_idle_ms);
        }
        if state.zones.len() >= self.settings.max_zones {
            return Err(Error::new(
                switchboard_bus::proto::ErrorCode::Overloaded,
                format!(
                    "this loc instance holds {} live zones, its cap; try again later",
                    self.settings.max_zones
                ),
            ));
        }
        state.zones.insert(zone.to_owned(), Zone::fresh());
        Ok(())
    }

    /// Evicts the zones no request has named for `zone_idle_ms` (their positions
    /// are saved already: a zone with positions still to save is kept until they
    /// are). The next request that names one loads its positions again.
    pub(crate) fn evict_idle(&self) -> usize {
        let now = proto::now_ms();
        evict_idle(&mut self.lock(), now, self.settings.zone_idle_ms)
    }

    /// A display name: 1 to [`MAX_NAME`] characters, no control characters.
    /// It is a label only: `user` (from the token) is who moved.
    pub(crate) fn check_name(name: &str) -> Result<(), Error> {
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_NAME || name.chars().any(char::is_control) {
            return Err(Error::bad_request(format!(
                "name must be 1 to {MAX_NAME} characters, none of them control characters"
            )));
        }
        Ok(())
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

    /// Loads a zone's saved positions the first time this instance touches it
    /// (and again after it was evicted).
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
        let z = state
            .zones
            .entry(zone.to_owned())
            .or_insert_with(Zone::fresh);
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
                name: None,
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

fn evict_idle(state: &mut State, now: u64, idle_ms: u64) -> usize {
    let pending: HashSet<&str> = state
        .dirty
        .keys()
        .chain(state.gone.iter())
        .map(|(zone, _)| zone.as_str())
        .collect();
    let idle: Vec<String> = state
        .zones
        .iter()
        .filter(|(name, z)| {
            now.saturating_sub(z.used_ms) >= idle_ms && !pending.contains(name.as_str())
        })
        .map(|(name, _)| name.clone())
        .collect();
    for name in &idle {
        state.zones.remove(name);
    }
    if !idle.is_empty() {
        tracing::debug!(
            evicted = idle.len(),
            live = state.zones.len(),
            "idle zones evicted"
        );
    }
    idle.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(zones: &[&str], max_zones: usize, zone_idle_ms: u64) -> Loc {
        Loc {
            zones: zones.iter().map(|z| (*z).to_owned()).collect(),
            settings: Settings {
                zones: zones.iter().map(|z| (*z).to_owned()).collect(),
                max_zones,
                zone_idle_ms,
                ..Settings::default()
            },
            state: Mutex::new(State::default()),
        }
    }

    #[test]
    fn an_allow_list_limits_the_names() {
        let open = loc(&[], 10, 60_000);
        assert!(open.check_zone("anything-new").is_ok());
        assert!(open.check_zone("a.b").is_err());
        let listed = loc(&["lobby"], 10, 60_000);
        assert!(listed.check_zone("lobby").is_ok());
        assert!(listed.check_zone("anything-new").is_err());
    }

    #[test]
    fn the_cap_counts_live_zones_and_idle_ones_make_room() {
        let busy = loc(&[], 2, 60_000);
        busy.touch("a").unwrap();
        busy.touch("b").unwrap();
        busy.touch("a").unwrap();
        let err = busy.touch("c").unwrap_err();
        assert_eq!(err.code, proto::ErrorCode::Overloaded);

        let idle = loc(&[], 2, 0);
        idle.touch("a").unwrap();
        idle.touch("b").unwrap();
        // A zone with a position still to save is not evicted.
        idle.lock().dirty.insert(
            ("a".into(), "ada".into()),
            api::Position {
                zone: "a".into(),
                user: "ada".into(),
                x: 0.0,
                y: 0.0,
                ts: 0,
            },
        );
        idle.touch("c").unwrap();
        let live: HashSet<String> = idle.lock().zones.keys().cloned().collect();
        assert_eq!(live, ["a", "c"].map(String::from).into());
    }
}
