//! The gateway's own ops, for a frame without `to`: `ping`, `whoami`, `subscribe` and
//! `unsubscribe` (within the policy), and `auth` (a token, or a fresher one).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use switchboard_bus::proto::{self, ErrorCode};

use super::Client;
use crate::{jwt, wire};

impl Client {
    pub(super) async fn gateway_op(self: &Arc<Self>, m: wire::ClientMsg, binary: bool) {
        let op = m.op.as_deref().unwrap_or_default();
        let ok = |data: serde_json::Value| self.out.outbox.reply(wire::ok(&m.id, &data, binary));
        let err = |code: ErrorCode, text: &str| {
            self.out
                .outbox
                .reply(wire::error(&m.id, code, text, binary))
        };
        let field = |name: &str| {
            m.topic
                .clone()
                .filter(|_| name == "topic")
                .or_else(|| m.token.clone().filter(|_| name == "token"))
                .or_else(|| m.data.as_ref()?.str_field(name))
        };
        match op {
            "ping" => ok(serde_json::json!({})),
            // Who this connection is: the user stamped on its requests (none
            // yet when a token is still awaited), its session, and when its
            // token ends. A client learns its anonymous id from it.
            "whoami" => {
                let expires_ms = self.expires_ms.load(Ordering::Relaxed);
                let user = self.user();
                let authenticated = user.is_some();
                let mut me = serde_json::json!({ "user": user, "session": self.session });
                if authenticated && expires_ms > 0 {
                    me["expires"] = (expires_ms / 1000).into();
                }
                ok(me)
            }
            "subscribe" | "unsubscribe" => {
                let Some(topic) = field("topic") else {
                    return err(ErrorCode::BadRequest, "missing topic");
                };
                if let Err(e) = proto::topic::validate(&topic, true) {
                    return err(ErrorCode::BadRequest, &e.to_string());
                }
                if self.user().is_none() {
                    return err(ErrorCode::Unauthorized, "authenticate first");
                }
                if op == "unsubscribe" {
                    self.unsubscribe(&topic).await;
                    return ok(serde_json::json!({}));
                }
                let user = self.user().unwrap_or_default();
                if let Err(why) = self.gw.settings.policy.check_subscribe(&topic, &user) {
                    return err(ErrorCode::Forbidden, &why);
                }
                match self.subscribe(&topic).await {
                    Ok(()) => ok(serde_json::json!({})),
                    Err(e) => err(e.code, &e.message),
                }
            }
            "auth" => {
                let Some(rules) = self.gw.settings.tokens.clone() else {
                    return err(ErrorCode::BadRequest, "this gateway runs without authentication");
                };
                let Some(token) = field("token") else {
                    return err(ErrorCode::BadRequest, "missing token");
                };
                match jwt::verify(&rules, &token, proto::now_ms() / 1000) {
                    Ok(verified) => {
                        if let Some(current) = self.user() {
                            if current != verified.user {
                                return err(ErrorCode::Forbidden, "already authenticated as another user");
                            }
                            // A newer token for the same user extends the connection.
                            self.expires_ms.store(verified.expires_s.saturating_mul(1000), Ordering::Relaxed);
                            return ok(serde_json::json!({ "user": current, "expires": verified.expires_s }));
                        }
                        let reply = serde_json::json!({ "user": verified.user, "expires": verified.expires_s });
                        match self.open_session(verified).await {
                            Ok(()) => ok(reply),
                            Err(why) => err(ErrorCode::Overloaded, &why),
                        }
                    }
                    Err(reason) => {
                        crate::metrics::AUTH_FAILURES.increment(1);
                        err(ErrorCode::Unauthorized, &reason)
                    }
                }
            }
            other => err(
                ErrorCode::UnknownOp,
                &format!("the gateway has no op {other:?} (ping, whoami, subscribe, unsubscribe, auth); name a service in \"to\""),
            ),
        }
    }
}
