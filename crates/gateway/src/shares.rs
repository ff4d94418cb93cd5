//! What one user, or one address, holds at once across all its connections:
//! connections, requests in flight, topics it brought into the hub. The
//! gateway's clients share one bus peer, and the broker's budgets for a peer
//! (requests in flight, subscriptions) are the gateway's as a whole: without a
//! share each, one user or one address could spend them for everyone.
//!
//! An address is an IPv4 address, or an IPv6 /64 (one host is handed a whole
//! /64, so a /128 would be an unlimited supply).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One key's holdings.
#[derive(Debug, Default)]
pub struct Share {
    /// Connections open.
    pub conns: AtomicUsize,
    /// Requests in flight.
    pub inflight: AtomicUsize,
    /// Hub topics this key subscribed first and that are still held.
    pub topics: AtomicUsize,
}

impl Share {
    /// Takes one of `counter` if fewer than `cap` are held; false (nothing
    /// taken) at the cap.
    pub fn take(counter: &AtomicUsize, cap: usize) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives one of `counter` back. SeqCst, as the reads of [`Share::idle`]:
    /// a request ending as its connection closes must not have each side see
    /// the other's count still held, or the entry would never be forgotten.
    pub fn give(counter: &AtomicUsize) {
        let _ = counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// Nothing held: no connection, no topic, no request in flight. A key
    /// whose last connection closed with requests still in flight keeps its
    /// entry until they end, so that reconnecting does not start it afresh.
    fn idle(&self) -> bool {
        self.conns.load(Ordering::SeqCst) == 0
            && self.topics.load(Ordering::SeqCst) == 0
            && self.inflight.load(Ordering::SeqCst) == 0
    }
}

/// A key's share, held by a connection (or a hub topic) for as long as it counts.
#[derive(Debug, Clone)]
pub struct Member {
    /// The user or the address.
    pub key: Arc<str>,
    /// Its share.
    pub share: Arc<Share>,
}

/// The shares of every key with a connection, a topic or a request in flight
/// (bounded by them: an entry goes with the last of them).
#[derive(Debug, Default)]
pub struct Shares {
    map: Mutex<HashMap<Arc<str>, Arc<Share>>>,
}

impl Shares {
    /// A connection of `key` opens: its share, with the connection counted if
    /// fewer than `max_conns` are open; `None` at the cap.
    pub fn join(&self, key: &str, max_conns: usize) -> Option<Member> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let (key, share) = match map.get_key_value(key) {
            Some((k, s)) => (k.clone(), s.clone()),
            None => {
                let k: Arc<str> = Arc::from(key);
                let s = Arc::new(Share::default());
                map.insert(k.clone(), s.clone());
                (k, s)
            }
        };
        if Share::take(&share.conns, max_conns) {
            Some(Member { key, share })
        } else {
            if share.idle() {
                map.remove(&key);
            }
            None
        }
    }

    /// A connection of `member` closed.
    pub fn leave(&self, member: &Member) {
        Share::give(&member.share.conns);
        self.forget_if_idle(member);
    }

    /// A topic `member` brought in is gone.
    pub fn topic_gone(&self, member: &Member) {
        Share::give(&member.share.topics);
        self.forget_if_idle(member);
    }

    /// A request `member` counted ended after its connection closed: the
    /// entry goes if that was the last thing it held. (While a connection is
    /// open, this costs the caller one atomic read.)
    pub fn request_gone(&self, member: &Member) {
        if member.share.conns.load(Ordering::SeqCst) == 0 {
            self.forget_if_idle(member);
        }
    }

    fn forget_if_idle(&self, member: &Member) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if member.share.idle() {
            if let Some(current) = map.get(&member.key) {
                if Arc::ptr_eq(current, &member.share) {
                    map.remove(&member.key);
                }
            }
        }
    }

    /// Keys with a share now.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no key has a share.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The key an address is counted under: its source as admission counts it
/// ([`crate::admission::source_of`]: IPv4, or the IPv6 /64).
pub fn address_key(ip: IpAddr) -> String {
    crate::admission::source_of(ip).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_caps_connections_and_goes_with_the_last_one() {
        let shares = Shares::default();
        let a = shares.join("ada", 2).unwrap();
        let b = shares.join("ada", 2).unwrap();
        assert!(shares.join("ada", 2).is_none(), "third connection refused");
        assert_eq!(shares.len(), 1);
        shares.leave(&a);
        let c = shares.join("ada", 2).unwrap();
        shares.leave(&b);
        shares.leave(&c);
        assert!(shares.is_empty(), "no connection, no entry");
    }

    #[test]
    fn a_share_with_topics_outlives_its_connections() {
        let shares = Shares::default();
        let a = shares.join("10.0.0.1", 8).unwrap();
        assert!(Share::take(&a.share.topics, 1));
        assert!(!Share::take(&a.share.topics, 1), "topic cap");
        shares.leave(&a);
        assert_eq!(shares.len(), 1, "its topic still counts");
        let again = shares.join("10.0.0.1", 8).unwrap();
        assert!(
            !Share::take(&again.share.topics, 1),
            "reconnecting resets nothing"
        );
        shares.topic_gone(&a);
        shares.leave(&again);
        assert!(shares.is_empty());
    }

    /// A connection that closes with requests in flight (a close it asked for
    /// does not wait for them) leaves them counted: reconnecting does not
    /// start the address afresh, and the entry goes with the last of them.
    #[test]
    fn requests_in_flight_outlive_their_connection() {
        let shares = Shares::default();
        let a = shares.join("10.0.0.2", 8).unwrap();
        assert!(Share::take(&a.share.inflight, 2));
        assert!(Share::take(&a.share.inflight, 2));
        shares.leave(&a);
        assert_eq!(shares.len(), 1, "its requests still count");
        let again = shares.join("10.0.0.2", 8).unwrap();
        assert!(
            !Share::take(&again.share.inflight, 2),
            "reconnecting resets nothing"
        );
        shares.leave(&again);
        Share::give(&a.share.inflight);
        shares.request_gone(&a);
        assert_eq!(shares.len(), 1, "one still in flight");
        Share::give(&a.share.inflight);
        shares.request_gone(&a);
        assert!(shares.is_empty(), "the last request took the entry with it");
    }

    #[test]
    fn ipv6_is_counted_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_eq!(address_key(a), "2001:db8:1:2::");
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(address_key(mapped), "127.0.0.2");
    }
}
