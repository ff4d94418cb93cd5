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
}
