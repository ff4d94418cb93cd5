//! `receive`: the WebSocket gateway (see the library docs) until SIGTERM/SIGINT.
//! The command line is [`switchboard_gateway::cli::Cli`].

use clap::Parser;
use switchboard_bus::svc;
use switchboard_gateway::cli::Cli;

fn main() {
    svc::init_tracing();
    let cli = Cli::parse();
    let settings = cli.settings().unwrap_or_else(|e| {
        eprintln!("receive: {e}");
        std::process::exit(svc::EXIT_USAGE);
    });
    // One thread (a current_thread runtime, which the bus socket task then
    // shares) measured faster on a 2-core machine than a multi_thread runtime
    // plus the bus thread; more threads pay off only with cores to spare.
    let built = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    };
    let rt = built.unwrap_or_else(|e| {
        eprintln!("receive: cannot start the runtime: {e}");
        std::process::exit(svc::EXIT_FAILURE);
    });
    let code = rt.block_on(cli.run(settings));
    std::process::exit(code);
}
