//! A broker pair: a primary and a backup on different hosts, after the ZeroMQ
//! guide's Binary Star. Each broker tells the other its state every heartbeat
//! (one UDP datagram, with an HMAC of the bus secret); only the active one takes
//! peers. The backup becomes active only when the primary has been silent for
//! two heartbeats *and* a peer arrives at it: peers vote by arriving, so a cut
//! between the two brokers alone, with every peer still on the primary, never
//! makes two actives. A broker that starts waits two heartbeats to hear its
//! partner before it takes peers, so a primary coming back finds the backup
//! active and stays passive (no flapping).
//!
//! UDP rather than a ZeroMQ PUB/SUB pair as in the guide: the state is one small
//! message whose newest copy is all that matters, a lost datagram is the same as
//! a late one, and a cut link is plain silence; nothing to reconnect.

use std::net::SocketAddr;
use switchboard_proto::auth;

/// Which broker of the pair this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Active when both start.
    Primary,
    /// Takes over when the primary is gone.
    Backup,
}

/// Where a broker of the pair stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Started as the primary; not yet heard the backup.
    Primary,
    /// Started as the backup; not yet heard the primary.
    Backup,
    /// Takes peers.
    Active,
    /// Refuses peers: the other one is active.
    Passive,
}

impl State {
    fn byte(self) -> u8 {
        match self {
            State::Primary => 1,
            State::Backup => 2,
            State::Active => 3,
            State::Passive => 4,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => State::Primary,
            2 => State::Backup,
            3 => State::Active,
            4 => State::Passive,
            _ => return None,
        })
    }

    /// For `stats` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Primary => "starting (primary)",
            State::Backup => "starting (backup)",
            State::Active => "active",
            State::Passive => "passive",
        }
    }
}

/// What a transition asks of the router.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing beyond the state.
    None,
    /// This broker was active and now yields (both were active and this is the
    /// backup): its peers must go to the other one.
    Yield,
}

/// The pair's state machine (pure: time comes in as `now`, ms).
#[derive(Debug)]
pub struct Pair {
    /// This broker's role.
    pub role: Role,
    /// Its state.
    pub state: State,
    /// The partner's last state heard, if any.
    pub peer: Option<State>,
    /// When the partner counts as gone if not heard again.
    peer_expiry: u64,
    heartbeat_ms: u64,
    /// The partner's last counter taken: a datagram must carry a larger one.
    peer_seq: Option<u64>,
    /// Our next counter. It starts from the clock (µs-scale) so a restarted
    /// broker's counters stay above those of its previous run.
    next_seq: u64,
}

impl Pair {
    /// A broker of the pair starting at `now`.
    pub fn new(role: Role, heartbeat_ms: u64, now: u64) -> Self {
        Self {
            role,
            state: match role {
                Role::Primary => State::Primary,
                Role::Backup => State::Backup,
            },
            peer: None,
            // A starting broker waits this long to hear its partner before it
            // may take peers.
            peer_expiry: now + 2 * heartbeat_ms,
            heartbeat_ms,
            peer_seq: None,
            next_seq: now.saturating_mul(1_000),
        }
    }

    /// Our next state message.
    pub fn next_datagram(&mut self, now: u64) -> Datagram {
        self.next_seq += 1;
        Datagram {
            role: self.role,
            state: self.state,
            seq: self.next_seq,
            at: now,
        }
    }

    /// Whether a proven datagram is the partner's and new: its role is the
    /// partner's (our own, reflected back, is not) and its counter is larger
    /// than any taken before (a replay's is not). Takes its counter if so.
    pub fn accept(&mut self, d: &Datagram) -> bool {
        if d.role != self.role.partner() || self.peer_seq.is_some_and(|last| d.seq <= last) {
            return false;
        }
        self.peer_seq = Some(d.seq);
        true
    }

    /// The partner said it is `peer`.
    pub fn on_peer(&mut self, peer: State, now: u64) -> Change {
        self.peer = Some(peer);
        self.peer_expiry = now + 2 * self.heartbeat_ms;
        let before = self.state;
        self.state = match (self.state, peer) {
            (State::Primary, State::Backup) => State::Active,
            (State::Primary | State::Backup, State::Active) => State::Passive,
            // Both active (a cut between them healed, say): the backup yields.
            (State::Active, State::Active) if self.role == Role::Backup => State::Passive,
            // The partner restarted and lost its state: this one serves.
            (State::Passive, State::Primary | State::Backup) => State::Active,
            // Both passive: the primary serves.
            (State::Passive, State::Passive) if self.role == Role::Primary => State::Active,
            (state, _) => state,
        };
        if before != self.state {
            tracing::warn!(
                from = before.as_str(),
                to = self.state.as_str(),
                partner = peer.as_str(),
                "broker pair: state changed"
            );
        }
        if before == State::Active && self.state == State::Passive {
            Change::Yield
        } else {
            Change::None
        }
    }

    /// A peer arrives (a `hello`): whether this broker takes it. A waiting
    /// primary or a passive broker takes it, and becomes active, only once the
    /// partner has been silent past its expiry: the arrival is the vote.
    pub fn on_client(&mut self, now: u64) -> bool {
        let before = self.state;
        let partner_gone = now >= self.peer_expiry;
        self.state = match self.state {
            State::Active => State::Active,
            State::Primary | State::Passive if partner_gone => State::Active,
            other => other,
        };
        if before != self.state {
            tracing::warn!(
                from = before.as_str(),
                "broker pair: the partner is silent and peers arrive here: active"
            );
        }
        self.state == State::Active
    }

    /// `role state, partner state` for `stats`.
    pub fn describe(&self) -> String {
        let role = match self.role {
            Role::Primary => "primary",
            Role::Backup => "backup",
        };
        let partner = self.peer.map_or("not heard", State::as_str);
        format!("{role} {}, partner {partner}", self.state.as_str())
    }
}

const MAGIC: &[u8; 4] = b"SBH2";
const HEADER: usize = 4 + 1 + 1 + 8 + 8;
const DATAGRAM: usize = HEADER + 32;
/// A state message older (or newer) than this is refused: no replays.
const MAX_SKEW_MS: u64 = 10_000;

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Primary => 1,
            Role::Backup => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Role::Primary),
            2 => Some(Role::Backup),
            _ => None,
        }
    }

    /// The other broker's role.
    pub fn partner(self) -> Self {
        match self {
            Role::Primary => Role::Backup,
            Role::Backup => Role::Primary,
        }
    }
}

/// One state message as sent: who sent it (its role), its state, its counter
/// (strictly increasing per sender) and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// The sender's role.
    pub role: Role,
    /// The sender's state.
    pub state: State,
    /// The sender's counter: each datagram's is larger than the last.
    pub seq: u64,
    /// The sender's clock, ms.
    pub at: u64,
}

/// One state message: `SBH2`, the sender's role and state, its counter and its
/// time, and (with a secret) the HMAC of all of them under the bus secret. The
/// role stops a datagram reflected back to its sender (its own role) from
/// passing as the partner's; the counter stops a replay.
pub fn encode(d: &Datagram, secret: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(DATAGRAM);
    out.extend_from_slice(MAGIC);
    out.push(d.role.byte());
    out.push(d.state.byte());
    out.extend_from_slice(&d.seq.to_be_bytes());
    out.extend_from_slice(&d.at.to_be_bytes());
    let proof = secret.map_or([0; 32], |s| mac(s, &out));
    out.extend_from_slice(&proof);
    out
}

fn mac(secret: &str, header: &[u8]) -> [u8; 32] {
    // The hello proof's construction with names no peer can register ("$"
    // names are the broker's), so a datagram's MAC is never a valid hello
    // proof nor the other way round.
    auth::proof(secret.as_bytes(), header, "$ha", "state-v2")
}

/// A datagram, if it is one, recent, and (with a secret) proven. Who sent it
/// and whether its counter is new is [`Pair::accept`]'s to check.
pub fn decode(buf: &[u8], now: u64, secret: Option<&str>) -> Option<Datagram> {
    if buf.len() != DATAGRAM || &buf[..4] != MAGIC {
        return None;
    }
    let role = Role::from_byte(buf[4])?;
    let state = State::from_byte(buf[5])?;
    let seq = u64::from_be_bytes(buf[6..14].try_into().ok()?);
    let at = u64::from_be_bytes(buf[14..22].try_into().ok()?);
    if at.abs_diff(now) > MAX_SKEW_MS {
        return None;
    }
    if let Some(s) = secret {
        if !auth::verify(
            s.as_bytes(),
            &buf[..HEADER],
            "$ha",
            "state-v2",
            &buf[HEADER..],
        ) {
            return None;
        }
    }
    Some(Datagram {
        role,
        state,
        seq,
        at,
    })
}

/// The pair's settings.
#[derive(Debug, Clone)]
pub struct HaSettings {
    /// This broker's role.
    pub role: Role,
    /// The UDP address it listens on for its partner's state.
    pub bind: SocketAddr,
    /// The partner's UDP address, `HOST:PORT` (a name is looked up again
    /// until it resolves: in Kubernetes the partner's Service, say).
    pub peer: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: u64 = 100;

    #[test]
    fn both_start_primary_active_backup_passive() {
        let (mut p, mut b) = (
            Pair::new(Role::Primary, HB, 0),
            Pair::new(Role::Backup, HB, 0),
        );
        assert!(!b.on_client(10), "a starting backup takes no peers");
        b.on_peer(p.state, 50);
        p.on_peer(b.state, 60);
        assert_eq!(p.state, State::Active);
        b.on_peer(p.state, 70);
        assert_eq!(b.state, State::Passive);
        assert!(!b.on_client(80), "the primary is alive: refused");
        assert!(p.on_client(80));
    }

    #[test]
    fn the_backup_takes_over_only_when_the_primary_is_silent_and_peers_arrive() {
        let mut b = Pair::new(Role::Backup, HB, 0);
        b.on_peer(State::Active, 100);
        assert_eq!(b.state, State::Passive);
        // Silent primary, but no peer arrives (a cut between the brokers only):
        // still passive however long.
        assert_eq!(b.state, State::Passive);
        assert!(!b.on_client(250), "within two heartbeats of the last word");
        assert!(b.on_client(301), "silent past expiry and a peer arrives");
        assert_eq!(b.state, State::Active);
    }

    #[test]
    fn a_primary_that_comes_back_stays_passive() {
        let mut p = Pair::new(Role::Primary, HB, 1_000);
        assert!(!p.on_client(1_050), "waits to hear its partner first");
        p.on_peer(State::Active, 1_100);
        assert_eq!(p.state, State::Passive);
        assert!(!p.on_client(1_150));
    }

    #[test]
    fn two_actives_the_backup_yields() {
        let mut b = Pair::new(Role::Backup, HB, 0);
        b.on_peer(State::Active, 10);
        assert!(b.on_client(500));
        assert_eq!(b.on_peer(State::Active, 600), Change::Yield);
        assert_eq!(b.state, State::Passive);
        let mut p = Pair::new(Role::Primary, HB, 0);
        p.on_peer(State::Backup, 10);
        assert_eq!(p.on_peer(State::Active, 20), Change::None);
        assert_eq!(p.state, State::Active);
    }

    #[test]
    fn datagrams_are_checked() {
        let mut p = Pair::new(Role::Primary, HB, 5_000);
        let d = p.next_datagram(5_000);
        let buf = encode(&d, Some("k"));
        assert_eq!(decode(&buf, 5_100, Some("k")), Some(d));
        assert_eq!(decode(&buf, 5_100, Some("other")), None, "wrong secret");
        assert_eq!(decode(&buf, 50_000, Some("k")), None, "replayed late");
        for (at, byte) in [(4, Role::Backup.byte()), (5, State::Passive.byte())] {
            let mut forged = buf.clone();
            forged[at] = byte;
            assert_eq!(decode(&forged, 5_100, Some("k")), None, "field {at} forged");
        }
        let mut forged = buf.clone();
        forged[13] ^= 1;
        assert_eq!(decode(&forged, 5_100, Some("k")), None, "counter forged");
        assert_eq!(decode(&buf[..10], 5_100, Some("k")), None);
        let open = Datagram {
            role: Role::Backup,
            state: State::Backup,
            seq: 1,
            at: 1,
        };
        assert_eq!(decode(&encode(&open, None), 2, None), Some(open));
    }

    #[test]
    fn a_reflected_or_replayed_datagram_is_not_accepted() {
        let mut b = Pair::new(Role::Backup, HB, 1_000);
        let mut p = Pair::new(Role::Primary, HB, 1_000);
        let own = b.next_datagram(1_000);
        assert!(!b.accept(&own), "our own datagram, reflected");
        let first = p.next_datagram(1_000);
        let second = p.next_datagram(1_100);
        assert!(second.seq > first.seq);
        assert!(b.accept(&first));
        assert!(!b.accept(&first), "replayed");
        assert!(b.accept(&second));
        assert!(!b.accept(&first), "an older one, replayed");
        // A restarted partner counts on from its clock, above its last run.
        let restarted = Pair::new(Role::Primary, HB, 2_000).next_datagram(2_000);
        assert!(b.accept(&restarted));
    }
}
