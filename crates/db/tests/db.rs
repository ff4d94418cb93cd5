//! The db service against a real MariaDB (127.0.0.1:3306; scripts/test.sh makes
//! sure one runs). Each test has a database of its own.

// Test code is exempt from the workspace's 120-line function limit.
#![allow(clippy::too_many_lines)]

use mysql_async::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_bus::proto::{self, api, ErrorCode};
use switchboard_bus::CallOptions;
use switchboard_db::error::DbError;
use switchboard_db::{Db, Settings};
use switchboard_testkit::{client, trace_init, wait_ready, TestBroker, TestDatabase};
use tokio_util::sync::CancellationToken;

fn settings(db: &TestDatabase) -> Settings {
    Settings {
        database_url: db.url.clone(),
        ..Settings::default()
    }
}

fn soon() -> u64 {
    proto::now_ms() + 10_000
}

async fn raw(db: &TestDatabase) -> mysql_async::Conn {
    mysql_async::Conn::from_url(&db.url)
        .await
        .expect("connect to the test database")
}

fn msg(room: &str, user: &str, text: &str) -> api::ChatSave {
    api::ChatSave {
        room: room.into(),
        user: user.into(),
        text: text.into(),
        ts: proto::now_ms(),
        idempotency_key: None,
    }
}

#[tokio::test]
async fn fresh_database_is_created_and_migrated_once() {
    trace_init();
    let tdb = TestDatabase::new();
    let db = Db::new(&settings(&tdb)).unwrap();
    db.ensure_schema(soon()).await.unwrap();
    // A second process (or restart) on the same database runs nothing again.
    let again = Db::new(&settings(&tdb)).unwrap();
    again.ensure_schema(soon()).await.unwrap();
    let mut conn = raw(&tdb).await;
    let versions: Vec<u32> = conn
        .query("SELECT version FROM schema_migrations ORDER BY version")
        .await
        .unwrap();
    assert_eq!(versions, vec![1, 2, 3]);
    let tables: Vec<String> = conn.query("SHOW TABLES").await.unwrap();
    for t in ["messages", "positions", "schema_migrations"] {
        assert!(tables.iter().any(|x| x == t), "{t} in {tables:?}");
    }
    assert_eq!(db.check().await, "ok");
    assert_eq!(db.status(), "ok");
}

#[tokio::test]
async fn concurrent_saves_are_group_committed_and_stored_verbatim() {
    trace_init();
    let tdb = TestDatabase::new();
    let db = Db::new(&settings(&tdb)).unwrap();
    db.ensure_schema(soon()).await.unwrap();
    let nasty = [
        "'; DROP TABLE messages; --",
        "Robert'); DELETE FROM positions WHERE ('1'='1",
        "back\\slash \\' \" `tick` %_ \0 nul",
        "ünïcødé 🚀 ✓",
    ];
    let mut tasks = Vec::new();
    for i in 0..400 {
        let db = db.clone();
        let text = format!("{} #{i}", nasty[i % nasty.len()]);
        tasks.push(tokio::spawn(async move {
            let seq = db
                .chat_save(msg("lobby", "ada", &text), "trace", soon())
                .await
                .unwrap()
                .seq;
            (seq, text)
        }));
    }
    let mut saved = Vec::new();
    for t in tasks {
        saved.push(t.await.unwrap());
    }
    let mut seqs: Vec<u64> = saved.iter().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 400, "every message has its own seq");

    let mut conn = raw(&tdb).await;
    for (seq, text) in &saved {
        let stored: Option<String> = conn
            .exec_first("SELECT text FROM messages WHERE seq = ?", (seq,))
            .await
            .unwrap();
        assert_eq!(
            stored.as_deref(),
            Some(text.as_str()),
            "seq {seq} stored verbatim"
        );
    }
    let tables: Vec<String> = conn.query("SHOW TABLES").await.unwrap();
    assert_eq!(tables.len(), 3, "nothing was dropped: {tables:?}");
}

#[tokio::test]
async fn history_is_paged_newest_first() {
    trace_init();
    let tdb = TestDatabase::new();
    let db = Db::new(&settings(&tdb)).unwrap();
    let mut seqs = Vec::new();
    for i in 0..25 {
        seqs.push(
            db.chat_save(msg("books", "bo", &format!("m{i}")), "t", soon())
                .await
                .unwrap()
                .seq,
        );
        db.chat_save(msg("other", "bo", "elsewhere"), "t", soon())
            .await
            .unwrap();
    }
    let page = db
        .chat_history(
            &api::ChatHistory {
                room: "books".into(),
                limit: 10,
                before: None,
                after: None,
            },
            soon(),
        )
        .await
        .unwrap();
    assert_eq!(page.len(), 10);
    assert_eq!(page[0].text, "m24");
    assert!(page.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
    let next = db
        .chat_history(
            &api::ChatHistory {
                room: "books".into(),
                limit: 10,
                before: Some(page[9].seq),
                after: None,
            },
            soon(),
        )
        .await
        .unwrap();
    assert_eq!(next[0].text, "m14");
    let all = db
        .chat_history(
            &api::ChatHistory {
                room: "books".into(),
                limit: 1000,
                before: None,
                after: None,
            },
            soon(),
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 25, "limit is clamped, rooms are separate");
    // Catch-up: what came after a seq, oldest first, paged by limit.
    let q = |after: u64, limit: u32| api::ChatHistory {
        room: "books".into(),
        limit,
        before: None,
        after: Some(after),
    };
    let missed = db.chat_history(&q(seqs[19], 100), soon()).await.unwrap();
    let texts: Vec<&str> = missed.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        ["m20", "m21", "m22", "m23", "m24"],
        "oldest first, this room only"
    );
    let first = db.chat_history(&q(seqs[19], 2), soon()).await.unwrap();
    assert_eq!(first.len(), 2);
    let rest = db
        .chat_history(&q(first[1].seq, 100), soon())
        .await
        .unwrap();
    assert_eq!(rest[0].text, "m22", "pages continue from the last seq seen");
    assert!(db
        .chat_history(&q(seqs[24], 10), soon())
        .await
        .unwrap()
        .is_empty());
    assert!(db
        .chat_history(&q(u64::MAX, 10), soon())
        .await
        .unwrap()
        .is_empty());
    let both = api::ChatHistory {
        before: Some(seqs[24]),
        ..q(seqs[0], 10)
    };
    let err = db.chat_history(&both, soon()).await.unwrap_err();
    assert!(matches!(err, DbError::Invalid(_)), "{err:?}");
}

#[tokio::test]
async fn positions_latest_wins_and_leaving_deletes() {
    trace_init();
    let tdb = TestDatabase::new();
    let db = Db::new(&settings(&tdb)).unwrap();
    let pos = |user: &str, x: f64, ts: u64| api::Position {
        zone: "z1".into(),
        user: user.into(),
        x,
        y: -x,
        ts,
    };
    db.loc_save(
        &api::LocSave {
            positions: vec![pos("ann", 1.0, 100), pos("bob", 2.0, 100)],
            gone: vec![],
        },
        soon(),
    )
    .await
    .unwrap();
    // An older update loses; a newer one wins.
    db.loc_save(
        &api::LocSave {
            positions: vec![pos("ann", 9.0, 50), pos("bob", 3.0, 200)],
            gone: vec![],
        },
        soon(),
    )
    .await
    .unwrap();
    let got = db.loc_load("z1", None, 1_000, soon()).await.unwrap();
    assert_eq!(got, vec![pos("ann", 1.0, 100), pos("bob", 3.0, 200)]);
    // Pages, by user.
    assert_eq!(
        db.loc_load("z1", None, 1, soon()).await.unwrap(),
        vec![pos("ann", 1.0, 100)]
    );
    assert_eq!(
        db.loc_load("z1", Some("ann"), 1, soon()).await.unwrap(),
        vec![pos("bob", 3.0, 200)]
    );
    assert!(db
        .loc_load("z1", Some("bob"), 1, soon())
        .await
        .unwrap()
        .is_empty());
    db.loc_save(
        &api::LocSave {
            positions: vec![],
            gone: vec![api::Gone {
                zone: "z1".into(),
                user: "ann".into(),
            }],
        },
        soon(),
    )
    .await
    .unwrap();
    assert_eq!(
        db.loc_load("z1", None, 1_000, soon()).await.unwrap(),
        vec![pos("bob", 3.0, 200)]
    );
    let bad = db
        .loc_save(
            &api::LocSave {
                positions: vec![pos("nan", f64::NAN, 1)],
                gone: vec![],
            },
            soon(),
        )
        .await
        .unwrap_err();
    assert!(matches!(bad, DbError::Invalid(_)), "{bad}");
}

#[tokio::test]
async fn unreachable_database_answers_unavailable_by_the_deadline() {
    trace_init();
    // Nothing listens on port 1.
    let db = Db::new(&Settings {
        database_url: "mysql://root@127.0.0.1:1/nowhere".into(),
        ..Settings::default()
    })
    .unwrap();
    let started = Instant::now();
    let err = db
        .chat_save(msg("lobby", "ada", "hi"), "t", proto::now_ms() + 700)
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::Unavailable(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(db.check().await, "db_down");
}

#[tokio::test]
async fn db_service_serves_named_operations_over_the_bus() {
    trace_init();
    let tdb = TestDatabase::new();
    let broker = TestBroker::start();
    let db = Db::new(&settings(&tdb)).unwrap();
    let shutdown = CancellationToken::new();
    let config = switchboard_bus::Config {
        broker: broker.endpoint.clone(),
        instance: "db-test".into(),
        ..switchboard_bus::Config::default()
    };
    let svc = tokio::spawn(switchboard_db::service(Arc::clone(&db)).run(config, shutdown.clone()));
    let bus = client(&broker.endpoint, "t-client", None).await;
    assert!(wait_ready(&bus, "db-test", Duration::from_secs(10)).await);

    let body = proto::to_body(&msg("lobby", "ada", "hello")).unwrap();
    let reply = bus
        .call(
            "db",
            api::db_ops::CHAT_SAVE,
            body,
            CallOptions {
                trace: "trace-123".into(),
                ..CallOptions::default()
            },
        )
        .await
        .unwrap();
    let saved: api::ChatSaved = proto::from_body(&reply.body).unwrap();
    assert!(saved.seq >= 1);
    // The trace id reaches the stored row.
    let mut conn = raw(&tdb).await;
    let trace: Option<String> = conn
        .exec_first("SELECT trace FROM messages WHERE seq = ?", (saved.seq,))
        .await
        .unwrap();
    assert_eq!(trace.as_deref(), Some("trace-123"));

    let err = bus
        .call(
            "db",
            api::db_ops::CHAT_SAVE,
            b"\x93\x01".to_vec(),
            CallOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BadRequest);
    let err = bus
        .call(
            "db",
            "sql",
            proto::to_body("SELECT 1").unwrap(),
            CallOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownOp, "no op takes SQL");
    let health = bus
        .call("db", "$health", Vec::new(), CallOptions::default())
        .await
        .unwrap();
    let health: proto::Health = proto::from_body(&health.body).unwrap();
    assert_eq!(health.status, "ok");
    shutdown.cancel();
    svc.await.unwrap().unwrap();
}

/// Retries with the same idempotency key, concurrent and in the same group
/// commit, store each message once; every retry learns the first one's seq. The
/// same key from another user is another message.
#[tokio::test]
async fn a_key_is_stored_once_however_often_it_is_retried() {
    trace_init();
    let tdb = TestDatabase::new();
    let db = Db::new(&settings(&tdb)).unwrap();
    db.ensure_schema(soon()).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let user = if i % 2 == 0 { "ada" } else { "bob" };
            let key = format!("k{}", i % 10);
            let mut m = msg("lobby", user, &format!("{user} {key}"));
            m.idempotency_key = Some(key.clone());
            let saved = db.chat_save(m, "t", soon()).await.unwrap();
            (user, key, saved.seq, saved.duplicate)
        }));
    }
    let mut by_key = std::collections::HashMap::new();
    let mut fresh = 0;
    for t in tasks {
        let (user, key, seq, dup) = t.await.unwrap();
        fresh += usize::from(!dup);
        let first = *by_key.entry((user, key)).or_insert(seq);
        assert_eq!(first, seq, "every retry gets the same seq");
    }
    // ada has k0,k2,..,k8 and bob k1,..,k9: 10 distinct (user, key) pairs.
    assert_eq!(by_key.len(), 10);
    assert_eq!(fresh, 10, "one save per pair was not a duplicate");
    let mut conn = raw(&tdb).await;
    let rows: Option<u64> = conn
        .query_first("SELECT COUNT(*) FROM messages")
        .await
        .unwrap();
    assert_eq!(rows, Some(10));
    let mut m = msg("lobby", "ada", "too long a key");
    m.idempotency_key = Some("k".repeat(65));
    assert!(matches!(
        db.chat_save(m, "t", soon()).await,
        Err(DbError::Invalid(_))
    ));
}
