//! `sbctl`: the ops CLI. Every command talks to the broker as a pure bus client.
//!
//! Exit status: 0 on success; for `send`, a failed reply exits with the error
//! code's number (see [`exit_code`]) and prints `error: CODE: message` on stderr;
//! 64 for bad usage; 69 when the broker cannot be reached; 76 when a peer's
//! reply cannot be read (sysexits' EX_PROTOCOL: the peer is at fault, not the
//! command line).

mod bench;
mod cli;
mod daily;
mod hosts;
mod print;
mod token;
mod ws;

use anyhow::Context;
use clap::Parser;
use cli::{Args, BenchCmd, Command};
use print::{ls_from_status_file, print_apps_or_json, print_table};
use std::time::Duration;
use switchboard_bus::proto::admin::{NameArg, OwnerQuery};
use switchboard_bus::proto::{self, BrokerStats, ErrorCode, InstanceInfo};
use switchboard_bus::{svc, CallOptions, Config, Handle};
use ws::ws_send;

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

/// A reply that is not what the protocol says (sysexits' EX_PROTOCOL).
const EXIT_MALFORMED_REPLY: i32 = 76;

/// Exit status of a command whose reader went away (`sbctl logs | head`), as a
/// process killed by SIGPIPE would have: 128 + 13.
const EXIT_BROKEN_PIPE: i32 = 141;

/// Rust ignores SIGPIPE, so printing to a closed pipe panics in `println!`.
/// Without `unsafe` (forbidden here) the signal cannot be restored; a panic
/// hook turns that one panic into the quiet exit a Unix tool makes.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("Broken pipe") {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
        default(info);
    }));
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    quiet_on_broken_pipe();
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
        Err(Failure::Malformed(e)) => {
            eprintln!("error: {e}");
            EXIT_MALFORMED_REPLY
        }
    };
    std::process::exit(code);
}

enum Failure {
    Reply(switchboard_bus::Error),
    Usage(anyhow::Error),
    Unreachable(String),
    /// A peer's reply that does not decode as the protocol says.
    Malformed(String),
}

/// `reply`'s body decoded as `T`; a body that is not is the peer's fault.
pub(crate) fn decode_reply<T: serde::de::DeserializeOwned>(
    reply: &proto::Envelope,
    what: &str,
) -> Result<T, Failure> {
    proto::from_body(&reply.body).map_err(|e| {
        Failure::Malformed(format!(
            "malformed reply from {} to {what}: {e} (docs/protocol.md gives its shape)",
            if reply.from.is_empty() {
                "?"
            } else {
                &reply.from
            }
        ))
    })
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

async fn run(mut args: Args) -> Result<(), Failure> {
    if let Command::Completions { shell } = args.command {
        let mut command = <Args as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "sbctl", &mut std::io::stdout());
        return Ok(());
    }
    if let Command::Token {
        sub,
        exp,
        aud,
        iss,
        auth_secret,
        auth_secret_file,
        ecosystem,
    } = &args.command
    {
        if auth_secret.is_some() {
            return Err(Failure::Usage(anyhow::anyhow!(
                switchboard_bus::svc::secret::refused_arg(
                    "--auth-secret",
                    "SB_AUTH_SECRET",
                    "--auth-secret-file"
                )
            )));
        }
        let secret = switchboard_bus::svc::secret::from_env_or_file(
            "SB_AUTH_SECRET",
            auth_secret_file.as_deref(),
        )
        .map_err(|e| Failure::Usage(anyhow::anyhow!(e)))?;
        let minted = token::mint(&token::Request {
            sub,
            exp: *exp,
            aud: aud.as_deref(),
            iss: iss.as_deref(),
            secret: secret.as_deref(),
            ecosystem,
        })
        .map_err(Failure::Usage)?;
        if args.json {
            println!("{}", serde_json::to_string(&minted).unwrap_or_default());
        } else {
            println!("{}", minted.token);
        }
        return Ok(());
    }
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
    // No SB_SECRET: the secret main made in its run folder, as a local
    // operator's `sbctl ls` needs no setup (a file only its owner can read).
    // Read only here: `token`, `ws-send` and `completions` need no bus.
    if args.secret.as_deref().is_none_or(str::is_empty) {
        args.secret = switchboard_bus::secret_file::read(&args.run_dir)
            .map_err(|e| Failure::Usage(anyhow::anyhow!("the bus secret: {e}")))?;
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
        if matches!(args.command, Command::Ls { .. }) {
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

/// Options for an order that waits for apps to start (each up to its
/// ready_timeout_ms): at least a minute.
fn long(args: &Args, options: CallOptions) -> CallOptions {
    CallOptions {
        timeout: Some(Duration::from_millis(args.timeout_ms.max(60_000))),
        ..options
    }
}

async fn command(bus: &Handle, args: &Args, options: CallOptions) -> Result<(), Failure> {
    match &args.command {
        Command::Ls { watch: true } => daily::watch(bus, args.json, options).await?,
        Command::Ls { watch: false } => {
            let from_main = hosts::Mains::load(bus, &options).await;
            match from_main {
                Ok(mains) => {
                    print_apps_or_json(&mains.all_rows(), args.json);
                    // With a broker pair: which one is active (the one that
                    // answers is; it knows what its partner last said).
                    if !args.json {
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
            let arg = NameArg {
                name: name.clone(),
                ..NameArg::default()
            };
            let body = proto::to_body(&arg).map_err(|e| Failure::Usage(e.into()))?;
            // Starting waits for readiness (up to each app's ready_timeout_ms).
            let options = CallOptions {
                timeout: Some(Duration::from_millis(args.timeout_ms.max(60_000))),
                ..options
            };
            let mains = hosts::Mains::load(bus, &options).await?;
            let reply = mains.call_owners(bus, name, op, body, &options).await?;
            if mains.names().count() == 1 {
                print_apps_or_json(&body_to_json(&reply.body), args.json);
            } else {
                // Every host's table after the order.
                let after = hosts::Mains::load(bus, &options).await?;
                print_apps_or_json(&after.all_rows(), args.json);
            }
        }
        Command::Logs {
            name,
            lines,
            err,
            follow,
        } => {
            let view = daily::LogsView {
                err: *err,
                json: args.json,
            };
            daily::logs(bus, name.as_deref(), *lines, view, *follow, options).await?;
        }
        Command::Describe { app } => daily::describe(bus, app, args.json, options).await?,
        Command::Shutdown => daily::shutdown(bus, args.json, options).await?,
        Command::Scale { app, instances } => {
            daily::scale(bus, app, *instances, args.json, long(args, options)).await?;
        }
        Command::ReloadConfig => daily::reload_config(bus, args.json, long(args, options)).await?,
        Command::Info { service, instance } => {
            let options = CallOptions {
                instance: instance.clone(),
                ..options
            };
            let reply = bus.call(service, "$info", Vec::new(), options).await?;
            let info: proto::Info = decode_reply(&reply, "$info")?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&info).unwrap_or_default()
                );
            } else {
                let version = if info.version.is_empty() {
                    "?"
                } else {
                    &info.version
                };
                println!(
                    "{} ({}) {version} · bus {} · protocol {}",
                    info.service, info.instance, info.bus_version, info.protocol
                );
                println!("ops:    {}", info.ops.join(" "));
                if !info.events.is_empty() {
                    println!("events: {}", info.events.join(" "));
                }
            }
        }
        Command::Stats => {
            let stats: BrokerStats = bus.broker("stats", Vec::new(), options).await?;
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
        Command::WsSend { .. } | Command::Token { .. } => {}
        Command::Completions { .. } => {}
        Command::Trace { trace } => daily::trace(bus, trace, args.json, options).await?,
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
                    cpu,
                } => {
                    let cpu = bench::cpu::watch(bus, &args.broker, cpu.cpu, cpu.cpu_db_port)
                        .await
                        .map_err(Failure::Usage)?;
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
                        cpu,
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
                    cpu,
                } => {
                    let cpu = bench::cpu::watch(bus, &args.broker, cpu.cpu, cpu.cpu_db_port)
                        .await
                        .map_err(Failure::Usage)?;
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
                        cpu,
                    })
                    .await
                }
                BenchCmd::Say {
                    url,
                    room,
                    connections,
                    window,
                    duration_ms,
                    warmup_ms,
                    token,
                    cpu,
                } => {
                    let cpu = bench::cpu::watch(bus, &args.broker, cpu.cpu, cpu.cpu_db_port)
                        .await
                        .map_err(Failure::Usage)?;
                    bench::ws(bench::WsArgs {
                        url: url.clone(),
                        service: "chat".into(),
                        op: "say".into(),
                        data: serde_json::json!({"room": room, "text": "hello, this is a benchmark message"}),
                        connections: *connections,
                        window: *window,
                        duration_ms: *duration_ms,
                        warmup_ms: *warmup_ms,
                        token: token.clone(),
                        cpu,
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
                BenchCmd::Fanout {
                    url,
                    topic,
                    subscribers,
                    rate,
                    size,
                    duration_ms,
                    warmup_ms,
                    token,
                } => {
                    bench::fanout(bench::FanoutArgs {
                        url: url.clone(),
                        topic: topic.clone(),
                        subscribers: *subscribers,
                        rate: *rate,
                        size: *size,
                        duration_ms: *duration_ms,
                        warmup_ms: *warmup_ms,
                        token: token.clone(),
                        bus: bus.clone(),
                    })
                    .await
                }
                BenchCmd::Idle {
                    url,
                    connections,
                    hold_ms,
                    sources,
                    token,
                } => {
                    bench::idle(bench::IdleArgs {
                        url: url.clone(),
                        connections: *connections,
                        hold_ms: *hold_ms,
                        sources: *sources,
                        token: token.clone(),
                        bus: bus.clone(),
                    })
                    .await
                }
            };
            report.map_err(Failure::Usage)?.print(args.json);
        }
        Command::Owner { service, key } => {
            let query = OwnerQuery {
                service: service.clone(),
                key: key.clone(),
            };
            let body = proto::to_body(&query).map_err(|e| Failure::Usage(e.into()))?;
            let reply = bus
                .call(proto::BROKER_SERVICE, "owner", body, options)
                .await?;
            println!("{}", body_to_json(&reply.body));
        }
    }
    Ok(())
}
