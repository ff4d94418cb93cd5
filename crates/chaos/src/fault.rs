//! The faults, in the order they are done, what each must meet, and
//! injecting one into the system.

use std::time::{Duration, Instant};

use crate::load::{self, Kind};
use crate::system::System;

/// A fault and what it must meet.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    KillBroker,
    KillMain,
    Kill(&'static str),
    KillReceive,
    StopChat(u64),
    Reload(&'static str),
    DatabaseDown(u64),
    SlowReader,
}

impl Fault {
    pub(crate) fn name(self) -> String {
        match self {
            Fault::KillBroker => "kill -9 broker".into(),
            Fault::KillMain => "kill -9 main".into(),
            Fault::Kill(i) => format!("kill -9 {i}"),
            Fault::KillReceive => "kill -9 receive".into(),
            Fault::StopChat(s) => format!("SIGSTOP chat {s} s"),
            Fault::Reload(a) => format!("sbctl reload {a}"),
            Fault::DatabaseDown(s) => format!("MariaDB down {s} s"),
            Fault::SlowReader => "a client stops reading".into(),
        }
    }

    /// The request kinds the fault may interrupt (recovery is measured on them).
    pub(crate) fn affects(self) -> &'static [Kind] {
        match self {
            Fault::Kill("db") | Fault::DatabaseDown(_) => &[Kind::Say],
            Fault::Kill("loc01") | Fault::Reload("loc") => &[Kind::Move],
            Fault::Kill("chat") | Fault::StopChat(_) | Fault::Reload("chat") => {
                &[Kind::Say, Kind::Echo]
            }
            _ => &[Kind::Say, Kind::Move, Kind::Echo],
        }
    }

    /// Longest recovery allowed, ms (`None`: not measured).
    pub(crate) fn recovery_target_ms(self) -> Option<u64> {
        match self {
            Fault::StopChat(_) => Some(4_000), // heartbeat x liveness + 1 s
            Fault::DatabaseDown(_) => Some(5_000), // after MariaDB is back
            Fault::Reload(_) | Fault::SlowReader | Fault::KillMain => None, // no error at all
            _ => Some(3_000),
        }
    }

    /// Whether any error at all fails the row.
    pub(crate) fn no_errors(self) -> bool {
        matches!(self, Fault::Reload(_) | Fault::KillMain | Fault::SlowReader)
    }
}

pub(crate) fn faults(quick: bool) -> Vec<Fault> {
    if quick {
        return vec![
            Fault::KillBroker,
            Fault::Kill("chat"),
            Fault::KillReceive,
            Fault::Reload("chat"),
            Fault::Reload("receive"),
            Fault::DatabaseDown(5),
        ];
    }
    vec![
        Fault::KillBroker,
        Fault::KillMain,
        Fault::Kill("db"),
        Fault::Kill("chat"),
        Fault::Kill("loc01"),
        Fault::KillReceive,
        Fault::StopChat(10),
        Fault::Reload("db"),
        Fault::Reload("chat"),
        Fault::Reload("loc"),
        Fault::Reload("receive"),
        Fault::DatabaseDown(60),
        Fault::SlowReader,
    ]
}

pub(crate) async fn inject(
    system: &mut System,
    fault: Fault,
    db_errored: &mut bool,
) -> anyhow::Result<String> {
    use nix::sys::signal::Signal::{SIGCONT, SIGKILL, SIGSTOP};
    use switchboard_testkit::signal_pid;
    match fault {
        Fault::KillBroker => signal_pid(system.pid("broker"), SIGKILL),
        Fault::Kill(instance) => signal_pid(system.pid(instance), SIGKILL),
        Fault::KillReceive => signal_pid(system.pid("receive"), SIGKILL),
        Fault::KillMain => {
            let before: Vec<u32> = ["broker", "db", "chat", "loc01", "loc02", "receive"]
                .iter()
                .map(|i| system.pid(i))
                .collect();
            system.kill_main();
            // As systemd's RestartSec=1 would.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let at = Instant::now();
            system.start_main().await?;
            let mut adopted = false;
            while at.elapsed() < Duration::from_secs(10) {
                let now: Vec<u32> = ["broker", "db", "chat", "loc01", "loc02", "receive"]
                    .iter()
                    .map(|i| system.pid(i))
                    .collect();
                if now == before
                    && system
                        .instance("receive")
                        .is_some_and(|r| r["state"] == "online")
                {
                    adopted = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return Ok(if adopted {
                format!(
                    "main back, every app adopted (same pids) in {} ms",
                    at.elapsed().as_millis()
                )
            } else {
                "main back but the apps were NOT all adopted".into()
            });
        }
        Fault::StopChat(secs) => {
            let pid = system.pid("chat");
            signal_pid(pid, SIGSTOP);
            tokio::time::sleep(Duration::from_secs(secs)).await;
            signal_pid(pid, SIGCONT);
        }
        Fault::Reload(app) => {
            system.sbctl(&["reload", app]).await?;
        }
        Fault::DatabaseDown(secs) => {
            system.relay.cut();
            let until = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < until {
                if system
                    .instance("db")
                    .is_some_and(|d| d["state"] == "errored")
                {
                    *db_errored = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            system.relay.restore();
            let state = system
                .instance("db")
                .map(|d| {
                    format!(
                        "{}{}",
                        d["state"].as_str().unwrap_or("?"),
                        d["health"]
                            .as_str()
                            .map(|h| format!(" ({h})"))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            return Ok(format!("db was {state} at the end of the outage"));
        }
        Fault::SlowReader => {
            let closed = load::slow_reader(system.ws.clone(), Duration::from_secs(3)).await;
            return Ok(if closed {
                "the non-reading client was closed".into()
            } else {
                "the non-reading client was NOT closed".into()
            });
        }
    }
    Ok(String::new())
}
