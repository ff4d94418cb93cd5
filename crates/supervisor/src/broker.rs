//! Keeping the broker: adopting the one a killed main left running, starting
//! it, and restarting it when it exits (it stops last, after the apps).

use std::sync::Arc;
use std::time::Duration;
use switchboard_bus::svc::Backoff;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use crate::apps::{self, InstanceState, Supervisor};
use crate::{ecosystem, logs, proc};

/// The broker main uses: another host's (`[broker] connect`: start none), the
/// `--no-spawn` endpoint, the one a killed main left running (adopted), or a
/// new one. Returns its endpoint, the process to keep (`None` when it is not
/// this main's) and its restarts so far.
///
/// # Errors
///
/// When a new broker cannot be started.
pub(crate) async fn find_or_start(
    eco: &ecosystem::Ecosystem,
    options: &crate::Options,
    secret: Option<&str>,
) -> anyhow::Result<(String, Option<proc::Proc>, u32)> {
    if let Some(endpoint) = &eco.broker.connect {
        return Ok((endpoint.clone(), None, 0));
    }
    if options.no_spawn {
        return Ok((options.broker.clone(), None, 0));
    }
    let previous = apps::read_status_file(&eco.run_dir);
    if let Some((endpoint, proc, restarts)) = adoptable_broker(eco, previous.as_ref()).await {
        tracing::info!(%endpoint, pid = proc.pid, "adopted the running broker");
        return Ok((endpoint, Some(proc), restarts));
    }
    let (endpoint, proc) = start_broker(eco, &eco.broker.bind, secret).await?;
    Ok((endpoint, Some(proc), 0))
}

/// The broker a previous main left running (it was killed, the broker was not):
/// its pid from the status file still runs the broker binary, and its endpoint
/// takes connections. Returns (endpoint, process, restarts so far).
async fn adoptable_broker(
    eco: &ecosystem::Ecosystem,
    previous: Option<&apps::StatusFile>,
) -> Option<(String, proc::Proc, u32)> {
    let file = previous?;
    let row = file.instances.iter().find(|i| i.app == "broker")?;
    let bin = ecosystem::resolve_bin(&eco.broker.bin, &eco.base).ok()?;
    let name = bin.file_name()?.to_string_lossy().into_owned();
    let exe = proc::exe_of(row.pid)?;
    // `/proc/PID/exe` reads "… (deleted)" once the binary was rebuilt: a prefix.
    let runs_broker = exe
        .file_name()
        .is_some_and(|f| f.to_string_lossy().starts_with(&name));
    if !proc::alive(row.pid) || !runs_broker {
        return None;
    }
    // In a pair, the status file holds both endpoints; this host's broker is
    // the one `bind` names (a pair's addresses are fixed, never port 0).
    let local = if eco.broker.pair.is_empty() {
        file.broker_endpoint.clone()
    } else {
        eco.broker.bind.clone()
    };
    let addr = local.strip_prefix("tcp://")?;
    let answers = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .is_ok_and(|c| c.is_ok());
    answers.then(|| {
        (
            local.clone(),
            proc::Proc::adopt(row.pid, row.started_at_ms),
            row.restarts,
        )
    })
}

/// The wait before restarting a broker that keeps exiting at once: 100 ms
/// doubling to 5 s (none after the first exit).
const BROKER_RESTART: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Keeps the broker running: when it exits (killed, crashed) it is started again
/// at once on the same endpoint (the one it bound first, so a port picked by the
/// OS stays), with a growing delay (100 ms doubling to 5 s) only while it keeps
/// exiting within a second of its start. Services, gateways and sbctl reconnect by
/// themselves. Stops it (gracefully) when `stop` is cancelled.
pub(crate) async fn keep_broker(
    sup: Arc<Supervisor>,
    endpoint: String,
    mut proc: proc::Proc,
    stop: CancellationToken,
) {
    let mut quick_exits: u32 = 0;
    loop {
        sup.broker_online(proc.pid, proc.started_ms);
        tokio::select! {
            () = stop.cancelled() => {
                tracing::info!("stopping the broker");
                proc.stop(Duration::from_secs(5)).await;
                sup.broker_state(InstanceState::Stopped);
                return;
            }
            status = proc.wait() => {
                let uptime = proc.started.elapsed();
                tracing::error!(pid = proc.pid, %status, uptime_ms = uptime.as_millis() as u64, "the broker exited; restarting it");
                quick_exits = if uptime < Duration::from_secs(1) { quick_exits + 1 } else { 0 };
            }
        }
        sup.broker_state(InstanceState::Restarting);
        loop {
            let delay = match quick_exits {
                0 => Duration::ZERO,
                n => BROKER_RESTART.delay(n - 1),
            };
            tokio::select! {
                () = stop.cancelled() => {
                    sup.broker_state(InstanceState::Stopped);
                    return;
                }
                () = tokio::time::sleep(delay) => {}
            }
            match start_broker(&sup.eco, &endpoint, sup.secret.as_deref()).await {
                Ok((_, new)) => {
                    proc = new;
                    sup.broker_restarted();
                    tracing::info!(pid = proc.pid, %endpoint, "broker restarted");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "broker restart failed; retrying");
                    quick_exits += 1;
                }
            }
        }
    }
}

/// Spawns the broker bound to `bind` and reads the endpoint it bound.
pub(crate) async fn start_broker(
    eco: &ecosystem::Ecosystem,
    bind: &str,
    secret: Option<&str>,
) -> anyhow::Result<(String, proc::Proc)> {
    let bin = ecosystem::resolve_bin(&eco.broker.bin, &eco.base)
        .map_err(|e| anyhow::anyhow!("[broker] {e}"))?;
    let services: Vec<&str> = eco.apps.iter().map(|a| a.spec.name.as_str()).collect();
    let mut args = vec![
        "--bind".to_owned(),
        bind.to_owned(),
        "--services".to_owned(),
        services.join(","),
    ];
    args.extend(eco.broker.args.iter().cloned());
    let mut env = proc::base_env(&[]);
    env.extend(eco.broker.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    // The secret goes in the environment, never in args (`ps` shows args).
    match secret {
        Some(secret) => env.push(("SB_SECRET".into(), secret.into())),
        None => env.push(("SB_INSECURE".into(), "1".into())),
    }
    let log_dir = eco.run_dir.join("logs");
    let log = Arc::new(logs::LogFile::open(
        &log_dir,
        "broker",
        eco.main.log_max_bytes,
        eco.main.log_keep,
    )?);
    let (proc, stdout) = proc::spawn_reporting(&bin, &args, None, &env, log.clone())?;
    let stdout = stdout.ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .map_err(|_| anyhow::anyhow!("the broker did not report its endpoint within 10 s"))??
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the broker exited at start (see {}/broker.log)",
                log_dir.display()
            )
        })?;
    let endpoint = first
        .strip_prefix("listening ")
        .ok_or_else(|| anyhow::anyhow!("unexpected broker output: {first}"))?
        .to_owned();
    // Anything it prints later goes to its log, like every app's output.
    tokio::spawn(proc::pump(lines.into_inner(), log));
    tracing::info!(%endpoint, pid = proc.pid, "broker started");
    Ok((endpoint, proc))
}
