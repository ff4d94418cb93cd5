//! Topic subscriptions shared by all the clients of this gateway: one bus
//! subscription per topic (or pattern), fanned out to every client on it.

use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use switchboard_bus::{Error, Handle, Subscription};
use tokio_tungstenite::tungstenite::Message;

use crate::outbox::Outbox;
use crate::policy::Policy;
use crate::wire;

/// A connection as the hub sees it: where its events go, and in which format.
pub struct ConnOut {
    /// The connection's send buffer.
    pub outbox: Outbox,
    /// The client speaks MessagePack (it sent a binary frame).
    pub binary: AtomicBool,
}

struct Entry {
    conns: HashMap<u64, Arc<ConnOut>>,
    task: tokio::task::AbortHandle,
}

/// See the module docs.
pub struct Hub {
    bus: Handle,
    policy: Policy,
    topics: Mutex<HashMap<String, Entry>>,
}

#[derive(Serialize)]
struct EventFrame<'a> {
    topic: &'a str,
    data: &'a serde_json::Value,
}

impl Hub {
    /// A hub over the gateway's bus handle; `policy` says which events coalesce.
    pub fn new(bus: Handle, policy: Policy) -> Arc<Self> {
        Arc::new(Self {
            bus,
            policy,
            topics: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds connection `id` to `topic`, subscribing on the bus if it is the first.
    ///
    /// # Errors
    ///
    /// The bus refused the subscription.
    pub async fn subscribe(
        self: &Arc<Self>,
        topic: &str,
        id: u64,
        conn: Arc<ConnOut>,
    ) -> Result<(), Error> {
        if let Some(entry) = self.lock().get_mut(topic) {
            entry.conns.insert(id, conn);
            return Ok(());
        }
        let sub = self.bus.subscribe(topic).await?;
        let mut topics = self.lock();
        if let Some(entry) = topics.get_mut(topic) {
            // Another client subscribed meanwhile; ours is dropped (unsubscribing
            // only locally: the bus keeps the pattern while one subscription has it).
            entry.conns.insert(id, conn);
            return Ok(());
        }
        let coalesce = self.policy.coalesce_field(topic).map(str::to_owned);
        let task = tokio::spawn(forward(
            Arc::downgrade(self),
            topic.to_owned(),
            sub,
            coalesce,
        ))
        .abort_handle();
        topics.insert(
            topic.to_owned(),
            Entry {
                conns: HashMap::from([(id, conn)]),
                task,
            },
        );
        Ok(())
    }

    /// Removes connection `id` from `topic`; the last one out unsubscribes.
    pub fn unsubscribe(&self, topic: &str, id: u64) {
        let mut topics = self.lock();
        if let Some(entry) = topics.get_mut(topic) {
            entry.conns.remove(&id);
            if entry.conns.is_empty() {
                entry.task.abort();
                topics.remove(topic);
            }
        }
    }

    /// Topics with at least one client.
    pub fn topics(&self) -> usize {
        self.lock().len()
    }
}

async fn forward(
    hub: Weak<Hub>,
    topic: String,
    mut sub: Subscription,
    coalesce_field: Option<String>,
) {
    while let Some(event) = sub.next().await {
        let Some(hub) = hub.upgrade() else {
            break;
        };
        let conns: Vec<Arc<ConnOut>> = match hub.lock().get(&topic) {
            Some(entry) => entry.conns.values().cloned().collect(),
            None => break,
        };
        let data = wire::body_to_json(&event.body);
        // Events of a service with a `coalesce` field (positions) are replaced
        // per topic and entity when a client falls behind.
        let coalesce = coalesce_field.as_deref().and_then(|field| {
            let entity = data.get(field)?.as_str()?;
            Some(format!("{}/{entity}", event.to))
        });
        let frame = EventFrame {
            topic: &event.to,
            data: &data,
        };
        let mut text: Option<Message> = None;
        let mut binary: Option<Message> = None;
        for conn in conns {
            let msg = if conn.binary.load(Ordering::Relaxed) {
                binary.get_or_insert_with(|| wire::binary(&frame)).clone()
            } else {
                text.get_or_insert_with(|| wire::text(&frame)).clone()
            };
            conn.outbox.event(msg, coalesce.clone());
        }
    }
}
