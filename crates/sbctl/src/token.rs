//! `sbctl token`: mints a client token (HS256 JWT) with the gateway's secret.
//!
//! The secret comes from `SB_AUTH_SECRET` or `--auth-secret-file` /
//! `SB_AUTH_SECRET_FILE` (what the gateway reads), else from the ecosystem file:
//! the `receive` app's `env.SB_AUTH_SECRET`, or the file its
//! `--auth-secret-file` argument or `env.SB_AUTH_SECRET_FILE` names (relative
//! to the ecosystem file's folder), else from `RUN_DIR/auth.secret`, the file
//! `scripts/run-all.sh` keeps the secret it started the system with in. Never
//! from an argument: both refuse
//! `--auth-secret`, which every local user could read in `ps`. The same goes for the
//! audience and issuer the gateway requires (`--token-audience`,
//! `--token-issuer`), so a minted token passes the gateway's checks as
//! configured.

use anyhow::{bail, Context};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;
use switchboard_bus::proto;

use crate::cli::TokenArgs;
use crate::Failure;

/// What `sbctl token` was asked for.
pub(crate) struct Request<'a> {
    pub(crate) sub: &'a str,
    pub(crate) exp: Duration,
    pub(crate) aud: Option<&'a str>,
    pub(crate) iss: Option<&'a str>,
    pub(crate) secret: Option<&'a str>,
    pub(crate) ecosystem: &'a Path,
    /// main's run folder: `auth.secret` there is the last resort.
    pub(crate) run_dir: &'a Path,
}

/// The file in the run folder where `scripts/run-all.sh` keeps the client-token
/// secret it started the gateway with (mode 600), so that `sbctl token` in
/// another terminal signs with the same one.
pub(crate) const RUN_DIR_FILE: &str = "auth.secret";

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
}

/// A minted token and when it ends (seconds since the epoch).
#[derive(Serialize)]
pub(crate) struct Minted {
    pub(crate) token: String,
    pub(crate) sub: String,
    pub(crate) exp: u64,
}

/// The gateway's token settings found in an ecosystem file.
#[derive(Default, Debug, PartialEq)]
struct FromEcosystem {
    secret: Option<String>,
    audience: Option<String>,
    issuer: Option<String>,
    max_lifetime_s: Option<u64>,
}

/// The gateway's default `--token-max-lifetime-s`: it refuses longer tokens.
const GATEWAY_MAX_LIFETIME_S: u64 = 24 * 3600;

/// Longest lifetime `--exp` accepts: a year. A token is a bearer credential;
/// one that never ends cannot be taken back short of changing the secret.
const MAX_EXP: Duration = Duration::from_secs(366 * 24 * 3600);

/// `sbctl token`: checks where the secret comes from, mints, prints the
/// token (with `--json`, the token, its user and its end).
pub(crate) fn run(args: &TokenArgs, json: bool, run_dir: &Path) -> Result<(), Failure> {
    if args.auth_secret.is_some() {
        return Err(Failure::Usage(anyhow::anyhow!(
            switchboard_bus::svc::secret::refused_arg(
                "--auth-secret",
                "SB_AUTH_SECRET",
                "--auth-secret-file"
            )
        )));
    }
    let secret = switchboard_bus::svc::secret::from_env_or_file(
        "SB_AUTH_SECRET",
        args.auth_secret_file.as_deref(),
    )
    .map_err(|e| Failure::Usage(anyhow::anyhow!(e)))?;
    let minted = mint(&Request {
        sub: &args.sub,
        exp: args.exp,
        aud: args.aud.as_deref(),
        iss: args.iss.as_deref(),
        secret: secret.as_deref(),
        ecosystem: &args.ecosystem,
        run_dir,
    })
    .map_err(Failure::Usage)?;
    if json {
        println!("{}", serde_json::to_string(&minted).unwrap_or_default());
    } else {
        println!("{}", minted.token);
    }
    Ok(())
}

/// Mints the token.
///
/// # Errors
///
/// A `sub` the gateway would refuse, a lifetime of zero or over a year, no
/// secret anywhere, or an ecosystem file that does not parse.
pub(crate) fn mint(req: &Request<'_>) -> anyhow::Result<Minted> {
    proto::validate_user(req.sub).map_err(|e| anyhow::anyhow!("--sub: {e}"))?;
    if req.exp.is_zero() || req.exp > MAX_EXP {
        bail!("--exp must be more than 0 and at most 366 days");
    }
    let eco = from_ecosystem(req.ecosystem)?;
    // What the gateway accepts: its --token-max-lifetime-s, from the same
    // environment it reads, else from its entry in the ecosystem file.
    let max_s = std::env::var("SB_TOKEN_MAX_LIFETIME_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .or(eco.max_lifetime_s)
        .unwrap_or(GATEWAY_MAX_LIFETIME_S);
    if req.exp.as_secs() > max_s {
        bail!(
            "--exp {} s is longer than the gateway accepts ({max_s} s, its \
             --token-max-lifetime-s): mint a shorter token and refresh it",
            req.exp.as_secs()
        );
    }
    let saved = req.run_dir.join(RUN_DIR_FILE);
    let secret = match req.secret.map(str::to_owned).or(eco.secret) {
        Some(secret) => secret,
        None if saved.exists() => {
            switchboard_bus::svc::secret::read_file(&saved).map_err(anyhow::Error::msg)?
        }
        None => bail!(
            "the gateway has no client-token secret: set SB_AUTH_SECRET (or pass \
             --auth-secret-file PATH) to the value the gateway runs with, or --run-dir to \
             the run folder of a system started with auth on (its {}, not found); to \
             switch auth on, start the system with SB_AUTH=1 scripts/run-all.sh",
            saved.display()
        ),
    };
    let iat = proto::now_ms() / 1000;
    let exp = iat + req.exp.as_secs().max(1);
    let claims = Claims {
        sub: req.sub,
        iat,
        exp,
        aud: req.aud.or(eco.audience.as_deref()),
        iss: req.iss.or(eco.issuer.as_deref()),
    };
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("signing the token")?;
    Ok(Minted {
        token,
        sub: req.sub.to_owned(),
        exp,
    })
}

/// The `receive` app's token settings in the ecosystem file at `path`; nothing
/// when the file does not exist.
fn from_ecosystem(path: &Path) -> anyhow::Result<FromEcosystem> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FromEcosystem::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let apps = doc.get("apps").and_then(toml::Value::as_array);
    let Some(gateway) = apps.into_iter().flatten().find(|app| {
        app.get("bin").and_then(toml::Value::as_str) == Some("receive")
            || app.get("name").and_then(toml::Value::as_str) == Some("receive")
    }) else {
        return Ok(FromEcosystem::default());
    };
    let env = |key: &str| {
        gateway
            .get("env")
            .and_then(|env| env.get(key))
            .and_then(toml::Value::as_str)
            .map(str::to_owned)
    };
    let args: Vec<&str> = gateway
        .get("args")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(toml::Value::as_str)
        .collect();
    let arg = |flag: &str| {
        let eq = format!("{flag}=");
        args.iter().enumerate().find_map(|(i, a)| {
            if *a == flag {
                args.get(i + 1).map(|v| (*v).to_owned())
            } else {
                a.strip_prefix(&eq).map(str::to_owned)
            }
        })
    };
    let secret = match env("SB_AUTH_SECRET") {
        Some(secret) => Some(secret),
        None => match arg("--auth-secret-file").or_else(|| env("SB_AUTH_SECRET_FILE")) {
            Some(file) => {
                let file = path.parent().unwrap_or(Path::new(".")).join(file);
                Some(switchboard_bus::svc::secret::read_file(&file).map_err(anyhow::Error::msg)?)
            }
            None => None,
        },
    };
    Ok(FromEcosystem {
        secret,
        audience: arg("--token-audience").or_else(|| env("SB_TOKEN_AUDIENCE")),
        issuer: arg("--token-issuer").or_else(|| env("SB_TOKEN_ISSUER")),
        max_lifetime_s: arg("--token-max-lifetime-s")
            .or_else(|| env("SB_TOKEN_MAX_LIFETIME_S"))
            .and_then(|v| v.parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_the_gateways_entry() {
        let dir = std::env::temp_dir().join(format!("sbctl-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("eco.toml");
        std::fs::write(
            &path,
            r#"
[[apps]]
name = "chat"
bin = "chat"
env = { SB_AUTH_SECRET = "not-this" }

[[apps]]
name = "edge"
bin = "receive"
args = ["--listen", "0.0.0.0:3000", "--token-audience=web", "--auth-secret-file", "secret", "--token-max-lifetime-s", "600"]
env = { SB_TOKEN_ISSUER = "me" }
"#,
        )
        .unwrap();
        std::fs::write(dir.join("secret"), "s3\n").unwrap();
        assert_eq!(
            from_ecosystem(&path).unwrap(),
            FromEcosystem {
                secret: Some("s3".into()),
                audience: Some("web".into()),
                issuer: Some("me".into()),
                max_lifetime_s: Some(600),
            }
        );
        assert_eq!(
            from_ecosystem(&dir.join("missing.toml")).unwrap(),
            FromEcosystem::default()
        );
        std::fs::write(&path, "[[apps]\n").unwrap();
        assert!(from_ecosystem(&path).is_err(), "a broken file is an error");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn refuses_what_the_gateway_would() {
        let req = |sub, exp| Request {
            sub,
            exp,
            aud: None,
            iss: None,
            secret: Some("k"),
            ecosystem: Path::new("/nonexistent"),
            run_dir: Path::new("/nonexistent"),
        };
        let hour = Duration::from_secs(3600);
        assert!(mint(&req("ada", hour)).is_ok());
        for sub in ["a.b", "*", "", "a b"] {
            assert!(mint(&req(sub, hour)).is_err(), "{sub:?}");
        }
        assert!(mint(&req("ada", Duration::ZERO)).is_err());
        assert!(mint(&req("ada", MAX_EXP * 2)).is_err());
        // Longer than the gateway's default maximum lifetime (24 h): refused.
        assert!(mint(&req("ada", Duration::from_secs(86_401))).is_err());
        assert!(mint(&req("ada", Duration::from_secs(86_400))).is_ok());
        let mut no_secret = req("ada", hour);
        no_secret.secret = None;
        let err = mint(&no_secret).err().unwrap().to_string();
        assert!(err.contains("SB_AUTH_SECRET"), "{err}");
    }
}
