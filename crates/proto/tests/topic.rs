//! Topic patterns: matching against a token model, and the index the broker
//! and the bus client look subscriptions up in, against a scan.

// Test code is exempt from the workspace's 120-line function limit.
#![allow(clippy::too_many_lines)]

use proptest::prelude::*;
use switchboard_proto::topic::{self, Index};

proptest! {
    #[test]
    fn topic_matching_agrees_with_a_token_model(
        pattern in proptest::collection::vec(prop_oneof!["a", "b", Just("*".to_string())], 1..4),
        tail in any::<bool>(),
        topic_tokens in proptest::collection::vec(prop_oneof!["a", "b", "c"], 1..6),
    ) {
        let mut pattern = pattern;
        if tail { pattern.push(">".into()); }
        let p = pattern.join(".");
        let t = topic_tokens.join(".");
        prop_assert!(topic::validate(&p, true).is_ok());
        prop_assert!(topic::validate(&t, false).is_ok());
        let model = if tail {
            topic_tokens.len() > pattern.len() - 1
                && pattern[..pattern.len() - 1].iter().zip(&topic_tokens).all(|(p, t)| p == "*" || p == t)
        } else {
            topic_tokens.len() == pattern.len() && pattern.iter().zip(&topic_tokens).all(|(p, t)| p == "*" || p == t)
        };
        prop_assert_eq!(topic::matches(&p, &t), model);
    }
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("c".to_owned())
    ]
}

fn pattern() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop_oneof![token(), Just("*".to_owned())], 1..4),
        any::<bool>(),
    )
        .prop_map(|(mut tokens, tail)| {
            if tail {
                tokens.push(">".into());
            }
            tokens.join(".")
        })
}

proptest! {
    /// The index finds exactly what a scan with `topic::matches` finds, after
    /// any mix of inserts and removes.
    #[test]
    fn index_agrees_with_a_scan(
        ops in prop::collection::vec((pattern(), 0u8..4, any::<bool>()), 0..40),
        topics in prop::collection::vec(prop::collection::vec(token(), 1..5), 1..10),
    ) {
        let mut index = Index::default();
        let mut list: Vec<(String, u8)> = Vec::new();
        for (p, v, add) in ops {
            if add {
                index.insert(&p, v);
                if !list.contains(&(p.clone(), v)) {
                    list.push((p, v));
                }
            } else {
                let was = list.iter().position(|e| *e == (p.clone(), v));
                prop_assert_eq!(index.remove(&p, &v), was.is_some());
                if let Some(i) = was {
                    list.remove(i);
                }
            }
        }
        prop_assert_eq!(index.len(), list.len());
        for t in topics {
            let t = t.join(".");
            let mut got = Vec::new();
            index.for_each_match(&t, |v| got.push(*v));
            got.sort_unstable();
            let mut want: Vec<u8> = list
                .iter()
                .filter(|(p, _)| topic::matches(p, &t))
                .map(|(_, v)| *v)
                .collect();
            want.sort_unstable();
            prop_assert_eq!(got, want, "topic {}", t);
        }
    }
}
