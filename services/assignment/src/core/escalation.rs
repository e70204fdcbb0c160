//! Escalation to a pool's next tier: roles added, leases and quorum votes of reviewers without them dropped.

use super::*;

impl Core {
    /// Moves an item to its pool's next tier; leases whose holders lack the new roles are
    /// revoked. At the top tier it stays where it is (recorded).
    pub(super) fn escalate(
        &mut self,
        slot: u32,
        reason: &'static str,
        now: i64,
        out: &mut Vec<Effect>,
    ) {
        let pool = self.item_ref(slot).pool;
        let policy = self.policy(pool).clone();
        let next = usize::from(self.item_ref(slot).level) + 1;
        out.push(Effect::Observed(Observation::Escalated {
            pool: self.pool_name(pool),
            reason,
        }));
        self.touched.push(slot);
        let Some(tier) = policy.tiers.get(next - 1) else {
            let level = self.item_ref(slot).level;
            let mut event = self
                .event(slot, LifecycleKind::Escalated, now)
                .with_reason(format!("{reason}: already at the highest tier"));
            event.attributes.insert("level".into(), level.to_string());
            out.push(Effect::Lifecycle(event));
            return;
        };
        let item = self.item_mut(slot);
        item.level = next as u8;
        item.progress_mut().expiries = 0;
        let item = self.item_ref(slot);
        let required: Vec<&str> = item
            .required_roles
            .iter()
            .map(|r| &**r)
            .chain(
                policy
                    .tiers
                    .iter()
                    .take(next)
                    .flat_map(|t| t.roles.iter().map(String::as_str)),
            )
            .collect();
        // Votes toward the quorum count only from reviewers the new tier would let decide: a
        // vote cast below it is not a senior's vote.
        let qualified = |reviewer: &str| {
            self.roster
                .get(reviewer)
                .is_some_and(|entry| entry.has_roles(required.iter().copied()))
        };
        let discarded: Vec<Arc<str>> = item
            .progress()
            .votes
            .iter()
            .filter(|vote| !qualified(&vote.reviewer))
            .map(|vote| vote.reviewer.clone())
            .collect();
        let unqualified: Vec<String> = item
            .progress()
            .leases
            .iter()
            .filter(|lease| {
                self.roster
                    .get(&lease.reviewer)
                    .is_none_or(|reviewer| !reviewer.has_roles(required.iter().copied()))
            })
            .map(|lease| lease.id.clone())
            .collect();
        if !discarded.is_empty() {
            self.item_mut(slot)
                .progress_mut()
                .votes
                .retain(|vote| !discarded.contains(&vote.reviewer));
        }
        let mut event = self
            .event(slot, LifecycleKind::Escalated, now)
            .with_reason(reason);
        event.attributes.insert("level".into(), next.to_string());
        event.attributes.insert("tier".into(), tier.name.clone());
        if !discarded.is_empty() {
            let names: Vec<&str> = discarded.iter().map(|r| &**r).collect();
            event
                .attributes
                .insert("votes_discarded".into(), names.join(","));
        }
        out.push(Effect::Lifecycle(event));
        for id in unqualified {
            self.revoke(slot, &id, "escalated", false, now, out);
        }
        self.requeue_if_wanted(slot);
    }
}
