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
    /// An allow-list of zones (comma-separated); none: any valid name, each
    /// created on first use.
    #[arg(long, env = "SB_LOC_ZONES", value_delimiter = ',')]
    zones: Vec<String>,
    /// Live zones this instance holds at most; a new one past it evicts the
    /// least recently used (its positions saved).
    #[arg(long, env = "SB_LOC_MAX_ZONES", default_value_t = 10_000)]
    max_zones: usize,
    /// Users one zone holds at most (`overloaded` for a new one past it).
    #[arg(long, env = "SB_LOC_MAX_ZONE_USERS", default_value_t = 100_000)]
    max_zone_users: usize,
    /// A zone no request named for this long is evicted (positions saved), ms.
    #[arg(long, env = "SB_LOC_ZONE_IDLE_MS", default_value_t = 600_000)]
    zone_idle_ms: u64,
    /// Largest |x| or |y|.
    #[arg(long, env = "SB_LOC_MAX_COORD", default_value_t = 1_000_000.0)]
    max_coord: f64,
    /// Largest nearby radius.
    #[arg(long, env = "SB_LOC_MAX_RADIUS", default_value_t = 100_000.0)]
    max_radius: f64,
    /// How often positions are saved, ms.
    #[arg(long, env = "SB_LOC_SAVE_INTERVAL_MS", default_value_t = 500)]
    save_interval_ms: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    svc::init_tracing();
    let args = Args::parse();
    if let Some(bad) = args
        .zones
        .iter()
        .find(|z| switchboard_bus::proto::validate_token(z).is_err())
    {
        tracing::error!(zone = %bad, "invalid zone name (letters, digits, _ and - only)");
        std::process::exit(svc::EXIT_USAGE);
    }
    let settings = Settings {
        zones: args.zones,
        max_zones: args.max_zones.max(1),
        max_zone_users: args.max_zone_users.max(1),
        zone_idle_ms: args.zone_idle_ms,
        max_coord: args.max_coord,
        max_radius: args.max_radius,
        save_interval_ms: args.save_interval_ms,
    };
    let config = args.bus.config("loc01");
    svc::serve(
        switchboard_loc::service(settings),
        config,
        args.bus.concurrency,
    )
    .await;
}
