//! Balancing: which eligible reviewer gets which queued item (load, recency, roles, separation of duties, rate limits), and items nobody on the roster can take set aside.

use super::*;

impl Core {
    /// Recomputes a reviewer's place in every pool's availability set.
    pub(super) fn refresh(&mut self, id: &Arc<str>) {
        let Some(reviewer) = self.roster.get_mut(id) else {
            return;
        };
        for (pool, position) in std::mem::take(&mut reviewer.positions) {
            if let Some(state) = self.pools.get_mut(&pool) {
                state.available.remove(&position);
            }
        }
        if reviewer.presence != Presence::Online || reviewer.capacity == 0 {
            return;
        }
        for (pool, state) in &mut self.pools {
            if !reviewer.serves(self.symbols.name(*pool)) {
                continue;
            }
            let load = self
                .inflight
                .get(id)
                .and_then(|pools| pools.get(pool))
                .copied()
                .unwrap_or(0);
            if load >= reviewer.capacity {
                continue;
            }
            let position = (
                load_ratio(load, reviewer.capacity),
                reviewer.last_assigned,
                id.clone(),
            );
            state.available.insert(position.clone());
            reviewer.positions.insert(*pool, position);
        }
    }

    pub(super) fn add_inflight(&mut self, reviewer: &Arc<str>, pool: Sym, delta: i32) {
        let pools = self.inflight.entry(reviewer.clone()).or_default();
        let count = pools.entry(pool).or_insert(0);
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            pools.remove(&pool);
            if pools.is_empty() {
                self.inflight.remove(reviewer);
            }
        }
        self.refresh(reviewer);
    }

    pub(super) fn assign_all(&mut self, now: i64, out: &mut Vec<Effect>) {
        let pools: Vec<Sym> = self
            .pools
            .iter()
            .filter(|(_, state)| !state.queue.is_empty() && !state.available.is_empty())
            .map(|(pool, _)| *pool)
            .collect();
        for pool in pools {
            self.assign_pool(pool, now, out);
        }
    }

    /// The eligible reviewer with the lowest load ratio, then least recently assigned, then id:
    /// the first of the pool's availability set that passes the item's own conditions.
    pub(super) fn best_reviewer(&self, item: &Item, limited: &[Arc<str>]) -> Option<Arc<str>> {
        let state = self.pools.get(&item.pool)?;
        let policy = self.policy(item.pool);
        let progress = item.progress();
        let producer = self.symbols.name(item.producer);
        let tier_roles = || {
            policy
                .tiers
                .iter()
                .take(usize::from(item.level))
                .flat_map(|tier| tier.roles.iter().map(String::as_str))
        };
        state
            .available
            .iter()
            .map(|(_, _, id)| id)
            .find(|id| {
                let Some(reviewer) = self.roster.get(*id) else {
                    return false;
                };
                **id != *producer
                    && !progress.excluded.contains(id)
                    && !progress.leases.iter().any(|l| l.reviewer == **id)
                    && !limited.contains(id)
                    && reviewer
                        .has_roles(item.required_roles.iter().map(|r| &**r).chain(tier_roles()))
            })
            .cloned()
    }

    /// Takes a token from the reviewer's rate limiter for this pool (always granted without one).
    pub(super) fn rate_allows(&mut self, pool: Sym, reviewer: &Arc<str>, now: i64) -> bool {
        let per_minute = self.policy(pool).max_assignments_per_minute;
        let Some(rate) = NonZeroU32::new(per_minute) else {
            return true;
        };
        self.clock.0.store(
            (now.max(0) as u64).saturating_mul(1_000_000),
            Ordering::Relaxed,
        );
        let clock = self.clock.clone();
        let state = self.pools.get_mut(&pool).expect("pool exists");
        let limiter = state.limiter.get_or_insert_with(|| {
            RateLimiter::new(Quota::per_minute(rate), HashMapStateStore::default(), clock)
        });
        limiter.check_key(reviewer).is_ok()
    }

    pub(super) fn assign_pool(&mut self, pool: Sym, now: i64, out: &mut Vec<Effect>) {
        let max_scan = self.config.max_scan;
        let mut scanned = 0usize;
        let mut cursor: Option<Key> = None;
        let mut limited: Vec<Arc<str>> = Vec::new();
        loop {
            let Some(state) = self.pools.get(&pool) else {
                return;
            };
            if state.available.is_empty() {
                return;
            }
            let mut found = None;
            let start = cursor.unwrap_or(Key {
                virtual_deadline: i64::MIN,
                sequence: 0,
            });
            let mut aside = Vec::new();
            let epoch = self.roster_epoch;
            for (key, slot) in state.queue.range(start..) {
                if scanned >= max_scan {
                    break;
                }
                scanned += 1;
                let item = self.item_ref(*slot);
                if let Some(reviewer) = self.best_reviewer(item, &limited) {
                    found = Some((*key, *slot, reviewer));
                    break;
                }
                if item.checked_epoch != epoch {
                    if self.anyone_eligible(item) {
                        aside.push((*slot, false));
                    } else {
                        aside.push((*slot, true));
                    }
                }
            }
            for (slot, nobody) in aside {
                if nobody {
                    self.set_aside(slot, now, out);
                } else {
                    self.item_mut(slot).checked_epoch = epoch;
                }
            }
            let Some((key, slot, reviewer)) = found else {
                return;
            };
            cursor = Some(key);
            if !self.rate_allows(pool, &reviewer, now) {
                limited.push(reviewer);
                continue;
            }
            self.pools
                .get_mut(&pool)
                .expect("pool exists")
                .queue
                .remove(&key);
            self.assign(slot, &reviewer, now, out);
            self.requeue_if_wanted(slot);
        }
    }

    /// Whether anyone on the roster could ever take the item as it is now: present (online or
    /// away), with capacity, serving its pool, with its roles, not its producer, not excluded
    /// from it, not holding it already. Busy reviewers count: they will be free again.
    pub(super) fn anyone_eligible(&self, item: &Item) -> bool {
        let policy = self.policy(item.pool);
        let progress = item.progress();
        let pool = self.symbols.name(item.pool);
        let producer = self.symbols.name(item.producer);
        self.roster.values().any(|reviewer| {
            reviewer.presence != Presence::Offline
                && reviewer.capacity > 0
                && reviewer.serves(pool)
                && *reviewer.id != **producer
                && !progress.excluded.contains(&reviewer.id)
                && !progress.leases.iter().any(|l| l.reviewer == reviewer.id)
                && reviewer.has_roles(
                    item.required_roles.iter().map(|r| &**r).chain(
                        policy
                            .tiers
                            .iter()
                            .take(usize::from(item.level))
                            .flat_map(|tier| tier.roles.iter().map(String::as_str)),
                    ),
                )
        })
    }

    /// Takes an item nobody on the roster can take out of the queue (recorded: a QUEUED event
    /// saying so, a metric), so it neither blocks the items behind it nor costs a look per pass.
    pub(super) fn set_aside(&mut self, slot: u32, now: i64, out: &mut Vec<Effect>) {
        let item = self.item_mut(slot);
        let (pool, key) = (item.pool, item.key);
        item.progress_mut().set_aside = true;
        if let Some(state) = self.pools.get_mut(&pool) {
            if state.queue.get(&key) == Some(&slot) {
                state.queue.remove(&key);
            }
            state.aside.insert(key, slot);
        }
        let mut event = self
            .event(slot, LifecycleKind::Queued, now)
            .with_reason("set aside: no reviewer on the roster can take it");
        event.attributes.insert("set_aside".into(), "true".into());
        out.push(Effect::Lifecycle(event));
        out.push(Effect::Observed(Observation::SetAside {
            pool: self.pool_name(pool),
        }));
        self.touched.push(slot);
    }

    /// After a roster change: the items set aside in the pools `reviewer` serves that it could
    /// take go back to the queue (a QUEUED event says so).
    pub(super) fn bring_back(&mut self, reviewer: &Arc<str>, now: i64, out: &mut Vec<Effect>) {
        let Some(entry) = self.roster.get(reviewer) else {
            return;
        };
        if entry.presence == Presence::Offline || entry.capacity == 0 {
            return;
        }
        let back: Vec<u32> = self
            .pools
            .iter()
            .filter(|(pool, state)| {
                !state.aside.is_empty() && entry.serves(self.symbols.name(**pool))
            })
            .flat_map(|(_, state)| state.aside.values().copied())
            .filter(|slot| self.anyone_eligible(self.item_ref(*slot)))
            .collect();
        for slot in back {
            let item = self.item_mut(slot);
            item.progress_mut().set_aside = false;
            let (pool, key) = (item.pool, item.key);
            if let Some(state) = self.pools.get_mut(&pool) {
                state.aside.remove(&key);
            }
            let mut event = self
                .event(slot, LifecycleKind::Queued, now)
                .with_reason("back in the queue: a reviewer who can take it is on the roster");
            event.attributes.insert("set_aside".into(), "false".into());
            out.push(Effect::Lifecycle(event));
            self.requeue_if_wanted(slot);
            self.touched.push(slot);
        }
    }
}
