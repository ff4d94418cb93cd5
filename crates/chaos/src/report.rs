//! One row of the table per fault, from what became of each request of its
//! phase and from the `messages` table, and the table itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::cli::Args;
use crate::fault::Fault;
use crate::load::{self, Outcome};

/// One row of the table.
pub(crate) struct Row {
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
    pub(crate) pass: bool,
}

/// Idempotency key → rows with it, from the run's `messages` table.
pub(crate) async fn stored_keys(url: &str) -> anyhow::Result<BTreeMap<String, usize>> {
    use mysql_async::prelude::Queryable;
    let mut conn = mysql_async::Conn::from_url(url).await?;
    let rows: Vec<(String, u64)> = conn
        .query(
            "SELECT idem_key, COUNT(*) FROM messages WHERE idem_key IS NOT NULL GROUP BY idem_key",
        )
        .await?;
    Ok(rows.into_iter().map(|(k, n)| (k, n as usize)).collect())
}

pub(crate) fn row(
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

pub(crate) fn render(rows: &[Row], args: &Args, took: Duration) -> String {
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
