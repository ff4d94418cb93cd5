//! `--cpu`: each process's CPU time per request over a bench's measured period.
//!
//! Throughput and latency on a shared, noisy machine move with whatever else
//! runs; the CPU a process spends per request does much less, and it says where
//! the time goes. The processes are every peer on the bus (what `main`
//! supervises, main itself, or what a script started by hand), the broker (the
//! process listening on the bench's broker port) and the database server (the
//! process listening on `--cpu-db-port`, MariaDB's 3306 by default) when it runs
//! on this host. CPU is `utime + stime` from `/proc/PID/stat`, read when the
//! measured period starts and again when it ends; a process on another host (or
//! one this user may not read) is left out and named as such.

use serde::Serialize;
use std::time::Instant;
use switchboard_bus::proto::InstanceInfo;
use switchboard_bus::svc::procinfo;
use switchboard_bus::{CallOptions, Handle};

/// One process watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// Its name in the report: the instance, `broker`, `mariadb`.
    pub name: String,
    /// Its process id on this host.
    pub pid: u32,
}

/// One process's figures for a finished run.
#[derive(Debug, Clone, Serialize)]
pub struct CpuRow {
    /// Instance name, `broker` or `mariadb`.
    pub name: String,
    /// Process id.
    pub pid: u32,
    /// CPU seconds (user + system) used in the measured period.
    pub cpu_s: f64,
    /// Share of one core over the measured period, percent.
    pub core_pct: f64,
    /// CPU microseconds per answered request.
    pub us_per_req: f64,
}

/// The processes to watch: the bus's peers (less this process), the broker
/// and the database server, each once.
///
/// # Errors
///
/// When the broker does not answer `ls`.
pub async fn processes(bus: &Handle, broker: &str, db_port: u16) -> anyhow::Result<Vec<Watched>> {
    let list: Vec<InstanceInfo> = bus.broker("ls", Vec::new(), CallOptions::default()).await?;
    let me = std::process::id();
    let mut watched = Vec::new();
    let mut push = |name: String, pid: u32| {
        if pid != 0 && pid != me && !watched.iter().any(|w: &Watched| w.pid == pid) {
            watched.push(Watched { name, pid });
        }
    };
    if let Some(port) = port_of(broker) {
        for pid in procinfo::tcp_listeners(port).pids {
            push("broker".into(), pid);
        }
    }
    for peer in list {
        // A peer that reported a pid that is not alive here runs elsewhere.
        if procinfo::alive(peer.pid) {
            push(peer.instance, peer.pid);
        }
    }
    if db_port != 0 {
        for pid in procinfo::tcp_listeners(db_port).pids {
            push("mariadb".into(), pid);
        }
    }
    Ok(watched)
}

/// What `--cpu` watches: `None` without it.
///
/// # Errors
///
/// When the broker does not answer `ls`.
pub async fn watch(
    bus: &Handle,
    broker: &str,
    on: bool,
    db_port: u16,
) -> anyhow::Result<Option<Watch>> {
    if !on {
        return Ok(None);
    }
    Ok(Some(Watch::new(processes(bus, broker, db_port).await?)))
}

/// The TCP port of a `tcp://HOST:PORT` endpoint.
fn port_of(endpoint: &str) -> Option<u16> {
    endpoint
        .strip_prefix("tcp://")?
        .rsplit(':')
        .next()?
        .parse()
        .ok()
}

/// CPU seconds of each watched process at one moment (`None`: unreadable).
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    cpu: Vec<Option<f64>>,
}

/// Reads every watched process's CPU time now.
pub fn sample(watched: &[Watched]) -> Sample {
    Sample {
        at: Instant::now(),
        cpu: watched
            .iter()
            .map(|w| procinfo::cpu_seconds(w.pid))
            .collect(),
    }
}

/// Rows for the period between two samples in which `requests` were answered.
/// A process unreadable at either end is left out.
pub fn rows(watched: &[Watched], start: &Sample, end: &Sample, requests: u64) -> Vec<CpuRow> {
    let wall = end.at.duration_since(start.at).as_secs_f64().max(1e-9);
    watched
        .iter()
        .zip(start.cpu.iter().zip(&end.cpu))
        .filter_map(|(w, (a, b))| {
            let used = (b.as_ref()? - a.as_ref()?).max(0.0);
            Some(CpuRow {
                name: w.name.clone(),
                pid: w.pid,
                cpu_s: round(used, 3),
                core_pct: round(100.0 * used / wall, 1),
                us_per_req: round(used * 1e6 / requests.max(1) as f64, 2),
            })
        })
        .collect()
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Samples at the start and the end of a bench's measured period, from a task
/// of its own.
pub struct Watch {
    watched: Vec<Watched>,
}

impl Watch {
    /// Watches these processes.
    pub fn new(watched: Vec<Watched>) -> Self {
        Self { watched }
    }

    /// Samples at `from` and at `until` (tokio instants); the rows come from
    /// [`Taken::rows`] once the answered requests are counted.
    pub fn spawn(
        self,
        from: std::time::Instant,
        until: std::time::Instant,
    ) -> tokio::task::JoinHandle<Taken> {
        tokio::spawn(async move {
            tokio::time::sleep_until(from.into()).await;
            let start = sample(&self.watched);
            tokio::time::sleep_until(until.into()).await;
            let end = sample(&self.watched);
            Taken {
                watched: self.watched,
                start,
                end,
            }
        })
    }
}

/// Both samples of a run.
pub struct Taken {
    watched: Vec<Watched>,
    start: Sample,
    end: Sample,
}

impl Taken {
    /// The rows, for `requests` answered in the measured period.
    pub fn rows(&self, requests: u64) -> Vec<CpuRow> {
        rows(&self.watched, &self.start, &self.end, requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_of_reads_tcp_endpoints_only() {
        assert_eq!(port_of("tcp://127.0.0.1:5555"), Some(5555));
        assert_eq!(port_of("tcp://[::1]:5710"), Some(5710));
        assert_eq!(port_of("ipc:///tmp/sb.sock"), None);
    }

    #[test]
    fn rows_count_the_cpu_a_process_used_between_samples() {
        // This process burns CPU between the samples; a pid that does not exist
        // is left out rather than reported as zero.
        let watched = vec![
            Watched {
                name: "me".into(),
                pid: std::process::id(),
            },
            Watched {
                name: "gone".into(),
                pid: u32::MAX,
            },
        ];
        let start = sample(&watched);
        // Burn until /proc shows 50 ms more (bounded: the machine may be busy).
        let t = Instant::now();
        let first = start.cpu[0].unwrap();
        let mut x = 0u64;
        while procinfo::cpu_seconds(std::process::id()).unwrap() - first < 0.05
            && t.elapsed().as_secs() < 60
        {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let end = sample(&watched);
        let rows = rows(&watched, &start, &end, 1000);
        assert_eq!(rows.len(), 1, "{rows:?}");
        let me = &rows[0];
        assert_eq!(me.name, "me");
        assert!(me.cpu_s >= 0.05, "{me:?}");
        assert!((me.us_per_req - me.cpu_s * 1000.0).abs() < 1.0, "{me:?}");
    }
}
