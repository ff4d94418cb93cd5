//! The echo demo service: the smallest real service on the bus. ecosystem.toml
//! defines it without starting it (`sbctl start echo`, for trying the bus and
//! `sbctl bench rr`); the bus tests run it as a real child process. Ops:
//!
//! - `echo`: replies with its body unchanged (like the built-in `$echo`);
//! - `sleep` `{ "ms": N }`: replies `{ "slept_ms": N }` after N ms (at most 60 s),
//!   for demos and tests of deadlines, drains and worker loss;
//! - `whoami`: replies `{ "instance": … }`, to see balancing and pinning.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use switchboard_bus::{Error, Request, Service};

#[derive(Deserialize)]
struct SleepArgs {
    ms: u64,
}

/// Reply of `sleep`.
#[derive(Serialize, Deserialize, Debug)]
pub struct Slept {
    /// How long it slept.
    pub slept_ms: u64,
}

/// Reply of `whoami`.
#[derive(Serialize, Deserialize, Debug)]
pub struct WhoAmI {
    /// The instance that answered.
    pub instance: String,
}

/// Longest `sleep` accepted.
pub const MAX_SLEEP_MS: u64 = 60_000;

/// The echo service under `name`, ready to `run`.
pub fn service(name: &str) -> Service {
    Service::new(name)
        .version(env!("CARGO_PKG_VERSION"))
        .handle(
            "echo",
            |req: Request| async move { Ok(req.env.body.into_vec()) },
        )
        .handle("sleep", |req: Request| async move {
            let args: SleepArgs = req.decode()?;
            if args.ms > MAX_SLEEP_MS {
                return Err(Error::bad_request(format!(
                    "ms must be at most {MAX_SLEEP_MS}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(args.ms)).await;
            Request::encode(&Slept { slept_ms: args.ms })
        })
        .handle("whoami", |req: Request| async move {
            Request::encode(&WhoAmI {
                instance: req.bus.instance().to_owned(),
            })
        })
}
