//! The loc service: live positions in zones.
//!
//! Several instances run (`loc01`, `loc02`, …); the gateway routes every loc
//! request by its `zone` (keyed routing), so each zone is owned by one instance.
//!
//! | op | data | reply |
//! |---|---|---|
//! | `move` | `{zone, x, y, name?}` | `{}`; `{zone, user, name?, x, y, ts}` on `loc.<zone>` (`name`: a display label, 1–32 characters) |
//! | `nearby` | `{zone, x, y, radius}` | `{users: [{user, x, y, dist}…]}` nearest first (100 at most) |
//! | `zone` | `{zone}` | `{users: [{user, name?, x, y, ts}…]}` |
//! | `leave` | `{zone}` | `{}`; `{zone, user, left: true}` on `loc.<zone>` |
//!
//! A zone exists from its first use, like a chat room, under the same name rules
//! (1 to 64 ASCII letters, digits, `_`, `-`); `--zones` is an optional allow-list.
//! An instance holds at most `max_zones` live zones (`overloaded` past that, after
//! evicting idle ones); a zone no request named for `zone_idle_ms` (10 minutes) is
//! evicted from memory, its positions saved, and loaded again on its next use.
//! An invalid zone name, a coordinate outside ±`max_coord`, NaN or infinity, or a
//! radius outside (0, `max_radius`] is `bad_request`. Positions are saved through the db service every
//! `save_interval_ms`, coalesced (latest wins), and a zone's last positions are
//! loaded when the instance first touches it, so a restart loses at most one save
//! interval. A user's position is dropped when the session that set it closes.

mod zones;

use zones::{Loc, Pos, State};

use serde::{Deserialize, Serialize};

use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_bus::proto::{self, api};
use switchboard_bus::{Error, Handle, HandlerResult, Request, Service};

/// loc settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// An allow-list of zones; empty: any valid name (a zone exists from its
    /// first use).
    pub zones: Vec<String>,
    /// Live zones one instance holds at most.
    pub max_zones: usize,
    /// A zone no request named for this long is evicted from memory (its
    /// positions stay saved and come back on its next use), ms.
    pub zone_idle_ms: u64,
    /// Largest |x| or |y|.
    pub max_coord: f64,
    /// Largest `nearby` radius.
    pub max_radius: f64,
    /// How often positions are saved.
    pub save_interval_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            zones: Vec::new(),
            max_zones: 10_000,
            zone_idle_ms: 10 * 60 * 1000,
            max_coord: 1_000_000.0,
            max_radius: 100_000.0,
            save_interval_ms: 500,
        }
    }
}

/// Most users a `nearby` reply lists.
pub const NEARBY_MAX: usize = 100;

#[derive(Deserialize)]
struct ZoneArg {
    zone: String,
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
            let arg: ZoneArg = req.decode()?;
            loc.check_zone(&arg.zone)?;
            loc.touch(&arg.zone)?;
            loc.ensure_loaded(&arg.zone, &req).await;
            let state = loc.lock();
            let mut users: Vec<ZoneUser> = state
                .zones
                .get(&arg.zone)
                .map(|z| {
                    z.users
                        .iter()
                        .map(|(u, p)| ZoneUser {
                            user: u.clone(),
                            name: p.name.clone(),
                            x: p.x,
                            y: p.y,
                            ts: p.ts,
                        })
                        .collect()
                })
                .unwrap_or_default();
            users.sort_by(|a, b| a.user.cmp(&b.user));
            Request::encode(&ZoneReply { users })
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
        .on_event_with(api::SESSION_CLOSE, &loc, |event, bus, loc| async move {
            let Ok(s) = proto::from_body::<api::Session>(&event.body) else {
                tracing::warn!("bad session.close event");
                return;
            };
            for zone in loc.close_session(&s.user, &s.session) {
                publish_left(&bus, &zone, &s.user).await;
            }
        })
        // A gateway that died sent no session.close: drop what its clients set.
        .on_event_with(api::PEER_LOST, &loc, |event, bus, loc| async move {
            let Ok(lost) = proto::from_body::<api::PeerLost>(&event.body) else {
                return;
            };
            for (zone, user) in loc.close_gateway(&lost.instance) {
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
    loc.touch(&arg.zone)?;
    let user = req.require_user()?.to_owned();
    loc.ensure_loaded(&arg.zone, &req).await;
    let ts = proto::now_ms();
    {
        let mut state = loc.lock();
        state
            .zones
            .entry(arg.zone.clone())
            .or_insert_with(zones::Zone::fresh)
            .users
            .insert(
                user.clone(),
                Pos {
                    x: arg.x,
                    y: arg.y,
                    ts,
                    session: req.session().unwrap_or_default().to_owned(),
                    name: arg.name.clone(),
                },
            );
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
    loc.touch(&arg.zone)?;
    loc.ensure_loaded(&arg.zone, &req).await;
    let mut users: Vec<Near> = {
        let state = loc.lock();
        state
            .zones
            .get(&arg.zone)
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
    users.truncate(NEARBY_MAX);
    Request::encode(&NearbyReply { users })
}
