//! Where items live: slots by decision id, pools, lifecycle events numbered per item.

use super::*;

impl Core {
    pub(super) fn slot_of(&self, decision_id: &str) -> Option<u32> {
        self.index
            .find(hash_id(decision_id), |slot| {
                self.slots[*slot as usize]
                    .as_ref()
                    .is_some_and(|item| *item.decision_id == *decision_id)
            })
            .copied()
    }

    pub(super) fn insert(&mut self, item: Item) -> u32 {
        let hash = hash_id(&item.decision_id);
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(item);
                slot
            }
            None => {
                self.slots.push(Some(item));
                (self.slots.len() - 1) as u32
            }
        };
        let slots = &self.slots;
        self.index.insert_unique(hash, slot, |slot| {
            hash_id(
                &slots[*slot as usize]
                    .as_ref()
                    .expect("live slot")
                    .decision_id,
            )
        });
        slot
    }

    /// Takes an item out of every structure (slots, index, queue, timers, leased).
    pub(super) fn remove_slot(&mut self, slot: u32) -> Item {
        let hash = hash_id(&self.item_ref(slot).decision_id);
        if let Ok(entry) = self.index.find_entry(hash, |s| *s == slot) {
            entry.remove();
        }
        let item = self.slots[slot as usize].take().expect("live slot");
        if let Some(state) = self.pools.get_mut(&item.pool) {
            if state.queue.get(&item.key) == Some(&slot) {
                state.queue.remove(&item.key);
            }
            if state.aside.get(&item.key) == Some(&slot) {
                state.aside.remove(&item.key);
            }
        }
        self.leased.remove(&slot);
        self.free.push(slot);
        item
    }

    pub(super) fn item_mut(&mut self, slot: u32) -> &mut Item {
        self.slots[slot as usize].as_mut().expect("live slot")
    }

    pub(super) fn item_ref(&self, slot: u32) -> &Item {
        self.slots[slot as usize].as_ref().expect("live slot")
    }

    pub(super) fn live(&self, slot: u32) -> bool {
        self.slots[slot as usize].is_some()
    }

    pub(super) fn has_leases(&self, slot: u32) -> bool {
        !self.item_ref(slot).progress().leases.is_empty()
    }

    /// The next lifecycle event of an item from this service (numbered per item).
    pub(super) fn event(&mut self, slot: u32, kind: LifecycleKind, now: i64) -> LifecycleEvent {
        let item = self.item_mut(slot);
        item.sequence += 1;
        let sequence = item.sequence;
        let item = self.item_ref(slot);
        let mut event = LifecycleEvent::new(
            format!("{}:assignment:{sequence}", item.decision_id),
            &*item.decision_id,
            kind,
            SERVICE,
            now,
        );
        event.sequence = i64::from(sequence);
        event.policy_rule = Some(self.symbols.name(item.policy_rule).to_string());
        event.policy_version = Some(self.symbols.name(item.policy_version).to_string());
        event
            .attributes
            .insert("pool".into(), self.symbols.name(item.pool).to_string());
        event.traceparent = self.span_of(slot).map(|trace| trace.header());
        event
    }

    /// This service's span of an item, when its request carried a trace context.
    pub(super) fn span_of(&self, slot: u32) -> Option<TraceContext> {
        let item = self.item_ref(slot);
        item.trace
            .as_ref()
            .map(|parent| item_span(parent, &item.decision_id))
    }

    pub(super) fn ensure_pool(&mut self, pool: Sym) {
        if self.pools.contains_key(&pool) {
            return;
        }
        self.pools.insert(
            pool,
            PoolState {
                queue: BTreeMap::new(),
                aside: BTreeMap::new(),
                next_sequence: 0,
                available: BTreeSet::new(),
                limiter: None,
            },
        );
        let ids: Vec<Arc<str>> = self.roster.keys().cloned().collect();
        for id in ids {
            self.refresh(&id);
        }
    }
}
