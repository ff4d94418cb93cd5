//! The apps under main, PM2's daily commands: `ls` (and `ls --watch`),
//! `start`, `stop`, `restart`, `reload`, `logs` of one or every app,
//! `describe`, `shutdown`, `scale`, `reload-config`.

use std::io::{IsTerminal, Write};
use std::time::Duration;
use switchboard_bus::proto::admin::{
    AppDescription, ConfigChange, InstanceStatus, LogsReply, NameArg, ScaleArg,
};
use switchboard_bus::proto::{self, BrokerStats, ErrorCode, InstanceInfo};
use switchboard_bus::{svc, CallOptions, Handle};

use crate::cli::{Args, Command};
use crate::hosts::{to, Mains};
use crate::print::{print_apps_or_json, print_table};
use crate::{body_to_json, Failure};

/// How often `logs -f` and `ls --watch` ask again.
const POLL: Duration = Duration::from_millis(300);

/// Runs one of the group's commands.
pub(crate) async fn run(bus: &Handle, args: &Args, options: CallOptions) -> Result<(), Failure> {
    let json = args.json;
    match &args.command {
        Command::Ls { watch: true } => watch(bus, json, options).await,
        Command::Ls { watch: false } => ls(bus, json, options).await,
        Command::Start { name } => order(bus, args, "start", name, options).await,
        Command::Stop { name } => order(bus, args, "stop", name, options).await,
        Command::Restart { name } => order(bus, args, "restart", name, options).await,
        Command::Reload { name } => order(bus, args, "reload", name, options).await,
        Command::Logs {
            name,
            lines,
            err,
            follow,
        } => {
            let view = LogsView { err: *err, json };
            logs(bus, name.as_deref(), *lines, view, *follow, options).await
        }
        Command::Describe { app } => describe(bus, app, json, options).await,
        Command::Shutdown => shutdown(bus, json, options).await,
        Command::Scale { app, instances } => {
            scale(bus, app, *instances, json, long(args, options)).await
        }
        Command::ReloadConfig => reload_config(bus, json, long(args, options)).await,
        _ => unreachable!("not an apps command"),
    }
}

/// Options for an order that waits for apps to start (each up to its
/// ready_timeout_ms): at least a minute.
fn long(args: &Args, options: CallOptions) -> CallOptions {
    CallOptions {
        timeout: Some(Duration::from_millis(args.timeout_ms.max(60_000))),
        ..options
    }
}

/// `ls`: every main's instances; the broker's view when no main is on the bus.
async fn ls(bus: &Handle, json: bool, options: CallOptions) -> Result<(), Failure> {
    match Mains::load(bus, &options).await {
        Ok(mains) => {
            print_apps_or_json(&mains.all_rows(), json);
            // With a broker pair: which one is active (the one that
            // answers is; it knows what its partner last said).
            if !json {
                if let Ok(stats) = bus
                    .broker::<BrokerStats>("stats", Vec::new(), options)
                    .await
                {
                    if !stats.ha.is_empty() {
                        println!("broker pair: {}", stats.ha);
                    }
                }
            }
        }
        Err(e) if matches!(e.code, ErrorCode::UnknownService | ErrorCode::Unavailable) => {
            let list: Vec<InstanceInfo> = bus.broker("ls", Vec::new(), options).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                eprintln!("(no supervisor on the bus: the broker's view)");
                print_table(&list);
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// `start`, `stop`, `restart`, `reload` NAME: the order goes to the main (or
/// mains) that run NAME; prints the table after it.
async fn order(
    bus: &Handle,
    args: &Args,
    op: &str,
    name: &str,
    options: CallOptions,
) -> Result<(), Failure> {
    let arg = NameArg {
        name: name.to_owned(),
        ..NameArg::default()
    };
    let body = proto::to_body(&arg).map_err(|e| Failure::Usage(e.into()))?;
    // Starting waits for readiness (up to each app's ready_timeout_ms).
    let options = long(args, options);
    let mains = Mains::load(bus, &options).await?;
    let reply = mains.call_owners(bus, name, op, body, &options).await?;
    if mains.names().count() == 1 {
        print_apps_or_json(&body_to_json(&reply.body), args.json);
    } else {
        // Every host's table after the order.
        let after = Mains::load(bus, &options).await?;
        print_apps_or_json(&after.all_rows(), args.json);
    }
    Ok(())
}

async fn logs_of(
    bus: &Handle,
    main: &str,
    name: &str,
    lines: Option<usize>,
    offset: Option<u64>,
    options: &CallOptions,
) -> Result<LogsReply, Failure> {
    let arg = NameArg {
        name: name.to_owned(),
        lines,
        offset,
    };
    let body = proto::to_body(&arg).map_err(|e| Failure::Usage(e.into()))?;
    let reply = bus.call("main", "logs", body, to(main, options)).await?;
    crate::decode_reply(&reply, "logs")
}

/// Which main holds each log `logs` prints: (main, instance). With no name,
/// every managed instance on every host (and the broker); with a name on one
/// host, that name as main knows it; on several, the instance of that name or
/// every instance of the app of that name, wherever they run.
fn log_targets(mains: &Mains, name: Option<&str>) -> Result<Vec<(String, String)>, Failure> {
    let rows = mains.rows();
    let mut out = Vec::new();
    for (main, list) in rows {
        for row in list {
            let Ok(status) = serde_json::from_value::<InstanceStatus>(row.clone()) else {
                continue;
            };
            let wanted = match name {
                None => status.managed,
                // Each main's own instances only: another host's show there
                // as `managed: false`.
                Some(n) => {
                    status.managed
                        && (status.instance == n
                            || (status.app == n && status.instance != "broker"))
                }
            };
            if wanted {
                out.push((main.clone(), status.instance));
            }
        }
    }
    match name {
        Some(n) if rows.len() == 1 => Ok(vec![(rows[0].0.clone(), n.to_owned())]),
        Some(n) if out.is_empty() => Err(Failure::Reply(switchboard_bus::Error::bad_request(
            format!("no app or instance {n:?} on any host"),
        ))),
        _ => Ok(out),
    }
}

/// How `logs` prints.
#[derive(Clone, Copy)]
struct LogsView {
    /// Only WARN and ERROR lines.
    pub(crate) err: bool,
    /// One JSON object a line: `{"instance", "line"}`.
    pub(crate) json: bool,
}

/// Prints `instance`'s `text`: each line prefixed with the instance when
/// `prefixed`, as JSON when asked, only warnings and errors when asked.
fn print_lines(text: &str, instance: &str, prefixed: bool, width: usize, view: LogsView) {
    let mut out = std::io::stdout().lock();
    for line in text.lines() {
        if view.err && !(line.contains("WARN") || line.contains("ERROR")) {
            continue;
        }
        let _ = if view.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"instance": instance, "line": line})
            )
        } else if prefixed {
            writeln!(out, "{instance:<width$} | {line}")
        } else {
            writeln!(out, "{line}")
        };
    }
    let _ = out.flush();
}

/// `logs [NAME]`: one instance's log, or every instance's (and the broker's)
/// prefixed with its name; `-f` follows.
async fn logs(
    bus: &Handle,
    name: Option<&str>,
    lines: usize,
    view: LogsView,
    follow: bool,
    options: CallOptions,
) -> Result<(), Failure> {
    let mains = Mains::load(bus, &options).await?;
    // The broker's row is named `broker`; main's `logs` knows it.
    let targets = log_targets(&mains, name)?;
    let prefixed = name.is_none() || targets.len() > 1;
    let width = targets.iter().map(|(_, n)| n.len()).max().unwrap_or(0);
    let mut offsets = Vec::with_capacity(targets.len());
    for (main, n) in &targets {
        let reply = logs_of(bus, main, n, Some(lines), None, &options).await?;
        print_lines(&reply.text, n, prefixed, width, view);
        offsets.push(reply.offset);
    }
    if !follow {
        return Ok(());
    }
    let shutdown = svc::shutdown_on_signal();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(POLL) => {}
        }
        for ((main, n), offset) in targets.iter().zip(offsets.iter_mut()) {
            let reply = logs_of(bus, main, n, None, Some(*offset), &options).await?;
            print_lines(&reply.text, n, prefixed, width, view);
            *offset = reply.offset;
        }
    }
}

/// `ls --watch`: the table redrawn every second (a JSON line a second in a pipe
/// or with `--json`), until Ctrl-C.
async fn watch(bus: &Handle, json: bool, options: CallOptions) -> Result<(), Failure> {
    let terminal = std::io::stdout().is_terminal() && !json;
    let shutdown = svc::shutdown_on_signal();
    loop {
        let list = Mains::load(bus, &options).await?.all_rows();
        if terminal {
            // Clear the screen and go home, then the table.
            print!("\x1b[2J\x1b[H");
            println!("sbctl ls --watch · every 1 s · Ctrl-C to stop\n");
            print_apps_or_json(&list, false);
        } else {
            println!("{list}");
        }
        let _ = std::io::stdout().flush();
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// `describe APP`.
async fn describe(
    bus: &Handle,
    app: &str,
    json: bool,
    options: CallOptions,
) -> Result<(), Failure> {
    let arg = NameArg {
        name: app.to_owned(),
        ..NameArg::default()
    };
    let body = proto::to_body(&arg).map_err(|e| Failure::Usage(e.into()))?;
    let mains = Mains::load(bus, &options).await?;
    let owner = mains.owners_or_err(app)?.remove(0);
    let reply = bus
        .call("main", "describe", body, to(&owner, &options))
        .await?;
    let d: AppDescription = crate::decode_reply(&reply, "describe")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
        return Ok(());
    }
    let rows: Vec<(&str, String)> = vec![
        ("name", d.name.clone()),
        ("bin", d.bin.clone()),
        ("args", d.args.join(" ")),
        ("instances", d.instances.to_string()),
        ("depends_on", d.depends_on.join(", ")),
        (
            "wait_ready",
            format!("{} (within {} ms)", d.wait_ready, d.ready_timeout_ms),
        ),
        ("kill_timeout", format!("{} ms", d.kill_timeout_ms)),
        (
            "autorestart",
            format!(
                "{} (max {} unstable restarts under {} ms; delay {} ms)",
                d.autorestart, d.max_restarts, d.min_uptime_ms, d.restart_delay_ms
            ),
        ),
        (
            "max_memory",
            d.max_memory_bytes
                .map_or_else(|| "-".to_owned(), |b| format!("{} MiB", b / (1024 * 1024))),
        ),
        ("watch", d.watch.to_string()),
    ];
    for (k, v) in rows {
        println!("{k:<14} {v}");
    }
    for (k, v) in &d.env {
        println!("{:<14} {k}={v}", "env");
    }
    for log in &d.logs {
        println!("{:<14} {log}", "log");
    }
    println!();
    print_apps_or_json(&serde_json::to_value(&d.status).unwrap_or_default(), false);
    Ok(())
}

/// `shutdown`: main stops every app, then itself.
async fn shutdown(bus: &Handle, json: bool, options: CallOptions) -> Result<(), Failure> {
    // The whole system: every host's main.
    Mains::load(bus, &options)
        .await?
        .call_all(bus, "shutdown", Vec::new(), &options)
        .await?;
    if json {
        println!("{}", serde_json::json!({"shutdown": true}));
    } else {
        println!("main is stopping every app in reverse dependency order, then itself");
    }
    Ok(())
}

/// `scale APP N`.
async fn scale(
    bus: &Handle,
    app: &str,
    instances: u32,
    json: bool,
    options: CallOptions,
) -> Result<(), Failure> {
    let arg = ScaleArg {
        app: app.to_owned(),
        instances,
    };
    let body = proto::to_body(&arg).map_err(|e| Failure::Usage(e.into()))?;
    // An app on several hosts: N on each.
    let mains = Mains::load(bus, &options).await?;
    // One instance is named as its app; several are APP01, APP02…: scaling
    // out renames it, which a script addressing `chat` must know.
    let was_single = mains
        .all_rows()
        .as_array()
        .is_some_and(|rows| rows.iter().any(|r| r["app"] == app && r["instance"] == app));
    let reply = mains.call_owners(bus, app, "scale", body, &options).await?;
    if was_single && instances > 1 && !json {
        eprintln!(
            "note: {app} now runs as {app}01…{app}{instances:02} (several instances are \
             numbered); `{app}` still reaches the service, and its instances are addressed \
             by those names"
        );
    }
    if mains.names().count() == 1 {
        print_apps_or_json(&body_to_json(&reply.body), json);
    } else {
        print_apps_or_json(&Mains::load(bus, &options).await?.all_rows(), json);
    }
    Ok(())
}

/// `reload-config`.
async fn reload_config(bus: &Handle, json: bool, options: CallOptions) -> Result<(), Failure> {
    // Each host's main re-reads its own file (the last host's change is shown).
    let reply = Mains::load(bus, &options)
        .await?
        .call_all(bus, "reload-config", Vec::new(), &options)
        .await?;
    let change: ConfigChange = crate::decode_reply(&reply, "reload-config")?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&change).unwrap_or_default()
        );
        return Ok(());
    }
    for (what, apps) in [
        ("added", &change.added),
        ("removed", &change.removed),
        ("changed", &change.changed),
        ("unchanged", &change.unchanged),
    ] {
        if !apps.is_empty() {
            println!("{what:<10} {}", apps.join(", "));
        }
    }
    if !change.needs_restart.is_empty() {
        println!(
            "{:<10} {} changed: restart main to apply",
            "pending",
            change.needs_restart.join(" and ")
        );
    }
    Ok(())
}
