//! The audit core per lifecycle event (timeline, record, canonical encoding, SHA-256, Ed25519
//! signature), the hashing and signing alone, and verifying one record.

use std::{collections::BTreeMap, sync::Arc};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use hitl_audit::{
    crypto::{record_content, sha256_hex, verify, Keys},
    trail::{AuditCore, Effect},
};
use hitl_schema::{AuditRecord, Decision, LifecycleEvent};

const SEED: &str = "0101010101010101010101010101010101010101010101010101010101010101";

fn human_lifecycle(id: &str) -> Vec<LifecycleEvent> {
    let at = 1_800_000_000_000;
    let decision = Decision {
        decision_id: id.into(),
        workflow: "payments.card".into(),
        subject: "txn-1".into(),
        action: "approve".into(),
        confidence: 0.7,
        risk_score: Some(0.3),
        amount: Some(120.0),
        priority: None,
        producer: "fraud-model".into(),
        model_name: "fraud".into(),
        model_version: Some("7".into()),
        features: BTreeMap::from([("velocity".to_owned(), 2.0), ("age_days".to_owned(), 400.0)]),
        context: BTreeMap::from([
            ("customer".to_owned(), "Alice Example".to_owned()),
            ("country".to_owned(), "DE".to_owned()),
        ]),
        sensitive_fields: vec!["customer".into()],
        created_at: at,
        sla_ms: None,
    };
    hitl_schema::sample::human_lifecycle(decision, "ann", "rule", at, 1)
}

fn bench(c: &mut Criterion) {
    let keys = Arc::new(Keys::new(SEED, "k1", "hash-key-0123456789").unwrap());
    let events = human_lifecycle("d1");
    let mut group = c.benchmark_group("audit");
    // Five events: five record versions (the last one 5 entries long) and one feedback record.
    group.bench_function("human_decision_5_events", |b| {
        b.iter_batched_ref(
            || AuditCore::new(keys.clone()),
            |core| {
                let mut out = Vec::new();
                for event in &events {
                    core.event(0, event, &mut out);
                }
                out
            },
            BatchSize::SmallInput,
        )
    });
    let mut core = AuditCore::new(keys.clone());
    let mut out = Vec::new();
    for event in &events {
        core.event(0, event, &mut out);
    }
    let record: AuditRecord = out
        .iter()
        .rev()
        .find_map(|e| match e {
            Effect::Record { record, .. } => Some(record.clone()),
            _ => None,
        })
        .unwrap();
    group.bench_function("canonical_encoding", |b| b.iter(|| record_content(&record)));
    let content = record_content(&record);
    group.bench_function("sha256_of_content", |b| b.iter(|| sha256_hex(&content)));
    let hash = sha256_hex(&content);
    group.bench_function("ed25519_sign", |b| b.iter(|| keys.sign(hash.as_bytes())));
    let public = keys.verifying_key();
    group.bench_function("ed25519_verify", |b| {
        b.iter(|| verify(&public, hash.as_bytes(), &record.signature))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
