//! The assignment core: pending queues per pool, the reviewer roster, leases, escalation, SLA
//! breach, quorum and verdict validation. Pure and deterministic: no Kafka, no clock — every call
//! takes the time as `now` (milliseconds), and the same calls give the same effects.
//!
//! Each call appends `Effect`s: records for the shell to produce (assignment events, outcomes,
//! lifecycle events, changelog entries) and observations for metrics. See `README.md` beside this
//! file for the guarantees and the data layout.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use governor::{clock::Clock, nanos::Nanos, state::keyed::HashMapStateStore, Quota, RateLimiter};
use hashbrown::HashTable;
use hitl_runtime::trace::TraceContext;
use hitl_schema::{
    AssignmentEvent, AssignmentKind, DecidedBy, LifecycleEvent, LifecycleKind, Outcome,
    OutcomeStatus, Presence, ReviewKind, ReviewRequest, ReviewerStatus, Verdict, VerdictKind,
};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, Xxh3Builder};

use crate::{
    pools::{BreachPolicy, CoreConfig, PoolPolicy},
    queue::{Key, Pending, Queue},
};

mod balancing;
mod changelog;
mod escalation;
mod inputs;
mod leases;
mod outcomes;
mod slots;
mod timers;
mod verdicts;

pub const SERVICE: &str = "assignment";
/// What a reviewer without a PII role sees instead of a sensitive context value.
pub const MASK: &str = "***";
const NO_TIMER: i64 = i64::MAX;

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
#[serde(default)]
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
    /// Set aside: no reviewer on the roster can take it (roles, pool, separation of duties,
    /// exclusions); out of the queue until one who can joins or changes.
    pub set_aside: bool,
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
    set_aside: false,
};

/// An interned string (pool, workflow, action, producer, policy rule and version): four bytes per
/// item instead of a pointer and a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Sym(u32);

#[derive(Default)]
struct Symbols {
    names: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, Sym>,
}

impl Symbols {
    fn intern(&mut self, name: &str) -> Sym {
        if let Some(sym) = self.ids.get(name) {
            return *sym;
        }
        let sym = Sym(self.names.len() as u32);
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.ids.insert(name, sym);
        sym
    }
    fn get(&self, name: &str) -> Option<Sym> {
        self.ids.get(name).copied()
    }
    fn name(&self, sym: Sym) -> &Arc<str> {
        &self.names[sym.0 as usize]
    }
}

/// One undecided review item as held in memory (compact; see `ItemRecord` for its stored form).
#[derive(Debug, Clone)]
struct Item {
    decision_id: Box<str>,
    subject: Box<str>,
    context: Box<[(Box<str>, Box<str>)]>,
    sensitive: Box<[Box<str>]>,
    required_roles: Box<[Box<str>]>,
    progress: Option<Box<Progress>>,
    confidence: f64,
    created_at: i64,
    enqueued_at: i64,
    sla_deadline: i64,
    key: Key,
    /// When its timer fires (`NO_TIMER`: never). Derived, not stored.
    due: i64,
    pool: Sym,
    workflow: Sym,
    action: Sym,
    producer: Sym,
    policy_rule: Sym,
    policy_version: Sym,
    sequence: u32,
    tier: u8,
    quorum: u8,
    level: u8,
    /// `QA_SAMPLE` and `AUTO_REJECTED` bits.
    flags: u8,
    /// The roster epoch at which nobody free could take it and someone eligible was found: no
    /// second roster walk for it until the roster or the item changes. Derived, not stored.
    checked_epoch: u32,
    /// The trace context of the review request (the router's span), when it carried one.
    trace: Option<TraceContext>,
}

/// The item is a QA sample of an automatic decision.
const QA_SAMPLE: u8 = 1;
/// For a QA sample: the automatic decision rejected (rather than approved) the action.
const AUTO_REJECTED: u8 = 2;

impl Item {
    fn qa_sample(&self) -> bool {
        self.flags & QA_SAMPLE != 0
    }
    fn auto_rejected(&self) -> bool {
        self.flags & AUTO_REJECTED != 0
    }
    fn progress(&self) -> &Progress {
        self.progress.as_deref().unwrap_or(&NO_PROGRESS)
    }
    fn progress_mut(&mut self) -> &mut Progress {
        self.progress.get_or_insert_with(Box::default)
    }
    /// How many more reviewers it needs (active leases count as pending votes).
    fn wanted(&self) -> usize {
        let progress = self.progress();
        usize::from(self.quorum.max(1)).saturating_sub(progress.votes.len() + progress.leases.len())
    }
}

/// An item as the changelog stores it (`hitl.assignment.state`), and as tests inspect it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemRecord {
    pub decision_id: String,
    pub pool: String,
    pub qa_sample: bool,
    /// For a QA sample: the automatic decision was a rejection.
    #[serde(default)]
    pub auto_rejected: bool,
    pub workflow: String,
    pub subject: String,
    pub action: String,
    pub confidence: f64,
    pub producer: String,
    pub created_at: i64,
    pub context: Vec<(String, String)>,
    pub sensitive: Vec<String>,
    pub required_roles: Vec<String>,
    pub quorum: u8,
    pub policy_rule: String,
    pub policy_version: String,
    pub tier: u8,
    pub enqueued_at: i64,
    pub sla_deadline: i64,
    /// Its place in the pool's queue, kept for ever (requeued items keep their priority).
    pub key: Key,
    /// Escalation level: 0 = the request's roles; n = plus the roles of the pool's tiers 1..=n.
    pub level: u8,
    /// The sequence number of its last lifecycle event from this service.
    pub sequence: u32,
    #[serde(default)]
    pub progress: Progress,
    /// The review request's `traceparent` (the router's span).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// A changelog entry (`hitl.assignment.state`, keyed by decision_id): the item, or the fact that it
/// was decided (remembered for `done_retention`, then deleted by a tombstone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // decoded one at a time, on restore
pub enum StateRecord {
    Active(ItemRecord),
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

/// What happened to a changelog entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateChange {
    /// The item changed: its current state is the entry.
    Active,
    /// The item was decided (or a QA sample labeled or expired) at `decided_at`.
    Done { decided_at: i64 },
    /// Forgotten after `done_retention`: a tombstone.
    Deleted,
}

/// `StateRecord` borrowed from the core, serialized without copying the item.
#[derive(Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // lives on the stack for one serialization
enum StateView<'a> {
    Active(ItemView<'a>),
    Done { pool: &'a str, decided_at: i64 },
}

#[derive(Serialize)]
struct ItemView<'a> {
    decision_id: &'a str,
    pool: &'a str,
    qa_sample: bool,
    auto_rejected: bool,
    workflow: &'a str,
    subject: &'a str,
    action: &'a str,
    confidence: f64,
    producer: &'a str,
    created_at: i64,
    context: &'a [(Box<str>, Box<str>)],
    sensitive: &'a [Box<str>],
    required_roles: &'a [Box<str>],
    quorum: u8,
    policy_rule: &'a str,
    policy_version: &'a str,
    tier: u8,
    enqueued_at: i64,
    sla_deadline: i64,
    key: Key,
    level: u8,
    sequence: u32,
    progress: &'a Progress,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
}

/// How much of a rejected verdict's rationale its VERDICT_REJECTED event keeps.
pub const MAX_REJECTED_RATIONALE_BYTES: usize = 1024;

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A lease id: `<decision_id>#<attempt>.<32 hex digits>`, the digits an HMAC-SHA256 of the
/// decision, the attempt and the reviewer under the service's lease secret. Nobody without the
/// secret can guess a lease before it is handed out, and replaying the same inputs derives the
/// same id.
pub fn lease_token(secret: &[u8], decision_id: &str, attempt: u32, reviewer_id: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256>>::new_from_slice(secret).expect("any key length");
    mac.update(&(decision_id.len() as u64).to_be_bytes());
    mac.update(decision_id.as_bytes());
    mac.update(&attempt.to_be_bytes());
    mac.update(reviewer_id.as_bytes());
    let tag = mac.finalize().into_bytes();
    format!("{decision_id}#{attempt}.{}", hex::encode(&tag[..16]))
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
    /// Not signed by a key the service trusts (or the signature does not match).
    Unauthenticated,
    /// Signed by a trusted key that may not act for this reviewer.
    NotAuthorized,
    /// A field over its bound (the rationale).
    Oversize,
    /// A RENEW of a lease already at the pool's `max_lease_lifetime`.
    LeaseAtMaximum,
}

impl Rejection {
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
            Self::Unauthenticated => "unauthenticated",
            Self::NotAuthorized => "not_authorized",
            Self::Oversize => "oversize",
            Self::LeaseAtMaximum => "lease_at_maximum",
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
    /// `wait_ms` is the time since queueing; `first` for an item's first assignment.
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
    /// An item was set aside: nobody on the roster can take it.
    SetAside {
        pool: Arc<str>,
    },
}

/// What a core call produced, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// To `hitl.assignments` (sensitive values masked), or with `pii` to `hitl.assignments.pii`
    /// (the same ASSIGNED event with them in clear, for a reviewer holding the pool's PII role), on
    /// the reviewer's partition when the roster names one.
    Assignment {
        partition: Option<i32>,
        event: AssignmentEvent,
        pii: bool,
        /// The `traceparent` for the record: this service's span of the item.
        trace: Option<TraceContext>,
    },
    /// To `hitl.outcomes`, with the item's `traceparent`.
    Outcome(Outcome, Option<TraceContext>),
    /// The item left this service (decided, labeled or expired): its span, for export.
    ReviewSpan(ReviewSpan),
    Lifecycle(LifecycleEvent),
    /// A changelog entry changed: encode it with `Core::state_payload` before the next call.
    State {
        pool: Arc<str>,
        decision_id: String,
        change: StateChange,
    },
    Observed(Observation),
}

/// An item's time in this service, from queued to decided, as one span of the decision's trace.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewSpan {
    /// The span's own context; `parent_span_id` is the router's span.
    pub context: TraceContext,
    pub parent_span_id: u64,
    pub decision_id: String,
    pub pool: Arc<str>,
    pub enqueued_at: i64,
    pub finished_at: i64,
    /// `decided`, `qa_labeled` or `qa_expired`.
    pub result: &'static str,
    pub quorum: u8,
    pub level: u8,
    pub verdicts: usize,
    pub assignments: u32,
    pub sla_breached: bool,
    pub qa_sample: bool,
}

/// The context of this service's span of an item, a child of the request's.
fn item_span(parent: &TraceContext, decision_id: &str) -> TraceContext {
    let mut salt = Vec::with_capacity(decision_id.len() + 11);
    salt.extend_from_slice(decision_id.as_bytes());
    salt.extend_from_slice(b":assignment");
    TraceContext::child(Some(parent), &salt, 1.0)
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
    /// Where it sits in each pool's availability set.
    positions: BTreeMap<Sym, Position>,
}

impl Reviewer {
    pub fn serves(&self, pool: &str) -> bool {
        self.pools.is_empty() || self.pools.contains(pool)
    }
    fn has_roles<'a>(&self, mut roles: impl Iterator<Item = &'a str>) -> bool {
        roles.all(|role| self.roles.contains(role))
    }
}

/// Order of preference among reviewers with free capacity: load ratio, least recently assigned, id.
type Position = (u64, i64, Arc<str>);

fn load_ratio(load: u32, capacity: u32) -> u64 {
    (u64::from(load) << 32) / u64::from(capacity.max(1))
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

/// One pool's queue: items waiting for (more) reviewers, in serving order, by slot.
struct PoolState {
    queue: BTreeMap<Key, u32>,
    /// Items set aside (nobody on the roster can take them), by queue key.
    aside: BTreeMap<Key, u32>,
    next_sequence: u64,
    /// Online reviewers serving the pool with free capacity, best first.
    available: BTreeSet<Position>,
    limiter: Option<Limiter>,
}

/// Aggregate numbers for gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolGauges {
    pub pending: usize,
    pub pending_by_tier: [usize; 4],
    pub oldest_enqueued_at: Option<i64>,
    pub in_review: usize,
    /// Set aside: nobody on the roster can take them.
    pub set_aside: usize,
}

/// The state of the pools this instance owns.
pub struct Core {
    config: CoreConfig,
    symbols: Symbols,
    slots: Vec<Option<Item>>,
    free: Vec<u32>,
    /// Slot by decision_id.
    index: HashTable<u32>,
    pools: BTreeMap<Sym, PoolState>,
    /// Timer wheel: slots by the second their timer fires. Entries are never removed early: a
    /// slot whose `due` no longer falls in the bucket (rescheduled, freed) is skipped when it fires.
    timers: BTreeMap<i64, Vec<u32>>,
    /// Items with at least one active lease.
    leased: BTreeSet<u32>,
    /// Decided ids: pool and decision time, forgotten after `done_retention`.
    done: HashMap<Arc<str>, (Sym, i64), Xxh3Builder>,
    /// Decided ids in decision order (entries whose time no longer matches `done` are stale).
    done_order: VecDeque<(i64, Arc<str>)>,
    roster: BTreeMap<Arc<str>, Reviewer>,
    /// Bumped at every roster change (see `Item::checked_epoch`).
    roster_epoch: u32,
    /// Active leases per reviewer and pool (also for reviewers not, or no longer, on the roster).
    inflight: HashMap<Arc<str>, BTreeMap<Sym, u32>>,
    clock: CoreClock,
    /// Slots changed by the current call: their changelog entry and timer are updated at its end.
    touched: Vec<u32>,
    /// Decided ids restored since the last call, put in decision order by `finish_restore`.
    restored_done: Vec<(i64, Arc<str>)>,
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

fn verdict_name(verdict: VerdictKind) -> &'static str {
    match verdict {
        VerdictKind::Approve => "APPROVE",
        VerdictKind::Reject => "REJECT",
        VerdictKind::Amend => "AMEND",
        VerdictKind::Defer => "DEFER",
        VerdictKind::Escalate => "ESCALATE",
        VerdictKind::Renew => "RENEW",
    }
}

fn hash_id(id: &str) -> u64 {
    xxh3_64(id.as_bytes())
}

impl Core {
    pub fn new(config: CoreConfig) -> Self {
        Self {
            config,
            symbols: Symbols::default(),
            slots: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            pools: BTreeMap::new(),
            timers: BTreeMap::new(),
            leased: BTreeSet::new(),
            done: HashMap::with_hasher(Xxh3Builder::new()),
            done_order: VecDeque::new(),
            roster: BTreeMap::new(),
            roster_epoch: 1,
            inflight: HashMap::new(),
            clock: CoreClock::default(),
            touched: Vec::new(),
            restored_done: Vec::new(),
        }
    }

    /// Undecided items.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// An undecided item, in its stored form.
    pub fn record(&self, decision_id: &str) -> Option<ItemRecord> {
        let slot = self.slot_of(decision_id)?;
        Some(self.to_record(self.item_ref(slot)))
    }

    /// Every undecided item, in its stored form, ordered by decision_id.
    pub fn records(&self) -> Vec<ItemRecord> {
        let mut records: Vec<ItemRecord> = self
            .slots
            .iter()
            .flatten()
            .map(|item| self.to_record(item))
            .collect();
        records.sort_by(|a, b| a.decision_id.cmp(&b.decision_id));
        records
    }

    pub fn is_decided(&self, decision_id: &str) -> bool {
        self.done.contains_key(decision_id)
    }

    /// Active leases of a reviewer in a pool.
    pub fn inflight(&self, reviewer: &str, pool: &str) -> u32 {
        let Some(pool) = self.symbols.get(pool) else {
            return 0;
        };
        self.inflight_sym(reviewer, pool)
    }

    fn inflight_sym(&self, reviewer: &str, pool: Sym) -> u32 {
        self.inflight
            .get(reviewer)
            .and_then(|pools| pools.get(&pool))
            .copied()
            .unwrap_or(0)
    }

    /// Items waiting in a pool's queue, in the order they will be served.
    pub fn queued(&self, pool: &str) -> Vec<String> {
        let Some(state) = self.symbols.get(pool).and_then(|p| self.pools.get(&p)) else {
            return Vec::new();
        };
        state
            .queue
            .values()
            .map(|slot| self.item_ref(*slot).decision_id.to_string())
            .collect()
    }

    /// Per-pool numbers for gauges (a walk over every item: call it every few seconds, not per
    /// record).
    pub fn gauges(&self) -> BTreeMap<Arc<str>, PoolGauges> {
        let mut gauges: BTreeMap<Arc<str>, PoolGauges> = self
            .pools
            .keys()
            .map(|pool| (self.symbols.name(*pool).clone(), PoolGauges::default()))
            .collect();
        for item in self.slots.iter().flatten() {
            let entry = gauges
                .entry(self.symbols.name(item.pool).clone())
                .or_default();
            if item.progress().set_aside {
                entry.set_aside += 1;
            }
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
                .pools
                .keys()
                .filter(|pool| reviewer.serves(self.symbols.name(**pool)))
                .count() as u64;
            capacity += u64::from(reviewer.capacity) * pools.max(1);
            used += self
                .inflight
                .get(&reviewer.id)
                .map_or(0, |pools| pools.values().map(|n| u64::from(*n)).sum());
        }
        (capacity > 0).then(|| used as f64 / capacity as f64)
    }

    fn policy(&self, pool: Sym) -> &PoolPolicy {
        self.config.pool(self.symbols.name(pool))
    }

    fn pool_name(&self, pool: Sym) -> Arc<str> {
        self.symbols.name(pool).clone()
    }
}

#[doc(hidden)]
pub const ITEM_BYTES: usize = std::mem::size_of::<Option<Item>>();
