//! A connection's send buffer: bounded, with a policy for slow clients.
//!
//! The buffer is bounded in messages and in bytes. Replies are always queued.
//! Events are queued while the buffer holds fewer than `soft` messages and
//! `soft_bytes` bytes; past either, a position update (an event with a coalescing
//! key, `loc.<zone>` + user) replaces the queued update for the same entity
//! (latest wins), and any other event is dropped and counted. When the buffer
//! would pass `hard` messages or `hard_bytes` bytes (replies included: a client
//! that asks for large replies and never reads) it is emptied and the client is
//! closed with code 4001: never a silent unbounded queue.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// Close code: the client did not read fast enough.
pub const CLOSE_SLOW: u16 = 4001;

struct Item {
    msg: Message,
    coalesce: Option<String>,
}

struct Inner {
    queue: VecDeque<Item>,
    /// Payload bytes in `queue`.
    bytes: usize,
    close: Option<CloseFrame>,
}

/// The limits of one outbox.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Messages before events are dropped or coalesced.
    pub soft: usize,
    /// Messages at which the client is closed.
    pub hard: usize,
    /// Bytes before events are dropped or coalesced.
    pub soft_bytes: usize,
    /// Bytes at which the client is closed.
    pub hard_bytes: usize,
}

/// See the module docs.
pub struct Outbox {
    inner: Mutex<Inner>,
    notify: Notify,
    limits: Limits,
    /// Events dropped for this connection.
    pub dropped: AtomicU64,
    /// Position updates replaced by a newer one.
    pub coalesced: AtomicU64,
    /// Closed for reaching a hard limit (the client did not read).
    pub too_slow: std::sync::atomic::AtomicBool,
    /// Cancelled once a close is asked for (the reader stops then).
    pub closing: tokio_util::sync::CancellationToken,
}

/// What the writer should do next.
pub enum Next {
    /// Send these, in order.
    Send(Vec<Message>),
    /// Send this close frame and stop.
    Close(CloseFrame),
}

impl Outbox {
    /// A buffer with the given limits (each soft limit at most its hard one).
    pub fn new(limits: Limits) -> Self {
        let soft = limits.soft.max(1);
        let soft_bytes = limits.soft_bytes.max(1);
        Self {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                bytes: 0,
                close: None,
            }),
            notify: Notify::new(),
            limits: Limits {
                soft,
                hard: limits.hard.max(soft),
                soft_bytes,
                hard_bytes: limits.hard_bytes.max(soft_bytes),
            },
            dropped: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            too_slow: std::sync::atomic::AtomicBool::new(false),
            closing: tokio_util::sync::CancellationToken::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a reply.
    pub fn reply(&self, msg: Message) {
        self.push(
            Item {
                msg,
                coalesce: None,
            },
            true,
        );
    }

    /// Queues an event (see the module docs for what happens when full).
    pub fn event(&self, msg: Message, coalesce: Option<String>) {
        self.push(Item { msg, coalesce }, false);
    }

    fn push(&self, item: Item, is_reply: bool) {
        let mut inner = self.lock();
        if inner.close.is_some() {
            return;
        }
        let size = item.msg.len();
        let l = &self.limits;
        let past_soft = inner.queue.len() >= l.soft || inner.bytes + size > l.soft_bytes;
        if !is_reply && past_soft {
            if let Some(key) = &item.coalesce {
                if let Some(slot) = inner
                    .queue
                    .iter_mut()
                    .find(|i| i.coalesce.as_ref() == Some(key))
                {
                    let old = slot.msg.len();
                    slot.msg = item.msg;
                    inner.bytes = inner.bytes - old + size;
                    self.coalesced.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::EVENTS_COALESCED.increment(1);
                    return;
                }
            } else {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                crate::metrics::EVENTS_DROPPED.increment(1);
                return;
            }
        }
        if inner.queue.len() >= l.hard || inner.bytes + size > l.hard_bytes {
            inner.queue.clear();
            inner.bytes = 0;
            inner.close = Some(close_frame(CLOSE_SLOW, "send buffer full: client too slow"));
            self.too_slow.store(true, Ordering::Relaxed);
            self.closing.cancel();
        } else {
            inner.bytes += size;
            inner.queue.push_back(item);
        }
        drop(inner);
        self.notify.notify_one();
    }

    /// Asks the writer to close with `code` after what is queued.
    pub fn close(&self, code: u16, reason: &str) {
        let mut inner = self.lock();
        if inner.close.is_none() {
            inner.close = Some(close_frame(code, reason));
            crate::metrics::closed(code);
        }
        self.closing.cancel();
        drop(inner);
        self.notify.notify_one();
    }

    /// Whether a close has been asked for.
    pub fn is_closing(&self) -> bool {
        self.lock().close.is_some()
    }

    /// Queued messages now.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for the next batch (everything queued), or the close frame once the
    /// queue is empty.
    pub async fn next(&self) -> Next {
        loop {
            let notified = self.notify.notified();
            {
                let mut inner = self.lock();
                if !inner.queue.is_empty() {
                    inner.bytes = 0;
                    return Next::Send(inner.queue.drain(..).map(|i| i.msg).collect());
                }
                if let Some(frame) = inner.close.take() {
                    return Next::Close(frame);
                }
            }
            notified.await;
        }
    }
}

/// A close frame with a numeric code.
pub fn close_frame(code: u16, reason: &str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Message {
        Message::Text(s.into())
    }

    fn limits(soft: usize, hard: usize) -> Limits {
        Limits {
            soft,
            hard,
            soft_bytes: usize::MAX / 2,
            hard_bytes: usize::MAX / 2,
        }
    }

    #[tokio::test]
    async fn past_soft_limit_positions_coalesce_and_other_events_drop() {
        let out = Outbox::new(limits(2, 5));
        out.event(text("a1"), Some("loc.z1/ann".into()));
        out.event(text("chat1"), None);
        // Full (soft): a newer position for ann replaces the queued one.
        out.event(text("a2"), Some("loc.z1/ann".into()));
        out.event(text("chat2"), None);
        // A position for someone not queued still fits under the hard limit.
        out.event(text("b1"), Some("loc.z1/bob".into()));
        out.reply(text("reply"));
        assert_eq!(out.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(out.coalesced.load(Ordering::Relaxed), 1);
        let Next::Send(batch) = out.next().await else {
            panic!("expected messages")
        };
        assert_eq!(
            batch,
            vec![text("a2"), text("chat1"), text("b1"), text("reply")]
        );
    }

    #[tokio::test]
    async fn hard_limit_closes_the_client() {
        let out = Outbox::new(limits(1, 3));
        for i in 0..4 {
            out.reply(text(&i.to_string()));
        }
        assert!(out.is_closing());
        let Next::Close(frame) = out.next().await else {
            panic!("expected close")
        };
        assert_eq!(u16::from(frame.code), CLOSE_SLOW);
    }

    #[tokio::test]
    async fn bytes_count_as_well_as_messages() {
        let out = Outbox::new(Limits {
            soft: 100,
            hard: 100,
            soft_bytes: 10,
            hard_bytes: 20,
        });
        out.event(text("0123456789"), None);
        out.event(text("x"), None);
        assert_eq!(out.dropped.load(Ordering::Relaxed), 1, "past soft bytes");
        out.reply(text("0123456789"));
        assert!(!out.is_closing(), "20 bytes fit");
        out.reply(text("y"));
        assert!(out.is_closing(), "a reply past hard bytes closes");
        let Next::Close(frame) = out.next().await else {
            panic!("expected close")
        };
        assert_eq!(u16::from(frame.code), CLOSE_SLOW);
    }
}
