//! Admission at accept: the connection cap and the handshake table, taken
//! before any byte is read.
//!
//! A handshake table that refuses when full can be filled: 3,000 stalled HTTP
//! heads from 100 addresses (30 each, under the per-address share) kept every
//! new client out for as long as they were held. So this table never refuses a
//! newcomer; when it is full, a stalled handshake is closed to make room: the
//! oldest one of the *source with the most handshakes in progress* (its own
//! oldest when the newcomer's source is at its share). A real client's
//! handshake lasts a round trip and is one of very few from its source, so an
//! attacker can push it out only by holding no more handshakes per source than
//! it does, with more sources than the table has places.
//!
//! Sources are IPv4 addresses and IPv6 /64 networks: a single host is usually
//! given a whole /64, so counting IPv6 addresses one by one would give one
//! attacker 2^64 sources. An IPv4-mapped IPv6 address is its IPv4 address.
//!
//! The table is bounded by `max_handshakes` entries (plus two indexes of the
//! same entries: by source, and sources by load); choosing whom to close is a
//! lookup in the load index, so an attacker's connection costs O(log n), never
//! a scan of the table.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::Gateway;

/// The source a client address is counted under: the IPv4 address, or the
/// IPv6 /64 it is in.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// Handshakes in progress: each by its number (numbers grow, so the smallest
/// is the oldest), the numbers of each source, and the sources ordered by
/// (handshakes in progress, then the oldest first): the last is the one to
/// evict from.
#[derive(Debug, Default)]
pub struct Handshaking {
    next: u64,
    all: BTreeMap<u64, (IpAddr, CancellationToken)>,
    per_source: HashMap<IpAddr, BTreeSet<u64>>,
    by_load: BTreeSet<(usize, Reverse<u64>, IpAddr)>,
}

impl Handshaking {
    /// Handshakes in progress.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether none is in progress.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    fn count(&self, source: &IpAddr) -> usize {
        self.per_source.get(source).map_or(0, BTreeSet::len)
    }

    /// The load key of `source` as it stands.
    fn load_key(&self, source: IpAddr) -> Option<(usize, Reverse<u64>, IpAddr)> {
        let ids = self.per_source.get(&source)?;
        Some((ids.len(), Reverse(*ids.first()?), source))
    }

    /// Changes `source`'s handshakes with `change`, keeping the load index.
    fn update(&mut self, source: IpAddr, change: impl FnOnce(&mut BTreeSet<u64>)) {
        if let Some(key) = self.load_key(source) {
            self.by_load.remove(&key);
        }
        let ids = self.per_source.entry(source).or_default();
        change(ids);
        if ids.is_empty() {
            self.per_source.remove(&source);
        }
        if let Some(key) = self.load_key(source) {
            self.by_load.insert(key);
        }
    }

    fn insert(&mut self, source: IpAddr, evict: CancellationToken) -> u64 {
        let id = self.next;
        self.next += 1;
        self.all.insert(id, (source, evict));
        self.update(source, |ids| {
            ids.insert(id);
        });
        id
    }

    fn remove(&mut self, id: u64) -> Option<CancellationToken> {
        let (source, evict) = self.all.remove(&id)?;
        self.update(source, |ids| {
            ids.remove(&id);
        });
        Some(evict)
    }

    /// The oldest handshake of `source`.
    fn oldest_of(&self, source: &IpAddr) -> Option<u64> {
        self.per_source.get(source)?.first().copied()
    }

    /// The oldest handshake of the source with the most in progress (of
    /// those tied, the one whose oldest is oldest).
    fn oldest_of_busiest(&self) -> Option<u64> {
        self.by_load.last().map(|&(_, Reverse(oldest), _)| oldest)
    }

    /// Closes handshake `id` (its task sees the token and drops the socket).
    fn evict(&mut self, id: u64) -> bool {
        match self.remove(id) {
            Some(evict) => {
                evict.cancel();
                true
            }
            None => false,
        }
    }
}

/// A connection's place under the gateway's caps, taken at accept; gives back
/// the handshake place when the handshake ends and the connection place on drop.
pub struct Admission {
    gw: Arc<Gateway>,
    /// Its number in the handshake table while it is in it.
    handshake: Option<u64>,
    /// Cancelled when the handshake is closed to make room for a newer one.
    evicted: CancellationToken,
}

impl Admission {
    /// Takes a connection place and a handshake place for a client at `ip`,
    /// closing a stalled handshake to make room when a cap is reached (see the
    /// module docs).
    ///
    /// # Errors
    ///
    /// Which cap is full: `max_connections` with no handshake left to close
    /// (every connection is a WebSocket), or a cap of zero.
    pub fn try_new(gw: &Arc<Gateway>, ip: IpAddr) -> Result<Self, &'static str> {
        let s = &gw.settings;
        let source = source_of(ip);
        let evicted = CancellationToken::new();
        let id = {
            let mut h = gw.handshaking.lock().unwrap_or_else(|p| p.into_inner());
            if gw.stats.tcp.load(Ordering::Relaxed) >= s.max_connections {
                // Sockets are bounded by the file limit: room for this one only
                // if a stalled handshake goes.
                match h.oldest_of_busiest() {
                    Some(victim) if h.evict(victim) => {
                        gw.stats.handshakes_evicted.fetch_add(1, Ordering::Relaxed);
                        // Its socket closes when its task runs; until then it
                        // still counts in `tcp`, one over for a moment.
                    }
                    _ => return Err("too many connections"),
                }
            }
            let victim = if h.count(&source) >= s.max_handshakes_per_ip {
                h.oldest_of(&source)
            } else if h.len() >= s.max_handshakes {
                h.oldest_of_busiest()
            } else {
                None
            };
            if let Some(victim) = victim {
                if h.evict(victim) {
                    gw.stats.handshakes_evicted.fetch_add(1, Ordering::Relaxed);
                }
            }
            if h.count(&source) >= s.max_handshakes_per_ip || h.len() >= s.max_handshakes {
                // Only with a cap of 0 (the flags refuse it; `Settings` in code may not).
                return Err("too many handshakes in progress");
            }
            h.insert(source, evicted.clone())
        };
        gw.stats.tcp.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            gw: gw.clone(),
            handshake: Some(id),
            evicted,
        })
    }

    /// Cancelled when the handshake is closed to make room for a newer one.
    pub fn eviction(&self) -> CancellationToken {
        self.evicted.clone()
    }

    /// The handshake is over (upgraded or not): give back its place.
    pub fn handshake_done(&mut self) {
        let Some(id) = self.handshake.take() else {
            return;
        };
        let mut h = self
            .gw
            .handshaking
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        h.remove(id);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.handshake_done();
        self.gw.stats.tcp.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connections at most: at start the soft file limit is raised to the hard one,
/// and the cap is what it leaves after a reserve for everything else the
/// process opens (the bus, logs, handshakes in flight): 64 + 1/16 of it. An
/// explicit `--max-connections` over that is cut to it (the process would
/// otherwise fail at accept instead of answering 503).
pub fn connection_cap(asked: Option<usize>) -> usize {
    let files = usize::try_from(switchboard_bus::svc::raise_file_limit()).unwrap_or(usize::MAX);
    let fits = files.saturating_sub(64 + files / 16).max(1);
    match asked {
        Some(asked) if asked > fits => {
            tracing::warn!(
                asked,
                fits,
                files,
                "--max-connections is more than the file limit allows; cut"
            );
            fits
        }
        Some(asked) => asked,
        None => {
            tracing::info!(
                files,
                max_connections = fits,
                "connections at most, from the file limit"
            );
            fits
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(source_of(ip("10.0.0.7")), ip("10.0.0.7"));
        assert_eq!(source_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            source_of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            source_of(ip("2001:db8:1:2::9"))
        );
        assert_ne!(
            source_of(ip("2001:db8:1:3::1")),
            source_of(ip("2001:db8:1:2::1"))
        );
        assert_eq!(source_of(ip("::ffff:10.0.0.7")), ip("10.0.0.7"));
    }

    #[test]
    fn the_busiest_sources_oldest_goes_first() {
        let mut h = Handshaking::default();
        let a = h.insert(ip("10.0.0.1"), CancellationToken::new());
        let b1 = h.insert(ip("10.0.0.2"), CancellationToken::new());
        let _b2 = h.insert(ip("10.0.0.2"), CancellationToken::new());
        assert_eq!(h.oldest_of_busiest(), Some(b1));
        assert!(h.evict(b1));
        assert!(!h.evict(b1), "once");
        // Tied at one each: the oldest of all.
        assert_eq!(h.oldest_of_busiest(), Some(a));
        assert_eq!(h.len(), 2);
        h.remove(a);
        assert_eq!(h.count(&ip("10.0.0.1")), 0);
        assert!(
            !h.per_source.contains_key(&ip("10.0.0.1")),
            "no empty entry"
        );
        assert_eq!(h.by_load.len(), h.per_source.len());
    }

    #[test]
    fn the_load_index_follows_every_change() {
        // A scan is the reference: the index must agree with it after every step.
        let scan = |h: &Handshaking| {
            h.per_source
                .values()
                .filter_map(|ids| Some((ids.len(), *ids.first()?)))
                .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
                .map(|(_, oldest)| oldest)
        };
        let mut h = Handshaking::default();
        let mut live = Vec::new();
        let mut seed = 7u64;
        for step in 0..2_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            if live.is_empty() || !seed.is_multiple_of(3) {
                let source = IpAddr::from([10, 0, 0, (seed >> 33) as u8 % 12]);
                live.push(h.insert(source, CancellationToken::new()));
            } else {
                let id = live.swap_remove((seed >> 20) as usize % live.len());
                h.remove(id);
            }
            assert_eq!(h.oldest_of_busiest(), scan(&h), "step {step}");
            assert_eq!(h.by_load.len(), h.per_source.len(), "step {step}");
        }
    }
}
