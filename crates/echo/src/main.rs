//! `echo`: runs the echo demo service (see the library docs) until SIGTERM/SIGINT.

use clap::Parser;
use switchboard_bus::{svc, Config};

/// A demo service for the Switchboard bus: ops echo, sleep, whoami.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Broker endpoint.
    #[arg(long, env = "SB_BROKER", default_value = "tcp://127.0.0.1:5555")]
    broker: String,
    /// Service name to register.
    #[arg(long, env = "SB_SERVICE", default_value = "echo")]
    service: String,
    /// Instance name (unique on the bus); SERVICE-PID by default.
    #[arg(long, env = "SB_INSTANCE")]
    instance: Option<String>,
    /// Shared bus secret.
    #[arg(long, env = "SB_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Requests handled at once.
    #[arg(long, env = "SB_CONCURRENCY", default_value_t = 256)]
    concurrency: u32,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    svc::init_tracing();
    let args = Args::parse();
    let instance = args
        .instance
        .unwrap_or_else(|| format!("{}-{}", args.service, std::process::id()));
    let config = Config {
        broker: args.broker,
        instance,
        secret: args.secret,
        ..Config::default()
    };
    svc::serve(
        switchboard_echo::service(&args.service),
        config,
        args.concurrency,
    )
    .await;
}
