//! Codec cost per record: decode a Decision, encode an Outcome, a ReviewRequest and a
//! LifecycleEvent (the router's hot records; hand-written codecs, `src/datum.rs`).

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, Criterion};
use hitl_schema::*;

fn decision() -> Decision {
    Decision {
        decision_id: "payments-000012345".into(),
        workflow: "payments.fraud".into(),
        subject: "txn-000012345".into(),
        action: "block".into(),
        confidence: 0.93,
        risk_score: Some(0.21),
        amount: Some(129.5),
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

fn codec(c: &mut Criterion) {
    let codec = Codec::single_object();
    let bytes = codec.encode_to_vec("t", &decision()).unwrap();
    println!("decision record: {} bytes", bytes.len());
    c.bench_function("decode_decision", |b| {
        b.iter(|| {
            codec
                .decode::<Decision>(std::hint::black_box(&bytes))
                .unwrap()
        })
    });
    let json = serde_json::to_vec(&decision()).unwrap();
    c.bench_function("decode_decision_json", |b| {
        b.iter(|| {
            codec
                .decode_json::<Decision>(std::hint::black_box(&json))
                .unwrap()
        })
    });
    let outcome = Outcome {
        decision_id: "payments-000012345".into(),
        final_action: "block".into(),
        status: OutcomeStatus::Approved,
        decided_by: DecidedBy::Auto,
        reviewer_ids: vec![],
        policy_rule: "confident-low-risk".into(),
        policy_version: "v1".into(),
        decided_at: 1_764_000_000_010,
        time_to_decision_ms: 10,
        workflow: "payments.fraud".into(),
        rationale: None,
    };
    let mut buffer = Vec::with_capacity(512);
    c.bench_function("encode_outcome", |b| {
        b.iter(|| {
            buffer.clear();
            codec
                .encode("t", std::hint::black_box(&outcome), &mut buffer)
                .unwrap();
        })
    });
    let request = sample::review_request(
        "payments-000012345".into(),
        12345,
        "payments-senior".into(),
        1_764_000_000_010,
        1_764_000_001_000,
    );
    c.bench_function("encode_review_request", |b| {
        b.iter(|| {
            buffer.clear();
            codec
                .encode("t", std::hint::black_box(&request), &mut buffer)
                .unwrap();
        })
    });
    let mut event = LifecycleEvent::new("e", "d", LifecycleKind::Routed, "router", 1);
    event.decision = Some(std::sync::Arc::new(decision()));
    c.bench_function("encode_lifecycle_with_decision", |b| {
        b.iter(|| {
            buffer.clear();
            codec
                .encode("t", std::hint::black_box(&event), &mut buffer)
                .unwrap();
        })
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
