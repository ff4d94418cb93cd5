//! The loc service: live positions in zones.
//!
//! Several instances run (`loc01`, `loc02`, …); the gateway routes every loc
//! request by its `zone` (keyed routing), so each zone is owned by one instance.
//!
//! | op | data | reply |
//! |---|---|---|
//! | `move` | `{zone, x, y, name?}` | `{}`; `{zone, user, name?, x, y, ts}` on `loc.<zone>` (`name`: a display label, 1–32 characters) |
//! | `nearby` | `{zone, x, y, radius, limit?}` | `{users: [{user, x, y, dist}…], more?}` nearest first (`limit` 1–100, default 100; `more: true` when more users are in the radius) |
//! | `zone` | `{zone, limit?, after?}` | `{users: [{user, name?, x, y, ts}…], more?}` by user, `limit` (1–500, default 500) at most, after user `after`; `more: true` when another page follows (ask with `after` = the last user) |
//! | `leave` | `{zone}` | `{}`; `{zone, user, left: true}` on `loc.<zone>` |
//!
//! A zone exists from its first `move`, like a chat room, under the same name
//! rules (1 to 64 ASCII letters, digits, `_`, `-`); `--zones` is an optional
//! allow-list. Reads (`zone`, `nearby`) never create one: a zone with nothing
//! in memory or saved reads as empty. An instance holds at most `max_zones`
//! live zones; a new one past that evicts the least recently used (its
//! positions are saved and come back on its next use), so no flood of names
//! can lock others out. A zone no request named for `zone_idle_ms` (10 minutes) is
//! evicted from memory, its positions saved, and loaded again on its next use.
//! A zone holds at most `max_zone_users` users (`overloaded` for a new one past it).
//! An invalid zone name, a coordinate outside ±`max_coord`, NaN or infinity, or a
//! radius outside (0, `max_radius`] is `bad_request`. Positions are saved through the db service every
//! `save_interval_ms`, coalesced (latest wins), and a zone's last positions are
//! loaded when the instance first touches it, so a restart loses at most one save
//! interval. A user's position is dropped when the session that set it closes.
//!
//! # Layout
//!
//! - `zones`: an instance's zones: positions, what is still to be saved, the
//!   checks on what clients send, loading, sessions ending.
//! - this file: [`Settings`], the ops' handlers, the save loop, [`service`].

mod zones;

use zones::{Loc, Pos, State};

use serde::{Deserialize, Serialize};

use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_bus::proto::{self, api};
use switchboard_bus::{Error, Handle, HandlerResult, Request, Service, SessionsEnded};

/// loc settings: also its command line and environment (the binary flattens
/// them), checked by [`Settings::check`].
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// An allow-list of zones (comma-separated); none: any valid name, each
    /// created on first use.
    #[arg(long, env = "SB_LOC_ZONES", value_delimiter = ',')]
    pub zones: Vec<String>,
    /// Live zones this instance holds at most; a new one past it evicts the
    /// least recently used (its positions saved).
    #[arg(long, env = "SB_LOC_MAX_ZONES", default_value_t = DEFAULTS.max_zones)]
    pub max_zones: usize,
    /// Users one zone holds at most (`overloaded` for a new one past it).
    #[arg(long, env = "SB_LOC_MAX_ZONE_USERS", default_value_t = DEFAULTS.max_zone_users)]
    pub max_zone_users: usize,
    /// A zone no request named for this long is evicted from memory (its
    /// positions stay saved and come back on its next use), ms.
    #[arg(long, env = "SB_LOC_ZONE_IDLE_MS", default_value_t = DEFAULTS.zone_idle_ms)]
    pub zone_idle_ms: u64,
    /// Largest |x| or |y|.
    #[arg(long, env = "SB_LOC_MAX_COORD", default_value_t = DEFAULTS.max_coord)]
    pub max_coord: f64,
    /// Largest `nearby` radius.
    #[arg(long, env = "SB_LOC_MAX_RADIUS", default_value_t = DEFAULTS.max_radius)]
    pub max_radius: f64,
    /// How often positions are saved, ms.
    #[arg(long, env = "SB_LOC_SAVE_INTERVAL_MS", default_value_t = DEFAULTS.save_interval_ms)]
    pub save_interval_ms: u64,
}

/// The defaults, one table for [`Default`] and the command line.
const DEFAULTS: Settings = Settings {
    zones: Vec::new(),
    max_zones: 10_000,
    max_zone_users: 100_000,
    zone_idle_ms: 10 * 60 * 1000,
    max_coord: 1_000_000.0,
    max_radius: 100_000.0,
    save_interval_ms: 500,
};

impl Default for Settings {
    fn default() -> Self {
        DEFAULTS
    }
}

impl Settings {
    /// Refuses an invalid zone name in the allow-list; a cap of 0 is taken as 1.
    ///
    /// # Errors
    ///
    /// The first invalid zone name, said.
    pub fn check(mut self) -> Result<Self, String> {
        if let Some(bad) = self
            .zones
            .iter()
            .find(|z| proto::validate_token(z).is_err())
        {
            return Err(format!(
                "invalid zone name {bad:?} (letters, digits, _ and - only)"
            ));
        }
        self.max_zones = self.max_zones.max(1);
        self.max_zone_users = self.max_zone_users.max(1);
        Ok(self)
    }
}

/// Most users a `nearby` reply lists.
pub const NEARBY_MAX: usize = 100;

/// Most users one `zone` reply lists: a user is at most about 300 bytes (a
/// 128-byte id, a 32-character name, three numbers), so a page stays near
/// 150 KB, far under the bus's message limit however many users a zone has.
pub const ZONE_PAGE_MAX: usize = 500;

#[derive(Deserialize)]
struct ZoneArg {
    zone: String,
}

#[derive(Deserialize)]
struct ZonePageArg {
    zone: String,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<String>,
}

#[derive(Deserialize)]
struct MoveArg {
    zone: String,
    x: f64,
    y: f64,
    /// A display name for the map (a label; `user` is who moved).
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct NearbyArg {
    zone: String,
    x: f64,
    y: f64,
    radius: f64,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Serialize)]
struct Moved<'a> {
    zone: &'a str,
    user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    x: f64,
    y: f64,
    ts: u64,
}

#[derive(Serialize)]
struct Left<'a> {
    zone: &'a str,
    user: &'a str,
    left: bool,
}

#[derive(Serialize)]
struct Near {
    user: String,
    x: f64,
    y: f64,
    dist: f64,
}

#[derive(Serialize)]
struct NearbyReply {
    users: Vec<Near>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    more: bool,
}

#[derive(Serialize)]
struct ZoneUser {
    user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    x: f64,
    y: f64,
    ts: u64,
}

#[derive(Serialize)]
struct ZoneReply {
    users: Vec<ZoneUser>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    more: bool,
}

#[derive(Serialize)]
struct Empty {}

/// The loc service with `settings`, ready to `run`.
pub fn service(settings: Settings) -> Service {
    let zones = settings.zones.iter().cloned().collect();
    let interval = Duration::from_millis(settings.save_interval_ms.max(10));
    let loc = Arc::new(Loc {
        settings,
        zones,
        state: Mutex::new(State::default()),
    });
    let l_task = loc.clone();
    Service::new("loc")
        .version(env!("CARGO_PKG_VERSION"))
        .handle_with("move", &loc, |req: Request, loc| async move {
            do_move(&loc, req).await
        })
        .handle_with("nearby", &loc, |req: Request, loc| async move {
            nearby(&loc, req).await
        })
        .handle_with("zone", &loc, |req: Request, loc| async move {
            zone_page(&loc, req).await
        })
        .handle_with("leave", &loc, |req: Request, loc| async move {
            let arg: ZoneArg = req.decode()?;
            loc.check_zone(&arg.zone)?;
            let user = req.require_user()?.to_owned();
            let was_there = {
                let mut state = loc.lock();
                let removed = state
                    .zones
                    .get_mut(&arg.zone)
                    .and_then(|z| z.users.remove(&user))
                    .is_some();
                if let Some((_, zones)) = req.session().and_then(|s| state.by_session.get_mut(s)) {
                    zones.remove(&arg.zone);
                }
                let key = (arg.zone.clone(), user.clone());
                state.dirty.remove(&key);
                state.gone.insert(key);
                removed
            };
            if was_there {
                publish_left(&req.bus, &arg.zone, &user).await;
            }
            Request::encode(&Empty {})
        })
        // A closed connection; or a gateway that died and sent no
        // session.close: drop what its clients set.
        .on_sessions_ended_with(&loc, |ended, bus, loc| async move {
            let left: Vec<(String, String)> = match &ended {
                SessionsEnded::One { user, session } => loc
                    .close_session(user, session)
                    .into_iter()
                    .map(|zone| (zone, user.clone()))
                    .collect(),
                SessionsEnded::Gateway(_) => loc.close_covered(&ended),
            };
            for (zone, user) in left {
                publish_left(&bus, &zone, &user).await;
            }
        })
        .task(move |bus, shutdown| async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        l_task.flush(&bus).await;
                        l_task.evict_idle();
                    }
                }
            }
            // Final save before the instance leaves.
            l_task.flush(&bus).await;
        })
}

async fn publish_left(bus: &Handle, zone: &str, user: &str) {
    if let Ok(body) = proto::to_body(&Left {
        zone,
        user,
        left: true,
    }) {
        let _ = bus.publish(&format!("loc.{zone}"), body).await;
    }
}

async fn do_move(loc: &Loc, req: Request) -> HandlerResult {
    let arg: MoveArg = req.decode()?;
    loc.check_zone(&arg.zone)?;
    loc.check_point(arg.x, arg.y)?;
    if let Some(name) = &arg.name {
        Loc::check_name(name)?;
    }
    let user = req.require_user()?.to_owned();
    loc.touch(&arg.zone);
    loc.ensure_loaded(&arg.zone, &req, true).await;
    loc.check_room_for(&arg.zone, &user)?;
    let ts = proto::now_ms();
    let session = req.session().unwrap_or_default().to_owned();
    {
        let mut guard = loc.lock();
        if !guard.zones.contains(&arg.zone) {
            // Evicted by newer zones while it loaded: back, most recent.
            drop(guard);
            loc.touch(&arg.zone);
            guard = loc.lock();
        }
        let state = &mut *guard;
        Loc::note_session_zone(state, &session, &user, &arg.zone)?;
        let Some(zone) = state.zones.get_mut(&arg.zone) else {
            return Err(Error::new(
                proto::ErrorCode::Overloaded,
                "zone evicted while loading; try again",
            ));
        };
        let before = zone.users.insert(
            user.clone(),
            Pos {
                x: arg.x,
                y: arg.y,
                ts,
                session: session.clone(),
                name: arg.name.clone(),
            },
        );
        // Another connection of the user held it: that one's closing no
        // longer ends it.
        if let Some(before) = before.filter(|b| b.session != session) {
            if let Some((_, zones)) = state.by_session.get_mut(&before.session) {
                zones.remove(&arg.zone);
            }
        }
        let key = (arg.zone.clone(), user.clone());
        state.gone.remove(&key);
        state.dirty.insert(
            key,
            api::Position {
                zone: arg.zone.clone(),
                user: user.clone(),
                x: arg.x,
                y: arg.y,
                ts,
            },
        );
    }
    let event = Moved {
        zone: &arg.zone,
        user: &user,
        name: arg.name.as_deref(),
        x: arg.x,
        y: arg.y,
        ts,
    };
    let body = proto::to_body(&event)?;
    req.bus.publish(&format!("loc.{}", arg.zone), body).await?;
    Request::encode(&Empty {})
}

async fn nearby(loc: &Loc, req: Request) -> HandlerResult {
    let arg: NearbyArg = req.decode()?;
    loc.check_zone(&arg.zone)?;
    loc.check_point(arg.x, arg.y)?;
    if !arg.radius.is_finite() || arg.radius <= 0.0 || arg.radius > loc.settings.max_radius {
        return Err(Error::bad_request(format!(
            "radius must be in (0, {}]",
            loc.settings.max_radius
        )));
    }
    let limit = arg.limit.unwrap_or(NEARBY_MAX);
    if !(1..=NEARBY_MAX).contains(&limit) {
        return Err(Error::bad_request(format!(
            "limit must be 1 to {NEARBY_MAX}"
        )));
    }
    loc.touch_if_live(&arg.zone);
    loc.ensure_loaded(&arg.zone, &req, false).await;
    let mut users: Vec<Near> = {
        let state = loc.lock();
        state
            .zones
            .peek(&arg.zone)
            .map(|z| {
                z.users
                    .iter()
                    .map(|(u, p)| Near {
                        user: u.clone(),
                        x: p.x,
                        y: p.y,
                        dist: (p.x - arg.x).hypot(p.y - arg.y),
                    })
                    .filter(|n| n.dist <= arg.radius)
                    .collect()
            })
            .unwrap_or_default()
    };
    users.sort_by(|a, b| a.dist.total_cmp(&b.dist).then_with(|| a.user.cmp(&b.user)));
    let more = users.len() > limit;
    users.truncate(limit);
    Request::encode(&NearbyReply { users, more })
}

/// `zone`: a page of the zone's users, by user id.
async fn zone_page(loc: &Loc, req: Request) -> HandlerResult {
    let arg: ZonePageArg = req.decode()?;
    loc.check_zone(&arg.zone)?;
    let limit = arg.limit.unwrap_or(ZONE_PAGE_MAX);
    if !(1..=ZONE_PAGE_MAX).contains(&limit) {
        return Err(Error::bad_request(format!(
            "limit must be 1 to {ZONE_PAGE_MAX}"
        )));
    }
    loc.touch_if_live(&arg.zone);
    loc.ensure_loaded(&arg.zone, &req, false).await;
    let state = loc.lock();
    let Some(zone) = state.zones.peek(&arg.zone) else {
        return Request::encode(&ZoneReply {
            users: Vec::new(),
            more: false,
        });
    };
    let after = arg.after.as_deref().unwrap_or("");
    let mut page: Vec<(&String, &Pos)> = zone
        .users
        .iter()
        .filter(|(u, _)| u.as_str() > after)
        .collect();
    // Only the page's worth is ordered: the smallest `limit + 1` ids first.
    let more = page.len() > limit;
    if more {
        page.select_nth_unstable_by(limit, |a, b| a.0.cmp(b.0));
        page.truncate(limit);
    }
    page.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let users = page
        .into_iter()
        .map(|(u, p)| ZoneUser {
            user: u.clone(),
            name: p.name.clone(),
            x: p.x,
            y: p.y,
            ts: p.ts,
        })
        .collect();
    drop(state);
    Request::encode(&ZoneReply { users, more })
}

#[cfg(test)]
mod settings_tests {
    use super::Settings;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        loc: Settings,
    }

    #[test]
    fn the_command_line_s_defaults_are_the_library_s() {
        if std::env::vars().any(|(k, _)| k.starts_with("SB_LOC_")) {
            eprintln!("SB_LOC_* set in this environment: the defaults are not what is read");
            return;
        }
        let parsed = Cli::parse_from(["loc"]).loc;
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Settings::default()));
    }

    #[test]
    fn check_refuses_a_bad_zone_and_lifts_a_zero_cap() {
        let bad = Cli::parse_from(["loc", "--zones", "lobby,no.dots"]).loc;
        let why = bad.check().unwrap_err();
        assert!(why.contains("\"no.dots\""), "{why}");
        let zero = Cli::parse_from(["loc", "--max-zones", "0", "--max-zone-users", "0"]).loc;
        let checked = zero.check().unwrap();
        assert_eq!((checked.max_zones, checked.max_zone_users), (1, 1));
    }
}
