//! Per-pool assignment policy: leases, escalation tiers, SLA-breach handling, PII roles, rate limits.

use std::{collections::BTreeMap, time::Duration};

use hitl_schema::OutcomeStatus;
use serde::{Deserialize, Serialize};

use crate::queue::DecayParams;

/// How one pool's items are handed out and escalated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolPolicy {
    /// How long a reviewer holds an item before it is revoked (RENEW extends it by this much).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How long one lease may last with every renewal (default: four leases). A RENEW never
    /// extends a lease past its assignment time plus this; one at that limit is rejected
    /// (`lease_at_maximum`): a holder cannot keep an item for ever.
    #[serde(with = "humantime_serde")]
    pub max_lease_lifetime: Option<Duration>,
    /// A verdict still counts this long after its lease's expiry; the lease is revoked after it.
    #[serde(with = "humantime_serde")]
    pub verdict_grace: Duration,
    /// Escalate to the next tier after this many lease expiries at the current tier (0: never).
    pub escalate_after_expiries: u32,
    /// Escalate once each time an undecided item reaches one of these fractions of its SLA
    /// (ascending, each in (0, 1]).
    pub escalate_at_sla: Vec<f64>,
    /// Escalation tiers above the request's own roles, lowest first: tier n requires the roles of
    /// the request plus `tiers[n-1].roles`.
    pub tiers: Vec<EscalationTier>,
    /// What happens when an item's SLA deadline passes undecided.
    pub on_sla_breach: BreachPolicy,
    /// Reviewers holding any of these roles see `sensitive_fields` in clear; others see a mask.
    pub pii_roles: Vec<String>,
    /// Assignments per reviewer per minute in this pool (0: unlimited). Guards against approval
    /// fatigue.
    pub max_assignments_per_minute: u32,
    /// The shortest SLA a request gets, counted from when it was queued, whatever its deadline
    /// says: a publisher's `sla_ms` or `created_at` cannot force a fallback before any human
    /// could look.
    #[serde(with = "humantime_serde")]
    pub min_sla: Duration,
    /// The longest: a request cannot park an item (and hold its memory) for centuries.
    #[serde(with = "humantime_serde")]
    pub max_sla: Duration,
    /// How far in the future (of the router's clock) a decision's `created_at` may be; a later
    /// one is taken as the time it was routed.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
}

impl PoolPolicy {
    /// The longest a lease may last with its renewals.
    pub fn max_lease_lifetime(&self) -> Duration {
        self.max_lease_lifetime.unwrap_or(self.lease * 4)
    }
}

impl Default for PoolPolicy {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(300),
            max_lease_lifetime: None,
            verdict_grace: Duration::from_secs(5),
            escalate_after_expiries: 2,
            escalate_at_sla: vec![0.75],
            tiers: vec![EscalationTier {
                name: "senior".into(),
                roles: vec!["senior".into()],
            }],
            on_sla_breach: BreachPolicy::Hold,
            pii_roles: vec!["pii".into()],
            max_assignments_per_minute: 0,
            min_sla: Duration::from_secs(60),
            max_sla: Duration::from_secs(30 * 24 * 3600),
            max_clock_skew: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationTier {
    pub name: String,
    #[serde(default)]
    pub roles: Vec<String>,
}

/// On SLA breach: keep the item (escalating where a tier is left, alerting), or decide it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum BreachPolicy {
    Hold,
    /// Decide with `status` and `final_action` (default: the model's recommended action),
    /// recorded as `SLA_FALLBACK`.
    Fallback {
        status: OutcomeStatus,
        #[serde(default)]
        final_action: Option<String>,
    },
}

/// Everything the core is configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoreConfig {
    pub decay: DecayParams,
    /// Applies to every pool not listed in `pools`.
    pub default_pool: PoolPolicy,
    pub pools: BTreeMap<String, PoolPolicy>,
    /// At most this many queued items are examined per assignment pass (items nobody eligible can
    /// take are skipped; they escalate by SLA).
    pub max_scan: usize,
    /// How long a decided item's id is remembered (to reject late verdicts and drop re-delivered
    /// requests) before its changelog entry is deleted.
    #[serde(with = "humantime_serde")]
    pub done_retention: Duration,
    /// The secret lease ids are derived with (HMAC-SHA256): unguessable without it, and the same
    /// on every replay of the same inputs. Not part of the serialised config.
    #[serde(skip)]
    pub lease_secret: Vec<u8>,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            decay: DecayParams::default(),
            default_pool: PoolPolicy::default(),
            pools: BTreeMap::new(),
            max_scan: 10_000,
            done_retention: Duration::from_secs(7 * 24 * 3600),
            lease_secret: Vec::new(),
        }
    }
}

impl CoreConfig {
    pub fn pool(&self, name: &str) -> &PoolPolicy {
        self.pools.get(name).unwrap_or(&self.default_pool)
    }

    /// Every problem, each naming its field.
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut problems: Vec<String> = self
            .decay
            .problems()
            .into_iter()
            .map(|p| format!("{prefix}{p}"))
            .collect();
        let pools = std::iter::once(("default_pool".to_owned(), &self.default_pool)).chain(
            self.pools
                .iter()
                .map(|(name, pool)| (format!("pools.{name}"), pool)),
        );
        for (field, pool) in pools {
            let at = |what: &str| format!("{prefix}{field}.{what}");
            if pool.max_lease_lifetime.is_some_and(|max| max < pool.lease) {
                problems.push(format!(
                    "{}: must be at least the lease",
                    at("max_lease_lifetime")
                ));
            }
            if pool.max_sla < pool.min_sla {
                problems.push(format!("{}: must be at least min_sla", at("max_sla")));
            }
            if pool.max_sla > Duration::from_secs(100 * 365 * 24 * 3600) {
                problems.push(format!("{}: must be at most 100 years", at("max_sla")));
            }
            if pool.lease < Duration::from_secs(1) {
                problems.push(format!("{}: must be at least 1s", at("lease")));
            }
            if pool
                .escalate_at_sla
                .iter()
                .any(|f| !(*f > 0.0 && *f <= 1.0))
            {
                problems.push(format!(
                    "{}: every fraction must be in (0, 1]",
                    at("escalate_at_sla")
                ));
            }
            if pool.escalate_at_sla.windows(2).any(|w| w[0] >= w[1]) {
                problems.push(format!(
                    "{}: must be strictly ascending",
                    at("escalate_at_sla")
                ));
            }
            if pool.tiers.iter().any(|tier| tier.name.is_empty()) {
                problems.push(format!("{}: every tier needs a name", at("tiers")));
            }
            if pool.tiers.len() > 8 {
                problems.push(format!("{}: at most 8 tiers", at("tiers")));
            }
            if let BreachPolicy::Fallback {
                final_action: Some(action),
                ..
            } = &pool.on_sla_breach
            {
                if action.is_empty() {
                    problems.push(format!(
                        "{}: must not be empty",
                        at("on_sla_breach.final_action")
                    ));
                }
            }
        }
        if self.max_scan == 0 {
            problems.push(format!("{prefix}max_scan: must be at least 1"));
        }
        problems
    }
}
