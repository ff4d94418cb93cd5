//! `bench …`: each benchmark's options handed to its load generator in
//! [`crate::bench`], and its report printed.

use anyhow::Context;
use switchboard_bus::Handle;

use crate::cli::{Args, BenchCmd};
use crate::Failure;

/// Runs the benchmark `which` names and prints its report.
pub(crate) async fn run(bus: &Handle, args: &Args, which: &BenchCmd) -> Result<(), Failure> {
    let report = match which {
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
            let cpu = cpu_watch(bus, args, cpu).await?;
            crate::bench::rr(crate::bench::RrArgs {
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
            load,
        } => {
            let data: serde_json::Value = serde_json::from_str(data)
                .with_context(|| format!("data is not JSON: {data}"))
                .map_err(Failure::Usage)?;
            let cpu = cpu_watch(bus, args, &load.cpu).await?;
            ws_load(url, service, op, data, load, cpu).await
        }
        BenchCmd::Say { url, room, load } => {
            let data =
                serde_json::json!({"room": room, "text": "hello, this is a benchmark message"});
            let cpu = cpu_watch(bus, args, &load.cpu).await?;
            ws_load(url, "chat", "say", data, load, cpu).await
        }
        other => return attacks_and_fanout(bus, args, other).await,
    };
    report.map_err(Failure::Usage)?.print(args.json);
    Ok(())
}

/// `--cpu`: each process's CPU over the run, from /proc (see [`crate::bench::cpu`]).
async fn cpu_watch(
    bus: &Handle,
    args: &Args,
    cpu: &crate::cli::CpuOpts,
) -> Result<Option<crate::bench::cpu::Watch>, Failure> {
    crate::bench::cpu::watch(bus, &args.broker, cpu.cpu, cpu.cpu_db_port)
        .await
        .map_err(Failure::Usage)
}

/// The benchmarks without `--cpu`: slowloris, fan-out, idle connections.
async fn attacks_and_fanout(bus: &Handle, args: &Args, which: &BenchCmd) -> Result<(), Failure> {
    let report = match which {
        BenchCmd::Slowloris {
            url,
            sockets,
            sources,
            pings,
            duration_ms,
            token,
            pid,
        } => {
            crate::bench::slowloris(crate::bench::SlowlorisArgs {
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
            crate::bench::fanout(crate::bench::FanoutArgs {
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
            crate::bench::idle(crate::bench::IdleArgs {
                url: url.clone(),
                connections: *connections,
                hold_ms: *hold_ms,
                sources: *sources,
                token: token.clone(),
                bus: bus.clone(),
            })
            .await
        }
        BenchCmd::Rr { .. } | BenchCmd::Ws { .. } | BenchCmd::Say { .. } => {
            unreachable!("run() measures these")
        }
    };
    report.map_err(Failure::Usage)?.print(args.json);
    Ok(())
}

/// `bench ws` (and `say`, which is `ws` with chat's `say`).
async fn ws_load(
    url: &str,
    service: &str,
    op: &str,
    data: serde_json::Value,
    load: &crate::cli::WsLoad,
    cpu: Option<crate::bench::cpu::Watch>,
) -> anyhow::Result<crate::bench::Report> {
    crate::bench::ws(crate::bench::WsArgs {
        url: url.to_owned(),
        service: service.to_owned(),
        op: op.to_owned(),
        data,
        connections: load.connections,
        window: load.window,
        duration_ms: load.duration_ms,
        warmup_ms: load.warmup_ms,
        token: load.token.clone(),
        cpu,
    })
    .await
}
