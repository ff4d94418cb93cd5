//! The socket actor's local subscriptions, matched through a topic index.

use super::*;

/// The local subscriptions: each has an id and a queue; several may share a
/// pattern (the broker is told of a pattern once). Events are matched through a
/// [`topic::Index`], so delivering one does not scan every subscription.
#[derive(Default)]
pub(super) struct Subs {
    by_id: HashMap<u64, (String, mpsc::Sender<Box<Envelope>>)>,
    index: topic::Index<u64>,
    /// Subscriptions per pattern.
    patterns: HashMap<String, usize>,
}

impl Subs {
    /// Adds a subscription; true when its pattern is new (tell the broker).
    pub(super) fn add(
        &mut self,
        id: u64,
        pattern: String,
        tx: mpsc::Sender<Box<Envelope>>,
    ) -> bool {
        self.index.insert(&pattern, id);
        let count = self.patterns.entry(pattern.clone()).or_insert(0);
        *count += 1;
        let first = *count == 1;
        self.by_id.insert(id, (pattern, tx));
        first
    }

    /// Removes a subscription; its pattern if it was the last one on it.
    pub(super) fn remove(&mut self, id: u64) -> Option<String> {
        let (pattern, _) = self.by_id.remove(&id)?;
        self.index.remove(&pattern, &id);
        let count = self.patterns.get_mut(&pattern)?;
        *count -= 1;
        if *count > 0 {
            return None;
        }
        self.patterns.remove(&pattern);
        Some(pattern)
    }

    pub(super) fn patterns(&self) -> Vec<String> {
        self.patterns.keys().cloned().collect()
    }

    /// Queues `env` for every matching subscription; returns how many were full.
    pub(super) fn deliver(&self, env: &Envelope) -> u64 {
        let mut dropped = 0;
        self.index.for_each_match(&env.to, |id| {
            if let Some((_, tx)) = self.by_id.get(id) {
                if tx.try_send(Box::new(env.clone())).is_err() {
                    dropped += 1;
                }
            }
        });
        dropped
    }
}
