//! `chaos`: parses its options and hands over to [`switchboard_chaos::run`]
//! (the run is described there). Exit 0: every row met its target; 1: some
//! did not; 2: the run could not be done.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = switchboard_chaos::cli::Args::parse();
    match switchboard_chaos::run(args).await {
        Ok(true) => std::process::exit(0),
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("chaos: {e:#}");
            std::process::exit(2);
        }
    }
}
