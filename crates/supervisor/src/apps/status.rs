//! The status main keeps (types in `switchboard_proto::admin`): reading the
//! status file, and telling whether a process is an instance to adopt.

pub use switchboard_bus::proto::admin::{InstanceState, InstanceStatus, StatusFile, STATUS_FILE};

use crate::proc;

/// Reads `run_dir/status.json`, if there is one.
pub fn read_status_file(run_dir: &std::path::Path) -> Option<StatusFile> {
    let text = std::fs::read_to_string(run_dir.join(STATUS_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether `pid` runs and is the instance named `instance` (its environment says
/// `SB_INSTANCE=instance`, which main gives every app it starts): the test for
/// adopting a process a previous main started. The environment, not the binary
/// path, so that a binary rebuilt on disk does not stop the adoption.
pub fn is_instance(pid: u32, instance: &str) -> bool {
    if !proc::alive(pid) {
        return false;
    }
    switchboard_bus::svc::procinfo::has_env(pid, "SB_INSTANCE", instance)
}
