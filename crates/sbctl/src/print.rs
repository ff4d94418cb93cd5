//! Tables for people, JSON for scripts; `ls` from main's status file when the bus is down.

use crate::cli::Args;
use crate::Failure;
use switchboard_bus::proto::{self, InstanceInfo};

pub(crate) fn print_table(list: &[InstanceInfo]) {
    println!(
        "{:<12} {:<16} {:<11} {:>8} {:>10} {:>9} {:>10}",
        "SERVICE", "INSTANCE", "STATE", "PID", "UPTIME", "INFLIGHT", "HANDLED"
    );
    for i in list {
        let service = if i.service.is_empty() {
            "(client)"
        } else {
            &i.service
        };
        println!(
            "{:<12} {:<16} {:<11} {:>8} {:>10} {:>9} {:>10}",
            service,
            i.instance,
            i.state,
            i.pid,
            format_age(i.age_ms),
            format!("{}/{}", i.inflight, i.credit),
            i.handled
        );
    }
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
    println!(
        "{:<10} {:<14} {:<20} {:>8} {:>9} {:>4} {:>9} {:>6} {:>8} {:>9}",
        "APP", "INSTANCE", "STATE", "PID", "UPTIME", "↺", "MEMORY", "CPU", "INFLIGHT", "HANDLED"
    );
    for a in list {
        let num = |k: &str| a[k].as_u64().unwrap_or(0);
        let state = match (a["state"].as_str(), a["health"].as_str()) {
            (Some(state), Some(health)) => format!("{state} ({health})"),
            (Some(state), None) => state.to_owned(),
            (None, _) => "?".into(),
        };
        let running = num("pid") > 0;
        println!(
            "{:<10} {:<14} {:<20} {:>8} {:>9} {:>4} {:>9} {:>5.1}% {:>8} {:>9}",
            a["app"].as_str().unwrap_or("?"),
            a["instance"].as_str().unwrap_or("?"),
            state,
            if running {
                num("pid").to_string()
            } else {
                "-".into()
            },
            if running {
                format_age(num("uptime_ms"))
            } else {
                "-".into()
            },
            num("restarts"),
            format_bytes(num("rss_bytes")),
            a["cpu_percent"].as_f64().unwrap_or(0.0),
            num("inflight"),
            num("handled")
        );
    }
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
