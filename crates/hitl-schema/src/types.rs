//! Rust mirrors of `schemas/*.avsc`. Field order follows the schema; every field that the schema
//! gives a default also has `#[serde(default)]`, so records written by an older or newer writer
//! still decode (schema evolution by field name).

use std::{collections::BTreeMap, sync::Arc};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (Avro `timestamp-millis`).
pub type TimestampMillis = i64;

/// A decision an automated system wants to take (`hitl.decisions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub decision_id: String,
    pub workflow: String,
    pub subject: String,
    pub action: String,
    pub confidence: f64,
    #[serde(default)]
    pub risk_score: Option<f64>,
    #[serde(default)]
    pub amount: Option<f64>,
    #[serde(default)]
    pub priority: Option<String>,
    pub producer: String,
    #[serde(default)]
    pub model_name: String,
    #[serde(default)]
    pub model_version: Option<String>,
    #[serde(default)]
    pub features: BTreeMap<String, f64>,
    #[serde(default)]
    pub context: BTreeMap<String, String>,
    #[serde(default)]
    pub sensitive_fields: Vec<String>,
    pub created_at: TimestampMillis,
    #[serde(default)]
    pub sla_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReviewKind {
    /// The decision waits for people.
    Review,
    /// A copy of an auto decision, for measuring automation quality; nothing waits for it.
    QaSample,
}

/// A decision sent to people (`hitl.review-requests`, keyed by pool).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewRequest {
    /// Shared with the lifecycle event of the same routing (a reference-count bump, not a copy).
    pub decision: Arc<Decision>,
    pub kind: ReviewKind,
    pub pool: String,
    #[serde(default)]
    pub required_roles: Vec<String>,
    pub priority_tier: String,
    pub sla_deadline: TimestampMillis,
    #[serde(default = "one")]
    pub quorum: i32,
    pub policy_rule: String,
    pub policy_version: String,
    #[serde(default)]
    pub auto_status: Option<String>,
    pub routed_at: TimestampMillis,
}

fn one() -> i32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AssignmentKind {
    Assigned,
    Revoked,
}

/// Puts an item in front of a reviewer or takes it away (`hitl.assignments`, keyed by reviewer_id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignmentEvent {
    pub assignment_id: String,
    pub decision_id: String,
    pub reviewer_id: String,
    pub kind: AssignmentKind,
    pub pool: String,
    pub priority: f64,
    pub sla_deadline: TimestampMillis,
    pub lease_expires_at: TimestampMillis,
    pub action: String,
    pub confidence: f64,
    #[serde(default)]
    pub context: BTreeMap<String, String>,
    #[serde(default = "one")]
    pub attempt: i32,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub workflow: String,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub qa_sample: bool,
    /// The `hitl.verdicts` partition that holds the pool: where the verdict must go, whatever
    /// the reviewer app's client partitioner (Java's murmur2 and librdkafka's CRC32 differ).
    #[serde(default)]
    pub verdict_partition: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VerdictKind {
    Approve,
    Reject,
    Amend,
    Defer,
    Escalate,
    Renew,
}

/// A reviewer's answer (`hitl.verdicts`, keyed by pool).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub decision_id: String,
    pub assignment_id: String,
    pub reviewer_id: String,
    pub verdict: VerdictKind,
    #[serde(default)]
    pub amended_action: Option<String>,
    #[serde(default)]
    pub rationale: String,
    pub decided_at: TimestampMillis,
    #[serde(default)]
    pub pool: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Presence {
    Online,
    Away,
    Offline,
}

/// A reviewer's roster entry (`hitl.reviewers`, compacted, keyed by reviewer_id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewerStatus {
    pub reviewer_id: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub skills: Vec<String>,
    #[serde(default)]
    pub pools: Vec<String>,
    #[serde(default = "one")]
    pub capacity: i32,
    #[serde(default)]
    pub partition: Option<i32>,
    pub presence: Presence,
    pub updated_at: TimestampMillis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutcomeStatus {
    Approved,
    Rejected,
    Amended,
}

impl OutcomeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "APPROVED",
            Self::Rejected => "REJECTED",
            Self::Amended => "AMENDED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DecidedBy {
    Auto,
    Human,
    Quorum,
    SlaFallback,
}

/// The one final outcome of a decision (`hitl.outcomes`, keyed by decision_id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub decision_id: String,
    pub final_action: String,
    pub status: OutcomeStatus,
    pub decided_by: DecidedBy,
    #[serde(default)]
    pub reviewer_ids: Vec<String>,
    pub policy_rule: String,
    pub policy_version: String,
    pub decided_at: TimestampMillis,
    pub time_to_decision_ms: i64,
    #[serde(default)]
    pub workflow: String,
    #[serde(default)]
    pub rationale: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LifecycleKind {
    Routed,
    QaSampled,
    Queued,
    Assigned,
    Revoked,
    Escalated,
    Verdict,
    VerdictRejected,
    SlaBreached,
    Outcome,
    DeadLettered,
}

impl LifecycleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Routed => "ROUTED",
            Self::QaSampled => "QA_SAMPLED",
            Self::Queued => "QUEUED",
            Self::Assigned => "ASSIGNED",
            Self::Revoked => "REVOKED",
            Self::Escalated => "ESCALATED",
            Self::Verdict => "VERDICT",
            Self::VerdictRejected => "VERDICT_REJECTED",
            Self::SlaBreached => "SLA_BREACHED",
            Self::Outcome => "OUTCOME",
            Self::DeadLettered => "DEAD_LETTERED",
        }
    }
}

/// One step of a decision's life (`hitl.lifecycle`, keyed by decision_id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    pub event_id: String,
    pub decision_id: String,
    pub kind: LifecycleKind,
    pub service: String,
    pub event_time: TimestampMillis,
    #[serde(default)]
    pub sequence: i64,
    #[serde(default)]
    pub reviewer_id: Option<String>,
    #[serde(default)]
    pub assignment_id: Option<String>,
    #[serde(default)]
    pub policy_rule: Option<String>,
    #[serde(default)]
    pub policy_version: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub decision: Option<Arc<Decision>>,
    #[serde(default)]
    pub outcome: Option<Outcome>,
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// One lifecycle event as kept in an audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub event_id: String,
    pub kind: String,
    pub service: String,
    pub event_time: TimestampMillis,
    pub sequence: i64,
    #[serde(default)]
    pub reviewer_id: Option<String>,
    #[serde(default)]
    pub assignment_id: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// The signed provenance of one decision (`hitl.audit`, compacted, keyed by decision_id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub decision_id: String,
    pub version: i64,
    #[serde(default)]
    pub decision: Option<Decision>,
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub policy_rule: Option<String>,
    #[serde(default)]
    pub policy_version: Option<String>,
    #[serde(default)]
    pub timeline: Vec<TimelineEntry>,
    #[serde(default)]
    pub outcome: Option<Outcome>,
    pub content_hash: String,
    #[serde(default)]
    pub prev_hash: Option<String>,
    pub signature: String,
    pub key_id: String,
    pub written_at: TimestampMillis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointEntry {
    pub decision_id: String,
    pub version: i64,
    pub content_hash: String,
}

/// A signed summary of one audit partition (`hitl.audit.checkpoints`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    pub partition: i32,
    pub sequence: i64,
    pub from_offset: i64,
    pub to_offset: i64,
    pub record_count: i64,
    pub root_hash: String,
    #[serde(default)]
    pub prev_checkpoint_hash: Option<String>,
    #[serde(default)]
    pub entries: Vec<CheckpointEntry>,
    pub created_at: TimestampMillis,
    pub signature: String,
    pub key_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LabelSource {
    Human,
    Quorum,
    QaSample,
}

/// One labeled example for retraining (`hitl.feedback`, keyed by decision_id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRecord {
    pub decision_id: String,
    pub workflow: String,
    pub model_name: String,
    #[serde(default)]
    pub model_version: Option<String>,
    #[serde(default)]
    pub features: BTreeMap<String, f64>,
    pub predicted_action: String,
    pub confidence: f64,
    pub label_action: String,
    #[serde(default)]
    pub label_status: String,
    pub label_source: LabelSource,
    pub overridden: bool,
    #[serde(default)]
    pub reviewer_pseudonyms: Vec<String>,
    pub review_latency_ms: i64,
    pub policy_version: String,
    pub created_at: TimestampMillis,
    pub labeled_at: TimestampMillis,
}

impl LifecycleEvent {
    /// An event with only the required fields set.
    pub fn new(
        event_id: impl Into<String>,
        decision_id: impl Into<String>,
        kind: LifecycleKind,
        service: impl Into<String>,
        event_time: TimestampMillis,
    ) -> Self {
        Self {
            event_id: event_id.into(),
            decision_id: decision_id.into(),
            kind,
            service: service.into(),
            event_time,
            sequence: 0,
            reviewer_id: None,
            assignment_id: None,
            policy_rule: None,
            policy_version: None,
            reason: None,
            attributes: BTreeMap::new(),
            decision: None,
            outcome: None,
            traceparent: None,
        }
    }

    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}
