//! Every metric the db service records besides the `sb_service_*` every
//! service has: its group commits (`sb_db_commit_*`). The convention, and the
//! one HELP table, are in `switchboard_svc::metrics`.

use std::time::Duration;
use switchboard_bus::svc::metrics::histogram;

/// One group commit of `rows` messages took `elapsed` (whatever its outcome).
pub(crate) fn commit(rows: usize, elapsed: Duration) {
    histogram!("sb_db_commit_duration_seconds").record(elapsed.as_secs_f64());
    histogram!("sb_db_commit_rows").record(rows as f64);
}
