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
//! - `cli`: the `chaos` binary's options ([`cli::Args`]).
//! - `system`: the system under test (main, its ecosystem, the database relay)
//!   and the faults done to it.
//! - `fault`: the fault list, what each must meet, and injecting one.
//! - `load`: the steady WebSocket load and what became of each request.
//! - `soak`: clients churning while every process's memory is sampled.
//! - `report`: a fault's row (from the load's records and the `messages`
//!   table) and the table of results.
//! - this file: [`run`], the run: start, load, one fault after another, report.

pub mod cli;
mod fault;
mod load;
mod report;
mod soak;
mod system;

use load::Book;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cli::Args;
use fault::{faults, inject, Fault};
use report::{render, row, stored_keys};
use system::System;

/// The whole run: `true` when every row of the table (or the soak) met its
/// target.
///
/// # Errors
///
/// The system cannot start, a fault cannot be injected, the `messages` table
/// cannot be read or the table cannot be written.
pub async fn run(args: Args) -> anyhow::Result<bool> {
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
