//! Topic subscriptions shared by all the clients of this gateway: one bus
//! subscription per topic (or pattern), fanned out to every client on it.
//! Exact topics (most: each client's `user.<id>`) all feed one channel read by
//! one task; each wildcard pattern has a task of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use switchboard_bus::proto::{topic, Envelope};
use switchboard_bus::{Error, Handle, SharedSubscription, Subscription};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::outbox::Outbox;
use crate::policy::Policy;
use crate::shares::{Member, Share, Shares};
use crate::wire;

/// A connection as the hub sees it: where its events go, and in which format.
pub struct ConnOut {
    /// The connection's send buffer.
    pub outbox: Outbox,
    /// The client speaks MessagePack (it sent a binary frame).
    pub binary: AtomicBool,
}

/// Where a topic's events come from.
enum Feed {
    /// A wildcard pattern: its own bus subscription and forwarding task (an
    /// event's topic does not say which pattern it matched).
    Pattern(tokio::task::AbortHandle),
    /// An exact topic (a client's `user.<id>`, a room): a bus subscription into
    /// the hub's one shared channel, forwarded by the one task that reads it
    /// and looks the topic up. No task and no channel per topic: a gateway
    /// holds one such topic per client.
    Exact(SharedSubscription),
}

struct Entry {
    conns: HashMap<u64, Arc<ConnOut>>,
    /// The address whose client subscribed first: the topic counts against
    /// its share until it goes. `None` for a client's own `user.<id>`.
    charged: Option<Member>,
    /// The field whose value coalesces this topic's events (positions).
    coalesce: Option<Box<str>>,
    feed: Feed,
}

impl Feed {
    /// Ends the feed: the pattern's task stops, or the exact topic is
    /// unsubscribed ahead of any later subscription to it.
    async fn close(self) {
        match self {
            Self::Pattern(task) => task.abort(),
            Self::Exact(sub) => sub.close().await,
        }
    }
}

/// Events queued for the exact-topic forwarder, all topics together.
const SHARED_CAPACITY: usize = 8_192;

/// How many topics the hub holds on the bus, in all and per address.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Distinct topics in all.
    pub max_topics: usize,
    /// Topics brought in by the clients of one address.
    pub max_topics_per_ip: usize,
}

/// See the module docs.
pub struct Hub {
    bus: Handle,
    policy: Policy,
    limits: Limits,
    addresses: Arc<Shares>,
    topics: Mutex<HashMap<String, Entry>>,
    /// The channel every exact-topic subscription feeds.
    exact_tx: mpsc::Sender<Box<Envelope>>,
    /// Its receiver, until the forwarder starts (at the first subscription,
    /// inside the runtime).
    exact_rx: Mutex<Option<mpsc::Receiver<Box<Envelope>>>>,
    /// Held from "no entry for this topic" to its entry's insertion, and from
    /// an entry's removal to its feed's end: the bus never holds one exact
    /// topic twice (with the shared channel, both would deliver each event).
    subscribing: tokio::sync::Mutex<()>,
}

impl Hub {
    /// A hub over the gateway's bus handle; `policy` says which events coalesce.
    pub fn new(bus: Handle, policy: Policy, limits: Limits, addresses: Arc<Shares>) -> Arc<Self> {
        let (exact_tx, exact_rx) = mpsc::channel(SHARED_CAPACITY);
        Arc::new(Self {
            bus,
            policy,
            limits,
            addresses,
            topics: Mutex::new(HashMap::new()),
            exact_tx,
            exact_rx: Mutex::new(Some(exact_rx)),
            subscribing: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds connection `id` (of address `from`) to `topic`, subscribing on the
    /// bus if it is the first. `own` is the client's own `user.<id>`: one per
    /// connection (so bounded by the connection caps), it is not counted in the
    /// hub's limits, so that a newcomer always gets its direct messages while
    /// the broker has room.
    ///
    /// # Errors
    ///
    /// `overloaded` when a new topic would pass the hub's limits, in all or for
    /// `from`; the bus's refusal (the broker's per-peer cap).
    pub async fn subscribe(
        self: &Arc<Self>,
        topic: &str,
        id: u64,
        conn: Arc<ConnOut>,
        from: &Member,
        own: bool,
    ) -> Result<(), Error> {
        if let Some(entry) = self.lock().get_mut(topic) {
            entry.conns.insert(id, conn);
            return Ok(());
        }
        let _one_at_a_time = self.subscribing.lock().await;
        if let Some(entry) = self.lock().get_mut(topic) {
            entry.conns.insert(id, conn);
            return Ok(());
        }
        // A new topic: within the hub's budget, and within its address's share
        // of it (one address must not spend what every client needs).
        let charged = (!own).then(|| from.clone());
        let held = self.lock().len();
        if !own && held >= self.limits.max_topics {
            return Err(Error::new(
                switchboard_bus::proto::ErrorCode::Overloaded,
                format!("the gateway holds {held} topics, its limit: try again later"),
            ));
        }
        if !own && !Share::take(&from.share.topics, self.limits.max_topics_per_ip) {
            return Err(Error::new(
                switchboard_bus::proto::ErrorCode::Overloaded,
                format!(
                    "clients of this address brought in {} topics, the limit per address",
                    self.limits.max_topics_per_ip
                ),
            ));
        }
        match self.feed(topic).await {
            Ok(feed) => {
                let coalesce = self.policy.coalesce_field(topic).map(Box::from);
                self.lock().insert(
                    topic.to_owned(),
                    Entry {
                        conns: HashMap::from([(id, conn)]),
                        charged,
                        coalesce,
                        feed,
                    },
                );
                Ok(())
            }
            Err(e) => {
                if !own {
                    self.addresses.topic_gone(from);
                }
                Err(e)
            }
        }
    }

    /// A new bus subscription for `topic`.
    async fn feed(self: &Arc<Self>, topic: &str) -> Result<Feed, Error> {
        Ok(if topic::is_wildcard(topic) {
            let sub = self.bus.subscribe(topic).await?;
            Feed::Pattern(
                tokio::spawn(forward_pattern(Arc::downgrade(self), topic.to_owned(), sub))
                    .abort_handle(),
            )
        } else {
            let rx = self
                .exact_rx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(rx) = rx {
                tokio::spawn(forward_exact(Arc::downgrade(self), rx));
            }
            Feed::Exact(
                self.bus
                    .subscribe_into(topic, self.exact_tx.clone())
                    .await?,
            )
        })
    }

    /// Removes connection `id` from `topic`; the last one out unsubscribes.
    pub async fn unsubscribe(&self, topic: &str, id: u64) {
        if let Some(entry) = self.lock().get_mut(topic) {
            if entry.conns.len() > 1 {
                entry.conns.remove(&id);
                return;
            }
        }
        let _one_at_a_time = self.subscribing.lock().await;
        let gone = {
            let mut topics = self.lock();
            match topics.get_mut(topic) {
                Some(entry) => {
                    entry.conns.remove(&id);
                    if entry.conns.is_empty() {
                        topics.remove(topic)
                    } else {
                        None
                    }
                }
                None => None,
            }
        };
        if let Some(entry) = gone {
            entry.feed.close().await;
            if let Some(charged) = &entry.charged {
                self.addresses.topic_gone(charged);
            }
        }
    }

    /// Topics with at least one client.
    pub fn topics(&self) -> usize {
        self.lock().len()
    }
}

/// Forwards one wildcard pattern's events.
async fn forward_pattern(hub: Weak<Hub>, pattern: String, mut sub: Subscription) {
    while let Some(event) = sub.next().await {
        let Some(hub) = hub.upgrade() else {
            break;
        };
        let Some((conns, coalesce)) = hub.listeners(&pattern) else {
            break;
        };
        deliver(&event, conns, coalesce.as_deref());
    }
}

/// Forwards the events of every exact topic, each to that topic's clients.
async fn forward_exact(hub: Weak<Hub>, mut rx: mpsc::Receiver<Box<Envelope>>) {
    while let Some(event) = rx.recv().await {
        let Some(hub) = hub.upgrade() else {
            break;
        };
        // A topic left since the event was queued: nobody to tell.
        if let Some((conns, coalesce)) = hub.listeners(&event.to) {
            deliver(&event, conns, coalesce.as_deref());
        }
    }
}

/// A topic's clients (a snapshot) and its coalescing field.
type Listeners = (Vec<Arc<ConnOut>>, Option<Box<str>>);

impl Hub {
    /// The clients on `topic` (a topic or pattern as subscribed) and its
    /// coalescing field, or `None` when nobody is on it.
    fn listeners(&self, topic: &str) -> Option<Listeners> {
        let topics = self.lock();
        let entry = topics.get(topic)?;
        Some((
            entry.conns.values().cloned().collect(),
            entry.coalesce.clone(),
        ))
    }
}

/// Queues one event for each client, encoded once per format.
fn deliver(event: &Envelope, conns: Vec<Arc<ConnOut>>, coalesce_field: Option<&str>) {
    // Events of a service with a `coalesce` field (positions) are replaced per
    // topic and entity when a client falls behind.
    let coalesce = coalesce_field.and_then(|field| {
        let data = wire::body_to_json(&event.body);
        let entity = data.get(field)?.as_str()?;
        Some(format!("{}/{entity}", event.to))
    });
    let mut text: Option<Message> = None;
    let mut binary: Option<Message> = None;
    for conn in conns {
        let msg = if conn.binary.load(Ordering::Relaxed) {
            binary
                .get_or_insert_with(|| wire::event(&event.to, &event.body, true))
                .clone()
        } else {
            text.get_or_insert_with(|| wire::event(&event.to, &event.body, false))
                .clone()
        };
        conn.outbox.event(msg, coalesce.clone());
    }
}
