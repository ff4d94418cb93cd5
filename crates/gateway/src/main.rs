//! `receive`: the WebSocket gateway (see the library docs) until SIGTERM/SIGINT.

use clap::Parser;
use switchboard_bus::svc::{self, BusArgs};
use switchboard_bus::Service;
use switchboard_gateway::jwt::TokenRules;
use switchboard_gateway::policy::Policy;
use switchboard_gateway::tls::Tls;
use switchboard_gateway::{Gateway, Settings};

/// The Switchboard WebSocket gateway.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    bus: BusArgs,
    /// Address to listen on; port 0 picks one. Prints `listening ws://ADDR` (`wss://` with TLS) on stdout.
    #[arg(long, env = "SB_LISTEN", default_value = "127.0.0.1:3000")]
    listen: String,
    /// Refused (exit 64): a secret in the arguments is visible to every local
    /// user. The HS256 secret for client tokens comes from SB_AUTH_SECRET or
    /// --auth-secret-file; without either the gateway runs open.
    #[arg(long, hide = true)]
    auth_secret: Option<String>,
    /// File holding the HS256 secret for client tokens (mode 600; a trailing
    /// newline is ignored). Or the secret itself in SB_AUTH_SECRET.
    #[arg(long, env = "SB_AUTH_SECRET_FILE")]
    auth_secret_file: Option<std::path::PathBuf>,
    /// Required token audience (`aud`).
    #[arg(long, env = "SB_TOKEN_AUDIENCE")]
    token_audience: Option<String>,
    /// Required token issuer (`iss`).
    #[arg(long, env = "SB_TOKEN_ISSUER")]
    token_issuer: Option<String>,
    /// Clock skew allowed on token `exp`/`nbf`, seconds.
    #[arg(long, env = "SB_TOKEN_LEEWAY_S", default_value_t = 30)]
    token_leeway_s: u64,
    /// Longest token lifetime accepted, seconds: a token without `exp`, or
    /// whose `exp` is further than this from now (or from its `iat`), is refused.
    #[arg(long, env = "SB_TOKEN_MAX_LIFETIME_S", default_value_t = 86_400)]
    token_max_lifetime_s: u64,
    /// Browser origins allowed besides the gateway's own (comma-separated,
    /// e.g. https://app.example; `null` for pages from files; `*`: any).
    #[arg(long, env = "SB_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// TLS certificate chain (PEM, leaf first): the port then serves `wss://`
    /// and `https://` only. Needs --tls-key.
    #[arg(long, env = "SB_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// TLS private key (PEM) for --tls-cert.
    #[arg(long, env = "SB_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Serve the demo app (and clients/js) at `/`: `--demo false` turns it off.
    #[arg(long, env = "SB_DEMO", default_value_t = true, action = clap::ArgAction::Set)]
    demo: bool,
    /// Client policy file (TOML); the built-in one is crates/bus/client-policy.toml.
    #[arg(long, env = "SB_POLICY")]
    policy: Option<String>,
    /// Largest client frame, bytes.
    #[arg(long, env = "SB_MAX_FRAME_BYTES", default_value_t = D.max_frame_bytes)]
    max_frame_bytes: usize,
    /// Idle timeout, ms.
    #[arg(long, env = "SB_IDLE_TIMEOUT_MS", default_value_t = D.idle_timeout_ms)]
    idle_timeout_ms: u64,
    /// Ping interval, ms.
    #[arg(long, env = "SB_PING_INTERVAL_MS", default_value_t = D.ping_interval_ms)]
    ping_interval_ms: u64,
    /// Messages queued per client before events are dropped/coalesced.
    #[arg(long, env = "SB_SEND_BUFFER", default_value_t = D.send_buffer)]
    send_buffer: usize,
    /// Messages queued per client before it is closed (4001).
    #[arg(long, env = "SB_SEND_BUFFER_HARD", default_value_t = D.send_buffer_hard)]
    send_buffer_hard: usize,
    /// Bytes queued per client before events are dropped/coalesced.
    #[arg(long, env = "SB_SEND_BUFFER_BYTES", default_value_t = D.send_buffer_bytes)]
    send_buffer_bytes: usize,
    /// Bytes queued per client (replies included) before it is closed (4001).
    #[arg(long, env = "SB_SEND_BUFFER_HARD_BYTES", default_value_t = D.send_buffer_hard_bytes)]
    send_buffer_hard_bytes: usize,
    /// Requests per second per connection.
    #[arg(long, env = "SB_RATE_PER_SEC", default_value_t = D.rate_per_sec)]
    rate_per_sec: u32,
    /// Request burst per connection.
    #[arg(long, env = "SB_RATE_BURST", default_value_t = D.rate_burst)]
    rate_burst: u32,
    /// TCP connections at most, counted from accept. Default: what the file
    /// limit allows (raised to the hard limit at start), less a reserve.
    #[arg(long, env = "SB_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Connections in the HTTP handshake at once; past it, the oldest of the
    /// busiest source's is closed to admit the new one.
    #[arg(long, env = "SB_MAX_HANDSHAKES", default_value_t = D.max_handshakes)]
    max_handshakes: usize,
    /// Connections in the HTTP handshake at once from one IPv4 address or
    /// IPv6 /64; past it, that source's oldest is closed.
    #[arg(long, env = "SB_MAX_HANDSHAKES_PER_IP", default_value_t = D.max_handshakes_per_ip)]
    max_handshakes_per_ip: usize,
    /// Time to send the HTTP request head, ms.
    #[arg(long, env = "SB_HANDSHAKE_TIMEOUT_MS", default_value_t = D.handshake_timeout_ms)]
    handshake_timeout_ms: u64,
    /// With an auth secret: time a connection without a token has to `auth`, ms.
    #[arg(long, env = "SB_AUTH_TIMEOUT_MS", default_value_t = D.auth_timeout_ms)]
    auth_timeout_ms: u64,
    /// Subscriptions per connection.
    #[arg(long, env = "SB_MAX_SUBSCRIPTIONS", default_value_t = D.max_subscriptions)]
    max_subscriptions: usize,
    /// Requests in flight per connection.
    #[arg(long, env = "SB_MAX_INFLIGHT_PER_CONN", default_value_t = D.max_inflight_per_conn)]
    max_inflight_per_conn: usize,
    /// Requests in flight per user, all its connections together.
    #[arg(long, env = "SB_MAX_INFLIGHT_PER_USER", default_value_t = D.max_inflight_per_user)]
    max_inflight_per_user: usize,
    /// Requests in flight per address (IPv4, IPv6 /64), under the broker's
    /// budget for the whole gateway (10,000).
    #[arg(long, env = "SB_MAX_INFLIGHT_PER_IP", default_value_t = D.max_inflight_per_ip)]
    max_inflight_per_ip: usize,
    /// Connections per user at once (more are closed with 1013).
    #[arg(long, env = "SB_MAX_CONNECTIONS_PER_USER", default_value_t = D.max_connections_per_user)]
    max_connections_per_user: usize,
    /// WebSocket connections per address at once (more are closed with 1013).
    #[arg(long, env = "SB_MAX_CONNECTIONS_PER_IP", default_value_t = D.max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// Distinct topics the gateway holds on the bus (keep under the broker's
    /// --max-subs-per-peer, 100,000).
    #[arg(long, env = "SB_MAX_TOPICS", default_value_t = D.max_topics)]
    max_topics: usize,
    /// Topics the clients of one address may bring in.
    #[arg(long, env = "SB_MAX_TOPICS_PER_IP", default_value_t = D.max_topics_per_ip)]
    max_topics_per_ip: usize,
    /// Proxies (CIDRs, comma-separated) whose X-Forwarded-For names the client:
    /// per-address shares and logs then see the client, not the proxy.
    #[arg(long, env = "SB_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Request deadline, ms.
    #[arg(long, env = "SB_REQUEST_TIMEOUT_MS", default_value_t = D.request_timeout_ms)]
    request_timeout_ms: u64,
    /// On shutdown: ms a client is still served after its goaway notice.
    #[arg(long, env = "SB_GOAWAY_MS", default_value_t = D.goaway_ms)]
    goaway_ms: u64,
    /// Runtime threads (1: a current_thread runtime shared with the bus socket).
    #[arg(long, env = "SB_RECEIVE_THREADS", default_value_t = 1)]
    threads: usize,
}

/// The defaults, shown by `--help`.
static D: std::sync::LazyLock<Settings> = std::sync::LazyLock::new(Settings::default);

fn main() {
    svc::init_tracing();
    let args = Args::parse();
    let policy = match &args.policy {
        None => Policy::default(),
        Some(path) => Policy::load(path).unwrap_or_else(|e| {
            eprintln!("receive: --policy {e}");
            std::process::exit(svc::EXIT_USAGE);
        }),
    };
    if args.auth_secret.is_some() {
        eprintln!(
            "receive: {}",
            svc::secret::refused_arg("--auth-secret", "SB_AUTH_SECRET", "--auth-secret-file")
        );
        std::process::exit(svc::EXIT_USAGE);
    }
    let secret = svc::secret::from_env_or_file("SB_AUTH_SECRET", args.auth_secret_file.as_deref())
        .unwrap_or_else(|e| {
            eprintln!("receive: {e}");
            std::process::exit(svc::EXIT_USAGE);
        });
    let tokens = secret.map(|secret| {
        let mut rules = TokenRules::new(&secret);
        rules.audience = args.token_audience.clone();
        rules.issuer = args.token_issuer.clone();
        rules.leeway_s = args.token_leeway_s;
        rules.max_lifetime_s = args.token_max_lifetime_s;
        rules
    });
    if args.max_handshakes == 0 || args.max_handshakes_per_ip == 0 {
        eprintln!("receive: --max-handshakes and --max-handshakes-per-ip must be at least 1");
        std::process::exit(svc::EXIT_USAGE);
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Tls::load(cert, key).unwrap_or_else(|e| {
            eprintln!("receive: {e:#}");
            std::process::exit(svc::EXIT_USAGE);
        })),
        _ => None,
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let settings = Settings {
        tls,
        demo: args.demo,
        max_frame_bytes: args.max_frame_bytes,
        idle_timeout_ms: args.idle_timeout_ms,
        ping_interval_ms: args.ping_interval_ms,
        send_buffer: args.send_buffer,
        send_buffer_hard: args.send_buffer_hard,
        send_buffer_bytes: args.send_buffer_bytes,
        send_buffer_hard_bytes: args.send_buffer_hard_bytes,
        rate_per_sec: args.rate_per_sec,
        rate_burst: args.rate_burst,
        max_connections: connection_cap(args.max_connections),
        max_handshakes: args.max_handshakes,
        max_handshakes_per_ip: args.max_handshakes_per_ip,
        handshake_timeout_ms: args.handshake_timeout_ms,
        auth_timeout_ms: args.auth_timeout_ms,
        max_subscriptions: args.max_subscriptions,
        max_inflight_per_conn: args.max_inflight_per_conn,
        max_inflight_per_user: args.max_inflight_per_user,
        max_inflight_per_ip: args.max_inflight_per_ip,
        max_connections_per_user: args.max_connections_per_user,
        max_connections_per_ip: args.max_connections_per_ip,
        max_topics: args.max_topics,
        max_topics_per_ip: args.max_topics_per_ip,
        trusted_proxies: args.trusted_proxies.clone(),
        request_timeout_ms: args.request_timeout_ms,
        tokens,
        allowed_origins: args.allowed_origins.clone(),
        policy,
        goaway_ms: args.goaway_ms,
        ..Settings::default()
    };
    // One thread (a current_thread runtime, which the bus socket task then
    // shares) measured faster on a 2-core machine than a multi_thread runtime
    // plus the bus thread; more threads pay off only with cores to spare.
    let built = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("receive: cannot start the runtime: {e}");
            std::process::exit(svc::EXIT_FAILURE);
        }
    };
    let code = rt.block_on(async move {
        let listener = match listen(&args.listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listen = %args.listen, error = %e, "cannot listen");
                return svc::EXIT_USAGE;
            }
        };
        match listener.local_addr() {
            Ok(addr) => println!("listening {scheme}://{addr}"),
            Err(e) => tracing::warn!(error = %e, "no local address"),
        }
        let config = args.bus.config("receive");
        let result = Service::new("receive")
            .version(env!("CARGO_PKG_VERSION"))
            .task(move |bus, shutdown| async move {
                let gateway = Gateway::new(settings, bus);
                switchboard_gateway::serve(gateway, listener, shutdown).await;
            })
            .run(config, svc::shutdown_on_signal())
            .await;
        match result {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %e, "receive failed");
                svc::EXIT_USAGE
            }
        }
    });
    std::process::exit(code);
}

/// Binds with SO_REUSEPORT, so that a successor started by a zero-downtime reload
/// (or another instance of this gateway) can listen on the same port while the
/// old process finishes its clients. The port is shared only with processes
/// running this same binary: a port held by anything else (an old Node gateway
/// with SO_REUSEPORT of its own, say) is an error naming the port and the holder,
/// never a silent split of the clients between the two.
async fn listen(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let addr = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("address resolves to nothing"))?;
    if addr.port() != 0 {
        if let Some(holder) = foreign_holder(addr.port()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "port {} is in use by {holder}: stop it or choose another --listen",
                    addr.port()
                ),
            ));
        }
    }
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A process other than a gateway of this binary that listens on `port`, named
/// for the error message; `None` when the port is free or held only by our own.
fn foreign_holder(port: u16) -> Option<String> {
    use svc::procinfo;
    let found = procinfo::tcp_listeners(port);
    let ours = std::env::current_exe().ok();
    // A binary replaced on disk reads as "PATH (deleted)".
    let same_binary = |pid: u32| {
        let exe = procinfo::exe_of(pid)?;
        let exe = exe.to_string_lossy();
        let ours = ours.as_ref()?.to_string_lossy().into_owned();
        Some(exe.trim_end_matches(" (deleted)") == ours)
    };
    for &pid in &found.pids {
        if same_binary(pid) != Some(true) {
            let exe = procinfo::exe_of(pid).map_or_else(|| "?".into(), |e| e.display().to_string());
            return Some(format!("pid {pid} ({exe})"));
        }
    }
    (found.sockets > found.pids.len()).then(|| "a process this user cannot see".to_owned())
}

/// Connections at most: at start the soft file limit is raised to the hard one,
/// and the cap is what it leaves after a reserve for everything else the
/// process opens (the bus, logs, handshakes in flight): 64 + 1/16 of it. An
/// explicit `--max-connections` over that is cut to it (the process would
/// otherwise fail at accept instead of answering 503).
fn connection_cap(asked: Option<usize>) -> usize {
    let files = usize::try_from(svc::raise_file_limit()).unwrap_or(usize::MAX);
    let fits = files.saturating_sub(64 + files / 16).max(1);
    match asked {
        Some(asked) if asked > fits => {
            tracing::warn!(
                asked,
                fits,
                files,
                "--max-connections is more than the file limit allows; cut"
            );
            fits
        }
        Some(asked) => asked,
        None => {
            tracing::info!(
                files,
                max_connections = fits,
                "connections at most, from the file limit"
            );
            fits
        }
    }
}
