//! Client tokens: HS256 JSON Web Tokens, verified by the `jsonwebtoken` crate.
//!
//! A token is accepted when it is HS256 and signed with the configured secret, it
//! has an `exp` that has not passed and ends at most `max_lifetime_s` from now
//! (and from its `iat`, if any), and its `nbf` (if any) has passed, within `leeway`;
//! its `aud` and `iss` match when the gateway is configured with them; and its
//! `sub` is a safe user id ([`switchboard_bus::proto::validate_user`]: it becomes a
//! topic token, so it may never hold `.`, `*`, `>` or whitespace).
//!
//! A token is a bearer credential that cannot be taken back short of changing
//! the secret, so every accepted one has a near end: a token without `exp`, or
//! with one further ahead than `max_lifetime_s` (a token minted to live a
//! century), is refused. The gateway closes a connection whose token has ended
//! (code 4002) unless the client re-authenticated with a newer token before.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use switchboard_bus::proto;

/// How tokens are checked.
#[derive(Debug, Clone)]
pub struct TokenRules {
    /// The HS256 secret.
    pub secret: String,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp`/`nbf`, seconds.
    pub leeway_s: u64,
    /// Longest lifetime accepted, seconds: `exp` further than this from now,
    /// or from the token's `iat`, is refused.
    pub max_lifetime_s: u64,
}

impl TokenRules {
    /// Rules with the defaults: 30 s leeway, tokens live 24 h at most.
    pub fn new(secret: &str) -> Self {
        Self {
            secret: secret.to_owned(),
            audience: None,
            issuer: None,
            leeway_s: 30,
            max_lifetime_s: 24 * 3600,
        }
    }
}

/// A verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The user (the token's `sub`).
    pub user: String,
    /// When the token ends, seconds since the epoch.
    pub expires_s: u64,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
}

/// Longest token accepted, bytes.
pub const MAX_TOKEN: usize = 4096;

/// Verifies `token` at `now_s`.
///
/// # Errors
///
/// A short reason, safe to show the client.
pub fn verify(rules: &TokenRules, token: &str, now_s: u64) -> Result<Verified, String> {
    if token.len() > MAX_TOKEN {
        return Err("token too long".into());
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = rules.leeway_s;
    validation.validate_nbf = true;
    // jsonwebtoken checks `aud`/`iss` only when the token has them, unless they
    // are required: a configured audience or issuer must be present.
    let mut required = vec!["sub", "exp"];
    match &rules.audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    if let Some(iss) = &rules.issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    let key = DecodingKey::from_secret(rules.secret.as_bytes());
    let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .map_err(|e| format!("token refused: {e}"))?;
    let claims = data.claims;
    // jsonwebtoken checks `exp` against the system clock; check it against ours
    // too, so that tests and the expiry timer agree.
    if claims.exp.saturating_add(rules.leeway_s) <= now_s {
        return Err("token refused: expired".into());
    }
    // From now (with the leeway for a clock ahead of ours), and from `iat`
    // when the token says when it was made.
    let latest = now_s
        .saturating_add(rules.max_lifetime_s)
        .saturating_add(rules.leeway_s);
    let too_long = claims.exp > latest
        || claims
            .iat
            .is_some_and(|iat| claims.exp.saturating_sub(iat) > rules.max_lifetime_s);
    if too_long {
        return Err(format!(
            "token refused: it lives longer than the gateway allows ({} s)",
            rules.max_lifetime_s
        ));
    }
    proto::validate_user(&claims.sub).map_err(|e| format!("token sub: {e}"))?;
    Ok(Verified {
        user: claims.sub,
        expires_s: claims.exp.saturating_add(rules.leeway_s),
    })
}

/// Signs claims with HS256 (tests, tools and `sbctl` use it to make tokens).
pub fn sign(secret: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::json;

    const NOW: u64 = 1_900_000_000;

    fn rules() -> TokenRules {
        TokenRules::new("k")
    }

    #[test]
    fn accepts_a_good_token_and_refuses_forgeries() {
        let token = sign(b"k", &json!({"sub": "ada", "exp": NOW + 100}));
        assert_eq!(
            verify(&rules(), &token, NOW),
            Ok(Verified {
                user: "ada".into(),
                expires_s: NOW + 130
            })
        );
        assert!(verify(&TokenRules::new("other"), &token, NOW).is_err());
        assert!(verify(&rules(), &token, NOW + 200).is_err(), "expired");
        let forged = token.replacen(
            token.split('.').nth(1).unwrap(),
            &URL_SAFE_NO_PAD.encode(r#"{"sub":"root"}"#),
            1,
        );
        assert!(verify(&rules(), &forged, NOW).is_err());
        let none_alg = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"sub":"x"}"#)
        );
        assert!(verify(&rules(), &none_alg, NOW).is_err());
        assert!(verify(&rules(), "garbage", NOW).is_err());
        assert!(verify(&rules(), &sign(b"k", &json!({"exp": NOW + 5})), NOW).is_err());
    }

    #[test]
    fn sub_must_be_a_safe_user_id() {
        for sub in ["a.b", "*", ">", "a b", "x\n", ""] {
            let token = sign(b"k", &json!({"sub": sub, "exp": NOW + 100}));
            assert!(verify(&rules(), &token, NOW).is_err(), "{sub:?}");
        }
    }

    #[test]
    fn audience_issuer_and_lifetime() {
        let mut r = rules();
        r.audience = Some("switchboard".into());
        r.issuer = Some("https://auth.example".into());
        let good = sign(
            b"k",
            &json!({"sub": "ada", "aud": "switchboard", "iss": "https://auth.example", "exp": NOW + 60}),
        );
        assert!(verify(&r, &good, NOW).is_ok());
        let wrong_aud = sign(
            b"k",
            &json!({"sub": "ada", "aud": "other", "iss": "https://auth.example", "exp": NOW + 60}),
        );
        assert!(verify(&r, &wrong_aud, NOW).is_err());
        let no_iss = sign(
            b"k",
            &json!({"sub": "ada", "aud": "switchboard", "exp": NOW + 60}),
        );
        assert!(verify(&r, &no_iss, NOW).is_err());

        // No exp: refused, with or without iat.
        let r = rules();
        assert!(verify(&r, &sign(b"k", &json!({"sub": "ada"})), NOW).is_err());
        let no_exp = sign(b"k", &json!({"sub": "ada", "iat": NOW}));
        assert!(verify(&r, &no_exp, NOW).is_err());
        // exp past the maximum lifetime from now, or from iat: refused; at it: taken.
        let century = sign(
            b"k",
            &json!({"sub": "ada", "exp": NOW + 100 * 365 * 86_400}),
        );
        assert!(verify(&r, &century, NOW).is_err());
        let day = sign(b"k", &json!({"sub": "ada", "exp": NOW + 86_400}));
        assert_eq!(verify(&r, &day, NOW).unwrap().expires_s, NOW + 86_430);
        let long_from_iat = sign(
            b"k",
            &json!({"sub": "ada", "iat": NOW - 86_000, "exp": NOW + 1_000}),
        );
        assert!(verify(&r, &long_from_iat, NOW).is_err());
        let worst = sign(b"k", &json!({"sub": "ada", "exp": u64::MAX, "iat": 0}));
        assert!(verify(&r, &worst, NOW).is_err());
        // Leeway: 20 s past exp still passes with 30 s leeway.
        let just = sign(b"k", &json!({"sub": "ada", "exp": NOW - 20}));
        assert!(verify(&r, &just, NOW).is_ok());
    }
}
