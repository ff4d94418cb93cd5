//! `chat`: the chat service (see the library docs) until SIGTERM/SIGINT.

use clap::Parser;
use switchboard_bus::policy::Policy;
use switchboard_bus::svc::{self, BusArgs};

/// The Switchboard chat service.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    bus: BusArgs,
    /// The client policy file (TOML) `relay` applies: the gateway's (`receive
    /// --policy`). Without it, the built-in one, as the gateway's default.
    #[arg(long, env = "SB_POLICY")]
    policy: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    svc::init_tracing();
    let args = Args::parse();
    let policy = match &args.policy {
        Some(path) => Policy::load(path).unwrap_or_else(|e| {
            eprintln!("chat: --policy {e}");
            std::process::exit(svc::EXIT_USAGE);
        }),
        None => Policy::default(),
    };
    let config = args.bus.config("chat");
    svc::serve(
        switchboard_chat::service_with(policy),
        config,
        args.bus.concurrency,
    )
    .await;
}
