//! `compare`: Switchboard's request/reply against NATS's on the same machine, in
//! one run, interleaved A B A B, medians of N rounds; writes BENCHMARKS.md.
//!
//! ```text
//! cargo build --release --workspace --bins          # the Switchboard binaries
//! cd bench && cargo run --release -- run --rounds 3 --out /tmp/rr.md   # then paste into BENCHMARKS.md
//! ```
//!
//! Subcommands `responder` and `nats-rr` are the NATS side's two processes (a
//! responder, and a requester that reports like `sbctl bench rr --json`);
//! `fanout` and `nats-fanout` do the same for one publisher to 10,000
//! subscribers (see `fanout.rs`).

mod fanout;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// NATS responder: replies to every request on `subject` with its payload.
    Responder {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        url: String,
        #[arg(long, default_value = "bench.echo")]
        subject: String,
    },
    /// NATS requester: closed loop, `window` requests in flight on one connection.
    NatsRr {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        url: String,
        #[arg(long, default_value = "bench.echo")]
        subject: String,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value_t = 1)]
        window: usize,
        #[arg(long, default_value_t = 5_000)]
        duration_ms: u64,
        #[arg(long, default_value_t = 1_000)]
        warmup_ms: u64,
    },
    /// NATS fan-out: `subscribers` connections each subscribed to `subject`, one
    /// publisher at `rate` events/s; reports like `sbctl bench fanout --json`.
    NatsFanout {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        url: String,
        #[arg(long, default_value = "bench.fanout")]
        subject: String,
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        #[arg(long, default_value_t = 30)]
        rate: u32,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value_t = 5_000)]
        duration_ms: u64,
        #[arg(long, default_value_t = 1_000)]
        warmup_ms: u64,
    },
    /// Fan-out side by side: Switchboard (broker + receive, `sbctl bench fanout`)
    /// and NATS, interleaved, for each rate.
    Fanout {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 5_000)]
        duration_ms: u64,
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        /// Events per second, one comparison each.
        #[arg(long, value_delimiter = ',', default_values_t = vec![10u32, 30, 60])]
        rates: Vec<u32>,
        #[arg(long, default_value = "../target/BENCHMARKS-fanout.md")]
        out: PathBuf,
        #[arg(long, default_value = "../target/release")]
        bin: PathBuf,
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
    },
    /// The whole comparison.
    Run {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 5_000)]
        duration_ms: u64,
        #[arg(long, default_value = "../target/BENCHMARKS-rr.md")]
        out: PathBuf,
        /// Folder of the Switchboard release binaries.
        #[arg(long, default_value = "../target/release")]
        bin: PathBuf,
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
        /// Extra text for the report (what changed since the last run).
        #[arg(long, default_value = "")]
        note: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Responder { url, subject } => tokio::runtime::Runtime::new()?.block_on(responder(url, subject)),
        Cmd::NatsRr { url, subject, size, window, duration_ms, warmup_ms } => {
            let report = tokio::runtime::Runtime::new()?.block_on(nats_rr(url, subject, size, window, duration_ms, warmup_ms))?;
            println!("{report}");
            Ok(())
        }
        Cmd::NatsFanout { url, subject, subscribers, rate, size, duration_ms, warmup_ms } => {
            raise_file_limit();
            let report = tokio::runtime::Runtime::new()?.block_on(fanout::nats(url, subject, subscribers, rate, size, duration_ms, warmup_ms))?;
            println!("{report}");
            Ok(())
        }
        Cmd::Fanout { rounds, duration_ms, subscribers, rates, out, bin, nats } => {
            raise_file_limit();
            fanout::compare(rounds, duration_ms, subscribers, &rates, &out, &bin, &nats)
        }
        Cmd::Run { rounds, duration_ms, out, bin, nats, note } => run(rounds, duration_ms, &out, &bin, &nats, &note),
    }
}

async fn responder(url: String, subject: String) -> anyhow::Result<()> {
    let client = async_nats::connect(&url).await?;
    let mut sub = client.subscribe(subject).await?;
    println!("ready");
    while let Some(msg) = sub.next().await {
        if let Some(reply) = msg.reply {
            client.publish(reply, msg.payload).await?;
        }
    }
    Ok(())
}

async fn nats_rr(url: String, subject: String, size: usize, window: usize, duration_ms: u64, warmup_ms: u64) -> anyhow::Result<Value> {
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(&url)
        .await?;
    let payload = bytes::Bytes::from(vec![0x5au8; size]);
    let start = Instant::now();
    let measure_from = start + Duration::from_millis(warmup_ms);
    let end = measure_from + Duration::from_millis(duration_ms);
    let mut tasks = Vec::new();
    for _ in 0..window.max(1) {
        let (client, subject, payload) = (client.clone(), subject.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            while Instant::now() < end {
                let t0 = Instant::now();
                let r = client.request(subject.clone(), payload.clone()).await;
                if t0 >= measure_from {
                    match r {
                        Ok(_) => lat.push(t0.elapsed().as_micros() as u32),
                        Err(_) => errors += 1,
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or(0);
    Ok(json!({
        "bench": "nats-rr", "requests": lat.len(), "errors": errors,
        "rps": lat.len() as f64 / (duration_ms as f64 / 1000.0),
        "p50_us": pct(0.5), "p90_us": pct(0.9), "p99_us": pct(0.99), "max_us": lat.last().copied().unwrap_or(0),
    }))
}

/// Raises the soft open-file limit to the hard one (10,000 subscribers need
/// 10,000 sockets in this process and in sbctl).
fn raise_file_limit() {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub(crate) struct Procs(pub(crate) Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn spawn_quiet(cmd: &mut Command) -> anyhow::Result<Child> {
    Ok(cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).env("RUST_LOG", "warn").spawn()?)
}

pub(crate) fn run_json(cmd: &mut Command) -> anyhow::Result<Value> {
    let out = cmd.stderr(Stdio::inherit()).output()?;
    anyhow::ensure!(out.status.success(), "{:?} failed", cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    Ok(serde_json::from_str(line)?)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn run(rounds: usize, duration_ms: u64, out: &PathBuf, bin: &std::path::Path, nats: &str, note: &str) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let endpoint = "tcp://127.0.0.1:5599";
    let mut procs = Procs(Vec::new());
    procs.0.push(spawn_quiet(Command::new(bin.join("broker")).args(["--bind", endpoint]))?);
    std::thread::sleep(Duration::from_millis(300));
    procs.0.push(spawn_quiet(Command::new(bin.join("echo")).args(["--broker", endpoint, "--service", "echo", "--instance", "bench-echo"]))?);
    procs.0.push(spawn_quiet(Command::new(&me).args(["responder", "--url", nats]))?);
    std::thread::sleep(Duration::from_millis(700));

    let configs = [(100usize, 1usize), (100, 256), (1024, 1), (1024, 256)];
    let mut rows = Vec::new();
    for (size, window) in configs {
        let (mut sb, mut nt) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            eprintln!("size {size} window {window} round {}/{rounds}", round + 1);
            let (s, w, d) = (size.to_string(), window.to_string(), duration_ms.to_string());
            // Interleaved: A then B in every round.
            sb.push(run_json(Command::new(bin.join("sbctl")).args([
                "--broker", endpoint, "--json", "bench", "rr", "--size", &s, "--window", &w, "--duration-ms", &d, "--warmup-ms", "1000",
            ]))?);
            nt.push(run_json(Command::new(&me).args([
                "nats-rr", "--url", nats, "--size", &s, "--window", &w, "--duration-ms", &d, "--warmup-ms", "1000",
            ]))?);
        }
        let m = |runs: &[Value], key: &str| median(runs.iter().map(|r| r[key].as_f64().unwrap_or(0.0)).collect());
        let errors = |runs: &[Value]| runs.iter().map(|r| r["errors"].as_u64().unwrap_or(0)).sum::<u64>();
        rows.push(json!({
            "size": size, "window": window,
            "sb_rps": m(&sb, "rps"), "sb_p50": m(&sb, "p50_us"), "sb_p99": m(&sb, "p99_us"), "sb_errors": errors(&sb),
            "nats_rps": m(&nt, "rps"), "nats_p50": m(&nt, "p50_us"), "nats_p99": m(&nt, "p99_us"), "nats_errors": errors(&nt),
            "sb_runs": sb, "nats_runs": nt,
        }));
    }
    drop(procs);
    std::fs::write(out, markdown(&rows, rounds, duration_ms, note))?;
    eprintln!("wrote {}", out.display());
    println!("{}", serde_json::to_string_pretty(&rows)?);
    Ok(())
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0) / 1024 / 1024))
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let nats = Command::new("nats-server").arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem} GiB, Linux {}, {nats}", kernel.trim())
}

fn markdown(rows: &[Value], rounds: usize, duration_ms: u64, note: &str) -> String {
    let mut s = String::new();
    s.push_str("## Request/reply: Switchboard vs NATS\n\n");
    s.push_str(&format!(
        "Machine: {}. One run of `compare run --rounds {rounds} --duration-ms {duration_ms}`: for each payload and window, {rounds} rounds, each a Switchboard run then a NATS run (interleaved), {} s measured after 1 s of warm-up; figures are medians of the rounds.\n\n",
        machine(),
        duration_ms / 1000
    ));
    if !note.is_empty() {
        s.push_str(note);
        s.push_str("\n\n");
    }
    s.push_str("| payload | in flight | Switchboard req/s | NATS req/s | ratio | Switchboard p50 / p99 µs | NATS p50 / p99 µs | p50 ratio | errors (SB / NATS) |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        s.push_str(&format!(
            "| {} B | {} | {:.0} | {:.0} | **{:.2}x** | {:.0} / {:.0} | {:.0} / {:.0} | **{:.2}x** | {} / {} |\n",
            r["size"], r["window"], f("sb_rps"), f("nats_rps"), f("sb_rps") / f("nats_rps").max(1.0),
            f("sb_p50"), f("sb_p99"), f("nats_p50"), f("nats_p99"), f("sb_p50") / f("nats_p50").max(1.0),
            r["sb_errors"], r["nats_errors"],
        ));
    }
    s.push_str("\nRatios: req/s is Switchboard ÷ NATS (higher is better for Switchboard); p50 ratio is Switchboard ÷ NATS (lower is better).\n");
    s.push_str("\nEvery round, raw (req/s, p50 µs, p99 µs):\n\n```\n");
    for r in rows {
        let fmt = |runs: &Value| {
            runs.as_array()
                .map(|a| a.iter().map(|x| format!("{:.0}/{}/{}", x["rps"].as_f64().unwrap_or(0.0), x["p50_us"], x["p99_us"])).collect::<Vec<_>>().join("  "))
                .unwrap_or_default()
        };
        s.push_str(&format!("{} B w{}: SB {}   NATS {}\n", r["size"], r["window"], fmt(&r["sb_runs"]), fmt(&r["nats_runs"])));
    }
    s.push_str("```\n\nReproduce: `cargo build --release --workspace --bins && cd bench && cargo run --release -- run --rounds 3 --out ../BENCHMARKS.md` (nats-server on 127.0.0.1:4222).\n");
    s
}
