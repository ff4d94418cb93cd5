//! Tables for people, JSON for scripts; `ls` from main's status file when the bus is down.

use comfy_table::{presets, Attribute, Cell, CellAlignment, Color, ContentArrangement, Table};
use std::io::IsTerminal;

use crate::cli::Args;
use crate::Failure;
use switchboard_bus::proto::{self, InstanceInfo};

/// Colour in a terminal, none in a pipe or under `NO_COLOR`.
pub(crate) fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// A table for people: plain columns (no borders, so `grep` and `awk` work on
/// it), the numbers right-aligned. comfy-table lays it out and styles it.
fn table(header: &[&str], right: &[usize]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(
            header
                .iter()
                .map(|h| Cell::new(h).add_attribute(Attribute::Bold)),
        );
    if !colour() {
        t.force_no_tty();
    }
    for &i in right {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// A state, coloured by what it means for the operator.
fn state_cell(state: &str, text: String) -> Cell {
    let cell = Cell::new(text);
    if !colour() {
        return cell;
    }
    match state {
        "online" | "ready" => cell.fg(Color::Green),
        "degraded" | "starting" | "waiting" | "stopping" | "restarting" | "draining"
        | "registered" => cell.fg(Color::Yellow),
        "errored" | "stopped" | "lost" => cell.fg(Color::Red),
        _ => cell,
    }
}

pub(crate) fn print_table(list: &[InstanceInfo]) {
    let mut t = table(
        &[
            "SERVICE", "INSTANCE", "STATE", "PID", "UPTIME", "INFLIGHT", "HANDLED",
        ],
        &[3, 4, 5, 6],
    );
    for i in list {
        let service = if i.service.is_empty() {
            "(client)"
        } else {
            &i.service
        };
        t.add_row(vec![
            Cell::new(service),
            Cell::new(&i.instance),
            state_cell(i.state.as_str(), i.state.to_string()),
            Cell::new(i.pid),
            Cell::new(format_age(i.age_ms)),
            Cell::new(format!("{}/{}", i.inflight, i.credit)),
            Cell::new(i.handled),
        ]);
    }
    println!("{t}");
}

/// `main`'s instance list, as JSON or as the `ls` table.
pub(crate) fn print_apps_or_json(list: &serde_json::Value, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(list).unwrap_or_default());
    } else {
        print_apps(list.as_array().map(Vec::as_slice).unwrap_or_default());
    }
}

/// `ls` from main's status file when the broker cannot be reached; `None` when
/// there is no such file (no main, or another run folder).
pub(crate) fn ls_from_status_file(args: &Args, unreachable: &str) -> Option<Result<(), Failure>> {
    let path = args.run_dir.join("status.json");
    let text = std::fs::read_to_string(&path).ok()?;
    let mut file: serde_json::Value = serde_json::from_str(&text).ok()?;
    let age_ms = proto::now_ms().saturating_sub(file["written_at_ms"].as_u64().unwrap_or(0));
    if args.json {
        file["age_ms"] = serde_json::json!(age_ms);
        file["source"] = serde_json::json!(path.display().to_string());
        println!("{file}");
    } else {
        eprintln!(
            "{unreachable}; main's last status, {:.1} s old, from {}:",
            age_ms as f64 / 1000.0,
            path.display()
        );
        print_apps(
            file["instances"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default(),
        );
    }
    Some(Ok(()))
}

pub(crate) fn print_apps(list: &[serde_json::Value]) {
    // A HOST column when the rows come from mains on several hosts.
    let hosts = list
        .iter()
        .any(|a| a["host"].as_str().is_some_and(|h| !h.is_empty()));
    let mut headers = vec![
        "APP", "INSTANCE", "STATE", "PID", "UPTIME", "↺", "MEMORY", "CPU", "INFLIGHT", "HANDLED",
    ];
    let mut right = vec![3, 4, 5, 6, 7, 8, 9];
    if hosts {
        headers.insert(0, "HOST");
        right.iter_mut().for_each(|i| *i += 1);
    }
    let mut t = table(&headers, &right);
    for a in list {
        let num = |k: &str| a[k].as_u64().unwrap_or(0);
        let raw = a["state"].as_str().unwrap_or("?");
        let state = match a["health"].as_str() {
            Some(health) => format!("{raw} ({health})"),
            None => raw.to_owned(),
        };
        let running = num("pid") > 0;
        let dash = || "-".to_owned();
        let mut row = Vec::with_capacity(headers.len());
        if hosts {
            row.push(Cell::new(a["host"].as_str().unwrap_or("")));
        }
        row.extend([
            Cell::new(a["app"].as_str().unwrap_or("?")),
            Cell::new(a["instance"].as_str().unwrap_or("?")),
            state_cell(raw, state),
            Cell::new(if running {
                num("pid").to_string()
            } else {
                dash()
            }),
            Cell::new(if running {
                format_age(num("uptime_ms"))
            } else {
                dash()
            }),
            Cell::new(num("restarts")),
            Cell::new(format_bytes(num("rss_bytes"))),
            Cell::new(format!("{:.1}%", a["cpu_percent"].as_f64().unwrap_or(0.0))),
            Cell::new(num("inflight")),
            Cell::new(num("handled")),
        ]);
        t.add_row(row);
    }
    println!("{t}");
}

pub(crate) fn format_bytes(b: u64) -> String {
    match b {
        0 => "-".into(),
        b if b < 1 << 20 => format!("{:.0} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
    }
}

pub(crate) fn format_age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}
