//! `main`: the supervisor (see the library docs).

use clap::Parser;
use std::path::PathBuf;
use switchboard_bus::svc;

/// The Switchboard supervisor: runs the apps of an ecosystem file.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The ecosystem file.
    #[arg(long, short, env = "SB_ECOSYSTEM", default_value = "ecosystem.toml")]
    config: PathBuf,
    /// Profile: applies each app's `env_<NAME>` table.
    #[arg(long)]
    env: Option<String>,
    /// Only monitor the bus; start nothing.
    #[arg(long)]
    no_spawn: bool,
    /// Broker endpoint (with --no-spawn).
    #[arg(long, env = "SB_BROKER", default_value = switchboard_bus::proto::DEFAULT_BROKER)]
    broker: String,
    /// Shared bus secret, given to the broker and every app. Without it main
    /// uses RUN_DIR/bus.secret, made (mode 0600) on the first run.
    #[arg(long, env = "SB_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Run the bus without a secret (loopback only): every local user can
    /// then join it as any service, and run `main stop`.
    #[arg(long, env = "SB_INSECURE", value_parser = clap::builder::FalseyValueParser::new())]
    insecure: bool,
    /// Check the ecosystem file, print the start order, and exit.
    #[arg(long)]
    check: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    svc::init_tracing();
    let args = Args::parse();
    if args.check {
        std::process::exit(switchboard_supervisor::check(
            &args.config,
            args.env.as_deref(),
        ));
    }
    let code = switchboard_supervisor::run(switchboard_supervisor::Options {
        config: args.config,
        env: args.env,
        no_spawn: args.no_spawn,
        broker: args.broker,
        secret: args.secret,
        insecure: args.insecure,
    })
    .await;
    std::process::exit(code);
}
