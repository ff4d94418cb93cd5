//! Pub/sub: subscriptions (capped per peer, in a token tree) and publishing.

use super::*;

/// The largest `session.*` event body the broker decodes to check who it is about.
const SESSION_EVENT_MAX: usize = 64 * 1024;

impl Router {
    // --- pub/sub ---

    /// Takes a subscription to `pattern`. A `subscribe` with an `id` is answered
    /// (a `subscribe` with that id: taken, or an error); one past the per-peer
    /// cap is answered in any case, `overloaded`, so that no peer believes it
    /// holds a subscription that delivers nothing.
    pub(super) fn subscribe(&mut self, pid: PeerId, pattern: &str, id: u64, identity: &Bytes) {
        if topic::validate(pattern, true).is_err() {
            self.answer_subscribe(
                pid,
                pattern,
                id,
                Some(ErrorBody::new(
                    ErrorCode::BadRequest,
                    "invalid subscription pattern",
                )),
            );
            return self.malformed(identity, "invalid subscription pattern");
        }
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        if peer.subs.contains(pattern) {
            return self.answer_subscribe(pid, pattern, id, None);
        }
        if peer.subs.len() >= self.settings.max_subs_per_peer {
            self.stats.subs_refused += 1;
            let cap = self.settings.max_subs_per_peer;
            if self.stats.subs_refused == 1 {
                tracing::warn!(instance = %peer.instance, cap, "subscription past the per-peer cap refused (answered overloaded; further ones are counted)");
            }
            let why =
                format!("this peer already holds {cap} subscriptions (the broker's per-peer cap)");
            return self.answer_subscribe(
                pid,
                pattern,
                id,
                Some(ErrorBody::new(ErrorCode::Overloaded, why)),
            );
        }
        peer.subs.insert(pattern.to_owned());
        self.subs.insert(pattern, pid);
        self.answer_subscribe(pid, pattern, id, None);
    }

    /// The answer to a `subscribe`: sent when the peer asked (an id) or when
    /// the subscription was refused.
    fn answer_subscribe(&mut self, pid: PeerId, pattern: &str, id: u64, error: Option<ErrorBody>) {
        if id == 0 && error.is_none() {
            return;
        }
        let mut env = Envelope::new(Kind::Subscribe);
        env.id = id;
        env.to = pattern.to_owned();
        if error.is_none() {
            env.op = "ack".into();
        }
        env.error = error;
        self.send_to_peer(pid, &env);
    }

    pub(super) fn unsubscribe(&mut self, pid: PeerId, pattern: &str) {
        if let Some(peer) = self.peers.get_mut(&pid) {
            if peer.subs.remove(pattern) {
                self.subs.remove(pattern, &pid);
            }
        }
    }

    pub(super) fn publish(&mut self, topic_name: &str, payload: Bytes, identity: &Bytes) {
        if topic::validate(topic_name, false).is_err() {
            return self.malformed(identity, "invalid event topic");
        }
        self.stats.events += 1;
        let mut targets = Vec::new();
        self.subs
            .for_each_match(topic_name, |&pid| targets.push(pid));
        if targets.len() > 1 {
            // A peer under two matching patterns gets the event once.
            targets.sort_unstable();
            targets.dedup();
        }
        for pid in targets {
            if let Some(peer) = self.peers.get(&pid) {
                let mut msg = ZmqMessage::from(payload.clone());
                msg.push_front(peer.identity.clone());
                self.out.push(Outgoing { msg, event: true });
            }
        }
    }

    /// Why peer `pid` may not send this event, if it may not. Services act on
    /// the broker's `bus.peer_lost` and on the gateway's `session.*` events
    /// (chat and loc drop what a session held), so a peer holding the bus
    /// secret could otherwise end other gateways' sessions: `bus.*` is the
    /// broker's alone, and a `session.*` event must be about a session of the
    /// publishing instance (session ids start with their gateway's instance
    /// name, which only one live peer holds). Only these topics are decoded.
    pub(super) fn forged_event(
        &self,
        pid: PeerId,
        topic_name: &str,
        body: &[u8],
    ) -> Option<&'static str> {
        if topic_name == "bus" || topic_name.starts_with("bus.") {
            return Some("bus.* events are the broker's");
        }
        use proto::api::{GRANT_FAILED, SESSION_CLOSE, SESSION_OPEN};
        // No service acts on another session.* topic: nothing to decode.
        if ![SESSION_OPEN, SESSION_CLOSE, GRANT_FAILED].contains(&topic_name) {
            return None;
        }
        // A gateway's session event is a few hundred bytes (a grant_failed
        // lists at most a connection's topics): a large one is not decoded.
        // The head, body included, was decoded on arrival.
        if body.len() > SESSION_EVENT_MAX {
            return Some("a session event over 64 KiB");
        }
        let instance = self.peers.get(&pid).map_or("", |p| p.instance.as_str());
        let ours = |session: &str| proto::api::session_gateway(session) == Some(instance);
        let fine = match topic_name {
            SESSION_OPEN | SESSION_CLOSE => proto::from_body::<proto::api::Session>(body)
                .is_ok_and(|s| s.gateway == instance && ours(&s.session)),
            _ => proto::from_body::<proto::api::GrantFailed>(body).is_ok_and(|g| ours(&g.session)),
        };
        (!fine).then_some("a session event about another instance's session")
    }

    /// Counts and logs (the first) an event refused by [`Router::forged_event`].
    pub(super) fn event_refused(&mut self, pid: PeerId, topic_name: &str, why: &str) {
        self.stats.events_refused += 1;
        let instance = self.peers.get(&pid).map_or("", |p| p.instance.as_str());
        if self.stats.events_refused == 1 {
            tracing::warn!(
                instance,
                topic = topic_name,
                why,
                "event refused (further ones are counted)"
            );
        } else {
            tracing::debug!(instance, topic = topic_name, why, "event refused");
        }
    }

    /// Publishes an event of the broker's own to the subscribers of `topic`.
    pub(super) fn announce<T: Serialize>(&mut self, topic_name: &str, body: &T) {
        let mut env = Envelope::new(Kind::Event);
        env.to = topic_name.to_owned();
        env.from = BROKER_SERVICE.to_owned();
        env.body = proto::ByteBuf::from(proto::to_body(body).unwrap_or_default());
        match proto::encode(&env) {
            Ok(frame) => self.publish(topic_name, Bytes::from(frame), &Bytes::new()),
            Err(e) => tracing::error!(error = %e, "cannot encode a broker event"),
        }
    }
}
