//! Versioned schema migrations, run at start (and again whenever the database
//! comes back before they have run). Each runs once: applied versions are recorded
//! in `schema_migrations`, and a named lock keeps two db processes from migrating
//! at the same time. A fresh database and an existing one end at the same schema.

use mysql_async::prelude::*;

/// One migration: a version (strictly increasing), a name, its statements.
pub struct Migration {
    /// Version number.
    pub version: u32,
    /// What it does.
    pub name: &'static str,
    /// DDL statements, run in order.
    pub statements: &'static [&'static str],
}

/// Every migration, oldest first. Never edit one that has shipped: add another.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "chat messages",
        statements: &["CREATE TABLE IF NOT EXISTS messages (
            seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            room VARCHAR(64) NOT NULL,
            user_id VARCHAR(128) NOT NULL,
            text TEXT NOT NULL,
            ts BIGINT UNSIGNED NOT NULL,
            trace VARCHAR(64) NOT NULL DEFAULT '',
            KEY room_seq (room, seq)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"],
    },
    Migration {
        version: 2,
        name: "last known positions",
        statements: &["CREATE TABLE IF NOT EXISTS positions (
            zone VARCHAR(64) NOT NULL,
            user_id VARCHAR(128) NOT NULL,
            x DOUBLE NOT NULL,
            y DOUBLE NOT NULL,
            ts BIGINT UNSIGNED NOT NULL,
            PRIMARY KEY (zone, user_id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"],
    },
    Migration {
        version: 3,
        name: "chat idempotency keys",
        statements: &["ALTER TABLE messages
            ADD COLUMN IF NOT EXISTS idem_key VARCHAR(64) NULL,
            ADD UNIQUE KEY IF NOT EXISTS user_idem (user_id, idem_key)"],
    },
];

/// Applies the migrations that have not run; returns how many ran.
///
/// # Errors
///
/// The first failing statement (the migration is not recorded; it runs again next
/// time, which is why every statement is idempotent).
pub async fn run(conn: &mut mysql_async::Conn) -> Result<usize, mysql_async::Error> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INT UNSIGNED NOT NULL PRIMARY KEY,
            name VARCHAR(200) NOT NULL,
            applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        ) ENGINE=InnoDB",
    )
    .await?;
    let locked: Option<Option<i64>> = conn
        .query_first("SELECT GET_LOCK('switchboard_migrations', 30)")
        .await?;
    if locked.flatten() != Some(1) {
        return Err(mysql_async::Error::Other(
            "could not take the migration lock within 30 s".into(),
        ));
    }
    let result = apply(conn).await;
    let _ = conn
        .query_drop("SELECT RELEASE_LOCK('switchboard_migrations')")
        .await;
    result
}

async fn apply(conn: &mut mysql_async::Conn) -> Result<usize, mysql_async::Error> {
    let applied: Vec<u32> = conn.query("SELECT version FROM schema_migrations").await?;
    let mut ran = 0;
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        for statement in m.statements {
            conn.query_drop(*statement).await?;
        }
        conn.exec_drop(
            "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
            (m.version, m.name),
        )
        .await?;
        tracing::info!(version = m.version, name = m.name, "migration applied");
        ran += 1;
    }
    Ok(ran)
}
