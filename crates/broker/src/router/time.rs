//! Time: deadlines, heartbeats, silent peers, challenge expiry.

use super::*;

impl Router {
    // --- time ---

    /// Expires requests, sends heartbeats, declares silent peers dead. Call often
    /// (every few ms); heartbeat work happens once per interval.
    pub fn on_tick(&mut self, now: u64) {
        self.forgive_own_stall(now);
        let mut swept = HashSet::new();
        while let Some(&Reverse((deadline, token))) = self.expiry.peek() {
            if deadline > now {
                break;
            }
            self.expiry.pop();
            let Some(req) = self.reqs.get(&token) else {
                continue;
            };
            let name = self.services[req.service].name.clone();
            if req.worker.is_some() {
                let waited = deadline.saturating_sub(req.received);
                self.fail(
                    token,
                    ErrorCode::Timeout,
                    format!("{name}: no reply within {waited} ms"),
                );
            } else {
                swept.insert(req.service);
                let waited = deadline.saturating_sub(req.received);
                self.fail(
                    token,
                    ErrorCode::Unavailable,
                    format!("{name}: no instance ready within {waited} ms"),
                );
            }
        }
        for svc in swept {
            let reqs = &self.reqs;
            self.services[svc].queue.retain(|t| reqs.contains_key(t));
        }
        if now < self.next_heartbeat {
            return;
        }
        self.next_heartbeat = now + self.settings.heartbeat_ms;
        self.told_bye.clear();
        let dead_after = self.settings.heartbeat_ms * u64::from(self.settings.liveness);
        let silent: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| now.saturating_sub(p.last_seen) > dead_after)
            .map(|(&pid, _)| pid)
            .collect();
        for pid in silent {
            self.peer_lost(pid, Loss::Silent, now);
        }
        for peer in self.peers.values() {
            let mut msg = ZmqMessage::from(self.heartbeat_frame.clone());
            msg.push_front(peer.identity.clone());
            self.out.push(Outgoing { msg, event: false });
        }
        self.challenges
            .retain(|_, (_, at)| now.saturating_sub(*at) < CHALLENGE_TTL_MS);
        if self.stats.malformed != self.reported_malformed
            && now % 10_000 < self.settings.heartbeat_ms
        {
            tracing::warn!(
                total = self.stats.malformed,
                new = self.stats.malformed - self.reported_malformed,
                "malformed frames dropped"
            );
            self.reported_malformed = self.stats.malformed;
        }
    }

    /// The broker itself did not run for more than a heartbeat (stopped, starved,
    /// a paused VM): its peers' silence during that time is not theirs, so their
    /// last sign of life moves forward by the stall. A loop that is merely busy
    /// ticks every few ms and is not a stall; only a gap longer than a heartbeat
    /// counts, so a dead peer is still found within the liveness window once the
    /// broker runs.
    fn forgive_own_stall(&mut self, now: u64) {
        let gap = now.saturating_sub(self.last_tick);
        if self.last_tick > 0 && gap > self.settings.heartbeat_ms {
            for peer in self.peers.values_mut() {
                peer.last_seen = peer.last_seen.saturating_add(gap).min(now);
            }
            tracing::warn!(
                stalled_ms = gap,
                "the broker did not run for a while; its peers' silence during it is not counted"
            );
        }
        self.last_tick = now;
    }

    /// A connection closed (from the socket monitor).
    pub fn on_disconnect(&mut self, identity: &Bytes, now: u64) {
        self.challenges.remove(identity);
        if let Some(&pid) = self.by_identity.get(identity) {
            self.peer_lost(pid, Loss::Disconnected, now);
        }
    }
}
