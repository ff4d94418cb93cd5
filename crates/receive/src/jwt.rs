//! HS256 JSON Web Tokens: just enough to verify a client's token.
//!
//! A token is accepted when its header says `alg: HS256`, its signature is the
//! HMAC-SHA256 of `header.payload` under the configured secret (compared in
//! constant time), its `exp` (if any) is in the future and its `nbf` (if any) is
//! not; its `sub` (1 to 128 bytes) becomes the user.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
}

/// Longest `sub` accepted.
pub const MAX_SUB: usize = 128;

/// Verifies `token` and returns its subject.
///
/// # Errors
///
/// A short reason, safe to show the client.
pub fn verify(secret: &[u8], token: &str, now_s: u64) -> Result<String, &'static str> {
    if token.len() > 4096 {
        return Err("token too long");
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("token is not header.payload.signature");
    };
    let header: Header = decode_part(h).ok_or("bad token header")?;
    if header.alg != "HS256" {
        return Err("token algorithm must be HS256");
    }
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| "bad token signature encoding")?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).map_err(|_| "bad secret")?;
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    mac.verify_slice(&sig).map_err(|_| "bad token signature")?;
    let claims: Claims = decode_part(p).ok_or("bad token payload")?;
    if claims.exp.is_some_and(|exp| exp <= now_s) {
        return Err("token expired");
    }
    if claims.nbf.is_some_and(|nbf| nbf > now_s) {
        return Err("token not valid yet");
    }
    match claims.sub {
        Some(sub)
            if !sub.is_empty() && sub.len() <= MAX_SUB && !sub.chars().any(char::is_control) =>
        {
            Ok(sub)
        }
        _ => Err("token has no usable sub"),
    }
}

fn decode_part<T: for<'de> Deserialize<'de>>(part: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Signs claims (tests, tools and `sbctl` use it to make tokens).
pub fn sign(secret: &[u8], claims: &serde_json::Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let p = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    let s = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{h}.{p}.{s}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_a_good_token_and_refuses_forgeries() {
        let token = sign(b"k", &json!({"sub": "ada", "exp": 2_000}));
        assert_eq!(verify(b"k", &token, 1_000), Ok("ada".into()));
        assert_eq!(verify(b"other", &token, 1_000), Err("bad token signature"));
        assert_eq!(verify(b"k", &token, 2_000), Err("token expired"));
        let (hp, _) = token.rsplit_once('.').unwrap();
        assert!(verify(b"k", &format!("{hp}.AAAA"), 1_000).is_err());
        // Tampered payload, original signature.
        let forged = token.replacen(
            token.split('.').nth(1).unwrap(),
            &URL_SAFE_NO_PAD.encode(r#"{"sub":"root"}"#),
            1,
        );
        assert_eq!(verify(b"k", &forged, 1_000), Err("bad token signature"));
        let none_alg = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"sub":"x"}"#)
        );
        assert_eq!(
            verify(b"k", &none_alg, 1_000),
            Err("token algorithm must be HS256")
        );
        assert!(verify(b"k", "garbage", 1_000).is_err());
        assert_eq!(
            verify(b"k", &sign(b"k", &json!({"exp": 5_000})), 1_000),
            Err("token has no usable sub")
        );
        assert_eq!(
            verify(b"k", &sign(b"k", &json!({"sub": "a", "nbf": 5_000})), 1_000),
            Err("token not valid yet")
        );
    }
}
