//! Routing policy as code: an ordered list of rules, first match wins, then a default.
//!
//! ```yaml
//! version: "2026-11-24.1"
//! rules:
//!   - name: confident-low-risk
//!     when: { confidence: { gte: 0.95 }, risk_score: { lt: 0.2 } }
//!     then: auto_approve
//!     qa_sample_rate: 0.02
//!   - name: large-amounts
//!     when: { amount: { gte: 10000 } }
//!     then: { review: { pool: fraud-senior, roles: [senior], tier: high, sla: 30m, quorum: 2 } }
//! default:
//!   review: { pool: general, tier: normal, sla: 4h }
//! ```
//!
//! Pure: no I/O beyond `Policy::from_yaml`'s string, no clock. See `README.md` beside this file.

use std::{collections::BTreeMap, fmt, time::Duration};

use hitl_schema::Decision;
use serde::Deserialize;

/// A loaded, validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub version: String,
    pub rules: Vec<Rule>,
    pub default: Action,
    /// QA sampling rate of the default action (when it is automatic).
    pub default_qa_sample_rate: f64,
    /// Seed of the QA sampling hash: change it to draw a different (still deterministic) sample.
    pub qa_seed: u64,
    /// Where QA samples go, and their SLA.
    pub qa_review: Review,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(default)]
    pub when: Conditions,
    pub then: Action,
    /// Fraction of the decisions this rule auto-decides that also go to people as QA samples.
    #[serde(default)]
    pub qa_sample_rate: f64,
}

/// What a rule matches on. Every condition given must hold; an absent value (no risk_score, a
/// missing feature or context key) does not satisfy a condition on it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    /// Any of these; a trailing `*` matches a prefix (`payments.*`).
    pub workflow: Option<Vec<String>>,
    pub action: Option<Vec<String>>,
    pub producer: Option<Vec<String>>,
    pub model_name: Option<Vec<String>>,
    pub confidence: Option<Range>,
    pub risk_score: Option<Range>,
    pub amount: Option<Range>,
    #[serde(default)]
    pub features: BTreeMap<String, Range>,
    /// Context key → any of these values (same `*` rule).
    #[serde(default)]
    pub context: BTreeMap<String, Vec<String>>,
}

/// A numeric interval; every bound given must hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    pub gte: Option<f64>,
    pub gt: Option<f64>,
    pub lte: Option<f64>,
    pub lt: Option<f64>,
}

/// What to do with a matching decision. In YAML: `auto_approve`, `auto_reject`, or
/// `{ review: { … } }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "ActionRepr")]
pub enum Action {
    AutoApprove,
    AutoReject,
    Review(Review),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ActionRepr {
    Named(String),
    Review(ReviewRepr),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewRepr {
    review: Review,
}

impl TryFrom<ActionRepr> for Action {
    type Error = String;
    fn try_from(repr: ActionRepr) -> Result<Self, String> {
        match repr {
            ActionRepr::Named(name) if name == "auto_approve" => Ok(Self::AutoApprove),
            ActionRepr::Named(name) if name == "auto_reject" => Ok(Self::AutoReject),
            ActionRepr::Named(other) => Err(format!(
                "unknown action `{other}`: expected auto_approve, auto_reject or {{review: {{…}}}}"
            )),
            ActionRepr::Review(ReviewRepr { review }) => Ok(Self::Review(review)),
        }
    }
}

/// Human review parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Review {
    pub pool: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default = "normal_tier")]
    pub tier: Tier,
    #[serde(with = "humantime_serde")]
    pub sla: Duration,
    #[serde(default = "one")]
    pub quorum: u32,
}

fn normal_tier() -> Tier {
    Tier::Normal
}
fn one() -> u32 {
    1
}

/// Priority tiers, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Low,
    Normal,
    High,
    Urgent,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
            Self::Urgent => "urgent",
        }
    }
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "low" => Some(Self::Low),
            "normal" => Some(Self::Normal),
            "high" => Some(Self::High),
            "urgent" => Some(Self::Urgent),
            _ => None,
        }
    }
}

/// Why a policy was refused. Lists every problem, each naming the rule and field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct PolicyError(pub Vec<String>);

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid policy:\n  - {}", self.0.join("\n  - "))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    version: String,
    #[serde(default)]
    rules: Vec<Rule>,
    default: Action,
    #[serde(default)]
    default_qa_sample_rate: f64,
    #[serde(default)]
    qa_seed: u64,
    #[serde(default = "default_qa_review")]
    qa_review: Review,
}

fn default_qa_review() -> Review {
    Review {
        pool: "qa".into(),
        roles: Vec::new(),
        tier: Tier::Low,
        sla: Duration::from_secs(24 * 3600),
        quorum: 1,
    }
}

/// The result of evaluating a policy on one decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation<'p> {
    /// The rule's name, or `default`.
    pub rule: &'p str,
    pub action: &'p Action,
    /// This auto decision also goes to people as a QA sample.
    pub qa_sample: bool,
}

impl Policy {
    /// Parses and validates a YAML policy.
    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile =
            serde_norway::from_str(text).map_err(|error| PolicyError(vec![error.to_string()]))?;
        let policy = Self {
            version: file.version,
            rules: file.rules,
            default: file.default,
            default_qa_sample_rate: file.default_qa_sample_rate,
            qa_seed: file.qa_seed,
            qa_review: file.qa_review,
        };
        let problems = policy.problems();
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(PolicyError(problems))
        }
    }

    /// Everything wrong with the policy: bad values, rules that can never match, rules that an
    /// earlier rule shadows completely (unreachable).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.version.trim().is_empty() {
            problems.push("version: must not be empty".into());
        }
        check_rate(
            "default_qa_sample_rate",
            self.default_qa_sample_rate,
            &mut problems,
        );
        check_action("default", &self.default, &mut problems);
        check_action(
            "qa_review",
            &Action::Review(self.qa_review.clone()),
            &mut problems,
        );
        let mut names = std::collections::BTreeSet::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let at = format!("rules[{index}] ({})", rule.name);
            if rule.name.trim().is_empty() || rule.name == "default" {
                problems.push(format!("{at}.name: must be non-empty and not `default`"));
            }
            if !names.insert(rule.name.as_str()) {
                problems.push(format!("{at}.name: duplicate rule name"));
            }
            check_rate(
                &format!("{at}.qa_sample_rate"),
                rule.qa_sample_rate,
                &mut problems,
            );
            if rule.qa_sample_rate > 0.0 && matches!(rule.then, Action::Review(_)) {
                problems.push(format!(
                    "{at}.qa_sample_rate: only automatic actions are sampled"
                ));
            }
            check_action(&format!("{at}.then"), &rule.then, &mut problems);
            rule.when.check(&at, &mut problems);
            if rule.when.is_empty_set() {
                continue;
            }
            if let Some(earlier) = self.rules[..index]
                .iter()
                .find(|earlier| earlier.when.subsumes(&rule.when))
            {
                problems.push(format!(
                    "{at}: unreachable, rule `{}` before it matches everything it matches",
                    earlier.name
                ));
            }
        }
        problems
    }

    /// First matching rule, or the default.
    pub fn evaluate(&self, decision: &Decision) -> Evaluation<'_> {
        let (rule, action, rate) = self
            .rules
            .iter()
            .find(|rule| rule.when.matches(decision))
            .map(|rule| (rule.name.as_str(), &rule.then, rule.qa_sample_rate))
            .unwrap_or(("default", &self.default, self.default_qa_sample_rate));
        let qa_sample = !matches!(action, Action::Review(_))
            && sampled(&decision.decision_id, rate, self.qa_seed);
        Evaluation {
            rule,
            action,
            qa_sample,
        }
    }
}

/// Deterministic sampling: the same decision id, rate and seed always give the same answer, and
/// over many ids the fraction sampled tends to `rate`.
pub fn sampled(decision_id: &str, rate: f64, seed: u64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    let hash = xxhash_rust::xxh3::xxh3_64_with_seed(decision_id.as_bytes(), seed);
    // Top 53 bits as a uniform number in [0, 1).
    let unit = (hash >> 11) as f64 / (1u64 << 53) as f64;
    unit < rate
}

fn check_rate(at: &str, rate: f64, problems: &mut Vec<String>) {
    if !(0.0..=1.0).contains(&rate) {
        problems.push(format!("{at}: {rate} is outside 0..1"));
    }
}

fn check_action(at: &str, action: &Action, problems: &mut Vec<String>) {
    if let Action::Review(review) = action {
        if review.pool.trim().is_empty() {
            problems.push(format!("{at}.review.pool: must not be empty"));
        }
        // A review request carries the deadline in milliseconds (Avro long) and the quorum as an
        // Avro int.
        if review.sla.is_zero() {
            problems.push(format!("{at}.review.sla: must be more than 0"));
        } else if i64::try_from(review.sla.as_millis()).is_err() {
            problems.push(format!(
                "{at}.review.sla: longer than {} ms, the longest a deadline can be",
                i64::MAX
            ));
        }
        if review.quorum == 0 {
            problems.push(format!("{at}.review.quorum: must be at least 1"));
        } else if i32::try_from(review.quorum).is_err() {
            problems.push(format!("{at}.review.quorum: at most {}", i32::MAX));
        }
        if review.roles.iter().any(|role| role.trim().is_empty()) {
            problems.push(format!("{at}.review.roles: empty role name"));
        }
    }
}

fn matches_any(patterns: &[String], value: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => value.starts_with(prefix),
            None => pattern == value,
        })
}

/// Every value `inner` matches, `outer` matches too.
fn patterns_cover(outer: &[String], inner: &[String]) -> bool {
    inner.iter().all(|inner_pattern| {
        outer.iter().any(|outer_pattern| {
            match (
                outer_pattern.strip_suffix('*'),
                inner_pattern.strip_suffix('*'),
            ) {
                (Some(outer_prefix), Some(inner_prefix)) => inner_prefix.starts_with(outer_prefix),
                (Some(outer_prefix), None) => inner_pattern.starts_with(outer_prefix),
                (None, Some(_)) => false,
                (None, None) => outer_pattern == inner_pattern,
            }
        })
    })
}

/// `outer` (None = anything) covers `inner` (None = anything).
fn option_covers<T>(outer: &Option<T>, inner: &Option<T>, covers: impl Fn(&T, &T) -> bool) -> bool {
    match (outer, inner) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(outer), Some(inner)) => covers(outer, inner),
    }
}

impl Conditions {
    pub fn matches(&self, decision: &Decision) -> bool {
        let listed = |patterns: &Option<Vec<String>>, value: &str| {
            patterns
                .as_ref()
                .is_none_or(|patterns| matches_any(patterns, value))
        };
        let in_range = |range: &Option<Range>, value: Option<f64>| {
            range
                .as_ref()
                .is_none_or(|range| value.is_some_and(|value| range.contains(value)))
        };
        listed(&self.workflow, &decision.workflow)
            && listed(&self.action, &decision.action)
            && listed(&self.producer, &decision.producer)
            && listed(&self.model_name, &decision.model_name)
            && in_range(&self.confidence, Some(decision.confidence))
            && in_range(&self.risk_score, decision.risk_score)
            && in_range(&self.amount, decision.amount)
            && self.features.iter().all(|(name, range)| {
                decision
                    .features
                    .get(name)
                    .is_some_and(|value| range.contains(*value))
            })
            && self.context.iter().all(|(key, patterns)| {
                decision
                    .context
                    .get(key)
                    .is_some_and(|value| matches_any(patterns, value))
            })
    }

    /// Every decision `other` matches, `self` matches too.
    pub fn subsumes(&self, other: &Self) -> bool {
        let lists = |outer: &Option<Vec<String>>, inner: &Option<Vec<String>>| {
            option_covers(outer, inner, |outer, inner| patterns_cover(outer, inner))
        };
        let ranges = |outer: &Option<Range>, inner: &Option<Range>| {
            option_covers(outer, inner, |outer, inner| outer.covers(inner))
        };
        lists(&self.workflow, &other.workflow)
            && lists(&self.action, &other.action)
            && lists(&self.producer, &other.producer)
            && lists(&self.model_name, &other.model_name)
            && ranges(&self.confidence, &other.confidence)
            && ranges(&self.risk_score, &other.risk_score)
            && ranges(&self.amount, &other.amount)
            && self.features.iter().all(|(name, outer)| {
                other
                    .features
                    .get(name)
                    .is_some_and(|inner| outer.covers(inner))
            })
            && self.context.iter().all(|(key, outer)| {
                other
                    .context
                    .get(key)
                    .is_some_and(|inner| patterns_cover(outer, inner))
            })
    }

    /// True when no decision can match (an empty range or an empty list).
    fn is_empty_set(&self) -> bool {
        let empty_list = |list: &Option<Vec<String>>| list.as_ref().is_some_and(Vec::is_empty);
        [
            &self.workflow,
            &self.action,
            &self.producer,
            &self.model_name,
        ]
        .into_iter()
        .any(empty_list)
            || [&self.confidence, &self.risk_score, &self.amount]
                .into_iter()
                .flatten()
                .any(Range::is_empty)
            || self.features.values().any(Range::is_empty)
            || self.context.values().any(Vec::is_empty)
    }

    fn check(&self, at: &str, problems: &mut Vec<String>) {
        for (field, range) in [
            ("confidence", &self.confidence),
            ("risk_score", &self.risk_score),
        ] {
            if let Some(range) = range {
                if range.bounds().any(|bound| !(0.0..=1.0).contains(&bound)) {
                    problems.push(format!("{at}.when.{field}: thresholds must be within 0..1"));
                }
            }
        }
        let all_ranges = [
            ("confidence", &self.confidence),
            ("risk_score", &self.risk_score),
            ("amount", &self.amount),
        ]
        .into_iter()
        .filter_map(|(field, range)| range.as_ref().map(|range| (field.to_owned(), range)))
        .chain(
            self.features
                .iter()
                .map(|(name, range)| (format!("features.{name}"), range)),
        );
        for (field, range) in all_ranges {
            if range.bounds().any(|bound| !bound.is_finite()) {
                problems.push(format!(
                    "{at}.when.{field}: thresholds must be finite numbers"
                ));
            } else if range.is_empty() {
                problems.push(format!(
                    "{at}.when.{field}: empty range, the rule can never match"
                ));
            }
        }
        for (field, list) in [
            ("workflow", &self.workflow),
            ("action", &self.action),
            ("producer", &self.producer),
            ("model_name", &self.model_name),
        ] {
            if list.as_ref().is_some_and(Vec::is_empty) {
                problems.push(format!(
                    "{at}.when.{field}: empty list, the rule can never match"
                ));
            }
        }
        for (key, values) in &self.context {
            if values.is_empty() {
                problems.push(format!(
                    "{at}.when.context.{key}: empty list, the rule can never match"
                ));
            }
        }
    }
}

/// One end of an interval: value and whether it is included.
#[derive(Clone, Copy)]
struct Bound {
    value: f64,
    inclusive: bool,
}

impl Range {
    pub fn contains(&self, value: f64) -> bool {
        !value.is_nan()
            && self.gte.is_none_or(|bound| value >= bound)
            && self.gt.is_none_or(|bound| value > bound)
            && self.lte.is_none_or(|bound| value <= bound)
            && self.lt.is_none_or(|bound| value < bound)
    }

    fn bounds(&self) -> impl Iterator<Item = f64> {
        [self.gte, self.gt, self.lte, self.lt].into_iter().flatten()
    }

    /// The tightest lower bound (None: unbounded).
    fn lower(&self) -> Option<Bound> {
        let gte = self.gte.map(|value| Bound {
            value,
            inclusive: true,
        });
        let gt = self.gt.map(|value| Bound {
            value,
            inclusive: false,
        });
        match (gte, gt) {
            (Some(a), Some(b)) => Some(if b.value >= a.value { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// The tightest upper bound (None: unbounded).
    fn upper(&self) -> Option<Bound> {
        let lte = self.lte.map(|value| Bound {
            value,
            inclusive: true,
        });
        let lt = self.lt.map(|value| Bound {
            value,
            inclusive: false,
        });
        match (lte, lt) {
            (Some(a), Some(b)) => Some(if b.value <= a.value { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    fn is_empty(&self) -> bool {
        match (self.lower(), self.upper()) {
            (Some(low), Some(high)) => {
                low.value > high.value
                    || (low.value == high.value && !(low.inclusive && high.inclusive))
            }
            _ => false,
        }
    }

    /// Every value `inner` contains, `self` contains too.
    fn covers(&self, inner: &Range) -> bool {
        if inner.is_empty() {
            return true;
        }
        let lower_ok = match (self.lower(), inner.lower()) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(outer), Some(inner)) => {
                outer.value < inner.value
                    || (outer.value == inner.value && (outer.inclusive || !inner.inclusive))
            }
        };
        let upper_ok = match (self.upper(), inner.upper()) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(outer), Some(inner)) => {
                outer.value > inner.value
                    || (outer.value == inner.value && (outer.inclusive || !inner.inclusive))
            }
        };
        lower_ok && upper_ok
    }
}

/// A short, low-cardinality name of what an action does, for metrics and shadow comparison.
pub fn route_name(action: &Action) -> &'static str {
    match action {
        Action::AutoApprove => "auto_approve",
        Action::AutoReject => "auto_reject",
        Action::Review(_) => "human",
    }
}
