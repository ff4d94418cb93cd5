//! A request's reply, from the bus to the client's outbox.
//!
//! The bus hands the outcome to [`Asked::answered`] on its socket task
//! ([`switchboard_bus::Handle::call_then`]). With the default single thread
//! the bus shares the gateway's current_thread runtime, and the usual reply is
//! encoded and queued right there, with no task, channel or future per request
//! (each of those was an item of the gateway's profile, issue 24). When the
//! bus runs on a thread of its own (`--threads` > 1), which should do nothing
//! but the socket, each reply is encoded on a task of the gateway's runtime. Either way the rare reply that needs to wait — one
//! carrying grants (subscribing awaits the hub and the bus), or a body large
//! enough to be transcoded off the runtime thread — moves to a task on the
//! gateway's runtime.
//!
//! An [`Asked`] dropped unanswered (a panic while answering, or its task
//! dropped with the runtime) still answers the client (`internal`) and gives
//! back what the request held: the in-flight count and the shares.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use switchboard_bus::proto::{Envelope, ErrorCode};
use switchboard_bus::svc::trace::Timer;
use tokio_tungstenite::tungstenite::Message;

use super::Client;
use crate::wire;

/// What the reply of one request needs to know of it.
pub(super) struct Asked {
    pub(super) conn: Arc<Client>,
    pub(super) to: String,
    pub(super) op: String,
    pub(super) id: wire::Raw,
    pub(super) trace: String,
    pub(super) binary: bool,
    pub(super) timer: Timer,
    /// Set once the reply is queued and the request's hold given back.
    pub(super) answered: bool,
}

impl Asked {
    /// The outcome of the bus call: runs on the bus socket's task, so it never
    /// waits; what would wait goes to a task.
    pub(super) fn answered(self, result: Result<Envelope, switchboard_bus::Error>) {
        let rt = &self.conn.rt;
        match result {
            Ok(env) if env.grants.is_some() || env.body.len() >= wire::OFF_THREAD_BYTES => {
                rt.clone().spawn(self.answered_later(env));
            }
            result if self.conn.gw.bus.has_own_thread() => {
                rt.clone().spawn(async move { self.answer_now(result) });
            }
            result => self.answer_now(result),
        }
    }

    /// Encodes and queues the reply.
    fn answer_now(self, result: Result<Envelope, switchboard_bus::Error>) {
        match result {
            Ok(env) => {
                let reply = wire::ok_body(&self.id, &env.body, &self.trace, self.binary);
                self.done(reply, "ok");
            }
            Err(e) => {
                let reply =
                    wire::error_traced(&self.id, e.code, &e.message, &self.trace, self.binary);
                self.done(reply, e.code.as_str());
            }
        }
    }

    /// A reply with grants to apply first, or a large body to transcode.
    async fn answered_later(self, env: Envelope) {
        if env.grants.is_some() {
            // Boxed: it would make this future larger for the other replies.
            let applied = Box::pin(self.conn.apply_grants(&self.to, env.grants.as_ref())).await;
            if let Err(e) = applied {
                let reply =
                    wire::error_traced(&self.id, e.code, &e.message, &self.trace, self.binary);
                return self.done(reply, e.code.as_str());
            }
        }
        let reply = wire::ok_body_off_thread(
            self.id.clone(),
            env.body.into_vec(),
            self.trace.clone(),
            self.binary,
        )
        .await;
        self.done(reply, "ok");
    }

    /// Queues the reply and lets go of what the request held.
    fn done(mut self, reply: Message, code: &'static str) {
        self.release(reply);
        let conn = &self.conn;
        // Labelled by the policy's names only (made-up names are "other").
        let label = conn.gw.settings.policy.metric_label(&self.to);
        // One clock read for the histogram and the span.
        let elapsed = self.timer.elapsed();
        crate::metrics::request_done(label, code, elapsed);
        self.timer.finish_after(
            elapsed,
            &self.trace,
            conn.gw.bus.instance(),
            format_args!("ws {}.{}", self.to, self.op),
            code,
        );
    }
}

impl Asked {
    /// Gives back what the request held and queues its reply, once: marked
    /// first, so that whatever happens after, `Drop` never answers again nor
    /// gives the counts back twice.
    fn release(&mut self, reply: Message) {
        if std::mem::replace(&mut self.answered, true) {
            return;
        }
        let conn = &self.conn;
        conn.inflight.fetch_sub(1, Ordering::Relaxed);
        conn.give_shares();
        conn.out.outbox.reply(reply);
    }
}

impl Drop for Asked {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let reply = wire::error_traced(
            &self.id,
            ErrorCode::Internal,
            "the gateway lost this reply",
            &self.trace,
            self.binary,
        );
        self.release(reply);
    }
}
