//! `ecosystem.toml`: PM2's ecosystem file, in TOML.
//!
//! Read with the `config` crate in three layers: the file, then the `--env NAME`
//! profile (each app's `env_NAME` table over its `env`), then environment
//! variables: `SB_ECO__MAIN__HEARTBEAT_MS=500`, `SB_ECO__BROKER__BIND=…` for the
//! top-level tables, and `SB_ECO__APPS__<APP>__<KEY>=value` for one app's key
//! (the value is read as JSON when it parses, as a string otherwise).
//!
//! Everything is checked before anything starts: an unknown key is an error that
//! names the app and the key; so is a `depends_on` cycle, a dependency that does
//! not exist, or a `bin` or `script` that cannot be found (the error names the
//! absolute paths tried).
//!
//! An app is a binary (`bin`) or, as in PM2, a script run by an interpreter
//! (`script`, `interpreter`, `interpreter_args`): see [`App::argv`] for the
//! command line main builds, and `docs/ecosystem-node.md`.
//!
//! # Layout
//!
//! - `load`: the file, the profile, environment overrides, every check, the
//!   start order.
//! - `tests`: the checks, one file each.
//! - this file: the types of the file ([`Ecosystem`], [`App`], [`AppSpec`]).

mod load;

pub use load::{
    instance_names, load, load_with_env, node_heap_mib, parse_size, resolve_bin, resolve_run_dir,
    BinNotFound,
};

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// What can be wrong with an ecosystem file.
#[derive(Debug, thiserror::Error)]
pub enum EcosystemError {
    /// The file cannot be read or is not TOML.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// A key the format does not have.
    #[error("app {app:?}: unknown key {key:?}")]
    UnknownKey {
        /// The app (or `[broker]`/`[main]`/top level).
        app: String,
        /// The key.
        key: String,
    },
    /// A value of the wrong type or out of range.
    #[error("app {app:?}: {message}")]
    Invalid {
        /// The app.
        app: String,
        /// What is wrong.
        message: String,
    },
    /// A dependency cycle.
    #[error("depends_on cycle: {0}")]
    Cycle(String),
}

const APP_KEYS: &[&str] = &[
    "name",
    "bin",
    "script",
    "interpreter",
    "interpreter_args",
    "cwd",
    "args",
    "instances",
    "instance_var",
    "env",
    "pass_env",
    "depends_on",
    "wait_ready",
    "ready_timeout_ms",
    "kill_timeout_ms",
    "autorestart",
    "autostart",
    "max_restarts",
    "min_uptime_ms",
    "restart_delay_ms",
    "exp_backoff_restart_delay_ms",
    "max_memory_restart",
    "watch",
    "ignore_watch",
];
const BROKER_KEYS: &[&str] = &["bin", "bind", "args", "env", "connect", "pair"];
const MAIN_KEYS: &[&str] = &[
    "run_dir",
    "heartbeat_ms",
    "liveness",
    "log_max_bytes",
    "log_keep",
    "http",
    "http_auth",
    "http_hosts",
    "host",
];
const TOP_KEYS: &[&str] = &["main", "broker", "apps"];

/// `[main]`: the supervisor's own settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MainConf {
    /// Folder for logs (`run_dir/logs/INSTANCE.log`) and main's status file.
    /// An absolute path is used as is; a relative one is under systemd's
    /// `STATE_DIRECTORY` when main runs with `StateDirectory=`, else next to the
    /// ecosystem file ([`Ecosystem::run_dir`] is the folder resolved).
    #[serde(default = "default_run_dir")]
    pub run_dir: String,
    /// How often each instance is health-checked (`$health` over the bus).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Failed health checks in a row after which a live process counts as hung.
    #[serde(default = "default_liveness")]
    pub liveness: u32,
    /// A log file is rotated past this size.
    #[serde(default = "default_log_max_bytes")]
    pub log_max_bytes: u64,
    /// Rotated log files kept.
    #[serde(default = "default_log_keep")]
    pub log_keep: u32,
    /// Address of main's HTTP server: the dashboard, `/metrics` for the whole
    /// system, `/health` and `/ready`. Loopback by default; empty: none.
    #[serde(default = "default_http")]
    pub http: String,
    /// `user:password` for HTTP basic auth on it (none by default).
    #[serde(default)]
    pub http_auth: Option<String>,
    /// Host names the HTTP server answers without `http_auth`, besides IP
    /// addresses and `localhost` (any other `Host` gets 421: DNS rebinding).
    #[serde(default)]
    pub http_hosts: Vec<String>,
    /// This machine's name when the system spans several hosts, each with its
    /// own main: main registers as `main.HOST` and names each instance
    /// `INSTANCE.HOST`, so that two hosts' `chat` never collide on the bus.
    /// Unset: one host; `main` and instances as named.
    #[serde(default)]
    pub host: Option<String>,
}

/// `[broker]`: the broker main starts first.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BrokerConf {
    /// Binary.
    #[serde(default = "default_broker_bin")]
    pub bin: String,
    /// Endpoint (port 0 picks one).
    #[serde(default = "default_bind")]
    pub bind: String,
    /// Extra arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment.
    #[serde(default, deserialize_with = "string_map")]
    pub env: BTreeMap<String, String>,
    /// The broker runs elsewhere (started by another host's main): connect to
    /// this endpoint instead of starting one. `bin`, `bind`, `args` and `env`
    /// are then unused.
    #[serde(default)]
    pub connect: Option<String>,
    /// A broker pair: both brokers' endpoints, the primary first. main and
    /// every app it starts are given the list (`SB_BROKER=A,B`) and fail over
    /// between them; the broker main starts here (with `--ha-role` and the rest
    /// in `args`) is one of the two.
    #[serde(default)]
    pub pair: Vec<String>,
}

/// One `[[apps]]` table. Units are in the names; defaults follow PM2's where it
/// has one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AppSpec {
    /// App name; also its service name on the bus.
    pub name: String,
    /// Binary: a path (relative: from the folder of the ecosystem file), or a
    /// name looked up next to `main` and then on PATH. With `script`, it may
    /// only name the interpreter.
    #[serde(default)]
    pub bin: Option<String>,
    /// A script that an interpreter runs (PM2's `script`): a path, relative to
    /// `cwd` when set, else to the folder of the ecosystem file.
    #[serde(default)]
    pub script: Option<String>,
    /// What runs `script` (looked up as `bin` is): by default `node` for
    /// `.js`, `.mjs` and `.cjs`; `"none"` runs the script itself.
    #[serde(default)]
    pub interpreter: Option<String>,
    /// The interpreter's own arguments, before the script (PM2's
    /// `interpreter_args` / `node_args`).
    #[serde(default)]
    pub interpreter_args: Vec<String>,
    /// Working directory of the process (relative: from the folder of the
    /// ecosystem file); main's own when unset.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Arguments (after the script, with `script`).
    #[serde(default)]
    pub args: Vec<String>,
    /// Processes to run (1 to 99).
    #[serde(default = "default_instances")]
    pub instances: u32,
    /// Like PM2's `increment_var`: instance n is named NAME01, NAME02… and this
    /// environment variable carries the name (SB_INSTANCE always does).
    #[serde(default)]
    pub instance_var: Option<String>,
    /// Environment (after the profile is applied).
    #[serde(default, deserialize_with = "string_map")]
    pub env: BTreeMap<String, String>,
    /// Variables of main's own environment this app is given as they are
    /// (systemd's `PassEnvironment`): `["DATABASE_URL"]` for db. An app gets
    /// nothing else of main's environment but a safe base (PATH, HOME, the
    /// locale, TZ, RUST_LOG…), so no app holds another's secrets.
    #[serde(default)]
    pub pass_env: Vec<String>,
    /// Apps that must be ready before this one starts.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Started means registered and ready on the bus (true), or just spawned.
    #[serde(default = "default_true")]
    pub wait_ready: bool,
    /// How long readiness may take before the start counts as failed.
    #[serde(default = "default_ready_timeout_ms")]
    pub ready_timeout_ms: u64,
    /// Between SIGTERM and SIGKILL when stopping.
    #[serde(default = "default_kill_timeout_ms")]
    pub kill_timeout_ms: u64,
    /// Restart when the process exits or hangs.
    #[serde(default = "default_true")]
    pub autorestart: bool,
    /// Start with the system (PM2's `autostart`); `false`: defined, shown as
    /// `stopped`, started by `sbctl start NAME` (the demo `echo` in
    /// ecosystem.toml).
    #[serde(default = "default_true")]
    pub autostart: bool,
    /// Unstable restarts (uptime under `min_uptime_ms`) in a row before `errored`.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// Uptime under which an exit counts as unstable.
    #[serde(default = "default_min_uptime_ms")]
    pub min_uptime_ms: u64,
    /// Delay before a restart.
    #[serde(default = "default_restart_delay_ms")]
    pub restart_delay_ms: u64,
    /// When set, the delay doubles on each unstable restart from this value
    /// (at most 15 s) instead of `restart_delay_ms`.
    #[serde(default)]
    pub exp_backoff_restart_delay_ms: u64,
    /// Resident memory past which the instance is replaced gracefully ("200M",
    /// "1G", "512K" or bytes).
    #[serde(default)]
    pub max_memory_restart: Option<Value>,
    /// Reload (zero downtime) when the binary (the script, with `script`)
    /// changes on disk.
    #[serde(default)]
    pub watch: bool,
    /// Paths never watched (accepted for PM2 compatibility; only `bin` or
    /// `script` is watched).
    #[serde(default)]
    pub ignore_watch: Vec<String>,
}

/// A checked ecosystem, apps in start order.
#[derive(Debug, Clone)]
pub struct Ecosystem {
    /// `[main]`.
    pub main: MainConf,
    /// `[broker]`.
    pub broker: BrokerConf,
    /// Apps, dependencies first.
    pub apps: Vec<App>,
    /// The folder of the file (relative paths are read from there).
    pub base: PathBuf,
    /// `[main] run_dir` resolved (see [`resolve_run_dir`]): the only folder main
    /// writes to.
    pub run_dir: PathBuf,
}

/// A checked app.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// The spec.
    pub spec: AppSpec,
    /// The resolved binary: the interpreter, for a script (the script itself
    /// with `interpreter = "none"`).
    pub bin: PathBuf,
    /// The resolved script (absolute), for a script run by an interpreter.
    pub script: Option<PathBuf>,
    /// The resolved working directory (absolute), when `cwd` is set.
    pub cwd: Option<PathBuf>,
    /// The arguments `bin` is started with: for a script,
    /// `<interpreter_args…> [--max-old-space-size=N] <script> <args…>`; else
    /// `args`.
    pub argv: Vec<String>,
    /// `max_memory_restart` in bytes.
    pub max_memory: Option<u64>,
    /// Instance names.
    pub instances: Vec<String>,
}

impl App {
    /// The file `watch` watches: the script, else the binary.
    pub fn watched(&self) -> &Path {
        self.script.as_deref().unwrap_or(&self.bin)
    }

    /// What `describe` answers for this app, with its instances' `status` and
    /// `logs`.
    pub fn describe(
        &self,
        status: Vec<switchboard_bus::proto::admin::InstanceStatus>,
        logs: Vec<String>,
    ) -> switchboard_bus::proto::admin::AppDescription {
        use switchboard_bus::proto::admin::{redact, redact_args};
        let s = &self.spec;
        switchboard_bus::proto::admin::AppDescription {
            name: s.name.clone(),
            bin: self.bin.display().to_string(),
            args: redact_args(&self.argv),
            env: s
                .env
                .iter()
                .map(|(k, v)| (k.clone(), redact(k, v)))
                .collect(),
            depends_on: s.depends_on.clone(),
            instances: s.instances,
            wait_ready: s.wait_ready,
            ready_timeout_ms: s.ready_timeout_ms,
            kill_timeout_ms: s.kill_timeout_ms,
            autorestart: s.autorestart,
            max_restarts: s.max_restarts,
            min_uptime_ms: s.min_uptime_ms,
            restart_delay_ms: if s.exp_backoff_restart_delay_ms > 0 {
                s.exp_backoff_restart_delay_ms
            } else {
                s.restart_delay_ms
            },
            max_memory_bytes: self.max_memory,
            watch: s.watch,
            logs,
            status,
        }
    }
}

fn default_instances() -> u32 {
    1
}
fn default_true() -> bool {
    true
}
fn default_run_dir() -> String {
    "run".into()
}
fn default_heartbeat_ms() -> u64 {
    1_000
}
fn default_liveness() -> u32 {
    3
}
fn default_log_max_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_log_keep() -> u32 {
    3
}
fn default_http() -> String {
    "127.0.0.1:9100".into()
}
fn default_broker_bin() -> String {
    "broker".into()
}
fn default_bind() -> String {
    switchboard_bus::proto::DEFAULT_BROKER.into()
}
fn default_ready_timeout_ms() -> u64 {
    10_000
}
fn default_kill_timeout_ms() -> u64 {
    5_000
}
fn default_max_restarts() -> u32 {
    10
}
fn default_min_uptime_ms() -> u64 {
    1_000
}
fn default_restart_delay_ms() -> u64 {
    100
}

fn string_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw: BTreeMap<String, Value> = BTreeMap::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests;
