//! The router's per-decision cost: decode + validate + policy (+ shadow) + encode of every output
//! (outcome or review request, and the lifecycle event). Target: ≤ 2 µs.

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, Criterion};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use hitl_router::{core::route, policy::Policy, validate};
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

/// Everything the router does to one record between Kafka's bytes in and Kafka's bytes out.
fn route_bytes(
    codec: &Codec,
    active: &Policy,
    shadow: Option<&Policy>,
    input: &[u8],
    out: &mut Vec<u8>,
) -> usize {
    let decision: Decision = codec.decode(input).unwrap();
    assert!(validate::problems(&decision).is_empty());
    let routed = route(active, shadow, decision, 1_764_000_000_050, None);
    out.clear();
    if let Some(outcome) = &routed.outcome {
        codec.encode("o", outcome, out).unwrap();
    }
    if let Some(review) = &routed.review {
        codec.encode("r", review, out).unwrap();
    }
    codec.encode("l", &routed.lifecycle, out).unwrap();
    out.len()
}

fn bench(c: &mut Criterion) {
    let codec = Codec::single_object();
    let active = Policy::from_yaml(POLICY).unwrap();
    let shadow = Policy::from_yaml(&POLICY.replace("demo-2026-11-24.1", "candidate")).unwrap();
    let auto = codec.encode_to_vec("d", &decision(0.95, 120.0)).unwrap();
    let human = codec.encode_to_vec("d", &decision(0.5, 20_000.0)).unwrap();
    let mut out = Vec::with_capacity(2048);
    c.bench_function("route_auto_decode_policy_encode", |b| {
        b.iter(|| route_bytes(&codec, &active, None, std::hint::black_box(&auto), &mut out))
    });
    c.bench_function("route_human_decode_policy_encode", |b| {
        b.iter(|| {
            route_bytes(
                &codec,
                &active,
                None,
                std::hint::black_box(&human),
                &mut out,
            )
        })
    });
    c.bench_function("route_human_with_shadow", |b| {
        b.iter(|| {
            route_bytes(
                &codec,
                &active,
                Some(&shadow),
                std::hint::black_box(&human),
                &mut out,
            )
        })
    });
    let one = decision(0.95, 120.0);
    c.bench_function("policy_evaluate_only", |b| {
        b.iter(|| active.evaluate(std::hint::black_box(&one)).rule)
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
