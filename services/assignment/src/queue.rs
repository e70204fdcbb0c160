//! Pending items of one pool, ordered by priority with SLA decay. Pure: no clock, no I/O.
//! See `README.md` beside this file for the formula and the guarantees.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

/// How base priority shortens an item's virtual deadline. Every bonus is a fraction of the item's
/// own SLA; their sum is capped at `max_fraction` (< 1), which is what bounds starvation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecayParams {
    /// Fraction of the SLA granted per tier: low, normal, high, urgent.
    pub tier_fraction: [f64; 4],
    /// Fraction granted at risk 1.0 (linear in risk_score).
    pub risk_fraction: f64,
    /// Fraction granted at `amount_scale` and above (logarithmic in amount).
    pub amount_fraction: f64,
    pub amount_scale: f64,
    /// Cap of the summed fractions; must be in [0, 1).
    pub max_fraction: f64,
}

impl Default for DecayParams {
    fn default() -> Self {
        Self {
            tier_fraction: [0.0, 0.1, 0.25, 0.4],
            risk_fraction: 0.1,
            amount_fraction: 0.1,
            amount_scale: 100_000.0,
            max_fraction: 0.5,
        }
    }
}

impl DecayParams {
    /// Every problem with the parameters.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let fractions = self
            .tier_fraction
            .iter()
            .chain([&self.risk_fraction, &self.amount_fraction]);
        if fractions.clone().any(|f| !(0.0..1.0).contains(f)) {
            problems.push("decay: every fraction must be in [0, 1)".to_owned());
        }
        if self.tier_fraction.windows(2).any(|pair| pair[0] > pair[1]) {
            problems.push("decay.tier_fraction: must not decrease from low to urgent".to_owned());
        }
        if !(0.0..1.0).contains(&self.max_fraction) {
            problems.push("decay.max_fraction: must be in [0, 1)".to_owned());
        }
        if !(self.amount_scale > 1.0 && self.amount_scale.is_finite()) {
            problems.push("decay.amount_scale: must be a finite number above 1".to_owned());
        }
        problems
    }

    /// The fraction of its SLA by which an item's virtual deadline comes early.
    pub fn bonus_fraction(&self, tier: u8, risk: Option<f64>, amount: Option<f64>) -> f64 {
        let tier = self.tier_fraction[usize::from(tier.min(3))];
        let risk = self.risk_fraction
            * risk
                .filter(|r| r.is_finite())
                .unwrap_or(0.0)
                .clamp(0.0, 1.0);
        let amount = amount
            .filter(|a| a.is_finite() && *a > 1.0)
            .map_or(0.0, |a| {
                self.amount_fraction * (a.ln() / self.amount_scale.ln()).clamp(0.0, 1.0)
            });
        (tier + risk + amount).min(self.max_fraction)
    }
}

impl DecayParams {
    /// The ordering key of an item: its deadline brought forward by its bonus fraction of its
    /// SLA, then its arrival sequence.
    pub fn key(&self, item: &Pending, sequence: u64) -> Key {
        let sla = (item.sla_deadline - item.enqueued_at).max(0) as f64;
        let bonus = (sla * self.bonus_fraction(item.tier, item.risk, item.amount)) as i64;
        Key {
            virtual_deadline: item.sla_deadline - bonus,
            sequence,
        }
    }
}

/// What the queue needs to know about an item to order it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub id: String,
    /// When it entered the queue (ms), and its SLA deadline (ms).
    pub enqueued_at: i64,
    pub sla_deadline: i64,
    /// 0 = low … 3 = urgent.
    pub tier: u8,
    pub risk: Option<f64>,
    pub amount: Option<f64>,
}

/// The ordering key: virtual deadline (ms), then arrival sequence. Smaller goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    pub virtual_deadline: i64,
    pub sequence: u64,
}

/// One pool's pending items.
#[derive(Debug, Default)]
pub struct Queue {
    params: DecayParams,
    order: BTreeMap<Key, Arc<str>>,
    keys: HashMap<Arc<str>, Key>,
    next_sequence: u64,
}

impl Queue {
    pub fn new(params: DecayParams) -> Self {
        Self {
            params,
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }

    /// The key an item gets: its deadline brought forward by its bonus fraction of its SLA.
    pub fn key_for(&self, item: &Pending, sequence: u64) -> Key {
        self.params.key(item, sequence)
    }

    /// Adds an item (idempotent by id: a known id keeps its place). Returns its key.
    pub fn push(&mut self, item: &Pending) -> Key {
        if let Some(key) = self.keys.get(item.id.as_str()) {
            return *key;
        }
        let key = self.key_for(item, self.next_sequence);
        self.next_sequence += 1;
        let id: Arc<str> = Arc::from(item.id.as_str());
        self.order.insert(key, id.clone());
        self.keys.insert(id, key);
        key
    }

    /// Puts an item back with the key it had (a revoked or deferred item keeps its priority; a
    /// restored item keeps the place it had before the restart).
    pub fn requeue(&mut self, id: Arc<str>, key: Key) {
        self.next_sequence = self.next_sequence.max(key.sequence + 1);
        if !self.keys.contains_key(&id) {
            self.keys.insert(id.clone(), key);
            self.order.insert(key, id);
        }
    }

    pub fn remove(&mut self, id: &str) -> Option<Key> {
        let key = self.keys.remove(id)?;
        self.order.remove(&key);
        Some(key)
    }

    /// The most urgent item for which `eligible` holds, removed from the queue.
    pub fn pop_first(&mut self, mut eligible: impl FnMut(&str) -> bool) -> Option<(Arc<str>, Key)> {
        let (key, id) = self
            .order
            .iter()
            .find(|(_, id)| eligible(id))
            .map(|(k, id)| (*k, id.clone()))?;
        self.order.remove(&key);
        self.keys.remove(&id);
        Some((id, key))
    }

    /// Items in the order they would be served.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Arc<str>)> {
        self.order.iter()
    }

    /// Effective priority at `now`: seconds past the virtual deadline (negative before it). Rises
    /// at the same rate for every item, so order never changes with time.
    pub fn urgency(key: &Key, now_millis: i64) -> f64 {
        (now_millis - key.virtual_deadline) as f64 / 1000.0
    }
}
