//! What the system's processes read about themselves and each other from
//! `/proc`: memory, CPU time, state, executable, environment. The one reader in
//! the workspace; the parsing is the `procfs` crate's (the `stat` line's command
//! field may hold spaces and parentheses, which it handles). Every function
//! answers "unknown" (0, `None`, `false`) where `/proc` is missing or the process
//! is gone, never an error: these feed status tables, not decisions that need one.

use procfs::process::Process;
use procfs::WithCurrentSystemInfo;

fn process(pid: u32) -> Option<Process> {
    Process::new(i32::try_from(pid).ok().filter(|&p| p > 0)?).ok()
}

/// Resident memory of `pid`, bytes (0 if unknown).
pub fn rss_of(pid: u32) -> u64 {
    process(pid)
        .and_then(|p| p.stat().ok())
        .map_or(0, |s| s.rss_bytes().get())
}

/// Resident memory of this process, bytes (0 if unknown).
pub fn rss_bytes() -> u64 {
    rss_of(std::process::id())
}

/// CPU time `pid` has used, user and system, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = process(pid)?.stat().ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// The process's state letter (`R`, `S`, `T` stopped, `Z` zombie, …); `?` if
/// unknown.
pub fn state(pid: u32) -> char {
    process(pid)
        .and_then(|p| p.stat().ok())
        .map_or('?', |s| s.state)
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    !matches!(state(pid), '?' | 'Z' | 'X')
}

/// The executable `pid` runs, if it can be read.
pub fn exe_of(pid: u32) -> Option<std::path::PathBuf> {
    process(pid)?.exe().ok()
}

/// Whether `pid`'s environment holds `name=value`.
pub fn has_env(pid: u32, name: &str, value: &str) -> bool {
    process(pid)
        .and_then(|p| p.environ().ok())
        .and_then(|env| env.get(std::ffi::OsStr::new(name)).cloned())
        .is_some_and(|v| v == value)
}

/// Who listens on a TCP port: the listening sockets found there (any address,
/// v4 and v6) and the processes that hold them, as far as this process may see.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Listeners {
    /// Listening sockets on the port.
    pub sockets: usize,
    /// The processes holding them (fewer than `sockets` when some are hidden:
    /// another user's processes, without privileges).
    pub pids: Vec<u32>,
}

/// Who listens on TCP `port`.
pub fn tcp_listeners(port: u16) -> Listeners {
    use procfs::net::TcpState;
    use procfs::process::FDTarget;
    let entries = procfs::net::tcp()
        .unwrap_or_default()
        .into_iter()
        .chain(procfs::net::tcp6().unwrap_or_default());
    let inodes: Vec<u64> = entries
        .filter(|e| e.state == TcpState::Listen && e.local_address.port() == port)
        .map(|e| e.inode)
        .collect();
    let mut found = Listeners {
        sockets: inodes.len(),
        pids: Vec::new(),
    };
    if inodes.is_empty() {
        return found;
    }
    // Bounded by the processes on the machine; a process that ends meanwhile is
    // skipped.
    for process in procfs::process::all_processes()
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(fds) = process.fd() else { continue };
        let holds = fds
            .flatten()
            .any(|fd| matches!(fd.target, FDTarget::Socket(inode) if inodes.contains(&inode)));
        if holds {
            if let Ok(pid) = u32::try_from(process.pid) {
                found.pids.push(pid);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_of(me) > 1024 * 1024, "rss {}", rss_of(me));
        assert!(alive(me));
        assert!(matches!(state(me), 'R' | 'S'));
        assert_eq!(exe_of(me), std::env::current_exe().ok());
        assert!(cpu_seconds(me).is_some());
        let path = std::env::var("PATH").unwrap_or_default();
        assert!(has_env(me, "PATH", &path));
        assert!(!has_env(me, "PATH", "not-the-path"));
    }

    #[test]
    fn unknown_processes_read_as_unknown() {
        assert_eq!(rss_of(0), 0);
        assert!(!alive(0));
        assert!(!alive(u32::MAX));
        assert_eq!(state(u32::MAX), '?');
        assert_eq!(exe_of(u32::MAX), None);
    }

    #[test]
    fn finds_who_listens_on_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let found = tcp_listeners(port);
        assert_eq!(found.sockets, 1);
        assert_eq!(found.pids, [std::process::id()]);
        drop(listener);
        assert_eq!(tcp_listeners(port), Listeners::default());
    }
}
