//! The database operations: pool, schema, health, retries within the deadline;
//! one module per domain (a new service with persistence adds its own).
//!
//! # Layout
//!
//! - this file: [`Db`], its pool and schema, health, `retry`, name checks.
//! - [`chat`]: `chat.save`/`chat.history`: messages (group commit, idempotency
//!   keys) and history.
//! - [`loc`]: `loc.save`/`loc.load`: positions.

pub mod chat;
pub mod loc;

use mysql_async::prelude::*;
use mysql_async::{Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, TxOpts, Value};
use std::future::Future;
use std::time::Duration;
use switchboard_bus::proto::{self, api};
use switchboard_bus::svc::Backoff;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::error::{is_transient, DbError};
use crate::{migrations, Settings};
use std::collections::HashMap;

// The limits, from where they are defined: names (`VARCHAR(64)`) and users
// (`VARCHAR(128)`) in proto, text and history pages next to the chat types.
use proto::api::{HISTORY_MAX as MAX_HISTORY, MAX_TEXT_CHARS};
use proto::{MAX_NAME_LEN as MAX_NAME, MAX_USER_LEN as MAX_USER};

struct SaveJob {
    msg: api::ChatSave,
    trace: String,
    deadline: u64,
    tx: oneshot::Sender<Result<api::ChatSaved, DbError>>,
}

/// The database: a pool, the schema state, and the group-commit queue.
pub struct Db {
    pool: Pool,
    /// Opts without a database, to create it.
    server: Opts,
    database: String,
    migrated: Mutex<bool>,
    /// The last [`Db::check`] result, what `$health` answers at once.
    status: std::sync::Mutex<&'static str>,
    saves: mpsc::Sender<SaveJob>,
}

impl Db {
    /// Builds the pool (no connection is made yet) and starts the group-commit
    /// task on the current runtime.
    ///
    /// # Errors
    ///
    /// When the URL is not a valid `mysql://` URL with a database name.
    pub fn new(settings: &Settings) -> anyhow::Result<std::sync::Arc<Self>> {
        let opts = Opts::from_url(&settings.database_url)
            .map_err(|e| anyhow::anyhow!("DATABASE_URL: {e}"))?;
        let database = opts
            .db_name()
            .filter(|d| !d.is_empty())
            .ok_or_else(|| anyhow::anyhow!("DATABASE_URL names no database"))?
            .to_owned();
        if !database
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            anyhow::bail!("database name {database:?}: use letters, digits and _ only");
        }
        let constraints = PoolConstraints::new(0, settings.pool_max.max(1))
            .ok_or_else(|| anyhow::anyhow!("pool_max must be at least 1"))?;
        let pool_opts = PoolOpts::default()
            .with_constraints(constraints)
            .with_inactive_connection_ttl(Duration::from_secs(60));
        let pool = Pool::new(OptsBuilder::from_opts(opts.clone()).pool_opts(pool_opts));
        let server = Opts::from(OptsBuilder::from_opts(opts).db_name(None::<String>));
        // The queue holds what arrives while one transaction commits: that is the
        // next batch. Its bound is the service's concurrency many times over.
        let (saves, rx) = mpsc::channel(settings.max_batch * 8);
        let db = std::sync::Arc::new(Self {
            pool,
            server,
            database,
            migrated: Mutex::new(false),
            status: std::sync::Mutex::new("starting"),
            saves,
        });
        tokio::spawn(chat::group_commit(
            db.clone(),
            rx,
            settings.max_batch.max(1),
        ));
        Ok(db)
    }

    /// Creates the database if missing and runs pending migrations, once.
    ///
    /// # Errors
    ///
    /// `Unavailable` when the database cannot be reached before `deadline`.
    pub async fn ensure_schema(&self, deadline: u64) -> Result<(), DbError> {
        let mut done = self.migrated.lock().await;
        if *done {
            return Ok(());
        }
        let create = format!(
            "CREATE DATABASE IF NOT EXISTS `{}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
            self.database
        );
        retry(deadline, "create database", || async {
            let mut conn = mysql_async::Conn::new(self.server.clone()).await?;
            conn.query_drop(&create).await?;
            conn.disconnect().await
        })
        .await?;
        let ran = retry(deadline, "migrate", || async {
            let mut conn = self.pool.get_conn().await?;
            migrations::run(&mut conn).await
        })
        .await?;
        tracing::info!(database = %self.database, applied = ran, "schema up to date");
        *done = true;
        Ok(())
    }

    /// Pings the database (a `SELECT 1`, one second at most) and records the
    /// result for [`Db::status`]: `"ok"`, `"migrating"` (reachable, schema not
    /// current yet) or `"db_down"`.
    pub async fn check(&self) -> &'static str {
        let ping = retry(proto::now_ms() + 1_000, "ping", || async {
            let mut conn = self.pool.get_conn().await?;
            conn.query_drop("SELECT 1").await
        })
        .await;
        // A migration in progress holds the lock: that is "migrating" too.
        let migrated = self.migrated.try_lock().is_ok_and(|done| *done);
        let status = match (ping, migrated) {
            (Ok(()), true) => "ok",
            (Ok(()), false) => "migrating",
            (Err(_), _) => "db_down",
        };
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
        status
    }

    /// The last recorded status, at once: a health check never waits on the
    /// database (a dependency that is down is `degraded`, not hung).
    pub fn status(&self) -> &'static str {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        let _ = self.pool.clone().disconnect().await;
    }
}

/// The waits between tries of a transient failure: 20 ms doubling to 500 ms.
const RETRY: Backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));

/// Runs `op` until it succeeds, fails for good, or `deadline` (ms since the epoch)
/// passes; transient failures are retried with backoff ([`RETRY`]).
pub(super) async fn retry<T, F, Fut>(deadline: u64, what: &str, mut op: F) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, mysql_async::Error>>,
{
    let mut last = String::from("no attempt before the deadline");
    for attempt in 0u32.. {
        let left = Duration::from_millis(deadline.saturating_sub(proto::now_ms()));
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, op()).await {
            Err(_) => {
                last = "no answer before the deadline".into();
                break;
            }
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if is_transient(&e) => {
                if attempt == 0 {
                    tracing::warn!(op = what, error = %e, "transient database error; retrying within the deadline");
                }
                last = e.to_string();
                tokio::time::sleep(RETRY.delay(attempt).min(left)).await;
            }
            Ok(Err(e)) => {
                tracing::error!(op = what, error = %e, "database error");
                return Err(DbError::Query(e.to_string()));
            }
        }
    }
    Err(DbError::Unavailable(format!("{what}: {last}")))
}

pub(super) fn check_name(what: &str, name: &str) -> Result<(), DbError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(DbError::Invalid(format!(
            "{what} must be 1 to {MAX_NAME} bytes"
        )));
    }
    Ok(())
}

pub(super) fn check_user(user: &str) -> Result<(), DbError> {
    if user.is_empty() || user.len() > MAX_USER {
        return Err(DbError::Invalid(format!(
            "user must be 1 to {MAX_USER} bytes"
        )));
    }
    Ok(())
}
