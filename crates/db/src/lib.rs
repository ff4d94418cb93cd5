//! The db service: the only process with a MariaDB connection.
//!
//! It serves named operations with typed parameters and parameterised SQL
//! (`chat.save`, `chat.history`, `loc.save`, `loc.load`; types in
//! `switchboard_proto::api`); nothing takes SQL text from a packet. It creates its
//! database if missing and brings the schema up to date with versioned migrations
//! ([`migrations`]) at start, or as soon as the database is reachable.
//!
//! # Layout
//!
//! - [`store`]: [`store::Db`], the pool, the operations, retries and group commit.
//! - [`migrations`]: the schema, versioned.
//! - [`error`]: [`error::DbError`] and what counts as transient.
//! - this file: [`Settings`] and [`service`], the bus service.

pub mod error;
pub mod migrations;
pub mod store;

use std::sync::Arc;
use std::time::Duration;
use switchboard_bus::proto::api::{self, db_ops};
use switchboard_bus::{Request, Service};

pub use store::Db;

/// db service settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `mysql://user:password@host:port/database`; the database is created if missing.
    pub database_url: String,
    /// Connections in the pool at most.
    pub pool_max: usize,
    /// Messages committed in one transaction at most (group commit).
    pub max_batch: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: "mysql://root@127.0.0.1:3306/switchboard".into(),
            pool_max: 16,
            max_batch: 512,
        }
    }
}

/// The db service over `db`, ready to `run`.
pub fn service(db: Arc<Db>) -> Service {
    let (health, migrate) = (db.clone(), db.clone());
    Service::new("db")
        .handle_with(db_ops::CHAT_SAVE, &db, |req: Request, db| async move {
            let msg: api::ChatSave = req.decode()?;
            let (seq, duplicate) = db.chat_save(msg, req.trace(), req.env.deadline).await?;
            Request::encode(&api::ChatSaved { seq, duplicate })
        })
        .handle_with(db_ops::CHAT_HISTORY, &db, |req: Request, db| async move {
            let q: api::ChatHistory = req.decode()?;
            let messages = db.chat_history(&q, req.env.deadline).await?;
            Request::encode(&api::ChatMessages { messages })
        })
        .handle_with(db_ops::LOC_SAVE, &db, |req: Request, db| async move {
            let save: api::LocSave = req.decode()?;
            db.loc_save(&save, req.env.deadline).await?;
            Request::encode(&empty_map())
        })
        .handle_with(db_ops::LOC_LOAD, &db, |req: Request, db| async move {
            let q: api::LocLoad = req.decode()?;
            let positions = db.loc_load(&q.zone, req.env.deadline).await?;
            Request::encode(&api::LocPositions { positions })
        })
        // Answered at once from the last check: main tells hung (no answer) from
        // degraded (an answer saying `db_down`) only if the answer never waits.
        .health(move || {
            let db = health.clone();
            async move { db.status().to_owned() }
        })
        .task(move |_bus, shutdown| async move {
            // Migrate as soon as the database answers, without waiting for a
            // request; then check it every second for `$health`.
            let mut logged = false;
            let mut migrated = false;
            loop {
                if !migrated {
                    match migrate
                        .ensure_schema(switchboard_bus::proto::now_ms() + 5_000)
                        .await
                    {
                        Ok(()) => migrated = true,
                        Err(e) if !logged => {
                            tracing::warn!(error = %e, "database not ready; retrying every second");
                            logged = true;
                        }
                        Err(_) => {}
                    }
                }
                let before = migrate.status();
                let now = migrate.check().await;
                if now != before {
                    tracing::info!(from = before, to = now, "database status");
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        })
}

/// An empty MessagePack map (`{}`), the reply of ops that return nothing.
fn empty_map() -> std::collections::BTreeMap<String, u8> {
    std::collections::BTreeMap::new()
}
