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

/// An item's SLA window, bounded by its pool's policy: the one place its deadline is computed.
struct SlaWindow {
    deadline: i64,
    /// The decision's `created_at`, or the routing time when it lies too far in the future.
    created_at: i64,
    /// `"min_sla"` or `"max_sla"` when the requested deadline was moved to that bound.
    bounded: Option<&'static str>,
}

impl SlaWindow {
    fn bound(policy: &PoolPolicy, request: &ReviewRequest, enqueued_at: i64) -> Self {
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
    fn at_fraction(enqueued_at: i64, deadline: i64, fraction: f64) -> i64 {
        let sla = deadline.saturating_sub(enqueued_at);
        enqueued_at.saturating_add((sla as f64 * fraction).ceil() as i64)
    }
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

    // ---------------------------------------------------------------- inputs

    /// A review request from the router. Idempotent by decision_id: a known or decided id
    /// changes nothing.
    pub fn request(&mut self, request: &ReviewRequest, now: i64, out: &mut Vec<Effect>) {
        self.request_traced(request, None, now, out);
    }

    /// `request`, for a record that carried the trace context `trace` (its `traceparent`).
    pub fn request_traced(
        &mut self,
        request: &ReviewRequest,
        trace: Option<TraceContext>,
        now: i64,
        out: &mut Vec<Effect>,
    ) {
        let decision = &request.decision;
        let id = decision.decision_id.as_str();
        if self.slot_of(id).is_some() || self.done.contains_key(id) {
            out.push(Effect::Observed(Observation::DuplicateRequest));
            return;
        }
        let pool = self.symbols.intern(&request.pool);
        self.ensure_pool(pool);
        let enqueued_at = request.routed_at.min(now);
        let window = SlaWindow::bound(self.policy(pool), request, enqueued_at);
        let (sla_deadline, created_at) = (window.deadline, window.created_at);
        let tier = tier_number(&request.priority_tier);
        let state = self.pools.get_mut(&pool).expect("pool exists");
        let key = self.config.decay.key(
            &Pending {
                id: String::new(),
                enqueued_at,
                sla_deadline,
                tier,
                risk: decision.risk_score,
                amount: decision.amount,
            },
            state.next_sequence,
        );
        state.next_sequence += 1;
        let item = Item {
            decision_id: id.into(),
            subject: decision.subject.as_str().into(),
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
            progress: None,
            confidence: decision.confidence,
            created_at,
            enqueued_at,
            sla_deadline,
            key,
            due: NO_TIMER,
            pool,
            workflow: self.symbols.intern(&decision.workflow),
            action: self.symbols.intern(&decision.action),
            producer: self.symbols.intern(&decision.producer),
            policy_rule: self.symbols.intern(&request.policy_rule),
            policy_version: self.symbols.intern(&request.policy_version),
            sequence: 0,
            tier,
            quorum: request.quorum.clamp(1, 16) as u8,
            level: 0,
            checked_epoch: 0,
            flags: match (request.kind, request.auto_status.as_deref()) {
                (ReviewKind::QaSample, Some("REJECTED")) => QA_SAMPLE | AUTO_REJECTED,
                (ReviewKind::QaSample, _) => QA_SAMPLE,
                (ReviewKind::Review, _) => 0,
            },
            trace,
        };
        let slot = self.insert(item);
        self.pools
            .get_mut(&pool)
            .expect("pool exists")
            .queue
            .insert(key, slot);
        let mut event = self.event(slot, LifecycleKind::Queued, now);
        event
            .attributes
            .insert("sla_deadline".into(), sla_deadline.to_string());
        event
            .attributes
            .insert("quorum".into(), self.item_ref(slot).quorum.to_string());
        if let Some(bound) = window.bounded {
            event.attributes.insert("sla_bounded".into(), bound.into());
            event.attributes.insert(
                "requested_sla_deadline".into(),
                request.sla_deadline.to_string(),
            );
        }
        if created_at != decision.created_at {
            event
                .attributes
                .insert("created_at_skewed".into(), decision.created_at.to_string());
        }
        out.push(Effect::Lifecycle(event));
        out.push(Effect::Observed(Observation::Queued {
            pool: self.pool_name(pool),
        }));
        self.touched.push(slot);
        // A request whose deadlines already passed (a late replay) is handled at once.
        if self.next_due(self.item_ref(slot)) <= now {
            self.schedule(slot);
            self.tick_timers(now, out);
        }
        self.assign_pool(pool, now, out);
        self.flush(out);
    }

    /// A roster update. Going offline (or away) stops new assignments; offline also revokes the
    /// reviewer's leases and requeues those items at their old priority.
    pub fn reviewer_status(&mut self, status: &ReviewerStatus, now: i64, out: &mut Vec<Effect>) {
        let id: Arc<str> = match self.roster.get_key_value(status.reviewer_id.as_str()) {
            Some((id, _)) => id.clone(),
            None => Arc::from(status.reviewer_id.as_str()),
        };
        let (last_assigned, positions) = match self.roster.remove(&id) {
            Some(old) => (old.last_assigned, old.positions),
            None => (i64::MIN, BTreeMap::new()),
        };
        self.roster.insert(
            id.clone(),
            Reviewer {
                id: id.clone(),
                roles: status.roles.iter().cloned().collect(),
                pools: status.pools.iter().cloned().collect(),
                capacity: status.capacity.max(0) as u32,
                partition: status.partition.filter(|p| *p >= 0),
                presence: status.presence,
                last_assigned,
                positions,
            },
        );
        self.refresh(&id);
        self.roster_epoch = self.roster_epoch.wrapping_add(1).max(1);
        if status.presence == Presence::Offline {
            self.revoke_all_of(&id, "reviewer_offline", now, out);
        }
        self.bring_back(&id, now, out);
        self.assign_all(now, out);
        self.flush(out);
    }

    /// The reviewer left the roster (a tombstone on `hitl.reviewers`): as offline, then forgotten.
    pub fn reviewer_removed(&mut self, reviewer_id: &str, now: i64, out: &mut Vec<Effect>) {
        let Some(reviewer) = self.roster.get_mut(reviewer_id) else {
            return;
        };
        reviewer.presence = Presence::Offline;
        let id = reviewer.id.clone();
        self.refresh(&id);
        self.roster.remove(&id);
        self.roster_epoch = self.roster_epoch.wrapping_add(1).max(1);
        self.revoke_all_of(&id, "reviewer_removed", now, out);
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

    /// A verdict the shell refused before the core could judge it (unauthenticated, not
    /// authorised, oversize): recorded (a VERDICT_REJECTED event on the decision's trail, a
    /// metric), never applied.
    pub fn refuse_verdict(
        &mut self,
        verdict: &Verdict,
        reason: Rejection,
        now: i64,
        out: &mut Vec<Effect>,
    ) {
        self.reject(verdict, reason, now, out);
        self.flush(out);
    }

    /// Timers (lease expiry, SLA escalation and breach, forgetting old decided ids), then an
    /// assignment pass over every pool.
    pub fn tick(&mut self, now: i64, out: &mut Vec<Effect>) {
        self.tick_timers(now, out);
        let retention = self.config.done_retention.as_millis() as i64;
        while let Some((decided_at, _)) = self.done_order.front() {
            if decided_at.saturating_add(retention) > now {
                break;
            }
            let (decided_at, id) = self.done_order.pop_front().expect("front exists");
            if self.done.get(&id).is_none_or(|(_, at)| *at != decided_at) {
                continue; // stale: forgotten or replaced since
            }
            if let Some((pool, _)) = self.done.remove(&id) {
                out.push(Effect::State {
                    pool: self.pool_name(pool),
                    decision_id: id.to_string(),
                    change: StateChange::Deleted,
                });
            }
        }
        self.assign_all(now, out);
        self.flush(out);
    }

    // ---------------------------------------------------------------- restore

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
    fn forget(&mut self, decision_id: &str) {
        self.done.remove(decision_id); // its `done_order` entry goes stale
        let Some(slot) = self.slot_of(decision_id) else {
            return;
        };
        let item = self.remove_slot(slot);
        for lease in &item.progress().leases {
            self.add_inflight(&lease.reviewer, item.pool, -1);
        }
    }

    // ---------------------------------------------------------------- records

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

    fn to_record(&self, item: &Item) -> ItemRecord {
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

    fn item_from_record(&mut self, record: ItemRecord) -> Item {
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

    // ---------------------------------------------------------------- slots and timers

    fn slot_of(&self, decision_id: &str) -> Option<u32> {
        self.index
            .find(hash_id(decision_id), |slot| {
                self.slots[*slot as usize]
                    .as_ref()
                    .is_some_and(|item| *item.decision_id == *decision_id)
            })
            .copied()
    }

    fn insert(&mut self, item: Item) -> u32 {
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
    fn remove_slot(&mut self, slot: u32) -> Item {
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

    fn item_mut(&mut self, slot: u32) -> &mut Item {
        self.slots[slot as usize].as_mut().expect("live slot")
    }

    fn item_ref(&self, slot: u32) -> &Item {
        self.slots[slot as usize].as_ref().expect("live slot")
    }

    fn live(&self, slot: u32) -> bool {
        self.slots[slot as usize].is_some()
    }

    fn has_leases(&self, slot: u32) -> bool {
        !self.item_ref(slot).progress().leases.is_empty()
    }

    /// The next lifecycle event of an item from this service (numbered per item).
    fn event(&mut self, slot: u32, kind: LifecycleKind, now: i64) -> LifecycleEvent {
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
    fn span_of(&self, slot: u32) -> Option<TraceContext> {
        let item = self.item_ref(slot);
        item.trace
            .as_ref()
            .map(|parent| item_span(parent, &item.decision_id))
    }

    fn ensure_pool(&mut self, pool: Sym) {
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

    /// Recomputes a reviewer's place in every pool's availability set.
    fn refresh(&mut self, id: &Arc<str>) {
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

    fn add_inflight(&mut self, reviewer: &Arc<str>, pool: Sym, delta: i32) {
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

    /// When the item next needs attention: a lease past expiry plus grace, its next SLA
    /// escalation point, or its deadline.
    fn next_due(&self, item: &Item) -> i64 {
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

    fn schedule(&mut self, slot: u32) {
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
    fn tick_timers(&mut self, now: i64, out: &mut Vec<Effect>) {
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

    fn on_timer(&mut self, slot: u32, now: i64, out: &mut Vec<Effect>) {
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

    fn breach(&mut self, slot: u32, policy: &PoolPolicy, now: i64, out: &mut Vec<Effect>) {
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

    // ---------------------------------------------------------------- assignment

    fn assign_all(&mut self, now: i64, out: &mut Vec<Effect>) {
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
    fn best_reviewer(&self, item: &Item, limited: &[Arc<str>]) -> Option<Arc<str>> {
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
    fn rate_allows(&mut self, pool: Sym, reviewer: &Arc<str>, now: i64) -> bool {
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

    fn assign_pool(&mut self, pool: Sym, now: i64, out: &mut Vec<Effect>) {
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

    /// Whether `reviewer` holds a PII role of the item's pool and the item has a sensitive value
    /// to show: then the ASSIGNED event also goes, in clear, to `hitl.assignments.pii`.
    fn sees_pii(&self, item: &Item, reviewer: &Reviewer) -> bool {
        let policy = self.policy(item.pool);
        policy
            .pii_roles
            .iter()
            .any(|role| reviewer.roles.contains(role))
            && item
                .context
                .iter()
                .any(|(key, _)| item.sensitive.iter().any(|s| s == key))
    }

    /// The item's context with its sensitive values masked, unless `reveal`.
    fn masked_context(&self, item: &Item, reveal: bool) -> BTreeMap<String, String> {
        item.context
            .iter()
            .map(|(key, value)| {
                let hidden = !reveal && item.sensitive.iter().any(|s| s == key);
                let shown = if hidden { MASK } else { &**value };
                (key.to_string(), shown.to_owned())
            })
            .collect()
    }

    /// The event a reviewer app gets for a lease (ASSIGNED or REVOKED).
    fn assignment_event(
        &self,
        slot: u32,
        lease: &Lease,
        kind: AssignmentKind,
        reason: Option<&str>,
        now: i64,
    ) -> AssignmentEvent {
        let item = self.item_ref(slot);
        let context = match kind {
            AssignmentKind::Assigned => self.masked_context(item, false),
            _ => BTreeMap::new(),
        };
        AssignmentEvent {
            assignment_id: lease.id.clone(),
            decision_id: item.decision_id.to_string(),
            reviewer_id: lease.reviewer.to_string(),
            kind,
            pool: self.symbols.name(item.pool).to_string(),
            priority: Queue::urgency(&item.key, now),
            sla_deadline: item.sla_deadline,
            lease_expires_at: lease.expires_at,
            action: self.symbols.name(item.action).to_string(),
            confidence: item.confidence,
            context,
            attempt: lease.attempt as i32,
            reason: reason.map(str::to_owned),
            workflow: self.symbols.name(item.workflow).to_string(),
            subject: item.subject.to_string(),
            qa_sample: item.qa_sample(),
            // The shell knows where the pool lives.
            verdict_partition: None,
        }
    }

    /// The ASSIGNED `event` again, with the sensitive values in clear, for `hitl.assignments.pii`
    /// when its reviewer holds the pool's PII role (else nothing).
    fn clear_copy(&self, slot: u32, event: &AssignmentEvent) -> Option<AssignmentEvent> {
        let item = self.item_ref(slot);
        let reviewer = self.roster.get(event.reviewer_id.as_str())?;
        if event.kind != AssignmentKind::Assigned || !self.sees_pii(item, reviewer) {
            return None;
        }
        let mut clear = event.clone();
        clear.context = self.masked_context(item, true);
        Some(clear)
    }

    fn assign(&mut self, slot: u32, reviewer_id: &Arc<str>, now: i64, out: &mut Vec<Effect>) {
        let pool = self.item_ref(slot).pool;
        let lease_ms = self.policy(pool).lease.as_millis() as i64;
        let lease_id = {
            let item = self.item_ref(slot);
            let attempts = item.progress.as_ref().map_or(0, |p| p.attempts) + 1;
            lease_token(
                &self.config.lease_secret,
                &item.decision_id,
                attempts,
                reviewer_id,
            )
        };
        let item = self.item_mut(slot);
        let progress = item.progress_mut();
        progress.attempts += 1;
        let attempt = progress.attempts;
        let first = progress.first_assigned_at.is_none();
        progress.first_assigned_at.get_or_insert(now);
        let lease = Lease {
            id: lease_id,
            reviewer: reviewer_id.clone(),
            assigned_at: now,
            expires_at: now + lease_ms,
            attempt,
        };
        progress.leases.push(lease.clone());
        let (enqueued_at, level) = (item.enqueued_at, item.level);
        let event = self.assignment_event(slot, &lease, AssignmentKind::Assigned, None, now);
        let mut lifecycle = self.event(slot, LifecycleKind::Assigned, now);
        lifecycle.reviewer_id = Some(reviewer_id.to_string());
        lifecycle.assignment_id = Some(lease.id.clone());
        let attributes = &mut lifecycle.attributes;
        attributes.insert("attempt".into(), attempt.to_string());
        attributes.insert("level".into(), level.to_string());
        attributes.insert("lease_expires_at".into(), lease.expires_at.to_string());
        let partition = self.roster.get(reviewer_id).and_then(|r| r.partition);
        let trace = self.span_of(slot);
        if let Some(clear) = self.clear_copy(slot, &event) {
            out.push(Effect::Assignment {
                partition,
                event: clear,
                pii: true,
                trace,
            });
        }
        out.push(Effect::Assignment {
            partition,
            event,
            pii: false,
            trace,
        });
        out.push(Effect::Lifecycle(lifecycle));
        out.push(Effect::Observed(Observation::Assigned {
            pool: self.pool_name(pool),
            first,
            wait_ms: now - enqueued_at,
        }));
        if let Some(entry) = self.roster.get_mut(reviewer_id) {
            entry.last_assigned = now;
        }
        self.add_inflight(reviewer_id, pool, 1);
        self.leased.insert(slot);
        self.touched.push(slot);
    }

    /// Puts the item in its pool's queue if it needs more reviewers, takes it out otherwise.
    fn requeue_if_wanted(&mut self, slot: u32) {
        let item = self.item_mut(slot);
        item.checked_epoch = 0; // it changed: who may take it is worth asking again
        let (pool, key, wanted, aside) = (
            item.pool,
            item.key,
            item.wanted() > 0,
            item.progress().set_aside,
        );
        if let Some(state) = self.pools.get_mut(&pool) {
            if wanted && aside {
                state.aside.insert(key, slot);
            } else if wanted {
                state.queue.insert(key, slot);
            } else {
                if state.queue.get(&key) == Some(&slot) {
                    state.queue.remove(&key);
                }
                if state.aside.get(&key) == Some(&slot) {
                    state.aside.remove(&key);
                }
            }
        }
    }

    /// Whether anyone on the roster could ever take the item as it is now: present (online or
    /// away), with capacity, serving its pool, with its roles, not its producer, not excluded
    /// from it, not holding it already. Busy reviewers count: they will be free again.
    fn anyone_eligible(&self, item: &Item) -> bool {
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
    fn set_aside(&mut self, slot: u32, now: i64, out: &mut Vec<Effect>) {
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
    fn bring_back(&mut self, reviewer: &Arc<str>, now: i64, out: &mut Vec<Effect>) {
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
        let pool = item.pool;
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
        let event = self.assignment_event(slot, &lease, AssignmentKind::Revoked, Some(reason), now);
        let mut lifecycle = self
            .event(slot, LifecycleKind::Revoked, now)
            .with_reason(reason);
        lifecycle.reviewer_id = Some(lease.reviewer.to_string());
        lifecycle.assignment_id = Some(lease.id.clone());
        let partition = self
            .roster
            .get(&lease.reviewer)
            .and_then(|reviewer| reviewer.partition);
        let trace = self.span_of(slot);
        out.push(Effect::Assignment {
            partition,
            event,
            pii: false,
            trace,
        });
        out.push(Effect::Lifecycle(lifecycle));
        out.push(Effect::Observed(Observation::Revoked {
            pool: self.pool_name(pool),
            reason,
        }));
        self.add_inflight(&lease.reviewer, pool, -1);
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
            if ids.is_empty() {
                continue;
            }
            for id in ids {
                self.revoke(slot, &id, reason, false, now, out);
            }
            self.requeue_if_wanted(slot);
        }
    }

    // ---------------------------------------------------------------- escalation

    /// Moves an item to its pool's next tier; leases whose holders lack the new roles are
    /// revoked. At the top tier it stays where it is (recorded).
    fn escalate(&mut self, slot: u32, reason: &'static str, now: i64, out: &mut Vec<Effect>) {
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

    // ---------------------------------------------------------------- verdicts

    fn check(&self, verdict: &Verdict, now: i64) -> Result<(u32, usize), Rejection> {
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

    fn reject(&mut self, verdict: &Verdict, reason: Rejection, now: i64, out: &mut Vec<Effect>) {
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

    fn apply(
        &mut self,
        verdict: &Verdict,
        slot: u32,
        lease_index: usize,
        now: i64,
        out: &mut Vec<Effect>,
    ) {
        let item = self.item_ref(slot);
        let (pool, qa_sample) = (item.pool, item.qa_sample());
        let assigned_at = item.progress().leases[lease_index].assigned_at;
        let mut event = self.event(slot, LifecycleKind::Verdict, now);
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
            latency_ms: now - assigned_at,
        }));
        self.touched.push(slot);

        if verdict.verdict == VerdictKind::Renew {
            let policy = self.policy(pool);
            let lease_ms = policy.lease.as_millis() as i64;
            let max_ms = policy.max_lease_lifetime().as_millis() as i64;
            let lease = &mut self.item_mut(slot).progress_mut().leases[lease_index];
            // Never past the lease's maximum lifetime, never shorter than it was.
            let cap = lease.assigned_at.saturating_add(max_ms);
            lease.expires_at = now.saturating_add(lease_ms).min(cap).max(lease.expires_at);
            let lease = lease.clone();
            event
                .attributes
                .insert("lease_expires_at".into(), lease.expires_at.to_string());
            out.push(Effect::Lifecycle(event));
            let partition = self.roster.get(&lease.reviewer).and_then(|r| r.partition);
            let renewed =
                self.assignment_event(slot, &lease, AssignmentKind::Assigned, Some("renewed"), now);
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
            VerdictKind::Escalate => self.escalate(slot, "reviewer_escalated", now, out),
            VerdictKind::Approve | VerdictKind::Reject | VerdictKind::Amend => {
                if self.vote(slot, verdict, &lease, now, out) {
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
    fn vote(
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
    fn finish(&mut self, slot: u32, result: &'static str, now: i64, out: &mut Vec<Effect>) {
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

    /// One changelog entry per item changed by the call, and its timer brought up to date.
    fn flush(&mut self, out: &mut Vec<Effect>) {
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

#[doc(hidden)]
pub const ITEM_BYTES: usize = std::mem::size_of::<Option<Item>>();
