//! The service framework: a name, handlers for its ops, and `run()`.
//!
//! ```no_run
//! use switchboard_bus::{Config, Service, Request, Error};
//! # async fn demo(shutdown: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
//! Service::new("greeter")
//!     .handle("hello", |req: Request| async move {
//!         let name: String = req.decode()?;
//!         Request::encode(&format!("hello, {name}"))
//!     })
//!     .run(Config::default(), shutdown)
//!     .await
//! # }
//! ```
//!
//! `run` registers the instance, says `ready`, and runs each request's handler on
//! its own task, at most `concurrency` at once (the credit it announces, so the
//! broker never sends more). Every service also answers `$echo` (the body back,
//! unchanged), `$health` ([`switchboard_proto::Health`]) and `$info` ([`switchboard_proto::Info`]: its ops and versions). On shutdown (the token,
//! SIGTERM/SIGINT in the binaries, or a drain asked through the broker) it drains:
//! takes itself out of rotation, waits for the broker's acknowledgement (after which
//! nothing new arrives), finishes what is in flight within the grace period, says
//! `bye` and returns.
//!
//! # Layout
//!
//! - `request`: what a handler sees and returns ([`Request`], [`Reply`]).
//! - `serve`: one request's task: built-in ops, the handler under its
//!   deadline, the counters, the reply.
//! - `sessions`: the "these sessions ended" hook ([`SessionsEnded`]).
//! - this file: [`Service`], its builder and `run` (register, ready, drain).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_proto::Envelope;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{connect, Config, Handle, Incoming};

mod request;
mod serve;
mod sessions;

use crate::Error;
pub use request::{HandlerResult, Reply, Request};
use serve::{serve_one, Counters, Ctx};
pub use sessions::SessionsEnded;

type BoxFuture = Pin<Box<dyn Future<Output = Result<Reply, Error>> + Send>>;
type Handler = Arc<dyn Fn(Request) -> BoxFuture + Send + Sync>;
type HealthFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;
type TaskFn =
    Box<dyn FnOnce(Handle, CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;
type EventFn =
    Arc<dyn Fn(Envelope, Handle) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A service under construction. See the module docs.
pub struct Service {
    name: String,
    version: String,
    handlers: HashMap<String, Handler>,
    concurrency: u32,
    grace: Duration,
    health: Option<HealthFn>,
    tasks: Vec<TaskFn>,
    events: Vec<(String, EventFn)>,
}

impl Service {
    /// A service named `name` with no handlers yet, concurrency 256, grace 10 s.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            version: String::new(),
            handlers: HashMap::new(),
            concurrency: 256,
            grace: Duration::from_secs(10),
            health: None,
            tasks: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Sets the version `$info` reports: `.version(env!("CARGO_PKG_VERSION"))`.
    pub fn version(mut self, version: &str) -> Self {
        version.clone_into(&mut self.version);
        self
    }

    /// Sets what `$health` reports as `status` (`"ok"` by default): a service with
    /// a dependency checks it here (the db service pings MariaDB).
    pub fn health<F, Fut>(mut self, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = String> + Send + 'static,
    {
        self.health = Some(Arc::new(move || Box::pin(check())));
        self
    }

    /// Adds a background task, started once registered. Its token is cancelled
    /// after a drain has finished the in-flight requests, and `run` waits for the
    /// task (within the grace period) before saying bye, so it can flush state
    /// over the still-connected bus.
    pub fn task<F, Fut>(mut self, task: F) -> Self
    where
        F: FnOnce(Handle, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks
            .push(Box::new(move |bus, token| Box::pin(task(bus, token))));
        self
    }

    /// Handles events matching `pattern`, one at a time in arrival order.
    pub fn on_event<F, Fut>(mut self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Envelope, Handle) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.events.push((
            pattern.to_owned(),
            Arc::new(move |env, bus| Box::pin(handler(env, bus))),
        ));
        self
    }

    /// Adds a handler for `op`. It returns a body (`Vec<u8>`) or a [`Reply`].
    pub fn handle<F, Fut, R>(mut self, op: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Error>> + Send + 'static,
        R: Into<Reply> + 'static,
    {
        let handler = Arc::new(handler);
        self.handlers.insert(
            op.to_owned(),
            Arc::new(move |req| {
                let fut = handler(req);
                Box::pin(async move { fut.await.map(Into::into) }) as BoxFuture
            }),
        );
        self
    }

    /// Adds a handler for `op` that gets the service's shared `state` with each
    /// request (the framework clones the `Arc`, not every handler by hand).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchboard_bus::{Request, Service};
    /// let hits = Arc::new(std::sync::atomic::AtomicU64::new(0));
    /// Service::new("counter").handle_with("hit", &hits, |_req: Request, hits| async move {
    ///     let n = hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    ///     Request::encode(&n)
    /// });
    /// ```
    pub fn handle_with<S, F, Fut, R>(self, op: &str, state: &Arc<S>, handler: F) -> Self
    where
        S: Send + Sync + 'static,
        F: Fn(Request, Arc<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Error>> + Send + 'static,
        R: Into<Reply> + 'static,
    {
        let state = state.clone();
        self.handle(op, move |req| handler(req, state.clone()))
    }

    /// As [`Service::on_event`], with the service's shared `state`.
    pub fn on_event_with<S, F, Fut>(self, pattern: &str, state: &Arc<S>, handler: F) -> Self
    where
        S: Send + Sync + 'static,
        F: Fn(Envelope, Handle, Arc<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let state = state.clone();
        self.on_event(pattern, move |env, bus| handler(env, bus, state.clone()))
    }

    /// How many requests run at once (also the credit given to the broker).
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How long a drain waits for in-flight requests before leaving anyway.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The encoded `$info` answer of this service as instance `instance`.
    fn info(&self, instance: &str) -> Result<Vec<u8>, crate::Error> {
        let mut ops: Vec<String> = self.handlers.keys().cloned().collect();
        ops.extend(serve::BUILTIN_OPS.map(String::from));
        ops.sort();
        let info = switchboard_proto::Info {
            service: self.name.clone(),
            instance: instance.to_owned(),
            version: self.version.clone(),
            bus_version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: format!(
                "{}.{}",
                switchboard_proto::PROTOCOL_VERSION >> 8,
                switchboard_proto::PROTOCOL_VERSION & 0xff
            ),
            ops,
            events: self.events.iter().map(|(p, _)| p.clone()).collect(),
        };
        Ok(switchboard_proto::to_body(&info)?)
    }

    /// Registers and serves until `shutdown` is cancelled or a drain is asked for,
    /// then drains and returns.
    ///
    /// # Errors
    ///
    /// When the configuration is invalid.
    pub async fn run(self, mut config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
        config.service.clone_from(&self.name);
        config.credit = self.concurrency;
        let info = self.info(&config.instance)?;
        let conn = connect(config)?;
        let handle = conn.handle;
        let mut inbound = conn.inbound;
        let background = CancellationToken::new();
        let side_tasks = TaskTracker::new();
        for (pattern, handler) in self.events {
            let mut sub = handle.subscribe(&pattern).await?;
            let bus = handle.clone();
            let token = background.clone();
            side_tasks.spawn(async move {
                loop {
                    tokio::select! {
                        () = token.cancelled() => break,
                        event = sub.next() => match event {
                            Some(event) => handler(event, bus.clone()).await,
                            None => break,
                        },
                    }
                }
            });
        }
        for task in self.tasks {
            side_tasks.spawn(task(handle.clone(), background.clone()));
        }
        side_tasks.close();
        handle.ready().await?;
        let started = Instant::now();
        let counters = Arc::new(Counters::default());
        let handlers = Arc::new(self.handlers);
        let tracker = TaskTracker::new();
        let drain_asked = handle.drain_requested();
        tokio::pin!(drain_asked);

        let health = self.health.clone();
        let info = Arc::new(info);
        let spawn = |incoming: Incoming| {
            let info = info.clone();
            let handle = handle.clone();
            let handlers = handlers.clone();
            let counters = counters.clone();
            let name = self.name.clone();
            let health = health.clone();
            // Boxed: the request's state machine is large, and spawning moves a
            // future by value several times (a memmove hot spot in the profile).
            tracker.spawn(Box::pin(async move {
                let ctx = Ctx {
                    handlers: &handlers,
                    counters: &counters,
                    name: &name,
                    started,
                    health: health.as_ref(),
                    info: &info,
                };
                serve_one(incoming, handle, ctx).await;
            }));
        };

        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = &mut drain_asked => {
                    tracing::info!("drain requested through the bus");
                    break;
                }
                incoming = inbound.recv() => match incoming {
                    Some(incoming) => spawn(incoming),
                    None => break,
                },
            }
        }

        // Drain: out of rotation first, then finish what arrived before the ack.
        tracing::info!(
            inflight = counters.inflight.load(Ordering::Relaxed),
            "draining"
        );
        let acked = handle.drain(Duration::from_secs(2)).await;
        if let Err(e) = &acked {
            tracing::warn!(error = %e, "drain not acknowledged; finishing in-flight work anyway");
        }
        while let Ok(incoming) = inbound.try_recv() {
            spawn(incoming);
        }
        tracker.close();
        if tokio::time::timeout(self.grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_ms = self.grace.as_millis() as u64,
                "in-flight requests did not finish within the grace period"
            );
        }
        background.cancel();
        if tokio::time::timeout(self.grace, side_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not finish within the grace period");
        }
        handle.close(Duration::from_secs(1)).await;
        tracing::info!("stopped");
        Ok(())
    }
}
