//! Chat's operations on the bus (`chat.save`, `chat.history`) and their SQL:
//! saving messages (group commit, idempotency keys) and history.

use super::*;
use std::sync::Arc;
use switchboard_bus::proto::api::db_ops;
use switchboard_bus::{Request, Service};

/// Registers chat's ops on the db service.
pub fn ops(service: Service, db: &Arc<Db>) -> Service {
    service
        .handle_with(db_ops::CHAT_SAVE, db, |req: Request, db| async move {
            let msg: api::ChatSave = req.decode()?;
            let saved = db.chat_save(msg, req.trace(), req.env.deadline).await?;
            Request::encode(&saved)
        })
        .handle_with(db_ops::CHAT_HISTORY, db, |req: Request, db| async move {
            let q: api::ChatHistory = req.decode()?;
            let messages = db.chat_history(&q, req.env.deadline).await?;
            Request::encode(&api::ChatMessages { messages })
        })
}

impl Db {
    /// Stores a chat message; returns its sequence number once committed. Messages
    /// arriving together are committed in one statement (group commit).
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
    ) -> Result<api::ChatSaved, DbError> {
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
        if msg.text.chars().count() > MAX_TEXT_CHARS {
            return Err(DbError::Invalid(format!(
                "text longer than {MAX_TEXT_CHARS} characters"
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

    /// A page of a room's messages: newest first, older than `before` if set;
    /// or, with `after`, the messages newer than it, oldest first (a client
    /// catching up on what it missed).
    ///
    /// # Errors
    ///
    /// `before` and `after` together: bad request. Otherwise as [`Db::chat_save`].
    pub async fn chat_history(
        &self,
        q: &api::ChatHistory,
        deadline: u64,
    ) -> Result<Vec<api::ChatMessage>, DbError> {
        check_name("room", &q.room)?;
        let limit = q.limit.clamp(1, MAX_HISTORY);
        // Sequence numbers are BIGINT UNSIGNED AUTO_INCREMENT, below i64::MAX.
        let (sql, bound) = match (q.before, q.after) {
            (Some(_), Some(_)) => {
                return Err(DbError::Invalid(
                    "history takes `before` or `after`, not both".into(),
                ))
            }
            (_, Some(after)) => (
                "SELECT seq, user_id, text, ts FROM messages WHERE room = ? AND seq > ? ORDER BY seq ASC LIMIT ?",
                after.min(i64::MAX as u64),
            ),
            (before, None) => (
                "SELECT seq, user_id, text, ts FROM messages WHERE room = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                before.unwrap_or(i64::MAX as u64).min(i64::MAX as u64),
            ),
        };
        self.ensure_schema(deadline).await?;
        let rows: Vec<(u64, String, String, u64)> = retry(deadline, "chat.history", || async {
            let mut conn = self.pool.get_conn().await?;
            conn.exec(sql, (&q.room, bound, limit)).await
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
}

/// Group commit: everything that queued up while the previous transaction
/// committed goes into the next one, as one multi-row INSERT … RETURNING.
pub(super) async fn group_commit(
    db: std::sync::Arc<Db>,
    mut rx: mpsc::Receiver<SaveJob>,
    max_batch: usize,
) {
    let mut batch: Vec<SaveJob> = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        batch.retain(|job| !job.tx.is_closed());
        if batch.is_empty() {
            continue;
        }
        let deadline = batch.iter().map(|j| j.deadline).max().unwrap_or(0);
        let traces: Vec<&str> = batch.iter().map(|j| j.trace.as_str()).collect();
        tracing::debug!(rows = batch.len(), traces = ?traces, "INSERT INTO messages … RETURNING seq");
        let timer = switchboard_bus::svc::trace::Timer::start();
        let result = retry(deadline, "chat.save", || insert_messages(&db.pool, &batch)).await;
        // One span per message: its share of the statement is the whole of it.
        let outcome = if result.is_ok() { "ok" } else { "unavailable" };
        let elapsed = timer.elapsed();
        let name = format!(
            "sql INSERT INTO messages … RETURNING seq ({} row{}, one statement)",
            batch.len(),
            if batch.len() == 1 { "" } else { "s" }
        );
        for job in &batch {
            timer.finish_after(elapsed, &job.trace, "db", format_args!("{name}"), outcome);
        }
        crate::metrics::commit(batch.len(), elapsed);
        match result {
            Ok(seqs) if seqs.len() == batch.len() && seqs.iter().all(|saved| saved.seq > 0) => {
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

/// Inserts a batch as one multi-row INSERT (one statement: all rows or none);
/// returns each job's `seq` and whether it was a duplicate. Jobs with an
/// idempotency key already stored (or repeated in the batch) insert nothing and
/// get the stored message's `seq`. A concurrent statement storing the same key
/// after the lookup makes the INSERT fail on the unique key (1062, retried: the
/// lookup then finds it), so a key is never stored twice.
///
/// No explicit transaction: the unique key, not a transaction, is what keeps a
/// key from being stored twice, and the INSERT commits as it runs. That is two
/// round trips to the server instead of four (BEGIN, lookup, INSERT, COMMIT),
/// and the group commit's rate is one batch per round of them.
pub(super) async fn insert_messages(
    pool: &Pool,
    batch: &[SaveJob],
) -> Result<Vec<api::ChatSaved>, mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
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
        let rows: Vec<(String, String, u64)> = conn.exec(sql, params).await?;
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
        seqs = conn.exec(sql, params).await?;
    }
    let mut inserted = seqs.into_iter();
    let mut out: Vec<api::ChatSaved> = Vec::with_capacity(batch.len());
    for plan in &plans {
        let (seq, duplicate) = match plan {
            Plan::Insert => (inserted.next().unwrap_or(0), false),
            Plan::Stored(seq) => (*seq, true),
            Plan::SameAs(at) => (out[*at].seq, true),
        };
        let saved = api::ChatSaved { seq, duplicate };
        out.push(saved);
    }
    Ok(out)
}
