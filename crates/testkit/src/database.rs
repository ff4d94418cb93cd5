//! A MariaDB database of its own for each test, dropped after.

use super::*;

/// A database name of its own for one test (`sb_test_<pid>_<n>_<random>`), on the
/// server of [`server_url`]. The db service creates it; dropping the guard drops
/// it (best effort, via the `mariadb` client, with the same credentials).
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
        let base = server_url();
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
        let server = Server::parse(&self.url);
        let _ = Command::new("mariadb")
            .args(["--protocol=tcp", "-h", &server.host, "-P", &server.port])
            .args(["-u", &server.user, "-e"])
            .arg(format!("DROP DATABASE IF EXISTS `{}`", self.name))
            // Not on the command line, where `ps` would show it.
            .env("MYSQL_PWD", &server.password)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The MariaDB server the tests use, without a database name: `SB_TEST_MYSQL`
/// (scripts/test.sh sets it from what scripts/ensure-mariadb.sh found), else the
/// one that script saved in `run/mariadb.env`, else `mysql://root@127.0.0.1:3306`.
pub fn server_url() -> String {
    if let Ok(url) = std::env::var("SB_TEST_MYSQL") {
        return url;
    }
    let saved = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../run/mariadb.env");
    std::fs::read_to_string(saved)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let v = line.strip_prefix("SB_MYSQL=")?;
                Some(v.trim_matches('\'').to_owned())
            })
        })
        .unwrap_or_else(|| "mysql://root@127.0.0.1:3306".into())
}

/// The parts of a `mysql://user[:password]@host[:port][/db]` URL.
struct Server {
    user: String,
    password: String,
    host: String,
    port: String,
}

impl Server {
    fn parse(url: &str) -> Self {
        let rest = url.trim_start_matches("mysql://");
        let rest = rest.split(['/', '?']).next().unwrap_or_default();
        let (cred, addr) = rest.rsplit_once('@').unwrap_or(("root", rest));
        let (user, password) = cred.split_once(':').unwrap_or((cred, ""));
        let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "3306"));
        Self {
            user: user.to_owned(),
            password: password.to_owned(),
            host: host.to_owned(),
            port: port.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Server;

    #[test]
    fn parses_server_urls() {
        let s = Server::parse("mysql://switchboard:abc123@127.0.0.1:3307/sb_test_1");
        assert_eq!(
            (
                s.user.as_str(),
                s.password.as_str(),
                s.host.as_str(),
                s.port.as_str()
            ),
            ("switchboard", "abc123", "127.0.0.1", "3307")
        );
        let s = Server::parse("mysql://root@localhost/x?prefer_socket=false");
        assert_eq!(
            (
                s.user.as_str(),
                s.password.as_str(),
                s.host.as_str(),
                s.port.as_str()
            ),
            ("root", "", "localhost", "3306")
        );
    }
}
