//! The routing policy parser and evaluation. The input is a policy (YAML), optionally followed by a
//! NUL byte and a decision (JSON when it starts with `{`, else an Avro datum); without a decodable
//! one, the sample decisions are routed.
//!
//! For a policy that loads, and every decision that passes the router's validation:
//! - `problems()` finds nothing in it (loading checked the same);
//! - evaluation picks the first rule that matches, else `default`;
//! - subsumption is sound: when a rule's conditions subsume another's, every decision the other
//!   matches, it matches too (the unreachable-rule check relies on it);
//! - routing never panics, a policy agrees with itself as shadow, a review request asks for at
//!   least one reviewer and is due the SLA after the decision was made, and every output encodes
//!   and decodes back to itself (the lifecycle event's copied decision and outcome datums too).
#![no_main]

use std::time::Duration;

use hitl_fuzz::{
    assert_reencodes, codec,
    policy::{Action, Policy},
    route::route,
    seeds, validate, NOW_MILLIS, TOPIC,
};
use hitl_schema::{Decision, ReviewKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (text, decision) = match data.iter().position(|&byte| byte == 0) {
        Some(at) => (&data[..at], seeds::decode_decision(&data[at + 1..])),
        None => (data, None),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(policy) = Policy::from_yaml(text) else {
        return;
    };
    assert_eq!(policy.problems(), Vec::<String>::new());
    let decisions = match decision {
        Some(decision) => vec![decision],
        None => seeds::decisions(),
    };
    for decision in decisions {
        if validate::problems(&decision).is_empty() {
            check_routing(&policy, decision);
        }
    }
});

fn check_routing(policy: &Policy, decision: Decision) {
    let evaluation = policy.evaluate(&decision);
    let first_match = policy
        .rules
        .iter()
        .find(|rule| rule.when.matches(&decision))
        .map_or("default", |rule| rule.name.as_str());
    assert_eq!(evaluation.rule, first_match);
    for outer in &policy.rules {
        for inner in &policy.rules {
            if outer.when.subsumes(&inner.when) && inner.when.matches(&decision) {
                assert!(
                    outer.when.matches(&decision),
                    "rule `{}` subsumes `{}` but does not match a decision it matches",
                    outer.name,
                    inner.name
                );
            }
        }
    }

    let routed = route(policy, Some(policy), decision.clone(), NOW_MILLIS, None);
    assert_eq!(routed.shadow_agrees, Some(true));
    assert_eq!(routed.rule, evaluation.rule);
    match evaluation.action {
        Action::Review(review) => {
            assert!(routed.outcome.is_none());
            let request = routed.review.as_ref().expect("a review request");
            assert_eq!(request.kind, ReviewKind::Review);
            assert_eq!(request.pool, review.pool);
            check_request(request, &decision, review.sla);
        }
        Action::AutoApprove | Action::AutoReject => {
            assert!(routed.outcome.is_some());
            assert_eq!(routed.review.is_some(), evaluation.qa_sample);
            if let Some(request) = &routed.review {
                assert_eq!(request.kind, ReviewKind::QaSample);
                check_request(request, &decision, policy.qa_review.sla);
            }
        }
    }

    if let Some(outcome) = &routed.outcome {
        assert_reencodes(outcome);
    }
    if let Some(request) = &routed.review {
        assert_reencodes(request);
    }
    assert_reencodes(&routed.lifecycle);
    let mut request_bytes = Vec::new();
    let decision_datum = routed.review.as_ref().map(|request| {
        codec()
            .encode_review_request(TOPIC, request, &mut request_bytes)
            .expect("encodes")
    });
    let mut outcome_bytes = Vec::new();
    let outcome_datum = routed.outcome.as_ref().map(|outcome| {
        codec()
            .encode_shared(TOPIC, outcome, &mut outcome_bytes)
            .expect("encodes")
    });
    let mut spliced = Vec::new();
    codec()
        .encode_lifecycle_event(
            TOPIC,
            &routed.lifecycle,
            decision_datum,
            outcome_datum,
            &mut spliced,
        )
        .expect("encodes");
    assert_eq!(
        spliced,
        codec().encode_to_vec(TOPIC, &routed.lifecycle).unwrap()
    );
}

/// A review request asks for at least one reviewer and is due `sla` (the decision's own `sla_ms`
/// when it has one) after the decision was made, or at the end of time.
fn check_request(request: &hitl_schema::ReviewRequest, decision: &Decision, sla: Duration) {
    assert!(request.quorum >= 1, "quorum {}", request.quorum);
    let sla_ms = decision
        .sla_ms
        .unwrap_or_else(|| i64::try_from(sla.as_millis()).unwrap_or(i64::MAX));
    assert_eq!(
        request.sla_deadline,
        decision.created_at.saturating_add(sla_ms),
        "the deadline is not the SLA ({sla:?}, sla_ms {:?}) after the decision was made ({})",
        decision.sla_ms,
        decision.created_at
    );
}
