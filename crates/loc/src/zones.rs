//! A loc instance's zones: positions in memory, what is still to be saved, the
//! checks on what clients send, loading a zone's saved positions, and sessions
//! ending.
//!
//! Zones live in an LRU list (the `lru` crate) capped at `max_zones`: a new
//! zone past the cap evicts the least recently used one (its unsaved positions
//! stay queued for the next save and are laid over the saved ones when it is
//! loaded again), so many new zone names make room for themselves instead of
//! refusing everyone's. Only `move` creates a zone; a read (`zone`, `nearby`)
//! of a zone not in memory loads its saved positions and keeps it only if it
//! has any, so reads of made-up names leave nothing behind.

use lru::LruCache;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use switchboard_bus::proto::{self, api};
use switchboard_bus::{CallOptions, Error, Handle, Request, SessionsEnded};

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

impl Pos {
    /// A position read back from storage (or not saved yet): no session, no name.
    pub(crate) fn saved(x: f64, y: f64, ts: u64) -> Self {
        Self {
            x,
            y,
            ts,
            session: String::new(),
            name: None,
        }
    }
}

#[derive(Default)]
pub(crate) struct Zone {
    pub(crate) users: HashMap<String, Pos>,
    pub(crate) loaded: bool,
    /// The last request that named it, ms since the epoch.
    pub(crate) used_ms: u64,
}

pub(crate) struct State {
    /// Live zones, most recently used first; at most `max_zones` (kept by
    /// [`Loc::insert_zone`], the only place that adds one).
    pub(crate) zones: LruCache<String, Zone>,
    /// Positions to save: (zone, user) → latest.
    pub(crate) dirty: HashMap<(String, String), api::Position>,
    /// Users that left, to delete.
    pub(crate) gone: HashSet<(String, String)>,
    /// What a save in flight carries: a zone loaded meanwhile (after an
    /// eviction) must not miss it because the db has not committed it yet.
    pub(crate) saving: api::LocSave,
    /// Per client session: its user and the zones it set a position in, so
    /// that its positions in zones evicted meanwhile go too when it closes
    /// (at most [`MAX_ZONES_PER_SESSION`] zones each).
    pub(crate) by_session: HashMap<String, (String, HashSet<String>)>,
}

/// Zones one client session may hold positions in at once (`overloaded` past
/// it): the index of sessions' zones is fed by clients.
pub(crate) const MAX_ZONES_PER_SESSION: usize = 256;

impl Default for State {
    fn default() -> Self {
        Self {
            zones: LruCache::unbounded(),
            dirty: HashMap::new(),
            gone: HashSet::new(),
            saving: api::LocSave::default(),
            by_session: HashMap::new(),
        }
    }
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

    /// Marks `zone` used now, creating it (a zone exists from its first
    /// `move`, like a chat room), see [`Loc::insert_zone`].
    pub(crate) fn touch(&self, zone: &str) {
        let now = proto::now_ms();
        let mut state = self.lock();
        if let Some(z) = state.zones.get_mut(zone) {
            z.used_ms = now;
            return;
        }
        self.insert_zone(&mut state, zone, Zone::fresh());
    }

    /// Marks `zone` used now if it is in memory (a read: it never creates one).
    pub(crate) fn touch_if_live(&self, zone: &str) {
        let now = proto::now_ms();
        if let Some(z) = self.lock().zones.get_mut(zone) {
            z.used_ms = now;
        }
    }

    /// Adds a zone, evicting the least recently used ones past `max_zones`.
    /// Their unsaved positions stay queued (`dirty`, `gone`) and are laid over
    /// the saved ones when the zone is loaded again.
    fn insert_zone(&self, state: &mut State, name: &str, zone: Zone) {
        let mut evicted = 0;
        while state.zones.len() >= self.settings.max_zones.max(1) {
            if state.zones.pop_lru().is_none() {
                break;
            }
            evicted += 1;
        }
        if evicted > 0 {
            tracing::debug!(evicted, "least recently used zones evicted for a new one");
        }
        state.zones.put(name.to_owned(), zone);
    }

    /// A user joining `zone` past `max_zone_users`: `overloaded`. A user
    /// already there may always move.
    pub(crate) fn check_room_for(&self, zone: &str, user: &str) -> Result<(), Error> {
        let state = self.lock();
        let Some(z) = state.zones.peek(zone) else {
            return Ok(());
        };
        if z.users.len() >= self.settings.max_zone_users && !z.users.contains_key(user) {
            return Err(Error::new(
                proto::ErrorCode::Overloaded,
                format!(
                    "zone {zone:?} holds {} users, its cap",
                    self.settings.max_zone_users
                ),
            ));
        }
        Ok(())
    }

    /// Evicts the zones no request has named for `zone_idle_ms` (their positions
    /// are saved already: a zone with positions still to save is kept until they
    /// are). The next request that names one loads its positions again.
    pub(crate) fn evict_idle(&self) -> usize {
        let now = proto::now_ms();
        evict_idle(&mut self.lock(), now, self.settings.zone_idle_ms)
    }

    /// A display name: 1 to [`MAX_NAME`] characters, no control characters
    /// and no bidirectional controls (it is shown to the zone's other users).
    /// It is a label only: `user` (from the token) is who moved.
    pub(crate) fn check_name(name: &str) -> Result<(), Error> {
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_NAME {
            return Err(Error::bad_request(format!(
                "name must be 1 to {MAX_NAME} characters"
            )));
        }
        proto::text::check(name, proto::text::Lines::Refused)
            .map_err(|e| Error::bad_request(format!("name: {e}")))
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
    /// (and again after it was evicted). With `create` (a `move`) the zone is
    /// kept even when nothing was saved; without (a read) only when there is
    /// something to show, so a read of a made-up name leaves nothing behind.
    /// If the db cannot answer, a zone in memory works from memory and loading
    /// is tried again on the next request.
    pub(crate) async fn ensure_loaded(&self, zone: &str, req: &Request, create: bool) {
        if self.lock().zones.peek(zone).is_some_and(|z| z.loaded) {
            return;
        }
        let positions = match load_saved(&req.bus, zone, req.onward()).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(zone, error = %e, "could not load saved positions; serving from memory");
                return;
            }
        };
        let mut state = self.lock();
        let state = &mut *state;
        if state.zones.peek(zone).is_some_and(|z| z.loaded) {
            return;
        }
        let mut users: HashMap<String, Pos> = positions
            .into_iter()
            .map(|p| {
                let pos = Pos::saved(p.x, p.y, p.ts);
                (p.user, pos)
            })
            .collect();
        // Not saved yet (the zone was evicted before its save, or its save is
        // in flight): newer than the saved rows.
        let saving = state
            .saving
            .positions
            .iter()
            .map(|p| ((&p.zone, &p.user), p));
        let dirty = state.dirty.iter().map(|((z, u), p)| ((z, u), p));
        for ((z, user), p) in saving.chain(dirty) {
            if z == zone {
                let pos = Pos::saved(p.x, p.y, p.ts);
                users.insert(user.clone(), pos);
            }
        }
        let saving = state.saving.gone.iter().map(|g| (&g.zone, &g.user));
        for (z, user) in saving.chain(state.gone.iter().map(|(z, u)| (z, u))) {
            if z == zone && !state.dirty.contains_key(&(z.clone(), user.clone())) {
                users.remove(user);
            }
        }
        match state.zones.peek_mut(zone) {
            Some(z) => {
                // Anything that moved since we asked is newer than the saved row.
                for (user, pos) in users {
                    z.users.entry(user).or_insert(pos);
                }
                z.loaded = true;
            }
            None if create || !users.is_empty() => {
                let z = Zone {
                    users,
                    loaded: true,
                    used_ms: proto::now_ms(),
                };
                self.insert_zone(state, zone, z);
            }
            None => {}
        }
        tracing::debug!(zone, "zone loaded");
    }

    /// Takes what is to be saved, keeping a copy as in flight.
    pub(crate) fn take_pending(&self) -> api::LocSave {
        let mut state = self.lock();
        let save = api::LocSave {
            positions: state.dirty.drain().map(|(_, p)| p).collect(),
            gone: state
                .gone
                .drain()
                .map(|(zone, user)| api::Gone { zone, user })
                .collect(),
        };
        state.saving = save.clone();
        save
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

    /// Saves what is pending, [`SAVE_CHUNK`] positions and departures per
    /// `loc.save` (many users moving at once must not make one message over
    /// the bus's limit); what could not be saved is put back for the next time.
    pub(crate) async fn flush(&self, bus: &Handle) {
        let mut save = self.take_pending();
        let options = CallOptions {
            timeout: Some(Duration::from_secs(5)),
            ..CallOptions::default()
        };
        while !save.positions.is_empty() || !save.gone.is_empty() {
            let chunk = api::LocSave {
                positions: take_front(&mut save.positions, SAVE_CHUNK),
                gone: take_front(&mut save.gone, SAVE_CHUNK),
            };
            let sent = match proto::to_body(&chunk) {
                Ok(body) => bus
                    .call("db", api::db_ops::LOC_SAVE, body, options.clone())
                    .await
                    .map(drop),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = sent {
                tracing::warn!(error = %e, positions = chunk.positions.len() + save.positions.len(), "saving positions failed; will retry");
                save.positions.extend(chunk.positions);
                save.gone.extend(chunk.gone);
                self.restore_pending(save);
                break;
            }
        }
        self.lock().saving = api::LocSave::default();
    }

    /// Drops `user`'s positions set by `session`, and those reloaded after a
    /// restart (no session known: any session of the user closing ends them).
    /// Returns the zones left.
    pub(crate) fn close_session(&self, user: &str, session: &str) -> Vec<String> {
        let mut removed =
            self.remove_where(|u, p| u == user && (p.session == session || p.session.is_empty()));
        removed.extend(self.forget_sessions(|s| s == session));
        removed.into_iter().map(|(zone, _)| zone).collect()
    }

    /// Drops every position set through a session `ended` covers (a lost
    /// gateway's); returns the (zone, user) pairs removed.
    pub(crate) fn close_covered(&self, ended: &SessionsEnded) -> Vec<(String, String)> {
        let mut removed = self.remove_where(|_, p| ended.covers(&p.session));
        removed.extend(self.forget_sessions(|s| ended.covers(s)));
        removed
    }

    /// Records that `session` of `user` set a position in `zone`, within
    /// [`MAX_ZONES_PER_SESSION`].
    pub(crate) fn note_session_zone(
        state: &mut State,
        session: &str,
        user: &str,
        zone: &str,
    ) -> Result<(), Error> {
        if session.is_empty() {
            return Ok(());
        }
        let (_, zones) = state
            .by_session
            .entry(session.to_owned())
            .or_insert_with(|| (user.to_owned(), HashSet::new()));
        if zones.len() >= MAX_ZONES_PER_SESSION && !zones.contains(zone) {
            return Err(Error::new(
                proto::ErrorCode::Overloaded,
                format!("this connection holds positions in {MAX_ZONES_PER_SESSION} zones: leave one first"),
            ));
        }
        zones.insert(zone.to_owned());
        Ok(())
    }

    /// Forgets the sessions `which` picks; their users' positions in zones not
    /// in memory (evicted since) are marked gone. Returns those (zone, user).
    fn forget_sessions(&self, which: impl Fn(&str) -> bool) -> Vec<(String, String)> {
        let mut state = self.lock();
        let state = &mut *state;
        let closing: Vec<String> = state
            .by_session
            .keys()
            .filter(|s| which(s))
            .cloned()
            .collect();
        let mut removed = Vec::new();
        for session in closing {
            let Some((user, zones)) = state.by_session.remove(&session) else {
                continue;
            };
            for zone in zones {
                if state.zones.contains(&zone) {
                    continue;
                }
                let key = (zone, user.clone());
                state.dirty.remove(&key);
                state.gone.insert(key.clone());
                removed.push(key);
            }
        }
        removed
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

/// Positions (and, apart, departures) one `loc.save` carries at most: about
/// 250 KB, far under the bus's message limit.
pub(crate) const SAVE_CHUNK: usize = 1_000;

/// The first `n` of `v`, taken out.
fn take_front<T>(v: &mut Vec<T>, n: usize) -> Vec<T> {
    let rest = v.split_off(n.min(v.len()));
    std::mem::replace(v, rest)
}

/// Every page of `zone`'s saved positions (`loc.load` pages them so that no
/// reply grows past the bus's message limit).
async fn load_saved(
    bus: &Handle,
    zone: &str,
    options: CallOptions,
) -> Result<Vec<api::Position>, Error> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let body = proto::to_body(&api::LocLoad {
            zone: zone.to_owned(),
            after: after.take(),
            limit: Some(api::LOC_LOAD_PAGE_MAX),
        })?;
        let reply = bus
            .call("db", api::db_ops::LOC_LOAD, body, options.clone())
            .await?;
        let page: api::LocPositions = proto::from_body(&reply.body)?;
        let more = page.more && !page.positions.is_empty();
        after = page.positions.last().map(|p| p.user.clone());
        all.extend(page.positions);
        if !more {
            return Ok(all);
        }
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
        state.zones.pop(name);
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
    fn past_the_cap_the_least_recently_used_zone_makes_room() {
        let busy = loc(&[], 2, 60_000);
        busy.touch("a");
        busy.touch("b");
        busy.touch("a");
        busy.touch("c");
        let live: HashSet<String> = busy.lock().zones.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(
            live,
            ["a", "c"].map(String::from).into(),
            "b was least recently used"
        );
        // A read marks a live zone used but never creates one.
        busy.touch_if_live("a");
        busy.touch_if_live("nope");
        busy.touch("d");
        let live: HashSet<String> = busy.lock().zones.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(live, ["a", "d"].map(String::from).into());
    }

    #[test]
    fn idle_zones_go_unless_positions_are_still_to_save() {
        let idle = loc(&[], 10, 0);
        idle.touch("a");
        idle.touch("b");
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
        assert_eq!(idle.evict_idle(), 1);
        let live: HashSet<String> = idle.lock().zones.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(live, ["a"].map(String::from).into());
    }
}
