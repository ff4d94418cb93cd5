//! Who the client is and what it hears: the session (its user, the
//! `session.open`/`session.close` events), its topics within the cap, and the
//! goodbye that closes the connection with the right code.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_bus::proto::{self, api, ErrorCode};

use super::{Client, ReadEnd, CLOSE_AWAY, CLOSE_TRY_LATER};
use crate::jwt;

impl Client {
    pub(super) fn user(&self) -> Option<String> {
        self.user.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets the user and tells the services the session opened; subscribes the
    /// client to its direct-message topic.
    ///
    /// # Errors
    ///
    /// Why the connection cannot go on (a short text, for a close frame): the
    /// user holds `max_connections_per_user` already (nothing is set), or its
    /// `user.<id>` could not be subscribed (its messages would never arrive).
    pub(super) async fn open_session(self: &Arc<Self>, token: jwt::Verified) -> Result<(), String> {
        let user = token.user;
        let cap = self.gw.settings.max_connections_per_user;
        let Some(share) = self.gw.users.join(&user, cap) else {
            return Err(format!("this user already has {cap} connections"));
        };
        if let Err(share) = self.user_share.set(share) {
            // Set before: the same user again (a fresher token); one share.
            self.gw.users.leave(&share);
        }
        self.expires_ms
            .store(token.expires_s.saturating_mul(1000), Ordering::Relaxed);
        *self.user.lock().unwrap_or_else(|p| p.into_inner()) = Some(user.clone());
        self.publish_session(api::SESSION_OPEN, &user).await;
        let topic = format!("user.{user}");
        if proto::topic::validate(&topic, false).is_ok() {
            if let Err(e) = self.subscribe(&topic).await {
                tracing::warn!(session = %self.session, error = %e, "the user's own topic was refused; closing");
                self.out.outbox.close(
                    CLOSE_TRY_LATER,
                    "no room for this connection's topics: try again later",
                );
                return Err(e.message);
            }
        }
        Ok(())
    }

    pub(super) async fn publish_session(&self, topic: &str, user: &str) {
        let body = proto::to_body(&api::Session {
            user: user.to_owned(),
            session: self.session.clone(),
            gateway: self.gw.bus.instance().to_owned(),
        });
        if let Ok(body) = body {
            if let Err(e) = self.gw.bus.publish(topic, body).await {
                tracing::warn!(error = %e, topic, "session event not published");
            }
        }
    }

    pub(super) fn topics(&self) -> std::sync::MutexGuard<'_, Option<Vec<String>>> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes the client to `topic`, within its subscription cap.
    pub(super) async fn subscribe(
        self: &Arc<Self>,
        topic: &str,
    ) -> Result<(), switchboard_bus::Error> {
        {
            let topics = self.topics();
            let Some(topics) = topics.as_ref() else {
                return Err(switchboard_bus::Error::new(
                    ErrorCode::Unavailable,
                    "connection closing",
                ));
            };
            if topics.iter().any(|t| t == topic) {
                return Ok(());
            }
            let cap = self.gw.settings.max_subscriptions;
            if topics.len() >= cap {
                return Err(switchboard_bus::Error::new(
                    ErrorCode::Overloaded,
                    format!("this connection already holds {cap} subscriptions: unsubscribe first"),
                ));
            }
        }
        // The client's own direct-message topic is outside the hub's limits.
        let own = self
            .user()
            .is_some_and(|u| topic.strip_prefix("user.") == Some(u.as_str()));
        self.gw
            .hub
            .subscribe(topic, self.id, self.out.clone(), &self.address, own)
            .await?;
        let closed = match self.topics().as_mut() {
            Some(topics) => {
                if !topics.iter().any(|t| t == topic) {
                    topics.push(topic.to_owned());
                }
                false
            }
            None => true,
        };
        if closed {
            // Closed while the bus subscribed: undo at once.
            self.gw.hub.unsubscribe(topic, self.id).await;
        }
        Ok(())
    }

    pub(super) async fn unsubscribe(&self, topic: &str) {
        let held = self.topics().as_mut().is_some_and(|topics| {
            let at = topics.iter().position(|t| t == topic);
            at.map(|at| topics.swap_remove(at)).is_some()
        });
        if held {
            self.gw.hub.unsubscribe(topic, self.id).await;
        }
    }

    /// Stops the connection: waits (within the grace period) for in-flight replies
    /// to be queued, closes with the right code, tells the services.
    pub(super) async fn finish(self: Arc<Self>, why: ReadEnd, writer: tokio::task::JoinHandle<()>) {
        if matches!(why, ReadEnd::Shutdown | ReadEnd::ClientGone) {
            let until = Instant::now() + Duration::from_millis(self.gw.settings.shutdown_grace_ms);
            while self.inflight.load(Ordering::Relaxed) > 0
                && Instant::now() < until
                && !self.out.outbox.is_closing()
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if self.out.outbox.too_slow.load(Ordering::Relaxed) {
            self.gw.stats.closed_slow.fetch_add(1, Ordering::Relaxed);
        }
        match why {
            ReadEnd::Shutdown => self.out.outbox.close(CLOSE_AWAY, "server shutting down"),
            ReadEnd::ClientGone => self.out.outbox.close(1000, ""),
            ReadEnd::Closing => {}
        }
        // The writer sends what is queued and the close frame; a client that does
        // not read gets a second, then the socket is dropped.
        let abort = writer.abort_handle();
        if tokio::time::timeout(Duration::from_secs(1), writer)
            .await
            .is_err()
        {
            abort.abort();
        }
        let topics = self.topics().take().unwrap_or_default();
        for topic in topics {
            self.gw.hub.unsubscribe(&topic, self.id).await;
        }
        if let Some(user) = self.user() {
            self.publish_session(api::SESSION_CLOSE, &user).await;
        }
        tracing::debug!(session = %self.session, "client disconnected");
    }
}
