//! Test helpers for Switchboard (a dev-dependency only).
//!
//! - [`TestBroker`]: the broker library on its own thread and current_thread
//!   runtime, bound to `tcp://127.0.0.1:0`; dropping it stops it.
//! - [`Child`]: one of our real binaries as a child process, with real signals;
//!   dropping it kills it.
//! - [`client`]: a connected bus client; [`broker_stats`], [`broker_ls`]: the
//!   broker's own view; [`eventually`]: poll a condition until a deadline.
//! - [`trace_init`]: test logging, shown when `TEST_LOG` is set.
//!
//! # Layout
//!
//! - `database`: a MariaDB database of its own for each test, dropped after.
//! - [`netns`]: hosts made of Linux network namespaces, for multi-host tests.
//! - `peer`: raw DEALER peers that misbehave on purpose.
//! - `relay`: a TCP relay that can cut a connection (outages).
//! - this file: [`TestBroker`], [`Child`], the helpers above.

mod database;
pub mod netns;
mod peer;
mod relay;

pub use database::{server_url as mysql_server_url, TestDatabase};
pub use peer::RawPeer;
pub use relay::TcpRelay;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use switchboard_broker::Settings;
use switchboard_bus::{CallOptions, Config, Handle};
use switchboard_proto::{self as proto, BrokerStats, InstanceInfo};
use tokio_util::sync::CancellationToken;

pub use nix::sys::signal::Signal as Sig;

/// Logging for tests: off unless `TEST_LOG` is set (then `RUST_LOG` or `debug`).
pub fn trace_init() {
    if std::env::var_os("TEST_LOG").is_some() {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

// === TestBroker ===

/// An in-process broker on a real socket. See the crate docs.
pub struct TestBroker {
    /// The resolved endpoint (`tcp://127.0.0.1:PORT`).
    pub endpoint: String,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<BrokerStats>>,
}

impl TestBroker {
    /// Starts a broker with default settings on port 0.
    pub fn start() -> Self {
        Self::with(Settings::default())
    }

    /// Starts a broker with `settings` (its `bind` is replaced by port 0).
    /// Without a secret it runs `insecure` (loopback only), as a test that
    /// does not care about the bus secret wants.
    pub fn with(mut settings: Settings) -> Self {
        settings.bind = "tcp://127.0.0.1:0".into();
        if settings.secret.as_deref().is_none_or(str::is_empty) {
            settings.insecure = true;
        }
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let (socket, endpoint) = switchboard_broker::bind(&settings).await.expect("bind");
                tx.send(endpoint).expect("send endpoint");
                switchboard_broker::run(settings, socket, token).await
            })
        });
        let endpoint = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("broker did not bind within 10 s");
        Self {
            endpoint,
            shutdown,
            thread: Some(thread),
        }
    }

    /// Stops the broker and returns its final counters.
    pub fn stop(mut self) -> BrokerStats {
        self.shutdown.cancel();
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// === Child ===

/// Path of one of the workspace's binaries, next to the running test binary
/// (`target/<profile>/NAME`).
///
/// # Panics
///
/// When the binary has not been built (`cargo build --workspace --bins`).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A TCP port free on the loopback now (for a process that must be told a
/// fixed port, a gateway under main say; it may be taken by the time it is
/// used, which the tests accept).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A real child process of one of our binaries, killed on drop.
pub struct Child {
    inner: std::process::Child,
    /// First stdout line (`listening …` for the broker), when asked for.
    pub first_line: Option<String>,
    /// The stdout lines after the first (the last 1,000), when it was asked for.
    later: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Child {
    /// Spawns binary `name` with `args` and extra environment.
    pub fn spawn(name: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::spawn_command(Command::new(bin_path(name)), name, args, env)
    }

    /// Spawns `cmd` (a program and its first arguments, `ip netns exec NS BIN`
    /// say) with `args` and extra environment, as [`Child::spawn`] does.
    pub fn spawn_command(
        mut cmd: Command,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped());
        // A suite run under systemd (StateDirectory=) must not send every
        // test's main to one shared run_dir: main follows STATE_DIRECTORY.
        cmd.env_remove("STATE_DIRECTORY");
        if std::env::var_os("TEST_LOG").is_none() {
            cmd.stderr(Stdio::null());
            cmd.env("RUST_LOG", "warn");
        }
        // The broker, and main (which starts one), refuse to run without a bus
        // secret unless told `--insecure`: tests that do not care about the
        // secret get the insecure loopback bus; a test that gives a secret, or
        // says SB_INSECURE itself, gets what it asked for.
        let chooses = args.contains(&"--secret")
            || args.contains(&"--insecure")
            || env
                .iter()
                .any(|(k, _)| *k == "SB_SECRET" || *k == "SB_INSECURE");
        if matches!(name, "broker" | "main") && !chooses {
            cmd.env("SB_INSECURE", "1");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let inner = cmd.spawn().with_context(|| format!("spawn {name}"))?;
        Ok(Self {
            inner,
            first_line: None,
            later: std::sync::Arc::default(),
        })
    }

    /// Spawns the broker binary on `bind` and waits (10 s at most) for its
    /// `listening ENDPOINT` line; the endpoint is in `first_line`.
    pub fn broker(bind: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let mut args = vec!["--bind", bind];
        args.extend_from_slice(extra);
        Self::announcing("broker", &args, &[])
    }

    /// Spawns binary `name` and waits (10 s at most) for its first stdout line,
    /// `listening ADDRESS`; the address is in `first_line`.
    pub fn announcing(name: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::announce(Self::spawn(name, args, env)?, name)
    }

    /// Waits (10 s at most) for `child`'s `listening ADDRESS` line.
    pub fn announce(mut child: Self, name: &str) -> anyhow::Result<Self> {
        let stdout = child.inner.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let later = child.later.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for line in lines.map_while(Result::ok) {
                let mut later = later.lock().unwrap_or_else(|p| p.into_inner());
                if later.len() >= 1000 {
                    later.remove(0);
                }
                later.push(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .with_context(|| format!("{name} did not report its address within 10 s"))?;
        let Some(address) = line.strip_prefix("listening ") else {
            bail!("unexpected first line from {name}: {line}");
        };
        child.first_line = Some(address.to_owned());
        Ok(child)
    }

    /// The stdout lines after the first so far (for [`Child::announcing`]).
    pub fn later_lines(&self) -> Vec<String> {
        self.later.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    /// Sends a real signal.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        kill(Pid::from_raw(self.inner.id() as i32), sig).context("kill")
    }

    /// Waits for the process to exit, at most `timeout`; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.inner.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.signal(Signal::SIGCONT);
        let _ = self.inner.kill();
        let _ = self.inner.wait();
    }
}

// === bus helpers ===

/// A pure bus client named `instance`, connected (10 s at most).
pub async fn client(endpoint: &str, instance: &str, secret: Option<&str>) -> Handle {
    let conn = switchboard_bus::connect(Config {
        broker: endpoint.to_owned(),
        instance: instance.to_owned(),
        secret: secret.map(str::to_owned),
        ..Config::default()
    })
    .expect("valid client config");
    conn.handle
        .wait_connected(Duration::from_secs(10))
        .await
        .expect("client connected within 10 s");
    conn.handle
}

/// The broker's counters.
pub async fn broker_stats(bus: &Handle) -> BrokerStats {
    bus.broker("stats", Vec::new(), CallOptions::default())
        .await
        .expect("$broker stats")
}

/// `$health` of a service (any instance).
pub async fn health(bus: &Handle, service: &str) -> proto::Health {
    let reply = bus
        .call(service, "$health", Vec::new(), CallOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{service} $health: {e}"));
    proto::from_body(&reply.body).expect("health body")
}

/// One round trip through the broker: what this client sent before (a
/// subscription, say) has been handled once it returns.
pub async fn sync_with_broker(bus: &Handle) {
    bus.call(
        proto::BROKER_SERVICE,
        "$echo",
        Vec::new(),
        CallOptions::default(),
    )
    .await
    .expect("$broker $echo");
}

/// The broker's registry.
pub async fn broker_ls(bus: &Handle) -> Vec<InstanceInfo> {
    bus.broker("ls", Vec::new(), CallOptions::default())
        .await
        .expect("$broker ls")
}

/// Polls `check` every 20 ms until it returns true; false if `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `instance` is registered and ready on the broker.
pub async fn wait_ready(bus: &Handle, instance: &str, timeout: Duration) -> bool {
    eventually(timeout, || async {
        broker_ls(bus)
            .await
            .iter()
            .any(|i| i.instance == instance && i.state == proto::PeerState::Ready)
    })
    .await
}

// === in-process services ===

/// An in-process echo service (ops `echo`, `sleep`, `whoami`); dropping the guard
/// drains and stops it.
pub struct ServiceGuard {
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl ServiceGuard {
    /// Drains and stops the service, waiting for it to say bye.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }
}

impl Drop for ServiceGuard {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts the echo service `service`/`instance` in this runtime.
pub fn spawn_echo(
    endpoint: &str,
    service: &str,
    instance: &str,
    secret: Option<&str>,
) -> ServiceGuard {
    let config = Config {
        broker: endpoint.to_owned(),
        instance: instance.to_owned(),
        secret: secret.map(str::to_owned),
        ..Config::default()
    };
    spawn_echo_with(service, config)
}

/// Starts the echo service `service` with a bus `config` of the caller's.
pub fn spawn_echo_with(service: &str, config: Config) -> ServiceGuard {
    let shutdown = CancellationToken::new();
    let svc = switchboard_echo::service(service);
    let task = tokio::spawn(svc.run(config, shutdown.clone()));
    ServiceGuard {
        shutdown,
        task: Some(task),
    }
}

/// Starts the echo binary as a child process registered as `service`/`instance`.
pub fn spawn_echo_process(
    endpoint: &str,
    service: &str,
    instance: &str,
    extra: &[&str],
) -> anyhow::Result<Child> {
    let mut args = vec![
        "--broker",
        endpoint,
        "--service",
        service,
        "--instance",
        instance,
    ];
    args.extend_from_slice(extra);
    Child::spawn("echo", &args, &[])
}

/// `whoami` through the bus: which instance answered.
pub async fn whoami(
    bus: &Handle,
    service: &str,
    options: CallOptions,
) -> Result<String, switchboard_bus::Error> {
    let reply = bus.call(service, "whoami", Vec::new(), options).await?;
    let who: switchboard_echo::WhoAmI = proto::from_body(&reply.body).expect("whoami body");
    Ok(who.instance)
}

/// Sends a real signal to any process.
pub fn signal_pid(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// Starts an echo `sleep` of `ms` on `service` and returns once the broker shows
/// it in flight on an instance of the service (a readiness signal, not a sleep).
pub async fn sleep_in_flight(
    bus: &Handle,
    service: &str,
    ms: u64,
    options: CallOptions,
) -> tokio::task::JoinHandle<Result<proto::Envelope, switchboard_bus::Error>> {
    let body = proto::to_body(&std::collections::BTreeMap::from([("ms", ms)])).expect("body");
    let (caller, name) = (bus.clone(), service.to_owned());
    let call = tokio::spawn(async move { caller.call(&name, "sleep", body, options).await });
    let in_flight = eventually(Duration::from_secs(10), || async {
        broker_ls(bus)
            .await
            .iter()
            .any(|i| i.service == service && i.inflight >= 1)
    })
    .await;
    assert!(
        in_flight,
        "the sleep request reached an instance of {service}"
    );
    call
}
