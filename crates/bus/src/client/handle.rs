//! [`Handle`]: what every task holds to use the bus.

use super::pending::{Answer, Pending};
use super::*;

impl Handle {
    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    /// This instance's service (empty for a pure client).
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// Whether the socket task runs on a thread of its own (`bus-io`), not on
    /// the runtime that connected: [`Handle::call_then`]'s callbacks run there.
    pub fn has_own_thread(&self) -> bool {
        self.shared.own_thread
    }

    /// Whether the client is registered with a broker now.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Client counters.
    pub fn stats(&self) -> &ClientStats {
        &self.shared.stats
    }

    /// Waits until registered with the broker, at most `timeout`.
    ///
    /// # Errors
    ///
    /// `unavailable` when the timeout passes first.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), Error> {
        let wait = async {
            loop {
                let notified = self.shared.connected_notify.notified();
                if self.is_connected() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::new(ErrorCode::Unavailable, "no broker connection"))
    }

    /// Completes when the broker (or the supervisor through it) asks this instance
    /// to drain.
    pub async fn drain_requested(&self) {
        self.shared.drain_requested.notified().await;
    }

    /// Calls `op` of the broker's own service (`$broker`: `ls`, `stats`, `owner`)
    /// and decodes its reply as `T` (types in `switchboard_proto::admin`).
    ///
    /// # Errors
    ///
    /// As [`Handle::call`], and `internal` for a reply that is not a `T`.
    pub async fn broker<T: serde::de::DeserializeOwned>(
        &self,
        op: &str,
        body: Vec<u8>,
        options: CallOptions,
    ) -> Result<T, Error> {
        let reply = self.call(proto::BROKER_SERVICE, op, body, options).await?;
        Ok(proto::from_body(&reply.body)?)
    }

    /// The spans of `query` (one trace, or the slowest recent requests) from the
    /// broker and every instance on the bus, ordered by start. An instance that
    /// does not answer within `each` is left out.
    ///
    /// # Errors
    ///
    /// When the broker does not answer.
    pub async fn collect_spans(
        &self,
        query: &proto::admin::TraceQuery,
        each: std::time::Duration,
    ) -> Result<Vec<proto::admin::Span>, Error> {
        let body = proto::to_body(query)?;
        let options = CallOptions {
            timeout: Some(each),
            ..CallOptions::default()
        };
        let mut spans: Vec<proto::admin::Span> =
            self.broker("trace", body.clone(), options.clone()).await?;
        let list: Vec<proto::InstanceInfo> = self.broker("ls", Vec::new(), options.clone()).await?;
        let asks = list.iter().filter(|i| !i.service.is_empty()).map(|i| {
            let options = CallOptions {
                instance: Some(i.instance.clone()),
                ..options.clone()
            };
            self.call(&i.service, "$trace", body.clone(), options)
        });
        for reply in futures::future::join_all(asks).await.into_iter().flatten() {
            if let Ok(more) = proto::from_body::<Vec<proto::admin::Span>>(&reply.body) {
                spans.extend(more);
            }
        }
        spans.sort_by_key(|s| (s.start_us, std::cmp::Reverse(s.duration_us)));
        Ok(spans)
    }

    /// Sends a request and waits for its reply (or the error that ends it).
    ///
    /// # Errors
    ///
    /// The reply's error, or `unavailable`/`timeout`/`overloaded` from the bus;
    /// `too_large` (not sent) for a request over the bus limit.
    pub async fn call(
        &self,
        service: &str,
        op: &str,
        body: Vec<u8>,
        options: CallOptions,
    ) -> Result<Envelope, Error> {
        let (env, timed) = self.request_for(service, op, body, options);
        let Some(timer) = timed else {
            return self.request(env).await;
        };
        let trace = env.trace.clone();
        let result = self.request(env).await;
        call_span(&self.shared, timer, &trace, service, op, &result);
        result
    }

    /// As [`Handle::call`], with the outcome handed to `then` instead of
    /// awaited: no task, no channel and no future per request, for a caller
    /// with many requests in flight (the gateway). `then` runs exactly once: on
    /// the bus socket's task (the caller's runtime thread when they share a
    /// current_thread runtime, else the bus's own thread), or on the caller's
    /// for a request refused before it is queued, or wherever the socket task
    /// is dropped. It must be short and must not block; a panic in it ends
    /// there.
    ///
    /// Never waits: when the socket task's queue is full, the request waits
    /// for room on a task of its own (on the caller's runtime; with none, it
    /// is answered `overloaded`). Requests waiting so may go out in another
    /// order than they were made; nothing on the bus orders a caller's
    /// requests (a service handles many at once), and the caller's own caps
    /// on what it has in flight bound how many wait.
    pub fn call_then(
        &self,
        service: &str,
        op: &str,
        body: Vec<u8>,
        options: CallOptions,
        then: impl FnOnce(Result<Envelope, Error>) + Send + Sync + 'static,
    ) {
        let (env, timed) = self.request_for(service, op, body, options);
        let answer = match timed {
            None => Answer::then(Box::new(then)),
            Some(timer) => {
                // The shared state, not a handle: a handle held by a pending
                // request would keep the socket task from seeing the last
                // handle go.
                let (shared, trace) = (self.shared.clone(), env.trace.clone());
                let (service, op) = (service.to_owned(), op.to_owned());
                Answer::then(Box::new(move |result: Result<Envelope, Error>| {
                    call_span(&shared, timer, &trace, &service, &op, &result);
                    then(result);
                }))
            }
        };
        let Some(cmd) = self.request_cmd(env, answer) else {
            return;
        };
        match self.tx.try_send(cmd) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(cmd)) => {
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        let tx = self.tx.clone();
                        // A send that fails drops the command: its answer then
                        // says `unavailable`.
                        rt.spawn(async move {
                            let _ = tx.send(cmd).await;
                        });
                    }
                    Err(_) => {
                        if let Cmd::Request { pending, .. } = cmd {
                            pending.tx.send(Err(Error::new(
                                ErrorCode::Overloaded,
                                "bus send queue full",
                            )));
                        }
                    }
                }
            }
            // Dropped: its answer says `unavailable`.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// The request envelope of a call, and its span's timer when the call is
    /// a span of a trace (an onward call from a handler, or the gateway's).
    fn request_for(
        &self,
        service: &str,
        op: &str,
        body: Vec<u8>,
        options: CallOptions,
    ) -> (Envelope, Option<crate::svc::trace::Timer>) {
        let timeout_ms = options
            .timeout
            .map(|t| t.as_millis() as u64)
            .unwrap_or(self.shared.default_timeout_ms);
        let deadline = options
            .deadline
            .unwrap_or_else(|| proto::now_ms() + timeout_ms);
        let mut env = Envelope::request(service, op, body, deadline);
        env.instance = options.instance;
        env.key = options.key;
        env.user = options.user;
        env.session = options.session;
        env.idem = options.idem;
        let timed =
            (!options.trace.is_empty() && !options.no_span).then(crate::svc::trace::Timer::start);
        env.trace = if options.trace.is_empty() {
            new_trace_id()
        } else {
            options.trace
        };
        (env, timed)
    }

    /// Sends a fully built request envelope (its `id` and `from` are set here).
    ///
    /// # Errors
    ///
    /// As [`Handle::call`].
    pub async fn request(&self, env: Envelope) -> Result<Envelope, Error> {
        let (tx, rx) = oneshot::channel();
        self.send_request(env, Answer::wait(tx)).await;
        // The socket task answers every request by its deadline (plus grace) and
        // drops the sender if it stops, so this wait ends without a timer of its own.
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(closed()),
        }
    }

    /// Hands `env` to the socket task, its outcome to go to `answer`; a request
    /// refused here is answered at once.
    async fn send_request(&self, env: Envelope, answer: Answer) {
        if let Some(cmd) = self.request_cmd(env, answer) {
            // A send that fails drops the command, and with it the answer,
            // which then says `unavailable`.
            let _ = self.tx.send(cmd).await;
        }
    }

    /// The command that sends `env`, its outcome to go to `answer`; `None`
    /// for a request refused here (answered at once).
    fn request_cmd(&self, mut env: Envelope, answer: Answer) -> Option<Cmd> {
        env.kind = Kind::Request;
        env.id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        env.from.clone_from(&self.shared.instance);
        if env.deadline == 0 {
            env.deadline = proto::now_ms() + self.shared.default_timeout_ms;
        }
        let frame = match self.frame_of(&env) {
            Ok(frame) => frame,
            Err(e) => {
                answer.send(Err(e));
                return None;
            }
        };
        Some(Cmd::Request {
            id: env.id,
            pending: Pending::new(Bytes::from(frame), env.deadline, env.idem, answer),
        })
    }

    fn frame_of(&self, env: &Envelope) -> Result<Vec<u8>, Error> {
        // The broker would drop it as malformed and the caller would wait for its
        // deadline: refuse it here, at once.
        env.check_lengths()
            .map_err(|e| Error::bad_request(e.to_string()))?;
        let frame =
            proto::encode(env).map_err(|e| Error::new(ErrorCode::TooLarge, e.to_string()))?;
        check_size(&self.shared, Kind::Request, frame.len())?;
        Ok(frame)
    }

    /// Publishes an event on `topic`.
    ///
    /// # Errors
    ///
    /// `bad_request` for an invalid topic; `too_large` for an event over the
    /// bus limit (not sent); `unavailable` when closed.
    pub async fn publish(&self, topic_name: &str, body: Vec<u8>) -> Result<(), Error> {
        topic::validate(topic_name, false).map_err(|e| Error::bad_request(e.to_string()))?;
        let mut env = Envelope::new(Kind::Event);
        env.to = topic_name.to_owned();
        env.from.clone_from(&self.shared.instance);
        env.body = proto::ByteBuf::from(body);
        self.send_env(&env).await
    }

    /// Subscribes to a pattern (see [`switchboard_proto::topic`]).
    ///
    /// # Errors
    ///
    /// `bad_request` for an invalid pattern; `unavailable` when closed.
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, Error> {
        let (tx, rx) = mpsc::channel(SUB_CAPACITY);
        let sub = self.register(pattern, tx).await?;
        Ok(Subscription {
            rx,
            sub,
            tx: self.tx.clone(),
        })
    }

    /// Tells the socket task of a subscription to `pattern` delivering into
    /// `tx`; returns its id.
    /// Waits for the broker's answer: a subscription it refuses (past its
    /// per-peer cap) is an error here, never a subscription that silently
    /// delivers nothing. A broker that does not answer subscriptions (older than
    /// protocol 1.2) is taken at its word after the default timeout.
    async fn register(&self, pattern: &str, tx: mpsc::Sender<Box<Envelope>>) -> Result<u64, Error> {
        topic::validate(pattern, true).map_err(|e| Error::bad_request(e.to_string()))?;
        let sub = self.shared.next_sub.fetch_add(1, Ordering::Relaxed);
        let (ack, answer) = oneshot::channel();
        self.tx
            .send(Cmd::Subscribe {
                sub,
                pattern: pattern.to_owned(),
                tx,
                ack,
            })
            .await
            .map_err(|_| closed())?;
        let wait = Duration::from_millis(self.shared.default_timeout_ms);
        match tokio::time::timeout(wait, answer).await {
            Ok(Ok(Ok(()))) => Ok(sub),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(closed()),
            Err(_) => {
                tracing::debug!(pattern, "no answer to a subscription; taken as held");
                Ok(sub)
            }
        }
    }

    /// Subscribes to a pattern, its events going to `tx`, a channel shared with
    /// other subscriptions: one consumer for many topics (the gateway's
    /// per-client topics), no channel and no task per subscription. Events that
    /// find `tx` full are dropped and counted as for [`Handle::subscribe`].
    /// [`SharedSubscription::close`] unsubscribes. The events do not say which
    /// subscription they came through: a consumer that may subscribe a topic
    /// again must close the old subscription first.
    ///
    /// # Errors
    ///
    /// As [`Handle::subscribe`].
    pub async fn subscribe_into(
        &self,
        pattern: &str,
        tx: mpsc::Sender<Box<Envelope>>,
    ) -> Result<SharedSubscription, Error> {
        let sub = self.register(pattern, tx).await?;
        Ok(SharedSubscription {
            sub,
            tx: self.tx.clone(),
            closed: false,
        })
    }

    /// Sends the reply to an [`Incoming`] request. A reply over the bus limit
    /// is not sent: the caller gets a `too_large` error reply instead (counted
    /// in [`ClientStats::too_large`] and `sb_bus_too_large_total`), and the
    /// connection, with everything else in flight on it, stays up.
    ///
    /// # Errors
    ///
    /// `too_large` when the reply was replaced so; `unavailable` when the
    /// client is closed.
    pub async fn reply(&self, token: Bytes, env: &Envelope) -> Result<(), Error> {
        let encoded =
            proto::encode(env).map_err(|e| Error::new(ErrorCode::TooLarge, e.to_string()));
        let (frame, refused) = match encoded
            .and_then(|f| check_size(&self.shared, Kind::Reply, f.len()).map(|()| f))
        {
            Ok(frame) => (frame, None),
            Err(e) => {
                let reply = Envelope::error_reply(env.id, &env.trace, e.clone().into());
                (proto::encode(&reply)?, Some(e))
            }
        };
        let mut msg = ZmqMessage::from(frame);
        msg.push_front(token);
        self.tx.send(Cmd::Send(msg)).await.map_err(|_| closed())?;
        refused.map_or(Ok(()), Err)
    }

    /// Tells the broker this instance takes requests (and again after reconnects).
    ///
    /// # Errors
    ///
    /// `unavailable` when the client is closed.
    pub async fn ready(&self) -> Result<(), Error> {
        self.tx.send(Cmd::Ready).await.map_err(|_| closed())
    }

    /// Takes this instance out of rotation and waits (at most `timeout`) until the
    /// broker has acknowledged: after that no new request arrives.
    ///
    /// # Errors
    ///
    /// `unavailable` when closed or not acknowledged in time.
    pub async fn drain(&self, timeout: Duration) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Drain(tx)).await.map_err(|_| closed())?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Error::new(ErrorCode::Unavailable, "drain not acknowledged")),
        }
    }

    /// Asks the broker to drain another instance (supervisor use).
    ///
    /// # Errors
    ///
    /// `unavailable` when the client is closed.
    pub async fn drain_instance(&self, instance: &str) -> Result<(), Error> {
        let mut env = Envelope::new(Kind::Drain);
        env.instance = Some(instance.to_owned());
        self.send_env(&env).await
    }

    /// Says `bye` and stops the socket task, waiting at most `timeout`.
    pub async fn close(&self, timeout: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close(tx)).await.is_ok() {
            let _ = tokio::time::timeout(timeout, rx).await;
        }
    }

    async fn send_env(&self, env: &Envelope) -> Result<(), Error> {
        let frame =
            proto::encode(env).map_err(|e| Error::new(ErrorCode::TooLarge, e.to_string()))?;
        check_size(&self.shared, env.kind, frame.len())?;
        self.tx
            .send(Cmd::Send(ZmqMessage::from(frame)))
            .await
            .map_err(|_| closed())
    }
}

/// Records the span of a call made within a trace.
fn call_span(
    shared: &Shared,
    timer: crate::svc::trace::Timer,
    trace: &str,
    service: &str,
    op: &str,
    result: &Result<Envelope, Error>,
) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.code.as_str(),
    };
    timer.finish(
        trace,
        &shared.instance,
        format_args!("call {service}.{op}"),
        outcome,
    );
}
