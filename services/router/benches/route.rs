//! The router's per-decision cost: decode + validate + policy (+ shadow) + encode of every output
//! (outcome or review request, and the lifecycle event). Target: ≤ 1 µs.

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, Criterion};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use hitl_router::{core::route, policy::Policy, service::encode_routed, validate};
use hitl_runtime::{config::Topics, trace::TraceContext, OutputRecord};
use hitl_schema::*;

const POLICY: &str = include_str!("../../../config/policy.yaml");

fn decision(confidence: f64, amount: f64) -> Decision {
    Decision {
        decision_id: "payments-000012345".into(),
        workflow: "payments.fraud".into(),
        subject: "txn-000012345".into(),
        action: "allow".into(),
        confidence,
        risk_score: Some(0.21),
        amount: Some(amount),
        priority: None,
        producer: "fraud-gbm".into(),
        model_name: "fraud-gbm".into(),
        model_version: Some("2026.11".into()),
        features: BTreeMap::from([
            ("velocity_1h".into(), 3.0),
            ("merchant_risk".into(), 0.4),
            ("distance_km".into(), 120.0),
        ]),
        context: BTreeMap::from([
            ("card_number".into(), "4111-xxxx-xxxx-1234".into()),
            ("merchant".into(), "merchant-77".into()),
            ("country".into(), "NL".into()),
        ]),
        sensitive_fields: vec!["card_number".into()],
        created_at: 1_764_000_000_000,
        sla_ms: None,
    }
}

/// Everything the router's shell does to one valid record between Kafka's bytes in and the output
/// records handed to the producer: decode, validate, route (policy, QA, shadow), trace context,
/// encode every output from the routed values.
fn route_record(
    codec: &Codec,
    topics: &Topics,
    active: &Policy,
    shadow: Option<&Policy>,
    input: &[u8],
    out: &mut Vec<OutputRecord>,
) -> usize {
    let decision: Decision = codec.decode(input).unwrap();
    assert!(validate::problems(&decision).is_empty());
    let traceparent = TraceContext::child(None, decision.decision_id.as_bytes(), 1.0).header();
    let routed = route(
        active,
        shadow,
        decision,
        1_764_000_000_050,
        Some(traceparent.clone()),
    );
    out.clear();
    encode_routed(codec, topics, &routed, &traceparent, out).unwrap();
    out.len()
}

fn bench(c: &mut Criterion) {
    let codec = Codec::single_object();
    let active = Policy::from_yaml(POLICY).unwrap();
    let shadow = Policy::from_yaml(&POLICY.replace("demo-2026-11-24.1", "candidate")).unwrap();
    let auto = codec.encode_to_vec("d", &decision(0.95, 120.0)).unwrap();
    let human = codec.encode_to_vec("d", &decision(0.5, 20_000.0)).unwrap();
    let topics = Topics::default();
    let mut out = Vec::with_capacity(4);
    let cases = [
        ("route_auto_decode_policy_encode", &auto, None),
        ("route_human_decode_policy_encode", &human, None),
        ("route_human_with_shadow", &human, Some(&shadow)),
    ];
    for (name, input, shadow) in cases {
        c.bench_function(name, |b| {
            b.iter(|| {
                route_record(
                    &codec,
                    &topics,
                    &active,
                    shadow,
                    std::hint::black_box(input),
                    &mut out,
                )
            })
        });
    }
    let one = decision(0.95, 120.0);
    c.bench_function("policy_evaluate_only", |b| {
        b.iter(|| active.evaluate(std::hint::black_box(&one)).rule)
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
