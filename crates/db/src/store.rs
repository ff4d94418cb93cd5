//! The database operations: pool, retries within the deadline, group commit.

use mysql_async::prelude::*;
use mysql_async::{Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, TxOpts, Value};
use std::future::Future;
use std::time::Duration;
use switchboard_bus::proto::{self, api};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::error::{is_transient, DbError};
use crate::{migrations, Settings};
use std::collections::HashMap;

/// Longest room or zone name the schema holds.
pub const MAX_NAME: usize = 64;
/// Longest user id the schema holds.
pub const MAX_USER: usize = 128;
/// Longest chat text the db accepts (the chat service's own limit is lower).
pub const MAX_TEXT: usize = 16 * 1024;
/// Largest history page.
pub const MAX_HISTORY: u32 = 200;

struct SaveJob {
    msg: api::ChatSave,
    trace: String,
    deadline: u64,
    tx: oneshot::Sender<Result<Saved, DbError>>,
}

/// A stored message's `seq`, and whether it was stored before (same user and
/// idempotency key).
pub type Saved = (u64, bool);

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
        tokio::spawn(group_commit(db.clone(), rx, settings.max_batch.max(1)));
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

    /// Stores a chat message; returns its sequence number once committed. Messages
    /// arriving together are committed in one transaction (group commit).
    ///
    /// # Errors
    ///
    /// `Invalid` past the schema's limits, `Unavailable` when the database does not
    /// commit before `deadline`.
    pub async fn chat_save(
        &self,
        msg: api::ChatSave,
        trace: &str,
        deadline: u64,
    ) -> Result<Saved, DbError> {
        check_name("room", &msg.room)?;
        if let Some(key) = &msg.idempotency_key {
            if key.is_empty() || key.len() > api::MAX_IDEMPOTENCY_KEY {
                return Err(DbError::Invalid(format!(
                    "idempotency key must be 1 to {} bytes",
                    api::MAX_IDEMPOTENCY_KEY
                )));
            }
        }
        check_user(&msg.user)?;
        if msg.text.len() > MAX_TEXT {
            return Err(DbError::Invalid(format!(
                "text longer than {MAX_TEXT} bytes"
            )));
        }
        self.ensure_schema(deadline).await?;
        let (tx, rx) = oneshot::channel();
        let job = SaveJob {
            msg,
            trace: trace.chars().take(64).collect(),
            deadline,
            tx,
        };
        self.saves
            .send(job)
            .await
            .map_err(|_| DbError::Unavailable("group commit stopped".into()))?;
        rx.await
            .map_err(|_| DbError::Unavailable("group commit stopped".into()))?
    }

    /// A page of a room's messages, newest first.
    ///
    /// # Errors
    ///
    /// As [`Db::chat_save`].
    pub async fn chat_history(
        &self,
        q: &api::ChatHistory,
        deadline: u64,
    ) -> Result<Vec<api::ChatMessage>, DbError> {
        check_name("room", &q.room)?;
        let limit = q.limit.clamp(1, MAX_HISTORY);
        let before = q.before.unwrap_or(i64::MAX as u64).min(i64::MAX as u64);
        self.ensure_schema(deadline).await?;
        let rows: Vec<(u64, String, String, u64)> = retry(deadline, "chat.history", || async {
            let mut conn = self.pool.get_conn().await?;
            conn.exec(
                "SELECT seq, user_id, text, ts FROM messages WHERE room = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                (&q.room, before, limit),
            )
            .await
        })
        .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, user, text, ts)| api::ChatMessage {
                seq,
                user,
                text,
                ts,
            })
            .collect())
    }

    /// Upserts positions (a position older than the stored one is ignored: latest
    /// wins) and deletes the users that left, in one transaction.
    ///
    /// # Errors
    ///
    /// As [`Db::chat_save`].
    pub async fn loc_save(&self, save: &api::LocSave, deadline: u64) -> Result<(), DbError> {
        for p in &save.positions {
            check_name("zone", &p.zone)?;
            check_user(&p.user)?;
            if !p.x.is_finite() || !p.y.is_finite() {
                return Err(DbError::Invalid("coordinates must be finite".into()));
            }
        }
        for g in &save.gone {
            check_name("zone", &g.zone)?;
            check_user(&g.user)?;
        }
        if save.positions.is_empty() && save.gone.is_empty() {
            return Ok(());
        }
        self.ensure_schema(deadline).await?;
        retry(deadline, "loc.save", || async {
            let mut conn = self.pool.get_conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await?;
            // Chunks keep each statement well under the placeholder limit.
            for chunk in save.positions.chunks(1_000) {
                let rows = vec!["(?,?,?,?,?)"; chunk.len()].join(",");
                let sql = format!(
                    "INSERT INTO positions (zone, user_id, x, y, ts) VALUES {rows} \
                     ON DUPLICATE KEY UPDATE \
                     x = IF(VALUES(ts) >= ts, VALUES(x), x), \
                     y = IF(VALUES(ts) >= ts, VALUES(y), y), \
                     ts = GREATEST(ts, VALUES(ts))"
                );
                let params: Vec<Value> = chunk
                    .iter()
                    .flat_map(|p| {
                        [
                            p.zone.as_str().into(),
                            p.user.as_str().into(),
                            p.x.into(),
                            p.y.into(),
                            p.ts.into(),
                        ]
                    })
                    .collect();
                tx.exec_drop(sql, params).await?;
            }
            for g in &save.gone {
                tx.exec_drop(
                    "DELETE FROM positions WHERE zone = ? AND user_id = ?",
                    (&g.zone, &g.user),
                )
                .await?;
            }
            tx.commit().await
        })
        .await
    }

    /// A zone's last known positions.
    ///
    /// # Errors
    ///
    /// As [`Db::chat_save`].
    pub async fn loc_load(&self, zone: &str, deadline: u64) -> Result<Vec<api::Position>, DbError> {
        check_name("zone", zone)?;
        self.ensure_schema(deadline).await?;
        let rows: Vec<(String, f64, f64, u64)> = retry(deadline, "loc.load", || async {
            let mut conn = self.pool.get_conn().await?;
            conn.exec(
                "SELECT user_id, x, y, ts FROM positions WHERE zone = ?",
                (zone,),
            )
            .await
        })
        .await?;
        Ok(rows
            .into_iter()
            .map(|(user, x, y, ts)| api::Position {
                zone: zone.to_owned(),
                user,
                x,
                y,
                ts,
            })
            .collect())
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        let _ = self.pool.clone().disconnect().await;
    }
}

/// Group commit: everything that queued up while the previous transaction
/// committed goes into the next one, as one multi-row INSERT … RETURNING.
async fn group_commit(db: std::sync::Arc<Db>, mut rx: mpsc::Receiver<SaveJob>, max_batch: usize) {
    let mut batch: Vec<SaveJob> = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        batch.retain(|job| !job.tx.is_closed());
        if batch.is_empty() {
            continue;
        }
        let deadline = batch.iter().map(|j| j.deadline).max().unwrap_or(0);
        let traces: Vec<&str> = batch.iter().map(|j| j.trace.as_str()).collect();
        tracing::debug!(rows = batch.len(), traces = ?traces, "INSERT INTO messages … RETURNING seq");
        let result = retry(deadline, "chat.save", || insert_messages(&db.pool, &batch)).await;
        match result {
            Ok(seqs) if seqs.len() == batch.len() && seqs.iter().all(|(seq, _)| *seq > 0) => {
                for (job, saved) in batch.drain(..).zip(seqs) {
                    let _ = job.tx.send(Ok(saved));
                }
            }
            Ok(seqs) => {
                tracing::error!(
                    rows = batch.len(),
                    returned = seqs.len(),
                    "INSERT RETURNING gave the wrong number of rows"
                );
                for job in batch.drain(..) {
                    let _ = job.tx.send(Err(DbError::Query(
                        "insert returned the wrong number of rows".into(),
                    )));
                }
            }
            Err(e) => {
                for job in batch.drain(..) {
                    let _ = job.tx.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Inserts a batch in one transaction; returns each job's `seq` and whether it
/// was a duplicate. Jobs with an idempotency key already stored (or repeated in
/// the batch) insert nothing and get the stored message's `seq`. A concurrent
/// transaction storing the same key first makes the INSERT fail on the unique key
/// (1062, retried: the lookup then finds it), so a key is never stored twice.
async fn insert_messages(pool: &Pool, batch: &[SaveJob]) -> Result<Vec<Saved>, mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    let mut tx = conn.start_transaction(TxOpts::default()).await?;
    let keyed: Vec<(&str, &str)> = batch
        .iter()
        .filter_map(|j| Some((j.msg.user.as_str(), j.msg.idempotency_key.as_deref()?)))
        .collect();
    let mut known: HashMap<(String, String), u64> = HashMap::new();
    if !keyed.is_empty() {
        let pairs = vec!["(?,?)"; keyed.len()].join(",");
        let sql = format!(
            "SELECT user_id, idem_key, seq FROM messages WHERE (user_id, idem_key) IN ({pairs})"
        );
        let params: Vec<Value> = keyed
            .iter()
            .flat_map(|(u, k)| [(*u).into(), (*k).into()])
            .collect();
        let rows: Vec<(String, String, u64)> = tx.exec(sql, params).await?;
        known.extend(rows.into_iter().map(|(u, k, seq)| ((u, k), seq)));
    }
    // Which jobs insert a row; the others copy a seq (stored, or earlier in batch).
    enum Plan {
        Insert,
        Stored(u64),
        SameAs(usize),
    }
    let mut first: HashMap<(&str, &str), usize> = HashMap::new();
    let plans: Vec<Plan> = batch
        .iter()
        .enumerate()
        .map(|(i, j)| match j.msg.idempotency_key.as_deref() {
            None => Plan::Insert,
            Some(k) => {
                let user = j.msg.user.as_str();
                if let Some(&seq) = known.get(&(user.to_owned(), k.to_owned())) {
                    Plan::Stored(seq)
                } else if let Some(&at) = first.get(&(user, k)) {
                    Plan::SameAs(at)
                } else {
                    first.insert((user, k), i);
                    Plan::Insert
                }
            }
        })
        .collect();
    let inserts: Vec<&SaveJob> = batch
        .iter()
        .zip(&plans)
        .filter(|(_, p)| matches!(p, Plan::Insert))
        .map(|(j, _)| j)
        .collect();
    let mut seqs: Vec<u64> = Vec::new();
    if !inserts.is_empty() {
        let rows = vec!["(?,?,?,?,?,?)"; inserts.len()].join(",");
        let sql = format!(
            "INSERT INTO messages (room, user_id, text, ts, trace, idem_key) VALUES {rows} RETURNING seq"
        );
        let params: Vec<Value> = inserts
            .iter()
            .flat_map(|j| {
                [
                    j.msg.room.as_str().into(),
                    j.msg.user.as_str().into(),
                    j.msg.text.as_str().into(),
                    j.msg.ts.into(),
                    j.trace.as_str().into(),
                    j.msg.idempotency_key.as_deref().into(),
                ]
            })
            .collect();
        seqs = tx.exec(sql, params).await?;
    }
    tx.commit().await?;
    let mut inserted = seqs.into_iter();
    let mut out: Vec<Saved> = Vec::with_capacity(batch.len());
    for plan in &plans {
        let saved = match plan {
            Plan::Insert => (inserted.next().unwrap_or(0), false),
            Plan::Stored(seq) => (*seq, true),
            Plan::SameAs(at) => (out[*at].0, true),
        };
        out.push(saved);
    }
    Ok(out)
}

/// Runs `op` until it succeeds, fails for good, or `deadline` (ms since the epoch)
/// passes; transient failures are retried with backoff (20 ms doubling to 500 ms).
async fn retry<T, F, Fut>(deadline: u64, what: &str, mut op: F) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, mysql_async::Error>>,
{
    let mut backoff = Duration::from_millis(20);
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
                tokio::time::sleep(backoff.min(left)).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            Ok(Err(e)) => {
                tracing::error!(op = what, error = %e, "database error");
                return Err(DbError::Query(e.to_string()));
            }
        }
    }
    Err(DbError::Unavailable(format!("{what}: {last}")))
}

fn check_name(what: &str, name: &str) -> Result<(), DbError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(DbError::Invalid(format!(
            "{what} must be 1 to {MAX_NAME} bytes"
        )));
    }
    Ok(())
}

fn check_user(user: &str) -> Result<(), DbError> {
    if user.is_empty() || user.len() > MAX_USER {
        return Err(DbError::Invalid(format!(
            "user must be 1 to {MAX_USER} bytes"
        )));
    }
    Ok(())
}
