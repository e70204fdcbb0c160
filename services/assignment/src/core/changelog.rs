//! The changelog (`hitl.assignment.state`): restoring entries, dropping pools that moved, and each item's stored form.

use super::*;

impl Core {
    /// Puts back the latest changelog entry of `decision_id`, replacing what is known of it.
    /// Leases are restored as they were; expired ones are revoked by the next `tick`.
    pub fn restore_entry(&mut self, decision_id: &str, record: Option<StateRecord>) {
        self.forget(decision_id);
        match record {
            None => {}
            Some(StateRecord::Done { pool, decided_at }) => {
                let pool = self.symbols.intern(&pool);
                let id: Arc<str> = Arc::from(decision_id);
                self.done.insert(id.clone(), (pool, decided_at));
                self.restored_done.push((decided_at, id));
            }
            Some(StateRecord::Active(record)) => {
                let item = self.item_from_record(record);
                let (pool, key, wanted) = (item.pool, item.key, item.wanted() > 0);
                let aside = item.progress().set_aside;
                self.ensure_pool(pool);
                let leases: Vec<Arc<str>> = item
                    .progress()
                    .leases
                    .iter()
                    .map(|lease| lease.reviewer.clone())
                    .collect();
                let slot = self.insert(item);
                let state = self.pools.get_mut(&pool).expect("pool exists");
                state.next_sequence = state.next_sequence.max(key.sequence + 1);
                if wanted && aside {
                    state.aside.insert(key, slot);
                } else if wanted {
                    state.queue.insert(key, slot);
                }
                for reviewer in &leases {
                    self.add_inflight(reviewer, pool, 1);
                }
                if !leases.is_empty() {
                    self.leased.insert(slot);
                }
                self.schedule(slot);
            }
        }
    }

    /// Ends a restore: orders the restored decided ids by decision time for retention.
    pub fn finish_restore(&mut self) {
        let mut restored = std::mem::take(&mut self.restored_done);
        if restored.is_empty() {
            return;
        }
        restored.sort();
        let mut merged: Vec<(i64, Arc<str>)> = self.done_order.drain(..).collect();
        merged.extend(restored);
        merged.sort_by_key(|(at, _)| *at);
        self.done_order = merged.into();
    }

    /// Drops everything about the pools `keep` rejects (their partition moved to another
    /// instance). No effects: the new owner restores them from the changelog.
    pub fn retain_pools(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let dropped: BTreeSet<Sym> = self
            .pools
            .keys()
            .copied()
            .filter(|pool| !keep(self.symbols.name(*pool)))
            .collect();
        if dropped.is_empty() {
            return;
        }
        let gone: Vec<String> = self
            .slots
            .iter()
            .flatten()
            .filter(|item| dropped.contains(&item.pool))
            .map(|item| item.decision_id.to_string())
            .collect();
        for id in gone {
            self.forget(&id);
        }
        let done: Vec<Arc<str>> = self
            .done
            .iter()
            .filter(|(_, (pool, _))| dropped.contains(pool))
            .map(|(id, _)| id.clone())
            .collect();
        for id in done {
            self.forget(&id);
        }
        for pool in &dropped {
            self.pools.remove(pool);
        }
        for reviewer in self.roster.values_mut() {
            reviewer.positions.retain(|pool, _| !dropped.contains(pool));
        }
    }

    /// Removes all state of one decision without effects.
    pub(super) fn forget(&mut self, decision_id: &str) {
        self.done.remove(decision_id); // its `done_order` entry goes stale
        let Some(slot) = self.slot_of(decision_id) else {
            return;
        };
        let item = self.remove_slot(slot);
        for lease in &item.progress().leases {
            self.add_inflight(&lease.reviewer, item.pool, -1);
        }
    }

    /// The changelog value (JSON of a `StateRecord`) for a `State` effect of the last call;
    /// `None` is a tombstone.
    pub fn state_payload(
        &self,
        decision_id: &str,
        pool: &str,
        change: StateChange,
    ) -> Option<Vec<u8>> {
        let view = match change {
            StateChange::Deleted => return None,
            StateChange::Done { decided_at } => StateView::Done { pool, decided_at },
            StateChange::Active => {
                let Some(slot) = self.slot_of(decision_id) else {
                    // Decided later in the same call: its Done entry follows.
                    let (pool, decided_at) = self.done.get(decision_id)?;
                    return self.state_payload(
                        decision_id,
                        self.symbols.name(*pool),
                        StateChange::Done {
                            decided_at: *decided_at,
                        },
                    );
                };
                let item = self.item_ref(slot);
                let name = |sym: Sym| &**self.symbols.name(sym);
                StateView::Active(ItemView {
                    decision_id: &item.decision_id,
                    pool: name(item.pool),
                    qa_sample: item.qa_sample(),
                    auto_rejected: item.auto_rejected(),
                    workflow: name(item.workflow),
                    subject: &item.subject,
                    action: name(item.action),
                    confidence: item.confidence,
                    producer: name(item.producer),
                    created_at: item.created_at,
                    context: &item.context,
                    sensitive: &item.sensitive,
                    required_roles: &item.required_roles,
                    quorum: item.quorum,
                    policy_rule: name(item.policy_rule),
                    policy_version: name(item.policy_version),
                    tier: item.tier,
                    enqueued_at: item.enqueued_at,
                    sla_deadline: item.sla_deadline,
                    key: item.key,
                    level: item.level,
                    sequence: item.sequence,
                    progress: item.progress(),
                    traceparent: item.trace.map(|trace| trace.header()),
                })
            }
        };
        Some(serde_json::to_vec(&view).expect("state records serialize"))
    }

    pub(super) fn to_record(&self, item: &Item) -> ItemRecord {
        let name = |sym: Sym| self.symbols.name(sym).to_string();
        ItemRecord {
            decision_id: item.decision_id.to_string(),
            pool: name(item.pool),
            qa_sample: item.qa_sample(),
            auto_rejected: item.auto_rejected(),
            workflow: name(item.workflow),
            subject: item.subject.to_string(),
            action: name(item.action),
            confidence: item.confidence,
            producer: name(item.producer),
            created_at: item.created_at,
            context: item
                .context
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            sensitive: item.sensitive.iter().map(|s| s.to_string()).collect(),
            required_roles: item.required_roles.iter().map(|s| s.to_string()).collect(),
            quorum: item.quorum,
            policy_rule: name(item.policy_rule),
            policy_version: name(item.policy_version),
            tier: item.tier,
            enqueued_at: item.enqueued_at,
            sla_deadline: item.sla_deadline,
            key: item.key,
            level: item.level,
            sequence: item.sequence,
            progress: item.progress().clone(),
            traceparent: item.trace.map(|trace| trace.header()),
        }
    }

    pub(super) fn item_from_record(&mut self, record: ItemRecord) -> Item {
        let progress = (record.progress != NO_PROGRESS).then(|| Box::new(record.progress));
        Item {
            decision_id: record.decision_id.into(),
            subject: record.subject.into(),
            context: record
                .context
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            sensitive: record.sensitive.into_iter().map(Into::into).collect(),
            required_roles: record.required_roles.into_iter().map(Into::into).collect(),
            progress,
            confidence: record.confidence,
            created_at: record.created_at,
            enqueued_at: record.enqueued_at,
            sla_deadline: record.sla_deadline,
            key: record.key,
            due: NO_TIMER,
            pool: self.symbols.intern(&record.pool),
            workflow: self.symbols.intern(&record.workflow),
            action: self.symbols.intern(&record.action),
            producer: self.symbols.intern(&record.producer),
            policy_rule: self.symbols.intern(&record.policy_rule),
            policy_version: self.symbols.intern(&record.policy_version),
            sequence: record.sequence,
            tier: record.tier,
            quorum: record.quorum.max(1),
            level: record.level,
            checked_epoch: 0,
            flags: if record.qa_sample { QA_SAMPLE } else { 0 }
                | if record.auto_rejected {
                    AUTO_REJECTED
                } else {
                    0
                },
            trace: record
                .traceparent
                .as_deref()
                .and_then(|header| TraceContext::parse(header.as_bytes())),
        }
    }

    /// One changelog entry per item changed by the call, and its timer brought up to date.
    pub(super) fn flush(&mut self, out: &mut Vec<Effect>) {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for slot in touched.drain(..) {
            if !self.live(slot) {
                continue;
            }
            self.schedule(slot);
            let item = self.item_ref(slot);
            out.push(Effect::State {
                pool: self.pool_name(item.pool),
                decision_id: item.decision_id.to_string(),
                change: StateChange::Active,
            });
        }
        self.touched = touched;
    }
}
