//! Timers: when an item next needs attention (lease expiry, SLA escalation points, SLA breach) and what happens then. Times come from the input watermark (see `docs/design.md`, "Time").

use super::*;

/// An item's SLA window, bounded by its pool's policy: the one place its deadline is computed.
pub(super) struct SlaWindow {
    pub(super) deadline: i64,
    /// The decision's `created_at`, or the routing time when it lies too far in the future.
    pub(super) created_at: i64,
    /// `"min_sla"` or `"max_sla"` when the requested deadline was moved to that bound.
    pub(super) bounded: Option<&'static str>,
}

impl SlaWindow {
    pub(super) fn bound(policy: &PoolPolicy, request: &ReviewRequest, enqueued_at: i64) -> Self {
        let millis =
            |duration: std::time::Duration| duration.as_millis().min(i64::MAX as u128) as i64;
        let earliest = enqueued_at.saturating_add(millis(policy.min_sla));
        let latest = enqueued_at
            .saturating_add(millis(policy.max_sla))
            .max(earliest);
        let requested = request.sla_deadline;
        let (deadline, bounded) = if requested < earliest {
            (earliest, Some("min_sla"))
        } else if requested > latest {
            (latest, Some("max_sla"))
        } else {
            (requested, None)
        };
        let skew_limit = request
            .routed_at
            .saturating_add(millis(policy.max_clock_skew));
        let created_at = request.decision.created_at;
        Self {
            deadline,
            created_at: if created_at > skew_limit {
                request.routed_at
            } else {
                created_at
            },
            bounded,
        }
    }

    /// The instant an item with this window reaches `fraction` of it (an escalation point).
    pub(super) fn at_fraction(enqueued_at: i64, deadline: i64, fraction: f64) -> i64 {
        let sla = deadline.saturating_sub(enqueued_at);
        enqueued_at.saturating_add((sla as f64 * fraction).ceil() as i64)
    }
}

impl Core {
    /// When the item next needs attention: a lease past expiry plus grace, its next SLA
    /// escalation point, or its deadline.
    pub(super) fn next_due(&self, item: &Item) -> i64 {
        let policy = self.policy(item.pool);
        let progress = item.progress();
        let grace = policy.verdict_grace.as_millis() as i64;
        let lease = progress
            .leases
            .iter()
            .map(|lease| lease.expires_at.saturating_add(grace).saturating_add(1))
            .min();
        let escalation = policy
            .escalate_at_sla
            .get(usize::from(progress.sla_escalations))
            .map(|fraction| SlaWindow::at_fraction(item.enqueued_at, item.sla_deadline, *fraction));
        let breach = (!progress.breached).then_some(item.sla_deadline);
        [lease, escalation, breach]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(NO_TIMER)
    }

    pub(super) fn schedule(&mut self, slot: u32) {
        let item = self.item_ref(slot);
        let (old, new) = (item.due, self.next_due(item));
        if old == new {
            return;
        }
        if new != NO_TIMER {
            self.timers
                .entry(new.div_euclid(1000))
                .or_default()
                .push(slot);
        }
        self.item_mut(slot).due = new;
    }

    /// Fires every timer due at `now`, in order of seconds (within a second, by slot).
    pub(super) fn tick_timers(&mut self, now: i64, out: &mut Vec<Effect>) {
        while let Some(entry) = self.timers.first_entry() {
            let second = *entry.key();
            if second > now.div_euclid(1000) {
                break;
            }
            let mut slots = entry.remove();
            slots.sort_unstable();
            slots.dedup();
            let mut later = Vec::new();
            for slot in slots {
                let due = match self.slots[slot as usize].as_ref() {
                    Some(item) if item.due != NO_TIMER && item.due.div_euclid(1000) == second => {
                        item.due
                    }
                    _ => continue, // stale entry
                };
                if due > now {
                    later.push(slot);
                    continue;
                }
                self.item_mut(slot).due = NO_TIMER;
                self.on_timer(slot, now, out);
            }
            if !later.is_empty() {
                self.timers.entry(second).or_default().extend(later);
                break;
            }
        }
    }

    pub(super) fn on_timer(&mut self, slot: u32, now: i64, out: &mut Vec<Effect>) {
        let policy = self.policy(self.item_ref(slot).pool).clone();
        let grace = policy.verdict_grace.as_millis() as i64;
        // Expired leases: revoke, keep the reviewer away from it, count.
        let expired: Vec<String> = self
            .item_ref(slot)
            .progress()
            .leases
            .iter()
            .filter(|lease| now > lease.expires_at.saturating_add(grace))
            .map(|lease| lease.id.clone())
            .collect();
        for lease_id in &expired {
            self.revoke(slot, lease_id, "lease_expired", true, now, out);
            self.item_mut(slot).progress_mut().expiries += 1;
        }
        let expiries = self.item_ref(slot).progress().expiries;
        if !expired.is_empty()
            && policy.escalate_after_expiries > 0
            && expiries >= policy.escalate_after_expiries
        {
            self.escalate(slot, "lease_expiries", now, out);
        }
        // SLA risk: escalate at each configured fraction of the SLA.
        loop {
            let item = self.item_ref(slot);
            let done = usize::from(item.progress().sla_escalations);
            let Some(fraction) = policy.escalate_at_sla.get(done) else {
                break;
            };
            if now < SlaWindow::at_fraction(item.enqueued_at, item.sla_deadline, *fraction) {
                break;
            }
            self.item_mut(slot).progress_mut().sla_escalations += 1;
            self.escalate(slot, "sla_risk", now, out);
        }
        // SLA breach.
        let item = self.item_ref(slot);
        if !item.progress().breached && now >= item.sla_deadline {
            self.breach(slot, &policy, now, out);
            if !self.live(slot) {
                return;
            }
        }
        self.requeue_if_wanted(slot);
        self.touched.push(slot);
    }

    pub(super) fn breach(
        &mut self,
        slot: u32,
        policy: &PoolPolicy,
        now: i64,
        out: &mut Vec<Effect>,
    ) {
        let item = self.item_mut(slot);
        item.progress_mut().breached = true;
        let overdue_by = now - item.sla_deadline;
        let (pool, qa) = (item.pool, item.qa_sample());
        let mut event = self.event(slot, LifecycleKind::SlaBreached, now);
        event
            .attributes
            .insert("overdue_ms".into(), overdue_by.to_string());
        out.push(Effect::Observed(Observation::SlaBreached {
            pool: self.pool_name(pool),
        }));
        if qa {
            // Nothing waits for a QA sample: it expires unlabeled.
            out.push(Effect::Lifecycle(
                event.with_reason("QA sample expired unlabeled"),
            ));
            self.revoke_every_lease(slot, "sla_expired", now, out);
            self.finish(slot, "qa_expired", now, out);
            return;
        }
        match &policy.on_sla_breach {
            BreachPolicy::Hold => {
                out.push(Effect::Lifecycle(
                    event.with_reason("SLA breached; holding for a human decision"),
                ));
                self.escalate(slot, "sla_breach", now, out);
            }
            BreachPolicy::Fallback {
                status,
                final_action,
            } => {
                out.push(Effect::Lifecycle(
                    event.with_reason("SLA breached; applying the pool's fallback"),
                ));
                let action = final_action
                    .clone()
                    .unwrap_or_else(|| self.symbols.name(self.item_ref(slot).action).to_string());
                self.decide(
                    slot,
                    DecidedBy::SlaFallback,
                    *status,
                    action,
                    Vec::new(),
                    Some("SLA breached: pool fallback applied".into()),
                    now,
                    out,
                );
            }
        }
    }
}
