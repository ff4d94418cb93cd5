//! The socket actor: one task owns the DEALER; reconnects, heartbeats, requests, subscriptions.

use super::handshake::*;
use super::pending::Pending;
use super::subs::Subs;
use super::*;
use crate::svc::Backoff;

/// The wait after a whole round of failed connects (every endpoint tried):
/// 50 ms doubling to 1 s. A failed endpoint with others left to try moves on
/// after 10 ms.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

/// The socket task's state.
pub(super) struct Actor {
    config: Config,
    rx: mpsc::Receiver<Cmd>,
    inbound: mpsc::Sender<Incoming>,
    shared: Arc<Shared>,
    pending: HashMap<u64, Pending>,
    subs: Subs,
    /// Subscriptions waiting for the broker's answer, by pattern: the first
    /// one's id went out with the `subscribe`; later ones on the same pattern
    /// wait for the same answer.
    sub_acks: HashMap<String, Vec<(u64, SubAck)>>,
    ready: bool,
    draining: Option<oneshot::Sender<()>>,
    heartbeat_ms: u64,
    liveness: u32,
    /// The endpoint of the broker this session is with (one of a pair).
    connected_to: String,
}

/// Why a connected session ended.
pub(super) enum End {
    /// Reconnect.
    Lost(&'static str),
    /// Every handle is gone or `close` was called.
    Closed,
}

impl Actor {
    /// A task for `config`, taking commands from `rx`, passing requests for this
    /// service to `inbound`.
    pub(super) fn new(
        config: Config,
        rx: mpsc::Receiver<Cmd>,
        inbound: mpsc::Sender<Incoming>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            config,
            rx,
            inbound,
            shared,
            pending: HashMap::new(),
            subs: Subs::default(),
            sub_acks: HashMap::new(),
            ready: false,
            draining: None,
            heartbeat_ms: 0,
            liveness: 0,
            connected_to: String::new(),
        }
    }

    pub(super) async fn run(mut self) {
        // However this task ends, a panic included, handles stop saying
        // "connected" (health, `sb_gateway_bus_connected`).
        let _disconnected = Disconnected(self.shared.clone());
        let mut failed_rounds = 0;
        // A broker pair: both endpoints, the primary first. A failed attempt
        // (refused, silent, or a passive broker's no) moves to the next one at
        // once; a whole round of failures backs off.
        let endpoints = super::endpoints(&self.config.broker);
        let mut at = 0;
        loop {
            // One connect attempt, serving commands (requests wait in `pending`)
            // while it runs.
            let mut config = self.config.clone();
            config.broker.clone_from(&endpoints[at]);
            let attempt = connect_once(config, self.shared.clone());
            tokio::pin!(attempt);
            let mut sweep = tokio::time::interval(SWEEP);
            let connected = loop {
                tokio::select! {
                    result = &mut attempt => break result,
                    _ = sweep.tick() => self.expire(proto::now_ms()),
                    cmd = self.rx.recv() => match cmd {
                        None => return,
                        Some(Cmd::Close(done)) => { let _ = done.send(()); return; }
                        Some(cmd) => self.on_cmd_offline(cmd),
                    },
                }
            };
            self.expire(proto::now_ms());
            let Some((mut socket, welcome)) = connected else {
                at = (at + 1) % endpoints.len();
                let round_done = at == 0;
                let wait = if round_done {
                    RECONNECT.delay(failed_rounds).as_millis() as u64
                } else {
                    10
                };
                if let End::Closed = self.wait_while_disconnected(wait).await {
                    return;
                }
                if round_done {
                    failed_rounds += 1;
                }
                continue;
            };
            self.connected_to.clone_from(&endpoints[at]);
            failed_rounds = 0;
            self.heartbeat_ms = u64::from(welcome.heartbeat_ms).max(10);
            self.liveness = welcome.liveness.max(1);
            // Send under the smaller of our cap and the broker's: what the
            // broker's socket would refuse (closing the connection) fails here.
            let cap = match welcome.max_message as usize {
                0 => self.config.max_message_bytes,
                theirs => theirs.min(self.config.max_message_bytes),
            };
            self.shared.max_message.store(cap, Ordering::Relaxed);
            let end = self.session(&mut socket).await;
            self.shared.connected.store(false, Ordering::Release);
            self.fail_unsent_safe();
            self.settle_sub_acks();
            // A drain waiting for its ack is complete: without a connection
            // nothing can be routed to us.
            if let Some(done) = self.draining.take() {
                let _ = done.send(());
            }
            match end {
                End::Closed => {
                    let bye = encode_simple(Kind::Bye);
                    let _ = try_send(&mut socket.0, ZmqMessage::from(bye));
                    // Give the writer task a moment to put the bye on the wire.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    return;
                }
                End::Lost(why) => {
                    tracing::warn!(reason = why, broker = %endpoints[at], "broker connection lost; reconnecting");
                    // With a pair, the other broker first: this one is gone
                    // (or, if it is still active, the other says no at once).
                    at = (at + 1) % endpoints.len();
                }
            }
        }
    }

    /// While no connection is up: serve commands for `ms` (requests wait in
    /// `pending`), expire what passes its deadline.
    pub(super) async fn wait_while_disconnected(&mut self, ms: u64) -> End {
        let until = tokio::time::Instant::now() + Duration::from_millis(ms);
        let mut sweep = tokio::time::interval(SWEEP);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return End::Lost("backoff"),
                _ = sweep.tick() => {}
                cmd = self.rx.recv() => match cmd {
                    None => return End::Closed,
                    Some(Cmd::Close(done)) => { let _ = done.send(()); return End::Closed; }
                    Some(cmd) => self.on_cmd_offline(cmd),
                }
            }
            self.expire(proto::now_ms());
        }
    }

    pub(super) fn on_cmd_offline(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Request { id, pending } => {
                self.pending.insert(id, pending);
            }
            Cmd::Subscribe {
                sub,
                pattern,
                tx,
                ack,
            } => {
                // Sent (and answered) when the connection comes back.
                self.subs.add(sub, pattern, tx);
                let _ = ack.send(Ok(()));
            }
            Cmd::Unsubscribe { sub } => {
                self.subs.remove(sub);
            }
            Cmd::Ready => self.ready = true,
            Cmd::Drain(done) => {
                // Not connected: nothing can be routed to us.
                self.ready = false;
                let _ = done.send(());
            }
            Cmd::Send(_) | Cmd::Close(_) => {}
        }
    }

    pub(super) async fn session(&mut self, (socket, monitor): &mut Session) -> End {
        self.shared.connected.store(true, Ordering::Release);
        self.shared.connected_notify.notify_waiters();
        self.shared
            .stats
            .registrations
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(broker = %self.connected_to, instance = %self.config.instance, "registered with the broker");
        // Restore state: subscriptions, readiness, then requests that waited.
        for pattern in self.subs.patterns() {
            let _ = try_send(
                socket,
                ZmqMessage::from(encode_topic(Kind::Subscribe, &pattern)),
            );
        }
        if self.ready {
            let _ = try_send(socket, ZmqMessage::from(encode_simple(Kind::Ready)));
        }
        let now = proto::now_ms();
        let resend: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline > now && (!p.sent || p.idem))
            .map(|(&id, _)| id)
            .collect();
        for id in resend {
            if let Some(p) = self.pending.get_mut(&id) {
                p.sent = try_send(socket, ZmqMessage::from(p.frame.clone()));
            }
        }

        let mut last_recv = proto::now_ms();
        let mut last_tick = last_recv;
        let mut heartbeat = tokio::time::interval(Duration::from_millis(self.heartbeat_ms));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(SWEEP);
        let heartbeat_frame = encode_simple(Kind::Heartbeat);
        loop {
            // Not biased: a steady stream of incoming messages must not starve the
            // commands (replies and new requests) waiting to go out.
            tokio::select! {
                event = monitor.next() => {
                    if let Some(SocketEvent::Disconnected(_)) | None = event {
                        return End::Lost("connection closed");
                    }
                }
                msg = socket.recv() => {
                    match msg {
                        Ok(msg) => {
                            last_recv = proto::now_ms();
                            if let Some(end) = self.on_message(socket, msg) { return end; }
                            for _ in 0..255 {
                                match socket.recv().now_or_never() {
                                    Some(Ok(msg)) => if let Some(end) = self.on_message(socket, msg) { return end; },
                                    Some(Err(_)) | None => break,
                                }
                            }
                        }
                        Err(_) => return End::Lost("receive error"),
                    }
                }
                cmd = self.rx.recv() => {
                    match cmd {
                        None => return End::Closed,
                        Some(cmd) => if let Some(end) = self.on_cmd(socket, cmd) { return end; },
                    }
                    for _ in 0..255 {
                        match self.rx.try_recv() {
                            Ok(cmd) => if let Some(end) = self.on_cmd(socket, cmd) { return end; },
                            Err(_) => break,
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    let now = proto::now_ms();
                    // This process itself did not run for a while (stopped,
                    // starved, a paused VM): the broker's silence while we were
                    // not looking is not the broker's. Count from where we left.
                    let gap = now.saturating_sub(last_tick);
                    if gap > self.heartbeat_ms * 2 {
                        last_recv = last_recv.saturating_add(gap - self.heartbeat_ms).min(now);
                        tracing::warn!(stalled_ms = gap, "this process did not run for a while; the broker's silence during it is not counted");
                    }
                    last_tick = now;
                    if now.saturating_sub(last_recv) > self.heartbeat_ms * u64::from(self.liveness) {
                        return End::Lost("broker silent for too long");
                    }
                    let _ = try_send(socket, ZmqMessage::from(heartbeat_frame.clone()));
                }
                _ = sweep.tick() => self.expire(proto::now_ms()),
            }
            // Let the socket's writer task (and, on a shared runtime, the
            // handlers) run between batches: zeromq's reads do not yield by
            // themselves.
            tokio::task::yield_now().await;
        }
    }

    pub(super) fn on_cmd(&mut self, socket: &mut DealerSocket, cmd: Cmd) -> Option<End> {
        match cmd {
            Cmd::Request { id, mut pending } => {
                if try_send(socket, ZmqMessage::from(pending.frame.clone())) {
                    pending.sent = true;
                    self.pending.insert(id, pending);
                } else {
                    pending.tx.send(Err(Error::new(
                        ErrorCode::Overloaded,
                        "bus send queue full",
                    )));
                }
            }
            Cmd::Send(msg) => {
                let _ = try_send(socket, msg);
            }
            Cmd::Subscribe {
                sub,
                pattern,
                tx,
                ack,
            } => {
                if let Some(waiting) = self.sub_acks.get_mut(&pattern) {
                    self.subs.add(sub, pattern, tx);
                    waiting.push((sub, ack));
                } else if self.subs.add(sub, pattern.clone(), tx) {
                    let frame = encode_topic_id(Kind::Subscribe, &pattern, sub);
                    if try_send(socket, ZmqMessage::from(frame)) {
                        self.sub_acks.insert(pattern, vec![(sub, ack)]);
                    } else {
                        self.subs.remove(sub);
                        let _ = ack.send(Err(Error::new(
                            ErrorCode::Overloaded,
                            "bus send queue full",
                        )));
                    }
                } else {
                    let _ = ack.send(Ok(()));
                }
            }
            Cmd::Unsubscribe { sub } => {
                if let Some(pattern) = self.subs.remove(sub) {
                    // An answer still awaited for the pattern (lost, or late)
                    // must not hold a later subscription to it: that one is
                    // sent afresh.
                    if let Some(waiting) = self.sub_acks.remove(&pattern) {
                        for (_, ack) in waiting {
                            let _ = ack.send(Err(Error::new(
                                ErrorCode::Unavailable,
                                "unsubscribed before the broker answered",
                            )));
                        }
                    }
                    let _ = try_send(
                        socket,
                        ZmqMessage::from(encode_topic(Kind::Unsubscribe, &pattern)),
                    );
                }
            }
            Cmd::Ready => {
                self.ready = true;
                let _ = try_send(socket, ZmqMessage::from(encode_simple(Kind::Ready)));
            }
            Cmd::Drain(done) => {
                self.ready = false;
                self.draining = Some(done);
                let _ = try_send(socket, ZmqMessage::from(encode_simple(Kind::Drain)));
            }
            Cmd::Close(done) => {
                let _ = done.send(());
                return Some(End::Closed);
            }
        }
        None
    }

    pub(super) fn on_message(&mut self, socket: &mut DealerSocket, msg: ZmqMessage) -> Option<End> {
        let mut frames = msg.into_vecdeque();
        let (token, payload) = match frames.len() {
            1 => (None, frames.pop_front()?),
            2 => (frames.pop_front(), frames.pop_front()?),
            _ => return None,
        };
        let env = match proto::decode(&payload) {
            Ok(env) => env,
            Err(e) => {
                tracing::debug!(error = %e, "undecodable message from the broker dropped");
                return None;
            }
        };
        match (env.kind, token) {
            (Kind::Request, Some(token)) => self.on_request(socket, token, env),
            (Kind::Reply, None) => {
                if let Some(p) = self.pending.remove(&env.id) {
                    let result = match env.error.clone() {
                        Some(error) => Err(error.into()),
                        None => Ok(env),
                    };
                    p.tx.send(result);
                }
            }
            (Kind::Event, None) => {
                let dropped = self.subs.deliver(&env);
                if dropped > 0 {
                    self.shared
                        .stats
                        .events_dropped
                        .fetch_add(dropped, Ordering::Relaxed);
                }
            }
            (Kind::Subscribe, None) => self.on_subscribe_answer(env),
            (Kind::Drain, None) if env.op == "ack" => {
                if let Some(done) = self.draining.take() {
                    let _ = done.send(());
                }
            }
            (Kind::Drain, None) => self.shared.drain_requested.notify_waiters(),
            (Kind::Bye, None) => return Some(End::Lost("the broker does not know us")),
            _ => {}
        }
        None
    }

    pub(super) fn on_request(&mut self, socket: &mut DealerSocket, token: Bytes, env: Envelope) {
        if self.config.service.is_empty() {
            return;
        }
        if let Err(e) = self.inbound.try_send(Incoming {
            token,
            env: Box::new(env),
        }) {
            // Only when the service stopped reading or exceeded its own credit.
            let (token, env) = match e {
                mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i) => {
                    (i.token, i.env)
                }
            };
            let reply = Envelope::error_reply(
                env.id,
                &env.trace,
                proto::ErrorBody::new(ErrorCode::Overloaded, "instance request queue full"),
            );
            tracing::warn!(op = %env.op, "request refused: instance queue full");
            if let Ok(frame) = proto::encode(&reply) {
                let mut msg = ZmqMessage::from(frame);
                msg.push_front(token);
                let _ = try_send(socket, msg);
            }
        }
    }

    /// The broker's answer to a `subscribe`: taken, or refused. A refused
    /// pattern's subscriptions end here and their callers get the error; a
    /// refusal nobody waits for (a pattern restored after a reconnect) is
    /// logged and counted: its events will not come.
    fn on_subscribe_answer(&mut self, env: Envelope) {
        let waiting = self.sub_acks.remove(&env.to).unwrap_or_default();
        match env.error {
            None => {
                for (_, ack) in waiting {
                    let _ = ack.send(Ok(()));
                }
            }
            Some(error) => {
                self.shared
                    .stats
                    .subs_refused
                    .fetch_add(1, Ordering::Relaxed);
                if waiting.is_empty() {
                    tracing::error!(pattern = %env.to, error = %error.message, "the broker refused a subscription: its events will not arrive");
                }
                for (sub, ack) in waiting {
                    self.subs.remove(sub);
                    let _ = ack.send(Err(error.clone().into()));
                }
            }
        }
    }

    /// After a connection loss: subscriptions waiting for an answer are held
    /// as far as this side knows; they are sent again with the others when the
    /// connection comes back.
    pub(super) fn settle_sub_acks(&mut self) {
        for (_, waiting) in self.sub_acks.drain() {
            for (_, ack) in waiting {
                let _ = ack.send(Ok(()));
            }
        }
    }

    /// Fails requests whose deadline (plus grace) has passed.
    pub(super) fn expire(&mut self, now: u64) {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline + DEADLINE_GRACE_MS <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                let error = if p.sent {
                    Error::new(ErrorCode::Timeout, "no reply before the deadline")
                } else {
                    Error::new(
                        ErrorCode::Unavailable,
                        "no broker connection before the deadline",
                    )
                };
                p.tx.send(Err(error));
            }
        }
    }

    /// After a connection loss: requests that were sent and are not idempotent
    /// cannot be known to be safe to send again; they fail now with `unavailable`.
    pub(super) fn fail_unsent_safe(&mut self) {
        let lost: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.sent && !p.idem)
            .map(|(&id, _)| id)
            .collect();
        for id in lost {
            if let Some(p) = self.pending.remove(&id) {
                p.tx.send(Err(Error::new(
                    ErrorCode::Unavailable,
                    "broker connection lost with the request in flight",
                )));
            }
        }
        for p in self.pending.values_mut() {
            p.sent = false;
        }
    }
}

/// Clears `connected` when the socket task ends.
struct Disconnected(Arc<Shared>);

impl Drop for Disconnected {
    fn drop(&mut self) {
        self.0.connected.store(false, Ordering::Release);
    }
}
