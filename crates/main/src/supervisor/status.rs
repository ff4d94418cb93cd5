//! What `ls` shows of an instance, and the status file main keeps for `sbctl ls` and for adopting after a crash.

use serde::{Deserialize, Serialize};

use crate::proc;

/// What `ls` shows of one instance.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct InstanceStatus {
    /// App (service) name.
    pub app: String,
    /// Instance name.
    pub instance: String,
    /// `starting`, `online`, `degraded` (answers, but reports a dependency down:
    /// left alone), `stopping`, `stopped`, `waiting` (restart delay), `errored`
    /// (kept exiting), or `unmanaged` (on the bus, not started by this supervisor).
    pub state: String,
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

/// What main writes to [`STATUS_FILE`] every heartbeat.
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

impl StatusFile {
    /// Reads `run_dir/status.json`, if there is one.
    pub fn read(run_dir: &std::path::Path) -> Option<Self> {
        let text = std::fs::read_to_string(run_dir.join(STATUS_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// Whether `pid` runs and is the instance named `instance` (its environment says
/// `SB_INSTANCE=instance`, which main gives every app it starts): the test for
/// adopting a process a previous main started. The environment, not the binary
/// path, so that a binary rebuilt on disk does not stop the adoption.
pub fn is_instance(pid: u32, instance: &str) -> bool {
    if !proc::alive(pid) {
        return false;
    }
    let want = format!("SB_INSTANCE={instance}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == want.as_bytes()))
}
