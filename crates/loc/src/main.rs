//! `loc`: the loc service (see the library docs) until SIGTERM/SIGINT.

use clap::Parser;
use switchboard_bus::svc::{self, BusArgs};
use switchboard_loc::Settings;

/// The Switchboard location service.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    bus: BusArgs,
    #[command(flatten)]
    loc: Settings,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    svc::init_tracing();
    let args = Args::parse();
    let settings = match args.loc.check() {
        Ok(settings) => settings,
        Err(why) => {
            tracing::error!(error = %why, "bad settings");
            std::process::exit(svc::EXIT_USAGE);
        }
    };
    let config = args.bus.config("loc01");
    svc::serve(
        switchboard_loc::service(settings),
        config,
        args.bus.concurrency,
    )
    .await;
}
