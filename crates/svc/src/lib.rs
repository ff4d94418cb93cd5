//! What every Switchboard binary shares, broker and supervisor included: tracing
//! set-up, the shutdown signal, exit codes. No bus: the broker links this, not
//! the bus client.
//!
//! # Layout
//!
//! - [`backoff`]: [`Backoff`], the one shape of every retry loop's waits.
//! - [`metrics`]: the process's Prometheus recorder and [`metrics::render`].
//! - [`procinfo`]: what `/proc` says about a process (memory, CPU, state).
//! - [`secret`]: secrets from the environment or a file, never the command line.
//! - [`trace`]: the spans of recent requests, found by trace id (`$trace`).
//! - this file: tracing set-up, the shutdown signal, exit codes.
#![warn(missing_docs)]

pub mod backoff;
pub mod metrics;
pub mod procinfo;
pub mod secret;
pub mod trace;

pub use backoff::Backoff;

use tokio_util::sync::CancellationToken;

// Every binary's allocator. glibc's malloc and free are among the largest
// items in the profile of every process on the request path (BENCHMARKS.md,
// issues 15 and 24); mimalloc's thread-local free lists take most of that away.
// What it costs in idle memory is measured beside what it saves per request
// (BENCHMARKS.md, issue 24). Built without transparent huge pages (the
// `no_thp` feature of the workspace dependency): with them, mimalloc's arenas
// more than doubled every process's idle RSS (the broker's 6.6 -> 14.9 MiB),
// which is why round 2 had reverted it; without, the broker idles at 7.4 MiB.
// A library user who wants their own allocator turns the `mimalloc` feature off.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad configuration or usage (BSD `EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;
/// Exit code for a runtime failure.
pub const EXIT_FAILURE: i32 = 1;

/// Initializes tracing once: `RUST_LOG` filter (default `info`), JSON lines when
/// `SB_LOG_FORMAT=json`, plain text otherwise, to stderr.
pub fn init_tracing() {
    // Metrics recorded from the first request on are counted.
    self::metrics::install();
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr is a pipe to a supervisor
        // that died) is lost, never fatal: by default tracing-subscriber reports
        // the failure with eprintln!, which panics on the same broken stderr and
        // took every process down with a killed main.
        .log_internal_errors(false);
    let json = std::env::var("SB_LOG_FORMAT").is_ok_and(|v| v == "json");
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// A token cancelled on the first SIGTERM or SIGINT (PM2 and systemd send
/// SIGTERM). Must be called inside a tokio runtime.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, only ctrl-c via the portable API is left.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub use procinfo::rss_bytes;

/// Raises this process's soft limit on open files to its hard limit (a
/// gateway holds one file per connection) and returns the soft limit now in
/// force (the old one when raising was refused). Through `nix`, as `unsafe` is
/// forbidden here.
pub fn raise_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if hard > soft && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}
