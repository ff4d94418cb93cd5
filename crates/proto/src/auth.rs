//! Bus authentication: a peer proves it knows the shared secret without sending it.
//!
//! The broker answers a `hello` with a fresh random nonce; the peer says `hello`
//! again with `proof = HMAC-SHA256(secret, "sb-hello-v1" | nonce | service | 0x00 |
//! instance)`. A nonce is good for one attempt. Binding the service and instance
//! names into the MAC stops a captured proof from registering another name.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of a broker nonce.
pub const NONCE_LEN: usize = 32;

/// Computes the proof for a hello.
pub fn proof(secret: &[u8], nonce: &[u8], service: &str, instance: &str) -> [u8; 32] {
    mac(secret, nonce, service, instance)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a proof in constant time.
pub fn verify(secret: &[u8], nonce: &[u8], service: &str, instance: &str, proof: &[u8]) -> bool {
    mac(secret, nonce, service, instance)
        .verify_slice(proof)
        .is_ok()
}

fn mac(secret: &[u8], nonce: &[u8], service: &str, instance: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length (longer ones are hashed), so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"sb-hello-v1");
    mac.update(nonce);
    mac.update(service.as_bytes());
    mac.update(&[0]);
    mac.update(instance.as_bytes());
    mac
}
