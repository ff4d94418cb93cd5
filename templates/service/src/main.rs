//! `greeter`: a minimal Switchboard service. It registers on the bus as
//! `greeter`, says ready, and answers `hello {name}` with `{greeting}`; like
//! every service it also answers `$echo`, `$health` and `$info`, and drains on
//! SIGTERM. Run it under `main` with the `ecosystem.toml` entry beside this file.

use clap::Parser;
use serde::{Deserialize, Serialize};
use switchboard_bus::svc::{self, BusArgs};
use switchboard_bus::{Error, Request, Service};

/// A Switchboard service: `hello {name}` → `{greeting}`.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// --broker, --instance, --secret, --concurrency (and SB_BROKER, SB_INSTANCE,
    /// SB_SECRET, which main sets): the options every service shares.
    #[command(flatten)]
    bus: BusArgs,
}

#[derive(Deserialize)]
struct Hello {
    name: String,
}

#[derive(Serialize)]
struct Greeting {
    greeting: String,
}

fn service() -> Service {
    Service::new("greeter")
        .version(env!("CARGO_PKG_VERSION"))
        .handle("hello", |req: Request| async move {
            let hello: Hello = req.decode()?;
            if hello.name.is_empty() || hello.name.len() > 64 {
                return Err(Error::bad_request("name must be 1 to 64 bytes"));
            }
            Request::encode(&Greeting {
                greeting: format!("hello, {}", hello.name),
            })
        })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    svc::init_tracing();
    let args = Args::parse();
    let config = args.bus.config("greeter");
    svc::serve(service(), config, args.bus.concurrency).await;
}
