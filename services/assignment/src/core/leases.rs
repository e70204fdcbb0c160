//! Leases: assigning (with the PII-masked and clear assignment events), requeueing, revoking.

use super::*;

impl Core {
    /// Whether `reviewer` holds a PII role of the item's pool and the item has a sensitive value
    /// to show: then the ASSIGNED event also goes, in clear, to `hitl.assignments.pii`.
    pub(super) fn sees_pii(&self, item: &Item, reviewer: &Reviewer) -> bool {
        let policy = self.policy(item.pool);
        policy
            .pii_roles
            .iter()
            .any(|role| reviewer.roles.contains(role))
            && item
                .context
                .iter()
                .any(|(key, _)| item.sensitive.iter().any(|s| s == key))
    }

    /// The item's context with its sensitive values masked, unless `reveal`.
    pub(super) fn masked_context(&self, item: &Item, reveal: bool) -> BTreeMap<String, String> {
        item.context
            .iter()
            .map(|(key, value)| {
                let hidden = !reveal && item.sensitive.iter().any(|s| s == key);
                let shown = if hidden { MASK } else { &**value };
                (key.to_string(), shown.to_owned())
            })
            .collect()
    }

    /// The event a reviewer app gets for a lease (ASSIGNED or REVOKED).
    pub(super) fn assignment_event(
        &self,
        slot: u32,
        lease: &Lease,
        kind: AssignmentKind,
        reason: Option<&str>,
        now: i64,
    ) -> AssignmentEvent {
        let item = self.item_ref(slot);
        let context = match kind {
            AssignmentKind::Assigned => self.masked_context(item, false),
            _ => BTreeMap::new(),
        };
        AssignmentEvent {
            assignment_id: lease.id.clone(),
            decision_id: item.decision_id.to_string(),
            reviewer_id: lease.reviewer.to_string(),
            kind,
            pool: self.symbols.name(item.pool).to_string(),
            priority: Queue::urgency(&item.key, now),
            sla_deadline: item.sla_deadline,
            lease_expires_at: lease.expires_at,
            action: self.symbols.name(item.action).to_string(),
            confidence: item.confidence,
            context,
            attempt: lease.attempt as i32,
            reason: reason.map(str::to_owned),
            workflow: self.symbols.name(item.workflow).to_string(),
            subject: item.subject.to_string(),
            qa_sample: item.qa_sample(),
            // The shell knows where the pool lives.
            verdict_partition: None,
        }
    }

    /// The ASSIGNED `event` again, with the sensitive values in clear, for `hitl.assignments.pii`
    /// when its reviewer holds the pool's PII role (else nothing).
    pub(super) fn clear_copy(&self, slot: u32, event: &AssignmentEvent) -> Option<AssignmentEvent> {
        let item = self.item_ref(slot);
        let reviewer = self.roster.get(event.reviewer_id.as_str())?;
        if event.kind != AssignmentKind::Assigned || !self.sees_pii(item, reviewer) {
            return None;
        }
        let mut clear = event.clone();
        clear.context = self.masked_context(item, true);
        Some(clear)
    }

    pub(super) fn assign(
        &mut self,
        slot: u32,
        reviewer_id: &Arc<str>,
        now: i64,
        out: &mut Vec<Effect>,
    ) {
        let pool = self.item_ref(slot).pool;
        let lease_ms = self.policy(pool).lease.as_millis() as i64;
        let lease_id = {
            let item = self.item_ref(slot);
            let attempts = item.progress.as_ref().map_or(0, |p| p.attempts) + 1;
            lease_token(
                &self.config.lease_secret,
                &item.decision_id,
                attempts,
                reviewer_id,
            )
        };
        let item = self.item_mut(slot);
        let progress = item.progress_mut();
        progress.attempts += 1;
        let attempt = progress.attempts;
        let first = progress.first_assigned_at.is_none();
        progress.first_assigned_at.get_or_insert(now);
        let lease = Lease {
            id: lease_id,
            reviewer: reviewer_id.clone(),
            assigned_at: now,
            expires_at: now + lease_ms,
            attempt,
        };
        progress.leases.push(lease.clone());
        let (enqueued_at, level) = (item.enqueued_at, item.level);
        let event = self.assignment_event(slot, &lease, AssignmentKind::Assigned, None, now);
        let mut lifecycle = self.event(slot, LifecycleKind::Assigned, now);
        lifecycle.reviewer_id = Some(reviewer_id.to_string());
        lifecycle.assignment_id = Some(lease.id.clone());
        let attributes = &mut lifecycle.attributes;
        attributes.insert("attempt".into(), attempt.to_string());
        attributes.insert("level".into(), level.to_string());
        attributes.insert("lease_expires_at".into(), lease.expires_at.to_string());
        let partition = self.roster.get(reviewer_id).and_then(|r| r.partition);
        let trace = self.span_of(slot);
        if let Some(clear) = self.clear_copy(slot, &event) {
            out.push(Effect::Assignment {
                partition,
                event: clear,
                pii: true,
                trace,
            });
        }
        out.push(Effect::Assignment {
            partition,
            event,
            pii: false,
            trace,
        });
        out.push(Effect::Lifecycle(lifecycle));
        out.push(Effect::Observed(Observation::Assigned {
            pool: self.pool_name(pool),
            first,
            wait_ms: now - enqueued_at,
        }));
        if let Some(entry) = self.roster.get_mut(reviewer_id) {
            entry.last_assigned = now;
        }
        self.add_inflight(reviewer_id, pool, 1);
        self.leased.insert(slot);
        self.touched.push(slot);
    }

    /// Puts the item in its pool's queue if it needs more reviewers, takes it out otherwise.
    pub(super) fn requeue_if_wanted(&mut self, slot: u32) {
        let item = self.item_mut(slot);
        item.checked_epoch = 0; // it changed: who may take it is worth asking again
        let (pool, key, wanted, aside) = (
            item.pool,
            item.key,
            item.wanted() > 0,
            item.progress().set_aside,
        );
        if let Some(state) = self.pools.get_mut(&pool) {
            if wanted && aside {
                state.aside.insert(key, slot);
            } else if wanted {
                state.queue.insert(key, slot);
            } else {
                if state.queue.get(&key) == Some(&slot) {
                    state.queue.remove(&key);
                }
                if state.aside.get(&key) == Some(&slot) {
                    state.aside.remove(&key);
                }
            }
        }
    }

    /// Ends a lease without a verdict: REVOKED to the reviewer, a lifecycle event, capacity back.
    pub(super) fn revoke(
        &mut self,
        slot: u32,
        lease_id: &str,
        reason: &'static str,
        exclude: bool,
        now: i64,
        out: &mut Vec<Effect>,
    ) {
        let item = self.item_mut(slot);
        let pool = item.pool;
        let progress = item.progress_mut();
        let Some(position) = progress.leases.iter().position(|l| l.id == lease_id) else {
            return;
        };
        let lease = progress.leases.remove(position);
        progress.closed.push(ClosedLease {
            id: lease.id.clone(),
            reviewer: lease.reviewer.clone(),
            verdict: None,
        });
        if exclude && !progress.excluded.contains(&lease.reviewer) {
            progress.excluded.push(lease.reviewer.clone());
        }
        let event = self.assignment_event(slot, &lease, AssignmentKind::Revoked, Some(reason), now);
        let mut lifecycle = self
            .event(slot, LifecycleKind::Revoked, now)
            .with_reason(reason);
        lifecycle.reviewer_id = Some(lease.reviewer.to_string());
        lifecycle.assignment_id = Some(lease.id.clone());
        let partition = self
            .roster
            .get(&lease.reviewer)
            .and_then(|reviewer| reviewer.partition);
        let trace = self.span_of(slot);
        out.push(Effect::Assignment {
            partition,
            event,
            pii: false,
            trace,
        });
        out.push(Effect::Lifecycle(lifecycle));
        out.push(Effect::Observed(Observation::Revoked {
            pool: self.pool_name(pool),
            reason,
        }));
        self.add_inflight(&lease.reviewer, pool, -1);
        if !self.has_leases(slot) {
            self.leased.remove(&slot);
        }
        self.touched.push(slot);
    }

    pub(super) fn revoke_every_lease(
        &mut self,
        slot: u32,
        reason: &'static str,
        now: i64,
        out: &mut Vec<Effect>,
    ) {
        let ids: Vec<String> = self
            .item_ref(slot)
            .progress()
            .leases
            .iter()
            .map(|l| l.id.clone())
            .collect();
        for id in ids {
            self.revoke(slot, &id, reason, false, now, out);
        }
    }

    /// Revokes every lease a reviewer holds here and requeues those items at their old priority.
    pub(super) fn revoke_all_of(
        &mut self,
        reviewer: &Arc<str>,
        reason: &'static str,
        now: i64,
        out: &mut Vec<Effect>,
    ) {
        let slots: Vec<u32> = self.leased.iter().copied().collect();
        for slot in slots {
            let ids: Vec<String> = self
                .item_ref(slot)
                .progress()
                .leases
                .iter()
                .filter(|lease| lease.reviewer == *reviewer)
                .map(|lease| lease.id.clone())
                .collect();
            if ids.is_empty() {
                continue;
            }
            for id in ids {
                self.revoke(slot, &id, reason, false, now, out);
            }
            self.requeue_if_wanted(slot);
        }
    }
}
