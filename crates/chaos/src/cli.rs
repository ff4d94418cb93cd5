//! The `chaos` binary's options.

use clap::Parser;

/// The chaos run.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Args {
    /// A few faults and short outages (about a minute): the variant in scripts/test.sh.
    #[arg(long)]
    pub quick: bool,
    /// WebSocket clients of the steady load.
    #[arg(long, default_value_t = 12)]
    pub clients: usize,
    /// Requests per second per client.
    #[arg(long, default_value_t = 10)]
    pub rate: u32,
    /// MariaDB server (a database of the run's own is created and dropped);
    /// default: what scripts/ensure-mariadb.sh saved in run/mariadb.env, else
    /// mysql://root@127.0.0.1:3306.
    #[arg(long, env = "SB_TEST_MYSQL")]
    pub mysql: Option<String>,
    /// Write the table as Markdown to this file too.
    #[arg(long)]
    pub markdown: Option<std::path::PathBuf>,
    /// Instead of faults: SECS of client churn with every process's memory
    /// sampled; exit 0 when it stays flat (within 10%) after warm-up.
    #[arg(long, value_name = "SECS")]
    pub soak: Option<u64>,
}
