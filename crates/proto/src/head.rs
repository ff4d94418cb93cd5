//! The fast path of [`crate::decode_head`]: the broker decodes the head of every
//! message it routes (a request and its reply are two), and through `rmp_serde`
//! that was the largest item of its profile (the field names validated as UTF-8
//! and matched as strings, then each value through serde's visitors: ~17% of the
//! broker's samples under `sbctl bench ws`, BENCHMARKS.md issue 24).
//!
//! This reads the one shape our encoder writes (a MessagePack map with string
//! keys, each field in its natural type) directly from the bytes, comparing keys
//! as bytes and validating as UTF-8 only the values it borrows as `&str`. It
//! gives up (returns `None`) on anything else: another shape (an array, an
//! unexpected type, a duplicate or missing field, trailing bytes, nesting past
//! [`MAX_SKIP_DEPTH`]), and the caller then decodes with `rmp_serde` as before.
//! So every frame it accepts decodes exactly as through serde, and every frame it
//! does not is judged by serde: the result, errors included, is unchanged.
//!
//! Hand-written rather than with `rmp`'s low-level readers: those copy strings
//! into caller buffers or return `&str` only through `rmp::decode::read_str_from_slice`,
//! which validates every key too, and skipping an unknown value has no helper
//! there; a reader of the few formats involved is short and fully tested against
//! the serde path (tests below, and the `decode` fuzz target).

use crate::envelope::{Head, Kind};

/// How deep an unknown field's value may nest before the fast path hands the
/// frame to serde.
const MAX_SKIP_DEPTH: usize = 16;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn be(&mut self, n: usize) -> Option<u64> {
        Some(
            self.take(n)?
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
        )
    }

    /// A length of `n` big-endian bytes.
    fn len(&mut self, n: usize) -> Option<usize> {
        usize::try_from(self.be(n)?).ok()
    }

    /// A map header: its entry count.
    fn map_len(&mut self) -> Option<usize> {
        match self.byte()? {
            b @ 0x80..=0x8f => Some(usize::from(b & 0x0f)),
            0xde => self.len(2),
            0xdf => self.len(4),
            _ => None,
        }
    }

    /// A string's bytes (not validated).
    fn str_bytes(&mut self) -> Option<&'a [u8]> {
        let n = match self.byte()? {
            b @ 0xa0..=0xbf => usize::from(b & 0x1f),
            0xd9 => self.len(1)?,
            0xda => self.len(2)?,
            0xdb => self.len(4)?,
            _ => return None,
        };
        self.take(n)
    }

    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.str_bytes()?).ok()
    }

    /// `nil` or a string.
    fn opt_str(&mut self) -> Option<Option<&'a str>> {
        if self.buf.get(self.pos) == Some(&0xc0) {
            self.pos += 1;
            return Some(None);
        }
        self.str().map(Some)
    }

    /// An unsigned integer (a signed encoding of a value ≥ 0 is left to serde).
    fn uint(&mut self) -> Option<u64> {
        match self.byte()? {
            b @ 0x00..=0x7f => Some(u64::from(b)),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            _ => None,
        }
    }

    fn bool(&mut self) -> Option<bool> {
        match self.byte()? {
            0xc2 => Some(false),
            0xc3 => Some(true),
            _ => None,
        }
    }

    fn bin(&mut self) -> Option<&'a [u8]> {
        let n = match self.byte()? {
            0xc4 => self.len(1)?,
            0xc5 => self.len(2)?,
            0xc6 => self.len(4)?,
            _ => return None,
        };
        self.take(n)
    }

    /// Steps over one value of any type.
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_SKIP_DEPTH {
            return None;
        }
        let (data, items) = match self.byte()? {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            b @ 0x80..=0x8f => (0, 2 * usize::from(b & 0x0f)),
            b @ 0x90..=0x9f => (0, usize::from(b & 0x0f)),
            b @ 0xa0..=0xbf => (usize::from(b & 0x1f), 0),
            0xc4 | 0xd9 => (self.len(1)?, 0),
            0xc5 | 0xda => (self.len(2)?, 0),
            0xc6 | 0xdb => (self.len(4)?, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xdc => (0, self.len(2)?),
            0xdd => (0, self.len(4)?),
            0xde => (0, 2 * self.len(2)?),
            0xdf => (0, self.len(4)?.checked_mul(2)?),
            // Extension types (our encoder writes none) and the unused 0xc1.
            0xc1 | 0xc7..=0xc9 | 0xd4..=0xd8 => return None,
        };
        self.take(data)?;
        for _ in 0..items {
            self.skip(depth + 1)?;
        }
        Some(())
    }
}

fn kind(name: &[u8]) -> Option<Kind> {
    Some(match name {
        b"hello" => Kind::Hello,
        b"ready" => Kind::Ready,
        b"heartbeat" => Kind::Heartbeat,
        b"request" => Kind::Request,
        b"reply" => Kind::Reply,
        b"event" => Kind::Event,
        b"subscribe" => Kind::Subscribe,
        b"unsubscribe" => Kind::Unsubscribe,
        b"drain" => Kind::Drain,
        b"bye" => Kind::Bye,
        _ => return None,
    })
}

/// The head of `bytes` when it has the shape our encoder writes; `None` means
/// "ask serde" (see the module docs), never "invalid".
pub(crate) fn fast(bytes: &[u8]) -> Option<Head<'_>> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let entries = r.map_len()?;
    let mut head = Head {
        v: 0,
        kind: Kind::Heartbeat,
        id: 0,
        from: "",
        to: "",
        instance: None,
        key: None,
        op: "",
        deadline: 0,
        trace: "",
        idem: false,
        body: &[],
    };
    // One bit per field seen: a duplicate is serde's to judge (an error there).
    let mut seen = 0u16;
    let mut once = |bit: u16| {
        let first = seen & bit == 0;
        seen |= bit;
        first.then_some(())
    };
    for _ in 0..entries {
        match r.str_bytes()? {
            b"v" => {
                once(1)?;
                head.v = u16::try_from(r.uint()?).ok()?;
            }
            b"kind" => {
                once(2)?;
                head.kind = kind(r.str_bytes()?)?;
            }
            b"id" => {
                once(4)?;
                head.id = r.uint()?;
            }
            b"from" => {
                once(8)?;
                head.from = r.str()?;
            }
            b"to" => {
                once(16)?;
                head.to = r.str()?;
            }
            b"instance" => {
                once(32)?;
                head.instance = r.opt_str()?;
            }
            b"key" => {
                once(64)?;
                head.key = r.opt_str()?;
            }
            b"op" => {
                once(128)?;
                head.op = r.str()?;
            }
            b"deadline" => {
                once(256)?;
                head.deadline = r.uint()?;
            }
            b"trace" => {
                once(512)?;
                head.trace = r.str()?;
            }
            b"idem" => {
                once(1024)?;
                head.idem = r.bool()?;
            }
            b"body" => {
                once(2048)?;
                head.body = r.bin()?;
            }
            other => {
                // An unknown field (a newer minor version's, or one Head does
                // not route on): its name must be a name, its value is skipped.
                std::str::from_utf8(other).ok()?;
                r.skip(0)?;
            }
        }
    }
    // `v` and `kind` are required; trailing bytes are serde's to judge.
    (seen & 3 == 3 && r.pos == bytes.len()).then_some(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode, Envelope, ErrorBody, ErrorCode, Grants};
    use proptest::prelude::*;

    fn serde_head(bytes: &[u8]) -> Result<Head<'_>, String> {
        rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
    }

    fn full() -> Envelope {
        let mut env = Envelope::request(
            "chat",
            "say",
            vec![0x81, 0xa1, 0x61, 0x01],
            1_700_000_000_000,
        );
        env.id = u64::MAX;
        env.from = "receive".into();
        env.instance = Some("chat01".into());
        env.key = Some("lobby".into());
        env.trace = "0123456789abcdef".into();
        env.user = Some("ann".into());
        env.session = Some("s-1".into());
        env.idem = true;
        env.error = Some(ErrorBody::new(ErrorCode::Timeout, "late"));
        env.grants = Some(Grants {
            subscribe: vec!["chat.room.lobby".into()],
            unsubscribe: vec![],
        });
        env
    }

    #[test]
    fn reads_what_the_encoder_writes_as_serde_does() {
        for env in [
            full(),
            Envelope::new(Kind::Heartbeat),
            Envelope::reply_to(7, "t", vec![1; 70_000]),
        ] {
            let bytes = encode(&env).unwrap();
            assert_eq!(fast(&bytes), Some(serde_head(&bytes).unwrap()), "{env:?}");
        }
    }

    #[test]
    fn leaves_other_shapes_to_serde() {
        let bytes = encode(&full()).unwrap();
        // Trailing bytes, truncation, an array, a missing `kind`.
        let mut trailing = bytes.clone();
        trailing.push(0xc0);
        assert_eq!(fast(&trailing), None);
        for cut in 0..bytes.len() {
            assert_eq!(fast(&bytes[..cut]), None, "cut at {cut}");
        }
        let positional = rmp_serde::to_vec(&Envelope::new(Kind::Ready)).unwrap();
        assert_eq!(fast(&positional), None);
        assert!(serde_head(&positional).is_ok());
        #[derive(serde::Serialize)]
        struct NoKind {
            v: u16,
        }
        assert_eq!(
            fast(&rmp_serde::to_vec_named(&NoKind { v: 256 }).unwrap()),
            None
        );
        // A duplicate field: serde refuses it, the fast path does not take it.
        let mut dup = vec![0x83];
        for (k, v) in [("v", 1u8), ("kind", 0), ("v", 1)] {
            dup.push(0xa0 | k.len() as u8);
            dup.extend(k.as_bytes());
            if k == "kind" {
                dup.extend([0xa5]);
                dup.extend(b"ready");
            } else {
                dup.push(v);
            }
        }
        assert_eq!(fast(&dup), None);
        assert!(serde_head(&dup).is_err());
    }

    fn envelope() -> impl Strategy<Value = Envelope> {
        (
            any::<u64>(),
            "[a-z]{0,12}",
            proptest::option::of("[a-z.]{0,20}"),
            "\\PC{0,20}",
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<bool>(),
            proptest::option::of("\\PC{0,8}"),
        )
            .prop_map(|(id, to, key, trace, deadline, body, idem, user)| {
                let mut env = Envelope::request(&to, "op", body, deadline);
                env.id = id;
                env.key = key;
                env.trace = trace;
                env.idem = idem;
                env.user = user;
                env
            })
    }

    proptest! {
        #[test]
        fn agrees_with_serde_on_every_envelope(env in envelope()) {
            let bytes = encode(&env).unwrap();
            prop_assert_eq!(fast(&bytes), Some(serde_head(&bytes).unwrap()));
        }

        #[test]
        fn what_it_accepts_serde_reads_the_same(env in envelope(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            // One byte changed anywhere: whatever the fast path still takes,
            // serde must read the same way.
            let mut bytes = encode(&env).unwrap();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            if let Some(head) = fast(&bytes) {
                prop_assert_eq!(Ok(head), serde_head(&bytes));
            }
        }

        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Some(head) = fast(&bytes) {
                prop_assert_eq!(Ok(head), serde_head(&bytes));
            }
        }
    }
}
