//! Registration: hello and its challenge, register, states, drain forwarding, and losing a peer.

use super::*;

impl Router {
    // --- registration ---

    pub(super) fn on_hello(&mut self, identity: Bytes, payload: &[u8], now: u64) {
        let hello =
            match proto::decode(payload).and_then(|env| proto::from_body::<Hello>(&env.body)) {
                Ok(hello) => hello,
                Err(e) => return self.malformed(&identity, &e.to_string()),
            };
        let names_ok = proto::validate_name(&hello.instance).is_ok()
            && (hello.service.is_empty()
                || (proto::validate_name(&hello.service).is_ok()
                    && !hello.service.starts_with('$')));
        if !names_ok {
            return self.malformed(&identity, "hello with an invalid service or instance name");
        }
        if let Some(ha) = self.ha.as_mut() {
            let was_active = ha.state == crate::ha::State::Active;
            let taken = ha.on_client(now);
            if taken && !was_active {
                self.active_since = Some(now);
            }
            self.stats.ha = ha_describe(self.ha.as_ref());
            if !taken {
                // Passive (or still waiting to hear the partner): the peer
                // tries the other broker of the pair.
                let mut env = Envelope::new(Kind::Hello);
                env.error = Some(ErrorBody::new(
                    ErrorCode::Unavailable,
                    "passive broker: the other broker of the pair is active",
                ));
                return self.send_env(&identity, &env, false);
            }
        }
        if let Some(secret) = self.secret.clone() {
            match &hello.proof {
                None => return self.challenge(identity, &hello, now),
                Some(proof) => {
                    let nonce = self.challenges.remove(&identity);
                    let valid = nonce.is_some_and(|(nonce, _)| {
                        auth::verify(&secret, &nonce, &hello.service, &hello.instance, proof)
                    });
                    if !valid {
                        self.stats.auth_failures += 1;
                        tracing::warn!(instance = %hello.instance, "hello with a bad proof refused");
                        let mut env = Envelope::new(Kind::Hello);
                        env.error = Some(ErrorBody::new(ErrorCode::Unauthorized, "bad proof"));
                        return self.send_env(&identity, &env, false);
                    }
                }
            }
        }
        self.register(identity, hello, now);
    }

    /// Answers a hello without a proof: a fresh nonce to prove the secret
    /// over, and, when the peer challenged us, our own proof (mutual).
    pub(super) fn challenge(&mut self, identity: Bytes, hello: &Hello, now: u64) {
        let challenge = hello.challenge.as_deref();
        if challenge.is_some_and(|c| c.len() != auth::NONCE_LEN) {
            return self.malformed(&identity, "hello with a challenge of the wrong length");
        }
        if self.challenges.len() >= MAX_CHALLENGES && !self.challenges.contains_key(&identity) {
            self.stats.auth_failures += 1;
            return;
        }
        let mut nonce = [0u8; auth::NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        self.challenges.insert(identity.clone(), (nonce, now));
        let proof = match (challenge, self.secret.as_deref()) {
            (Some(challenge), Some(secret)) => Some(proto::ByteBuf::from(
                auth::broker_proof(secret, challenge, &nonce, &hello.service, &hello.instance)
                    .to_vec(),
            )),
            _ => None,
        };
        let welcome = Welcome {
            accepted: false,
            nonce: Some(proto::ByteBuf::from(nonce.to_vec())),
            proof,
            ..self.welcome()
        };
        self.send_welcome(&identity, &welcome);
    }

    pub(super) fn welcome(&self) -> Welcome {
        Welcome {
            accepted: true,
            nonce: None,
            heartbeat_ms: self.settings.heartbeat_ms as u32,
            liveness: self.settings.liveness,
            max_message: self.settings.max_message_bytes as u32,
            proof: None,
        }
    }

    pub(super) fn send_welcome(&mut self, identity: &Bytes, welcome: &Welcome) {
        let mut env = Envelope::new(Kind::Hello);
        env.body = proto::ByteBuf::from(proto::to_body(welcome).unwrap_or_default());
        self.send_env(identity, &env, false);
    }

    /// The pid of the live peer that holds `old`'s instance name against a new
    /// `hello`: one heard from within two heartbeats, of another process (the
    /// same process reconnecting takes its name back at once; a dead one's
    /// connection was closed, or it fell silent).
    fn live_holder(&self, old: PeerId, hello: &Hello, now: u64) -> Option<u32> {
        let peer = self.peers.get(&old)?;
        let alive = now.saturating_sub(peer.last_seen) < self.settings.heartbeat_ms * 2;
        (alive && peer.pid != hello.pid).then_some(peer.pid)
    }

    pub(super) fn register(&mut self, identity: Bytes, hello: Hello, now: u64) {
        if !hello.service.is_empty()
            && !self.service_idx.contains_key(&hello.service)
            && self.services.len() >= self.settings.max_services
        {
            self.stats.services_refused += 1;
            tracing::warn!(service = %hello.service, cap = self.settings.max_services, "registration of a new service past the cap refused");
            let mut env = Envelope::new(Kind::Hello);
            env.error = Some(ErrorBody::new(
                ErrorCode::Overloaded,
                format!("more than {} services", self.settings.max_services),
            ));
            return self.send_env(&identity, &env, false);
        }
        if let Some(&old) = self.by_identity.get(&identity) {
            self.peer_lost(old, Loss::Replaced, now);
        }
        if let Some(&old) = self.by_instance.get(&hello.instance) {
            if hello.successor && self.peers.contains_key(&old) {
                // A reload: the old process finishes what it has and leaves.
                tracing::info!(instance = %hello.instance, "successor registered; draining the previous process");
                self.set_state(old, PeerState::Draining);
                if let Some(identity) = self.peers.get(&old).map(|p| p.identity.clone()) {
                    let mut env = Envelope::new(Kind::Drain);
                    env.instance = Some(hello.instance.clone());
                    self.send_env(&identity, &env, false);
                }
            } else if let Some(holder) = self.live_holder(old, &hello, now) {
                // Another live process under this name (a second main, a copy
                // started by hand): taking over would make the two knock each
                // other off every heartbeat. The newcomer is refused; the
                // holder keeps its name until it leaves or goes silent.
                self.stats.names_refused += 1;
                tracing::warn!(instance = %hello.instance, holder_pid = holder, pid = hello.pid, "registration refused: the instance name is held by a live peer");
                let mut env = Envelope::new(Kind::Hello);
                env.error = Some(ErrorBody::new(
                    ErrorCode::Unavailable,
                    format!(
                        "instance {} is registered by a live process (pid {holder}); pick another name, or stop that one",
                        hello.instance
                    ),
                ));
                return self.send_env(&identity, &env, false);
            } else {
                tracing::info!(instance = %hello.instance, "instance registered again; the previous registration is dropped");
                self.peer_lost(old, Loss::Replaced, now);
            }
        }
        self.told_bye.remove(&identity);
        let pid = self.next_peer;
        self.next_peer += 1;
        let service = (!hello.service.is_empty()).then(|| self.service(&hello.service));
        if let Some(idx) = service {
            self.services[idx].instances.push(pid);
        }
        let credit = if hello.credit == 0 { 64 } else { hello.credit };
        tracing::info!(service = %hello.service, instance = %hello.instance, pid = hello.pid, credit, "registered");
        self.by_identity.insert(identity.clone(), pid);
        self.by_instance.insert(hello.instance.clone(), pid);
        self.peers.insert(
            pid,
            Peer {
                identity: identity.clone(),
                instance: hello.instance,
                service,
                pid: hello.pid,
                state: PeerState::Registered,
                credit: credit.min(self.settings.max_credit),
                inflight: Set::default(),
                outstanding: 0,
                handled: 0,
                last_seen: now,
                registered_at: now,
                subs: Set::default(),
            },
        );
        self.stats.peers = self.peers.len() as u64;
        let welcome = self.welcome();
        self.send_welcome(&identity, &welcome);
    }

    pub(super) fn set_state(&mut self, pid: PeerId, state: PeerState) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        let Some(svc) = peer.service else {
            return;
        };
        if peer.state != state {
            tracing::info!(instance = %peer.instance, state = state.as_str(), "instance state");
        }
        peer.state = state;
        if state == PeerState::Ready {
            self.drain_queue(svc);
        }
    }

    pub(super) fn forward_drain(&mut self, target: &str) {
        let Some(identity) = self
            .by_instance
            .get(target)
            .and_then(|pid| self.peers.get(pid))
            .map(|p| p.identity.clone())
        else {
            return;
        };
        let mut env = Envelope::new(Kind::Drain);
        env.instance = Some(target.to_owned());
        self.send_env(&identity, &env, false);
    }

    /// Removes a peer: its in-flight requests get `worker_lost` (or are retried
    /// elsewhere when idempotent and their deadline allows), its subscriptions end.
    pub fn peer_lost(&mut self, pid: PeerId, why: Loss, now: u64) {
        let Some(peer) = self.peers.remove(&pid) else {
            return;
        };
        self.by_identity.remove(&peer.identity);
        if self.by_instance.get(&peer.instance) == Some(&pid) {
            self.by_instance.remove(&peer.instance);
        }
        if let Some(svc) = peer.service {
            self.services[svc].instances.retain(|&p| p != pid);
        }
        for pattern in &peer.subs {
            self.subs.remove(pattern, &pid);
        }
        if why != Loss::Bye {
            self.stats.peers_lost += 1;
        }
        if matches!(why, Loss::Disconnected | Loss::Silent) {
            // Gone without a goodbye: whoever kept state for it (a gateway's
            // client sessions) cleans up now.
            let lost = proto::api::PeerLost {
                service: peer
                    .service
                    .map(|s| self.services[s].name.clone())
                    .unwrap_or_default(),
                instance: peer.instance.clone(),
            };
            self.announce(proto::api::PEER_LOST, &lost);
        }
        if why == Loss::Disconnected || why == Loss::Silent || !peer.inflight.is_empty() {
            tracing::warn!(instance = %peer.instance, reason = ?why, inflight = peer.inflight.len(), "peer lost");
        } else {
            tracing::info!(instance = %peer.instance, reason = ?why, "peer left");
        }
        self.stats.peers = self.peers.len() as u64;
        let mut retry_services = Vec::new();
        for token in peer.inflight {
            let Some(req) = self.reqs.get_mut(&token) else {
                continue;
            };
            req.worker = None;
            if req.idem && req.deadline > now {
                self.stats.retried += 1;
                retry_services.push(req.service);
                self.place(token);
            } else {
                let message = match why {
                    Loss::Bye => format!("{}: instance left without replying", peer.instance),
                    _ => format!(
                        "{}: instance lost with the request in flight",
                        peer.instance
                    ),
                };
                self.fail(token, ErrorCode::WorkerLost, message);
            }
        }
    }
}
