//! The wire contract, pinned: round trips, golden bytes, properties, hostile input
//! (topic matching and the topic index are in `topic.rs`).

// Test code is exempt from the workspace's 120-line function limit.
#![allow(clippy::too_many_lines)]

use proptest::prelude::*;
use switchboard_proto::{
    self as proto, decode, decode_head, encode, ByteBuf, Envelope, ErrorBody, ErrorCode, Kind,
    ProtoError, PROTOCOL_VERSION,
};

const ALL_KINDS: [Kind; 10] = [
    Kind::Hello,
    Kind::Ready,
    Kind::Heartbeat,
    Kind::Request,
    Kind::Reply,
    Kind::Event,
    Kind::Subscribe,
    Kind::Unsubscribe,
    Kind::Drain,
    Kind::Bye,
];

/// A request with every field set.
fn full_request() -> Envelope {
    Envelope {
        v: PROTOCOL_VERSION,
        kind: Kind::Request,
        id: 42,
        from: "receive-1".into(),
        to: "chat".into(),
        instance: Some("chat-2".into()),
        key: Some("lobby".into()),
        op: "say".into(),
        deadline: 1_700_000_005_000,
        trace: "9f86d081884c7d65".into(),
        user: Some("ada".into()),
        session: Some("s-1".into()),
        idem: true,
        body: ByteBuf::from(vec![0x81, 0xa4, b't', b'e', b'x', b't', 0xa2, b'h', b'i']),
        error: None,
        grants: None,
    }
}

mod round_trip {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        for kind in ALL_KINDS {
            let mut env = full_request();
            env.kind = kind;
            assert_eq!(decode(&encode(&env).unwrap()).unwrap(), env, "{kind:?}");
            let bare = Envelope::new(kind);
            assert_eq!(
                decode(&encode(&bare).unwrap()).unwrap(),
                bare,
                "bare {kind:?}"
            );
        }
    }

    #[test]
    fn every_error_code_round_trips() {
        for code in ErrorCode::ALL {
            let env = Envelope::error_reply(1, "t", ErrorBody::new(code, "why"));
            let back = decode(&encode(&env).unwrap()).unwrap();
            assert_eq!(back.error.unwrap().code, code);
            assert_eq!(serde_json_like(code), code.as_str());
        }
    }

    fn serde_json_like(code: ErrorCode) -> String {
        // The wire name is the snake_case string in the MessagePack map.
        let bytes = rmp_serde::to_vec_named(&code).unwrap();
        rmp_serde::from_slice::<String>(&bytes).unwrap()
    }

    #[test]
    fn head_borrows_the_routing_fields() {
        let env = full_request();
        let bytes = encode(&env).unwrap();
        let head = decode_head(&bytes).unwrap();
        assert_eq!(
            (
                head.kind,
                head.id,
                head.to,
                head.op,
                head.instance,
                head.key,
                head.deadline,
                head.trace,
                head.idem,
                head.body
            ),
            (
                Kind::Request,
                42,
                "chat",
                "say",
                Some("chat-2"),
                Some("lobby"),
                1_700_000_005_000,
                "9f86d081884c7d65",
                true,
                &env.body[..]
            )
        );
    }

    #[test]
    fn encoding_uses_named_fields() {
        let bytes = encode(&full_request()).unwrap();
        // A map (0x8_ fixmap or 0xde map16), never a positional array.
        assert!(
            bytes[0] & 0xf0 == 0x80 || bytes[0] == 0xde,
            "{:#x}",
            bytes[0]
        );
        assert!(bytes.windows(4).any(|w| w == b"kind"));
    }
}

mod golden {
    use super::*;

    /// Compares `env`'s encoding with the checked-in fixture, both ways: the bytes
    /// decode to `env` and `env` encodes to the bytes, so the wire format cannot
    /// drift unnoticed. `SB_BLESS=1` rewrites the fixture after an intended change.
    fn check(name: &str, env: &Envelope) {
        let path = format!("{}/tests/golden/{name}.hex", env!("CARGO_MANIFEST_DIR"));
        let encoded = encode(env).unwrap();
        if std::env::var_os("SB_BLESS").is_some() {
            std::fs::write(&path, hex::encode(&encoded) + "\n").unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let bytes = hex::decode(text.trim()).unwrap();
        assert_eq!(
            &decode(&bytes).unwrap(),
            env,
            "{name}: fixture decodes to the envelope"
        );
        assert_eq!(encoded, bytes, "{name}: encoding matches the fixture");
    }

    #[test]
    fn full_request_matches_fixture() {
        check("request_full", &full_request());
    }

    /// A frame written by a 1.0 peer (before `session`) still decodes.
    #[test]
    fn version_1_0_frame_still_decodes() {
        let path = format!(
            "{}/tests/golden/request_v1_0.hex",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = hex::decode(std::fs::read_to_string(path).unwrap().trim()).unwrap();
        let env = decode(&bytes).unwrap();
        let mut expected = full_request();
        expected.v = 0x0100;
        expected.session = None;
        assert_eq!(env, expected);
    }

    /// A frame written by a 1.1 peer (before `grants`) still decodes.
    #[test]
    fn version_1_1_frame_still_decodes() {
        let path = format!(
            "{}/tests/golden/request_v1_1.hex",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = hex::decode(std::fs::read_to_string(path).unwrap().trim()).unwrap();
        let mut expected = full_request();
        expected.v = 0x0101;
        assert_eq!(decode(&bytes).unwrap(), expected);
    }

    #[test]
    fn reply_with_grants_matches_fixture() {
        let mut env = Envelope::reply_to(9, "t1", vec![0x80]);
        env.grants = Some(proto::Grants {
            subscribe: vec!["chat.room.lobby".into()],
            unsubscribe: vec!["chat.room.old".into()],
        });
        check("reply_grants", &env);
    }

    #[test]
    fn heartbeat_matches_fixture() {
        check("heartbeat", &Envelope::new(Kind::Heartbeat));
    }

    #[test]
    fn error_reply_matches_fixture() {
        check(
            "reply_worker_lost",
            &Envelope::error_reply(
                7,
                "abc",
                ErrorBody::new(ErrorCode::WorkerLost, "loc01 died"),
            ),
        );
    }
}

mod compat {
    use super::*;
    use serde::Serialize;

    /// What a peer on a newer minor version might send: extra fields.
    #[derive(Serialize)]
    struct Newer<'a> {
        v: u16,
        kind: &'a str,
        id: u64,
        to: &'a str,
        op: &'a str,
        priority: u8,
        tags: Vec<&'a str>,
        body: serde_bytes::ByteBuf,
    }

    #[test]
    fn newer_minor_version_with_extra_fields_decodes() {
        let newer = Newer {
            v: PROTOCOL_VERSION + 3,
            kind: "request",
            id: 9,
            to: "chat",
            op: "say",
            priority: 5,
            tags: vec!["a", "b"],
            body: serde_bytes::ByteBuf::from(vec![1, 2]),
        };
        let bytes = rmp_serde::to_vec_named(&newer).unwrap();
        let env = decode(&bytes).unwrap();
        assert_eq!(
            (
                env.v,
                env.kind,
                env.id,
                env.to.as_str(),
                env.op.as_str(),
                &env.body[..]
            ),
            (
                PROTOCOL_VERSION + 3,
                Kind::Request,
                9,
                "chat",
                "say",
                &[1u8, 2][..]
            )
        );
        assert!(decode_head(&bytes).is_ok());
    }

    #[test]
    fn unknown_error_code_from_a_newer_peer_decodes_as_unknown() {
        #[derive(Serialize)]
        struct Err<'a> {
            code: &'a str,
            message: &'a str,
        }
        #[derive(Serialize)]
        struct Reply<'a> {
            v: u16,
            kind: &'a str,
            id: u64,
            error: Err<'a>,
        }
        let bytes = rmp_serde::to_vec_named(&Reply {
            v: PROTOCOL_VERSION,
            kind: "reply",
            id: 1,
            error: Err {
                code: "teapot",
                message: "x",
            },
        })
        .unwrap();
        assert_eq!(
            decode(&bytes).unwrap().error.unwrap().code,
            ErrorCode::Unknown
        );
    }

    #[test]
    fn another_major_version_is_refused() {
        let mut env = Envelope::new(Kind::Request);
        env.v = 0x0200;
        let bytes = encode(&env).unwrap();
        assert_eq!(decode(&bytes), Err(ProtoError::Version { got: 0x0200 }));
        assert!(matches!(
            decode_head(&bytes),
            Err(ProtoError::Version { .. })
        ));
    }
}

mod hostile {
    use super::*;

    #[test]
    fn decode_rejects_oversize_input_before_parsing() {
        let big = vec![0u8; proto::MAX_MESSAGE_LEN + 1];
        assert!(matches!(decode(&big), Err(ProtoError::TooLarge { .. })));
        assert!(matches!(
            decode_head(&big),
            Err(ProtoError::TooLarge { .. })
        ));
    }

    #[test]
    fn decode_rejects_garbage_and_truncation() {
        let bytes = encode(&full_request()).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "truncated at {cut}");
            assert!(
                decode_head(&bytes[..cut]).is_err(),
                "truncated head at {cut}"
            );
        }
        for garbage in [
            &b""[..],
            b"\xc1",
            b"\x93\x01\x02\x03",
            b"\x80",
            b"\x81\xa1v\x01",
            b"\xdf\xff\xff\xff\xff",
        ] {
            assert!(decode(garbage).is_err(), "{garbage:?}");
        }
        // An unknown kind is an error, not a default.
        let bytes = rmp_serde::to_vec_named(&serde_json_map()).unwrap();
        assert!(matches!(decode(&bytes), Err(ProtoError::Decode(_))));
    }

    fn serde_json_map() -> std::collections::BTreeMap<&'static str, rmpv_like::Value> {
        let mut map = std::collections::BTreeMap::new();
        map.insert("v", rmpv_like::Value::U(u64::from(PROTOCOL_VERSION)));
        map.insert("kind", rmpv_like::Value::S("teleport"));
        map
    }

    mod rmpv_like {
        #[derive(serde::Serialize)]
        #[serde(untagged)]
        pub enum Value {
            U(u64),
            S(&'static str),
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
            let _ = decode_head(&bytes);
        }

        #[test]
        fn decode_never_panics_on_mutated_envelopes(pos in 0usize..200, byte in any::<u8>()) {
            let mut bytes = encode(&full_request()).unwrap();
            let pos = pos % bytes.len();
            bytes[pos] = byte;
            let _ = decode(&bytes);
            let _ = decode_head(&bytes);
        }
    }
}

fn arb_kind() -> impl Strategy<Value = Kind> {
    proptest::sample::select(ALL_KINDS.to_vec())
}

fn arb_name() -> impl Strategy<Value = String> {
    "[a-z0-9_.$-]{0,20}"
}

prop_compose! {
    fn arb_envelope()(
        kind in arb_kind(),
        id in any::<u64>(),
        from in arb_name(),
        to in arb_name(),
        instance in proptest::option::of(arb_name()),
        key in proptest::option::of(".{0,30}"),
        op in arb_name(),
        deadline in any::<u64>(),
        trace in "[0-9a-f]{0,16}",
        user in proptest::option::of(".{0,20}"),
        session in proptest::option::of("[a-z0-9-]{0,20}"),
        idem in any::<bool>(),
        body in proptest::collection::vec(any::<u8>(), 0..300),
        error in proptest::option::of((proptest::sample::select(ErrorCode::ALL.to_vec()), ".{0,40}")),
        minor in 0u16..256,
        grants in proptest::option::of((
            proptest::collection::vec("[a-z.]{1,20}", 0..3),
            proptest::collection::vec("[a-z.]{1,20}", 0..3),
        )),
    ) -> Envelope {
        Envelope {
            v: (PROTOCOL_VERSION & 0xff00) | minor,
            kind, id, from, to, instance, key, op, deadline, trace, user, session, idem,
            body: ByteBuf::from(body),
            error: error.map(|(code, message)| ErrorBody::new(code, message)),
            grants: grants.map(|(subscribe, unsubscribe)| proto::Grants { subscribe, unsubscribe }),
        }
    }
}

proptest! {
    #[test]
    fn any_envelope_round_trips(env in arb_envelope()) {
        let bytes = encode(&env).unwrap();
        prop_assert_eq!(decode(&bytes).unwrap(), env.clone());
        let head = decode_head(&bytes).unwrap();
        prop_assert_eq!(head.id, env.id);
        prop_assert_eq!(head.to, env.to.as_str());
        prop_assert_eq!(head.body, &env.body[..]);
    }
}

mod auth {
    use switchboard_proto::auth::{broker_proof, proof, verify, verify_broker};

    #[test]
    fn the_broker_proof_binds_the_challenge_and_is_not_a_peer_proof() {
        let c = [1u8; 32];
        let n = [2u8; 32];
        let p = broker_proof(b"secret", &c, &n, "chat", "chat-1");
        assert!(verify_broker(b"secret", &c, &n, "chat", "chat-1", &p));
        assert!(!verify_broker(b"other", &c, &n, "chat", "chat-1", &p));
        assert!(!verify_broker(
            b"secret", &[3u8; 32], &n, "chat", "chat-1", &p
        ));
        assert!(!verify_broker(
            b"secret", &c, &[3u8; 32], "chat", "chat-1", &p
        ));
        assert!(!verify_broker(b"secret", &c, &n, "chat", "chat-2", &p));
        // Neither side's proof passes as the other's.
        let peer = proof(b"secret", &n, "chat", "chat-1");
        assert!(!verify_broker(b"secret", &c, &n, "chat", "chat-1", &peer));
        assert!(!verify(b"secret", &n, "chat", "chat-1", &p));
    }

    #[test]
    fn proof_binds_secret_nonce_and_names() {
        let p = proof(b"secret", b"nonce", "chat", "chat-1");
        assert!(verify(b"secret", b"nonce", "chat", "chat-1", &p));
        assert!(!verify(b"other", b"nonce", "chat", "chat-1", &p));
        assert!(!verify(b"secret", b"nonce2", "chat", "chat-1", &p));
        assert!(!verify(b"secret", b"nonce", "chat", "chat-2", &p));
        assert!(
            !verify(b"secret", b"nonce", "cha", "tchat-1", &p),
            "names are delimited"
        );
        assert!(!verify(b"secret", b"nonce", "chat", "chat-1", &p[..31]));
    }
}
