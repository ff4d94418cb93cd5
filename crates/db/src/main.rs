//! `db`: the db service (see the library docs) until SIGTERM/SIGINT.

use clap::Parser;
use switchboard_bus::svc::{self, BusArgs};
use switchboard_db::{Db, Settings};

/// The Switchboard db service: the only process that talks to MariaDB.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    bus: BusArgs,
    /// MariaDB URL; the database is created if missing.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "mysql://root@127.0.0.1:3306/switchboard",
        hide_env_values = true
    )]
    database_url: String,
    /// Pool size.
    #[arg(long, env = "SB_DB_POOL_MAX", default_value_t = 16)]
    pool_max: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    svc::init_tracing();
    let args = Args::parse();
    let settings = Settings {
        database_url: args.database_url,
        pool_max: args.pool_max,
        ..Settings::default()
    };
    let db = match Db::new(&settings) {
        Ok(db) => db,
        Err(e) => {
            tracing::error!(error = %e, "bad settings");
            std::process::exit(svc::EXIT_USAGE);
        }
    };
    let config = args.bus.config("db");
    // A service that cannot run exits inside serve(); the pool closes either way
    // when the process ends.
    svc::serve(
        switchboard_db::service(db.clone()),
        config,
        args.bus.concurrency,
    )
    .await;
    db.close().await;
}
