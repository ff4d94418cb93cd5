//! What every binary shares: tracing set-up, the shutdown signal, exit codes,
//! process memory.

use tokio_util::sync::CancellationToken;

/// Exit code for bad configuration or usage (BSD `EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;
/// Exit code for a runtime failure.
pub const EXIT_FAILURE: i32 = 1;

/// Initializes tracing once: `RUST_LOG` filter (default `info`), JSON lines when
/// `SB_LOG_FORMAT=json`, plain text otherwise, to stderr.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr is a pipe to a supervisor
        // that died) is lost, never fatal: by default tracing-subscriber reports
        // the failure with eprintln!, which panics on the same broken stderr and
        // took every process down with a killed main.
        .log_internal_errors(false);
    let json = std::env::var("SB_LOG_FORMAT").is_ok_and(|v| v == "json");
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// A token cancelled on the first SIGTERM or SIGINT (PM2 and systemd send
/// SIGTERM). Must be called inside a tokio runtime.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, only ctrl-c via the portable API is left.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Resident set size of this process in bytes, from `/proc/self/statm` (0 where
/// that does not exist).
pub fn rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Runs a service binary's service until SIGTERM/SIGINT (drained), and exits
/// with 64 when it cannot run (bad settings). What every service `main.rs` ends with.
pub async fn serve(service: crate::Service, config: crate::Config, concurrency: u32) {
    let name = config.instance.clone();
    let result = service
        .concurrency(concurrency)
        .run(config, shutdown_on_signal())
        .await;
    if let Err(e) = result {
        tracing::error!(instance = %name, error = %e, "service failed");
        std::process::exit(EXIT_USAGE);
    }
}

/// The command-line options every service binary shares (`#[command(flatten)]`).
#[cfg(feature = "cli")]
#[derive(clap::Args, Debug, Clone)]
pub struct BusArgs {
    /// Broker endpoint.
    #[arg(long, env = "SB_BROKER", default_value = switchboard_proto::DEFAULT_BROKER)]
    pub broker: String,
    /// Instance name, unique on the bus (the service's own default when absent).
    #[arg(long, env = "SB_INSTANCE")]
    pub instance: Option<String>,
    /// Shared bus secret.
    #[arg(long, env = "SB_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Requests handled at once (the credit given to the broker).
    #[arg(long, env = "SB_CONCURRENCY", default_value_t = 1024)]
    pub concurrency: u32,
}

#[cfg(feature = "cli")]
impl BusArgs {
    /// The bus configuration these options describe.
    pub fn config(&self, default_instance: &str) -> crate::Config {
        crate::Config {
            broker: self.broker.clone(),
            instance: self
                .instance
                .clone()
                .unwrap_or_else(|| default_instance.to_owned()),
            secret: self.secret.clone(),
            ..crate::Config::default()
        }
    }
}
