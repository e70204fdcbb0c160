//! The audit service, as a real process, against a real broker: a full run of the three services,
//! re-delivery, kill -9, and `hitl-audit verify` against tampering on the topics.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use hitl_schema::*;
use hitl_tests::*;

const SIGNING_KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const WAIT: Duration = Duration::from_secs(90);

struct Run {
    dir: tempfile::TempDir,
    topics: hitl_runtime::config::Topics,
    name: String,
}

impl Run {
    fn new(test: &str) -> Self {
        let topics = unique_topics(test);
        create_topics(&topics);
        Self {
            dir: tempfile::tempdir().unwrap(),
            topics,
            name: unique(test),
        }
    }

    fn shared(&self) -> String {
        format!("{}\n{}\n", kafka_toml(), topics_toml(&self.topics))
    }

    fn audit_config(&self) -> String {
        format!(
            "{}[service]\ninstance_id = \"{n}\"\ngroup_id = \"{n}-audit\"\nsigning_key = \"{SIGNING_KEY}\"\n\
             key_id = \"test-1\"\nhash_key = \"test-hash-key-0123456789\"\ncheckpoint_interval = \"500ms\"\n\
             checkpoint_every_records = 50\ntick_interval = \"100ms\"\n",
            self.shared(),
            n = self.name
        )
    }

    fn start_audit(&self) -> Service {
        Service::start("hitl-audit", self.dir.path(), &self.audit_config())
    }

    /// Runs `hitl-audit verify` with this run's topics; returns (clean, report).
    fn verify(&self, extra: &[&str]) -> (bool, String) {
        let path = self.dir.path().join(format!("{}.toml", unique("verify")));
        std::fs::write(
            &path,
            format!(
                "{}\n[http]\nlisten = \"127.0.0.1:0\"\n",
                self.audit_config()
            ),
        )
        .unwrap();
        let output = std::process::Command::new(binary("hitl-audit"))
            .arg("verify")
            .arg("--config")
            .arg(&path)
            .args(extra)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            matches!(output.status.code(), Some(0 | 1)),
            "verify failed to run: {text}"
        );
        (output.status.code() == Some(0), text)
    }

    /// Waits (naming `what`) until `verify` of the trail alone (no decisions or outcomes topic
    /// read) is clean.
    fn wait_verified(&self, what: &str) {
        wait_for(WAIT, what, || {
            let (clean, report) = self.verify(&["--no-decisions", "--no-outcomes"]);
            clean.then_some(()).or_else(|| {
                eprintln!("not yet: {report}");
                None
            })
        });
    }

    /// A verdict for `decision_id` that came after its outcome (rejected as already decided): the
    /// assignment service's next event after the four of `human_lifecycle`.
    fn publish_late_verdict(&self, decision_id: &str) {
        let mut late = LifecycleEvent::new(
            format!("{decision_id}:assignment:5"),
            decision_id,
            LifecycleKind::VerdictRejected,
            "assignment",
            hitl_runtime::now_millis(),
        );
        late.sequence = 5;
        late.reviewer_id = Some("mallory".into());
        late.reason = Some("already_decided".into());
        self.publish_lifecycle(&[late]);
    }

    fn publish_lifecycle(&self, events: &[LifecycleEvent]) {
        let codec = Codec::single_object();
        let producer = producer();
        for event in events {
            let payload = codec.encode_to_vec(&self.topics.lifecycle, event).unwrap();
            produce(
                &producer,
                &self.topics.lifecycle,
                &event.decision_id,
                &payload,
                &[],
            );
        }
        flush(&producer);
    }
}

fn decode<T: Record>(records: &[Received]) -> Vec<T> {
    let codec = Codec::single_object();
    records
        .iter()
        .filter_map(|r| r.payload.as_deref())
        .filter_map(|payload| codec.decode::<T>(payload).ok())
        .collect()
}

fn decision(id: &str, confidence: f64, amount: f64) -> Decision {
    Decision {
        decision_id: id.into(),
        workflow: "payments.card".into(),
        subject: format!("txn-{id}"),
        action: "approve".into(),
        confidence,
        risk_score: Some(0.5),
        amount: Some(amount),
        priority: None,
        producer: "fraud-model".into(),
        model_name: "fraud".into(),
        model_version: Some("3".into()),
        features: BTreeMap::from([("velocity".to_owned(), 2.0)]),
        context: BTreeMap::from([("customer".to_owned(), "Alice Example".to_owned())]),
        sensitive_fields: vec!["customer".into()],
        created_at: hitl_runtime::now_millis(),
        sla_ms: None,
    }
}

/// Synthetic lifecycle of a decision routed to people and approved by `reviewer`.
fn human_lifecycle(id: &str, reviewer: &str, at: i64) -> Vec<LifecycleEvent> {
    hitl_schema::sample::human_lifecycle(decision(id, 0.6, 100.0), reviewer, "default", at, 10)
}

fn feedback_per_decision(topic: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for record in decode::<FeedbackRecord>(&read_all(topic, Duration::from_secs(2))) {
        *counts.entry(record.decision_id).or_default() += 1;
    }
    counts
}

#[test]
fn a_full_run_yields_a_complete_verified_trail_one_label_per_human_decision_and_redelivery_changes_nothing(
) {
    let run = Run::new("audit-full");
    // Router: confident → auto; large → two-person pool; "urgent" workflow → a pool whose SLA
    // falls back; the rest → people.
    let policy = run.dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: audit-full\nrules:\n\
         - { name: confident, when: { confidence: { gte: 0.9 } }, then: auto_approve }\n\
         - { name: large, when: { amount: { gte: 10000 } }, then: { review: { pool: two-person, sla: 1h, quorum: 2 } } }\n\
         - { name: urgent, when: { workflow: [urgent] }, then: { review: { pool: fallback, sla: 3s } } }\n\
         default: { review: { pool: general, sla: 1h } }\n",
    )
    .unwrap();
    let _router = Service::start(
        "hitl-router",
        run.dir.path(),
        &format!(
            "{}[service]\npolicy_path = \"{}\"\ninstance_id = \"{n}\"\ngroup_id = \"{n}-router\"\n",
            run.shared(),
            policy.display(),
            n = run.name
        ),
    );
    let _assignment = Service::start(
        "hitl-assignment",
        run.dir.path(),
        &format!(
            "{}[service]\ninstance_id = \"{n}\"\ngroup_id = \"{n}-assignment\"\ntick_interval = \"100ms\"\n\
             [service.pools.fallback]\nescalate_at_sla = []\nmin_sla = \"0s\"\n\
             on_sla_breach = {{ action = \"fallback\", status = \"REJECTED\", final_action = \"hold\" }}\n",
            run.shared(),
            n = run.name
        ),
    );
    let audit = run.start_audit();

    // Reviewers: ann and bob answer everything except the fallback pool.
    let codec = Codec::single_object();
    let producer = producer();
    for (name, partition) in [("ann", 0), ("bob", 1)] {
        let status = ReviewerStatus {
            reviewer_id: name.into(),
            roles: vec![],
            skills: vec![],
            pools: vec!["general".into(), "two-person".into()],
            capacity: 10,
            partition: Some(partition),
            presence: Presence::Online,
            updated_at: hitl_runtime::now_millis(),
        };
        let payload = codec.encode_to_vec(&run.topics.reviewers, &status).unwrap();
        produce(&producer, &run.topics.reviewers, name, &payload, &[]);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reviewers = {
        let mut first = true;
        reviewer_app(&run.topics, stop.clone(), move |event, _| {
            // One bad verdict first: someone else's lease.
            approve_after_one_foreign(&mut first, event)
        })
    };

    let mut decisions = Vec::new();
    for i in 0..10 {
        decisions.push(decision(&format!("auto-{i}"), 0.95, 10.0));
        decisions.push(decision(&format!("human-{i}"), 0.5, 10.0));
    }
    for i in 0..4 {
        decisions.push(decision(&format!("quorum-{i}"), 0.5, 50_000.0));
        let mut urgent = decision(&format!("urgent-{i}"), 0.5, 10.0);
        urgent.workflow = "urgent".into();
        decisions.push(urgent);
    }
    for decision in &decisions {
        let payload = codec
            .encode_to_vec(&run.topics.decisions, decision)
            .unwrap();
        produce(
            &producer,
            &run.topics.decisions,
            &decision.decision_id,
            &payload,
            &[],
        );
    }
    flush(&producer);

    // Every decision ends with an outcome; then the audit catches up and checkpoints.
    let outcomes: Vec<Outcome> = decode(&read_topic(&run.topics.outcomes, WAIT, |records| {
        decode::<Outcome>(records)
            .iter()
            .map(|o| o.decision_id.clone())
            .collect::<BTreeSet<_>>()
            .len()
            >= decisions.len()
    }));
    let by: BTreeMap<&str, DecidedBy> = outcomes
        .iter()
        .map(|o| (o.decision_id.as_str(), o.decided_by))
        .collect();
    assert_eq!(by.len(), decisions.len(), "outcomes: {by:?}");
    assert!(by
        .iter()
        .filter(|(id, _)| id.starts_with("urgent"))
        .all(|(_, d)| *d == DecidedBy::SlaFallback));
    assert!(by
        .iter()
        .filter(|(id, _)| id.starts_with("quorum"))
        .all(|(_, d)| *d == DecidedBy::Quorum));
    stop.store(true, Ordering::Relaxed);
    reviewers.join().unwrap();
    wait_for(WAIT, "the audit trail to be complete", || {
        let (clean, report) = run.verify(&[]);
        clean.then_some(()).or_else(|| {
            eprintln!("not yet: {report}");
            None
        })
    });
    // One label per human-decided outcome (human and quorum), none for auto or fallback.
    let labels = feedback_per_decision(&run.topics.feedback);
    let expected: BTreeSet<String> = by
        .iter()
        .filter(|(_, d)| matches!(d, DecidedBy::Human | DecidedBy::Quorum))
        .map(|(id, _)| (*id).to_owned())
        .collect();
    assert_eq!(labels.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(labels.values().all(|n| *n == 1), "{labels:?}");
    let feedback: Vec<FeedbackRecord> =
        decode(&read_all(&run.topics.feedback, Duration::from_secs(1)));
    let quorum = feedback
        .iter()
        .find(|f| f.decision_id == "quorum-0")
        .unwrap();
    assert_eq!(quorum.label_source, LabelSource::Quorum);
    assert_eq!(quorum.reviewer_pseudonyms.len(), 2);
    assert!(quorum
        .reviewer_pseudonyms
        .iter()
        .all(|p| p.starts_with("rv-") && !p.contains("ann")));
    // The trail holds the rejected verdict, and no PII in clear.
    let audit_records = read_all(&run.topics.audit, Duration::from_secs(1));
    let records: Vec<AuditRecord> = decode(&audit_records);
    assert!(records
        .iter()
        .any(|r| r.timeline.iter().any(|e| e.kind == "VERDICT_REJECTED")));
    assert!(!audit_records.iter().any(|r| r
        .payload
        .as_deref()
        .is_some_and(|p| p.windows(5).any(|w| w == b"Alice"))));

    // Re-deliver every lifecycle event: nothing changes.
    let lifecycle = read_all(&run.topics.lifecycle, Duration::from_secs(1));
    let producer = hitl_tests::producer();
    for record in &lifecycle {
        produce(
            &producer,
            &run.topics.lifecycle,
            record.key.as_deref().unwrap(),
            record.payload.as_deref().unwrap(),
            &[],
        );
    }
    flush(&producer);
    wait_for(WAIT, "the re-deliveries to be read", || {
        (audit.metric("hitl_audit_duplicate_events_total")? >= lifecycle.len() as f64).then_some(())
    });
    assert_eq!(
        read_all(&run.topics.audit, Duration::from_secs(1)).len(),
        audit_records.len()
    );
    assert_eq!(feedback_per_decision(&run.topics.feedback), labels);
    let (clean, report) = run.verify(&[]);
    assert!(clean, "{report}");
}

#[test]
fn kill_9_and_restart_keep_one_label_per_decision_and_a_complete_trail() {
    const DECISIONS: usize = 300;
    let run = Run::new("audit-kill");
    let first = run.start_audit();
    let at = hitl_runtime::now_millis();
    let events: Vec<LifecycleEvent> = (0..DECISIONS)
        .flat_map(|i| {
            human_lifecycle(
                &format!("k-{i:03}"),
                ["ann", "bob", "cy"][i % 3],
                at + i as i64,
            )
        })
        .collect();
    let (head, tail) = events.split_at(events.len() / 2);
    run.publish_lifecycle(head);
    wait_for(WAIT, "a third of the labels", || {
        (feedback_per_decision(&run.topics.feedback).len() >= DECISIONS / 3).then_some(())
    });
    first.kill9();
    run.publish_lifecycle(tail);
    // Restarted at once (static membership gives it the partitions back without a rebalance).
    let second = run.start_audit();
    let deadline = std::time::Instant::now() + WAIT;
    let labels = loop {
        let labels = feedback_per_decision(&run.topics.feedback);
        if labels.len() >= DECISIONS {
            break labels;
        }
        if std::time::Instant::now() > deadline {
            let missing: Vec<String> = (0..DECISIONS)
                .map(|i| format!("k-{i:03}"))
                .filter(|id| !labels.contains_key(id))
                .collect();
            panic!(
                "{} of {DECISIONS} labeled; missing {missing:?}\nsecond instance:\n{}",
                labels.len(),
                second.log_tail()
            );
        }
    };
    assert_eq!(labels.len(), DECISIONS);
    // With transactions a label commits with its input offset: at most one per decision. With
    // idempotent delivery a kill between sending labels and committing the input offsets (audit
    // records go after the labels) makes the restarted service label those decisions again: at
    // least once, deduped by decision_id downstream. A repeated label must be the same, byte for byte.
    let mut by_decision: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for record in read_all(&run.topics.feedback, Duration::from_secs(2)) {
        by_decision
            .entry(record.key.clone().unwrap_or_default())
            .or_default()
            .push(record.payload.unwrap_or_default());
    }
    let repeated: Vec<&String> = by_decision
        .iter()
        .filter(|(_, labels)| labels.len() > 1)
        .map(|(id, labels)| {
            assert!(
                labels.windows(2).all(|w| w[0] == w[1]),
                "{id} labeled differently after the restart"
            );
            id
        })
        .collect();
    eprintln!(
        "{} decisions labeled again after the kill: {repeated:?}",
        repeated.len()
    );
    if transactional() {
        assert!(
            repeated.is_empty(),
            "a second label after kill -9 in transactional mode: {repeated:?}"
        );
    }
    run.wait_verified("a complete, verified trail");
    let records: Vec<AuditRecord> = decode(&read_all(&run.topics.audit, Duration::from_secs(1)));
    let latest: BTreeMap<&str, &AuditRecord> = records
        .iter()
        .map(|r| (r.decision_id.as_str(), r))
        .collect();
    assert_eq!(latest.len(), DECISIONS);
    assert!(latest
        .values()
        .all(|r| r.timeline.len() == 5 && r.outcome.is_some()));
    assert!(second.metric("hitl_audit_restore_seconds").is_some());
}

#[test]
fn finished_trails_leave_memory_and_come_back_for_a_late_event() {
    const DECISIONS: usize = 20;
    let run = Run::new("audit-seal");
    let config = format!("{}seal_after = \"1s\"\n", run.audit_config());
    let first = Service::start("hitl-audit", run.dir.path(), &config);
    let at = hitl_runtime::now_millis();
    let events: Vec<LifecycleEvent> = (0..DECISIONS)
        .flat_map(|i| human_lifecycle(&format!("s-{i:02}"), "ann", at + i as i64))
        .collect();
    run.publish_lifecycle(&events);
    let sealed = |service: &Service| {
        (service.metric("hitl_audit_sealed_trails") == Some(DECISIONS as f64)).then_some(())
    };
    wait_for(WAIT, "every decided trail sealed", || sealed(&first));

    // Every event again (nothing may change), then a verdict that came too late for one of them.
    run.publish_lifecycle(&events);
    run.publish_late_verdict("s-03");
    wait_for(WAIT, "the late verdict in s-03's trail", || {
        let records: Vec<AuditRecord> =
            decode(&read_all(&run.topics.audit, Duration::from_millis(500)));
        records
            .iter()
            .any(|r| r.decision_id == "s-03" && r.version == 6)
            .then_some(())
    });
    let records: Vec<AuditRecord> = decode(&read_all(&run.topics.audit, Duration::from_secs(1)));
    let mut versions: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for record in &records {
        versions
            .entry(record.decision_id.as_str())
            .or_default()
            .push(record.version);
    }
    for (id, written) in &versions {
        let expected: Vec<i64> = (1..=if *id == "s-03" { 6 } else { 5 }).collect();
        assert_eq!(
            written, &expected,
            "{id}: the re-delivery wrote nothing new"
        );
    }
    let s03: Vec<&AuditRecord> = records.iter().filter(|r| r.decision_id == "s-03").collect();
    assert_eq!(
        s03[5].prev_hash.as_deref(),
        Some(s03[4].content_hash.as_str()),
        "the reloaded trail continues its hash chain"
    );
    assert_eq!(s03[5].timeline.len(), 6);
    assert_eq!(
        first.metric("hitl_audit_trail_reloads_total{result=\"reloaded\"}"),
        Some(1.0)
    );
    let log = std::fs::read_to_string(&first.log).unwrap();
    let reloaded = log
        .lines()
        .find(|line| line.contains("sealed trail reloaded"))
        .expect("the reload is logged");
    eprintln!("{reloaded}");
    run.wait_verified("a complete, verified trail");

    // A restarted instance restores every trail and seals the finished ones at once.
    assert_eq!(first.terminate(), Some(0));
    let second = Service::start("hitl-audit", run.dir.path(), &config);
    wait_for(WAIT, "the restored trails sealed", || sealed(&second));
}

#[test]
fn verify_detects_tampering_on_the_topics() {
    let run = Run::new("audit-tamper");
    let _audit = run.start_audit();
    let at = hitl_runtime::now_millis();
    let ids = ["flip", "tomb", "replay", "forge", "fine"];
    let events: Vec<LifecycleEvent> = ids
        .iter()
        .flat_map(|id| human_lifecycle(id, "ann", at))
        .collect();
    run.publish_lifecycle(&events);
    wait_for(WAIT, "a clean, checkpointed trail", || {
        let (clean, report) = run.verify(&["--no-decisions", "--no-outcomes"]);
        (clean && report.contains("of 5 decisions")).then_some(())
    });
    let audit = read_all(&run.topics.audit, Duration::from_secs(1));
    let latest = |id: &str| {
        audit
            .iter()
            .rev()
            .find(|r| r.key.as_deref() == Some(id))
            .unwrap()
            .clone()
    };
    let first = |id: &str| {
        audit
            .iter()
            .find(|r| r.key.as_deref() == Some(id))
            .unwrap()
            .clone()
    };
    let producer = producer();
    // Flip one byte of the latest record (as a rewrite would leave it).
    let mut flipped = latest("flip").payload.unwrap();
    let position = flipped.windows(8).position(|w| w == b"txn-flip").unwrap() + 4;
    flipped[position] ^= 0x20;
    produce(&producer, &run.topics.audit, "flip", &flipped, &[]);
    // Delete the latest record of a decision.
    let mut record = BaseRecord::<str, [u8]>::to(&run.topics.audit).key("tomb");
    while let Err((_, back)) = producer.send(record) {
        producer.poll(Duration::from_millis(10));
        record = back;
    }
    // Replay an old version.
    produce(
        &producer,
        &run.topics.audit,
        "replay",
        &first("replay").payload.unwrap(),
        &[],
    );
    // Forge a newer version, signed with another key under the same key id.
    let codec = Codec::single_object();
    let mut forged: AuditRecord = codec.decode(&latest("forge").payload.unwrap()).unwrap();
    forged.outcome.as_mut().unwrap().status = OutcomeStatus::Rejected;
    forged.prev_hash = Some(forged.content_hash.clone());
    forged.version += 1;
    hitl_audit::crypto::Keys::new(
        &hitl_audit::crypto::random_seed_hex().unwrap(),
        "test-1",
        "whatever-key-123",
    )
    .unwrap()
    .seal_record(&mut forged);
    produce(
        &producer,
        &run.topics.audit,
        "forge",
        &codec.encode_to_vec("", &forged).unwrap(),
        &[],
    );
    flush(&producer);
    let (clean, report) = run.verify(&["--no-decisions", "--no-outcomes", "--allow-uncovered"]);
    assert!(!clean, "{report}");
    for expected in [
        "decision flip: ",
        "altered",
        "decision tomb: deleted: tombstone",
        "decision replay: ",
        "old version replayed",
        "decision forge: ",
        "signature invalid",
    ] {
        assert!(report.contains(expected), "{expected:?} not in:\n{report}");
    }
    assert!(!report.contains("decision fine:"), "{report}");

    // Drop a checkpoint: copy the checkpoint topic without its first record, verify against it.
    let checkpoints = read_all(&run.topics.audit_checkpoints, Duration::from_secs(1));
    assert!(!checkpoints.is_empty());
    let copy = format!("{}.copy", run.topics.audit_checkpoints);
    let mut topics = run.topics.clone();
    topics.audit_checkpoints = copy.clone();
    create_topics(&topics);
    for record in checkpoints.iter().skip(1) {
        let mut out = BaseRecord::<str, [u8]>::to(&copy)
            .key(record.key.as_deref().unwrap_or_default())
            .payload(record.payload.as_deref().unwrap())
            .partition(record.partition);
        while let Err((_, back)) = producer.send(out) {
            producer.poll(Duration::from_millis(10));
            out = back;
        }
    }
    flush(&producer);
    let (clean, report) = run.verify(&[
        "--no-decisions",
        "--no-outcomes",
        "--checkpoints-topic",
        &copy,
    ]);
    assert!(!clean);
    assert!(
        report.contains("are missing") || report.contains("not covered by any checkpoint"),
        "{report}"
    );
}

use rdkafka::producer::BaseRecord;

#[test]
fn compaction_keeps_the_latest_version_and_verify_and_restore_stay_right() {
    const DECISIONS: usize = 20;
    let run = Run::new("audit-compact");
    compact_quickly(&run.topics.audit);
    let first = run.start_audit();
    let at = hitl_runtime::now_millis();
    let events: Vec<LifecycleEvent> = (0..DECISIONS)
        .flat_map(|i| human_lifecycle(&format!("c-{i:02}"), "ann", at + i as i64))
        .collect();
    run.publish_lifecycle(&events);
    wait_for(WAIT, "five versions of every trail", || {
        (read_all(&run.topics.audit, Duration::from_millis(500)).len() >= DECISIONS * 5)
            .then_some(())
    });
    // Later trails roll the segments that hold the first ones, so the broker's cleaner can
    // compact them (it never cleans a partition's active segment).
    let mut filler = 0;
    let records = wait_for_compaction(
        &run.topics.audit,
        Duration::from_secs(120),
        || {
            let at = hitl_runtime::now_millis();
            let events: Vec<LifecycleEvent> = (0..8)
                .flat_map(|i| human_lifecycle(&format!("f-{filler}-{i}"), "bob", at))
                .collect();
            filler += 1;
            run.publish_lifecycle(&events);
        },
        |records| {
            let first_batch: Vec<&Received> = records
                .iter()
                .filter(|r| r.key.as_deref().is_some_and(|k| k.starts_with("c-")))
                .collect();
            first_batch.len() == DECISIONS
        },
    );
    let compacted: Vec<AuditRecord> = decode(&records);
    let kept: BTreeMap<&str, i64> = compacted
        .iter()
        .filter(|r| r.decision_id.starts_with("c-"))
        .map(|r| (r.decision_id.as_str(), r.version))
        .collect();
    assert_eq!(kept.len(), DECISIONS);
    assert!(
        kept.values().all(|version| *version == 5),
        "only each trail's latest version is left: {kept:?}"
    );
    run.wait_verified("a clean verify of the compacted trail");

    // A restarted instance restores from the compacted topic and continues each hash chain.
    first.kill9();
    let second = run.start_audit();
    run.publish_late_verdict("c-07");
    let records = read_topic(&run.topics.audit, WAIT, |records| {
        decode::<AuditRecord>(records)
            .iter()
            .any(|r| r.decision_id == "c-07" && r.version == 6)
    });
    let c07: Vec<AuditRecord> = decode::<AuditRecord>(&records)
        .into_iter()
        .filter(|r| r.decision_id == "c-07")
        .collect();
    let [fifth, sixth] = &c07[..] else {
        panic!(
            "c-07: versions {:?}; log:\n{}",
            c07.iter().map(|r| r.version).collect::<Vec<_>>(),
            second.log_tail()
        );
    };
    assert_eq!((fifth.version, sixth.version), (5, 6));
    assert_eq!(
        sixth.prev_hash.as_deref(),
        Some(fifth.content_hash.as_str())
    );
    assert_eq!(sixth.timeline.len(), 6);
    run.wait_verified("a clean verify after the restore");
}
