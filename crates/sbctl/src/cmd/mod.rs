//! The commands, one module per group (mini-redis's `cmd/*.rs`), and the
//! dispatch: [`run`] answers the commands that need no bus, connects, and hands
//! each other command to its group.
//!
//! # Layout
//!
//! - [`apps`]: the apps under main (PM2's daily commands): `ls`, `start`,
//!   `stop`, `restart`, `reload`, `logs`, `describe`, `shutdown`, `scale`,
//!   `reload-config`.
//! - [`messages`]: the bus by hand: `send`, `pub`, `sub`.
//! - [`inspect`]: what the system says about itself: `info`, `stats`, `owner`,
//!   `trace`.
//! - [`bench`]: `bench …`, each benchmark's options handed to [`crate::bench`].
//! - this file: [`run`], the dispatch.

pub(crate) mod apps;
pub(crate) mod bench;
pub(crate) mod inspect;
pub(crate) mod messages;

use std::time::Duration;
use switchboard_bus::{CallOptions, Config, Handle};

use crate::cli::{Args, Command};
use crate::print::ls_from_status_file;
use crate::{token, ws, Failure};

/// Runs the command `args` names.
pub(crate) async fn run(mut args: Args) -> Result<(), Failure> {
    // The commands that need no bus.
    match &args.command {
        Command::Completions { shell } => {
            let mut command = <Args as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "sbctl", &mut std::io::stdout());
            return Ok(());
        }
        Command::Token(token) => return token::run(token, args.json, &args.run_dir),
        Command::WsSend {
            service,
            op,
            data,
            url,
            token,
            listen_ms,
            ca_file,
        } => {
            let gateway = ws::Gateway {
                url,
                token: token.as_deref(),
                ca_file: ca_file.as_deref(),
            };
            return ws::ws_send(service, op, data, &gateway, *listen_ms, args.timeout_ms).await;
        }
        Command::ImportPm2 {
            file,
            output,
            force,
            node,
            timeout_secs,
        } => {
            let limit = std::time::Duration::from_secs(*timeout_secs);
            return crate::import_pm2::run(file, output.as_deref(), *force, node, limit)
                .map_err(Failure::Usage);
        }
        _ => {}
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
    let result = dispatch(&bus, &args, options).await;
    bus.close(Duration::from_millis(200)).await;
    result
}

/// Hands a command that talks to the bus to its group.
async fn dispatch(bus: &Handle, args: &Args, options: CallOptions) -> Result<(), Failure> {
    match &args.command {
        Command::Ls { .. }
        | Command::Start { .. }
        | Command::Stop { .. }
        | Command::Restart { .. }
        | Command::Reload { .. }
        | Command::Logs { .. }
        | Command::Describe { .. }
        | Command::Shutdown
        | Command::Scale { .. }
        | Command::ReloadConfig => apps::run(bus, args, options).await,
        Command::Send { .. } | Command::Pub { .. } | Command::Sub { .. } => {
            messages::run(bus, args, options).await
        }
        Command::Info { .. } | Command::Stats | Command::Owner { .. } | Command::Trace { .. } => {
            inspect::run(bus, args, options).await
        }
        Command::Bench(which) => bench::run(bus, args, which).await,
        // Answered in `run` without a bus.
        Command::Completions { .. }
        | Command::Token(_)
        | Command::WsSend { .. }
        | Command::ImportPm2 { .. } => Ok(()),
    }
}
