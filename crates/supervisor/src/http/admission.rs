//! Which connections main's HTTP server holds: at most [`MAX_CONNECTIONS`] in
//! all and [`MAX_PER_ADDRESS`] from one address (an IPv6 /64 counts as one), and
//! when either is reached a new connection takes the place of an *idle* one (no
//! request being answered: a head still arriving, or a keep-alive connection
//! between requests) instead of being refused.
//!
//! Which idle connection goes: at its address's share, that address's own
//! longest idle one; at the global cap, the longest idle one of the address that
//! holds the most connections. So stalled heads from one address (or from many)
//! can only push out each other, never a probe's or a viewer's fresh
//! connection from another address; a connection that is being answered (an
//! event stream, a scrape) is never pushed out. Only when every held
//! connection is busy is a new one refused, with a `503` it can read.
//!
//! Hand-written, not a crate: it is one small table whose policy (which one
//! goes) is the point, and tower's limiters only refuse.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Connections open at once at most.
pub const MAX_CONNECTIONS: usize = 256;

/// Connections from one address (IPv4 address or IPv6 /64) at once at most: a
/// browser opens 6 per host; a share of 1/8 of the table leaves the rest to
/// everyone else.
pub const MAX_PER_ADDRESS: usize = 32;

/// A client address as the table counts it: an IPv4 address, or an IPv6 /64
/// (one host is handed a whole /64, so counting single IPv6 addresses would
/// give one attacker an unlimited supply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4(u32),
    V6Net(u64),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(u32::from(v4)),
                None => Source::V6Net((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

struct Entry {
    source: Source,
    /// Requests being answered now (their response bodies alive).
    busy: usize,
    /// When it last became idle (a tick of the table's clock).
    idle_since: u64,
    /// Cancelled to push the connection out.
    evict: CancellationToken,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    /// A logical clock: orders "became idle" without reading the time.
    clock: u64,
    conns: HashMap<u64, Entry>,
    per_source: HashMap<Source, usize>,
    evicted: u64,
    refused: u64,
}

/// The table of held connections; see the module's doc.
pub(crate) struct Admission {
    table: Mutex<Table>,
    max: usize,
    per_source: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Full;

/// A held place in the table: dropped when the connection ends.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    /// Cancelled when another connection takes this one's place.
    pub(crate) evicted: CancellationToken,
}

/// Marks a connection busy while alive (held by the response body).
pub(crate) struct Busy {
    admission: Arc<Admission>,
    id: u64,
}

impl Admission {
    pub(crate) fn new(max: usize, per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::default(),
            max: max.max(1),
            per_source: per_source.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `ip`, pushing out an idle one when its address's
    /// share or the whole table is full; [`Full`] when every candidate is busy.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Full> {
        let source = Source::from(ip);
        let mut t = self.lock();
        let mine = t.per_source.get(&source).copied().unwrap_or(0);
        let victim = if mine >= self.per_source {
            Some(t.longest_idle(|e| e.source == source))
        } else if t.conns.len() >= self.max {
            // The heaviest address with an idle connection gives one up.
            let heaviest = t
                .conns
                .values()
                .filter(|e| e.busy == 0)
                .map(|e| (t.per_source.get(&e.source).copied().unwrap_or(0), e.source))
                .max_by_key(|(n, _)| *n)
                .map(|(_, s)| s);
            Some(
                heaviest
                    .and_then(|s| t.longest_idle(|e| e.source == s).ok())
                    .ok_or(Full),
            )
        } else {
            None
        };
        if let Some(victim) = victim {
            match victim {
                Ok(id) => {
                    t.remove(id).evict.cancel();
                    t.evicted += 1;
                }
                Err(Full) => {
                    t.refused += 1;
                    return Err(Full);
                }
            }
        }
        let id = t.next_id;
        t.next_id += 1;
        t.clock += 1;
        let evicted = CancellationToken::new();
        let entry = Entry {
            source,
            busy: 0,
            idle_since: t.clock,
            evict: evicted.clone(),
        };
        t.conns.insert(id, entry);
        *t.per_source.entry(source).or_default() += 1;
        Ok(Ticket {
            admission: self.clone(),
            id,
            evicted,
        })
    }

    /// Held connections, and how many were pushed out and refused so far.
    pub(crate) fn counts(&self) -> (usize, u64, u64) {
        let t = self.lock();
        (t.conns.len(), t.evicted, t.refused)
    }
}

impl Table {
    /// The connection among `which` idle for longest.
    fn longest_idle(&self, which: impl Fn(&Entry) -> bool) -> Result<u64, Full> {
        self.conns
            .iter()
            .filter(|(_, e)| e.busy == 0 && which(e))
            .min_by_key(|(_, e)| e.idle_since)
            .map(|(id, _)| *id)
            .ok_or(Full)
    }

    fn remove(&mut self, id: u64) -> Entry {
        let entry = self.conns.remove(&id).expect("a held connection");
        if let Some(n) = self.per_source.get_mut(&entry.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&entry.source);
            }
        }
        entry
    }
}

impl Ticket {
    /// Marks the connection busy until the returned guard drops.
    pub(crate) fn busy(&self) -> Busy {
        if let Some(e) = self.admission.lock().conns.get_mut(&self.id) {
            e.busy += 1;
        }
        Busy {
            admission: self.admission.clone(),
            id: self.id,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut t = self.admission.lock();
        if t.conns.contains_key(&self.id) {
            t.remove(self.id);
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut t = self.admission.lock();
        t.clock += 1;
        let now = t.clock;
        if let Some(e) = t.conns.get_mut(&self.id) {
            e.busy = e.busy.saturating_sub(1);
            if e.busy == 0 {
                e.idle_since = now;
            }
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
    fn an_address_at_its_share_pushes_out_its_own_longest_idle() {
        let a = Admission::new(10, 2);
        let first = a.admit(ip("10.0.0.1")).unwrap();
        let second = a.admit(ip("10.0.0.1")).unwrap();
        let other = a.admit(ip("10.0.0.2")).unwrap();
        let third = a.admit(ip("10.0.0.1")).unwrap();
        assert!(first.evicted.is_cancelled());
        assert!(!second.evicted.is_cancelled() && !third.evicted.is_cancelled());
        assert!(!other.evicted.is_cancelled());
        assert_eq!(a.counts(), (3, 1, 0));
        drop(first);
        assert_eq!(a.counts().0, 3, "an evicted ticket was already counted out");
    }

    #[test]
    fn a_full_table_takes_from_the_heaviest_address_and_never_a_busy_one() {
        let a = Admission::new(4, 3);
        let heavy: Vec<_> = (0..3).map(|_| a.admit(ip("10.0.0.1")).unwrap()).collect();
        let light = a.admit(ip("10.0.0.2")).unwrap();
        let _b0 = heavy[0].busy();
        let newcomer = a.admit(ip("10.0.0.3")).unwrap();
        assert!(!heavy[0].evicted.is_cancelled(), "busy: kept");
        assert!(
            heavy[1].evicted.is_cancelled(),
            "the heaviest's longest idle"
        );
        assert!(!light.evicted.is_cancelled() && !newcomer.evicted.is_cancelled());
        // All busy: refused.
        let _b = [heavy[2].busy(), light.busy(), newcomer.busy()];
        assert_eq!(a.admit(ip("10.0.0.4")).err(), Some(Full));
        assert_eq!(a.counts(), (4, 1, 1));
    }

    #[test]
    fn one_ipv6_64_is_one_address_and_mapped_v4_is_v4() {
        assert_eq!(
            Source::from(ip("2001:db8::1")),
            Source::from(ip("2001:db8::ffff:1:2"))
        );
        assert_ne!(
            Source::from(ip("2001:db8:0:1::1")),
            Source::from(ip("2001:db8::1"))
        );
        assert_eq!(
            Source::from(ip("::ffff:10.0.0.1")),
            Source::from(ip("10.0.0.1"))
        );
    }

    #[test]
    fn a_request_that_ends_makes_its_connection_newest_idle() {
        let a = Admission::new(2, 2);
        let old = a.admit(ip("10.0.0.1")).unwrap();
        let young = a.admit(ip("10.0.0.1")).unwrap();
        drop(old.busy());
        let _new = a.admit(ip("10.0.0.1")).unwrap();
        assert!(young.evicted.is_cancelled());
        assert!(!old.evicted.is_cancelled());
    }
}
