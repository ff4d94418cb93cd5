//! Child processes: spawning with logs, signals, and their /proc readings
//! (through [`switchboard_bus::svc::procinfo`], the workspace's one reader).

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStdout, Command};

use switchboard_bus::svc::procinfo;

use crate::logs::LogFile;

/// A running process: a child of this main, or one adopted from a previous main
/// (not our child: watched through /proc, stopped with signals).
pub struct Proc {
    /// The process, when it is our child.
    child: Option<Child>,
    /// Its pid.
    pub pid: u32,
    /// When it was spawned.
    pub started: Instant,
    /// Wall-clock start, ms since the epoch.
    pub started_ms: u64,
    /// The service it registered as (learned when it became ready): main's
    /// `$health` goes there, not to the app's name.
    pub service: Option<String>,
    cpu: Option<(f64, Instant)>,
}

/// What a child gets of main's own environment without asking: nothing
/// secret, only what a process needs to run and log like its parent.
const BASE_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TMPDIR",
    "TZ",
    "LANG",
    "LANGUAGE",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "NO_COLOR",
    "SB_LOG_FORMAT",
];

/// The environment main gives a child before its own settings: the
/// [`BASE_ENV`] variables and the locale's `LC_*` from main's environment,
/// and the ones `pass` names (an app's `pass_env`), where set.
pub fn base_env(pass: &[String]) -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            BASE_ENV.contains(&k.as_str()) || k.starts_with("LC_") || pass.iter().any(|p| p == k)
        })
        .collect()
}

/// Spawns `bin args` in `cwd` (main's own when `None`) with `env` (and nothing
/// else of main's environment: see [`base_env`]), stdout and stderr appended
/// to `log`. The child
/// gets its own process group, so a Ctrl-C at the terminal reaches only the
/// supervisor, which stops the apps in order.
///
/// # Errors
///
/// When the process cannot be started.
pub fn spawn(
    bin: &Path,
    args: &[String],
    cwd: Option<&Path>,
    env: &[(String, String)],
    log: Arc<LogFile>,
) -> std::io::Result<Proc> {
    let (proc, out) = spawn_reporting(bin, args, cwd, env, log.clone())?;
    if let Some(out) = out {
        tokio::spawn(pump(out, log));
    }
    Ok(proc)
}

/// [`spawn`], but the child's stdout is handed to the caller (the broker
/// reports the endpoint it bound there); stderr goes to `log`.
///
/// # Errors
///
/// When the process cannot be started.
pub fn spawn_reporting(
    bin: &Path,
    args: &[String],
    cwd: Option<&Path>,
    env: &[(String, String)],
    log: Arc<LogFile>,
) -> std::io::Result<(Proc, Option<ChildStdout>)> {
    let mut cmd = Command::new(bin);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    let out = child.stdout.take();
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, log));
    }
    let proc = Proc {
        child: Some(child),
        pid,
        started: Instant::now(),
        started_ms: switchboard_bus::proto::now_ms(),
        service: None,
        cpu: None,
    };
    Ok((proc, out))
}

/// Appends what `r` yields to `log` until it ends.
pub async fn pump<R: tokio::io::AsyncRead + Unpin>(mut r: R, log: Arc<LogFile>) {
    let mut buf = vec![0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => log.write(&buf[..n]),
        }
    }
}

/// Sends a signal; a process that is gone is not an error.
pub fn signal(pid: u32, sig: Signal) {
    if pid > 0 {
        let _ = kill(Pid::from_raw(pid as i32), sig);
    }
}

impl Proc {
    /// SIGTERM, then SIGKILL after `grace`; waits for the exit.
    pub async fn stop(&mut self, grace: Duration) {
        signal(self.pid, Signal::SIGCONT);
        signal(self.pid, Signal::SIGTERM);
        if tokio::time::timeout(grace, self.wait()).await.is_err() {
            tracing::warn!(
                pid = self.pid,
                grace_ms = grace.as_millis() as u64,
                "did not stop in time; SIGKILL"
            );
            self.kill().await;
        }
    }

    /// Waits for the process to exit; its exit status, as text.
    pub async fn wait(&mut self) -> String {
        match self.child.as_mut() {
            Some(child) => child
                .wait()
                .await
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string()),
            None => {
                // Not our child: its parent (init, or a subreaper) reaps it; poll.
                while alive(self.pid) {
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
                "exited (adopted: status unknown)".into()
            }
        }
    }

    /// The exit status if it has exited, without waiting.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut() {
            Some(child) => child.try_wait().ok().flatten().map(|s| s.to_string()),
            None => (!alive(self.pid)).then(|| "exited (adopted: status unknown)".into()),
        }
    }

    /// SIGKILL, and waits for the exit.
    pub async fn kill(&mut self) {
        match self.child.as_mut() {
            Some(child) => {
                let _ = child.kill().await;
            }
            None => {
                signal(self.pid, Signal::SIGKILL);
                self.wait().await;
            }
        }
    }

    /// Whether this process was adopted (not spawned by this main).
    pub fn adopted(&self) -> bool {
        self.child.is_none()
    }

    /// Resident memory, bytes (0 if unknown).
    pub fn rss(&self) -> u64 {
        procinfo::rss_of(self.pid)
    }

    /// CPU use since the last call, percent of one core.
    pub fn cpu_percent(&mut self) -> f64 {
        let Some(used) = procinfo::cpu_seconds(self.pid) else {
            return 0.0;
        };
        let now = Instant::now();
        let percent = match self.cpu {
            Some((before, at)) => {
                let secs = now.duration_since(at).as_secs_f64();
                if secs > 0.0 {
                    (used - before).max(0.0) / secs * 100.0
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.cpu = Some((used, now));
        percent
    }

    /// The process's state letter from /proc (`T` = stopped).
    pub fn state(&self) -> char {
        procinfo::state(self.pid)
    }
}

impl Proc {
    /// Adopts a running process a previous main started (`started_ms` from its
    /// status file).
    pub fn adopt(pid: u32, started_ms: u64) -> Self {
        let age =
            Duration::from_millis(switchboard_bus::proto::now_ms().saturating_sub(started_ms));
        Self {
            child: None,
            pid,
            started: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            started_ms,
            service: None,
            cpu: None,
        }
    }
}

/// How often an adopted process is checked for its exit.
const ADOPTED_POLL: Duration = Duration::from_millis(100);

pub use procinfo::{alive, exe_of};
