//! `chat`: the chat service (see the library docs) until SIGTERM/SIGINT.

use clap::Parser;
use switchboard_bus::svc::{self, BusArgs};

/// The Switchboard chat service.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    bus: BusArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    svc::init_tracing();
    let args = Args::parse();
    let config = args.bus.config("chat");
    svc::serve(switchboard_chat::service(), config, args.bus.concurrency).await;
}
