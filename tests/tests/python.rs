//! A non-Rust client (Python: confluent-kafka + fastavro, from `schemas/*.avsc` alone) produces
//! decisions and decodes the router's outputs. `scripts/test.sh` installs the Python packages into
//! `.hitl/venv`; `HITL_PYTHON` picks another interpreter.

use std::{path::PathBuf, process::Command};

use hitl_tests::*;

#[test]
fn python_client_interop() {
    let python = python();
    let probe = Command::new(&python)
        .args(["-c", "import confluent_kafka, fastavro"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "{} lacks confluent-kafka/fastavro: run scripts/test.sh (it installs tests/python/requirements.txt \
         into .hitl/venv) or set HITL_PYTHON",
        python.display()
    );
    let topics = unique_topics("python");
    create_topics(&topics);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: interop\nrules:\n  - { name: confident, when: { confidence: { gte: 0.9 } }, then: auto_approve }\n\
         default: { review: { pool: general, sla: 1h } }\n",
    )
    .unwrap();
    let config = format!(
        "{}\n{}\n[service]\npolicy_path = \"{}\"\ninstance_id = \"{}\"\ngroup_id = \"{}\"\n",
        kafka_toml(),
        topics_toml(&topics),
        policy.display(),
        unique("py"),
        unique("py-group"),
    );
    let _router = Service::start("hitl-router", dir.path(), &config);
    let output = Command::new(&python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/interop.py"))
        .env("HITL_BOOTSTRAP", &broker().bootstrap)
        .env("HITL_AUTH_KEY_ID", "publisher-test")
        .env("HITL_AUTH_SECRET", &trust().secrets["publisher-test"])
        .env("HITL_TOPIC_DECISIONS", &topics.decisions)
        .env("HITL_TOPIC_OUTCOMES", &topics.outcomes)
        .env("HITL_TOPIC_REVIEW_REQUESTS", &topics.review_requests)
        .env("HITL_TOPIC_LIFECYCLE", &topics.lifecycle)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "python interop failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{}", String::from_utf8_lossy(&output.stdout));
}

/// An ML pipeline and a compliance reader in Python decode `hitl.feedback` and `hitl.audit` from
/// `schemas/*.avsc` alone, recompute every audit record's hash and check its signature with the
/// public key.
#[test]
fn python_reads_feedback_and_audit() {
    use std::{collections::BTreeMap, sync::Arc, time::Duration};

    use hitl_schema::*;

    let python = python();
    let topics = unique_topics("python-audit");
    create_topics(&topics);
    let dir = tempfile::tempdir().unwrap();
    let seed = "1f".repeat(32);
    let keys = hitl_audit::crypto::Keys::new(&seed, "py-1", "python-test-hash-key").unwrap();
    let name = unique("py-audit");
    let config = format!(
        "{}\n{}\n[service]\ninstance_id = \"{name}\"\ngroup_id = \"{name}\"\nsigning_key = \"{seed}\"\n\
         key_id = \"py-1\"\nhash_key = \"python-test-hash-key\"\ncheckpoint_interval = \"500ms\"\n",
        kafka_toml(),
        topics_toml(&topics),
    );
    let _audit = Service::start("hitl-audit", dir.path(), &config);

    // Two decisions: one decided by a reviewer, one auto-approved and labeled as a QA sample.
    let at = hitl_runtime::now_millis();
    let decision = |id: &str| Decision {
        decision_id: id.into(),
        workflow: "payments.card".into(),
        subject: format!("txn-{id}"),
        action: "approve".into(),
        confidence: 0.8,
        risk_score: Some(0.2),
        amount: Some(10.0),
        priority: None,
        producer: "model".into(),
        model_name: "gbm".into(),
        model_version: Some("2".into()),
        features: BTreeMap::from([("velocity".to_owned(), 1.5)]),
        context: BTreeMap::from([("customer".to_owned(), "Alice Example".to_owned())]),
        sensitive_fields: vec!["customer".into()],
        created_at: at,
        sla_ms: None,
    };
    let outcome = |id: &str, decided_by, reviewers: Vec<String>| Outcome {
        decision_id: id.into(),
        final_action: "approve".into(),
        status: OutcomeStatus::Approved,
        decided_by,
        reviewer_ids: reviewers,
        policy_rule: "r".into(),
        policy_version: "v".into(),
        decided_at: at + 5,
        time_to_decision_ms: 5,
        workflow: "payments.card".into(),
        rationale: None,
    };
    let mut events = Vec::new();
    for (id, auto) in [("py-human", false), ("py-qa", true)] {
        let mut routed = LifecycleEvent::new(
            format!("{id}:router:routed"),
            id,
            LifecycleKind::Routed,
            "router",
            at,
        );
        routed.decision = Some(Arc::new(decision(id)));
        routed.attributes.insert(
            "route".into(),
            if auto { "auto_approve" } else { "human" }.into(),
        );
        if auto {
            routed.outcome = Some(outcome(id, DecidedBy::Auto, vec![]));
        }
        let mut verdict = LifecycleEvent::new(
            format!("{id}:assignment:1"),
            id,
            LifecycleKind::Verdict,
            "assignment",
            at + 5,
        );
        verdict.sequence = 1;
        verdict.reviewer_id = Some(if auto { "cy" } else { "ann" }.into());
        verdict
            .attributes
            .insert("verdict".into(), "APPROVE".into());
        if auto {
            verdict.attributes.insert("qa_sample".into(), "true".into());
        }
        events.push(routed);
        events.push(verdict);
        if !auto {
            let mut done = LifecycleEvent::new(
                format!("{id}:assignment:2"),
                id,
                LifecycleKind::Outcome,
                "assignment",
                at + 5,
            );
            done.sequence = 2;
            done.outcome = Some(outcome(id, DecidedBy::Human, vec!["ann".into()]));
            events.push(done);
        }
    }
    let codec = Codec::single_object();
    let producer = producer();
    for event in &events {
        let payload = codec.encode_to_vec(&topics.lifecycle, event).unwrap();
        produce(
            &producer,
            &topics.lifecycle,
            &event.decision_id,
            &payload,
            &[],
        );
    }
    flush(&producer);
    read_at_least(&topics.feedback, 2, Duration::from_secs(60));

    let output = Command::new(&python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/ml_pipeline.py"))
        .env("HITL_BOOTSTRAP", &broker().bootstrap)
        .env("HITL_TOPIC_FEEDBACK", &topics.feedback)
        .env("HITL_TOPIC_AUDIT", &topics.audit)
        .env("HITL_EXPECT_FEEDBACK", "2")
        .env("HITL_PUBLIC_KEY", keys.public_hex())
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "python ML pipeline failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{}", String::from_utf8_lossy(&output.stdout));
}

/// A reviewer app in Python (`python/reviewer_app.py`, from `schemas/*.avsc` alone) publishes its
/// roster entry, reads its partition of the assignments and approves each item, sending every
/// verdict to the partition the assignment names, with Java's partitioner configured: each item
/// gets one human outcome by that reviewer.
#[test]
fn python_reviewer_app() {
    use std::time::Duration;

    use hitl_schema::*;

    const ITEMS: usize = 12;
    let python = python();
    let topics = unique_topics("python-reviewer");
    create_topics(&topics);
    let dir = tempfile::tempdir().unwrap();
    // Two instances, each owning half the pools' partitions: a verdict on the wrong partition
    // reaches the instance that does not hold its item.
    let group = unique("py-reviewer");
    let instances: Vec<Service> = ["a", "b"]
        .iter()
        .map(|instance| {
            Service::start(
                "hitl-assignment",
                dir.path(),
                &format!(
                    "{}\n{}\n[service]\ninstance_id = \"{group}-{instance}\"\ngroup_id = \"{group}\"\n\
                     tick_interval = \"100ms\"\n",
                    kafka_toml(),
                    topics_toml(&topics),
                ),
            )
        })
        .collect();
    wait_for(
        Duration::from_secs(60),
        "the partitions split between the two instances",
        || {
            instances
                .iter()
                .all(|service| {
                    let log = std::fs::read_to_string(&service.log).unwrap_or_default();
                    let plain = strip_ansi(&log);
                    // Half of the review-request and verdict partitions each.
                    plain
                        .lines()
                        .rev()
                        .find(|line| line.contains("partitions assigned"))
                        .is_some_and(|line| {
                            line.contains(&format!("partitions={}", topics.partitions))
                        })
                })
                .then_some(())
        },
    );
    let codec = Codec::single_object();
    let producer = producer();
    let now = hitl_runtime::now_millis();
    let pools = [
        "general",
        "fraud",
        "payments",
        "trust-safety",
        "kyc",
        "refunds",
    ];
    for i in 0..ITEMS {
        let request = hitl_schema::sample::review_request(
            format!("py-item-{i}"),
            i as u64,
            pools[i % pools.len()].to_owned(),
            now,
            now + 3_600_000,
        );
        let payload = codec
            .encode_to_vec(&topics.review_requests, &request)
            .unwrap();
        produce(
            &producer,
            &topics.review_requests,
            &request.pool,
            &payload,
            &[],
        );
    }
    flush(&producer);

    let output = Command::new(&python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/reviewer_app.py"))
        .env("HITL_BOOTSTRAP", &broker().bootstrap)
        .env("HITL_AUTH_KEY_ID", "gateway-test")
        .env("HITL_AUTH_SECRET", &trust().secrets["gateway-test"])
        .env("HITL_TOPIC_ASSIGNMENTS", &topics.assignments)
        .env("HITL_TOPIC_VERDICTS", &topics.verdicts)
        .env("HITL_TOPIC_REVIEWERS", &topics.reviewers)
        .env("HITL_EXPECT_ASSIGNMENTS", ITEMS.to_string())
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "python reviewer app failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let records = read_at_least(&topics.outcomes, ITEMS, Duration::from_secs(60));
    let outcomes: Vec<Outcome> = records
        .iter()
        .filter_map(|r| codec.decode::<Outcome>(r.payload.as_deref()?).ok())
        .collect();
    let decided: std::collections::BTreeSet<&str> = outcomes
        .iter()
        .map(|outcome| {
            assert_eq!(outcome.decided_by, DecidedBy::Human);
            assert_eq!(outcome.reviewer_ids, vec!["py-reviewer".to_owned()]);
            outcome.decision_id.as_str()
        })
        .collect();
    assert_eq!(decided.len(), ITEMS, "one outcome per item: {decided:?}");
}

/// `text` without terminal colour codes (the services colour their logs).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
