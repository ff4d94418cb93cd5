//! The "these sessions ended" hook: a service that keeps state per client
//! session (chat's presence, loc's positions) is told when sessions end,
//! whether one connection closed (the gateway's `session.close`) or a whole
//! gateway was lost and could send nothing (the broker's `bus.peer_lost`),
//! without decoding either event or parsing session ids itself.

use std::future::Future;
use std::sync::Arc;
use switchboard_proto::{self as proto, api};

use super::Service;
use crate::Handle;

/// Which client sessions ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionsEnded {
    /// One connection closed (the gateway's `session.close`).
    One {
        /// The connection's user.
        user: String,
        /// The connection's session id.
        session: String,
    },
    /// Every session of this gateway instance: it was lost (died, or was cut
    /// off) without closing its sessions (the broker's `bus.peer_lost`; any
    /// lost peer is reported, and one that was no gateway holds no sessions).
    Gateway(String),
}

impl SessionsEnded {
    /// Whether `session` (a session id as the gateway makes them,
    /// [`api::session_id`]) is one of those that ended.
    #[must_use]
    pub fn covers(&self, session: &str) -> bool {
        match self {
            Self::One { session: ended, .. } => ended == session,
            Self::Gateway(gateway) => api::session_gateway(session) == Some(gateway.as_str()),
        }
    }
}

impl Service {
    /// Calls `handler` with each [`SessionsEnded`]: subscribes the service to
    /// `session.close` and `bus.peer_lost` and decodes them (an event that does
    /// not decode is logged and skipped).
    pub fn on_sessions_ended_with<S, F, Fut>(self, state: &Arc<S>, handler: F) -> Self
    where
        S: Send + Sync + 'static,
        F: Fn(SessionsEnded, Handle, Arc<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_close = Arc::new(handler);
        let on_lost = on_close.clone();
        self.on_event_with(api::SESSION_CLOSE, state, move |event, bus, state| {
            let handler = on_close.clone();
            async move {
                match proto::from_body::<api::Session>(&event.body) {
                    Ok(s) => {
                        let ended = SessionsEnded::One {
                            user: s.user,
                            session: s.session,
                        };
                        handler(ended, bus, state).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "bad session.close event"),
                }
            }
        })
        .on_event_with(api::PEER_LOST, state, move |event, bus, state| {
            let handler = on_lost.clone();
            async move {
                match proto::from_body::<api::PeerLost>(&event.body) {
                    Ok(lost) => handler(SessionsEnded::Gateway(lost.instance), bus, state).await,
                    Err(e) => tracing::warn!(error = %e, "bad bus.peer_lost event"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_session_covers_only_itself() {
        let ended = SessionsEnded::One {
            user: "ada".into(),
            session: api::session_id("receive", 7),
        };
        assert!(ended.covers("receive-7"));
        assert!(!ended.covers("receive-70"));
        assert!(!ended.covers("receive-2-7"));
    }

    #[test]
    fn a_lost_gateway_covers_every_session_it_made_and_no_other() {
        let ended = SessionsEnded::Gateway("receive-2".into());
        assert!(ended.covers(&api::session_id("receive-2", 1)));
        assert!(ended.covers(&api::session_id("receive-2", 99)));
        assert!(!ended.covers(&api::session_id("receive-22", 1)));
        assert!(!ended.covers(&api::session_id("receive", 2)));
        assert!(!ended.covers("receive-2"));
    }
}
