//! The assignment core: pending queues per pool, the reviewer roster, leases, escalation, SLA
//! breach, quorum and verdict validation. Pure and deterministic: no Kafka, no clock — every call
//! takes the time as `now` (milliseconds), and the same calls give the same effects.
//!
//! Each call appends `Effect`s: records for the shell to produce (assignment events, outcomes,
//! lifecycle events, changelog entries) and observations for metrics. See `README.md` beside this
//! file for the guarantees.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use governor::{clock::Clock, nanos::Nanos, state::keyed::HashMapStateStore, Quota, RateLimiter};
use hitl_schema::{
    AssignmentEvent, AssignmentKind, DecidedBy, LifecycleEvent, LifecycleKind, Outcome,
    OutcomeStatus, Presence, ReviewKind, ReviewRequest, ReviewerStatus, Verdict, VerdictKind,
};
use serde::{Deserialize, Serialize};

use crate::{
    pools::{BreachPolicy, CoreConfig, PoolPolicy},
    queue::{Key, Pending, Queue},
};

pub const SERVICE: &str = "assignment";
/// What a reviewer without a PII role sees instead of a sensitive context value.
pub const MASK: &str = "***";

/// One reviewer's hold on an item: `id` is the lease token verdicts must carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    pub reviewer: Arc<str>,
    pub assigned_at: i64,
    pub expires_at: i64,
    pub attempt: u32,
}

/// A lease that ended: by a verdict (`verdict` is set) or by revocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClosedLease {
    pub id: String,
    pub reviewer: Arc<str>,
    pub verdict: Option<VerdictKind>,
}

/// A deciding verdict (APPROVE, REJECT, AMEND) waiting for the quorum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    pub reviewer: Arc<str>,
    pub verdict: VerdictKind,
    pub action: String,
    pub rationale: String,
    pub at: i64,
}

/// What happened to an item since it was queued. Absent (no allocation) while it just waits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub leases: Vec<Lease>,
    pub closed: Vec<ClosedLease>,
    pub votes: Vec<Vote>,
    /// Reviewers who may not get it again: they judged, deferred, escalated or let a lease expire.
    pub excluded: Vec<Arc<str>>,
    /// Lease expiries at the current tier.
    pub expiries: u32,
    /// Assignments made so far (numbers the lease tokens).
    pub attempts: u32,
    /// How many `escalate_at_sla` fractions have been applied.
    pub sla_escalations: u8,
    pub breached: bool,
    /// When the first assignment happened (time to assign).
    pub first_assigned_at: Option<i64>,
}

static NO_PROGRESS: Progress = Progress {
    leases: Vec::new(),
    closed: Vec::new(),
    votes: Vec::new(),
    excluded: Vec::new(),
    expiries: 0,
    attempts: 0,
    sla_escalations: 0,
    breached: false,
    first_assigned_at: None,
};

/// One undecided review item: what reviewers are shown, what the outcome needs, and its progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub decision_id: Arc<str>,
    pub pool: Arc<str>,
    pub qa_sample: bool,
    pub workflow: Arc<str>,
    pub subject: Box<str>,
    pub action: Arc<str>,
    pub confidence: f64,
    pub producer: Arc<str>,
    pub created_at: i64,
    pub context: Box<[(Box<str>, Box<str>)]>,
    pub sensitive: Box<[Box<str>]>,
    pub required_roles: Box<[Box<str>]>,
    pub quorum: u8,
    pub policy_rule: Arc<str>,
    pub policy_version: Arc<str>,
    pub tier: u8,
    pub enqueued_at: i64,
    pub sla_deadline: i64,
    /// Its place in the pool's queue, kept for ever (requeued items keep their priority).
    pub key: Key,
    /// Escalation level: 0 = the request's roles; n = plus the roles of the pool's tier n.
    pub level: u8,
    /// The sequence number of its last lifecycle event from this service.
    pub sequence: i64,
    pub progress: Option<Box<Progress>>,
    /// When its timer fires (derived, not stored).
    #[serde(skip)]
    due: Option<i64>,
}

impl Item {
    pub fn progress(&self) -> &Progress {
        self.progress.as_deref().unwrap_or(&NO_PROGRESS)
    }
    fn progress_mut(&mut self) -> &mut Progress {
        self.progress.get_or_insert_with(Box::default)
    }
    /// How many more reviewers it needs (active leases count as pending votes).
    pub fn wanted(&self) -> usize {
        let progress = self.progress();
        usize::from(self.quorum.max(1)).saturating_sub(progress.votes.len() + progress.leases.len())
    }
    fn next_event(&mut self, kind: LifecycleKind, now: i64) -> LifecycleEvent {
        self.sequence += 1;
        let mut event = LifecycleEvent::new(
            format!("{}:assignment:{}", self.decision_id, self.sequence),
            &*self.decision_id,
            kind,
            SERVICE,
            now,
        );
        event.sequence = self.sequence;
        event.policy_rule = Some(self.policy_rule.to_string());
        event.policy_version = Some(self.policy_version.to_string());
        event
            .attributes
            .insert("pool".into(), self.pool.to_string());
        event
    }
}

/// A changelog entry (`hitl.assignment.state`, keyed by decision_id): the item, or the fact that it
/// was decided (remembered for `done_retention`, then deleted by a tombstone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // always boxed where it travels (`Effect::State`)
pub enum StateRecord {
    Active(Item),
    Done { pool: String, decided_at: i64 },
}

impl StateRecord {
    pub fn pool(&self) -> &str {
        match self {
            Self::Active(item) => &item.pool,
            Self::Done { pool, .. } => pool,
        }
    }
}

/// Why a verdict was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rejection {
    UnknownDecision,
    AlreadyDecided,
    UnknownLease,
    StaleLease,
    LeaseRevoked,
    WrongReviewer,
    LeaseExpired,
    UnknownReviewer,
    MissingRole,
    Duplicate,
    InvalidAmendment,
}

impl Rejection {
    pub const ALL: [Rejection; 11] = [
        Self::UnknownDecision,
        Self::AlreadyDecided,
        Self::UnknownLease,
        Self::StaleLease,
        Self::LeaseRevoked,
        Self::WrongReviewer,
        Self::LeaseExpired,
        Self::UnknownReviewer,
        Self::MissingRole,
        Self::Duplicate,
        Self::InvalidAmendment,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownDecision => "unknown_decision",
            Self::AlreadyDecided => "already_decided",
            Self::UnknownLease => "unknown_lease",
            Self::StaleLease => "stale_lease",
            Self::LeaseRevoked => "lease_revoked",
            Self::WrongReviewer => "wrong_reviewer",
            Self::LeaseExpired => "lease_expired",
            Self::UnknownReviewer => "unknown_reviewer",
            Self::MissingRole => "missing_role",
            Self::Duplicate => "duplicate",
            Self::InvalidAmendment => "invalid_amendment",
        }
    }
}

/// Something for metrics. Labels are low-cardinality: pools, reasons, kinds — never reviewer ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    Queued {
        pool: Arc<str>,
    },
    DuplicateRequest,
    /// `wait_ms` is the time since queueing, for the first assignment of an item.
    Assigned {
        pool: Arc<str>,
        first: bool,
        wait_ms: i64,
    },
    Revoked {
        pool: Arc<str>,
        reason: &'static str,
    },
    Escalated {
        pool: Arc<str>,
        reason: &'static str,
    },
    SlaBreached {
        pool: Arc<str>,
    },
    /// A verdict applied; `latency_ms` from its lease's assignment.
    VerdictApplied {
        pool: Arc<str>,
        verdict: VerdictKind,
        latency_ms: i64,
    },
    VerdictRejected {
        reason: Rejection,
    },
    Decided {
        pool: Arc<str>,
        decided_by: DecidedBy,
        overridden: bool,
        latency_ms: i64,
    },
    QaLabeled {
        pool: Arc<str>,
        agrees: bool,
    },
}

/// What a core call produced, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// To `hitl.assignments`, on the reviewer's partition when the roster names one.
    Assignment {
        partition: Option<i32>,
        event: AssignmentEvent,
    },
    Outcome(Outcome),
    Lifecycle(LifecycleEvent),
    /// A changelog entry; `None` deletes it (tombstone).
    State {
        pool: Arc<str>,
        decision_id: Arc<str>,
        record: Option<Box<StateRecord>>,
    },
    Observed(Observation),
}

/// A roster entry as the core keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reviewer {
    pub id: Arc<str>,
    pub roles: BTreeSet<String>,
    pub pools: BTreeSet<String>,
    pub capacity: u32,
    pub partition: Option<i32>,
    pub presence: Presence,
    pub last_assigned: i64,
}

impl Reviewer {
    fn serves(&self, pool: &str) -> bool {
        self.pools.is_empty() || self.pools.contains(pool)
    }
    fn has_roles<'a>(&self, mut roles: impl Iterator<Item = &'a str>) -> bool {
        roles.all(|role| self.roles.contains(role))
    }
}

/// The time the rate limiters see: set by the core to `now` before every check.
#[derive(Debug, Clone, Default)]
struct CoreClock(Arc<AtomicU64>);

impl Clock for CoreClock {
    type Instant = Nanos;
    fn now(&self) -> Nanos {
        Nanos::from(self.0.load(Ordering::Relaxed))
    }
}

type Limiter = RateLimiter<
    Arc<str>,
    HashMapStateStore<Arc<str>>,
    CoreClock,
    governor::middleware::NoOpMiddleware<Nanos>,
>;

/// Aggregate numbers for gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolGauges {
    pub pending: usize,
    pub pending_by_tier: [usize; 4],
    pub oldest_enqueued_at: Option<i64>,
    pub in_review: usize,
}

/// The state of the pools this instance owns.
pub struct Core {
    config: CoreConfig,
    slots: Vec<Option<Item>>,
    free: Vec<u32>,
    index: HashMap<Arc<str>, u32>,
    queues: BTreeMap<Arc<str>, Queue>,
    timers: BTreeSet<(i64, u32)>,
    /// Items with at least one active lease.
    leased: BTreeSet<u32>,
    done: HashMap<Arc<str>, (Arc<str>, i64)>,
    done_order: BTreeSet<(i64, Arc<str>)>,
    roster: BTreeMap<Arc<str>, Reviewer>,
    /// Active leases per reviewer and pool.
    inflight: HashMap<Arc<str>, BTreeMap<Arc<str>, u32>>,
    interned: HashSet<Arc<str>>,
    limiters: HashMap<Arc<str>, Limiter>,
    clock: CoreClock,
    touched: Vec<u32>,
}

fn tier_number(tier: &str) -> u8 {
    match tier.to_ascii_lowercase().as_str() {
        "low" => 0,
        "high" => 2,
        "urgent" => 3,
        _ => 1,
    }
}

fn status_of(verdict: VerdictKind) -> OutcomeStatus {
    match verdict {
        VerdictKind::Reject => OutcomeStatus::Rejected,
        VerdictKind::Amend => OutcomeStatus::Amended,
        _ => OutcomeStatus::Approved,
    }
}

impl Core {
    pub fn new(config: CoreConfig) -> Self {
        Self {
            config,
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            queues: BTreeMap::new(),
            timers: BTreeSet::new(),
            leased: BTreeSet::new(),
            done: HashMap::new(),
            done_order: BTreeSet::new(),
            roster: BTreeMap::new(),
            inflight: HashMap::new(),
            interned: HashSet::new(),
            limiters: HashMap::new(),
            clock: CoreClock::default(),
            touched: Vec::new(),
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Undecided items.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn item(&self, decision_id: &str) -> Option<&Item> {
        let slot = *self.index.get(decision_id)?;
        self.slots[slot as usize].as_ref()
    }

    pub fn items(&self) -> impl Iterator<Item = &Item> {
        self.slots.iter().flatten()
    }

    pub fn is_decided(&self, decision_id: &str) -> bool {
        self.done.contains_key(decision_id)
    }

    pub fn reviewer(&self, id: &str) -> Option<&Reviewer> {
        self.roster.get(id)
    }

    pub fn reviewers(&self) -> impl Iterator<Item = &Reviewer> {
        self.roster.values()
    }

    /// Active leases of a reviewer in a pool.
    pub fn inflight(&self, reviewer: &str, pool: &str) -> u32 {
        self.inflight
            .get(reviewer)
            .and_then(|pools| pools.get(pool))
            .copied()
            .unwrap_or(0)
    }

    /// Items waiting in a pool's queue, in the order they will be served.
    pub fn queued(&self, pool: &str) -> Vec<Arc<str>> {
        self.queues
            .get(pool)
            .map(|queue| queue.iter().map(|(_, id)| id.clone()).collect())
            .unwrap_or_default()
    }

    /// Per-pool numbers for gauges.
    pub fn gauges(&self) -> BTreeMap<Arc<str>, PoolGauges> {
        let mut gauges: BTreeMap<Arc<str>, PoolGauges> = BTreeMap::new();
        for item in self.items() {
            let entry = gauges.entry(item.pool.clone()).or_default();
            if item.progress().leases.is_empty() {
                entry.pending += 1;
                entry.pending_by_tier[usize::from(item.tier.min(3))] += 1;
                entry.oldest_enqueued_at = Some(
                    entry
                        .oldest_enqueued_at
                        .map_or(item.enqueued_at, |t| t.min(item.enqueued_at)),
                );
            } else {
                entry.in_review += 1;
            }
        }
        gauges
    }

    /// Reviewer utilisation: active leases over the capacity of online reviewers, summed over the
    /// pools each serves here (`None` with nobody online).
    pub fn utilisation(&self) -> Option<f64> {
        let (mut used, mut capacity) = (0u64, 0u64);
        for reviewer in self.roster.values() {
            if reviewer.presence != Presence::Online {
                continue;
            }
            let pools = self
                .queues
                .keys()
                .filter(|pool| reviewer.serves(pool))
                .count() as u64;
            capacity += u64::from(reviewer.capacity) * pools.max(1);
            used += self
                .inflight
                .get(&reviewer.id)
                .map_or(0, |pools| pools.values().map(|n| u64::from(*n)).sum());
        }
        (capacity > 0).then(|| used as f64 / capacity as f64)
    }

    fn intern(&mut self, value: &str) -> Arc<str> {
        if let Some(found) = self.interned.get(value) {
            return found.clone();
        }
        let shared: Arc<str> = Arc::from(value);
        self.interned.insert(shared.clone());
        shared
    }

    fn policy(&self, pool: &str) -> &PoolPolicy {
        self.config.pool(pool)
    }

    // ---------------------------------------------------------------- inputs

    /// A review request from the router. Idempotent by decision_id: a known or decided id
    /// changes nothing.
    pub fn request(&mut self, request: &ReviewRequest, now: i64, out: &mut Vec<Effect>) {
        let decision = &request.decision;
        if self.index.contains_key(decision.decision_id.as_str())
            || self.done.contains_key(decision.decision_id.as_str())
        {
            out.push(Effect::Observed(Observation::DuplicateRequest));
            return;
        }
        let pool = self.intern(&request.pool);
        let id: Arc<str> = Arc::from(decision.decision_id.as_str());
        let enqueued_at = request.routed_at.min(now);
        let sla_deadline = request.sla_deadline.max(enqueued_at);
        let tier = tier_number(&request.priority_tier);
        let pending = Pending {
            id: String::new(),
            enqueued_at,
            sla_deadline,
            tier,
            risk: decision.risk_score,
            amount: decision.amount,
        };
        let params = self.config.decay.clone();
        let key = self
            .queues
            .entry(pool.clone())
            .or_insert_with(|| Queue::new(params))
            .push_shared(id.clone(), &pending);
        let item = Item {
            decision_id: id.clone(),
            pool: pool.clone(),
            qa_sample: request.kind == ReviewKind::QaSample,
            workflow: self.intern(&decision.workflow),
            subject: decision.subject.as_str().into(),
            action: self.intern(&decision.action),
            confidence: decision.confidence,
            producer: self.intern(&decision.producer),
            created_at: decision.created_at,
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
            quorum: request.quorum.clamp(1, 16) as u8,
            policy_rule: self.intern(&request.policy_rule),
            policy_version: self.intern(&request.policy_version),
            tier,
            enqueued_at,
            sla_deadline,
            key,
            level: 0,
            sequence: 0,
            progress: None,
            due: None,
        };
        let slot = self.insert(item);
        let item = self.slots[slot as usize].as_mut().expect("inserted");
        let mut event = item.next_event(LifecycleKind::Queued, now);
        event
            .attributes
            .insert("sla_deadline".into(), sla_deadline.to_string());
        event
            .attributes
            .insert("quorum".into(), item.quorum.to_string());
        out.push(Effect::Lifecycle(event));
        out.push(Effect::Observed(Observation::Queued { pool: pool.clone() }));
        self.schedule(slot);
        self.touched.push(slot);
        // A request whose deadlines already passed (a late replay) is handled at once.
        if self.slots[slot as usize]
            .as_ref()
            .and_then(|item| item.due)
            .is_some_and(|due| due <= now)
        {
            self.tick_timers(now, out);
        }
        self.assign_pool(&pool, now, out);
        self.flush(out);
    }

    /// A roster update. Going offline (or away) stops new assignments; offline also revokes the
    /// reviewer's leases and requeues those items at their old priority.
    pub fn reviewer_status(&mut self, status: &ReviewerStatus, now: i64, out: &mut Vec<Effect>) {
        let id = self.intern(&status.reviewer_id);
        let last_assigned = self.roster.get(&id).map_or(i64::MIN, |r| r.last_assigned);
        let reviewer = Reviewer {
            id: id.clone(),
            roles: status.roles.iter().cloned().collect(),
            pools: status.pools.iter().cloned().collect(),
            capacity: status.capacity.max(0) as u32,
            partition: status.partition.filter(|p| *p >= 0),
            presence: status.presence,
            last_assigned,
        };
        let offline = reviewer.presence == Presence::Offline;
        self.roster.insert(id.clone(), reviewer);
        if offline {
            self.revoke_all_of(&id, "reviewer_offline", now, out);
        }
        self.assign_all(now, out);
        self.flush(out);
    }

    /// The reviewer left the roster (a tombstone on `hitl.reviewers`): as offline, then forgotten.
    pub fn reviewer_removed(&mut self, reviewer_id: &str, now: i64, out: &mut Vec<Effect>) {
        let Some(reviewer) = self.roster.remove(reviewer_id) else {
            return;
        };
        self.revoke_all_of(&reviewer.id, "reviewer_removed", now, out);
        self.assign_all(now, out);
        self.flush(out);
    }

    /// A reviewer's verdict: applied only from the current lease holder, before expiry plus grace,
    /// with the required roles; anything else is rejected with a reason and recorded.
    pub fn verdict(&mut self, verdict: &Verdict, now: i64, out: &mut Vec<Effect>) {
        match self.check(verdict, now) {
            Err(reason) => self.reject(verdict, reason, now, out),
            Ok((slot, lease_index)) => self.apply(verdict, slot, lease_index, now, out),
        }
        self.flush(out);
    }

    /// Timers (lease expiry, SLA escalation and breach, forgetting old decided ids), then an
    /// assignment pass over every pool.
    pub fn tick(&mut self, now: i64, out: &mut Vec<Effect>) {
        self.tick_timers(now, out);
        let retention = self.config.done_retention.as_millis() as i64;
        while let Some((decided_at, id)) = self.done_order.first().cloned() {
            if decided_at.saturating_add(retention) > now {
                break;
            }
            self.done_order.pop_first();
            if let Some((pool, _)) = self.done.remove(&id) {
                out.push(Effect::State {
                    pool,
                    decision_id: id,
                    record: None,
                });
            }
        }
        self.assign_all(now, out);
        self.flush(out);
    }

    // ---------------------------------------------------------------- restore

    /// Puts back the latest changelog entry of `decision_id`, replacing what is known of it.
    pub fn restore_entry(&mut self, decision_id: &str, record: Option<StateRecord>) {
        self.forget(decision_id);
        match record {
            None => {}
            Some(StateRecord::Done { pool, decided_at }) => {
                let pool = self.intern(&pool);
                let id: Arc<str> = Arc::from(decision_id);
                self.done.insert(id.clone(), (pool, decided_at));
                self.done_order.insert((decided_at, id));
            }
            Some(StateRecord::Active(mut item)) => {
                item.pool = self.intern(&item.pool);
                item.workflow = self.intern(&item.workflow);
                item.action = self.intern(&item.action);
                item.producer = self.intern(&item.producer);
                item.policy_rule = self.intern(&item.policy_rule);
                item.policy_version = self.intern(&item.policy_version);
                let params = self.config.decay.clone();
                let (pool, id, key) = (item.pool.clone(), item.decision_id.clone(), item.key);
                let wanted = item.wanted() > 0;
                let leases: Vec<Arc<str>> = item
                    .progress()
                    .leases
                    .iter()
                    .map(|lease| lease.reviewer.clone())
                    .collect();
                let queue = self
                    .queues
                    .entry(pool.clone())
                    .or_insert_with(|| Queue::new(params));
                if wanted {
                    queue.requeue(id, key);
                }
                let slot = self.insert(item);
                for reviewer in leases {
                    let reviewer = self.intern(&reviewer);
                    self.add_inflight(&reviewer, &pool, 1);
                }
                if self.has_leases(slot) {
                    self.leased.insert(slot);
                }
                self.schedule(slot);
            }
        }
    }

    /// Drops everything about the pools `keep` rejects (their partition moved to another
    /// instance). No effects: the new owner restores them from the changelog.
    pub fn retain_pools(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let gone: Vec<Arc<str>> = self
            .items()
            .filter(|item| !keep(&item.pool))
            .map(|item| item.decision_id.clone())
            .collect();
        for id in gone {
            self.forget(&id);
        }
        let done: Vec<Arc<str>> = self
            .done
            .iter()
            .filter(|(_, (pool, _))| !keep(pool))
            .map(|(id, _)| id.clone())
            .collect();
        for id in done {
            self.forget(&id);
        }
        self.queues.retain(|pool, _| keep(pool));
    }

    /// Removes all state of one decision without effects.
    fn forget(&mut self, decision_id: &str) {
        if let Some((_, decided_at)) = self.done.remove(decision_id) {
            self.done_order
                .remove(&(decided_at, Arc::from(decision_id)));
        }
        let Some(slot) = self.index.get(decision_id).copied() else {
            return;
        };
        let item = self.remove_slot(slot);
        for lease in &item.progress().leases {
            self.add_inflight(&lease.reviewer, &item.pool, -1);
        }
        if let Some(queue) = self.queues.get_mut(&item.pool) {
            queue.remove(decision_id);
        }
    }

    // ---------------------------------------------------------------- slots and timers

    fn insert(&mut self, item: Item) -> u32 {
        let id = item.decision_id.clone();
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
        self.index.insert(id, slot);
        slot
    }

    fn remove_slot(&mut self, slot: u32) -> Item {
        let item = self.slots[slot as usize].take().expect("live slot");
        if let Some(due) = item.due {
            self.timers.remove(&(due, slot));
        }
        self.leased.remove(&slot);
        self.index.remove(&item.decision_id);
        self.free.push(slot);
        item
    }

    fn item_mut(&mut self, slot: u32) -> &mut Item {
        self.slots[slot as usize].as_mut().expect("live slot")
    }

    fn item_ref(&self, slot: u32) -> &Item {
        self.slots[slot as usize].as_ref().expect("live slot")
    }

    fn has_leases(&self, slot: u32) -> bool {
        !self.item_ref(slot).progress().leases.is_empty()
    }

    fn add_inflight(&mut self, reviewer: &Arc<str>, pool: &Arc<str>, delta: i32) {
        let pools = self.inflight.entry(reviewer.clone()).or_default();
        let count = pools.entry(pool.clone()).or_insert(0);
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            pools.remove(pool);
            if pools.is_empty() {
                self.inflight.remove(reviewer);
            }
        }
    }

    /// When the item next needs attention: a lease past expiry plus grace, its next SLA
    /// escalation point, or its deadline.
    fn next_due(&self, item: &Item) -> Option<i64> {
        let policy = self.policy(&item.pool);
        let progress = item.progress();
        let grace = policy.verdict_grace.as_millis() as i64;
        let lease = progress
            .leases
            .iter()
            .map(|lease| lease.expires_at.saturating_add(grace).saturating_add(1))
            .min();
        let sla = item.sla_deadline - item.enqueued_at;
        let escalation = policy
            .escalate_at_sla
            .get(usize::from(progress.sla_escalations))
            .map(|fraction| item.enqueued_at + (sla as f64 * fraction).ceil() as i64);
        let breach = (!progress.breached).then_some(item.sla_deadline);
        [lease, escalation, breach].into_iter().flatten().min()
    }

    fn schedule(&mut self, slot: u32) {
        let item = self.item_ref(slot);
        let (old, new) = (item.due, self.next_due(item));
        if old == new {
            return;
        }
        if let Some(old) = old {
            self.timers.remove(&(old, slot));
        }
        if let Some(new) = new {
            self.timers.insert((new, slot));
        }
        self.item_mut(slot).due = new;
    }

    fn tick_timers(&mut self, now: i64, out: &mut Vec<Effect>) {
        while let Some(&(due, slot)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.pop_first();
            self.item_mut(slot).due = None;
            self.on_timer(slot, now, out);
        }
    }

    fn on_timer(&mut self, slot: u32, now: i64, out: &mut Vec<Effect>) {
        let policy = self.policy(&self.item_ref(slot).pool).clone();
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
            let sla = item.sla_deadline - item.enqueued_at;
            if now < item.enqueued_at + (sla as f64 * fraction).ceil() as i64 {
                break;
            }
            self.item_mut(slot).progress_mut().sla_escalations += 1;
            self.escalate(slot, "sla_risk", now, out);
        }
        // SLA breach.
        let item = self.item_ref(slot);
        if !item.progress().breached && now >= item.sla_deadline {
            self.breach(slot, &policy, now, out);
            if self.slots[slot as usize].is_none() {
                return;
            }
        }
        self.requeue_if_wanted(slot);
        self.schedule(slot);
        self.touched.push(slot);
    }

    fn breach(&mut self, slot: u32, policy: &PoolPolicy, now: i64, out: &mut Vec<Effect>) {
        let item = self.item_mut(slot);
        item.progress_mut().breached = true;
        let overdue_by = now - item.sla_deadline;
        let pool = item.pool.clone();
        let qa = item.qa_sample;
        let mut event = item.next_event(LifecycleKind::SlaBreached, now);
        event
            .attributes
            .insert("overdue_ms".into(), overdue_by.to_string());
        out.push(Effect::Observed(Observation::SlaBreached { pool }));
        if qa {
            // Nothing waits for a QA sample: it expires unlabeled.
            out.push(Effect::Lifecycle(
                event.with_reason("QA sample expired unlabeled"),
            ));
            self.revoke_every_lease(slot, "sla_expired", now, out);
            self.finish(slot, now, out);
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
                    .unwrap_or_else(|| self.item_ref(slot).action.to_string());
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

    // ---------------------------------------------------------------- assignment

    fn assign_all(&mut self, now: i64, out: &mut Vec<Effect>) {
        let pools: Vec<Arc<str>> = self
            .queues
            .iter()
            .filter(|(_, queue)| !queue.is_empty())
            .map(|(pool, _)| pool.clone())
            .collect();
        for pool in pools {
            self.assign_pool(&pool, now, out);
        }
    }

    fn any_free_reviewer(&self, pool: &str) -> bool {
        self.roster.values().any(|reviewer| {
            reviewer.presence == Presence::Online
                && reviewer.serves(pool)
                && self.inflight(&reviewer.id, pool) < reviewer.capacity
        })
    }

    /// The eligible reviewer with the lowest load ratio, then least recently assigned, then id.
    fn best_reviewer(&self, item: &Item, limited: &[Arc<str>]) -> Option<Arc<str>> {
        let policy = self.policy(&item.pool);
        let progress = item.progress();
        let extra_roles: Vec<&str> = policy
            .tiers
            .iter()
            .take(usize::from(item.level))
            .flat_map(|tier| tier.roles.iter().map(String::as_str))
            .collect();
        let mut best: Option<(&Reviewer, u32)> = None;
        for reviewer in self.roster.values() {
            if reviewer.presence != Presence::Online || !reviewer.serves(&item.pool) {
                continue;
            }
            let load = self.inflight(&reviewer.id, &item.pool);
            if load >= reviewer.capacity
                || reviewer.id == item.producer
                || progress.excluded.contains(&reviewer.id)
                || progress.leases.iter().any(|l| l.reviewer == reviewer.id)
                || !reviewer.has_roles(
                    item.required_roles
                        .iter()
                        .map(|r| &**r)
                        .chain(extra_roles.iter().copied()),
                )
                || limited.contains(&reviewer.id)
            {
                continue;
            }
            let better = match best {
                None => true,
                Some((other, other_load)) => {
                    // load / capacity, compared without division.
                    let (mine, theirs) = (
                        u64::from(load) * u64::from(other.capacity),
                        u64::from(other_load) * u64::from(reviewer.capacity),
                    );
                    (mine, reviewer.last_assigned, &reviewer.id)
                        < (theirs, other.last_assigned, &other.id)
                }
            };
            if better {
                best = Some((reviewer, load));
            }
        }
        best.map(|(reviewer, _)| reviewer.id.clone())
    }

    /// Takes a token from the reviewer's rate limiter for this pool (always granted without one).
    fn rate_allows(&mut self, pool: &Arc<str>, reviewer: &Arc<str>, now: i64) -> bool {
        let per_minute = self.policy(pool).max_assignments_per_minute;
        let Some(rate) = NonZeroU32::new(per_minute) else {
            return true;
        };
        self.clock.0.store(
            (now.max(0) as u64).saturating_mul(1_000_000),
            Ordering::Relaxed,
        );
        let clock = self.clock.clone();
        let limiter = self.limiters.entry(pool.clone()).or_insert_with(|| {
            RateLimiter::new(Quota::per_minute(rate), HashMapStateStore::default(), clock)
        });
        limiter.check_key(reviewer).is_ok()
    }

    fn assign_pool(&mut self, pool: &Arc<str>, now: i64, out: &mut Vec<Effect>) {
        if !self.any_free_reviewer(pool) {
            return;
        }
        let max_scan = self.config.max_scan;
        let mut scanned = 0usize;
        let mut cursor: Option<Key> = None;
        let mut limited: Vec<Arc<str>> = Vec::new();
        loop {
            let Some(queue) = self.queues.get(pool) else {
                return;
            };
            let mut found = None;
            let candidates: Box<dyn Iterator<Item = (&Key, &Arc<str>)>> = match cursor {
                None => Box::new(queue.iter()),
                Some(key) => Box::new(queue.iter_from(key)),
            };
            for (key, id) in candidates {
                if scanned >= max_scan {
                    break;
                }
                scanned += 1;
                let slot = self.index[id];
                if let Some(reviewer) = self.best_reviewer(self.item_ref(slot), &limited) {
                    found = Some((*key, slot, reviewer));
                    break;
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
            let id = self.item_ref(slot).decision_id.clone();
            if let Some(queue) = self.queues.get_mut(pool) {
                queue.remove(&id);
            }
            self.assign(slot, &reviewer, now, out);
            self.requeue_if_wanted(slot);
            if !self.any_free_reviewer(pool) {
                return;
            }
        }
    }

    fn masked_context(&self, item: &Item, reviewer: &Reviewer) -> BTreeMap<String, String> {
        let policy = self.policy(&item.pool);
        let sees_pii = policy
            .pii_roles
            .iter()
            .any(|role| reviewer.roles.contains(role));
        item.context
            .iter()
            .map(|(key, value)| {
                let hidden = !sees_pii && item.sensitive.iter().any(|s| s == key);
                let shown = if hidden { MASK } else { &**value };
                (key.to_string(), shown.to_owned())
            })
            .collect()
    }

    fn assign(&mut self, slot: u32, reviewer_id: &Arc<str>, now: i64, out: &mut Vec<Effect>) {
        let lease_ms = self.policy(&self.item_ref(slot).pool).lease.as_millis() as i64;
        let reviewer = self.roster[reviewer_id].clone();
        let context = self.masked_context(self.item_ref(slot), &reviewer);
        let item = self.item_mut(slot);
        let lease_id_prefix = item.decision_id.clone();
        let progress = item.progress_mut();
        progress.attempts += 1;
        let attempt = progress.attempts;
        let first = progress.first_assigned_at.is_none();
        progress.first_assigned_at.get_or_insert(now);
        let lease = Lease {
            id: format!("{lease_id_prefix}#{attempt}"),
            reviewer: reviewer_id.clone(),
            assigned_at: now,
            expires_at: now + lease_ms,
            attempt,
        };
        progress.leases.push(lease.clone());
        let event = AssignmentEvent {
            assignment_id: lease.id.clone(),
            decision_id: item.decision_id.to_string(),
            reviewer_id: reviewer_id.to_string(),
            kind: AssignmentKind::Assigned,
            pool: item.pool.to_string(),
            priority: Queue::urgency(&item.key, now),
            sla_deadline: item.sla_deadline,
            lease_expires_at: lease.expires_at,
            action: item.action.to_string(),
            confidence: item.confidence,
            context,
            attempt: attempt as i32,
            reason: None,
            workflow: item.workflow.to_string(),
            subject: item.subject.to_string(),
            qa_sample: item.qa_sample,
        };
        let mut lifecycle = item.next_event(LifecycleKind::Assigned, now);
        lifecycle.reviewer_id = Some(reviewer_id.to_string());
        lifecycle.assignment_id = Some(lease.id.clone());
        lifecycle
            .attributes
            .insert("attempt".into(), attempt.to_string());
        lifecycle
            .attributes
            .insert("level".into(), item.level.to_string());
        lifecycle
            .attributes
            .insert("lease_expires_at".into(), lease.expires_at.to_string());
        let (pool, wait_ms) = (item.pool.clone(), now - item.enqueued_at);
        out.push(Effect::Assignment {
            partition: reviewer.partition,
            event,
        });
        out.push(Effect::Lifecycle(lifecycle));
        out.push(Effect::Observed(Observation::Assigned {
            pool: pool.clone(),
            first,
            wait_ms,
        }));
        self.add_inflight(reviewer_id, &pool, 1);
        if let Some(entry) = self.roster.get_mut(reviewer_id) {
            entry.last_assigned = now;
        }
        self.leased.insert(slot);
        self.schedule(slot);
        self.touched.push(slot);
    }

    fn requeue_if_wanted(&mut self, slot: u32) {
        let item = self.item_ref(slot);
        let (pool, id, key, wanted) = (
            item.pool.clone(),
            item.decision_id.clone(),
            item.key,
            item.wanted() > 0,
        );
        if let Some(queue) = self.queues.get_mut(&pool) {
            if wanted {
                queue.requeue(id, key);
            } else {
                queue.remove(&id);
            }
        }
    }

    // ---------------------------------------------------------------- leases

    /// Ends a lease without a verdict: REVOKED to the reviewer, a lifecycle event, capacity back.
    fn revoke(
        &mut self,
        slot: u32,
        lease_id: &str,
        reason: &'static str,
        exclude: bool,
        now: i64,
        out: &mut Vec<Effect>,
    ) {
        let item = self.item_mut(slot);
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
        let event = AssignmentEvent {
            assignment_id: lease.id.clone(),
            decision_id: item.decision_id.to_string(),
            reviewer_id: lease.reviewer.to_string(),
            kind: AssignmentKind::Revoked,
            pool: item.pool.to_string(),
            priority: Queue::urgency(&item.key, now),
            sla_deadline: item.sla_deadline,
            lease_expires_at: lease.expires_at,
            action: item.action.to_string(),
            confidence: item.confidence,
            context: BTreeMap::new(),
            attempt: lease.attempt as i32,
            reason: Some(reason.to_owned()),
            workflow: item.workflow.to_string(),
            subject: item.subject.to_string(),
            qa_sample: item.qa_sample,
        };
        let mut lifecycle = item
            .next_event(LifecycleKind::Revoked, now)
            .with_reason(reason);
        lifecycle.reviewer_id = Some(lease.reviewer.to_string());
        lifecycle.assignment_id = Some(lease.id.clone());
        let pool = item.pool.clone();
        let partition = self
            .roster
            .get(&lease.reviewer)
            .and_then(|reviewer| reviewer.partition);
        out.push(Effect::Assignment { partition, event });
        out.push(Effect::Lifecycle(lifecycle));
        out.push(Effect::Observed(Observation::Revoked {
            pool: pool.clone(),
            reason,
        }));
        self.add_inflight(&lease.reviewer, &pool, -1);
        if !self.has_leases(slot) {
            self.leased.remove(&slot);
        }
        self.touched.push(slot);
    }

    fn revoke_every_lease(
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
    fn revoke_all_of(
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
            for id in ids {
                self.revoke(slot, &id, reason, false, now, out);
            }
            if self.slots[slot as usize].is_some() {
                self.requeue_if_wanted(slot);
                self.schedule(slot);
            }
        }
    }

    // ---------------------------------------------------------------- escalation

    /// Moves an item to its pool's next tier; leases whose holders lack the new roles are
    /// revoked. At the top tier it stays where it is (recorded).
    fn escalate(&mut self, slot: u32, reason: &'static str, now: i64, out: &mut Vec<Effect>) {
        let item = self.item_ref(slot);
        let policy = self.policy(&item.pool).clone();
        let pool = item.pool.clone();
        let next = usize::from(item.level) + 1;
        let Some(tier) = policy.tiers.get(next - 1) else {
            let item = self.item_mut(slot);
            let mut event = item
                .next_event(LifecycleKind::Escalated, now)
                .with_reason(format!("{reason}: already at the highest tier"));
            event
                .attributes
                .insert("level".into(), item.level.to_string());
            out.push(Effect::Lifecycle(event));
            out.push(Effect::Observed(Observation::Escalated { pool, reason }));
            self.touched.push(slot);
            return;
        };
        let item = self.item_mut(slot);
        item.level = next as u8;
        item.progress_mut().expiries = 0;
        let mut event = item
            .next_event(LifecycleKind::Escalated, now)
            .with_reason(reason);
        event.attributes.insert("level".into(), next.to_string());
        event.attributes.insert("tier".into(), tier.name.clone());
        out.push(Effect::Lifecycle(event));
        out.push(Effect::Observed(Observation::Escalated { pool, reason }));
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
        for id in unqualified {
            self.revoke(slot, &id, "escalated", false, now, out);
        }
        self.requeue_if_wanted(slot);
        self.touched.push(slot);
    }

    // ---------------------------------------------------------------- verdicts

    fn check(&self, verdict: &Verdict, now: i64) -> Result<(u32, usize), Rejection> {
        let Some(&slot) = self.index.get(verdict.decision_id.as_str()) else {
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
            return Err(
                match progress
                    .closed
                    .iter()
                    .find(|closed| closed.id == verdict.assignment_id)
                {
                    Some(closed)
                        if *closed.reviewer == *verdict.reviewer_id
                            && closed.verdict == Some(verdict.verdict) =>
                    {
                        Rejection::Duplicate
                    }
                    Some(closed) if closed.verdict.is_none() => Rejection::LeaseRevoked,
                    Some(_) => Rejection::StaleLease,
                    None => Rejection::UnknownLease,
                },
            );
        };
        let lease = &progress.leases[index];
        if *lease.reviewer != *verdict.reviewer_id {
            return Err(Rejection::WrongReviewer);
        }
        let grace = self.policy(&item.pool).verdict_grace.as_millis() as i64;
        if now > lease.expires_at.saturating_add(grace) {
            return Err(Rejection::LeaseExpired);
        }
        let Some(reviewer) = self.roster.get(verdict.reviewer_id.as_str()) else {
            return Err(Rejection::UnknownReviewer);
        };
        let policy = self.policy(&item.pool);
        let tier_roles = policy
            .tiers
            .iter()
            .take(usize::from(item.level))
            .flat_map(|tier| tier.roles.iter().map(String::as_str));
        if !reviewer.has_roles(item.required_roles.iter().map(|r| &**r).chain(tier_roles)) {
            return Err(Rejection::MissingRole);
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

    fn reject(&mut self, verdict: &Verdict, reason: Rejection, now: i64, out: &mut Vec<Effect>) {
        let kind = format!("{:?}", verdict.verdict).to_ascii_uppercase();
        let mut event = match self.index.get(verdict.decision_id.as_str()).copied() {
            Some(slot) => {
                self.touched.push(slot);
                self.item_mut(slot)
                    .next_event(LifecycleKind::VerdictRejected, now)
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
        event.attributes.insert("verdict".into(), kind);
        if !verdict.rationale.is_empty() {
            event
                .attributes
                .insert("rationale".into(), verdict.rationale.clone());
        }
        out.push(Effect::Lifecycle(event));
        out.push(Effect::Observed(Observation::VerdictRejected { reason }));
    }

    fn apply(
        &mut self,
        verdict: &Verdict,
        slot: u32,
        lease_index: usize,
        now: i64,
        out: &mut Vec<Effect>,
    ) {
        let policy = self.policy(&self.item_ref(slot).pool).clone();
        let item = self.item_mut(slot);
        let pool = item.pool.clone();
        let kind = format!("{:?}", verdict.verdict).to_ascii_uppercase();
        let assigned_at = item.progress().leases[lease_index].assigned_at;
        let mut event = item.next_event(LifecycleKind::Verdict, now);
        event.reviewer_id = Some(verdict.reviewer_id.clone());
        event.assignment_id = Some(verdict.assignment_id.clone());
        event.attributes.insert("verdict".into(), kind);
        if !verdict.rationale.is_empty() {
            event
                .attributes
                .insert("rationale".into(), verdict.rationale.clone());
        }
        if let Some(action) = &verdict.amended_action {
            event
                .attributes
                .insert("amended_action".into(), action.clone());
        }
        if item.qa_sample {
            event.attributes.insert("qa_sample".into(), "true".into());
        }
        out.push(Effect::Observed(Observation::VerdictApplied {
            pool: pool.clone(),
            verdict: verdict.verdict,
            latency_ms: now - assigned_at,
        }));
        self.touched.push(slot);

        if verdict.verdict == VerdictKind::Renew {
            let lease_ms = policy.lease.as_millis() as i64;
            let item = self.item_mut(slot);
            let lease = &mut item.progress_mut().leases[lease_index];
            lease.expires_at = now + lease_ms;
            let lease = lease.clone();
            event
                .attributes
                .insert("lease_expires_at".into(), lease.expires_at.to_string());
            out.push(Effect::Lifecycle(event));
            let reviewer = self.roster[verdict.reviewer_id.as_str()].clone();
            let context = self.masked_context(self.item_ref(slot), &reviewer);
            let item = self.item_ref(slot);
            out.push(Effect::Assignment {
                partition: reviewer.partition,
                event: AssignmentEvent {
                    assignment_id: lease.id.clone(),
                    decision_id: item.decision_id.to_string(),
                    reviewer_id: lease.reviewer.to_string(),
                    kind: AssignmentKind::Assigned,
                    pool: item.pool.to_string(),
                    priority: Queue::urgency(&item.key, now),
                    sla_deadline: item.sla_deadline,
                    lease_expires_at: lease.expires_at,
                    action: item.action.to_string(),
                    confidence: item.confidence,
                    context,
                    attempt: lease.attempt as i32,
                    reason: Some("renewed".into()),
                    workflow: item.workflow.to_string(),
                    subject: item.subject.to_string(),
                    qa_sample: item.qa_sample,
                },
            });
            self.schedule(slot);
            return;
        }

        // Every other verdict ends the lease and keeps this reviewer off the item.
        let item = self.item_mut(slot);
        let progress = item.progress_mut();
        let lease = progress.leases.remove(lease_index);
        progress.closed.push(ClosedLease {
            id: lease.id.clone(),
            reviewer: lease.reviewer.clone(),
            verdict: Some(verdict.verdict),
        });
        if !progress.excluded.contains(&lease.reviewer) {
            progress.excluded.push(lease.reviewer.clone());
        }
        self.add_inflight(&lease.reviewer, &pool, -1);
        if !self.has_leases(slot) {
            self.leased.remove(&slot);
        }
        out.push(Effect::Lifecycle(event));

        match verdict.verdict {
            VerdictKind::Renew => unreachable!("handled above"),
            VerdictKind::Defer => {
                out.push(Effect::Observed(Observation::Revoked {
                    pool,
                    reason: "deferred",
                }));
            }
            VerdictKind::Escalate => self.escalate(slot, "reviewer_escalated", now, out),
            VerdictKind::Approve | VerdictKind::Reject | VerdictKind::Amend => {
                let item = self.item_mut(slot);
                let pool_of_item = item.pool.clone();
                let action = match verdict.verdict {
                    VerdictKind::Amend => verdict.amended_action.clone().unwrap_or_default(),
                    _ => item.action.to_string(),
                };
                if item.qa_sample {
                    let agrees = verdict.verdict == VerdictKind::Approve;
                    out.push(Effect::Observed(Observation::QaLabeled { pool, agrees }));
                    self.revoke_every_lease(slot, "decided", now, out);
                    self.finish(slot, now, out);
                    self.assign_pool(&pool_of_item, now, out);
                    return;
                }
                let quorum = item.quorum.max(1);
                let progress = item.progress_mut();
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
                } else if progress.votes.len() >= usize::from(quorum) {
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
                    self.assign_pool(&pool_of_item, now, out);
                    return;
                }
            }
        }
        self.requeue_if_wanted(slot);
        self.schedule(slot);
        let pool = self.item_ref(slot).pool.clone();
        self.assign_pool(&pool, now, out);
    }

    // ---------------------------------------------------------------- outcomes

    #[allow(clippy::too_many_arguments)]
    fn decide(
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
        let item = self.item_mut(slot);
        let overridden = status != OutcomeStatus::Approved || final_action != *item.action;
        let outcome = Outcome {
            decision_id: item.decision_id.to_string(),
            final_action,
            status,
            decided_by,
            reviewer_ids,
            policy_rule: item.policy_rule.to_string(),
            policy_version: item.policy_version.to_string(),
            decided_at: now,
            time_to_decision_ms: now - item.created_at,
            workflow: item.workflow.to_string(),
            rationale,
        };
        let mut event = item.next_event(LifecycleKind::Outcome, now);
        event.outcome = Some(outcome.clone());
        out.push(Effect::Observed(Observation::Decided {
            pool: item.pool.clone(),
            decided_by,
            overridden,
            latency_ms: outcome.time_to_decision_ms,
        }));
        out.push(Effect::Outcome(outcome));
        out.push(Effect::Lifecycle(event));
        self.finish(slot, now, out);
    }

    /// The item is over: forget it, remember its id as decided.
    fn finish(&mut self, slot: u32, now: i64, out: &mut Vec<Effect>) {
        let item = self.remove_slot(slot);
        for lease in &item.progress().leases {
            self.add_inflight(&lease.reviewer, &item.pool, -1);
        }
        if let Some(queue) = self.queues.get_mut(&item.pool) {
            queue.remove(&item.decision_id);
        }
        self.done
            .insert(item.decision_id.clone(), (item.pool.clone(), now));
        self.done_order.insert((now, item.decision_id.clone()));
        out.push(Effect::State {
            pool: item.pool.clone(),
            decision_id: item.decision_id.clone(),
            record: Some(Box::new(StateRecord::Done {
                pool: item.pool.to_string(),
                decided_at: now,
            })),
        });
    }

    /// One changelog entry per item changed by the call.
    fn flush(&mut self, out: &mut Vec<Effect>) {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for slot in touched.drain(..) {
            if let Some(item) = self.slots[slot as usize].as_ref() {
                out.push(Effect::State {
                    pool: item.pool.clone(),
                    decision_id: item.decision_id.clone(),
                    record: Some(Box::new(StateRecord::Active(item.clone()))),
                });
            }
        }
        self.touched = touched;
    }
}
