//! One client frame: a call to a service (checked against the policy, with
//! its routing key and trace id) or one of the gateway's own ops; the grants
//! of a service's reply.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use switchboard_bus::proto::{self, ErrorCode, Grants};
use switchboard_bus::{new_trace_id, CallOptions};
use tokio_tungstenite::tungstenite::Message;

use super::Client;
use crate::{jwt, wire};

impl Client {
    pub(super) async fn on_frame(self: &Arc<Self>, msg: &Message, binary: bool) {
        let reply_err = |id: &serde_json::Value, code: ErrorCode, text: &str| {
            self.out.outbox.reply(wire::error(id, code, text, binary));
        };
        let m = match wire::parse(msg) {
            Ok(m) => m,
            Err(e) => return reply_err(&serde_json::Value::Null, ErrorCode::BadRequest, &e),
        };
        let Some(op) = m.op.as_deref() else {
            return reply_err(&m.id, ErrorCode::BadRequest, "missing op");
        };
        let Some(to) = m.to.as_deref() else {
            return self.gateway_op(&m, op, binary).await;
        };
        let Some(user) = self.user() else {
            return reply_err(
                &m.id,
                ErrorCode::Unauthorized,
                "authenticate first: token query parameter or the auth op",
            );
        };
        if proto::validate_name(to).is_err() || proto::validate_name(op).is_err() {
            return reply_err(&m.id, ErrorCode::BadRequest, "invalid service or op name");
        }
        let policy = &self.gw.settings.policy;
        if let Err(why) = policy.check_call(to, op) {
            return reply_err(&m.id, ErrorCode::Forbidden, &why);
        }
        if self.inflight.load(Ordering::Relaxed) >= self.gw.settings.max_inflight_per_conn {
            let text = format!(
                "more than {} requests in flight on this connection",
                self.gw.settings.max_inflight_per_conn
            );
            return reply_err(&m.id, ErrorCode::Overloaded, &text);
        }
        let body = match wire::json_to_body(m.data.as_ref()) {
            Ok(body) => body,
            Err(e) => return reply_err(&m.id, ErrorCode::BadRequest, &e),
        };
        let key = policy
            .key_field(to)
            .and_then(|field| m.data.as_ref()?.get(field)?.as_str().map(str::to_owned));
        let options = CallOptions {
            timeout: Some(Duration::from_millis(self.gw.settings.request_timeout_ms)),
            trace: new_trace_id(),
            user: Some(user),
            session: Some(self.session.clone()),
            key,
            ..CallOptions::default()
        };
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.gw.stats.requests.fetch_add(1, Ordering::Relaxed);
        let conn = self.clone();
        let (to, id) = (to.to_owned(), m.id);
        let op = op.to_owned();
        tokio::spawn(async move {
            let reply = match conn.gw.bus.call(&to, &op, body, options).await {
                Ok(env) => match conn.apply_grants(&to, env.grants.as_ref()).await {
                    Ok(()) => wire::ok(&id, &wire::body_to_json(&env.body), binary),
                    Err(e) => wire::error(&id, e.code, &e.message, binary),
                },
                Err(e) => wire::error(&id, e.code, &e.message, binary),
            };
            conn.out.outbox.reply(reply);
            conn.inflight.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Applies the typed grants of `service`'s reply, each only inside what the
    /// policy lets that service grant. A grant outside it is a service's mistake
    /// (or a compromised service): it is dropped and logged, never applied. A
    /// grant the client's subscription cap refuses fails the reply (`overloaded`).
    async fn apply_grants(
        self: &Arc<Self>,
        service: &str,
        grants: Option<&Grants>,
    ) -> Result<(), switchboard_bus::Error> {
        let Some(grants) = grants else {
            return Ok(());
        };
        for topic in &grants.subscribe {
            if proto::topic::validate(topic, true).is_err() {
                tracing::warn!(service, topic = %topic, "invalid grant dropped");
                continue;
            }
            if let Err(why) = self.gw.settings.policy.check_grant(service, topic) {
                tracing::warn!(service, topic = %topic, reason = %why, "grant outside the policy dropped");
                continue;
            }
            self.subscribe(topic).await?;
        }
        for topic in &grants.unsubscribe {
            self.unsubscribe(topic);
        }
        Ok(())
    }

    async fn gateway_op(self: &Arc<Self>, m: &wire::ClientMsg, op: &str, binary: bool) {
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
                .or_else(|| m.data.as_ref()?.get(name)?.as_str().map(str::to_owned))
        };
        match op {
            "ping" => ok(serde_json::json!({})),
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
                    self.unsubscribe(&topic);
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
                        self.open_session(verified).await;
                        ok(reply)
                    }
                    Err(reason) => err(ErrorCode::Unauthorized, &reason),
                }
            }
            other => err(
                ErrorCode::UnknownOp,
                &format!("the gateway has no op {other:?} (ping, subscribe, unsubscribe, auth); name a service in \"to\""),
            ),
        }
    }
}
