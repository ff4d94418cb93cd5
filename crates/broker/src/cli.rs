//! The `broker` binary's command line: [`Cli`] parses it, [`Cli::settings`]
//! turns it into [`Settings`] and checks it, [`Cli::run`] binds and runs the
//! broker until SIGTERM/SIGINT.

use switchboard_svc as svc;

use crate::{ha, Settings};

/// The Switchboard message broker.
#[derive(clap::Parser, Debug)]
#[command(version, about, long_about = None)]
pub struct Cli {
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

impl Cli {
    /// The broker's settings.
    ///
    /// # Errors
    ///
    /// A message for the user (exit 64): a broker pair across hosts without a
    /// secret.
    pub fn settings(self) -> Result<Settings, String> {
        let settings = Settings {
            bind: self.bind,
            secret: self.secret,
            heartbeat_ms: self.heartbeat_ms.max(10),
            liveness: self.liveness.max(1),
            max_message_bytes: self.max_message_bytes,
            services: self.services,
            max_services: self.max_services,
            max_subs_per_peer: self.max_subs_per_peer,
            max_inflight_per_client: self.max_inflight_per_client,
            max_deadline_ms: self.max_deadline_ms,
            insecure: self.insecure,
            ha: match (self.ha_role.as_deref(), self.ha_bind, self.ha_peer) {
                (Some(role), Some(bind), Some(peer)) => Some(ha::HaSettings {
                    role: if role == "primary" {
                        ha::Role::Primary
                    } else {
                        ha::Role::Backup
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
            && !crate::is_local(&settings.bind)
        {
            return Err(
                "a broker pair across hosts needs --secret (its state messages are signed with it)"
                    .into(),
            );
        }
        Ok(settings)
    }
}

/// Binds, prints `listening ENDPOINT`, and runs the broker until SIGTERM/SIGINT;
/// returns the exit code.
pub async fn run(settings: Settings) -> i32 {
    let (socket, endpoint) = match crate::bind(&settings).await {
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
    let stats = crate::run(settings, socket, svc::shutdown_on_signal()).await;
    tracing::info!(?stats, "broker stopped");
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
        // `--version` prints the package's name, as it did before the
        // command line moved into the library.
        assert_eq!(Cli::command().get_name(), env!("CARGO_PKG_NAME"));
    }

    #[test]
    fn a_pair_across_hosts_needs_a_secret() {
        let pair = |extra: &[&str]| {
            let mut args = vec![
                "broker",
                "--bind",
                "tcp://10.0.0.1:5555",
                "--ha-role",
                "primary",
                "--ha-bind",
                "10.0.0.1:5556",
                "--ha-peer",
                "10.0.0.2:5556",
            ];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args).unwrap().settings()
        };
        assert!(pair(&[]).unwrap_err().contains("--secret"));
        assert!(pair(&["--secret", "s"]).is_ok());
    }
}
