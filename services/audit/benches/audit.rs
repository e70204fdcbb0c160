//! The audit core per lifecycle event (timeline, record, canonical encoding, SHA-256, Ed25519
//! signature), the hashing and signing alone, and verifying one record; the ingest check (the
//! `hitl-auth` HMAC of a lifecycle event and its grant) against the rest of the per-event work.

use std::{collections::BTreeMap, sync::Arc};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use hitl_audit::{
    crypto::{record_content, sha256_hex, verify, Keys},
    trail::{AuditCore, Effect},
};
use hitl_runtime::auth::{Algorithm, Grant, KeySet, Kind, Signer};
use hitl_schema::{AuditRecord, Codec, Decision, LifecycleEvent};

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

    // The ingest check vs the rest of the work of one event, for the ROUTED event (the largest:
    // it carries the decision) and the assignment's QUEUED event (a typical small one).
    let secret = [7u8; 32];
    let mut trusted = KeySet::default();
    for service in ["router", "assignment"] {
        trusted
            .insert_hmac(
                &format!("{service}-1"),
                &secret,
                Grant::Service {
                    service: service.into(),
                },
            )
            .unwrap();
    }
    let codec = Codec::single_object();
    let mut group = c.benchmark_group("audit_ingest");
    for (name, event) in [("routed", &events[0]), ("queued", &events[1])] {
        let payload = codec.encode_to_vec("hitl.lifecycle", event).unwrap();
        let key = event.decision_id.as_bytes();
        let signer = Signer::new(
            &format!("{}-1", event.service),
            Algorithm::HmacSha256,
            &secret,
        )
        .unwrap();
        let header = signer.sign(Kind::Lifecycle, Some(key), Some(&payload));
        eprintln!("{name}: {} bytes", payload.len());
        group.bench_function(format!("check_{name}_{}_bytes", payload.len()), |b| {
            b.iter(|| {
                let signer = trusted
                    .verify(
                        Kind::Lifecycle,
                        Some(key),
                        Some(&payload),
                        Some(header.as_bytes()),
                    )
                    .unwrap();
                signer.may_speak_for(&event.service).unwrap();
            })
        });
        // The rest: decode, the core (timeline, record, hash, signature, label), encode outputs.
        let earlier = &events[..events
            .iter()
            .position(|e| e.event_id == event.event_id)
            .unwrap()];
        group.bench_function(format!("rest_{name}"), |b| {
            b.iter_batched_ref(
                || {
                    let mut core = AuditCore::new(keys.clone());
                    let mut out = Vec::new();
                    for earlier in earlier {
                        core.event(0, earlier, &mut out);
                    }
                    core
                },
                |core| {
                    let event: LifecycleEvent = codec.decode(&payload).unwrap();
                    let mut out = Vec::new();
                    core.event(0, &event, &mut out);
                    let mut bytes = 0;
                    for effect in &out {
                        if let Effect::Record { record, .. } = effect {
                            bytes += codec.encode_to_vec("hitl.audit", record).unwrap().len();
                        }
                    }
                    bytes
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
