//! What every service binary shares: the process skeleton (re-exported from
//! `switchboard-svc`), `serve`, and the bus options (`BusArgs`).

pub use switchboard_svc::*;

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
