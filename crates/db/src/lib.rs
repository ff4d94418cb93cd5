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
//! - [`store`]: [`store::Db`], the pool, retries; one module per domain with its
//!   ops and its SQL (`store::chat`: group commit, idempotency; `store::loc`).
//! - [`migrations`]: the schema, versioned.
//! - [`error`]: [`error::DbError`] and what counts as transient.
//! - `metrics`: the db's own metrics (`sb_db_commit_*`).
//! - this file: [`Settings`] and [`service`], the bus service.

pub mod error;
mod metrics;
pub mod migrations;
pub mod store;

use std::sync::Arc;
use std::time::Duration;
use switchboard_bus::Service;

pub use store::Db;

/// db service settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `mysql://user:password@host:port/database`; the database is created if missing.
    pub database_url: String,
    /// Connections in the pool at most.
    pub pool_max: usize,
    /// Messages stored by one multi-row `INSERT` at most (group commit).
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
    let service = Service::new("db").version(env!("CARGO_PKG_VERSION"));
    // One call per domain: each registers its ops next to its SQL.
    let service = store::chat::ops(service, &db);
    let service = store::loc::ops(service, &db);
    service
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
