//! Loc's operations on the bus (`loc.save`, `loc.load`) and their SQL: last
//! known positions, saved and loaded.

use super::*;
use std::sync::Arc;
use switchboard_bus::proto::api::db_ops;
use switchboard_bus::{Request, Service};

/// Registers loc's ops on the db service.
pub fn ops(service: Service, db: &Arc<Db>) -> Service {
    service
        .handle_with(db_ops::LOC_SAVE, db, |req: Request, db| async move {
            let save: api::LocSave = req.decode()?;
            db.loc_save(&save, req.env.deadline).await?;
            // An empty map (`{}`): the reply of an op that returns nothing.
            Request::encode(&std::collections::BTreeMap::<String, u8>::new())
        })
        .handle_with(db_ops::LOC_LOAD, db, |req: Request, db| async move {
            let q: api::LocLoad = req.decode()?;
            let limit = q
                .limit
                .unwrap_or(api::LOC_LOAD_PAGE_MAX)
                .clamp(1, api::LOC_LOAD_PAGE_MAX);
            // One more than the page says whether another page follows.
            let mut positions = db
                .loc_load(&q.zone, q.after.as_deref(), limit + 1, req.env.deadline)
                .await?;
            let more = positions.len() > limit as usize;
            positions.truncate(limit as usize);
            Request::encode(&api::LocPositions { positions, more })
        })
}

impl Db {
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

    /// A zone's last known positions, by user: at most `limit`, those after
    /// user `after` when given.
    ///
    /// # Errors
    ///
    /// As [`Db::chat_save`].
    pub async fn loc_load(
        &self,
        zone: &str,
        after: Option<&str>,
        limit: u32,
        deadline: u64,
    ) -> Result<Vec<api::Position>, DbError> {
        check_name("zone", zone)?;
        if let Some(after) = after {
            check_user(after)?;
        }
        self.ensure_schema(deadline).await?;
        let rows: Vec<(String, f64, f64, u64)> = retry(deadline, "loc.load", || async {
            let mut conn = self.pool.get_conn().await?;
            // The primary key (zone, user_id) orders and bounds the page.
            conn.exec(
                "SELECT user_id, x, y, ts FROM positions WHERE zone = ? AND user_id > ? \
                 ORDER BY user_id LIMIT ?",
                (zone, after.unwrap_or(""), limit),
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
}
