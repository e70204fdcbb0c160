//! Router metrics. Labels: route, workflow (capped), error class, agreement — never an id.

use std::{collections::HashSet, sync::Mutex, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Distinct workflow label values kept before the rest are counted as `other`.
const MAX_WORKFLOW_LABELS: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    route: &'static str,
    workflow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClassLabels {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AgreementLabels {
    agrees: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PolicyLabels {
    role: &'static str,
    version: String,
}

#[derive(Debug)]
pub(crate) struct RouterMetrics {
    decisions: Family<RouteLabels, Counter>,
    dead_letters: Family<ClassLabels, Counter>,
    evaluation_seconds: Histogram,
    decision_age_seconds: Histogram,
    shadow: Family<AgreementLabels, Counter>,
    qa_samples: Counter,
    duplicates: Counter,
    dedup_ids: Gauge,
    dedup_bytes: Gauge,
    dedup_reach_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    dedup_evicted: Family<ReasonLabels, Counter>,
    dedup_restored: Counter,
    dedup_restore_seconds: Histogram,
    reloads: Family<ResultLabels, Counter>,
    policy_info: Family<PolicyLabels, Gauge>,
    workflows: Mutex<HashSet<String>>,
}

impl RouterMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            decisions: Family::default(),
            dead_letters: Family::default(),
            evaluation_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1e-7, 2.0, 20),
            ),
            decision_age_seconds: Histogram::new(hitl_runtime::metrics::latency_buckets()),
            shadow: Family::default(),
            qa_samples: Counter::default(),
            duplicates: Counter::default(),
            dedup_ids: Gauge::default(),
            dedup_bytes: Gauge::default(),
            dedup_reach_seconds: Gauge::default(),
            dedup_evicted: Family::default(),
            dedup_restored: Counter::default(),
            dedup_restore_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 14),
            ),
            reloads: Family::default(),
            policy_info: Family::default(),
            workflows: Mutex::default(),
        };
        let r = registry.sub_registry_with_prefix("hitl_router");
        r.register(
            "decisions",
            "Decisions routed, by route and workflow",
            metrics.decisions.clone(),
        );
        r.register(
            "dead_letters",
            "Records sent to the DLQ, by error class",
            metrics.dead_letters.clone(),
        );
        r.register(
            "policy_evaluation_seconds",
            "Time to evaluate the policy (and shadow) for one decision",
            metrics.evaluation_seconds.clone(),
        );
        r.register(
            "decision_age_seconds",
            "Time from the decision's created_at to routing",
            metrics.decision_age_seconds.clone(),
        );
        r.register(
            "shadow_evaluations",
            "Shadow policy evaluations, by agreement",
            metrics.shadow.clone(),
        );
        r.register(
            "qa_samples",
            "Auto decisions copied to people as QA samples",
            metrics.qa_samples.clone(),
        );
        r.register(
            "duplicates",
            "Decisions dropped as duplicates of one already routed",
            metrics.duplicates.clone(),
        );
        r.register(
            "dedup_ids",
            "Decision ids remembered to drop duplicates (service.dedup_window at most)",
            metrics.dedup_ids.clone(),
        );
        r.register(
            "dedup_bytes",
            "Heap the remembered decision ids take (estimated from the tables' capacities)",
            metrics.dedup_bytes.clone(),
        );
        r.register(
            "dedup_reach_seconds",
            "Age of the oldest remembered decision id: how far back duplicates are caught now \
             (below service.dedup_horizon once the count bound evicts)",
            metrics.dedup_reach_seconds.clone(),
        );
        r.register(
            "dedup_evicted",
            "Remembered decision ids forgotten, by reason: horizon (older than \
             service.dedup_horizon) or capacity (service.dedup_window full, before the horizon)",
            metrics.dedup_evicted.clone(),
        );
        r.register(
            "dedup_restored_ids",
            "Decision ids restored from the seen-ids changelog for newly owned partitions",
            metrics.dedup_restored.clone(),
        );
        r.register(
            "dedup_restore_seconds",
            "Time to restore the remembered ids of one partition",
            metrics.dedup_restore_seconds.clone(),
        );
        r.register(
            "policy_reloads",
            "Policy reload attempts, by result",
            metrics.reloads.clone(),
        );
        r.register(
            "policy",
            "The loaded policy versions (value 1)",
            metrics.policy_info.clone(),
        );
        metrics
    }

    pub(crate) fn routed(&self, route: &'static str, workflow: &str) {
        let workflow = {
            let mut seen = self.workflows.lock().expect("lock");
            if seen.contains(workflow) || seen.len() < MAX_WORKFLOW_LABELS {
                seen.insert(workflow.to_owned());
                workflow.to_owned()
            } else {
                "other".to_owned()
            }
        };
        self.decisions
            .get_or_create(&RouteLabels { route, workflow })
            .inc();
    }

    pub(crate) fn dead_lettered(&self, class: &str) {
        self.dead_letters
            .get_or_create(&ClassLabels {
                class: class.to_owned(),
            })
            .inc();
    }

    pub(crate) fn evaluated(&self, elapsed: Duration, decision_age_millis: i64) {
        self.evaluation_seconds.observe(elapsed.as_secs_f64());
        self.decision_age_seconds
            .observe(decision_age_millis.max(0) as f64 / 1000.0);
    }

    pub(crate) fn shadow(&self, agrees: bool) {
        self.shadow
            .get_or_create(&AgreementLabels {
                agrees: if agrees { "true" } else { "false" },
            })
            .inc();
    }

    pub(crate) fn qa_sampled(&self) {
        self.qa_samples.inc();
    }

    pub(crate) fn duplicate(&self) {
        self.duplicates.inc();
    }

    pub(crate) fn dedup_evicted(&self, expired: u64, over_capacity: u64) {
        if expired > 0 {
            self.dedup_evicted
                .get_or_create(&ReasonLabels { reason: "horizon" })
                .inc_by(expired);
        }
        if over_capacity > 0 {
            self.dedup_evicted
                .get_or_create(&ReasonLabels { reason: "capacity" })
                .inc_by(over_capacity);
        }
    }

    /// The remembered ids (`ids`), the heap they take, and the time bucket of the oldest
    /// (`oldest`), at `now_millis`.
    pub(crate) fn dedup_gauges(
        &self,
        ids: usize,
        bytes: usize,
        oldest: Option<i64>,
        now_millis: i64,
    ) {
        self.dedup_ids.set(ids as i64);
        self.dedup_bytes.set(bytes as i64);
        let reach = oldest.map_or(0, |oldest| now_millis.saturating_sub(oldest).max(0));
        self.dedup_reach_seconds.set(reach as f64 / 1000.0);
    }

    pub(crate) fn dedup_restored(&self, ids: u64, took: Duration) {
        self.dedup_restored.inc_by(ids);
        self.dedup_restore_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "refused" },
            })
            .inc();
    }

    pub(crate) fn policies_loaded(&self, active: &str, shadow: Option<&str>) {
        self.policy_info.clear();
        self.policy_info
            .get_or_create(&PolicyLabels {
                role: "active",
                version: active.to_owned(),
            })
            .set(1);
        if let Some(version) = shadow {
            self.policy_info
                .get_or_create(&PolicyLabels {
                    role: "shadow",
                    version: version.to_owned(),
                })
                .set(1);
        }
    }
}
