//! Synthetic records for load generators, benchmarks and tests: card-payment review requests and
//! the lifecycle of a decision that people approved.

use std::{collections::BTreeMap, sync::Arc};

use crate::types::{
    DecidedBy, Decision, LifecycleEvent, LifecycleKind, Outcome, OutcomeStatus, ReviewKind,
    ReviewRequest,
};

/// A review request for card payment `i` (its amount, risk, customer and priority tier vary with
/// `i`), with the customer marked sensitive.
pub fn review_request(
    decision_id: String,
    i: u64,
    pool: String,
    routed_at: i64,
    sla_deadline: i64,
) -> ReviewRequest {
    let context = BTreeMap::from([
        ("customer".to_owned(), format!("customer-{}", i % 50_000)),
        ("country".to_owned(), "DE".to_owned()),
    ]);
    ReviewRequest {
        decision: Arc::new(Decision {
            decision_id,
            workflow: "payments.card".into(),
            subject: format!("txn-{i}"),
            action: "approve".into(),
            confidence: 0.7,
            risk_score: Some((i % 100) as f64 / 100.0),
            amount: Some((i % 50_000) as f64),
            priority: None,
            producer: "fraud-model".into(),
            model_name: "fraud".into(),
            model_version: None,
            features: BTreeMap::new(),
            context,
            sensitive_fields: vec!["customer".into()],
            created_at: routed_at - 5,
            sla_ms: None,
        }),
        kind: ReviewKind::Review,
        pool,
        required_roles: vec![],
        priority_tier: ["low", "normal", "high", "urgent"][(i % 4) as usize].into(),
        sla_deadline,
        quorum: 1,
        policy_rule: "default".into(),
        policy_version: "v1".into(),
        auto_status: None,
        routed_at,
    }
}

/// The router's ROUTED event for `decision` on `route` under `policy_rule` (version `v1`) at `at`.
pub fn routed(decision: Decision, route: &str, policy_rule: &str, at: i64) -> LifecycleEvent {
    let id = decision.decision_id.clone();
    let mut routed = LifecycleEvent::new(
        format!("{id}:router:routed"),
        &id,
        LifecycleKind::Routed,
        "router",
        at,
    );
    routed.decision = Some(Arc::new(decision));
    routed.attributes.insert("route".into(), route.into());
    routed.policy_rule = Some(policy_rule.into());
    routed.policy_version = Some("v1".into());
    routed
}

/// The lifecycle of `decision` sent to people under `policy_rule` (version `v1`) at `at` and
/// approved by `reviewer`: ROUTED, QUEUED, ASSIGNED, VERDICT and OUTCOME, `step` ms apart.
pub fn human_lifecycle(
    decision: Decision,
    reviewer: &str,
    policy_rule: &str,
    at: i64,
    step: i64,
) -> Vec<LifecycleEvent> {
    let id = decision.decision_id.clone();
    let workflow = decision.workflow.clone();
    let mut events = vec![routed(decision, "human", policy_rule, at)];
    for (sequence, kind) in [
        (1, LifecycleKind::Queued),
        (2, LifecycleKind::Assigned),
        (3, LifecycleKind::Verdict),
    ] {
        let mut event = LifecycleEvent::new(
            format!("{id}:assignment:{sequence}"),
            &id,
            kind,
            "assignment",
            at + sequence * step,
        );
        event.sequence = sequence;
        event.reviewer_id = (sequence > 1).then(|| reviewer.to_owned());
        if kind == LifecycleKind::Verdict {
            event.attributes.insert("verdict".into(), "APPROVE".into());
        }
        events.push(event);
    }
    let decided_at = at + 4 * step;
    let mut done = LifecycleEvent::new(
        format!("{id}:assignment:4"),
        &id,
        LifecycleKind::Outcome,
        "assignment",
        decided_at,
    );
    done.sequence = 4;
    done.outcome = Some(Outcome {
        decision_id: id,
        final_action: "approve".into(),
        status: OutcomeStatus::Approved,
        decided_by: DecidedBy::Human,
        reviewer_ids: vec![reviewer.into()],
        policy_rule: policy_rule.into(),
        policy_version: "v1".into(),
        decided_at,
        time_to_decision_ms: decided_at - at,
        workflow,
        rationale: None,
    });
    events.push(done);
    events
}
