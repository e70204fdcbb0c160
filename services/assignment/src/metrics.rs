//! Assignment metrics. Labels: pool (capped), tier, reason, verdict kind, decided_by — never a
//! reviewer or decision id.

use std::{collections::HashSet, sync::Mutex, time::Duration};

use hitl_schema::{DecidedBy, VerdictKind};
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

use crate::core::{Observation, PoolGauges};

/// Distinct pool label values kept before the rest are counted as `other`.
const MAX_POOL_LABELS: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolTierLabels {
    pool: String,
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolReasonLabels {
    pool: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    pool: String,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    pool: String,
    decided_by: &'static str,
    overridden: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QaLabels {
    pool: String,
    agrees: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: String,
}

const TIERS: [&str; 4] = ["low", "normal", "high", "urgent"];

#[derive(Debug)]
pub(crate) struct AssignmentMetrics {
    queue_depth: Family<PoolTierLabels, Gauge>,
    oldest_pending: Family<PoolLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    in_review: Family<PoolLabels, Gauge>,
    set_aside: Family<PoolLabels, Gauge>,
    set_aside_total: Family<PoolLabels, Counter>,
    queued: Family<PoolLabels, Counter>,
    duplicates: Counter,
    time_to_assign: Family<PoolLabels, Histogram>,
    decision_latency: Family<PoolLabels, Histogram>,
    time_to_decision: Family<PoolLabels, Histogram>,
    reassignments: Family<PoolReasonLabels, Counter>,
    escalations: Family<PoolReasonLabels, Counter>,
    sla_breaches: Family<PoolLabels, Counter>,
    verdicts: Family<VerdictLabels, Counter>,
    rejected_verdicts: Family<ReasonLabels, Counter>,
    rejected_roster: Family<ReasonLabels, Counter>,
    outcomes: Family<OutcomeLabels, Counter>,
    qa_labels: Family<QaLabels, Counter>,
    utilisation: Gauge<f64, std::sync::atomic::AtomicU64>,
    reviewers_online: Gauge,
    dead_letters: Family<ClassLabels, Counter>,
    restore_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    restored_entries: Counter,
    pools: Mutex<HashSet<String>>,
}

fn decided_by_label(decided_by: DecidedBy) -> &'static str {
    match decided_by {
        DecidedBy::Auto => "AUTO",
        DecidedBy::Human => "HUMAN",
        DecidedBy::Quorum => "QUORUM",
        DecidedBy::SlaFallback => "SLA_FALLBACK",
    }
}

fn verdict_label(verdict: VerdictKind) -> &'static str {
    match verdict {
        VerdictKind::Approve => "APPROVE",
        VerdictKind::Reject => "REJECT",
        VerdictKind::Amend => "AMEND",
        VerdictKind::Defer => "DEFER",
        VerdictKind::Escalate => "ESCALATE",
        VerdictKind::Renew => "RENEW",
    }
}

fn latency_histogram() -> Histogram {
    // 100 ms … ~14 h.
    Histogram::new(exponential_buckets(0.1, 2.0, 20))
}

impl AssignmentMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            queue_depth: Family::default(),
            oldest_pending: Family::default(),
            in_review: Family::default(),
            set_aside: Family::default(),
            set_aside_total: Family::default(),
            queued: Family::default(),
            duplicates: Counter::default(),
            time_to_assign: Family::new_with_constructor(latency_histogram),
            decision_latency: Family::new_with_constructor(latency_histogram),
            time_to_decision: Family::new_with_constructor(latency_histogram),
            reassignments: Family::default(),
            escalations: Family::default(),
            sla_breaches: Family::default(),
            verdicts: Family::default(),
            rejected_verdicts: Family::default(),
            rejected_roster: Family::default(),
            outcomes: Family::default(),
            qa_labels: Family::default(),
            utilisation: Gauge::default(),
            reviewers_online: Gauge::default(),
            dead_letters: Family::default(),
            restore_seconds: Gauge::default(),
            restored_entries: Counter::default(),
            pools: Mutex::default(),
        };
        let r = registry.sub_registry_with_prefix("hitl_assignment");
        r.register(
            "queue_depth",
            "Items waiting for a reviewer, by pool and priority tier",
            metrics.queue_depth.clone(),
        );
        r.register(
            "oldest_pending_seconds",
            "Age of the oldest item waiting for a reviewer, by pool",
            metrics.oldest_pending.clone(),
        );
        r.register(
            "in_review",
            "Items held by at least one reviewer, by pool",
            metrics.in_review.clone(),
        );
        r.register(
            "set_aside",
            "Items set aside because no reviewer on the roster can take them, by pool",
            metrics.set_aside.clone(),
        );
        r.register(
            "set_aside_items",
            "Items set aside because no reviewer on the roster could take them, by pool",
            metrics.set_aside_total.clone(),
        );
        r.register(
            "queued",
            "Review requests queued, by pool",
            metrics.queued.clone(),
        );
        r.register(
            "duplicate_requests",
            "Review requests for an item already known or decided (re-deliveries), dropped",
            metrics.duplicates.clone(),
        );
        r.register(
            "time_to_assign_seconds",
            "From queueing to the first assignment, by pool",
            metrics.time_to_assign.clone(),
        );
        r.register(
            "decision_latency_seconds",
            "From assignment to the reviewer's verdict, by pool",
            metrics.decision_latency.clone(),
        );
        r.register(
            "time_to_decision_seconds",
            "From the decision's creation to its human or fallback outcome, by pool",
            metrics.time_to_decision.clone(),
        );
        r.register(
            "reassignments",
            "Leases revoked (and the item put back), by pool and reason",
            metrics.reassignments.clone(),
        );
        r.register(
            "escalations",
            "Escalations to the next tier, by pool and reason",
            metrics.escalations.clone(),
        );
        r.register(
            "sla_breaches",
            "Items that reached their SLA deadline undecided, by pool",
            metrics.sla_breaches.clone(),
        );
        r.register(
            "verdicts",
            "Verdicts applied, by pool and kind",
            metrics.verdicts.clone(),
        );
        r.register(
            "rejected_verdicts",
            "Verdicts rejected (never applied), by reason",
            metrics.rejected_verdicts.clone(),
        );
        r.register(
            "rejected_roster_entries",
            "Roster entries refused (never applied): unsigned, untrusted key, another reviewer's entry, roles not granted",
            metrics.rejected_roster.clone(),
        );
        r.register(
            "outcomes",
            "Outcomes decided here, by pool, decided_by and whether people overrode the model",
            metrics.outcomes.clone(),
        );
        r.register(
            "qa_labels",
            "QA samples labeled, by pool and whether the reviewer agreed with the automatic decision",
            metrics.qa_labels.clone(),
        );
        r.register(
            "reviewer_utilisation",
            "Active leases over the capacity of online reviewers (aggregate)",
            metrics.utilisation.clone(),
        );
        r.register(
            "reviewers_online",
            "Reviewers online on the roster",
            metrics.reviewers_online.clone(),
        );
        r.register(
            "dead_letters",
            "Input records sent to the DLQ, by error class",
            metrics.dead_letters.clone(),
        );
        r.register(
            "restore_seconds",
            "Duration of the last state restore from the changelog",
            metrics.restore_seconds.clone(),
        );
        r.register(
            "restored_entries",
            "Changelog records read by restores",
            metrics.restored_entries.clone(),
        );
        metrics
    }

    fn pool(&self, pool: &str) -> String {
        let mut seen = self.pools.lock().expect("pool labels");
        if seen.contains(pool) {
            return pool.to_owned();
        }
        if seen.len() < MAX_POOL_LABELS {
            seen.insert(pool.to_owned());
            return pool.to_owned();
        }
        "other".to_owned()
    }

    pub(crate) fn observe(&self, observation: &Observation) {
        match observation {
            Observation::Queued { pool } => {
                self.queued
                    .get_or_create(&PoolLabels {
                        pool: self.pool(pool),
                    })
                    .inc();
            }
            Observation::DuplicateRequest => {
                self.duplicates.inc();
            }
            Observation::Assigned {
                pool,
                first,
                wait_ms,
            } => {
                if *first {
                    self.time_to_assign
                        .get_or_create(&PoolLabels {
                            pool: self.pool(pool),
                        })
                        .observe(*wait_ms as f64 / 1000.0);
                }
            }
            Observation::Revoked { pool, reason } => {
                self.reassignments
                    .get_or_create(&PoolReasonLabels {
                        pool: self.pool(pool),
                        reason,
                    })
                    .inc();
            }
            Observation::Escalated { pool, reason } => {
                self.escalations
                    .get_or_create(&PoolReasonLabels {
                        pool: self.pool(pool),
                        reason,
                    })
                    .inc();
            }
            Observation::SlaBreached { pool } => {
                self.sla_breaches
                    .get_or_create(&PoolLabels {
                        pool: self.pool(pool),
                    })
                    .inc();
            }
            Observation::VerdictApplied {
                pool,
                verdict,
                latency_ms,
            } => {
                let pool = self.pool(pool);
                self.verdicts
                    .get_or_create(&VerdictLabels {
                        pool: pool.clone(),
                        verdict: verdict_label(*verdict),
                    })
                    .inc();
                if *verdict != VerdictKind::Renew {
                    self.decision_latency
                        .get_or_create(&PoolLabels { pool })
                        .observe(*latency_ms as f64 / 1000.0);
                }
            }
            Observation::VerdictRejected { reason } => {
                self.rejected_verdicts
                    .get_or_create(&ReasonLabels {
                        reason: reason.as_str(),
                    })
                    .inc();
            }
            Observation::Decided {
                pool,
                decided_by,
                overridden,
                latency_ms,
            } => {
                let pool = self.pool(pool);
                self.outcomes
                    .get_or_create(&OutcomeLabels {
                        pool: pool.clone(),
                        decided_by: decided_by_label(*decided_by),
                        overridden: if *overridden { "true" } else { "false" },
                    })
                    .inc();
                self.time_to_decision
                    .get_or_create(&PoolLabels { pool })
                    .observe(*latency_ms as f64 / 1000.0);
            }
            Observation::SetAside { pool } => {
                self.set_aside_total
                    .get_or_create(&PoolLabels {
                        pool: self.pool(pool),
                    })
                    .inc();
            }
            Observation::QaLabeled { pool, agrees } => {
                self.qa_labels
                    .get_or_create(&QaLabels {
                        pool: self.pool(pool),
                        agrees: if *agrees { "true" } else { "false" },
                    })
                    .inc();
            }
        }
    }

    /// Sets the per-pool gauges from a fresh snapshot (pools absent from it drop to zero).
    pub(crate) fn gauges(
        &self,
        gauges: &std::collections::BTreeMap<std::sync::Arc<str>, PoolGauges>,
        utilisation: Option<f64>,
        online: usize,
        now_millis: i64,
    ) {
        self.queue_depth.clear();
        self.oldest_pending.clear();
        self.in_review.clear();
        self.set_aside.clear();
        for (pool, numbers) in gauges {
            let pool = self.pool(pool);
            for (tier, count) in TIERS.iter().zip(numbers.pending_by_tier) {
                self.queue_depth
                    .get_or_create(&PoolTierLabels {
                        pool: pool.clone(),
                        tier,
                    })
                    .set(count as i64);
            }
            let oldest = numbers
                .oldest_enqueued_at
                .map_or(0.0, |at| (now_millis - at).max(0) as f64 / 1000.0);
            self.oldest_pending
                .get_or_create(&PoolLabels { pool: pool.clone() })
                .set(oldest);
            self.in_review
                .get_or_create(&PoolLabels { pool: pool.clone() })
                .set(numbers.in_review as i64);
            self.set_aside
                .get_or_create(&PoolLabels { pool })
                .set(numbers.set_aside as i64);
        }
        self.utilisation.set(utilisation.unwrap_or(0.0));
        self.reviewers_online.set(online as i64);
    }

    pub(crate) fn roster_refused(&self, reason: &'static str) {
        self.rejected_roster
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub(crate) fn dead_lettered(&self, class: &str) {
        self.dead_letters
            .get_or_create(&ClassLabels {
                class: class.to_owned(),
            })
            .inc();
    }

    pub(crate) fn restored(&self, entries: u64, took: Duration) {
        self.restored_entries.inc_by(entries);
        self.restore_seconds.set(took.as_secs_f64());
    }
}
