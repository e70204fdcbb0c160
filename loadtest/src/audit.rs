//! `bench-audit`: the audit service's throughput on the dev broker (lifecycle events in, signed
//! audit records, checkpoints and feedback out), as a ratio to a raw passthrough over the same input;
//! then `verify` over the trail it wrote (N decisions).

use std::{collections::BTreeMap, time::Instant};

use hitl_audit::{
    reader,
    verify::{verify, Input},
    AuditProcessor, AuditSettings,
};
use hitl_runtime::{
    config::{KafkaSettings, Secret, Settings, Topics},
    out, outln,
};
use hitl_schema::{Codec, DecidedBy, Decision, LifecycleEvent, Outcome, OutcomeStatus};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::bench::{measure_on, Passthrough};

/// The lifecycle of decision `i`: 70% auto-approved (one ROUTED event with the outcome), 30% sent
/// to people (routed, queued, assigned, verdict, outcome).
fn lifecycle(i: u64, at: i64) -> Vec<LifecycleEvent> {
    let id = format!("bench-{i:08}");
    let decision = Decision {
        decision_id: id.clone(),
        workflow: "payments.card".into(),
        subject: format!("txn-{i}"),
        action: "approve".into(),
        confidence: 0.8,
        risk_score: Some(0.3),
        amount: Some((i % 5000) as f64),
        priority: None,
        producer: "fraud-model".into(),
        model_name: "fraud".into(),
        model_version: Some("7".into()),
        features: BTreeMap::from([("velocity".to_owned(), 2.0), ("age_days".to_owned(), 400.0)]),
        context: BTreeMap::from([
            ("customer".to_owned(), format!("customer-{i}")),
            ("country".to_owned(), "DE".to_owned()),
        ]),
        sensitive_fields: vec!["customer".into()],
        created_at: at,
        sla_ms: None,
    };
    if i % 10 < 3 {
        return hitl_schema::sample::human_lifecycle(
            decision,
            &format!("reviewer-{}", i % 20),
            "rule",
            at,
            1,
        );
    }
    let mut routed = hitl_schema::sample::routed(decision, "auto_approve", "rule", at);
    routed.outcome = Some(Outcome {
        decision_id: id,
        final_action: "approve".into(),
        status: OutcomeStatus::Approved,
        decided_by: DecidedBy::Auto,
        reviewer_ids: vec![],
        policy_rule: "rule".into(),
        policy_version: "v1".into(),
        decided_at: at,
        time_to_decision_ms: 0,
        workflow: "payments.card".into(),
        rationale: None,
    });
    vec![routed]
}

/// The service keys the benchmark signs lifecycle events with, and the keys file trusting them.
fn service_keys() -> (
    std::path::PathBuf,
    hitl_runtime::auth::Signer,
    hitl_runtime::auth::Signer,
) {
    use hitl_runtime::auth::{random_secret, Algorithm, Signer};
    let path = std::env::temp_dir().join(format!("bench-audit-keys-{}.toml", std::process::id()));
    let router = random_secret().unwrap();
    let assignment = random_secret().unwrap();
    std::fs::write(
        &path,
        format!(
            "[[keys]]\nkey_id = \"bench-router\"\nalgorithm = \"hmac-sha256\"\nsecret = \"{}\"\ngrant = {{ kind = \"service\", service = \"router\" }}\n\n\
             [[keys]]\nkey_id = \"bench-assignment\"\nalgorithm = \"hmac-sha256\"\nsecret = \"{}\"\ngrant = {{ kind = \"service\", service = \"assignment\" }}\n",
            router.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            assignment.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    )
    .unwrap();
    (
        path,
        Signer::new("bench-router", Algorithm::HmacSha256, &router).unwrap(),
        Signer::new("bench-assignment", Algorithm::HmacSha256, &assignment).unwrap(),
    )
}

static KEYS: std::sync::OnceLock<(
    std::path::PathBuf,
    hitl_runtime::auth::Signer,
    hitl_runtime::auth::Signer,
)> = std::sync::OnceLock::new();

/// Publishes the lifecycle of `decisions` decisions, each event signed by its service's key;
/// returns the number of events.
fn publish(kafka: &KafkaSettings, topic: &str, decisions: u64) -> u64 {
    let (_, router, assignment) = KEYS.get_or_init(service_keys);
    let producer: BaseProducer = hitl_runtime::kafka::producer_config(kafka)
        .create()
        .expect("producer");
    let codec = Codec::single_object();
    let at = hitl_runtime::now_millis();
    let mut events = 0;
    for i in 0..decisions {
        for event in lifecycle(i, at) {
            let payload = codec.encode_to_vec(topic, &event).expect("encodes");
            let signer = if event.service == "router" {
                router
            } else {
                assignment
            };
            let header = signer.sign(
                hitl_runtime::auth::Kind::Lifecycle,
                Some(event.decision_id.as_bytes()),
                Some(&payload),
            );
            let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                key: hitl_runtime::auth::HEADER,
                value: Some(header.as_str()),
            });
            let mut record = BaseRecord::<str, [u8]>::to(topic)
                .key(event.decision_id.as_str())
                .payload(&payload[..])
                .headers(headers);
            while let Err((_, back)) = producer.send(record) {
                producer.poll(std::time::Duration::from_millis(5));
                record = back;
            }
            events += 1;
        }
    }
    producer
        .flush(std::time::Duration::from_secs(300))
        .expect("flush");
    events
}

pub fn run(
    kafka: &KafkaSettings,
    runtime: &tokio::runtime::Runtime,
    decisions: u64,
) -> anyhow::Result<()> {
    let prefix = format!("bench-audit-{:x}", hitl_runtime::now_millis());
    let defaults = Topics::default();
    let topics = Topics {
        lifecycle: format!("{prefix}.lifecycle"),
        audit: format!("{prefix}.audit"),
        audit_checkpoints: format!("{prefix}.audit.checkpoints"),
        feedback: format!("{prefix}.feedback"),
        decisions_dlq: format!("{prefix}.dlq"),
        outcomes: format!("{prefix}.outcomes"),
        decisions: format!("{prefix}.decisions"),
        ..defaults
    };
    let mut specs = topics.specs();
    specs.retain(|spec| spec.name.starts_with(&prefix));
    specs.push(hitl_runtime::config::TopicSpec {
        name: format!("{prefix}.passthrough"),
        partitions: topics.partitions,
        configs: vec![],
    });
    runtime.block_on(hitl_runtime::kafka::ensure_topics(kafka, &specs, 1))?;

    outln!(
        "publishing the lifecycle of {decisions} decisions to {} ...",
        topics.lifecycle
    )?;
    let started = Instant::now();
    let events = publish(kafka, &topics.lifecycle, decisions);
    outln!("{events} events in {:.1}s", started.elapsed().as_secs_f64())?;

    let passthrough = measure_on(
        kafka,
        &topics.lifecycle,
        "passthrough",
        Passthrough {
            topic: format!("{prefix}.passthrough"),
        },
        events,
    )?;
    let settings = Settings {
        kafka: kafka.clone(),
        topics: topics.clone(),
        service: AuditSettings {
            signing_key: Some(Secret::new(hitl_audit::crypto::random_seed_hex()?)),
            hash_key: Some(Secret::new("bench-hash-key-0123456789")),
            key_id: "bench".into(),
            ..AuditSettings::default()
        },
        trust: hitl_runtime::config::TrustSettings {
            keys_file: Some(KEYS.get_or_init(service_keys).0.clone()),
            ..Default::default()
        },
        ..Settings::default()
    };
    let processor = AuditProcessor::build(
        &settings,
        &mut prometheus_client::registry::Registry::default(),
        hitl_runtime::trace::Tracer::default(),
    )?;
    let public = settings
        .service
        .keys()
        .map_err(|p| anyhow::anyhow!("{p:?}"))?;
    let audit = measure_on(kafka, &topics.lifecycle, "audit", processor, events)?;
    outln!(
        "audit: {audit:.0} events/s (each a signed audit record; {:.0}% also a feedback record)   \
         passthrough: {passthrough:.0}/s   ratio {:.3}",
        100.0 * 0.3 / (0.7 + 0.3 * 5.0),
        audit / passthrough
    )?;

    // Give the last checkpoints time to be cut (the loop stopped after the last commit; the trail
    // is complete up to it), then verify.
    let timeout = std::time::Duration::from_secs(1800);
    let started = Instant::now();
    let checkpoints = reader::read_topic(kafka, &topics.audit_checkpoints, timeout)?;
    let input = Input {
        audit: reader::read_topic(kafka, &topics.audit, timeout)?,
        checkpoints,
        decisions: None,
        outcomes: None,
        require_checkpointed: false,
    };
    let read = started.elapsed();
    let keys = BTreeMap::from([("bench".to_owned(), public.verifying_key())]);
    let verified = Instant::now();
    let report = verify(&input, &keys);
    let verify_time = verified.elapsed();
    out!("{report}")?;
    outln!(
        "verify: {} decisions ({} records, {} checkpoints): read {:.2}s, checked {:.2}s ({:.0} records/s)",
        report.decisions,
        report.records,
        report.checkpoints,
        read.as_secs_f64(),
        verify_time.as_secs_f64(),
        report.records as f64 / verify_time.as_secs_f64()
    )?;
    anyhow::ensure!(report.is_clean(), "the benchmark trail does not verify");
    Ok(())
}

/// Resident memory per decision of the audit core's state after `decisions` lifecycles (the
/// benchmark's 70/30 mix), with finished trails sealed (`seal`) or kept whole. One mode per
/// process: freed memory a second pass reused would hide the difference.
pub fn memory(decisions: u64, seal: bool) -> anyhow::Result<()> {
    let keys = hitl_audit::crypto::Keys::new(
        &hitl_audit::crypto::random_seed_hex()?,
        "bench",
        "bench-hash-key-0123456789",
    )?;
    let mut core = hitl_audit::trail::AuditCore::new(std::sync::Arc::new(keys));
    if seal {
        core = core.with_seal_after(0);
    }
    let at = hitl_runtime::now_millis();
    let later = at + 3_600_000;
    let mut effects = Vec::new();
    let base = hitl_runtime::metrics::resident_bytes();
    let started = Instant::now();
    for i in 0..decisions {
        for event in lifecycle(i, at) {
            core.event((i % 4) as i32, &event, &mut effects);
            effects.clear();
        }
        if i % 1000 == 999 {
            core.seal_idle(later);
        }
    }
    core.seal_idle(later);
    let grown = hitl_runtime::metrics::resident_bytes().saturating_sub(base);
    outln!(
        "audit state, {decisions} decisions, {}: {} bytes resident per decision ({} whole trails, {} sealed; {:.1}s)",
        if seal { "finished trails sealed" } else { "every trail whole" },
        grown / decisions.max(1),
        core.len(),
        core.sealed_len(),
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}
