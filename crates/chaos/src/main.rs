//! `chaos`: starts the whole system under main (its own ports, its own database
//! behind a cuttable relay), drives a steady mixed WebSocket load, and injects one
//! fault after another with recovery in between. Prints one row per fault:
//! requests sent, ok, errors by code, unanswered, acknowledged `say`s missing from
//! the `messages` table, duplicates there, and the time from the fault until the
//! affected requests succeed again. Exits 0 only when every row meets its target.
//!
//! `scripts/chaos.sh` builds and runs it; `--quick` (a few faults, about a minute)
//! runs in `scripts/test.sh`.
//!
//! # Layout
//!
//! - `system`: the system under test (main, its ecosystem, the database relay)
//!   and the faults done to it.
//! - `load`: the steady WebSocket load and what became of each request.
//! - `soak`: clients churning while every process's memory is sampled.
//! - this file: the options, the fault list, the table of results.

mod load;
mod soak;
mod system;

use clap::Parser;
use load::{Book, Kind, Outcome};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use system::System;

/// The chaos run.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// A few faults and short outages (about a minute): the variant in scripts/test.sh.
    #[arg(long)]
    quick: bool,
    /// WebSocket clients of the steady load.
    #[arg(long, default_value_t = 12)]
    clients: usize,
    /// Requests per second per client.
    #[arg(long, default_value_t = 10)]
    rate: u32,
    /// MariaDB server (a database of the run's own is created and dropped);
    /// default: what scripts/ensure-mariadb.sh saved in run/mariadb.env, else
    /// mysql://root@127.0.0.1:3306.
    #[arg(long, env = "SB_TEST_MYSQL")]
    mysql: Option<String>,
    /// Write the table as Markdown to this file too.
    #[arg(long)]
    markdown: Option<std::path::PathBuf>,
    /// Instead of faults: SECS of client churn with every process's memory
    /// sampled; exit 0 when it stays flat (within 10%) after warm-up.
    #[arg(long, value_name = "SECS")]
    soak: Option<u64>,
}

/// A fault and what it must meet.
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillBroker,
    KillMain,
    Kill(&'static str),
    KillReceive,
    StopChat(u64),
    Reload(&'static str),
    DatabaseDown(u64),
    SlowReader,
}

impl Fault {
    fn name(self) -> String {
        match self {
            Fault::KillBroker => "kill -9 broker".into(),
            Fault::KillMain => "kill -9 main".into(),
            Fault::Kill(i) => format!("kill -9 {i}"),
            Fault::KillReceive => "kill -9 receive".into(),
            Fault::StopChat(s) => format!("SIGSTOP chat {s} s"),
            Fault::Reload(a) => format!("sbctl reload {a}"),
            Fault::DatabaseDown(s) => format!("MariaDB down {s} s"),
            Fault::SlowReader => "a client stops reading".into(),
        }
    }

    /// The request kinds the fault may interrupt (recovery is measured on them).
    fn affects(self) -> &'static [Kind] {
        match self {
            Fault::Kill("db") | Fault::DatabaseDown(_) => &[Kind::Say],
            Fault::Kill("loc01") | Fault::Reload("loc") => &[Kind::Move],
            Fault::Kill("chat") | Fault::StopChat(_) | Fault::Reload("chat") => {
                &[Kind::Say, Kind::Echo]
            }
            _ => &[Kind::Say, Kind::Move, Kind::Echo],
        }
    }

    /// Longest recovery allowed, ms (`None`: not measured).
    fn recovery_target_ms(self) -> Option<u64> {
        match self {
            Fault::StopChat(_) => Some(4_000), // heartbeat x liveness + 1 s
            Fault::DatabaseDown(_) => Some(5_000), // after MariaDB is back
            Fault::Reload(_) | Fault::SlowReader | Fault::KillMain => None, // no error at all
            _ => Some(3_000),
        }
    }

    /// Whether any error at all fails the row.
    fn no_errors(self) -> bool {
        matches!(self, Fault::Reload(_) | Fault::KillMain | Fault::SlowReader)
    }
}

fn faults(quick: bool) -> Vec<Fault> {
    if quick {
        return vec![
            Fault::KillBroker,
            Fault::Kill("chat"),
            Fault::KillReceive,
            Fault::Reload("chat"),
            Fault::Reload("receive"),
            Fault::DatabaseDown(5),
        ];
    }
    vec![
        Fault::KillBroker,
        Fault::KillMain,
        Fault::Kill("db"),
        Fault::Kill("chat"),
        Fault::Kill("loc01"),
        Fault::KillReceive,
        Fault::StopChat(10),
        Fault::Reload("db"),
        Fault::Reload("chat"),
        Fault::Reload("loc"),
        Fault::Reload("receive"),
        Fault::DatabaseDown(60),
        Fault::SlowReader,
    ]
}

/// One row of the table.
struct Row {
    fault: Fault,
    sent: usize,
    ok: usize,
    errors: BTreeMap<String, usize>,
    lost_with_socket: usize,
    unanswered: usize,
    acked_missing: usize,
    duplicates: usize,
    recovery_ms: Option<u64>,
    note: String,
    pass: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => std::process::exit(0),
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("chaos: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mut system = System::start(
        &args
            .mysql
            .clone()
            .unwrap_or_else(switchboard_testkit::mysql_server_url),
    )
    .await?;
    eprintln!(
        "chaos: system up in {:.1} s (run folder {})",
        started.elapsed().as_secs_f64(),
        system.path().display()
    );
    if let Some(secs) = args.soak {
        let flat = soak::run(&system, secs, args.clients).await?;
        system.stop().await;
        return Ok(flat);
    }
    let book = Arc::new(Book::default());
    let clients: Vec<_> = (0..args.clients)
        .map(|n| tokio::spawn(load::client(n, system.ws.clone(), args.rate, book.clone())))
        .collect();
    let settle = if args.quick { 4 } else { 8 };
    // Warm-up: phase 0 is not reported.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut injected = Vec::new();
    let mut notes = Vec::new();
    let mut db_errored = false;
    for (i, fault) in faults(args.quick).into_iter().enumerate() {
        let phase = i + 1;
        book.phase.store(phase, Ordering::Relaxed);
        eprintln!("chaos: {}", fault.name());
        let at = Instant::now();
        let note = inject(&mut system, fault, &mut db_errored).await?;
        // The recovery clock of a database outage starts when MariaDB is back.
        injected.push((
            fault,
            if matches!(fault, Fault::DatabaseDown(_)) {
                Instant::now()
            } else {
                at
            },
        ));
        notes.push(note);
        tokio::time::sleep(Duration::from_secs(settle)).await;
        if let Err(e) = system.wait_online(Duration::from_secs(30)).await {
            notes[i].push_str(&format!(" not all online after: {e}"));
        }
    }
    book.phase.store(usize::MAX, Ordering::Relaxed);
    book.stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(15), c).await;
    }
    let records = std::mem::take(&mut *book.records.lock().unwrap_or_else(|p| p.into_inner()));
    let stored = stored_keys(&system.db_url).await?;
    let mut rows = Vec::new();
    for (i, (fault, at)) in injected.iter().enumerate() {
        rows.push(row(
            i + 1,
            *fault,
            *at,
            &records,
            &stored,
            notes[i].clone(),
            db_errored,
        ));
    }
    let table = render(&rows, &args, started.elapsed());
    println!("{table}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &table)?;
    }
    let pass = rows.iter().all(|r| r.pass);
    let passed = rows.iter().filter(|r| r.pass).count();
    println!("chaos: {passed} passed, {} failed", rows.len() - passed);
    if !pass {
        eprintln!("chaos: logs kept in {}", system.logs().display());
        // Keep the run folder for a look.
        let dir = std::mem::replace(&mut system.dir, tempfile::tempdir()?);
        let _ = dir.keep();
    }
    system.stop().await;
    Ok(pass)
}

async fn inject(
    system: &mut System,
    fault: Fault,
    db_errored: &mut bool,
) -> anyhow::Result<String> {
    use nix::sys::signal::Signal::{SIGCONT, SIGKILL, SIGSTOP};
    use switchboard_testkit::signal_pid;
    match fault {
        Fault::KillBroker => signal_pid(system.pid("broker"), SIGKILL),
        Fault::Kill(instance) => signal_pid(system.pid(instance), SIGKILL),
        Fault::KillReceive => signal_pid(system.pid("receive"), SIGKILL),
        Fault::KillMain => {
            let before: Vec<u32> = ["broker", "db", "chat", "loc01", "loc02", "receive"]
                .iter()
                .map(|i| system.pid(i))
                .collect();
            system.kill_main();
            // As systemd's RestartSec=1 would.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let at = Instant::now();
            system.start_main().await?;
            let mut adopted = false;
            while at.elapsed() < Duration::from_secs(10) {
                let now: Vec<u32> = ["broker", "db", "chat", "loc01", "loc02", "receive"]
                    .iter()
                    .map(|i| system.pid(i))
                    .collect();
                if now == before
                    && system
                        .instance("receive")
                        .is_some_and(|r| r["state"] == "online")
                {
                    adopted = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return Ok(if adopted {
                format!(
                    "main back, every app adopted (same pids) in {} ms",
                    at.elapsed().as_millis()
                )
            } else {
                "main back but the apps were NOT all adopted".into()
            });
        }
        Fault::StopChat(secs) => {
            let pid = system.pid("chat");
            signal_pid(pid, SIGSTOP);
            tokio::time::sleep(Duration::from_secs(secs)).await;
            signal_pid(pid, SIGCONT);
        }
        Fault::Reload(app) => {
            system.sbctl(&["reload", app]).await?;
        }
        Fault::DatabaseDown(secs) => {
            system.relay.cut();
            let until = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < until {
                if system
                    .instance("db")
                    .is_some_and(|d| d["state"] == "errored")
                {
                    *db_errored = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            system.relay.restore();
            let state = system
                .instance("db")
                .map(|d| {
                    format!(
                        "{}{}",
                        d["state"].as_str().unwrap_or("?"),
                        d["health"]
                            .as_str()
                            .map(|h| format!(" ({h})"))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            return Ok(format!("db was {state} at the end of the outage"));
        }
        Fault::SlowReader => {
            let closed = load::slow_reader(system.ws.clone(), Duration::from_secs(3)).await;
            return Ok(if closed {
                "the non-reading client was closed".into()
            } else {
                "the non-reading client was NOT closed".into()
            });
        }
    }
    Ok(String::new())
}

/// Idempotency key → rows with it, from the run's `messages` table.
async fn stored_keys(url: &str) -> anyhow::Result<BTreeMap<String, usize>> {
    use mysql_async::prelude::Queryable;
    let mut conn = mysql_async::Conn::from_url(url).await?;
    let rows: Vec<(String, u64)> = conn
        .query(
            "SELECT idem_key, COUNT(*) FROM messages WHERE idem_key IS NOT NULL GROUP BY idem_key",
        )
        .await?;
    Ok(rows.into_iter().map(|(k, n)| (k, n as usize)).collect())
}

fn row(
    phase: usize,
    fault: Fault,
    at: Instant,
    records: &[load::Record],
    stored: &BTreeMap<String, usize>,
    mut note: String,
    db_errored: bool,
) -> Row {
    let mine: Vec<&load::Record> = records.iter().filter(|r| r.phase == phase).collect();
    let mut errors = BTreeMap::new();
    let (mut ok, mut lost, mut unanswered, mut missing, mut dups) = (0, 0, 0, 0, 0);
    for r in &mine {
        match &r.outcome {
            Outcome::Ok => ok += 1,
            Outcome::Error(code) => *errors.entry(code.clone()).or_insert(0) += 1,
            Outcome::LostWithSocket => lost += 1,
            Outcome::Unanswered => unanswered += 1,
        }
        if let (Outcome::Ok, Some(key)) = (&r.outcome, &r.key) {
            match stored.get(key) {
                None => missing += 1,
                Some(n) if *n > 1 => dups += 1,
                Some(_) => {}
            }
        }
    }
    // Recovery: from the fault until the first success, among the kinds it
    // affects, of a request sent after the last failure of those kinds.
    let affected = |r: &&&load::Record| fault.affects().contains(&r.kind) && r.sent >= at;
    let last_failure = mine
        .iter()
        .filter(affected)
        .filter(|r| r.outcome != Outcome::Ok)
        .map(|r| r.sent)
        .max();
    let recovery_ms = mine
        .iter()
        .filter(affected)
        .filter(|r| r.outcome == Outcome::Ok && last_failure.is_none_or(|f| r.sent > f))
        .map(|r| r.done)
        .min()
        .map(|t| t.saturating_duration_since(at).as_millis() as u64);
    let errors_total: usize = errors.values().sum();
    let mut pass = unanswered == 0 && missing == 0 && dups == 0;
    // Replies lost with a gateway's socket are the client's reconnect, allowed
    // only when the gateway was killed (a reload says goaway first: none lost).
    if lost > 0 && !matches!(fault, Fault::KillReceive) {
        pass = false;
    }
    if fault.no_errors() && errors_total > 0 {
        pass = false;
    }
    if let Some(target) = fault.recovery_target_ms() {
        if recovery_ms.is_none_or(|r| r > target) {
            pass = false;
        }
    }
    if matches!(fault, Fault::DatabaseDown(_)) && db_errored {
        pass = false;
        note.push_str(" db went errored");
    }
    if note.contains("NOT") {
        pass = false;
    }
    Row {
        fault,
        sent: mine.len(),
        ok,
        errors,
        lost_with_socket: lost,
        unanswered,
        acked_missing: missing,
        duplicates: dups,
        recovery_ms,
        note,
        pass,
    }
}

fn render(rows: &[Row], args: &Args, took: Duration) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Chaos run ({}), {} clients x {} req/s, {:.0} s in all.\n\n",
        if args.quick { "quick" } else { "full" },
        args.clients,
        args.rate,
        took.as_secs_f64()
    ));
    out.push_str("| fault | sent | ok | errors by code | lost with socket | unanswered | acked lost | duplicated | recovery (target) | result | note |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let errors = if r.errors.is_empty() {
            "0".to_owned()
        } else {
            r.errors
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let recovery = match (r.recovery_ms, r.fault.recovery_target_ms()) {
            (Some(ms), Some(t)) => format!("{ms} ms (≤ {t})"),
            (Some(ms), None) => format!("{ms} ms (no error allowed)"),
            (None, Some(t)) => format!("none (≤ {t})"),
            (None, None) => "– (no error allowed)".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.fault.name(),
            r.sent,
            r.ok,
            errors,
            r.lost_with_socket,
            r.unanswered,
            r.acked_missing,
            r.duplicates,
            recovery,
            if r.pass { "pass" } else { "FAIL" },
            r.note.trim()
        ));
    }
    out
}
