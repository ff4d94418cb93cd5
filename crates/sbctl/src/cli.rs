//! The command line: every command and flag.

use clap::{Parser, Subcommand};

/// Switchboard ops CLI.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "Examples:\n  sbctl ls\n  sbctl reload chat\n  sbctl logs loc01 -f\n  sbctl send echo echo '{\"hello\":\"world\"}'\n  sbctl send loc nearby '{\"zone\":\"z1\",\"x\":0,\"y\":0,\"radius\":10}' --key z1\n  sbctl sub 'chat.room.*'\n  sbctl pub chat.room.lobby '{\"text\":\"hi\"}'\n  sbctl --json stats"
)]
pub(crate) struct Args {
    /// Broker endpoint.
    #[arg(
        long,
        global = true,
        env = "SB_BROKER",
        default_value = switchboard_bus::proto::DEFAULT_BROKER
    )]
    pub(crate) broker: String,
    /// Shared bus secret; without it, RUN_DIR/bus.secret (the one main made)
    /// when there is one.
    #[arg(long, global = true, env = "SB_SECRET", hide_env_values = true)]
    pub(crate) secret: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Deadline of each request, ms.
    #[arg(long, global = true, default_value_t = 5_000)]
    pub(crate) timeout_ms: u64,
    /// main's run folder (its `run_dir`): the bus secret main made is read
    /// from there (bus.secret), and `ls` reads main's status file there when
    /// the broker cannot be reached.
    #[arg(long, global = true, env = "SB_RUN_DIR", default_value = "run")]
    pub(crate) run_dir: std::path::PathBuf,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Every app instance: state, pid, uptime, restarts, memory, cpu, in flight,
    /// handled (from `main`; the broker's view when no supervisor runs).
    Ls {
        /// Redraw every second until Ctrl-C (PM2's `monit`).
        #[arg(long, short)]
        watch: bool,
    },
    /// Start an app (all its instances) or one instance.
    Start {
        /// App or instance name.
        name: String,
    },
    /// Stop an app or instance gracefully.
    Stop {
        /// App or instance name.
        name: String,
    },
    /// Stop, then start (a short gap: requests are held, not failed).
    Restart {
        /// App or instance name.
        name: String,
    },
    /// Zero-downtime replacement: the new process first, then the old one drains.
    Reload {
        /// App or instance name.
        name: String,
    },
    /// Print an instance's log (`broker` for the broker's); with no name, every
    /// app's, each line prefixed with its instance.
    Logs {
        /// Instance (or single-instance app) name; none: every instance and the broker.
        name: Option<String>,
        /// Only warnings and errors (the lines tracing marks WARN or ERROR; the
        /// logs hold stdout and stderr together).
        #[arg(long)]
        err: bool,
        /// How many lines.
        #[arg(long, short = 'n', default_value_t = 50)]
        lines: usize,
        /// Keep printing what is written (Ctrl-C to stop).
        #[arg(long, short)]
        follow: bool,
    },
    /// What a service is and takes: its version, bus and protocol versions, ops
    /// and event patterns (its `$info`).
    Info {
        /// Service name.
        service: String,
        /// Ask this instance (default: any).
        #[arg(long)]
        instance: Option<String>,
    },
    /// An app's configuration as main runs it (secrets redacted) and its instances.
    Describe {
        /// App name.
        app: String,
    },
    /// Stop every app (in reverse dependency order), then main itself.
    Shutdown,
    /// Run N instances of an app: new ones start (and are ready) before extra
    /// ones are stopped.
    Scale {
        /// App name.
        app: String,
        /// Instances wanted (1 to 99).
        instances: u32,
    },
    /// Re-read ecosystem.toml and apply the difference: new apps started,
    /// removed apps stopped, changed apps scaled and reloaded one instance at a
    /// time (zero downtime).
    ReloadConfig,
    /// Print a shell completion script: `sbctl completions bash >
    /// /etc/bash_completion.d/sbctl` (also zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// The timeline of one request: every process's spans of TRACE_ID (the
    /// gateway puts it in each reply as `trace`), in order, with durations.
    Trace {
        /// The trace id.
        trace: String,
    },
    /// Mint a client token (HS256 JWT) with the gateway's secret and print it.
    /// The secret, audience and issuer come from the flags, else from the
    /// environment the gateway reads (SB_AUTH_SECRET or SB_AUTH_SECRET_FILE,
    /// SB_TOKEN_AUDIENCE, SB_TOKEN_ISSUER), else from the `receive` app in the
    /// ecosystem file.
    Token(TokenArgs),
    /// The broker's counters.
    Stats,
    /// Send one request (a test packet) and print the reply's data as JSON.
    Send {
        /// Service name.
        service: String,
        /// Op name.
        op: String,
        /// Request data as JSON (default `{}`).
        #[arg(default_value = "{}")]
        data: String,
        /// Pin an instance.
        #[arg(long)]
        instance: Option<String>,
        /// Route by key.
        #[arg(long)]
        key: Option<String>,
        /// Trace id to carry.
        #[arg(long, default_value = "")]
        trace: String,
    },
    /// Publish an event.
    Pub {
        /// Topic.
        topic: String,
        /// Event data as JSON.
        #[arg(default_value = "{}")]
        data: String,
    },
    /// Print events matching a pattern as they arrive (Ctrl-C to stop).
    Sub {
        /// Pattern (`*` one token, `>` the rest).
        pattern: String,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Send one request as a WebSocket client through the gateway (the path a
    /// real client takes) and print the reply frame. Exit status as for `send`.
    WsSend {
        /// Service (`-` for the gateway's own ops: ping, subscribe, auth).
        service: String,
        /// Op name.
        op: String,
        /// Request data as JSON (default `{}`).
        #[arg(default_value = "{}")]
        data: String,
        /// Gateway URL.
        #[arg(long, env = "SB_WS_URL", default_value = "ws://127.0.0.1:3000/ws")]
        url: String,
        /// Client token (HS256 JWT), sent as the `token` query parameter.
        #[arg(long, env = "SB_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Also wait this long for events and print them (e.g. after a join).
        #[arg(long, default_value_t = 0)]
        listen_ms: u64,
        /// For a `wss://` URL: trust the certificates in this PEM file (a private
        /// CA, a self-signed gateway) instead of the system's roots.
        #[arg(long, env = "SB_CA_FILE")]
        ca_file: Option<std::path::PathBuf>,
    },
    /// Benchmarks (see `sbctl bench --help`).
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Convert a PM2 ecosystem file (ecosystem.config.js; Node evaluates it)
    /// to ecosystem.toml, and say on stderr what could not be carried over.
    /// See docs/ecosystem-node.md.
    ImportPm2 {
        /// The PM2 file (.js, .cjs, .mjs or .json).
        file: std::path::PathBuf,
        /// Write the TOML here (default: stdout).
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
        /// Overwrite --output when it exists.
        #[arg(long)]
        force: bool,
        /// Node.js, which reads the file.
        #[arg(long, env = "SB_NODE", default_value = "node")]
        node: String,
        /// Give up on a file Node has not finished reading after this long.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// Which instance owns a key of a service.
    Owner {
        /// Service name.
        service: String,
        /// Key.
        key: String,
    },
}

/// The load of `bench ws` and `bench say`: WebSocket clients, each with
/// requests in flight, for a measured time.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct WsLoad {
    /// Connections.
    #[arg(long, default_value_t = 50)]
    pub(crate) connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    pub(crate) window: usize,
    /// Measured time, ms.
    #[arg(long, default_value_t = 5_000)]
    pub(crate) duration_ms: u64,
    /// Warm-up, ms.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) warmup_ms: u64,
    /// Client token.
    #[arg(long, env = "SB_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    #[command(flatten)]
    pub(crate) cpu: CpuOpts,
}

/// `--cpu` for `bench rr`, `ws` and `say`.
#[derive(clap::Args, Debug, Clone, Copy)]
pub(crate) struct CpuOpts {
    /// Report each process's CPU per request over the measured period (from
    /// `/proc`: the bus's peers, the broker and the database server, where
    /// they run on this host).
    #[arg(long)]
    pub(crate) cpu: bool,
    /// The database server's TCP port, to find its process (0: leave it out).
    #[arg(long, default_value_t = 3306)]
    pub(crate) cpu_db_port: u16,
}

#[derive(Subcommand, Debug)]
pub(crate) enum BenchCmd {
    /// A real client's ping round trips without and with a slowloris attacker,
    /// and the gateway's CPU during the attack (the gateway must run here).
    Slowloris {
        /// Gateway URL.
        #[arg(long, env = "SB_WS_URL", default_value = "ws://127.0.0.1:3000/ws")]
        url: String,
        /// Stalled sockets held open.
        #[arg(long, default_value_t = 3_000)]
        sockets: usize,
        /// Source addresses (127.0.0.2 …) to spread them over, 1 to 254.
        #[arg(long, default_value_t = 1,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=254))]
        sources: usize,
        /// Pings measured before the attack (one every 10 ms).
        #[arg(long, default_value_t = 300)]
        pings: usize,
        /// Attack duration, ms.
        #[arg(long, default_value_t = 5_000)]
        duration_ms: u64,
        /// Client token.
        #[arg(long, env = "SB_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The gateway's pid, if its /health does not report it.
        #[arg(long)]
        pid: Option<u64>,
    },
    /// Request/reply through the broker to a service's `$echo`.
    Rr {
        /// Target service (ecosystem.toml defines `echo`: `sbctl start echo`).
        #[arg(long, default_value = "echo")]
        service: String,
        /// Op.
        #[arg(long, default_value = "$echo")]
        op: String,
        /// Payload bytes.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Requests in flight per connection.
        #[arg(long, default_value_t = 1)]
        window: usize,
        /// Bus connections.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Measured time, ms.
        #[arg(long, default_value_t = 5_000)]
        duration_ms: u64,
        /// Warm-up, ms.
        #[arg(long, default_value_t = 1_000)]
        warmup_ms: u64,
        #[command(flatten)]
        cpu: CpuOpts,
    },
    /// WebSocket clients through the gateway (the path a real client takes).
    Ws {
        /// Gateway URL.
        #[arg(long, env = "SB_WS_URL", default_value = "ws://127.0.0.1:3000/ws")]
        url: String,
        /// Target service.
        #[arg(long, default_value = "chat")]
        service: String,
        /// Op (`say` commits to MariaDB).
        #[arg(long, default_value = "$echo")]
        op: String,
        /// Request data as JSON.
        #[arg(
            long,
            default_value = r#"{"room":"bench","text":"hello, this is a benchmark message"}"#
        )]
        data: String,
        #[command(flatten)]
        load: WsLoad,
    },
    /// `ws` with chat's `say`: every request committed to MariaDB before its
    /// reply (exactly once).
    Say {
        /// Gateway URL.
        #[arg(long, env = "SB_WS_URL", default_value = "ws://127.0.0.1:3000/ws")]
        url: String,
        /// Room the messages go to.
        #[arg(long, default_value = "bench")]
        room: String,
        #[command(flatten)]
        load: WsLoad,
    },
    /// One publisher, one topic, N WebSocket subscribers: deliveries per second
    /// and delivery latency (`bench/`'s `compare fanout` runs NATS beside it).
    Fanout {
        /// Gateway URL.
        #[arg(long, env = "SB_WS_URL", default_value = "ws://127.0.0.1:3000/ws")]
        url: String,
        /// Topic (the policy must let clients subscribe to it).
        #[arg(long, default_value = "chat.room.fanout")]
        topic: String,
        /// Subscribers (each a WebSocket connection).
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        /// Events published per second (open loop).
        #[arg(long, default_value_t = 30)]
        rate: u32,
        /// Padding bytes in each event.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Measured time, ms.
        #[arg(long, default_value_t = 5_000)]
        duration_ms: u64,
        /// Warm-up, ms.
        #[arg(long, default_value_t = 1_000)]
        warmup_ms: u64,
        /// Client token.
        #[arg(long, env = "SB_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Hold N idle WebSocket connections; report the gateway's memory per connection.
    Idle {
        /// Gateway URL.
        #[arg(long, env = "SB_WS_URL", default_value = "ws://127.0.0.1:3000/ws")]
        url: String,
        /// Connections (raise `ulimit -n` in the shell that runs this and the gateway).
        #[arg(long, default_value_t = 1_000)]
        connections: usize,
        /// How long to hold them, ms.
        #[arg(long, default_value_t = 2_000)]
        hold_ms: u64,
        /// Source addresses to spread them over (127.0.0.1, .2, …), 1 to 255:
        /// one address opens at most ~28,000 connections to one port.
        #[arg(long, default_value_t = 1,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=255))]
        sources: usize,
        /// Client token.
        #[arg(long, env = "SB_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

// No `///` here: the `Token` variant's doc is the command's help.
#[derive(clap::Args, Debug)]
pub(crate) struct TokenArgs {
    /// The user: the token's `sub` (1-128 of A-Z a-z 0-9 _ - @ : + = |).
    #[arg(long)]
    pub(crate) sub: String,
    /// Lifetime (`30m`, `1h`; at most what the gateway accepts: its
    /// --token-max-lifetime-s, 24 h by default).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub(crate) exp: std::time::Duration,
    /// Audience (`aud`), when the gateway requires one.
    #[arg(long, env = "SB_TOKEN_AUDIENCE")]
    pub(crate) aud: Option<String>,
    /// Issuer (`iss`), when the gateway requires one.
    #[arg(long, env = "SB_TOKEN_ISSUER")]
    pub(crate) iss: Option<String>,
    /// Refused (exit 64): a secret in the arguments is visible to every
    /// local user. Use SB_AUTH_SECRET or --auth-secret-file.
    #[arg(long, hide = true)]
    pub(crate) auth_secret: Option<String>,
    /// File holding the gateway's client-token secret (else SB_AUTH_SECRET).
    #[arg(long, env = "SB_AUTH_SECRET_FILE")]
    pub(crate) auth_secret_file: Option<std::path::PathBuf>,
    /// The ecosystem file to read the gateway's settings from.
    #[arg(long, default_value = "ecosystem.toml")]
    pub(crate) ecosystem: std::path::PathBuf,
}

#[cfg(test)]
mod tests {
    use super::Args;
    use clap::Parser;

    /// Source addresses are 127.0.0.N: a count past the last one is refused
    /// before any address is computed (it would overflow the last octet).
    #[test]
    fn source_counts_stay_within_one_octet() {
        let parse = |args: &[&str]| Args::try_parse_from(args).is_ok();
        // idle: 127.0.0.1 ..= 127.0.0.255; slowloris: 127.0.0.2 ..= 127.0.0.255.
        assert!(parse(&["sbctl", "bench", "idle", "--sources", "255"]));
        assert!(!parse(&["sbctl", "bench", "idle", "--sources", "256"]));
        assert!(!parse(&["sbctl", "bench", "idle", "--sources", "0"]));
        assert!(parse(&["sbctl", "bench", "slowloris", "--sources", "254"]));
        assert!(!parse(&["sbctl", "bench", "slowloris", "--sources", "255"]));
    }
}
