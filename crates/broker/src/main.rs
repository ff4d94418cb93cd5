//! `broker`: binds the ROUTER socket and runs the broker until SIGTERM/SIGINT.
//! The command line is [`switchboard_broker::cli::Cli`].

use clap::Parser;
use switchboard_broker::cli::{self, Cli};
use switchboard_svc as svc;

fn main() {
    svc::init_tracing();
    let settings = Cli::parse().settings().unwrap_or_else(|e| {
        eprintln!("broker: {e}");
        std::process::exit(svc::EXIT_USAGE);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("broker: cannot start the runtime: {e}");
            std::process::exit(svc::EXIT_FAILURE);
        });
    let code = rt.block_on(cli::run(settings));
    std::process::exit(code);
}
