//! Requests: validation, caps, placing (dispatch or hold), picking an instance, keyed ownership, replies, failures.

use super::*;

impl Router {
    // --- requests ---

    pub(super) fn on_request(
        &mut self,
        caller: PeerId,
        head: &Head<'_>,
        payload: &Bytes,
        now: u64,
    ) {
        if head.to == BROKER_SERVICE {
            return self.broker_op(caller, head, now);
        }
        let fail_now = |router: &mut Self, code: ErrorCode, message: String| {
            router.stats.errors += 1;
            let env = Envelope::error_reply(head.id, head.trace, ErrorBody::new(code, message));
            router.send_to_peer(caller, &env);
        };
        // Forwarded beside its route token, a request this large would be over
        // the worker's cap and close the worker's connection (every request in
        // flight on it lost): the caller gets `too_large` instead.
        let max = proto::max_envelope_len(self.settings.max_message_bytes, Kind::Request);
        if payload.len() > max {
            self.too_large("request", payload.len(), max);
            return fail_now(
                self,
                ErrorCode::TooLarge,
                format!(
                    "request of {} bytes is over the bus limit of {max} bytes",
                    payload.len()
                ),
            );
        }
        if proto::validate_name(head.to).is_err() || proto::validate_name(head.op).is_err() {
            return fail_now(
                self,
                ErrorCode::BadRequest,
                "invalid service or op name".into(),
            );
        }
        let svc = match self.service_idx.get(head.to) {
            Some(&svc) => svc,
            // Just took over as the active broker of a pair: the service's
            // instances are on their way here; hold it.
            None if self.regathering(now) && self.services.len() < self.settings.max_services => {
                self.service(head.to)
            }
            None => {
                return fail_now(
                    self,
                    ErrorCode::UnknownService,
                    format!("{}: no such service", head.to),
                )
            }
        };
        let Some(peer) = self.peers.get_mut(&caller) else {
            return;
        };
        if peer.outstanding >= self.settings.max_inflight_per_client {
            let cap = self.settings.max_inflight_per_client;
            return fail_now(
                self,
                ErrorCode::Overloaded,
                format!("more than {cap} requests in flight from this peer"),
            );
        }
        let latest = now + self.settings.max_deadline_ms;
        let deadline = if head.deadline == 0 {
            now + self
                .settings
                .default_deadline_ms
                .min(self.settings.max_deadline_ms)
        } else if head.deadline > latest {
            // A far-future deadline would hold the request (and its frame) for
            // that long: cut it to the cap.
            self.stats.deadlines_capped += 1;
            latest
        } else {
            head.deadline
        };
        if deadline <= now {
            return fail_now(self, ErrorCode::Timeout, "deadline already passed".into());
        }
        peer.outstanding += 1;
        let token = self.next_token;
        self.next_token += 1;
        let route = match (head.instance, head.key) {
            (Some(instance), _) if head.op.starts_with('$') => Route::Control(instance.to_owned()),
            (Some(instance), _) => Route::Instance(instance.to_owned()),
            (None, Some(key)) => Route::Key(key.to_owned()),
            (None, None) => Route::Any,
        };
        self.reqs.insert(
            token,
            Req {
                caller,
                id: head.id,
                frame: payload.clone(),
                service: svc,
                route,
                worker: None,
                received: now,
                deadline,
                idem: head.idem,
                // The head was decoded from `payload`: its strings are slices of it.
                trace: payload.slice_ref(head.trace.as_bytes()),
                op: payload.slice_ref(head.op.as_bytes()),
                timer: switchboard_svc::trace::Timer::start(),
            },
        );
        self.expiry.push(Reverse((deadline, token)));
        self.place(token);
    }

    /// Dispatches a request, or holds it in its service's queue.
    pub(super) fn place(&mut self, token: Token) {
        let Some(req) = self.reqs.get(&token) else {
            return;
        };
        let svc = req.service;
        if let Some(worker) = self.pick(svc, &req.route) {
            return self.dispatch(token, worker);
        }
        if self.services[svc].queue.len() >= self.settings.max_held_per_service {
            let name = self.services[svc].name.clone();
            return self.fail(
                token,
                ErrorCode::Overloaded,
                format!("{name}: request queue full"),
            );
        }
        self.stats.held += 1;
        self.services[svc].queue.push_back(token);
    }

    /// The instance a request should go to now, if one can take it.
    pub(super) fn pick(&self, svc: usize, route: &Route) -> Option<PeerId> {
        let has_room =
            |p: &Peer| p.state == PeerState::Ready && (p.inflight.len() as u32) < p.credit;
        let service = &self.services[svc];
        match route {
            Route::Any => {
                // Fewest in flight; among equals, the first after the rotating
                // cursor, so that an idle service still spreads its load.
                let n = service.instances.len();
                let start = service.cursor.get() % n.max(1);
                let pick = (0..n)
                    .map(|i| service.instances[(start + i) % n])
                    .filter_map(|pid| self.peers.get(&pid).map(|p| (pid, p)))
                    .filter(|(_, p)| has_room(p))
                    .min_by_key(|(_, p)| p.inflight.len())
                    .map(|(pid, _)| pid);
                if pick.is_some() {
                    service.cursor.set(start + 1);
                }
                pick
            }
            Route::Instance(name) => self
                .by_instance
                .get(name)
                .filter(|pid| service.instances.contains(pid))
                .filter(|pid| self.peers.get(pid).is_some_and(has_room))
                .copied(),
            Route::Key(key) => self
                .owner(svc, key)
                .filter(|pid| self.peers.get(pid).is_some_and(has_room)),
            Route::Control(name) => self
                .by_instance
                .get(name)
                .filter(|pid| service.instances.contains(pid))
                .filter(|pid| {
                    self.peers
                        .get(pid)
                        .is_some_and(|p| p.state == PeerState::Ready)
                })
                .copied(),
        }
    }

    /// The ready instance of `svc` that owns `key`: rendezvous (highest random
    /// weight) hashing over the ready instances' names. Stable: an instance joining
    /// takes over only the keys it now wins (about 1/n of them); an instance leaving
    /// gives up only its own keys.
    pub(super) fn owner(&self, svc: usize, key: &str) -> Option<PeerId> {
        self.services[svc]
            .instances
            .iter()
            .filter_map(|pid| self.peers.get(pid).map(|p| (pid, p)))
            .filter(|(_, p)| p.state == PeerState::Ready)
            .max_by_key(|(_, p)| (hrw_weight(key, &p.instance), p.instance.as_str()))
            .map(|(&pid, _)| pid)
    }

    pub(super) fn dispatch(&mut self, token: Token, worker: PeerId) {
        let (Some(req), Some(peer)) = (self.reqs.get_mut(&token), self.peers.get_mut(&worker))
        else {
            return;
        };
        req.worker = Some(worker);
        peer.inflight.insert(token);
        let mut msg = ZmqMessage::from(req.frame.clone());
        msg.push_front(Bytes::copy_from_slice(&token.to_be_bytes()));
        msg.push_front(peer.identity.clone());
        self.stats.routed += 1;
        self.out.push(Outgoing { msg, event: false });
    }

    /// Dispatches held requests of `svc` that can go now (bounded scan).
    pub(super) fn drain_queue(&mut self, svc: usize) {
        let mut kept = Vec::new();
        for _ in 0..MAX_QUEUE_SCAN {
            let Some(token) = self.services[svc].queue.pop_front() else {
                break;
            };
            let Some(req) = self.reqs.get(&token) else {
                continue;
            };
            if !self.peers.contains_key(&req.caller) {
                self.reqs.remove(&token);
                continue;
            }
            match self.pick(svc, &req.route) {
                Some(worker) => self.dispatch(token, worker),
                None => {
                    let any = matches!(req.route, Route::Any);
                    kept.push(token);
                    if any {
                        break;
                    }
                }
            }
        }
        let queue = &mut self.services[svc].queue;
        for token in kept.into_iter().rev() {
            queue.push_front(token);
        }
    }

    pub(super) fn on_reply(&mut self, worker: PeerId, token: Token, id: u64, payload: Bytes) {
        match self.reqs.get(&token) {
            // Expired (already answered with `timeout`) or already answered.
            None => {
                self.stats.late_replies += 1;
                return;
            }
            // Retried elsewhere after this worker was declared lost: late.
            Some(r) if r.worker.is_none() => {
                self.stats.late_replies += 1;
                return;
            }
            // Another peer answering a request it was not given, or the right
            // peer with the wrong id: never delivered.
            Some(r) if r.worker != Some(worker) || r.id != id => {
                self.stats.rogue_replies += 1;
                if self.stats.rogue_replies == 1 {
                    let from = self.peers.get(&worker).map(|p| p.instance.clone());
                    tracing::warn!(?from, "reply from a peer the request was not dispatched to dropped (further ones are counted)");
                }
                return;
            }
            Some(_) => {}
        }
        let Some(req) = self.reqs.remove(&token) else {
            return;
        };
        self.finished(&req, "ok");
        if let Some(peer) = self.peers.get_mut(&worker) {
            peer.inflight.remove(&token);
            peer.handled += 1;
        }
        match self.peers.get_mut(&req.caller) {
            Some(caller) => {
                caller.outstanding = caller.outstanding.saturating_sub(1);
                let mut msg = ZmqMessage::from(payload);
                msg.push_front(caller.identity.clone());
                self.stats.replies += 1;
                self.out.push(Outgoing { msg, event: false });
            }
            None => self.stats.late_replies += 1,
        }
        self.drain_queue(req.service);
    }

    /// Counts a request that ended (`ok`: its worker replied; else the broker's
    /// error code) and records its span: received → answered.
    fn finished(&self, req: &Req, outcome: &'static str) {
        let service = &self.services[req.service].name;
        // One clock read for the histogram and the span.
        let elapsed = req.timer.elapsed();
        self.metrics.done(req.service, service, outcome, elapsed);
        if !req.trace.is_empty() {
            let worker = req
                .worker
                .and_then(|w| self.peers.get(&w))
                .map_or("-", |p| p.instance.as_str());
            req.timer.finish_after(
                elapsed,
                req.trace(),
                "broker",
                format_args!("dispatch {service}.{} → {worker}", req.op()),
                outcome,
            );
        }
    }

    /// Ends a request with an error reply from the broker.
    pub(super) fn fail(&mut self, token: Token, code: ErrorCode, message: String) {
        let Some(req) = self.reqs.remove(&token) else {
            return;
        };
        self.finished(&req, code.as_str());
        if let Some(worker) = req.worker.and_then(|w| self.peers.get_mut(&w)) {
            worker.inflight.remove(&token);
        }
        self.stats.errors += 1;
        let env = Envelope::error_reply(req.id, req.trace(), ErrorBody::new(code, message));
        if let Some(caller) = self.peers.get_mut(&req.caller) {
            caller.outstanding = caller.outstanding.saturating_sub(1);
        }
        self.send_to_peer(req.caller, &env);
    }
}
