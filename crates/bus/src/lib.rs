//! The Switchboard bus client and the service framework every service is built on.
//!
//! # Layout
//!
//! - [`client`]: [`connect`] → [`Handle`]: requests, publish/subscribe, reconnect,
//!   heartbeats and authentication over one DEALER socket, owned by one task on the
//!   caller's current_thread runtime (or on a thread of its own otherwise).
//! - [`service`]: [`Service`]: a name, handlers for its ops, `run()`; built-in
//!   `$echo` and `$health`; drain on shutdown.
//! - [`secret_file`]: the bus secret main makes on its first run (`RUN_DIR/bus.secret`).
//! - [`svc`]: tracing, the SIGTERM/SIGINT token, exit codes, RSS.
//! - [`error`]: [`Error`], a contract error code plus a message.
//! - `metrics`: every metric the bus and the service framework record
//!   (`sb_service_*`, `sb_bus_too_large_total`).
//! - [`policy`]: the client policy (what WebSocket clients may call, subscribe
//!   to and be granted), shared by the gateway and by any service that calls on
//!   a client's behalf (chat `relay`).
#![warn(missing_docs)]

pub mod client;
pub mod error;
mod metrics;
pub mod policy;
pub mod secret_file;
pub mod service;
pub mod svc;

pub use client::{
    connect, new_trace_id, CallOptions, Config, Connection, Handle, Incoming, SharedSubscription,
    Subscription,
};
pub use error::Error;
pub use service::{HandlerResult, Reply, Request, Service, SessionsEnded};
pub use switchboard_proto as proto;
