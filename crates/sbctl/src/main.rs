//! `sbctl`: the ops CLI. Every command talks to the broker as a pure bus client.
//!
//! Exit status: 0 on success; for `send`, a failed reply exits with the error
//! code's number (see [`failure::exit_code`]) and prints `error: CODE: message` on stderr;
//! 64 for bad usage; 66 when what was asked for is not there (a trace no
//! process holds); 69 when the broker cannot be reached; 76 when a peer's
//! reply cannot be read (sysexits' EX_PROTOCOL: the peer is at fault, not the
//! command line).
//!
//! # Layout
//!
//! - [`cli`]: the command line: every command and flag.
//! - [`cmd`]: one module per command group, and the dispatch.
//! - [`failure`]: how a command fails, and its exit status.
//! - [`hosts`]: every main on the bus (one per host), and which one an order goes to.
//! - [`import_pm2`]: `sbctl import-pm2`, a PM2 ecosystem file as ecosystem.toml.
//! - [`print`]: tables for people, JSON for scripts.
//! - [`token`]: `sbctl token`, a client token minted with the gateway's secret.
//! - [`ws`]: `ws-send`, one request through the gateway as a WebSocket client.
//! - [`bench`]: `sbctl bench`, the load generators.
//! - this file: `main`: parse, run, exit with the status.

mod bench;
mod cli;
mod cmd;
mod failure;
mod hosts;
mod import_pm2;
mod print;
mod token;
mod ws;

use clap::Parser;
use failure::{body_to_json, decode_reply, json_to_body, Failure};
use switchboard_bus::svc;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    failure::quiet_on_broken_pipe();
    let args = cli::Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        svc::init_tracing();
    }
    let code = match cmd::run(args).await {
        Ok(()) => 0,
        Err(failure) => failure.report(),
    };
    std::process::exit(code);
}
