//! Fuzzes the one decode path every peer's bytes go through:
//! `cargo +nightly fuzz run decode` from `crates/proto`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Neither may panic; a successful decode must round-trip.
    let _ = switchboard_proto::decode_head(data);
    if let Ok(env) = switchboard_proto::decode(data) {
        let bytes = switchboard_proto::encode(&env).expect("a decoded envelope encodes");
        assert_eq!(switchboard_proto::decode(&bytes).expect("re-decodes"), env);
    }
});
