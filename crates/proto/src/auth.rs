//! Bus authentication, both ways: each side proves it knows the shared secret
//! without sending it.
//!
//! The peer says `hello` with a fresh random `challenge`; the broker answers
//! with its own fresh `nonce` and `proof = HMAC-SHA256(secret, "sb-broker-v1" |
//! challenge | nonce | service | 0x00 | instance)` ([`broker_proof`]); the peer
//! checks that proof and says `hello` again with `proof = HMAC-SHA256(secret,
//! "sb-hello-v1" | nonce | service | 0x00 | instance)` ([`proof`]). Each nonce
//! is good for one attempt. Binding the service and instance names into both
//! MACs stops a captured proof from registering another name, and the distinct
//! labels stop either side's proof from being replayed as the other's.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of a broker nonce, and of a peer's challenge.
pub const NONCE_LEN: usize = 32;

const PEER_LABEL: &[u8] = b"sb-hello-v1";
const BROKER_LABEL: &[u8] = b"sb-broker-v1";

/// Computes the peer's proof for a hello.
pub fn proof(secret: &[u8], nonce: &[u8], service: &str, instance: &str) -> [u8; 32] {
    mac(secret, PEER_LABEL, &[nonce], service, instance)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a peer's proof in constant time.
pub fn verify(secret: &[u8], nonce: &[u8], service: &str, instance: &str, proof: &[u8]) -> bool {
    mac(secret, PEER_LABEL, &[nonce], service, instance)
        .verify_slice(proof)
        .is_ok()
}

/// Computes the broker's proof: its answer to the peer's `challenge`, bound to
/// the broker's own `nonce` and the names the peer registers.
pub fn broker_proof(
    secret: &[u8],
    challenge: &[u8],
    nonce: &[u8],
    service: &str,
    instance: &str,
) -> [u8; 32] {
    mac(secret, BROKER_LABEL, &[challenge, nonce], service, instance)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks the broker's proof in constant time.
pub fn verify_broker(
    secret: &[u8],
    challenge: &[u8],
    nonce: &[u8],
    service: &str,
    instance: &str,
    proof: &[u8],
) -> bool {
    mac(secret, BROKER_LABEL, &[challenge, nonce], service, instance)
        .verify_slice(proof)
        .is_ok()
}

fn mac(
    secret: &[u8],
    label: &[u8],
    nonces: &[&[u8]],
    service: &str,
    instance: &str,
) -> Hmac<Sha256> {
    // HMAC takes keys of any length (longer ones are hashed), so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(label);
    for nonce in nonces {
        mac.update(nonce);
    }
    mac.update(service.as_bytes());
    mac.update(&[0]);
    mac.update(instance.as_bytes());
    mac
}
