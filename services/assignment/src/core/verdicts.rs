//! Verdicts: validation (holder, lease, time, roles, limits), rejection with a reason, application, quorum votes.

use super::*;

impl Core {
    pub(super) fn check(&self, verdict: &Verdict, now: i64) -> Result<(u32, usize), Rejection> {
        let Some(slot) = self.slot_of(&verdict.decision_id) else {
            return Err(if self.done.contains_key(verdict.decision_id.as_str()) {
                Rejection::AlreadyDecided
            } else {
                Rejection::UnknownDecision
            });
        };
        let item = self.item_ref(slot);
        let progress = item.progress();
        let Some(index) = progress
            .leases
            .iter()
            .position(|lease| lease.id == verdict.assignment_id)
        else {
            let closed = progress
                .closed
                .iter()
                .find(|closed| closed.id == verdict.assignment_id);
            return Err(match closed {
                Some(closed)
                    if *closed.reviewer == *verdict.reviewer_id
                        && closed.verdict == Some(verdict.verdict) =>
                {
                    Rejection::Duplicate
                }
                Some(closed) if closed.verdict.is_none() => Rejection::LeaseRevoked,
                Some(_) => Rejection::StaleLease,
                None => Rejection::UnknownLease,
            });
        };
        let lease = &progress.leases[index];
        if *lease.reviewer != *verdict.reviewer_id {
            return Err(Rejection::WrongReviewer);
        }
        let policy = self.policy(item.pool);
        let grace = policy.verdict_grace.as_millis() as i64;
        if now > lease.expires_at.saturating_add(grace) {
            return Err(Rejection::LeaseExpired);
        }
        let Some(reviewer) = self.roster.get(verdict.reviewer_id.as_str()) else {
            return Err(Rejection::UnknownReviewer);
        };
        let tier_roles = policy
            .tiers
            .iter()
            .take(usize::from(item.level))
            .flat_map(|tier| tier.roles.iter().map(String::as_str));
        if !reviewer.has_roles(item.required_roles.iter().map(|r| &**r).chain(tier_roles)) {
            return Err(Rejection::MissingRole);
        }
        if verdict.verdict == VerdictKind::Renew {
            let max = policy.max_lease_lifetime().as_millis() as i64;
            if lease.expires_at >= lease.assigned_at.saturating_add(max) {
                return Err(Rejection::LeaseAtMaximum);
            }
        }
        if verdict.verdict == VerdictKind::Amend
            && verdict
                .amended_action
                .as_deref()
                .is_none_or(|action| action.trim().is_empty())
        {
            return Err(Rejection::InvalidAmendment);
        }
        Ok((slot, index))
    }

    pub(super) fn reject(
        &mut self,
        verdict: &Verdict,
        reason: Rejection,
        now: i64,
        out: &mut Vec<Effect>,
    ) {
        let kind = verdict_name(verdict.verdict);
        let mut event = match self.slot_of(&verdict.decision_id) {
            Some(slot) => {
                self.touched.push(slot);
                self.event(slot, LifecycleKind::VerdictRejected, now)
            }
            None => LifecycleEvent::new(
                format!(
                    "{}:assignment:rejected:{}:{}:{}:{}",
                    verdict.decision_id,
                    verdict.assignment_id,
                    verdict.reviewer_id,
                    kind,
                    verdict.decided_at
                ),
                verdict.decision_id.as_str(),
                LifecycleKind::VerdictRejected,
                SERVICE,
                now,
            ),
        };
        event.reason = Some(reason.as_str().to_owned());
        event.reviewer_id = Some(verdict.reviewer_id.clone());
        event.assignment_id = Some(verdict.assignment_id.clone());
        event.attributes.insert("verdict".into(), kind.into());
        // What a rejected verdict claimed is kept, bounded: it may come from anyone.
        if !verdict.rationale.is_empty() {
            event.attributes.insert(
                "rationale".into(),
                truncate_utf8(&verdict.rationale, MAX_REJECTED_RATIONALE_BYTES).to_owned(),
            );
        }
        out.push(Effect::Lifecycle(event));
        out.push(Effect::Observed(Observation::VerdictRejected { reason }));
    }

    /// Applies a verdict judged valid at `at` (its broker append time): its effects happen then
    /// (the same on every replay); the assignments it makes room for happen at `now`, so their
    /// leases last their whole length however late the verdict was read.
    pub(super) fn apply(
        &mut self,
        verdict: &Verdict,
        slot: u32,
        lease_index: usize,
        at: i64,
        now: i64,
        out: &mut Vec<Effect>,
    ) {
        let item = self.item_ref(slot);
        let (pool, qa_sample) = (item.pool, item.qa_sample());
        let assigned_at = item.progress().leases[lease_index].assigned_at;
        let mut event = self.event(slot, LifecycleKind::Verdict, at);
        event.reviewer_id = Some(verdict.reviewer_id.clone());
        event.assignment_id = Some(verdict.assignment_id.clone());
        let attributes = &mut event.attributes;
        attributes.insert("verdict".into(), verdict_name(verdict.verdict).into());
        if !verdict.rationale.is_empty() {
            attributes.insert("rationale".into(), verdict.rationale.clone());
        }
        if let Some(action) = &verdict.amended_action {
            attributes.insert("amended_action".into(), action.clone());
        }
        if qa_sample {
            attributes.insert("qa_sample".into(), "true".into());
        }
        out.push(Effect::Observed(Observation::VerdictApplied {
            pool: self.pool_name(pool),
            verdict: verdict.verdict,
            latency_ms: at - assigned_at,
        }));
        self.touched.push(slot);

        if verdict.verdict == VerdictKind::Renew {
            let policy = self.policy(pool);
            let lease_ms = policy.lease.as_millis() as i64;
            let max_ms = policy.max_lease_lifetime().as_millis() as i64;
            let lease = &mut self.item_mut(slot).progress_mut().leases[lease_index];
            // Never past the lease's maximum lifetime, never shorter than it was.
            let cap = lease.assigned_at.saturating_add(max_ms);
            lease.expires_at = at.saturating_add(lease_ms).min(cap).max(lease.expires_at);
            let lease = lease.clone();
            event
                .attributes
                .insert("lease_expires_at".into(), lease.expires_at.to_string());
            out.push(Effect::Lifecycle(event));
            let partition = self.roster.get(&lease.reviewer).and_then(|r| r.partition);
            let renewed =
                self.assignment_event(slot, &lease, AssignmentKind::Assigned, Some("renewed"), at);
            if let Some(clear) = self.clear_copy(slot, &renewed) {
                out.push(Effect::Assignment {
                    partition,
                    event: clear,
                    pii: true,
                    trace: self.span_of(slot),
                });
            }
            out.push(Effect::Assignment {
                partition,
                event: renewed,
                pii: false,
                trace: self.span_of(slot),
            });
            return;
        }

        // Every other verdict ends the lease and keeps this reviewer off the item.
        let progress = self.item_mut(slot).progress_mut();
        let lease = progress.leases.remove(lease_index);
        progress.closed.push(ClosedLease {
            id: lease.id.clone(),
            reviewer: lease.reviewer.clone(),
            verdict: Some(verdict.verdict),
        });
        if !progress.excluded.contains(&lease.reviewer) {
            progress.excluded.push(lease.reviewer.clone());
        }
        self.add_inflight(&lease.reviewer, pool, -1);
        if !self.has_leases(slot) {
            self.leased.remove(&slot);
        }
        out.push(Effect::Lifecycle(event));

        match verdict.verdict {
            VerdictKind::Renew => unreachable!("handled above"),
            VerdictKind::Defer => out.push(Effect::Observed(Observation::Revoked {
                pool: self.pool_name(pool),
                reason: "deferred",
            })),
            VerdictKind::Escalate => self.escalate(slot, "reviewer_escalated", at, out),
            VerdictKind::Approve | VerdictKind::Reject | VerdictKind::Amend => {
                if self.vote(slot, verdict, &lease, at, out) {
                    self.assign_pool(pool, now, out);
                    return;
                }
            }
        }
        self.requeue_if_wanted(slot);
        self.assign_pool(pool, now, out);
    }

    /// Records a deciding verdict. Returns whether the item is finished (decided, or a QA sample
    /// labeled).
    pub(super) fn vote(
        &mut self,
        slot: u32,
        verdict: &Verdict,
        lease: &Lease,
        now: i64,
        out: &mut Vec<Effect>,
    ) -> bool {
        let item = self.item_ref(slot);
        let pool = item.pool;
        let action = match verdict.verdict {
            VerdictKind::Amend => verdict.amended_action.clone().unwrap_or_default(),
            _ => self.symbols.name(item.action).to_string(),
        };
        if item.qa_sample() {
            // Agreement with the automatic decision: approving an auto-approval, rejecting an
            // auto-rejection.
            let agrees = match verdict.verdict {
                VerdictKind::Approve => !item.auto_rejected(),
                VerdictKind::Reject => item.auto_rejected(),
                _ => false,
            };
            out.push(Effect::Observed(Observation::QaLabeled {
                pool: self.pool_name(pool),
                agrees,
            }));
            self.revoke_every_lease(slot, "decided", now, out);
            self.finish(slot, "qa_labeled", now, out);
            return true;
        }
        let quorum = item.quorum.max(1);
        let progress = self.item_mut(slot).progress_mut();
        progress.votes.push(Vote {
            reviewer: lease.reviewer.clone(),
            verdict: verdict.verdict,
            action,
            rationale: verdict.rationale.clone(),
            at: now,
        });
        let first = &progress.votes[0];
        let disagree = progress
            .votes
            .iter()
            .any(|vote| vote.verdict != first.verdict || vote.action != first.action);
        if disagree {
            progress.votes.clear();
            self.escalate(slot, "quorum_disagreement", now, out);
            return false;
        }
        if progress.votes.len() < usize::from(quorum) {
            return false;
        }
        let decided_by = if quorum > 1 {
            DecidedBy::Quorum
        } else {
            DecidedBy::Human
        };
        let (status, action) = (status_of(first.verdict), first.action.clone());
        let reviewers = progress
            .votes
            .iter()
            .map(|vote| vote.reviewer.to_string())
            .collect();
        let rationale = progress
            .votes
            .iter()
            .map(|vote| vote.rationale.as_str())
            .filter(|r| !r.is_empty())
            .collect::<Vec<_>>()
            .join(" | ");
        self.decide(
            slot,
            decided_by,
            status,
            action,
            reviewers,
            (!rationale.is_empty()).then_some(rationale),
            now,
            out,
        );
        true
    }
}
