//! `sbctl`: the ops CLI. Every command talks to the broker as a pure bus client.
//!
//! Exit status: 0 on success; for `send`, a failed reply exits with the error
//! code's number (see [`exit_code`]) and prints `error: CODE: message` on stderr;
//! 64 for bad usage; 69 when the broker cannot be reached.

mod bench;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::time::Duration;
use switchboard_bus::proto::{self, BrokerStats, ErrorCode, InstanceInfo};
use switchboard_bus::{svc, CallOptions, Config, Handle};

/// Switchboard ops CLI.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "Examples:\n  sbctl ls\n  sbctl reload chat\n  sbctl logs loc01 -f\n  sbctl send echo echo '{\"hello\":\"world\"}'\n  sbctl send loc nearby '{\"zone\":\"z1\",\"x\":0,\"y\":0,\"radius\":10}' --key z1\n  sbctl sub 'chat.room.*'\n  sbctl pub chat.room.lobby '{\"text\":\"hi\"}'\n  sbctl --json stats"
)]
struct Args {
    /// Broker endpoint.
    #[arg(
        long,
        global = true,
        env = "SB_BROKER",
        default_value = "tcp://127.0.0.1:5555"
    )]
    broker: String,
    /// Shared bus secret.
    #[arg(long, global = true, env = "SB_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// Deadline of each request, ms.
    #[arg(long, global = true, default_value_t = 5_000)]
    timeout_ms: u64,
    /// main's run folder (its `run_dir`): `ls` reads main's status file there
    /// when the broker cannot be reached.
    #[arg(long, global = true, env = "SB_RUN_DIR", default_value = "run")]
    run_dir: std::path::PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every app instance: state, pid, uptime, restarts, memory, cpu, in flight,
    /// handled (from `main`; the broker's view when no supervisor runs).
    Ls,
    /// Start an app (all its instances) or one instance.
    Start {
        /// App or instance name.
        name: String,
    },
    /// Stop an app or instance gracefully.
    Stop {
        /// App or instance name.
        name: String,
    },
    /// Stop, then start (a short gap: requests are held, not failed).
    Restart {
        /// App or instance name.
        name: String,
    },
    /// Zero-downtime replacement: the new process first, then the old one drains.
    Reload {
        /// App or instance name.
        name: String,
    },
    /// Print an instance's log (`broker` for the broker's).
    Logs {
        /// Instance (or single-instance app) name.
        name: String,
        /// How many lines.
        #[arg(long, short = 'n', default_value_t = 50)]
        lines: usize,
        /// Keep printing what is written (Ctrl-C to stop).
        #[arg(long, short)]
        follow: bool,
    },
    /// The broker's counters.
    Stats,
    /// Send one request (a test packet) and print the reply's data as JSON.
    Send {
        /// Service name.
        service: String,
        /// Op name.
        op: String,
        /// Request data as JSON (default `{}`).
        #[arg(default_value = "{}")]
        data: String,
        /// Pin an instance.
        #[arg(long)]
        instance: Option<String>,
        /// Route by key.
        #[arg(long)]
        key: Option<String>,
        /// Trace id to carry.
        #[arg(long, default_value = "")]
        trace: String,
    },
    /// Publish an event.
    Pub {
        /// Topic.
        topic: String,
        /// Event data as JSON.
        #[arg(default_value = "{}")]
        data: String,
    },
    /// Print events matching a pattern as they arrive (Ctrl-C to stop).
    Sub {
        /// Pattern (`*` one token, `>` the rest).
        pattern: String,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Send one request as a WebSocket client through the gateway (the path a
    /// real client takes) and print the reply frame. Exit status as for `send`.
    WsSend {
        /// Service (`-` for the gateway's own ops: ping, subscribe, auth).
        service: String,
        /// Op name.
        op: String,
        /// Request data as JSON (default `{}`).
        #[arg(default_value = "{}")]
        data: String,
        /// Gateway URL.
        #[arg(long, env = "SB_WS_URL", default_value = "ws://127.0.0.1:3000/ws")]
        url: String,
        /// Client token (HS256 JWT), sent as the `token` query parameter.
        #[arg(long, env = "SB_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Also wait this long for events and print them (e.g. after a join).
        #[arg(long, default_value_t = 0)]
        listen_ms: u64,
    },
    /// Benchmarks (see `sbctl bench --help`).
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Which instance owns a key of a service.
    Owner {
        /// Service name.
        service: String,
        /// Key.
        key: String,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// A real client's ping round trips without and with a slowloris attacker,
    /// and the gateway's CPU during the attack (the gateway must run here).
    Slowloris {
        /// Gateway URL.
        #[arg(long, env = "SB_WS_URL", default_value = "ws://127.0.0.1:3000/ws")]
        url: String,
        /// Stalled sockets held open.
        #[arg(long, default_value_t = 3_000)]
        sockets: usize,
        /// Source addresses (127.0.0.2 …) to spread them over.
        #[arg(long, default_value_t = 1)]
        sources: usize,
        /// Pings measured before the attack (one every 10 ms).
        #[arg(long, default_value_t = 300)]
        pings: usize,
        /// Attack duration, ms.
        #[arg(long, default_value_t = 5_000)]
        duration_ms: u64,
        /// Client token.
        #[arg(long, env = "SB_TOKEN")]
        token: Option<String>,
        /// The gateway's pid, if its /health does not report it.
        #[arg(long)]
        pid: Option<u64>,
    },
    /// Request/reply through the broker to a service's `$echo`.
    Rr {
        /// Target service (run one: `echo --service echo`).
        #[arg(long, default_value = "echo")]
        service: String,
        /// Op.
        #[arg(long, default_value = "$echo")]
        op: String,
        /// Payload bytes.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Requests in flight per connection.
        #[arg(long, default_value_t = 1)]
        window: usize,
        /// Bus connections.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Measured time, ms.
        #[arg(long, default_value_t = 5_000)]
        duration_ms: u64,
        /// Warm-up, ms.
        #[arg(long, default_value_t = 1_000)]
        warmup_ms: u64,
    },
    /// WebSocket clients through the gateway (the path a real client takes).
    Ws {
        /// Gateway URL.
        #[arg(long, env = "SB_WS_URL", default_value = "ws://127.0.0.1:3000/ws")]
        url: String,
        /// Target service.
        #[arg(long, default_value = "chat")]
        service: String,
        /// Op (`say` commits to MariaDB).
        #[arg(long, default_value = "$echo")]
        op: String,
        /// Request data as JSON.
        #[arg(
            long,
            default_value = r#"{"room":"bench","text":"hello, this is a benchmark message"}"#
        )]
        data: String,
        /// Connections.
        #[arg(long, default_value_t = 50)]
        connections: usize,
        /// Requests in flight per connection.
        #[arg(long, default_value_t = 8)]
        window: usize,
        /// Measured time, ms.
        #[arg(long, default_value_t = 5_000)]
        duration_ms: u64,
        /// Warm-up, ms.
        #[arg(long, default_value_t = 1_000)]
        warmup_ms: u64,
        /// Client token.
        #[arg(long, env = "SB_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Hold N idle WebSocket connections; report the gateway's memory per connection.
    Idle {
        /// Gateway URL.
        #[arg(long, env = "SB_WS_URL", default_value = "ws://127.0.0.1:3000/ws")]
        url: String,
        /// Connections (raise `ulimit -n` in the shell that runs this and the gateway).
        #[arg(long, default_value_t = 1_000)]
        connections: usize,
        /// How long to hold them, ms.
        #[arg(long, default_value_t = 2_000)]
        hold_ms: u64,
        /// Client token.
        #[arg(long, env = "SB_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

/// Process exit status for a contract error code.
fn exit_code(code: ErrorCode) -> i32 {
    match code {
        ErrorCode::BadRequest => 10,
        ErrorCode::TooLarge => 11,
        ErrorCode::UnknownService => 12,
        ErrorCode::UnknownOp => 13,
        ErrorCode::Unavailable => 14,
        ErrorCode::Timeout => 15,
        ErrorCode::WorkerLost => 16,
        ErrorCode::Overloaded => 17,
        ErrorCode::Unauthorized => 18,
        ErrorCode::Forbidden => 19,
        ErrorCode::Internal => 20,
        _ => 21,
    }
}

const EXIT_UNREACHABLE: i32 = 69;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        svc::init_tracing();
    }
    let code = match run(args).await {
        Ok(()) => 0,
        Err(Failure::Reply(e)) => {
            eprintln!("error: {e}");
            exit_code(e.code)
        }
        Err(Failure::Usage(e)) => {
            eprintln!("error: {e:#}");
            svc::EXIT_USAGE
        }
        Err(Failure::Unreachable(e)) => {
            eprintln!("error: {e}");
            EXIT_UNREACHABLE
        }
    };
    std::process::exit(code);
}

enum Failure {
    Reply(switchboard_bus::Error),
    Usage(anyhow::Error),
    Unreachable(String),
}

impl From<switchboard_bus::Error> for Failure {
    fn from(e: switchboard_bus::Error) -> Self {
        Failure::Reply(e)
    }
}

fn json_to_body(data: &str) -> Result<Vec<u8>, Failure> {
    let value: serde_json::Value = serde_json::from_str(data)
        .with_context(|| format!("data is not JSON: {data}"))
        .map_err(Failure::Usage)?;
    proto::to_body(&value).map_err(|e| Failure::Usage(e.into()))
}

fn body_to_json(body: &[u8]) -> serde_json::Value {
    if body.is_empty() {
        return serde_json::Value::Null;
    }
    rmp_serde::from_slice(body).unwrap_or_else(|_| serde_json::json!({ "raw_bytes": body.len() }))
}

async fn run(args: Args) -> Result<(), Failure> {
    if let Command::WsSend {
        service,
        op,
        data,
        url,
        token,
        listen_ms,
    } = &args.command
    {
        return ws_send(
            service,
            op,
            data,
            url,
            token.as_deref(),
            *listen_ms,
            args.timeout_ms,
        )
        .await;
    }
    let conn = switchboard_bus::connect(Config {
        broker: args.broker.clone(),
        instance: format!("sbctl-{}", std::process::id()),
        secret: args.secret.clone(),
        ..Config::default()
    })?;
    let bus = conn.handle;
    let connected = bus
        .wait_connected(Duration::from_millis(args.timeout_ms.min(5_000)))
        .await;
    if connected.is_err() {
        let unreachable = format!(
            "no broker at {} (is it running? is SB_SECRET right?)",
            args.broker
        );
        // The bus is down, but main may not be: it writes what it knows.
        if matches!(args.command, Command::Ls) {
            if let Some(shown) = ls_from_status_file(&args, &unreachable) {
                return shown;
            }
        }
        return Err(Failure::Unreachable(unreachable));
    }
    let options = CallOptions {
        timeout: Some(Duration::from_millis(args.timeout_ms)),
        ..CallOptions::default()
    };
    let result = command(&bus, &args, options).await;
    bus.close(Duration::from_millis(200)).await;
    result
}

async fn command(bus: &Handle, args: &Args, options: CallOptions) -> Result<(), Failure> {
    match &args.command {
        Command::Ls => {
            let from_main = bus.call("main", "ls", Vec::new(), options.clone()).await;
            match from_main {
                Ok(reply) => {
                    print_apps_or_json(&body_to_json(&reply.body), args.json);
                }
                Err(e) if matches!(e.code, ErrorCode::UnknownService | ErrorCode::Unavailable) => {
                    let reply = bus
                        .call(proto::BROKER_SERVICE, "ls", Vec::new(), options)
                        .await?;
                    let list: Vec<InstanceInfo> =
                        proto::from_body(&reply.body).map_err(|e| Failure::Usage(e.into()))?;
                    if args.json {
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
        }
        Command::Start { name }
        | Command::Stop { name }
        | Command::Restart { name }
        | Command::Reload { name } => {
            let op = match &args.command {
                Command::Start { .. } => "start",
                Command::Stop { .. } => "stop",
                Command::Restart { .. } => "restart",
                _ => "reload",
            };
            let body = proto::to_body(&serde_json::json!({ "name": name }))
                .map_err(|e| Failure::Usage(e.into()))?;
            // Starting waits for readiness (up to each app's ready_timeout_ms).
            let options = CallOptions {
                timeout: Some(Duration::from_millis(args.timeout_ms.max(60_000))),
                ..options
            };
            let reply = bus.call("main", op, body, options).await?;
            print_apps_or_json(&body_to_json(&reply.body), args.json);
        }
        Command::Logs {
            name,
            lines,
            follow,
        } => {
            let body = proto::to_body(&serde_json::json!({ "name": name, "lines": lines }))
                .map_err(|e| Failure::Usage(e.into()))?;
            let reply = bus.call("main", "logs", body, options.clone()).await?;
            let mut logs = body_to_json(&reply.body);
            print!("{}", logs["text"].as_str().unwrap_or_default());
            if *follow {
                let shutdown = svc::shutdown_on_signal();
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(300)) => {}
                    }
                    let offset = logs["offset"].as_u64().unwrap_or(0);
                    let body =
                        proto::to_body(&serde_json::json!({ "name": name, "offset": offset }))
                            .map_err(|e| Failure::Usage(e.into()))?;
                    let reply = bus.call("main", "logs", body, options.clone()).await?;
                    logs = body_to_json(&reply.body);
                    print!("{}", logs["text"].as_str().unwrap_or_default());
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                }
            }
        }
        Command::Stats => {
            let reply = bus
                .call(proto::BROKER_SERVICE, "stats", Vec::new(), options)
                .await?;
            let stats: BrokerStats =
                proto::from_body(&reply.body).map_err(|e| Failure::Usage(e.into()))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&stats).unwrap_or_default()
            );
        }
        Command::Send {
            service,
            op,
            data,
            instance,
            key,
            trace,
        } => {
            let body = json_to_body(data)?;
            let options = CallOptions {
                instance: instance.clone(),
                key: key.clone(),
                trace: trace.clone(),
                ..options
            };
            let reply = bus.call(service, op, body, options).await?;
            let data = body_to_json(&reply.body);
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": true, "trace": reply.trace, "data": data })
                );
            } else {
                println!("{data}");
            }
        }
        Command::Pub { topic, data } => {
            bus.publish(topic, json_to_body(data)?).await?;
            // A round trip to the broker makes sure the event left before we exit.
            bus.call(proto::BROKER_SERVICE, "$echo", Vec::new(), options)
                .await?;
        }
        Command::Sub { pattern, count } => {
            let mut sub = bus.subscribe(pattern).await?;
            let shutdown = svc::shutdown_on_signal();
            let mut seen = 0u64;
            while count.is_none_or(|c| seen < c) {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    event = sub.next() => {
                        let Some(event) = event else { break };
                        seen += 1;
                        println!("{}", serde_json::json!({ "topic": event.to, "data": body_to_json(&event.body) }));
                    }
                }
            }
        }
        Command::WsSend { .. } => {}
        Command::Bench(b) => {
            let report = match b {
                BenchCmd::Rr {
                    service,
                    op,
                    size,
                    window,
                    connections,
                    duration_ms,
                    warmup_ms,
                } => {
                    bench::rr(bench::RrArgs {
                        broker: args.broker.clone(),
                        secret: args.secret.clone(),
                        service: service.clone(),
                        op: op.clone(),
                        size: *size,
                        window: *window,
                        connections: *connections,
                        duration_ms: *duration_ms,
                        warmup_ms: *warmup_ms,
                    })
                    .await
                }
                BenchCmd::Ws {
                    url,
                    service,
                    op,
                    data,
                    connections,
                    window,
                    duration_ms,
                    warmup_ms,
                    token,
                } => {
                    let data: serde_json::Value = serde_json::from_str(data)
                        .with_context(|| format!("data is not JSON: {data}"))
                        .map_err(Failure::Usage)?;
                    bench::ws(bench::WsArgs {
                        url: url.clone(),
                        service: service.clone(),
                        op: op.clone(),
                        data,
                        connections: *connections,
                        window: *window,
                        duration_ms: *duration_ms,
                        warmup_ms: *warmup_ms,
                        token: token.clone(),
                    })
                    .await
                }
                BenchCmd::Slowloris {
                    url,
                    sockets,
                    sources,
                    pings,
                    duration_ms,
                    token,
                    pid,
                } => {
                    bench::slowloris(bench::SlowlorisArgs {
                        url: url.clone(),
                        sockets: *sockets,
                        sources: *sources,
                        pings: *pings,
                        duration_ms: *duration_ms,
                        token: token.clone(),
                        pid: *pid,
                    })
                    .await
                }
                BenchCmd::Idle {
                    url,
                    connections,
                    hold_ms,
                    token,
                } => {
                    bench::idle(bench::IdleArgs {
                        url: url.clone(),
                        connections: *connections,
                        hold_ms: *hold_ms,
                        token: token.clone(),
                        bus: bus.clone(),
                    })
                    .await
                }
            };
            report.map_err(Failure::Usage)?.print(args.json);
        }
        Command::Owner { service, key } => {
            let body = proto::to_body(&serde_json::json!({ "service": service, "key": key }))
                .map_err(|e| Failure::Usage(e.into()))?;
            let reply = bus
                .call(proto::BROKER_SERVICE, "owner", body, options)
                .await?;
            println!("{}", body_to_json(&reply.body));
        }
    }
    Ok(())
}

fn print_table(list: &[InstanceInfo]) {
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
fn print_apps_or_json(list: &serde_json::Value, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(list).unwrap_or_default());
    } else {
        print_apps(list.as_array().map(Vec::as_slice).unwrap_or_default());
    }
}

/// `ls` from main's status file when the broker cannot be reached; `None` when
/// there is no such file (no main, or another run folder).
fn ls_from_status_file(args: &Args, unreachable: &str) -> Option<Result<(), Failure>> {
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

fn print_apps(list: &[serde_json::Value]) {
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

fn format_bytes(b: u64) -> String {
    match b {
        0 => "-".into(),
        b if b < 1 << 20 => format!("{:.0} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
    }
}

fn format_age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

async fn ws_send(
    service: &str,
    op: &str,
    data: &str,
    url: &str,
    token: Option<&str>,
    listen_ms: u64,
    timeout_ms: u64,
) -> Result<(), Failure> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let data: serde_json::Value = serde_json::from_str(data)
        .with_context(|| format!("data is not JSON: {data}"))
        .map_err(Failure::Usage)?;
    let url = match token {
        Some(t) => format!(
            "{url}{}token={t}",
            if url.contains('?') { '&' } else { '?' }
        ),
        None => url.to_owned(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    let (mut ws, _) = tokio::time::timeout_at(deadline, tokio_tungstenite::connect_async(&url))
        .await
        .map_err(|_| Failure::Unreachable(format!("no answer from {url}")))?
        .map_err(|e| Failure::Unreachable(format!("{url}: {e}")))?;
    let mut frame = serde_json::json!({ "id": 1, "op": op, "data": data });
    if service != "-" {
        frame["to"] = serde_json::json!(service);
    }
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    let mut reply: Option<serde_json::Value> = None;
    let listen_until = tokio::time::Instant::now() + Duration::from_millis(listen_ms);
    loop {
        let until = if reply.is_some() {
            listen_until
        } else {
            deadline
        };
        let next = match tokio::time::timeout_at(until, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Close(frame)))) => {
                if reply.is_none() {
                    return Err(Failure::Unreachable(format!(
                        "closed by the gateway: {frame:?}"
                    )));
                }
                break;
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return Err(Failure::Unreachable(e.to_string())),
            Ok(None) | Err(_) => break,
        };
        println!("{next}");
        let value: serde_json::Value = serde_json::from_str(next.as_str()).unwrap_or_default();
        if value.get("id") == Some(&serde_json::json!(1)) {
            reply = Some(value);
            if listen_ms == 0 {
                break;
            }
        }
    }
    let _ = ws.close(None).await;
    match reply {
        None => Err(Failure::Reply(switchboard_bus::Error::new(
            ErrorCode::Timeout,
            "no reply from the gateway",
        ))),
        Some(r) if r["ok"] == serde_json::json!(true) => Ok(()),
        Some(r) => {
            let code: ErrorCode =
                serde_json::from_value(r["error"]["code"].clone()).unwrap_or(ErrorCode::Unknown);
            let message = r["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            Err(Failure::Reply(switchboard_bus::Error::new(code, message)))
        }
    }
}
