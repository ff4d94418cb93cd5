//! `broker`: binds the ROUTER socket and runs the broker until SIGTERM/SIGINT.

use clap::Parser;
use switchboard_broker::Settings;
use switchboard_svc as svc;

/// The Switchboard message broker.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Endpoint to bind (tcp://HOST:PORT or ipc:///path). Port 0 picks a free port;
    /// the bound endpoint is printed on stdout as `listening ENDPOINT`.
    #[arg(long, env = "SB_BROKER_BIND", default_value = switchboard_proto::DEFAULT_BROKER)]
    bind: String,
    /// Shared bus secret; peers must prove they know it.
    #[arg(long, env = "SB_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Heartbeat interval, ms.
    #[arg(long, env = "SB_HEARTBEAT_MS", default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Missed heartbeats before a peer is dead.
    #[arg(long, env = "SB_LIVENESS", default_value_t = 3)]
    liveness: u32,
    /// Largest message, bytes.
    #[arg(long, env = "SB_MAX_MESSAGE_BYTES", default_value_t = switchboard_proto::DEFAULT_MAX_MESSAGE_LEN)]
    max_message_bytes: usize,
    /// Services declared up front (comma-separated): requests for them are held.
    #[arg(long, env = "SB_SERVICES", value_delimiter = ',')]
    services: Vec<String>,
    /// Distinct service names at most.
    #[arg(long, env = "SB_MAX_SERVICES", default_value_t = Settings::default().max_services)]
    max_services: usize,
    /// Subscriptions one peer may hold.
    #[arg(long, env = "SB_MAX_SUBS_PER_PEER", default_value_t = Settings::default().max_subs_per_peer)]
    max_subs_per_peer: usize,
    /// Requests in flight from one peer at most (a gateway is one peer for all
    /// its clients).
    #[arg(long, env = "SB_MAX_INFLIGHT_PER_CLIENT", default_value_t = Settings::default().max_inflight_per_client)]
    max_inflight_per_client: u32,
    /// Furthest a request's deadline may be ahead, ms.
    #[arg(long, env = "SB_MAX_DEADLINE_MS", default_value_t = Settings::default().max_deadline_ms)]
    max_deadline_ms: u64,
    /// Run without --secret: every local user can then join the bus as any
    /// service. Loopback and ipc:// only; without a secret and without this
    /// flag the broker refuses to start.
    #[arg(long, env = "SB_INSECURE", value_parser = clap::builder::FalseyValueParser::new())]
    insecure: bool,
    /// One of a broker pair (failover): `primary` or `backup`. Needs
    /// --ha-bind and --ha-peer; every peer is then given both brokers'
    /// endpoints (SB_BROKER=tcp://a:5555,tcp://b:5555).
    #[arg(long, env = "SB_HA_ROLE", value_parser = ["primary", "backup"], requires_all = ["ha_bind", "ha_peer"])]
    ha_role: Option<String>,
    /// UDP address this broker hears its partner's state on (HOST:PORT).
    #[arg(long, env = "SB_HA_BIND", requires = "ha_role")]
    ha_bind: Option<std::net::SocketAddr>,
    /// The partner broker's UDP state address (HOST:PORT; a name is resolved).
    #[arg(long, env = "SB_HA_PEER", requires = "ha_role")]
    ha_peer: Option<String>,
}

fn main() {
    svc::init_tracing();
    let args = Args::parse();
    let settings = Settings {
        bind: args.bind,
        secret: args.secret,
        heartbeat_ms: args.heartbeat_ms.max(10),
        liveness: args.liveness.max(1),
        max_message_bytes: args.max_message_bytes,
        services: args.services,
        max_services: args.max_services,
        max_subs_per_peer: args.max_subs_per_peer,
        max_inflight_per_client: args.max_inflight_per_client,
        max_deadline_ms: args.max_deadline_ms,
        insecure: args.insecure,
        ha: match (args.ha_role.as_deref(), args.ha_bind, args.ha_peer) {
            (Some(role), Some(bind), Some(peer)) => Some(switchboard_broker::ha::HaSettings {
                role: if role == "primary" {
                    switchboard_broker::ha::Role::Primary
                } else {
                    switchboard_broker::ha::Role::Backup
                },
                bind,
                peer,
            }),
            _ => None,
        },
        ..Settings::default()
    };
    if settings.ha.is_some()
        && settings.secret.as_deref().is_none_or(str::is_empty)
        && !settings.insecure
        && !switchboard_broker::is_local(&settings.bind)
    {
        eprintln!("broker: a broker pair across hosts needs --secret (its state messages are signed with it)");
        std::process::exit(svc::EXIT_USAGE);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("broker: cannot start the runtime: {e}");
            std::process::exit(svc::EXIT_FAILURE);
        }
    };
    let code = rt.block_on(async {
        let (socket, endpoint) = match switchboard_broker::bind(&settings).await {
            Ok(bound) => bound,
            Err(e) => {
                tracing::error!(error = %e, "cannot bind");
                return svc::EXIT_USAGE;
            }
        };
        println!("listening {endpoint}");
        tracing::info!(%endpoint, auth = settings.secret.is_some(), "broker listening");
        if settings.secret.as_deref().is_none_or(str::is_empty) {
            tracing::warn!(%endpoint, "--insecure: every local user can join the bus as any service");
        }
        let stats = switchboard_broker::run(settings, socket, svc::shutdown_on_signal()).await;
        tracing::info!(?stats, "broker stopped");
        0
    });
    std::process::exit(code);
}
