//! A MariaDB database of its own for each test, dropped after.

use super::*;

/// A database name of its own for one test (`sb_test_<pid>_<n>_<random>`), on the
/// server of `SB_TEST_MYSQL` (default `mysql://root@127.0.0.1:3306`). The db
/// service creates it; dropping the guard drops it (best effort, via the
/// `mariadb` client).
pub struct TestDatabase {
    /// Full URL with the database name.
    pub url: String,
    /// The database name.
    pub name: String,
}

impl TestDatabase {
    /// A fresh, unused name.
    pub fn new() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let base =
            std::env::var("SB_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
        let name = format!(
            "sb_test_{}_{}_{:x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            proto::now_ms() & 0xffff_ffff
        );
        Self {
            url: format!("{}/{name}", base.trim_end_matches('/')),
            name,
        }
    }
}

impl Default for TestDatabase {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = Command::new("mariadb")
            .args(["--protocol=tcp", "-h127.0.0.1", "-uroot", "-e"])
            .arg(format!("DROP DATABASE IF EXISTS `{}`", self.name))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
