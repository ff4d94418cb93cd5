//! `db`: the db service (see the library docs) until SIGTERM/SIGINT.

use clap::Parser;
use switchboard_bus::{svc, Config};
use switchboard_db::{Db, Settings};

/// The Switchboard db service: the only process that talks to MariaDB.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Broker endpoint.
    #[arg(long, env = "SB_BROKER", default_value = "tcp://127.0.0.1:5555")]
    broker: String,
    /// Instance name.
    #[arg(long, env = "SB_INSTANCE", default_value = "db")]
    instance: String,
    /// Shared bus secret.
    #[arg(long, env = "SB_SECRET", hide_env_values = true)]
    secret: Option<String>,
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
    /// Requests handled at once.
    #[arg(long, env = "SB_CONCURRENCY", default_value_t = 1024)]
    concurrency: u32,
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
    let config = Config {
        broker: args.broker,
        instance: args.instance,
        secret: args.secret,
        ..Config::default()
    };
    // A service that cannot run exits inside serve(); the pool closes either way
    // when the process ends.
    svc::serve(
        switchboard_db::service(db.clone()),
        config,
        args.concurrency,
    )
    .await;
    db.close().await;
}
