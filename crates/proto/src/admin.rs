//! The operators' contracts: what `$broker` and the supervisor `main` take and
//! answer, and the status main keeps. Used by both ends (broker, main, `sbctl`).

use serde::{Deserialize, Serialize};

/// Body of a `$broker` `owner` request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct OwnerQuery {
    /// Service name.
    pub service: String,
    /// Routing key.
    pub key: String,
}

/// Body of the `$broker` `owner` reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct OwnerReply {
    /// The instance that owns the key now, if any instance is ready.
    pub instance: Option<String>,
}

/// Body of main's `start`/`stop`/`restart`/`reload`/`logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NameArg {
    /// App or instance name.
    pub name: String,
    /// `logs`: how many lines (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<usize>,
    /// `logs`: follow from this offset (from an earlier reply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// Reply of main's `logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsReply {
    /// The instance.
    pub instance: String,
    /// The file.
    pub path: String,
    /// Text (the last lines, or what came after `offset`).
    pub text: String,
    /// Where to follow from.
    pub offset: u64,
}

/// The state of an instance as main sees it. Encoded as its snake_case name.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Spawned, not ready on the bus yet.
    Starting,
    /// Ready and answering its health checks.
    Online,
    /// Answers, but reports a dependency down (see [`InstanceStatus::health`]):
    /// left alone.
    Degraded,
    /// Being stopped.
    Stopping,
    /// Not running (stopped, or not started yet).
    #[default]
    Stopped,
    /// In the delay before a restart.
    Waiting,
    /// Kept exiting: left alone until told to start.
    Errored,
    /// The broker, between an exit and its new process.
    Restarting,
    /// On the bus, not started by this supervisor.
    Unmanaged,
    /// A state this build does not know (from a newer main).
    #[serde(other)]
    Unknown,
}

impl InstanceState {
    /// Its name on the wire (`online`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Online => "online",
            Self::Degraded => "degraded",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Waiting => "waiting",
            Self::Errored => "errored",
            Self::Restarting => "restarting",
            Self::Unmanaged => "unmanaged",
            Self::Unknown => "unknown",
        }
    }

    /// Whether a process is running in this state (pid and resources shown).
    pub fn running(self) -> bool {
        matches!(self, Self::Starting | Self::Online | Self::Degraded)
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `ls` shows of one instance.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct InstanceStatus {
    /// App name (from ecosystem.toml).
    pub app: String,
    /// Instance name.
    pub instance: String,
    /// The host whose main runs it, in a system of several hosts (`[main]
    /// host`); empty on one host.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// The service it registered as on the bus, once ready; empty when it is
    /// the app's name (an app `edge_a` running `receive` registers as `receive`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// Its state.
    pub state: InstanceState,
    /// What its last `$health` said when not `ok` (`db_down`); empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub health: String,
    /// Process id.
    pub pid: u32,
    /// Start time, ms since the epoch (0 when not running).
    pub started_at_ms: u64,
    /// Milliseconds since the start.
    pub uptime_ms: u64,
    /// Restarts since the supervisor started.
    pub restarts: u32,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// CPU, percent of one core, over the last heartbeat.
    pub cpu_percent: f64,
    /// Requests in flight (its last `$health`).
    pub inflight: u64,
    /// Requests handled (its last `$health`).
    pub handled: u64,
    /// Started by this supervisor.
    pub managed: bool,
}

/// Name of main's status file in its `run_dir`.
pub const STATUS_FILE: &str = "status.json";

/// What main writes to [`STATUS_FILE`] every heartbeat: read by `sbctl ls` when
/// the bus is down, and by a new main adopting what a previous one left running.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusFile {
    /// When, ms since the epoch.
    pub written_at_ms: u64,
    /// The broker answered main's last check.
    pub broker_ok: bool,
    /// The broker and the managed instances.
    pub instances: Vec<InstanceStatus>,
    /// The endpoint the broker bound.
    #[serde(default)]
    pub broker_endpoint: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The states travel as their snake_case names (status file, `main ls`), and
    /// a state from a newer main decodes as `Unknown`, not as an error.
    #[test]
    fn states_are_names_on_the_wire() {
        let row = InstanceStatus {
            state: InstanceState::Degraded,
            ..InstanceStatus::default()
        };
        let bytes = crate::to_body(&row).unwrap();
        let back: InstanceStatus = crate::from_body(&bytes).unwrap();
        assert_eq!(back.state, InstanceState::Degraded);
        let newer = crate::to_body(&std::collections::BTreeMap::from([(
            "state",
            "hibernating",
        )]))
        .unwrap();
        #[derive(Deserialize)]
        struct Only {
            state: InstanceState,
        }
        assert_eq!(
            crate::from_body::<Only>(&newer).unwrap().state,
            InstanceState::Unknown
        );
        for s in [
            InstanceState::Online,
            InstanceState::Degraded,
            InstanceState::Restarting,
            InstanceState::Unmanaged,
        ] {
            let b = crate::to_body(&s).unwrap();
            assert_eq!(crate::from_body::<String>(&b).unwrap(), s.as_str());
        }
    }
}

/// Body of main's `scale`: run `instances` instances of `app`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ScaleArg {
    /// App name.
    pub app: String,
    /// Instances wanted (1 to 99).
    pub instances: u32,
}

/// Reply of main's `reload-config`: what changed in `ecosystem.toml` and was
/// applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ConfigChange {
    /// Apps started.
    pub added: Vec<String>,
    /// Apps stopped and dropped.
    pub removed: Vec<String>,
    /// Apps whose configuration changed: instances added or retired, the others
    /// reloaded one at a time (zero downtime).
    pub changed: Vec<String>,
    /// Apps left as they were.
    pub unchanged: Vec<String>,
    /// Sections that changed but apply only when main restarts (`[main]`,
    /// `[broker]`).
    pub needs_restart: Vec<String>,
}

/// Reply of main's `describe` (`sbctl describe APP`): an app's configuration as
/// main runs it, and its instances. Environment values that look secret (a key
/// holding SECRET, PASSWORD, TOKEN or KEY, or a URL's password) are redacted.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct AppDescription {
    /// App name (its service name).
    pub name: String,
    /// The binary main runs (resolved path).
    pub bin: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment from the ecosystem file and profile, redacted.
    pub env: std::collections::BTreeMap<String, String>,
    /// Apps it waits for.
    pub depends_on: Vec<String>,
    /// Instances configured.
    pub instances: u32,
    /// Started means ready on the bus (true) or spawned.
    pub wait_ready: bool,
    /// Readiness deadline, ms.
    pub ready_timeout_ms: u64,
    /// SIGTERM to SIGKILL, ms.
    pub kill_timeout_ms: u64,
    /// Restarted when it exits or hangs.
    pub autorestart: bool,
    /// Unstable restarts before `errored`.
    pub max_restarts: u32,
    /// Uptime under which an exit is unstable, ms.
    pub min_uptime_ms: u64,
    /// Delay before a restart, ms (the first, when backing off).
    pub restart_delay_ms: u64,
    /// Resident memory past which it is replaced, bytes.
    pub max_memory_bytes: Option<u64>,
    /// Reloaded when the binary changes.
    pub watch: bool,
    /// Log files, one per instance.
    pub logs: Vec<String>,
    /// Its instances now.
    pub status: Vec<InstanceStatus>,
}

/// `value` with anything secret in it replaced by `***` (see [`AppDescription`]).
pub fn redact(key: &str, value: &str) -> String {
    let upper = key.to_ascii_uppercase();
    if ["SECRET", "PASSWORD", "TOKEN", "KEY"]
        .iter()
        .any(|word| upper.contains(word))
    {
        return "***".to_owned();
    }
    // scheme://user:password@host… → scheme://user:***@host…
    if let Some((scheme, rest)) = value.split_once("://") {
        if let Some((cred, host)) = rest.split_once('@') {
            if let Some((user, _)) = cred.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    value.to_owned()
}

/// `args` with the value of every secret-looking flag replaced by `***`: a
/// flag whose name holds `secret` or `password` (`--auth-secret X`,
/// `--db-password=X`), but not one naming a file (`--auth-secret-file PATH`).
pub fn redact_args(args: &[String]) -> Vec<String> {
    let secret_flag = |flag: &str| {
        let name = flag.trim_start_matches('-').to_ascii_lowercase();
        flag.starts_with('-')
            && (name.contains("secret") || name.contains("password"))
            && !name.ends_with("file")
    };
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for arg in args {
        if std::mem::take(&mut hide_next) {
            out.push("***".to_owned());
            continue;
        }
        match arg.split_once('=') {
            Some((flag, _)) if secret_flag(flag) => out.push(format!("{flag}=***")),
            None if secret_flag(arg) => {
                hide_next = true;
                out.push(arg.clone());
            }
            _ => out.push(arg.clone()),
        }
    }
    out
}

#[cfg(test)]
mod redact_tests {
    use super::redact;

    #[test]
    fn secret_flags_are_redacted_in_args() {
        let args: Vec<String> = [
            "--listen",
            "0.0.0.0:3000",
            "--auth-secret",
            "s1",
            "--db-password=s2",
            "--auth-secret-file",
            "/etc/sb/secret",
            "--secret",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            super::redact_args(&args),
            [
                "--listen",
                "0.0.0.0:3000",
                "--auth-secret",
                "***",
                "--db-password=***",
                "--auth-secret-file",
                "/etc/sb/secret",
                "--secret",
            ]
        );
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(redact("SB_AUTH_SECRET", "abc"), "***");
        assert_eq!(redact("api_key", "abc"), "***");
        assert_eq!(
            redact("DATABASE_URL", "mysql://sb:pw@127.0.0.1:3306/switchboard"),
            "mysql://sb:***@127.0.0.1:3306/switchboard"
        );
        assert_eq!(redact("RUST_LOG", "info"), "info");
        assert_eq!(redact("URL", "mysql://root@h/db"), "mysql://root@h/db");
    }
}

/// One hop of one request, for `sbctl trace` and the dashboard: kept by every
/// process in a bounded ring and answered by `$trace` (`{trace}` → `Vec<Span>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Span {
    /// The request's trace id.
    pub trace: String,
    /// The instance that recorded it (`receive`, `broker`, `chat`, `db`…).
    pub instance: String,
    /// What happened: `ws chat.say`, `dispatch chat.say → chat`, `handle say`,
    /// `call db.chat.save`, `sql INSERT messages`.
    pub name: String,
    /// Start, µs since the Unix epoch.
    pub start_us: u64,
    /// How long, µs.
    pub duration_us: u64,
    /// The outcome: `ok` or an error code.
    #[serde(default)]
    pub outcome: String,
}

/// Body of `$trace`: the spans of one trace id; with an empty `trace`, the
/// `slowest` longest client requests this process saw (a gateway's `ws` spans).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TraceQuery {
    /// The trace id.
    pub trace: String,
    /// With no trace id: how many of the slowest recent requests (at most 100).
    #[serde(default)]
    pub slowest: u32,
}

/// Something that happened to an instance, as main saw it (an exit, a failed
/// start, a hung process killed): the dashboard's recent events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SupervisorEvent {
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Which instance.
    pub instance: String,
    /// What happened.
    pub what: String,
}
