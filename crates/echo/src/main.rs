//! `echo`: runs the echo demo service (see the library docs) until SIGTERM/SIGINT.

use clap::Parser;
use switchboard_bus::svc::{self, BusArgs};

/// A demo service for the Switchboard bus: ops echo, sleep, whoami.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    bus: BusArgs,
    /// Service name to register.
    #[arg(long, env = "SB_SERVICE", default_value = "echo")]
    service: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    svc::init_tracing();
    let args = Args::parse();
    let config = args
        .bus
        .config(&format!("{}-{}", args.service, std::process::id()));
    svc::serve(
        switchboard_echo::service(&args.service),
        config,
        args.bus.concurrency,
    )
    .await;
}
