//! The `receive` binary's command line: [`Cli`] parses it (the gateway's
//! [`Settings`] flattened in, plus what only the binary reads: where to listen,
//! the secrets, TLS files, the policy file, threads), [`Cli::settings`] checks it
//! and loads the files, and [`Cli::run`] listens and serves until SIGTERM/SIGINT.

use std::path::PathBuf;
use switchboard_bus::svc::{self, BusArgs};
use switchboard_bus::Service;

use crate::jwt::TokenRules;
use crate::policy::Policy;
use crate::tls::Tls;
use crate::{admission, listen, Gateway, Settings};

/// The Switchboard WebSocket gateway.
#[derive(clap::Parser, Debug)]
#[command(version, about)]
pub struct Cli {
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
    auth_secret_file: Option<PathBuf>,
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
    /// TLS certificate chain (PEM, leaf first): the port then serves `wss://`
    /// and `https://` only. Needs --tls-key.
    #[arg(long, env = "SB_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for --tls-cert.
    #[arg(long, env = "SB_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Client policy file (TOML); the built-in one is crates/bus/client-policy.toml.
    #[arg(long, env = "SB_POLICY")]
    policy: Option<String>,
    /// TCP connections at most, counted from accept. Default: what the file
    /// limit allows (raised to the hard limit at start), less a reserve.
    #[arg(long, env = "SB_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Runtime threads (1: a current_thread runtime shared with the bus socket).
    #[arg(long, env = "SB_RECEIVE_THREADS", default_value_t = 1)]
    pub threads: usize,
    #[command(flatten)]
    settings: Settings,
}

impl Cli {
    /// The gateway's settings: the flags, the secret and the files they name,
    /// checked.
    ///
    /// # Errors
    ///
    /// A message for the user (exit 64): a secret on the command line, a file
    /// that cannot be read, a value out of range.
    pub fn settings(&self) -> Result<Settings, String> {
        let policy = match &self.policy {
            None => Policy::default(),
            Some(path) => Policy::load(path).map_err(|e| format!("--policy {e}"))?,
        };
        if self.auth_secret.is_some() {
            return Err(svc::secret::refused_arg(
                "--auth-secret",
                "SB_AUTH_SECRET",
                "--auth-secret-file",
            ));
        }
        let secret =
            svc::secret::from_env_or_file("SB_AUTH_SECRET", self.auth_secret_file.as_deref())
                .map_err(|e| e.to_string())?;
        let tokens = secret.map(|secret| {
            let mut rules = TokenRules::new(&secret);
            rules.audience = self.token_audience.clone();
            rules.issuer = self.token_issuer.clone();
            rules.leeway_s = self.token_leeway_s;
            rules.max_lifetime_s = self.token_max_lifetime_s;
            rules
        });
        if self.settings.max_handshakes == 0 || self.settings.max_handshakes_per_ip == 0 {
            return Err("--max-handshakes and --max-handshakes-per-ip must be at least 1".into());
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(Tls::load(cert, key).map_err(|e| format!("{e:#}"))?),
            _ => None,
        };
        Ok(Settings {
            tls,
            tokens,
            policy,
            max_connections: admission::connection_cap(self.max_connections),
            ..self.settings.clone()
        })
    }

    /// Listens, prints `listening ws://ADDR`, and serves as the bus service
    /// `receive` until SIGTERM/SIGINT; returns the exit code.
    pub async fn run(self, settings: Settings) -> i32 {
        let scheme = if settings.tls.is_some() { "wss" } else { "ws" };
        let listener = match listen::listen(&self.listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listen = %self.listen, error = %e, "cannot listen");
                return svc::EXIT_USAGE;
            }
        };
        match listener.local_addr() {
            Ok(addr) => println!("listening {scheme}://{addr}"),
            Err(e) => tracing::warn!(error = %e, "no local address"),
        }
        let config = self.bus.config("receive");
        let result = Service::new("receive")
            .version(env!("CARGO_PKG_VERSION"))
            .task(move |bus, shutdown| async move {
                let gateway = Gateway::new(settings, bus);
                crate::serve(gateway, listener, shutdown).await;
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
    }
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
    fn flags_land_in_the_settings_and_the_rest_keep_their_defaults() {
        let cli = Cli::try_parse_from([
            "receive",
            "--max-frame-bytes",
            "100",
            "--allowed-origins",
            "https://a.example,null",
            "--demo",
            "false",
        ])
        .unwrap();
        let settings = cli.settings().unwrap();
        let defaults = Settings::default();
        assert_eq!(settings.max_frame_bytes, 100);
        assert_eq!(settings.allowed_origins, ["https://a.example", "null"]);
        assert!(!settings.demo);
        assert_eq!(settings.idle_timeout_ms, defaults.idle_timeout_ms);
        assert_eq!(settings.shutdown_grace_ms, defaults.shutdown_grace_ms);
        assert_eq!(settings.goaway_ms, defaults.goaway_ms);
    }

    #[test]
    fn a_secret_in_the_arguments_is_refused() {
        let cli = Cli::try_parse_from(["receive", "--auth-secret", "s"]).unwrap();
        assert!(cli.settings().unwrap_err().contains("--auth-secret"));
    }
}
