//! The inputs: review requests, roster changes, verdicts and ticks — the core's public calls. Each ends with `flush` (one changelog entry per item it changed).

use super::timers::SlaWindow;
use super::*;

impl Core {
    /// A review request from the router. Idempotent by decision_id: a known or decided id
    /// changes nothing.
    pub fn request(&mut self, request: &ReviewRequest, now: i64, out: &mut Vec<Effect>) {
        self.request_traced(request, None, now, out);
    }

    /// `request`, for a record that carried the trace context `trace` (its `traceparent`).
    pub fn request_traced(
        &mut self,
        request: &ReviewRequest,
        trace: Option<TraceContext>,
        now: i64,
        out: &mut Vec<Effect>,
    ) {
        self.request_traced_at(request, trace, now, now, out);
    }

    /// `request_traced` for a request appended at `at` and read at `now`: queued at `at` (the
    /// same on every replay); assigned at `now`, so a lease lasts its whole length however late
    /// the request was read.
    pub fn request_traced_at(
        &mut self,
        request: &ReviewRequest,
        trace: Option<TraceContext>,
        at: i64,
        now: i64,
        out: &mut Vec<Effect>,
    ) {
        let decision = &request.decision;
        let id = decision.decision_id.as_str();
        if self.slot_of(id).is_some() || self.done.contains_key(id) {
            out.push(Effect::Observed(Observation::DuplicateRequest));
            return;
        }
        let pool = self.symbols.intern(&request.pool);
        self.ensure_pool(pool);
        let enqueued_at = request.routed_at.min(at);
        let window = SlaWindow::bound(self.policy(pool), request, enqueued_at);
        let (sla_deadline, created_at) = (window.deadline, window.created_at);
        let tier = tier_number(&request.priority_tier);
        let state = self.pools.get_mut(&pool).expect("pool exists");
        let key = self.config.decay.key(
            &Pending {
                id: String::new(),
                enqueued_at,
                sla_deadline,
                tier,
                risk: decision.risk_score,
                amount: decision.amount,
            },
            state.next_sequence,
        );
        state.next_sequence += 1;
        let item = Item {
            decision_id: id.into(),
            subject: decision.subject.as_str().into(),
            context: decision
                .context
                .iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
            sensitive: decision
                .sensitive_fields
                .iter()
                .map(|k| k.as_str().into())
                .collect(),
            required_roles: request
                .required_roles
                .iter()
                .map(|r| r.as_str().into())
                .collect(),
            progress: None,
            confidence: decision.confidence,
            created_at,
            enqueued_at,
            sla_deadline,
            key,
            due: NO_TIMER,
            pool,
            workflow: self.symbols.intern(&decision.workflow),
            action: self.symbols.intern(&decision.action),
            producer: self.symbols.intern(&decision.producer),
            policy_rule: self.symbols.intern(&request.policy_rule),
            policy_version: self.symbols.intern(&request.policy_version),
            sequence: 0,
            tier,
            quorum: request.quorum.clamp(1, 16) as u8,
            level: 0,
            checked_epoch: 0,
            flags: match (request.kind, request.auto_status.as_deref()) {
                (ReviewKind::QaSample, Some("REJECTED")) => QA_SAMPLE | AUTO_REJECTED,
                (ReviewKind::QaSample, _) => QA_SAMPLE,
                (ReviewKind::Review, _) => 0,
            },
            trace,
        };
        let slot = self.insert(item);
        self.pools
            .get_mut(&pool)
            .expect("pool exists")
            .queue
            .insert(key, slot);
        let mut event = self.event(slot, LifecycleKind::Queued, at);
        event
            .attributes
            .insert("sla_deadline".into(), sla_deadline.to_string());
        event
            .attributes
            .insert("quorum".into(), self.item_ref(slot).quorum.to_string());
        if let Some(bound) = window.bounded {
            event.attributes.insert("sla_bounded".into(), bound.into());
            event.attributes.insert(
                "requested_sla_deadline".into(),
                request.sla_deadline.to_string(),
            );
        }
        if created_at != decision.created_at {
            event
                .attributes
                .insert("created_at_skewed".into(), decision.created_at.to_string());
        }
        out.push(Effect::Lifecycle(event));
        out.push(Effect::Observed(Observation::Queued {
            pool: self.pool_name(pool),
        }));
        self.touched.push(slot);
        // A request whose deadlines already passed (a late replay) is handled at once — its own
        // timer only: other items' timers wait for the watermark.
        if self.next_due(self.item_ref(slot)) <= at {
            self.on_timer(slot, at, out);
            if !self.live(slot) {
                self.flush(out);
                return;
            }
        }
        self.assign_pool(pool, now, out);
        self.flush(out);
    }

    /// A roster update. Going offline (or away) stops new assignments; offline also revokes the
    /// reviewer's leases and requeues those items at their old priority.
    pub fn reviewer_status(&mut self, status: &ReviewerStatus, now: i64, out: &mut Vec<Effect>) {
        let id: Arc<str> = match self.roster.get_key_value(status.reviewer_id.as_str()) {
            Some((id, _)) => id.clone(),
            None => Arc::from(status.reviewer_id.as_str()),
        };
        let (last_assigned, positions) = match self.roster.remove(&id) {
            Some(old) => (old.last_assigned, old.positions),
            None => (i64::MIN, BTreeMap::new()),
        };
        self.roster.insert(
            id.clone(),
            Reviewer {
                id: id.clone(),
                roles: status.roles.iter().cloned().collect(),
                pools: status.pools.iter().cloned().collect(),
                capacity: status.capacity.max(0) as u32,
                partition: status.partition.filter(|p| *p >= 0),
                presence: status.presence,
                last_assigned,
                positions,
            },
        );
        self.refresh(&id);
        self.roster_epoch = self.roster_epoch.wrapping_add(1).max(1);
        if status.presence == Presence::Offline {
            self.revoke_all_of(&id, "reviewer_offline", now, out);
        }
        self.bring_back(&id, now, out);
        self.assign_all(now, out);
        self.flush(out);
    }

    /// The reviewer left the roster (a tombstone on `hitl.reviewers`): as offline, then forgotten.
    pub fn reviewer_removed(&mut self, reviewer_id: &str, now: i64, out: &mut Vec<Effect>) {
        let Some(reviewer) = self.roster.get_mut(reviewer_id) else {
            return;
        };
        reviewer.presence = Presence::Offline;
        let id = reviewer.id.clone();
        self.refresh(&id);
        self.roster.remove(&id);
        self.roster_epoch = self.roster_epoch.wrapping_add(1).max(1);
        self.revoke_all_of(&id, "reviewer_removed", now, out);
        self.assign_all(now, out);
        self.flush(out);
    }

    /// A reviewer's verdict: applied only from the current lease holder, before expiry plus grace,
    /// with the required roles; anything else is rejected with a reason and recorded.
    pub fn verdict(&mut self, verdict: &Verdict, now: i64, out: &mut Vec<Effect>) {
        self.verdict_at(verdict, now, now, out);
    }

    /// `verdict` for a verdict appended at `at` and read at `now`: judged (lease, grace) and
    /// applied at `at`; the assignments it makes room for are made at `now`.
    pub fn verdict_at(&mut self, verdict: &Verdict, at: i64, now: i64, out: &mut Vec<Effect>) {
        match self.check(verdict, at) {
            Err(reason) => self.reject(verdict, reason, at, out),
            Ok((slot, lease_index)) => self.apply(verdict, slot, lease_index, at, now, out),
        }
        self.flush(out);
    }

    /// A verdict the shell refused before the core could judge it (unauthenticated, not
    /// authorised, oversize): recorded (a VERDICT_REJECTED event on the decision's trail, a
    /// metric), never applied.
    pub fn refuse_verdict(
        &mut self,
        verdict: &Verdict,
        reason: Rejection,
        now: i64,
        out: &mut Vec<Effect>,
    ) {
        self.reject(verdict, reason, now, out);
        self.flush(out);
    }

    /// Timers (lease expiry, SLA escalation and breach, forgetting old decided ids), then an
    /// assignment pass over every pool.
    pub fn tick(&mut self, now: i64, out: &mut Vec<Effect>) {
        self.tick_watermarked(now, now, out);
    }

    /// `tick` with the timers fired only up to `timers_until` (the input watermark: every input
    /// appended before it has been applied), while what the pass does next — assignments, with
    /// their leases — happens at `now`: a lease given while the watermark lags still lasts its
    /// whole length.
    pub fn tick_watermarked(&mut self, now: i64, timers_until: i64, out: &mut Vec<Effect>) {
        self.tick_timers(timers_until.min(now), out);
        let retention = self.config.done_retention.as_millis() as i64;
        while let Some((decided_at, _)) = self.done_order.front() {
            if decided_at.saturating_add(retention) > now {
                break;
            }
            let (decided_at, id) = self.done_order.pop_front().expect("front exists");
            if self.done.get(&id).is_none_or(|(_, at)| *at != decided_at) {
                continue; // stale: forgotten or replaced since
            }
            if let Some((pool, _)) = self.done.remove(&id) {
                out.push(Effect::State {
                    pool: self.pool_name(pool),
                    decision_id: id.to_string(),
                    change: StateChange::Deleted,
                });
            }
        }
        self.assign_all(now, out);
        self.flush(out);
    }
}
