//! Outcomes: deciding an item and forgetting it (remembered as decided for `done_retention`).

use super::*;

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decide(
        &mut self,
        slot: u32,
        decided_by: DecidedBy,
        status: OutcomeStatus,
        final_action: String,
        reviewer_ids: Vec<String>,
        rationale: Option<String>,
        now: i64,
        out: &mut Vec<Effect>,
    ) {
        self.revoke_every_lease(slot, "decided", now, out);
        let item = self.item_ref(slot);
        let name = |sym: Sym| self.symbols.name(sym).to_string();
        let overridden =
            status != OutcomeStatus::Approved || final_action != **self.symbols.name(item.action);
        let outcome = Outcome {
            decision_id: item.decision_id.to_string(),
            final_action,
            status,
            decided_by,
            reviewer_ids,
            policy_rule: name(item.policy_rule),
            policy_version: name(item.policy_version),
            decided_at: now,
            time_to_decision_ms: now - item.created_at,
            workflow: name(item.workflow),
            rationale,
        };
        out.push(Effect::Observed(Observation::Decided {
            pool: self.pool_name(item.pool),
            decided_by,
            overridden,
            latency_ms: outcome.time_to_decision_ms,
        }));
        let mut event = self.event(slot, LifecycleKind::Outcome, now);
        event.outcome = Some(outcome.clone());
        out.push(Effect::Outcome(outcome, self.span_of(slot)));
        out.push(Effect::Lifecycle(event));
        self.finish(slot, "decided", now, out);
    }

    /// The item is over: forget it, remember its id as decided.
    pub(super) fn finish(
        &mut self,
        slot: u32,
        result: &'static str,
        now: i64,
        out: &mut Vec<Effect>,
    ) {
        let span = self.span_of(slot);
        let item = self.remove_slot(slot);
        if let (Some(context), Some(parent)) = (span, item.trace) {
            let progress = item.progress();
            out.push(Effect::ReviewSpan(ReviewSpan {
                context,
                parent_span_id: parent.span_id,
                decision_id: item.decision_id.to_string(),
                pool: self.pool_name(item.pool),
                enqueued_at: item.enqueued_at,
                finished_at: now,
                result,
                quorum: item.quorum,
                level: item.level,
                verdicts: progress.votes.len(),
                assignments: progress.attempts,
                sla_breached: progress.breached,
                qa_sample: item.qa_sample(),
            }));
        }
        for lease in &item.progress().leases {
            self.add_inflight(&lease.reviewer, item.pool, -1);
        }
        let id: Arc<str> = Arc::from(&*item.decision_id);
        self.done.insert(id.clone(), (item.pool, now));
        self.done_order.push_back((now, id));
        out.push(Effect::State {
            pool: self.pool_name(item.pool),
            decision_id: item.decision_id.into(),
            change: StateChange::Done { decided_at: now },
        });
    }
}
