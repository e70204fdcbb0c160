//! Routes one valid decision: pure, deterministic, time as a parameter.

use std::{collections::BTreeMap, sync::Arc};

use hitl_schema::{
    DecidedBy, Decision, LifecycleEvent, LifecycleKind, Outcome, OutcomeStatus, ReviewKind,
    ReviewRequest,
};

use crate::policy::{route_name, Action, Evaluation, Policy, Review, Tier};

/// Service name written into lifecycle events.
pub const SERVICE: &str = "router";

/// What routing one decision produces.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    /// The final outcome, for auto-decided decisions.
    pub outcome: Option<Outcome>,
    /// The request to people: a blocking review, or a QA copy of an auto decision.
    pub review: Option<ReviewRequest>,
    pub lifecycle: LifecycleEvent,
    /// `auto_approve`, `auto_reject` or `human`.
    pub route: &'static str,
    pub rule: String,
    /// Whether the shadow policy agreed, when there is one.
    pub shadow_agrees: Option<bool>,
}

/// Routes `decision` by `active`, evaluating `shadow` beside it without letting it change anything.
pub fn route(
    active: &Policy,
    shadow: Option<&Policy>,
    decision: Decision,
    now_millis: i64,
    traceparent: Option<String>,
) -> Routed {
    let decision = Arc::new(decision);
    let evaluation = active.evaluate(&decision);
    let route = route_name(evaluation.action);
    let mut attributes = BTreeMap::new();
    attributes.insert("route".to_owned(), route.to_owned());
    if evaluation.qa_sample {
        attributes.insert("qa_sample".into(), "true".into());
    }
    let shadow_agrees = shadow.map(|shadow| {
        let candidate = shadow.evaluate(&decision);
        let agrees = same_route(evaluation.action, candidate.action);
        attributes.insert("shadow_version".into(), shadow.version.clone());
        attributes.insert("shadow_rule".into(), candidate.rule.to_owned());
        attributes.insert(
            "shadow_route".into(),
            route_name(candidate.action).to_owned(),
        );
        attributes.insert("shadow_agrees".into(), agrees.to_string());
        agrees
    });

    let (outcome, review) = match evaluation.action {
        Action::AutoApprove | Action::AutoReject => {
            let status = if matches!(evaluation.action, Action::AutoApprove) {
                OutcomeStatus::Approved
            } else {
                OutcomeStatus::Rejected
            };
            let outcome = auto_outcome(active, &evaluation, &decision, status, now_millis);
            let qa = evaluation.qa_sample.then(|| {
                let qa_review = &active.qa_review;
                attributes.insert("pool".into(), qa_review.pool.clone());
                review_request(
                    active,
                    &evaluation,
                    &decision,
                    qa_review,
                    ReviewKind::QaSample,
                    Some(status),
                    now_millis,
                )
            });
            (Some(outcome), qa)
        }
        Action::Review(review) => {
            attributes.insert("pool".into(), review.pool.clone());
            let request = review_request(
                active,
                &evaluation,
                &decision,
                review,
                ReviewKind::Review,
                None,
                now_millis,
            );
            attributes.insert("tier".into(), request.priority_tier.clone());
            (None, Some(request))
        }
    };
    let lifecycle = LifecycleEvent {
        event_id: [decision.decision_id.as_str(), ":router:routed"].concat(),
        decision_id: decision.decision_id.clone(),
        kind: LifecycleKind::Routed,
        service: SERVICE.to_owned(),
        event_time: now_millis,
        sequence: 0,
        reviewer_id: None,
        assignment_id: None,
        policy_rule: Some(evaluation.rule.to_owned()),
        policy_version: Some(active.version.clone()),
        reason: None,
        attributes,
        outcome: outcome.clone(),
        decision: Some(decision),
        traceparent,
    };
    Routed {
        outcome,
        review,
        lifecycle,
        route,
        rule: evaluation.rule.to_owned(),
        shadow_agrees,
    }
}

fn same_route(active: &Action, candidate: &Action) -> bool {
    match (active, candidate) {
        (Action::Review(a), Action::Review(b)) => a.pool == b.pool,
        (a, b) => route_name(a) == route_name(b),
    }
}

fn auto_outcome(
    policy: &Policy,
    evaluation: &Evaluation<'_>,
    decision: &Decision,
    status: OutcomeStatus,
    now_millis: i64,
) -> Outcome {
    Outcome {
        decision_id: decision.decision_id.clone(),
        final_action: decision.action.clone(),
        status,
        decided_by: DecidedBy::Auto,
        reviewer_ids: Vec::new(),
        policy_rule: evaluation.rule.to_owned(),
        policy_version: policy.version.clone(),
        decided_at: now_millis,
        time_to_decision_ms: (now_millis - decision.created_at).max(0),
        workflow: decision.workflow.clone(),
        rationale: None,
    }
}

fn review_request(
    policy: &Policy,
    evaluation: &Evaluation<'_>,
    decision: &Arc<Decision>,
    review: &Review,
    kind: ReviewKind,
    auto_status: Option<OutcomeStatus>,
    now_millis: i64,
) -> ReviewRequest {
    // The producer's hint can raise the tier, never lower it below the policy's.
    let hinted = decision.priority.as_deref().and_then(Tier::parse);
    let tier = match (kind, hinted) {
        (ReviewKind::Review, Some(hint)) => review.tier.max(hint),
        _ => review.tier,
    };
    // A loaded policy's SLA and quorum fit the request's fields (`Policy::problems`); saturate
    // rather than wrap if one was built otherwise.
    let sla_ms = decision
        .sla_ms
        .unwrap_or_else(|| i64::try_from(review.sla.as_millis()).unwrap_or(i64::MAX));
    ReviewRequest {
        decision: Arc::clone(decision),
        kind,
        pool: review.pool.clone(),
        required_roles: review.roles.clone(),
        priority_tier: tier.as_str().to_owned(),
        sla_deadline: decision.created_at.saturating_add(sla_ms),
        quorum: i32::try_from(review.quorum).unwrap_or(i32::MAX),
        policy_rule: evaluation.rule.to_owned(),
        policy_version: policy.version.clone(),
        auto_status: auto_status.map(|status| status.as_str().to_owned()),
        routed_at: now_millis,
    }
}
