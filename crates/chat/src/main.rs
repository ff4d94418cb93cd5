//! `chat`: the chat service (see the library docs) until SIGTERM/SIGINT.

use clap::Parser;
use switchboard_bus::{svc, Config};

/// The Switchboard chat service.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Broker endpoint.
    #[arg(long, env = "SB_BROKER", default_value = "tcp://127.0.0.1:5555")]
    broker: String,
    /// Instance name.
    #[arg(long, env = "SB_INSTANCE", default_value = "chat")]
    instance: String,
    /// Shared bus secret.
    #[arg(long, env = "SB_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Requests handled at once.
    #[arg(long, env = "SB_CONCURRENCY", default_value_t = 1024)]
    concurrency: u32,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    svc::init_tracing();
    let args = Args::parse();
    let config = Config {
        broker: args.broker,
        instance: args.instance,
        secret: args.secret,
        ..Config::default()
    };
    svc::serve(switchboard_chat::service(), config, args.concurrency).await;
}
