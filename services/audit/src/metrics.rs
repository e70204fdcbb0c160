//! Audit metrics. Labels: label source, decided_by, error class — never an id.

use std::time::Duration;

use hitl_schema::{DecidedBy, LabelSource};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedbackLabels {
    source: &'static str,
    overridden: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecidedByLabels {
    decided_by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeadLabels {
    partition: i32,
    hash: String,
}

/// Every reason an input is refused (`hitl_audit_events_rejected_total{reason}`).
pub(crate) const REJECTION_REASONS: &[&str] = &[
    "unauthenticated",
    "unknown_key",
    "bad_signature",
    "not_allowed",
    "invalid",
    "oversize",
    "timeline_full",
    "conflicting_event",
];

#[derive(Debug)]
pub(crate) struct AuditMetrics {
    records: Counter,
    duplicates: Counter,
    feedback: Family<FeedbackLabels, Counter>,
    outcomes: Family<DecidedByLabels, Counter>,
    outcome_lag: Histogram,
    conflicting: Counter,
    checkpoints: Counter,
    dead_letters: Family<ClassLabels, Counter>,
    trails: Gauge,
    sealed_trails: Gauge,
    reloads: Family<ResultLabels, Counter>,
    completeness: Gauge<f64, std::sync::atomic::AtomicU64>,
    restore_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    rejected: Family<ReasonLabels, Counter>,
    head: Family<HeadLabels, Gauge>,
    heads: std::sync::Mutex<std::collections::BTreeMap<i32, HeadLabels>>,
}

fn source_label(source: LabelSource) -> &'static str {
    match source {
        LabelSource::Human => "HUMAN",
        LabelSource::Quorum => "QUORUM",
        LabelSource::QaSample => "QA_SAMPLE",
    }
}

fn decided_by_label(decided_by: DecidedBy) -> &'static str {
    match decided_by {
        DecidedBy::Auto => "AUTO",
        DecidedBy::Human => "HUMAN",
        DecidedBy::Quorum => "QUORUM",
        DecidedBy::SlaFallback => "SLA_FALLBACK",
    }
}

impl AuditMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            records: Counter::default(),
            duplicates: Counter::default(),
            feedback: Family::default(),
            outcomes: Family::default(),
            outcome_lag: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            conflicting: Counter::default(),
            checkpoints: Counter::default(),
            dead_letters: Family::default(),
            trails: Gauge::default(),
            sealed_trails: Gauge::default(),
            reloads: Family::default(),
            completeness: Gauge::default(),
            restore_seconds: Gauge::default(),
            rejected: Family::default(),
            head: Family::default(),
            heads: std::sync::Mutex::default(),
        };
        let r = registry.sub_registry_with_prefix("hitl_audit");
        r.register(
            "records_written",
            "Audit record versions written",
            metrics.records.clone(),
        );
        r.register(
            "duplicate_events",
            "Lifecycle events already in their trail (re-deliveries), ignored",
            metrics.duplicates.clone(),
        );
        r.register(
            "feedback_records",
            "Labeled examples written, by label source and whether people overrode the model \
             (QA accuracy = QA_SAMPLE with overridden=false over all QA_SAMPLE)",
            metrics.feedback.clone(),
        );
        r.register(
            "outcomes_recorded",
            "Final outcomes entered into the audit trail, by decided_by",
            metrics.outcomes.clone(),
        );
        r.register(
            "outcome_lag_seconds",
            "From an outcome's decision time to its audit record",
            metrics.outcome_lag.clone(),
        );
        r.register(
            "conflicting_outcomes",
            "A second, different final outcome for a decision (the first is kept)",
            metrics.conflicting.clone(),
        );
        r.register(
            "checkpoints",
            "Signed checkpoints written",
            metrics.checkpoints.clone(),
        );
        r.register(
            "dead_letters",
            "Input records sent to the DLQ, by error class",
            metrics.dead_letters.clone(),
        );
        r.register(
            "trails",
            "Decisions with an audit trail held here",
            metrics.trails.clone(),
        );
        r.register(
            "sealed_trails",
            "Finished, idle decisions kept only as a summary (their trails are on the audit topic)",
            metrics.sealed_trails.clone(),
        );
        r.register(
            "trail_reloads",
            "Trails read back from the audit topic for a new event on a sealed decision, by result \
             (reloaded; missing or failed: the event went to the DLQ)",
            metrics.reloads.clone(),
        );
        r.register(
            "completeness",
            "Share of decided trails that also hold the decision as received (M7)",
            metrics.completeness.clone(),
        );
        r.register(
            "restore_seconds",
            "Duration of the last restore from the audit topic",
            metrics.restore_seconds.clone(),
        );
        r.register(
            "events_rejected",
            "Lifecycle inputs refused, never applied, by reason: unauthenticated, unknown_key, \
             bad_signature, not_allowed (no trusted service key signed them, or not for this \
             service or kind); invalid; oversize; timeline_full (no room left in the trail); \
             conflicting_event (a known event id with other content). Each is dead-lettered and, \
             when its decision has a trail here, noted in it",
            metrics.rejected.clone(),
        );
        r.register(
            "checkpoint_head",
            "The sequence of the newest committed checkpoint per audit partition, labeled with its \
             hash: a copy of the head outside Kafka (`hitl-audit verify --expect-head`)",
            metrics.head.clone(),
        );
        for reason in REJECTION_REASONS {
            let _ = metrics.rejected.get_or_create(&ReasonLabels { reason });
        }
        // Every reload result from the start, at 0, so that alerts on their increase work.
        for result in ["reloaded", "missing", "failed", "not_reloaded"] {
            let _ = metrics.reloads.get_or_create(&ResultLabels { result });
        }
        metrics
    }

    pub(crate) fn observe(&self, observation: &crate::trail::Observation, now: i64) {
        use crate::trail::Observation;
        match observation {
            Observation::Duplicate => {
                self.duplicates.inc();
            }
            Observation::Written { .. } => {
                self.records.inc();
            }
            Observation::OutcomeRecorded {
                decided_by,
                decided_at,
            } => {
                self.outcomes
                    .get_or_create(&DecidedByLabels {
                        decided_by: decided_by_label(*decided_by),
                    })
                    .inc();
                self.outcome_lag
                    .observe((now - decided_at).max(0) as f64 / 1000.0);
            }
            Observation::ConflictingOutcome => {
                self.conflicting.inc();
            }
            Observation::Sealed => self.reloaded("not_reloaded"),
            Observation::Feedback { source, overridden } => {
                self.feedback
                    .get_or_create(&FeedbackLabels {
                        source: source_label(*source),
                        overridden: if *overridden { "true" } else { "false" },
                    })
                    .inc();
            }
        }
    }

    pub(crate) fn checkpoint(&self) {
        self.checkpoints.inc();
    }

    pub(crate) fn dead_lettered(&self, class: &str) {
        self.dead_letters
            .get_or_create(&ClassLabels {
                class: class.to_owned(),
            })
            .inc();
    }

    pub(crate) fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// The newest checkpoint of a partition: one series per partition, the old one removed.
    pub(crate) fn head(&self, partition: i32, sequence: i64, hash: &str) {
        let labels = HeadLabels {
            partition,
            hash: hash.to_owned(),
        };
        let mut heads = self.heads.lock().expect("heads lock");
        if let Some(old) = heads.insert(partition, labels.clone()) {
            if old != labels {
                self.head.remove(&old);
            }
        }
        self.head.get_or_create(&labels).set(sequence);
    }

    pub(crate) fn reloaded(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    pub(crate) fn gauges(&self, trails: usize, sealed: usize, decided: usize, complete: usize) {
        self.trails.set(trails as i64);
        self.sealed_trails.set(sealed as i64);
        self.completeness.set(if decided == 0 {
            1.0
        } else {
            complete as f64 / decided as f64
        });
    }

    pub(crate) fn restored(&self, took: Duration) {
        self.restore_seconds.set(took.as_secs_f64());
    }
}
