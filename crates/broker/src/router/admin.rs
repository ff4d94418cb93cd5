//! The `$broker` ops: what the broker answers about itself (`stats`, `ls`,
//! `owner`, `metrics`, `trace`, `$echo`); their types are in
//! `switchboard_proto::admin`.

use super::*;

impl Router {
    pub(super) fn broker_op(&mut self, caller: PeerId, head: &Head<'_>, now: u64) {
        let body = match head.op {
            "stats" => {
                self.stats.inflight = self.reqs.len() as u64;
                proto::to_body(&self.stats)
            }
            "ls" => proto::to_body(&self.list(now)),
            "owner" => match proto::from_body::<OwnerQuery>(head.body) {
                Ok(q) => {
                    let instance = self
                        .service_idx
                        .get(&q.service)
                        .and_then(|&svc| self.owner(svc, &q.key))
                        .and_then(|pid| self.peers.get(&pid))
                        .map(|p| p.instance.clone());
                    proto::to_body(&OwnerReply { instance })
                }
                Err(e) => {
                    let env = Envelope::error_reply(
                        head.id,
                        head.trace,
                        ErrorBody::new(
                            ErrorCode::BadRequest,
                            format!("owner wants {{service, key}}: {e}"),
                        ),
                    );
                    return self.send_to_peer(caller, &env);
                }
            },
            "$echo" => Ok(head.body.to_vec()),
            "metrics" | "$metrics" => proto::to_body(&self.metrics(now)),
            "trace" | "$trace" => match proto::from_body::<proto::admin::TraceQuery>(head.body) {
                Ok(q) => proto::to_body(&switchboard_svc::trace::spans_of(&q.trace)),
                Err(e) => Err(e),
            },
            op => {
                let env = Envelope::error_reply(
                    head.id,
                    head.trace,
                    ErrorBody::new(
                        ErrorCode::UnknownOp,
                        format!(
                            "$broker has no op {op:?} (stats, ls, owner, metrics, trace, $echo)"
                        ),
                    ),
                );
                return self.send_to_peer(caller, &env);
            }
        };
        let env = match body {
            Ok(body) => Envelope::reply_to(head.id, head.trace, body),
            Err(e) => Envelope::error_reply(
                head.id,
                head.trace,
                ErrorBody::new(ErrorCode::Internal, e.to_string()),
            ),
        };
        self.send_to_peer(caller, &env);
    }

    pub(super) fn list(&self, now: u64) -> Vec<InstanceInfo> {
        let mut list: Vec<InstanceInfo> = self
            .peers
            .values()
            .map(|p| InstanceInfo {
                service: p
                    .service
                    .map(|s| self.services[s].name.clone())
                    .unwrap_or_default(),
                instance: p.instance.clone(),
                pid: p.pid,
                state: if p.service.is_some() {
                    p.state
                } else {
                    PeerState::Client
                },
                inflight: p.inflight.len() as u32,
                credit: p.credit,
                handled: p.handled,
                age_ms: now.saturating_sub(p.registered_at),
            })
            .collect();
        list.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
        list
    }

    /// The broker's metrics: what it counts as it goes, and its state now.
    fn metrics(&self, now: u64) -> String {
        let held: Vec<u64> = self
            .reqs
            .values()
            .filter(|r| r.worker.is_none())
            .map(|r| now.saturating_sub(r.received))
            .collect();
        let state = crate::metrics::Now {
            inflight: self.reqs.len(),
            held: held.len(),
            held_oldest_ms: held.iter().max().copied().unwrap_or(0),
            peers: self.peers.len(),
        };
        crate::metrics::text(&state, &self.stats)
    }
}
