//! The assignment core's laws (src/README.md): examples for each behaviour, then properties checked
//! against an independent model of leases over random runs.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use hitl_assignment::{
    core::{Core, Effect, Observation, Rejection, StateRecord, MASK},
    pools::{BreachPolicy, CoreConfig, EscalationTier, PoolPolicy},
};
use hitl_schema::{
    AssignmentEvent, AssignmentKind, DecidedBy, Decision, LifecycleKind, Outcome, OutcomeStatus,
    Presence, ReviewKind, ReviewRequest, ReviewerStatus, Verdict, VerdictKind,
};
use proptest::prelude::*;

const SECOND: i64 = 1000;
const MINUTE: i64 = 60 * SECOND;
const T0: i64 = 1_800_000_000_000;

fn config() -> CoreConfig {
    let pool = PoolPolicy {
        lease: Duration::from_secs(60),
        max_lease_lifetime: None,
        verdict_grace: Duration::from_secs(5),
        escalate_after_expiries: 2,
        escalate_at_sla: vec![0.5],
        tiers: vec![EscalationTier {
            name: "senior".into(),
            roles: vec!["senior".into()],
        }],
        on_sla_breach: BreachPolicy::Hold,
        pii_roles: vec!["pii".into()],
        max_assignments_per_minute: 0,
        // These tests use SLAs of seconds; `sla_window_*` tests the bounds.
        min_sla: Duration::ZERO,
        ..PoolPolicy::default()
    };
    let mut pools = BTreeMap::new();
    pools.insert(
        "fallback".to_owned(),
        PoolPolicy {
            on_sla_breach: BreachPolicy::Fallback {
                status: OutcomeStatus::Rejected,
                final_action: Some("deny".into()),
            },
            escalate_at_sla: vec![],
            ..pool.clone()
        },
    );
    CoreConfig {
        default_pool: pool,
        pools,
        ..CoreConfig::default()
    }
}

fn request(id: &str, pool: &str, producer: &str, sla_ms: i64, now: i64) -> ReviewRequest {
    let mut context = BTreeMap::new();
    context.insert("customer".to_owned(), "Alice Example".to_owned());
    context.insert("country".to_owned(), "DE".to_owned());
    ReviewRequest {
        decision: Arc::new(Decision {
            decision_id: id.to_owned(),
            workflow: "payments.card".into(),
            subject: format!("txn-{id}"),
            action: "approve".into(),
            confidence: 0.6,
            risk_score: Some(0.5),
            amount: Some(120.0),
            priority: None,
            producer: producer.to_owned(),
            model_name: "fraud".into(),
            model_version: None,
            features: BTreeMap::new(),
            context,
            sensitive_fields: vec!["customer".into()],
            created_at: now - SECOND,
            sla_ms: None,
        }),
        kind: ReviewKind::Review,
        pool: pool.to_owned(),
        required_roles: vec![],
        priority_tier: "normal".into(),
        sla_deadline: now + sla_ms,
        quorum: 1,
        policy_rule: "rule".into(),
        policy_version: "v1".into(),
        auto_status: None,
        routed_at: now,
    }
}

fn reviewer(id: &str, roles: &[&str], capacity: i32, presence: Presence) -> ReviewerStatus {
    ReviewerStatus {
        reviewer_id: id.to_owned(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        skills: vec![],
        pools: vec![],
        capacity,
        partition: None,
        presence,
        updated_at: 0,
    }
}

fn verdict(event: &AssignmentEvent, kind: VerdictKind, now: i64) -> Verdict {
    Verdict {
        decision_id: event.decision_id.clone(),
        assignment_id: event.assignment_id.clone(),
        reviewer_id: event.reviewer_id.clone(),
        verdict: kind,
        amended_action: (kind == VerdictKind::Amend).then(|| "hold".to_owned()),
        rationale: "looked at it".into(),
        decided_at: now,
        pool: event.pool.clone(),
    }
}

fn assignments(effects: &[Effect], kind: AssignmentKind) -> Vec<AssignmentEvent> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Assignment {
                event, pii: false, ..
            } if event.kind == kind => Some(event.clone()),
            _ => None,
        })
        .collect()
}

fn outcomes(effects: &[Effect]) -> Vec<Outcome> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Outcome(outcome, _) => Some(outcome.clone()),
            _ => None,
        })
        .collect()
}

fn rejections(effects: &[Effect]) -> Vec<Rejection> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Observed(Observation::VerdictRejected { reason }) => Some(*reason),
            _ => None,
        })
        .collect()
}

fn lifecycle_kinds(effects: &[Effect]) -> Vec<LifecycleKind> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Lifecycle(event) => Some(event.kind),
            _ => None,
        })
        .collect()
}

/// A core with reviewers already on the roster.
fn core_with(reviewers: &[ReviewerStatus]) -> Core {
    let mut core = Core::new(config());
    for status in reviewers {
        core.reviewer_status(status, T0, &mut Vec::new());
    }
    core
}

#[test]
fn assigns_to_the_least_loaded_then_least_recently_assigned() {
    let mut core = core_with(&[
        reviewer("ann", &[], 2, Presence::Online),
        reviewer("bob", &[], 2, Presence::Online),
    ]);
    let mut out = Vec::new();
    for (i, id) in ["d1", "d2", "d3", "d4"].iter().enumerate() {
        core.request(
            &request(id, "general", "model", 10 * MINUTE, T0 + i as i64),
            T0 + i as i64,
            &mut out,
        );
    }
    let who: Vec<String> = assignments(&out, AssignmentKind::Assigned)
        .into_iter()
        .map(|event| event.reviewer_id)
        .collect();
    assert_eq!(who, ["ann", "bob", "ann", "bob"]);
    assert_eq!(core.inflight("ann", "general"), 2);
    // Both full: the fifth waits.
    out.clear();
    core.request(
        &request("d5", "general", "model", 10 * MINUTE, T0 + 9),
        T0 + 9,
        &mut out,
    );
    assert!(assignments(&out, AssignmentKind::Assigned).is_empty());
    assert_eq!(core.queued("general").len(), 1);
}

#[test]
fn separation_of_duties_and_roles_decide_eligibility() {
    let mut core = core_with(&[
        reviewer("maker", &["fraud"], 5, Presence::Online),
        reviewer("novice", &[], 5, Presence::Online),
        reviewer("checker", &["fraud"], 5, Presence::Online),
    ]);
    let mut out = Vec::new();
    let mut req = request("d1", "general", "maker", 10 * MINUTE, T0);
    req.required_roles = vec!["fraud".into()];
    core.request(&req, T0, &mut out);
    let assigned = assignments(&out, AssignmentKind::Assigned);
    assert_eq!(assigned.len(), 1);
    assert_eq!(assigned[0].reviewer_id, "checker");
}

#[test]
fn sensitive_context_is_masked_unless_the_reviewer_may_see_it() {
    let mut core = core_with(&[reviewer("plain", &[], 1, Presence::Online)]);
    let mut out = Vec::new();
    core.request(
        &request("d1", "general", "model", 10 * MINUTE, T0),
        T0,
        &mut out,
    );
    let event = &assignments(&out, AssignmentKind::Assigned)[0];
    assert_eq!(event.context["customer"], MASK);
    assert_eq!(event.context["country"], "DE");
    assert!(
        clear_copies(&out).is_empty(),
        "nothing for hitl.assignments.pii"
    );

    // A reviewer with the pool's PII role: still masked on hitl.assignments (which every reviewer
    // app may read), in clear on hitl.assignments.pii (which only PII-cleared apps may read).
    let mut core = core_with(&[reviewer("cleared", &["pii"], 1, Presence::Online)]);
    let mut out = Vec::new();
    core.request(
        &request("d1", "general", "model", 10 * MINUTE, T0),
        T0,
        &mut out,
    );
    let event = &assignments(&out, AssignmentKind::Assigned)[0];
    assert_eq!(event.context["customer"], MASK);
    let clear = clear_copies(&out);
    assert_eq!(clear.len(), 1);
    assert_eq!(clear[0].context["customer"], "Alice Example");
    assert_eq!(clear[0].assignment_id, event.assignment_id);
}

fn clear_copies(effects: &[Effect]) -> Vec<AssignmentEvent> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Assignment {
                event, pii: true, ..
            } => Some(event.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn approve_gives_one_human_outcome_and_later_verdicts_are_rejected() {
    let mut core = core_with(&[reviewer("ann", &[], 1, Presence::Online)]);
    let mut out = Vec::new();
    core.request(
        &request("d1", "general", "model", 10 * MINUTE, T0),
        T0,
        &mut out,
    );
    let lease = assignments(&out, AssignmentKind::Assigned).remove(0);
    out.clear();
    core.verdict(
        &verdict(&lease, VerdictKind::Approve, T0 + SECOND),
        T0 + SECOND,
        &mut out,
    );
    let decided = outcomes(&out);
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].decided_by, DecidedBy::Human);
    assert_eq!(decided[0].status, OutcomeStatus::Approved);
    assert_eq!(decided[0].reviewer_ids, ["ann"]);
    assert!(core.is_decided("d1"));
    assert_eq!(core.inflight("ann", "general"), 0);
    // The same verdict again, and a new one: rejected, never applied.
    out.clear();
    core.verdict(
        &verdict(&lease, VerdictKind::Approve, T0 + SECOND),
        T0 + 2 * SECOND,
        &mut out,
    );
    core.verdict(
        &verdict(&lease, VerdictKind::Reject, T0 + SECOND),
        T0 + 2 * SECOND,
        &mut out,
    );
    assert_eq!(
        rejections(&out),
        [Rejection::AlreadyDecided, Rejection::AlreadyDecided]
    );
    assert!(outcomes(&out).is_empty());
    // A re-delivered request for a decided item changes nothing.
    out.clear();
    core.request(
        &request("d1", "general", "model", 10 * MINUTE, T0),
        T0 + 3 * SECOND,
        &mut out,
    );
    assert_eq!(out, [Effect::Observed(Observation::DuplicateRequest)]);
}

#[test]
fn every_bad_verdict_is_rejected_with_its_reason() {
    let mut core = core_with(&[
        reviewer("ann", &[], 1, Presence::Online),
        reviewer("bob", &[], 1, Presence::Online),
    ]);
    let mut out = Vec::new();
    let mut req = request("d1", "general", "model", 10 * MINUTE, T0);
    req.required_roles = vec![];
    core.request(&req, T0, &mut out);
    let lease = assignments(&out, AssignmentKind::Assigned).remove(0);
    let now = T0 + SECOND;
    let check = |core: &mut Core, v: Verdict, at: i64, expected: Rejection| {
        let mut out = Vec::new();
        core.verdict(&v, at, &mut out);
        assert_eq!(rejections(&out), [expected], "{v:?}");
        assert!(lifecycle_kinds(&out).contains(&LifecycleKind::VerdictRejected));
        assert!(outcomes(&out).is_empty());
    };
    let mut unknown = verdict(&lease, VerdictKind::Approve, now);
    unknown.decision_id = "nope".into();
    check(&mut core, unknown, now, Rejection::UnknownDecision);
    let mut forged = verdict(&lease, VerdictKind::Approve, now);
    forged.assignment_id = "d1#99".into();
    check(&mut core, forged, now, Rejection::UnknownLease);
    let mut foreign = verdict(&lease, VerdictKind::Approve, now);
    foreign.reviewer_id = if lease.reviewer_id == "ann" {
        "bob"
    } else {
        "ann"
    }
    .into();
    check(&mut core, foreign, now, Rejection::WrongReviewer);
    let mut amend = verdict(&lease, VerdictKind::Amend, now);
    amend.amended_action = Some("  ".into());
    check(&mut core, amend, now, Rejection::InvalidAmendment);
    // Expired but before the grace ends: still counts; after: rejected.
    let late = lease.lease_expires_at + 6 * SECOND;
    check(
        &mut core,
        verdict(&lease, VerdictKind::Approve, late),
        late,
        Rejection::LeaseExpired,
    );
    // The holder lost the required role.
    core.reviewer_status(
        &ReviewerStatus {
            roles: vec![],
            ..reviewer(&lease.reviewer_id, &[], 1, Presence::Online)
        },
        now,
        &mut Vec::new(),
    );
    let mut core2 = core_with(&[reviewer("ann", &["fraud"], 1, Presence::Online)]);
    let mut out = Vec::new();
    let mut req = request("d2", "general", "model", 10 * MINUTE, T0);
    req.required_roles = vec!["fraud".into()];
    core2.request(&req, T0, &mut out);
    let lease2 = assignments(&out, AssignmentKind::Assigned).remove(0);
    core2.reviewer_status(
        &reviewer("ann", &[], 1, Presence::Away),
        now,
        &mut Vec::new(),
    );
    check(
        &mut core2,
        verdict(&lease2, VerdictKind::Approve, now),
        now,
        Rejection::MissingRole,
    );
    // A deferred lease is closed: the same verdict again is a duplicate, another one is stale.
    let mut out = Vec::new();
    core.verdict(&verdict(&lease, VerdictKind::Defer, now), now, &mut out);
    assert!(rejections(&out).is_empty());
    check(
        &mut core,
        verdict(&lease, VerdictKind::Defer, now),
        now,
        Rejection::Duplicate,
    );
    check(
        &mut core,
        verdict(&lease, VerdictKind::Approve, now),
        now,
        Rejection::StaleLease,
    );
}

#[test]
fn defer_goes_back_to_the_queue_and_to_someone_else() {
    let mut core = core_with(&[
        reviewer("ann", &[], 1, Presence::Online),
        reviewer("bob", &[], 1, Presence::Online),
    ]);
    let mut out = Vec::new();
    core.request(
        &request("d1", "general", "model", 10 * MINUTE, T0),
        T0,
        &mut out,
    );
    let first = assignments(&out, AssignmentKind::Assigned).remove(0);
    out.clear();
    core.verdict(
        &verdict(&first, VerdictKind::Defer, T0 + SECOND),
        T0 + SECOND,
        &mut out,
    );
    let second = assignments(&out, AssignmentKind::Assigned).remove(0);
    assert_ne!(second.reviewer_id, first.reviewer_id);
    assert_eq!(second.attempt, 2);
    // Both deferred: nobody on the roster may take it, so it is set aside (out of the queue,
    // recorded) until someone who can joins.
    out.clear();
    core.verdict(
        &verdict(&second, VerdictKind::Defer, T0 + 2 * SECOND),
        T0 + 2 * SECOND,
        &mut out,
    );
    assert!(assignments(&out, AssignmentKind::Assigned).is_empty());
    assert!(core.queued("general").is_empty());
    assert!(core.record("d1").unwrap().progress.set_aside);
    assert!(lifecycle(&out)
        .iter()
        .any(|event| event.kind == LifecycleKind::Queued
            && event.attributes.get("set_aside").map(String::as_str) == Some("true")));
    out.clear();
    core.reviewer_status(
        &reviewer("cy", &[], 1, Presence::Online),
        T0 + 3 * SECOND,
        &mut out,
    );
    assert_eq!(
        assignments(&out, AssignmentKind::Assigned)[0].reviewer_id,
        "cy"
    );
    assert!(!core.record("d1").unwrap().progress.set_aside);
}

#[test]
fn lease_expiry_revokes_and_reassigns_to_someone_else_then_escalates() {
    let mut core = core_with(&[
        reviewer("ann", &[], 1, Presence::Online),
        reviewer("bob", &[], 1, Presence::Online),
        reviewer("cy", &["senior"], 1, Presence::Online),
    ]);
    let mut out = Vec::new();
    core.request(
        &request("d1", "general", "model", 60 * MINUTE, T0),
        T0,
        &mut out,
    );
    let first = assignments(&out, AssignmentKind::Assigned).remove(0);
    // Renew keeps it past the first expiry.
    out.clear();
    let renew_at = T0 + 50 * SECOND;
    core.verdict(
        &verdict(&first, VerdictKind::Renew, renew_at),
        renew_at,
        &mut out,
    );
    let renewed = assignments(&out, AssignmentKind::Assigned).remove(0);
    assert_eq!(renewed.assignment_id, first.assignment_id);
    assert_eq!(renewed.lease_expires_at, renew_at + MINUTE);
    out.clear();
    core.tick(first.lease_expires_at + 10 * SECOND, &mut out);
    assert!(assignments(&out, AssignmentKind::Revoked).is_empty());
    // Past the renewed expiry plus grace: revoked, reassigned to another reviewer.
    out.clear();
    let t = renewed.lease_expires_at + 6 * SECOND;
    core.tick(t, &mut out);
    let revoked = assignments(&out, AssignmentKind::Revoked);
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].reason.as_deref(), Some("lease_expired"));
    let second = assignments(&out, AssignmentKind::Assigned).remove(0);
    assert_ne!(second.reviewer_id, first.reviewer_id);
    // A second expiry escalates to the senior tier: only cy qualifies.
    out.clear();
    core.tick(second.lease_expires_at + 6 * SECOND, &mut out);
    assert!(lifecycle_kinds(&out).contains(&LifecycleKind::Escalated));
    let third = assignments(&out, AssignmentKind::Assigned).remove(0);
    assert_eq!(third.reviewer_id, "cy");
    assert_eq!(core.record("d1").unwrap().level, 1);
}

#[test]
fn going_offline_requeues_at_the_old_priority() {
    let mut core = core_with(&[reviewer("ann", &[], 1, Presence::Online)]);
    let mut out = Vec::new();
    core.request(
        &request("d1", "general", "model", 10 * MINUTE, T0),
        T0,
        &mut out,
    );
    core.request(
        &request("d2", "general", "model", 10 * MINUTE, T0 + 1),
        T0 + 1,
        &mut out,
    );
    let key_before = core.record("d1").unwrap().key;
    out.clear();
    core.reviewer_status(
        &reviewer("ann", &[], 1, Presence::Offline),
        T0 + 2,
        &mut out,
    );
    let revoked = assignments(&out, AssignmentKind::Revoked);
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].reason.as_deref(), Some("reviewer_offline"));
    assert_eq!(core.queued("general"), ["d1", "d2"]);
    assert_eq!(core.record("d1").unwrap().key, key_before);
    // Back online: it gets d1 (first in line) again — going offline is not a judgement.
    out.clear();
    core.reviewer_status(&reviewer("ann", &[], 1, Presence::Online), T0 + 3, &mut out);
    assert_eq!(
        assignments(&out, AssignmentKind::Assigned)[0].decision_id,
        "d1"
    );
}

#[test]
fn sla_risk_escalates_and_breach_follows_the_pool_policy() {
    // Hold: at half the SLA it escalates, at the deadline it is marked breached and kept.
    let mut core = core_with(&[]);
    let mut out = Vec::new();
    core.request(
        &request("d1", "general", "model", 10 * MINUTE, T0),
        T0,
        &mut out,
    );
    out.clear();
    core.tick(T0 + 5 * MINUTE, &mut out);
    assert_eq!(lifecycle_kinds(&out), [LifecycleKind::Escalated]);
    out.clear();
    core.tick(T0 + 10 * MINUTE, &mut out);
    assert!(lifecycle_kinds(&out).contains(&LifecycleKind::SlaBreached));
    assert!(outcomes(&out).is_empty());
    assert!(core.record("d1").is_some());

    // Fallback: decided as configured, recorded as SLA_FALLBACK; leases revoked.
    let mut core = core_with(&[reviewer("ann", &[], 1, Presence::Online)]);
    let mut out = Vec::new();
    core.request(
        &request("d2", "fallback", "model", 30 * SECOND, T0),
        T0,
        &mut out,
    );
    assert_eq!(assignments(&out, AssignmentKind::Assigned).len(), 1);
    out.clear();
    core.tick(T0 + 30 * SECOND, &mut out);
    let decided = outcomes(&out);
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].decided_by, DecidedBy::SlaFallback);
    assert_eq!(decided[0].status, OutcomeStatus::Rejected);
    assert_eq!(decided[0].final_action, "deny");
    assert_eq!(assignments(&out, AssignmentKind::Revoked).len(), 1);
    assert_eq!(core.inflight("ann", "fallback"), 0);
}

#[test]
fn quorum_needs_k_distinct_agreeing_reviewers_and_disagreement_escalates() {
    let mut core = core_with(&[
        reviewer("ann", &[], 1, Presence::Online),
        reviewer("bob", &[], 1, Presence::Online),
        reviewer("cy", &["senior"], 1, Presence::Online),
        reviewer("dee", &["senior"], 1, Presence::Online),
    ]);
    let mut out = Vec::new();
    let mut req = request("d1", "general", "model", 60 * MINUTE, T0);
    req.quorum = 2;
    core.request(&req, T0, &mut out);
    let leases = assignments(&out, AssignmentKind::Assigned);
    assert_eq!(leases.len(), 2);
    assert_ne!(leases[0].reviewer_id, leases[1].reviewer_id);
    // One approval is not enough.
    out.clear();
    core.verdict(
        &verdict(&leases[0], VerdictKind::Approve, T0 + 1),
        T0 + 1,
        &mut out,
    );
    assert!(outcomes(&out).is_empty());
    // Disagreement escalates to seniors; the two who judged never get it again.
    core.verdict(
        &verdict(&leases[1], VerdictKind::Reject, T0 + 2),
        T0 + 2,
        &mut out,
    );
    assert!(outcomes(&out).is_empty());
    assert!(lifecycle_kinds(&out).contains(&LifecycleKind::Escalated));
    let seniors = assignments(&out, AssignmentKind::Assigned);
    let names: BTreeSet<_> = seniors.iter().map(|e| e.reviewer_id.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["cy", "dee"]));
    out.clear();
    for lease in &seniors {
        core.verdict(
            &verdict(lease, VerdictKind::Reject, T0 + 3),
            T0 + 3,
            &mut out,
        );
    }
    let decided = outcomes(&out);
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].decided_by, DecidedBy::Quorum);
    assert_eq!(decided[0].status, OutcomeStatus::Rejected);
    let mut reviewers = decided[0].reviewer_ids.clone();
    reviewers.sort();
    assert_eq!(reviewers, ["cy", "dee"]);
}

#[test]
fn rate_limit_spreads_assignments() {
    let mut cfg = config();
    cfg.default_pool.max_assignments_per_minute = 2;
    let mut core = Core::new(cfg);
    core.reviewer_status(
        &reviewer("ann", &[], 10, Presence::Online),
        T0,
        &mut Vec::new(),
    );
    let mut out = Vec::new();
    for i in 0..5 {
        core.request(
            &request(&format!("d{i}"), "general", "model", 60 * MINUTE, T0),
            T0,
            &mut out,
        );
    }
    assert_eq!(assignments(&out, AssignmentKind::Assigned).len(), 2);
    out.clear();
    core.tick(T0 + MINUTE, &mut out);
    assert_eq!(assignments(&out, AssignmentKind::Assigned).len(), 2);
}

#[test]
fn qa_samples_are_labeled_without_an_outcome_and_expire_unlabeled() {
    let mut core = core_with(&[reviewer("ann", &[], 1, Presence::Online)]);
    let mut out = Vec::new();
    let mut req = request("q1", "qa", "model", 10 * MINUTE, T0);
    req.kind = ReviewKind::QaSample;
    core.request(&req, T0, &mut out);
    let lease = assignments(&out, AssignmentKind::Assigned).remove(0);
    assert!(lease.qa_sample);
    out.clear();
    core.verdict(
        &verdict(&lease, VerdictKind::Reject, T0 + 1),
        T0 + 1,
        &mut out,
    );
    assert!(outcomes(&out).is_empty());
    assert!(out.iter().any(|e| matches!(
        e,
        Effect::Observed(Observation::QaLabeled { agrees: false, .. })
    )));
    assert!(core.is_decided("q1"));

    // Rejecting an automatic rejection agrees with it.
    let mut core = core_with(&[reviewer("ann", &[], 1, Presence::Online)]);
    let mut out = Vec::new();
    let mut req = request("q3", "qa", "model", 10 * MINUTE, T0);
    req.kind = ReviewKind::QaSample;
    req.auto_status = Some("REJECTED".into());
    core.request(&req, T0, &mut out);
    let lease = assignments(&out, AssignmentKind::Assigned).remove(0);
    out.clear();
    core.verdict(
        &verdict(&lease, VerdictKind::Reject, T0 + 1),
        T0 + 1,
        &mut out,
    );
    assert!(out.iter().any(|e| matches!(
        e,
        Effect::Observed(Observation::QaLabeled { agrees: true, .. })
    )));

    let mut req = request("q2", "qa", "model", 10 * MINUTE, T0);
    req.kind = ReviewKind::QaSample;
    let mut core = core_with(&[]);
    core.request(&req, T0, &mut Vec::new());
    let mut out = Vec::new();
    core.tick(T0 + 10 * MINUTE, &mut out);
    assert!(outcomes(&out).is_empty());
    assert!(core.is_decided("q2"));
}

/// Replays the changelog a run produced into a fresh core. `State` effects are encoded from the
/// live core after the run: only the latest entry per decision counts, and that is the final state.
fn restored(live: &Core, effects: &[Effect], reviewers: &[ReviewerStatus]) -> Core {
    let mut latest: BTreeMap<String, Option<StateRecord>> = BTreeMap::new();
    for effect in effects {
        if let Effect::State {
            decision_id,
            pool,
            change,
        } = effect
        {
            // Through JSON, as the changelog stores it.
            let record = live
                .state_payload(decision_id, pool, *change)
                .map(|payload| serde_json::from_slice::<StateRecord>(&payload).unwrap());
            latest.insert(decision_id.to_string(), record);
        }
    }
    let mut core = core_with(reviewers);
    for (id, record) in latest {
        core.restore_entry(&id, record);
    }
    core.finish_restore();
    core
}

#[test]
fn a_restored_core_continues_where_the_old_one_stopped() {
    let roster = [
        reviewer("ann", &[], 1, Presence::Online),
        reviewer("bob", &[], 1, Presence::Online),
    ];
    let mut core = core_with(&roster);
    let mut log = Vec::new();
    for i in 0..4 {
        core.request(
            &request(&format!("d{i}"), "general", "model", 10 * MINUTE, T0 + i),
            T0 + i,
            &mut log,
        );
    }
    let leases = assignments(&log, AssignmentKind::Assigned);
    core.verdict(
        &verdict(&leases[0], VerdictKind::Approve, T0 + 10),
        T0 + 10,
        &mut log,
    );
    // Restart: the same queue, the same leases, the same decided ids; nothing assigned twice.
    let mut again = restored(&core, &log, &roster);
    assert_eq!(again.len(), core.len());
    assert_eq!(again.queued("general"), core.queued("general"));
    assert_eq!(again.records(), core.records());
    assert!(again.is_decided(&leases[0].decision_id));
    assert_eq!(
        again.inflight("ann", "general") + again.inflight("bob", "general"),
        2
    );
    let mut out = Vec::new();
    again.verdict(
        &verdict(&leases[1], VerdictKind::Approve, T0 + 11),
        T0 + 11,
        &mut out,
    );
    assert_eq!(outcomes(&out).len(), 1);
    again.verdict(
        &verdict(&leases[0], VerdictKind::Approve, T0 + 11),
        T0 + 11,
        &mut out,
    );
    assert_eq!(rejections(&out), [Rejection::AlreadyDecided]);
}

// ------------------------------------------------------------------ properties

#[derive(Debug, Clone)]
enum Op {
    Request {
        pool: u8,
        producer: u8,
        roles: u8,
        tier: u8,
        sla_min: u8,
        quorum: u8,
        qa: bool,
    },
    Roster {
        reviewer: u8,
        roles: u8,
        capacity: u8,
        presence: u8,
    },
    /// A verdict on the `pick`-th active lease, possibly tampered with.
    Verdict {
        pick: usize,
        kind: u8,
        tamper: u8,
    },
    Tick {
        seconds: u16,
    },
}

const POOLS: [&str; 2] = ["general", "fallback"];
const ROLES: [&str; 3] = ["fraud", "senior", "pii"];
const PEOPLE: [&str; 5] = ["r0", "r1", "r2", "r3", "r4"];

fn roles_of(mask: u8) -> Vec<String> {
    ROLES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, r)| (*r).to_owned())
        .collect()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..2, 0u8..7, 0u8..4, 0u8..4, 1u8..30, 1u8..3, proptest::bool::weighted(0.1)).prop_map(
            |(pool, producer, roles, tier, sla_min, quorum, qa)| Op::Request { pool, producer, roles: roles & 0b1, tier, sla_min, quorum, qa }
        ),
        2 => (0u8..5, 0u8..8, 0u8..4, 0u8..3).prop_map(|(reviewer, roles, capacity, presence)| Op::Roster { reviewer, roles, capacity, presence }),
        4 => (any::<usize>(), 0u8..6, 0u8..8).prop_map(|(pick, kind, tamper)| Op::Verdict { pick, kind, tamper }),
        2 => (1u16..400).prop_map(|seconds| Op::Tick { seconds }),
    ]
}

/// An independent model of who holds which lease, built only from the effects.
#[derive(Default)]
struct Model {
    leases: BTreeMap<String, AssignmentEvent>,
    roster: HashMap<String, ReviewerStatus>,
    producers: HashMap<String, String>,
    required: HashMap<String, Vec<String>>,
    judged: HashMap<String, BTreeSet<String>>,
    assigned_to: HashMap<String, BTreeSet<String>>,
    outcomes: HashMap<String, Outcome>,
    quorum: HashMap<String, usize>,
}

fn kind_of(n: u8) -> VerdictKind {
    [
        VerdictKind::Approve,
        VerdictKind::Reject,
        VerdictKind::Amend,
        VerdictKind::Defer,
        VerdictKind::Escalate,
        VerdictKind::Renew,
    ][usize::from(n % 6)]
}

/// Runs `ops` and checks every law after every step. Returns every effect, for determinism.
fn run(ops: &[Op]) -> Result<Vec<Effect>, TestCaseError> {
    let grace = 5 * SECOND;
    let mut core = Core::new(config());
    let mut model = Model::default();
    let mut now = T0;
    let mut all = Vec::new();
    for (n, op) in ops.iter().enumerate() {
        let mut out = Vec::new();
        let mut sent_verdict: Option<(Verdict, bool)> = None;
        match op {
            Op::Request {
                pool,
                producer,
                roles,
                tier,
                sla_min,
                quorum,
                qa,
            } => {
                let id = format!("d{n}");
                let producer = if *producer < 5 {
                    PEOPLE[usize::from(*producer)].to_owned()
                } else {
                    "model".to_owned()
                };
                let mut req = request(
                    &id,
                    POOLS[usize::from(*pool)],
                    &producer,
                    i64::from(*sla_min) * MINUTE,
                    now,
                );
                req.required_roles = roles_of(*roles);
                req.priority_tier = ["low", "normal", "high", "urgent"][usize::from(*tier)].into();
                req.quorum = i32::from(*quorum);
                if *qa {
                    req.kind = ReviewKind::QaSample;
                }
                model.producers.insert(id.clone(), producer);
                model
                    .required
                    .insert(id.clone(), req.required_roles.clone());
                model.quorum.insert(id.clone(), usize::from(*quorum));
                core.request(&req, now, &mut out);
            }
            Op::Roster {
                reviewer: r,
                roles,
                capacity,
                presence,
            } => {
                let status = ReviewerStatus {
                    roles: roles_of(*roles),
                    ..reviewer(
                        PEOPLE[usize::from(*r)],
                        &[],
                        i32::from(*capacity),
                        [Presence::Online, Presence::Away, Presence::Offline]
                            [usize::from(*presence)],
                    )
                };
                model
                    .roster
                    .insert(status.reviewer_id.clone(), status.clone());
                core.reviewer_status(&status, now, &mut out);
            }
            Op::Verdict { pick, kind, tamper } => {
                if model.leases.is_empty() {
                    continue;
                }
                let lease = model
                    .leases
                    .values()
                    .nth(pick % model.leases.len())
                    .unwrap()
                    .clone();
                let mut v = verdict(&lease, kind_of(*kind), now);
                match tamper {
                    0 => v.reviewer_id = PEOPLE[(pick / 7) % 5].to_owned(),
                    1 => v.assignment_id = format!("{}#{}", v.decision_id, pick % 4),
                    2 => v.decision_id = format!("d{}", pick % (n + 1)),
                    _ => {}
                }
                // The model's own judgement: the holder of a live lease, with the roles.
                let holder = model
                    .leases
                    .get(&v.assignment_id)
                    .filter(|held| held.decision_id == v.decision_id);
                let valid = holder.is_some_and(|held| {
                    held.reviewer_id == v.reviewer_id
                        && now <= held.lease_expires_at + grace
                        && model.roster.get(&v.reviewer_id).is_some_and(|status| {
                            model.required[&v.decision_id]
                                .iter()
                                .all(|role| status.roles.contains(role))
                        })
                });
                sent_verdict = Some((v.clone(), valid));
                core.verdict(&v, now, &mut out);
            }
            Op::Tick { seconds } => {
                now += i64::from(*seconds) * SECOND;
                core.tick(now, &mut out);
            }
        }
        check_step(&core, &mut model, &out, sent_verdict, now)?;
        all.extend(out);
    }
    Ok(all)
}

fn check_step(
    core: &Core,
    model: &mut Model,
    out: &[Effect],
    sent: Option<(Verdict, bool)>,
    now: i64,
) -> Result<(), TestCaseError> {
    let applied = out
        .iter()
        .any(|e| matches!(e, Effect::Lifecycle(ev) if ev.kind == LifecycleKind::Verdict));
    let rejected = !rejections(out).is_empty();
    if let Some((verdict, valid)) = &sent {
        // A verdict is applied exactly when the model says its sender holds a live lease (the
        // only extra condition the core may add: an amendment without an action, or an
        // escalated tier's roles).
        prop_assert!(
            applied != rejected,
            "applied or rejected, never both: {verdict:?}"
        );
        if applied {
            prop_assert!(*valid, "applied a verdict the model rejects: {verdict:?}");
        }
        if *valid && rejected {
            let reasons = rejections(out);
            prop_assert!(
                reasons == [Rejection::MissingRole] || reasons == [Rejection::InvalidAmendment],
                "rejected a valid verdict: {verdict:?} {reasons:?}"
            );
        }
        if applied && verdict.verdict != VerdictKind::Renew {
            model
                .judged
                .entry(verdict.decision_id.clone())
                .or_default()
                .insert(verdict.reviewer_id.clone());
            model.leases.remove(&verdict.assignment_id);
        }
    }
    for effect in out {
        match effect {
            Effect::Assignment {
                event, pii: false, ..
            } if event.kind == AssignmentKind::Assigned => {
                let status = model.roster.get(&event.reviewer_id);
                prop_assert!(
                    status.is_some_and(|s| s.presence == Presence::Online)
                        || event.reason.as_deref() == Some("renewed"),
                    "assigned to a reviewer who is not online: {event:?}"
                );
                let status = status.unwrap();
                prop_assert_ne!(
                    &model.producers[&event.decision_id],
                    &event.reviewer_id,
                    "separation of duties"
                );
                prop_assert!(
                    model.required[&event.decision_id]
                        .iter()
                        .all(|r| status.roles.contains(r)),
                    "missing role"
                );
                if event.reason.is_none() {
                    prop_assert!(
                        !model
                            .judged
                            .get(&event.decision_id)
                            .is_some_and(|j| j.contains(&event.reviewer_id)),
                        "assigned again to a reviewer who judged it"
                    );
                    let holders = model
                        .leases
                        .values()
                        .filter(|l| {
                            l.decision_id == event.decision_id && l.reviewer_id == event.reviewer_id
                        })
                        .count();
                    prop_assert_eq!(holders, 0, "two leases for one reviewer on one item");
                    model
                        .assigned_to
                        .entry(event.decision_id.clone())
                        .or_default()
                        .insert(event.reviewer_id.clone());
                }
                // Masking: hitl.assignments never carries a sensitive value in clear; a
                // reviewer with a PII role gets them, and only them, on hitl.assignments.pii.
                prop_assert_eq!(&event.context["customer"], MASK, "masking");
                let sees = status.roles.iter().any(|r| r == "pii");
                let clear = out.iter().find_map(|effect| match effect {
                    Effect::Assignment {
                        event: clear,
                        pii: true,
                        ..
                    } if clear.assignment_id == event.assignment_id => Some(clear),
                    _ => None,
                });
                prop_assert_eq!(clear.is_some(), sees, "a clear copy for PII reviewers only");
                if let Some(clear) = clear {
                    prop_assert_ne!(&clear.context["customer"], MASK, "the clear copy");
                    prop_assert_eq!(clear.kind, AssignmentKind::Assigned);
                }
                model
                    .leases
                    .insert(event.assignment_id.clone(), event.clone());
            }
            Effect::Assignment { pii: true, .. } => {}
            Effect::Assignment {
                event, pii: false, ..
            } => {
                prop_assert!(
                    model.leases.remove(&event.assignment_id).is_some(),
                    "revoked a lease that was not active"
                );
            }
            Effect::Outcome(outcome, _) => {
                prop_assert!(
                    !model.outcomes.contains_key(&outcome.decision_id),
                    "second outcome for {}",
                    outcome.decision_id
                );
                let k = model.quorum[&outcome.decision_id];
                match outcome.decided_by {
                    DecidedBy::Quorum | DecidedBy::Human => {
                        let distinct: BTreeSet<_> = outcome.reviewer_ids.iter().collect();
                        prop_assert_eq!(distinct.len(), outcome.reviewer_ids.len());
                        prop_assert_eq!(distinct.len(), k, "quorum of {} distinct reviewers", k);
                        prop_assert_eq!(outcome.decided_by == DecidedBy::Quorum, k > 1);
                        for reviewer in &outcome.reviewer_ids {
                            prop_assert!(model.assigned_to[&outcome.decision_id].contains(reviewer));
                        }
                    }
                    DecidedBy::SlaFallback => prop_assert!(outcome.decided_at >= 0),
                    DecidedBy::Auto => {
                        prop_assert!(false, "the assignment core never decides AUTO")
                    }
                }
                model
                    .outcomes
                    .insert(outcome.decision_id.clone(), outcome.clone());
            }
            _ => {}
        }
    }
    // Capacity: nobody holds more leases in a pool than their capacity at assignment time.
    let mut held: HashMap<(&str, &str), u32> = HashMap::new();
    for lease in model.leases.values() {
        *held.entry((&lease.reviewer_id, &lease.pool)).or_default() += 1;
    }
    for ((reviewer, pool), count) in &held {
        prop_assert_eq!(
            core.inflight(reviewer, pool),
            *count,
            "inflight agrees with the model"
        );
        let newly_assigned = out.iter().any(|e| matches!(e, Effect::Assignment { event, pii: false, .. } if event.kind == AssignmentKind::Assigned && event.reason.is_none() && event.reviewer_id == *reviewer && event.pool == *pool));
        if newly_assigned {
            let capacity = model.roster[*reviewer].capacity.max(0) as u32;
            prop_assert!(
                *count <= capacity,
                "capacity exceeded: {reviewer} holds {count} > {capacity}"
            );
        }
    }
    // No lease outlives expiry plus grace by more than one tick.
    let _ = now;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    /// Capacity, eligibility, separation of duties, masking, verdicts only from the lease holder,
    /// quorum of k distinct reviewers, one outcome per decision: after every step of random runs.
    #[test]
    fn laws_hold_after_every_step(ops in prop::collection::vec(op(), 1..120)) {
        run(&ops)?;
    }

    /// The same inputs give the same effects.
    #[test]
    fn deterministic(ops in prop::collection::vec(op(), 1..80)) {
        prop_assert_eq!(run(&ops)?, run(&ops)?);
    }

    /// Restoring from the changelog at any point gives the same state as the live core.
    #[test]
    fn restore_from_changelog_is_exact(ops in prop::collection::vec(op(), 1..80)) {
        let effects = run(&ops)?;
        // Rebuild the same run to get the live core, then compare with a restore of its log.
        let mut live = Core::new(config());
        let mut log = Vec::new();
        let mut now = T0;
        let mut roster = Vec::new();
        for (n, op) in ops.iter().enumerate() {
            match op {
                Op::Request { pool, producer, roles, tier, sla_min, quorum, qa } => {
                    let producer = if *producer < 5 { PEOPLE[usize::from(*producer)].to_owned() } else { "model".to_owned() };
                    let mut req = request(&format!("d{n}"), POOLS[usize::from(*pool)], &producer, i64::from(*sla_min) * MINUTE, now);
                    req.required_roles = roles_of(*roles);
                    req.priority_tier = ["low", "normal", "high", "urgent"][usize::from(*tier)].into();
                    req.quorum = i32::from(*quorum);
                    if *qa { req.kind = ReviewKind::QaSample; }
                    live.request(&req, now, &mut log);
                }
                Op::Roster { reviewer: r, roles, capacity, presence } => {
                    let status = ReviewerStatus { roles: roles_of(*roles), ..reviewer(PEOPLE[usize::from(*r)], &[], i32::from(*capacity), [Presence::Online, Presence::Away, Presence::Offline][usize::from(*presence)]) };
                    roster.retain(|s: &ReviewerStatus| s.reviewer_id != status.reviewer_id);
                    roster.push(status.clone());
                    live.reviewer_status(&status, now, &mut log);
                }
                Op::Verdict { .. } => {}
                Op::Tick { seconds } => { now += i64::from(*seconds) * SECOND; live.tick(now, &mut log); }
            }
        }
        let _ = effects;
        let again = restored(&live, &log, &roster);
        prop_assert_eq!(again.len(), live.len());
        for pool in POOLS {
            prop_assert_eq!(again.queued(pool), live.queued(pool));
        }
        prop_assert_eq!(again.records(), live.records());
        for item in live.records() {
            for lease in &item.progress.leases {
                prop_assert_eq!(again.inflight(&lease.reviewer, &item.pool), live.inflight(&lease.reviewer, &item.pool));
            }
        }
    }

    /// Liveness: whatever happened, once enough qualified reviewers are online and approve what
    /// they get, every review item ends with exactly one outcome.
    #[test]
    fn every_item_is_eventually_decided_once(ops in prop::collection::vec(op(), 1..80)) {
        let effects = run(&ops)?;
        let _ = effects;
        // Re-run, then drain with fresh all-role reviewers.
        let mut core = Core::new(config());
        let mut now = T0;
        let mut requested = BTreeSet::new();
        let mut decided: BTreeMap<String, usize> = BTreeMap::new();
        let mut all = Vec::new();
        for (n, op) in ops.iter().enumerate() {
            if let Op::Request { pool, producer, sla_min, quorum, qa, .. } = op {
                let producer = if *producer < 5 { PEOPLE[usize::from(*producer)].to_owned() } else { "model".to_owned() };
                let mut req = request(&format!("d{n}"), POOLS[usize::from(*pool)], &producer, i64::from(*sla_min) * MINUTE, now);
                req.quorum = i32::from(*quorum);
                if *qa { req.kind = ReviewKind::QaSample; } else { requested.insert(format!("d{n}")); }
                core.request(&req, now, &mut all);
                now += SECOND;
            }
        }
        for round in 0..6 {
            let mut out = Vec::new();
            for i in 0..4 {
                core.reviewer_status(&reviewer(&format!("drain{round}-{i}"), &["fraud", "senior", "pii"], 1000, Presence::Online), now, &mut out);
            }
            for _ in 0..4 {
                let leases = assignments(&out, AssignmentKind::Assigned);
                all.append(&mut out);
                for lease in leases {
                    core.verdict(&verdict(&lease, VerdictKind::Approve, now), now, &mut out);
                }
            }
            all.append(&mut out);
            now += MINUTE;
            core.tick(now, &mut all);
        }
        for outcome in outcomes(&all) {
            *decided.entry(outcome.decision_id).or_default() += 1;
        }
        prop_assert!(decided.values().all(|n| *n == 1));
        prop_assert_eq!(decided.keys().cloned().collect::<BTreeSet<_>>(), requested);
    }
}

/// The random runs above are not vacuous: over 200 generated runs, every kind of event happens.
#[test]
fn random_runs_exercise_every_path() {
    use proptest::{
        strategy::ValueTree,
        test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
    };
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = prop::collection::vec(op(), 60..120);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..200 {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        for effect in run(&ops).unwrap() {
            let name = match effect {
                Effect::Outcome(outcome, _) => format!("outcome:{:?}", outcome.decided_by),
                Effect::Assignment { event, .. } => format!("{:?}:{:?}", event.kind, event.reason),
                Effect::Observed(Observation::VerdictRejected { reason }) => {
                    format!("rejected:{}", reason.as_str())
                }
                Effect::Lifecycle(event) => format!("lifecycle:{:?}", event.kind),
                _ => continue,
            };
            *seen.entry(name).or_default() += 1;
        }
    }
    for expected in [
        "outcome:Human",
        "outcome:Quorum",
        "outcome:SlaFallback",
        "Assigned:None",
        "Assigned:Some(\"renewed\")",
        "Revoked:Some(\"lease_expired\")",
        "Revoked:Some(\"reviewer_offline\")",
        "Revoked:Some(\"escalated\")",
        "rejected:wrong_reviewer",
        "rejected:unknown_lease",
        "rejected:already_decided",
        "lifecycle:Escalated",
        "lifecycle:SlaBreached",
    ] {
        assert!(
            seen.contains_key(expected),
            "{expected} never happened: {seen:?}"
        );
    }
}

#[test]
fn a_traced_request_keeps_its_trace_through_every_output_and_a_restore() {
    use hitl_runtime::trace::TraceContext;
    let router =
        TraceContext::parse(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
    let roster = [reviewer("ann", &[], 1, Presence::Online)];
    let mut live = core_with(&roster);
    let mut log = Vec::new();
    live.request_traced(
        &request("t1", "general", "model", 10 * MINUTE, T0),
        Some(router),
        T0,
        &mut log,
    );
    // Restore from the changelog before the verdict: the trace must survive it.
    let mut core = restored(&live, &log, &roster);
    let lease = assignments(&log, AssignmentKind::Assigned).remove(0);
    let mut out = Vec::new();
    core.verdict(
        &verdict(&lease, VerdictKind::Approve, T0 + SECOND),
        T0 + SECOND,
        &mut out,
    );
    let all: Vec<&Effect> = log.iter().chain(&out).collect();
    let mut spans = Vec::new();
    let mut contexts = BTreeSet::new();
    for effect in &all {
        match effect {
            Effect::Lifecycle(event) => {
                let header = event.traceparent.as_deref().expect("every event is traced");
                contexts.insert(TraceContext::parse(header.as_bytes()).unwrap());
            }
            Effect::Assignment { trace, .. } | Effect::Outcome(_, trace) => {
                contexts.insert(trace.expect("every record is traced"));
            }
            Effect::ReviewSpan(span) => spans.push(span.clone()),
            _ => {}
        }
    }
    assert_eq!(
        contexts.len(),
        1,
        "one span of this service for the item: {contexts:?}"
    );
    let context = contexts.into_iter().next().unwrap();
    assert_eq!(context.trace_id, router.trace_id);
    assert_ne!(context.span_id, router.span_id);
    assert_eq!(spans.len(), 1, "one review span, when the item is decided");
    let span = &spans[0];
    assert_eq!(span.context, context);
    assert_eq!(span.parent_span_id, router.span_id);
    assert_eq!((span.enqueued_at, span.finished_at), (T0, T0 + SECOND));
    assert_eq!(
        (span.result, span.verdicts, span.assignments),
        ("decided", 1, 1)
    );

    // Without a trace context nothing is invented.
    let mut plain = core_with(&roster);
    let mut out = Vec::new();
    plain.request(
        &request("t2", "general", "model", 10 * MINUTE, T0),
        T0,
        &mut out,
    );
    assert!(out.iter().all(|effect| match effect {
        Effect::Lifecycle(event) => event.traceparent.is_none(),
        Effect::Assignment { trace, .. } => trace.is_none(),
        _ => true,
    }));
}

/// A holder cannot keep an item for ever by renewing: a lease never lasts past its assignment
/// plus the pool's `max_lease_lifetime` (four leases by default), and a RENEW at that limit is
/// rejected (`lease_at_maximum`) while the holder may still decide.
#[test]
fn renewals_never_extend_a_lease_past_its_maximum_lifetime() {
    let mut core = core_with(&[reviewer("ann", &[], 1, Presence::Online)]);
    let mut out = Vec::new();
    core.request(
        &request("d1", "general", "model", 60 * MINUTE, T0),
        T0,
        &mut out,
    );
    let lease = assignments(&out, AssignmentKind::Assigned).remove(0);
    let limit = T0 + 4 * MINUTE; // the general pool's lease is one minute
    let mut expires = lease.lease_expires_at;
    let mut at = T0;
    loop {
        at += 30 * SECOND;
        out.clear();
        core.verdict(&verdict(&lease, VerdictKind::Renew, at), at, &mut out);
        let renewed = assignments(&out, AssignmentKind::Assigned);
        if renewed.is_empty() {
            assert_eq!(rejections(&out), vec![Rejection::LeaseAtMaximum]);
            break;
        }
        assert!(renewed[0].lease_expires_at <= limit, "{renewed:?}");
        assert!(renewed[0].lease_expires_at >= expires);
        expires = renewed[0].lease_expires_at;
        assert!(at < limit, "renewed past the maximum at {}", at - T0);
    }
    assert_eq!(expires, limit);
    out.clear();
    core.verdict(&verdict(&lease, VerdictKind::Approve, at), at, &mut out);
    assert!(rejections(&out).is_empty());
    assert_eq!(
        out.iter()
            .filter(|effect| matches!(effect, Effect::Outcome(..)))
            .count(),
        1
    );
}

fn lifecycle(effects: &[Effect]) -> Vec<hitl_schema::LifecycleEvent> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Lifecycle(event) => Some(event.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn votes_cast_below_a_tier_do_not_count_toward_its_quorum_after_an_escalation() {
    let mut core = core_with(&[
        reviewer("ann", &[], 1, Presence::Online),
        reviewer("bob", &[], 1, Presence::Online),
        reviewer("cy", &["senior"], 1, Presence::Online),
        reviewer("dee", &["senior"], 1, Presence::Online),
    ]);
    let mut out = Vec::new();
    let mut req = request("d1", "general", "model", 60 * MINUTE, T0);
    req.quorum = 2;
    core.request(&req, T0, &mut out);
    let leases = assignments(&out, AssignmentKind::Assigned);
    let (ann, bob): (Vec<_>, Vec<_>) = leases.iter().partition(|l| l.reviewer_id == "ann");
    // Ann approves (one vote of two); Bob escalates it to the senior tier.
    core.verdict(
        &verdict(ann[0], VerdictKind::Approve, T0 + 1),
        T0 + 1,
        &mut out,
    );
    out.clear();
    core.verdict(
        &verdict(bob[0], VerdictKind::Escalate, T0 + 2),
        T0 + 2,
        &mut out,
    );
    let escalated = lifecycle(&out)
        .into_iter()
        .find(|event| event.kind == LifecycleKind::Escalated)
        .expect("escalated");
    assert_eq!(
        escalated
            .attributes
            .get("votes_discarded")
            .map(String::as_str),
        Some("ann"),
        "Ann's vote was cast without the senior role"
    );
    let seniors = assignments(&out, AssignmentKind::Assigned);
    assert_eq!(seniors.len(), 2, "two senior votes are needed now, not one");
    out.clear();
    core.verdict(
        &verdict(&seniors[0], VerdictKind::Approve, T0 + 3),
        T0 + 3,
        &mut out,
    );
    assert!(
        outcomes(&out).is_empty(),
        "one senior and a junior's earlier vote are not a senior quorum"
    );
    core.verdict(
        &verdict(&seniors[1], VerdictKind::Approve, T0 + 4),
        T0 + 4,
        &mut out,
    );
    let decided = outcomes(&out);
    assert_eq!(decided.len(), 1);
    let mut reviewers = decided[0].reviewer_ids.clone();
    reviewers.sort();
    assert_eq!(reviewers, ["cy", "dee"]);
}

#[test]
fn items_nobody_can_take_are_set_aside_and_do_not_block_the_queue() {
    let mut cfg = config();
    cfg.max_scan = 5;
    let mut core = Core::new(cfg);
    let mut out = Vec::new();
    core.reviewer_status(&reviewer("ann", &[], 10, Presence::Online), T0, &mut out);
    // Twenty urgent items needing a role nobody has, ahead of an ordinary one.
    for n in 0..20 {
        let mut req = request(&format!("u{n}"), "general", "model", MINUTE, T0);
        req.required_roles = vec!["unicorn".into()];
        req.priority_tier = "urgent".into();
        core.request(&req, T0, &mut out);
    }
    out.clear();
    core.request(
        &request("plain", "general", "model", 60 * MINUTE, T0),
        T0,
        &mut out,
    );
    let assigned = assignments(&out, AssignmentKind::Assigned);
    assert_eq!(assigned.len(), 1);
    assert_eq!(assigned[0].decision_id, "plain");
    assert!(
        core.queued("general").is_empty(),
        "the twenty are set aside"
    );
    for n in 0..20 {
        assert!(core.record(&format!("u{n}")).unwrap().progress.set_aside);
    }
    // Set aside once: a later pass neither records them again nor walks the roster for them.
    out.clear();
    core.tick(T0 + SECOND, &mut out);
    assert!(lifecycle(&out)
        .iter()
        .all(|event| !event.attributes.contains_key("set_aside")));
    assert_eq!(core.gauges()["general"].set_aside, 20);
    // A reviewer with the role joins: they come back and are assigned.
    out.clear();
    core.reviewer_status(
        &reviewer("uma", &["unicorn"], 20, Presence::Online),
        T0 + 2 * SECOND,
        &mut out,
    );
    assert_eq!(core.gauges()["general"].set_aside, 0);
    // `max_scan` items per pass.
    for n in 3..10 {
        core.tick(T0 + n * SECOND, &mut out);
    }
    assert_eq!(assignments(&out, AssignmentKind::Assigned).len(), 20);
}

#[test]
fn the_pool_bounds_a_publishers_sla_and_created_at() {
    let mut cfg = config();
    let fallback = cfg.pools.get_mut("fallback").unwrap();
    fallback.min_sla = Duration::from_secs(60);
    fallback.max_sla = Duration::from_secs(24 * 3600);
    let mut core = Core::new(cfg);
    let mut out = Vec::new();
    // Created "in 1970" with a 1 ms SLA: the deadline passed long ago.
    let mut old = request("old", "fallback", "model", 0, T0);
    Arc::make_mut(&mut old.decision).created_at = 1;
    old.sla_deadline = 2;
    core.request(&old, T0, &mut out);
    assert!(
        outcomes(&out).is_empty(),
        "no fallback before any human could look"
    );
    assert_eq!(core.record("old").unwrap().sla_deadline, T0 + MINUTE);
    let queued = lifecycle(&out).remove(0);
    assert_eq!(
        queued.attributes.get("sla_bounded").map(String::as_str),
        Some("min_sla")
    );
    core.tick(T0 + MINUTE - 1, &mut out);
    assert!(outcomes(&out).is_empty());
    core.tick(T0 + MINUTE, &mut out);
    assert_eq!(outcomes(&out)[0].decided_by, DecidedBy::SlaFallback);
    // A deadline centuries away is held to the pool's maximum; a created_at an hour in the
    // future is taken as the routing time.
    out.clear();
    let mut far = request("far", "fallback", "model", 0, T0);
    Arc::make_mut(&mut far.decision).created_at = T0 + 3600 * SECOND;
    far.sla_deadline = i64::MAX;
    core.request(&far, T0, &mut out);
    let record = core.record("far").unwrap();
    assert_eq!(record.sla_deadline, T0 + 24 * 3600 * SECOND);
    assert_eq!(record.created_at, T0);
    let queued = lifecycle(&out).remove(0);
    assert_eq!(
        queued.attributes.get("sla_bounded").map(String::as_str),
        Some("max_sla")
    );
    assert!(queued.attributes.contains_key("created_at_skewed"));
}

proptest! {
    /// The core serves a pool in the order of the decay law (`DecayParams::key`: the order the
    /// `Queue` model is held to in tests/queue.rs — no starvation, base priority, most overdue
    /// first, arrival ties), through its real queue: requests, one reviewer, one item at a time.
    #[test]
    fn the_core_serves_a_pool_in_the_order_of_the_decay_law(
        items in prop::collection::vec(
            (
                0i64..600,
                60i64..240,
                0u8..4,
                proptest::option::of(0.0f64..=1.0),
                proptest::option::of(0.0f64..1e6),
            ),
            1..30,
        )
    ) {
        use hitl_assignment::queue::{Pending, Queue};
        let mut items: Vec<_> = items.into_iter().enumerate().collect();
        items.sort_by_key(|(i, item)| (item.0, *i));
        let mut core = Core::new(config());
        let mut reference = Queue::new(config().decay);
        let mut out = Vec::new();
        let mut last = T0;
        for (i, (offset_s, sla_min, tier, risk, amount)) in &items {
            let at = T0 + offset_s * SECOND;
            last = last.max(at);
            let id = format!("d{i:02}");
            let mut req = request(&id, "general", "model", sla_min * MINUTE, at);
            req.priority_tier = ["low", "normal", "high", "urgent"][usize::from(*tier)].into();
            let decision = Arc::make_mut(&mut req.decision);
            decision.risk_score = *risk;
            decision.amount = *amount;
            core.request(&req, at, &mut out);
            reference.push(&Pending {
                id,
                enqueued_at: at,
                sla_deadline: at + sla_min * MINUTE,
                tier: *tier,
                risk: *risk,
                amount: *amount,
            });
        }
        let expected: Vec<String> =
            std::iter::from_fn(|| reference.pop_first(|_| true).map(|(id, _)| id.to_string()))
                .collect();
        out.clear();
        core.reviewer_status(&reviewer("ann", &[], 1, Presence::Online), last, &mut out);
        let mut served = Vec::new();
        while let Some(lease) = assignments(&out, AssignmentKind::Assigned).pop() {
            served.push(lease.decision_id.clone());
            out.clear();
            core.verdict(&verdict(&lease, VerdictKind::Approve, last), last, &mut out);
        }
        prop_assert_eq!(served, expected);
    }
}

#[test]
fn a_verdict_read_late_is_judged_and_decided_at_its_append_time_and_the_next_lease_starts_now() {
    let mut core = core_with(&[reviewer("ann", &[], 1, Presence::Online)]);
    let mut out = Vec::new();
    core.request(
        &request("d1", "general", "model", 60 * MINUTE, T0),
        T0,
        &mut out,
    );
    core.request(
        &request("d2", "general", "model", 60 * MINUTE, T0),
        T0,
        &mut out,
    );
    let lease = assignments(&out, AssignmentKind::Assigned).remove(0);
    // Appended in time (T0 + 30 s, lease 60 s), read five minutes later.
    let (at, now) = (T0 + 30 * SECOND, T0 + 5 * MINUTE);
    out.clear();
    core.verdict_at(
        &verdict(&lease, VerdictKind::Approve, at),
        at,
        now,
        &mut out,
    );
    let decided = outcomes(&out);
    assert_eq!(decided.len(), 1, "in time: {:?}", rejections(&out));
    assert_eq!(
        decided[0].decided_at, at,
        "decided when it was appended: the same on a replay"
    );
    let next = assignments(&out, AssignmentKind::Assigned).remove(0);
    assert_eq!(
        next.lease_expires_at,
        now + MINUTE,
        "the lease it made room for lasts its whole length from now"
    );
}
