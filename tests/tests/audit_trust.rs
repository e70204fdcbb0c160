//! The audit service against a hostile or broken writer of `hitl.lifecycle`, on a real broker:
//! only events signed by a trusted service key are ingested; a refused event is dead-lettered,
//! counted and noted in its decision's trail, never applied (no outcome, no label); a flood of
//! rejected verdicts and a megabyte event do not stop the partition; `verify` finds a forged
//! decision, missing events and a truncated tail; keys rotate; development keys need `--dev`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use hitl_runtime::auth::{Kind, HEADER};
use hitl_schema::*;
use hitl_tests::*;
use rdkafka::producer::{BaseProducer, BaseRecord};

const WAIT: Duration = Duration::from_secs(120);
const SEED_A: &str = "6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b";
const SEED_B: &str = "7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c";
const HASH_KEY: &str = "trust-test-hash-key-0123456789";

struct Run {
    dir: tempfile::TempDir,
    topics: hitl_runtime::config::Topics,
    name: String,
    head_file: PathBuf,
}

impl Run {
    fn new(test: &str, partitions: i32) -> Self {
        let mut topics = unique_topics(test);
        topics.partitions = partitions;
        create_topics(&topics);
        let dir = tempfile::tempdir().unwrap();
        let head_file = dir.path().join("audit-head");
        Self {
            dir,
            topics,
            name: unique(test),
            head_file,
        }
    }

    fn config(&self, key_id: &str, seed: &str, topics: &hitl_runtime::config::Topics) -> String {
        format!(
            "{}\n{}\n[service]\ninstance_id = \"{n}\"\ngroup_id = \"{n}-audit\"\nsigning_key = \"{seed}\"\n\
             key_id = \"{key_id}\"\nhash_key = \"{HASH_KEY}\"\ncheckpoint_interval = \"300ms\"\n\
             checkpoint_every_records = 50\ntick_interval = \"100ms\"\nhead_file = \"{}\"\n",
            kafka_toml(),
            topics_toml(topics),
            self.head_file.display(),
            n = self.name
        )
    }

    fn start_audit(&self) -> Service {
        Service::start(
            "hitl-audit",
            self.dir.path(),
            &self.config("trust-a", SEED_A, &self.topics),
        )
    }

    /// Runs `hitl-audit verify` with `extra` arguments; returns (clean, report).
    fn verify(&self, extra: &[&str]) -> (bool, String) {
        let path = self.dir.path().join(format!("{}.toml", unique("verify")));
        std::fs::write(
            &path,
            format!(
                "{}\n[http]\nlisten = \"127.0.0.1:0\"\n",
                self.config("trust-a", SEED_A, &self.topics)
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

    /// Publishes events, each signed by the key of the service it names (the harness's `produce`).
    fn publish(&self, events: &[LifecycleEvent]) {
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

    fn payload(&self, event: &LifecycleEvent) -> Vec<u8> {
        Codec::single_object()
            .encode_to_vec(&self.topics.lifecycle, event)
            .unwrap()
    }

    /// The latest audit record of every decision.
    fn latest(&self) -> BTreeMap<String, AuditRecord> {
        decode::<AuditRecord>(&read_all(&self.topics.audit, Duration::from_millis(700)))
            .into_iter()
            .map(|r| (r.decision_id.clone(), r))
            .collect()
    }

    fn wait_version(&self, decision_id: &str, version: i64) -> AuditRecord {
        wait_for(WAIT, &format!("version {version} of {decision_id}"), || {
            self.latest()
                .remove(decision_id)
                .filter(|r| r.version >= version)
        })
    }

    fn dead_letter_classes(&self) -> BTreeMap<String, usize> {
        let mut classes = BTreeMap::new();
        for record in read_all(&self.topics.decisions_dlq, Duration::from_millis(700)) {
            *classes
                .entry(record.headers["hitl.error.class"].clone())
                .or_default() += 1;
        }
        classes
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

fn decision(id: &str) -> Decision {
    Decision {
        decision_id: id.into(),
        workflow: "payments.card".into(),
        subject: format!("txn-{id}"),
        action: "approve".into(),
        confidence: 0.6,
        risk_score: Some(0.5),
        amount: Some(100.0),
        priority: None,
        producer: "fraud-model".into(),
        model_name: "fraud".into(),
        model_version: Some("3".into()),
        features: BTreeMap::from([("velocity".to_owned(), 2.0)]),
        context: BTreeMap::from([("customer".to_owned(), "Alice Example".to_owned())]),
        sensitive_fields: vec!["customer".into()],
        created_at: 1_800_000_000_000,
        sla_ms: None,
    }
}

/// ROUTED, QUEUED, ASSIGNED, VERDICT (approve) and OUTCOME of `decision`, `at` on.
fn lifecycle_of(decision: Decision, at: i64) -> Vec<LifecycleEvent> {
    hitl_schema::sample::human_lifecycle(decision, "ann", "default", at, 10)
}

fn lifecycle(id: &str, at: i64) -> Vec<LifecycleEvent> {
    lifecycle_of(decision(id), at)
}

fn rejected_verdict(id: &str, sequence: i64, at: i64) -> LifecycleEvent {
    let mut event = LifecycleEvent::new(
        format!("{id}:assignment:{sequence}"),
        id,
        LifecycleKind::VerdictRejected,
        "assignment",
        at,
    );
    event.sequence = sequence;
    event.reviewer_id = Some("mallory".into());
    event.reason = Some("not_holder".into());
    event.attributes.insert("verdict".into(), "APPROVE".into());
    event
}

fn feedback_for(run: &Run, decision_id: &str) -> usize {
    decode::<FeedbackRecord>(&read_all(&run.topics.feedback, Duration::from_millis(700)))
        .iter()
        .filter(|f| f.decision_id == decision_id)
        .count()
}

fn rejected(audit: &Service, reason: &str) -> f64 {
    audit
        .metric(&format!(
            "hitl_audit_events_rejected_total{{reason=\"{reason}\"}}"
        ))
        .unwrap_or(0.0)
}

#[test]
fn unsigned_forged_and_not_allowed_events_are_refused_noted_and_never_applied() {
    let run = Run::new("audit-auth", 4);
    let audit = run.start_audit();
    let at = hitl_runtime::now_millis();
    let events = lifecycle("d-ok", at);
    run.publish(&events[..4]);
    run.wait_version("d-ok", 4);

    // An injected OUTCOME for d-ok, five ways, and an injected ROUTED for a new decision.
    let outcome = &events[4];
    let payload = run.payload(outcome);
    let producer = producer();
    let key = "d-ok";
    let zeros = "00".repeat(32);
    // (1) Not signed at all.
    produce_unsigned(&producer, &run.topics.lifecycle, key, &payload, &[]);
    // (2) A signature made up under the assignment service's key id.
    let made_up = format!("hmac-sha256:assignment-test:{zeros}");
    produce(
        &producer,
        &run.topics.lifecycle,
        key,
        &payload,
        &[(HEADER, &made_up)],
    );
    // (3) The assignment service's real signature of the real outcome, on an altered outcome.
    let real = trust()
        .assignment
        .sign(Kind::Lifecycle, Some(key.as_bytes()), Some(&payload));
    let mut altered = outcome.clone();
    altered.outcome.as_mut().unwrap().status = OutcomeStatus::Rejected;
    altered.outcome.as_mut().unwrap().final_action = "block".into();
    produce(
        &producer,
        &run.topics.lifecycle,
        key,
        &run.payload(&altered),
        &[(HEADER, &real)],
    );
    // (4) Signed by a trusted key that may not speak for the assignment service (the router's).
    let router = trust()
        .router
        .sign(Kind::Lifecycle, Some(key.as_bytes()), Some(&payload));
    produce(
        &producer,
        &run.topics.lifecycle,
        key,
        &payload,
        &[(HEADER, &router)],
    );
    // (5) A key nobody trusts.
    let unknown = format!("hmac-sha256:mallory-service:{zeros}");
    produce(
        &producer,
        &run.topics.lifecycle,
        key,
        &payload,
        &[(HEADER, &unknown)],
    );
    // (6) A new decision out of nowhere, with an automatic outcome.
    let mut injected = hitl_schema::sample::routed(decision("d-new"), "auto_approve", "r", at);
    injected.outcome = Some(Outcome {
        decided_by: DecidedBy::Auto,
        ..outcome.outcome.clone().unwrap()
    });
    injected.outcome.as_mut().unwrap().decision_id = "d-new".into();
    produce_unsigned(
        &producer,
        &run.topics.lifecycle,
        "d-new",
        &run.payload(&injected),
        &[],
    );
    // (7) A correctly signed event under the VERDICT's id, saying REJECT: a conflict.
    let mut conflicting = events[3].clone();
    conflicting
        .attributes
        .insert("verdict".into(), "REJECT".into());
    flush(&producer);
    run.publish(&[conflicting]);

    wait_for(WAIT, "every refusal counted", || {
        (rejected(&audit, "unauthenticated") >= 2.0
            && rejected(&audit, "bad_signature") >= 2.0
            && rejected(&audit, "not_allowed") >= 1.0
            && rejected(&audit, "unknown_key") >= 1.0
            && rejected(&audit, "conflicting_event") >= 1.0)
            .then_some(())
    });
    let classes = run.dead_letter_classes();
    for (class, count) in [
        ("auth.unauthenticated", 2),
        ("auth.bad_signature", 2),
        ("auth.not_allowed", 1),
        ("auth.unknown_key", 1),
        ("audit.conflicting_event", 1),
    ] {
        assert_eq!(classes.get(class), Some(&count), "{class}: {classes:?}");
    }
    // Noted in d-ok's trail as the audit's own entries; nothing applied.
    let record = run.wait_version("d-ok", 10);
    assert_eq!(record.version, 10, "four events, six notes");
    assert!(record.outcome.is_none(), "an injected outcome was applied");
    let notes: Vec<&TimelineEntry> = record
        .timeline
        .iter()
        .filter(|e| e.kind == "INPUT_REFUSED")
        .collect();
    assert_eq!(notes.len(), 6);
    assert!(notes
        .iter()
        .all(|n| n.service == "audit" && n.reviewer_id.is_none()));
    let reasons: BTreeSet<&str> = notes.iter().filter_map(|n| n.reason.as_deref()).collect();
    assert_eq!(
        reasons,
        BTreeSet::from([
            "auth.unauthenticated",
            "auth.bad_signature",
            "auth.not_allowed",
            "auth.unknown_key",
            "audit.conflicting_event"
        ])
    );
    assert_eq!(
        record
            .timeline
            .iter()
            .filter(|e| e.service != "audit")
            .count(),
        4
    );
    let verdict = record
        .timeline
        .iter()
        .find(|e| e.kind == "VERDICT")
        .unwrap();
    assert_eq!(
        verdict.attributes["verdict"], "APPROVE",
        "the first is kept"
    );
    assert!(!run.latest().contains_key("d-new"), "no trail from nowhere");
    assert_eq!(
        feedback_for(&run, "d-ok"),
        0,
        "no label from an injected outcome"
    );
    assert_eq!(feedback_for(&run, "d-new"), 0);

    // The real outcome goes in, labeled once, and the trail verifies.
    run.publish(&events[4..]);
    let record = run.wait_version("d-ok", 11);
    assert_eq!(
        record.outcome.as_ref().map(|o| o.status),
        Some(OutcomeStatus::Approved)
    );
    wait_for(WAIT, "one label", || {
        (feedback_for(&run, "d-ok") == 1).then_some(())
    });
    wait_for(WAIT, "a clean verify", || {
        let (clean, report) = run.verify(&["--no-decisions", "--no-outcomes"]);
        clean.then_some(()).or_else(|| {
            eprintln!("not yet: {report}");
            None
        })
    });
}

#[test]
fn a_flood_of_rejected_verdicts_and_a_megabyte_event_do_not_stop_the_partition() {
    const FLOOD: i64 = 3000;
    const AFTER: usize = 20;
    // One partition: the flood, the megabyte and the decisions after them share it.
    let run = Run::new("audit-flood", 1);
    let audit = run.start_audit();
    let at = hitl_runtime::now_millis();
    let flood = lifecycle("flood", at);
    run.publish(&flood[..3]);
    run.wait_version("flood", 3);

    let started = Instant::now();
    let mut events: Vec<LifecycleEvent> = (3..3 + FLOOD)
        .map(|sequence| rejected_verdict("flood", sequence, at + sequence))
        .collect();
    run.publish(&events);
    // A rejected verdict whose rationale is a megabyte (the broker takes it; no audit record can).
    let mut huge = rejected_verdict("flood", 3 + FLOOD, at + 3 + FLOOD);
    huge.attributes
        .insert("rationale".into(), "x".repeat(1_000_000));
    let payload = run.payload(&huge);
    let big: BaseProducer = client_config()
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    produce(&big, &run.topics.lifecycle, "flood", &payload, &[]);
    flush(&big);
    // The deciding verdict and the outcome of the flooded decision, then twenty more decisions.
    events.clear();
    for (offset, event) in flood[3..].iter().enumerate() {
        let mut event = event.clone();
        event.sequence = 4 + FLOOD + offset as i64;
        event.event_id = format!("flood:assignment:{}", event.sequence);
        events.push(event);
    }
    for i in 0..AFTER {
        events.extend(lifecycle(&format!("after-{i:02}"), at + i as i64));
    }
    run.publish(&events);
    let latest = wait_for(WAIT, "every decision after the flood audited", || {
        let latest = run.latest();
        let done = (0..AFTER).all(|i| {
            latest
                .get(&format!("after-{i:02}"))
                .is_some_and(|r| r.version == 5 && r.outcome.is_some())
        });
        (done && latest.get("flood").is_some_and(|r| r.outcome.is_some())).then_some(latest)
    });
    let took = started.elapsed();
    let timeline_full = rejected(&audit, "timeline_full");
    let oversize = rejected(&audit, "oversize");
    eprintln!(
        "{FLOOD} rejected verdicts and a 1 MB event on one partition: the {AFTER} decisions after \
         them audited {:.2}s after the flood began; {timeline_full} refused for want of room, \
         {oversize} oversize",
        took.as_secs_f64()
    );
    assert!(timeline_full >= (FLOOD as f64) * 0.9, "{timeline_full}");
    assert_eq!(oversize, 1.0);
    let classes = run.dead_letter_classes();
    assert_eq!(classes.get("oversize.event"), Some(&1), "{classes:?}");
    assert_eq!(
        classes.get("audit.timeline_full").copied(),
        Some(timeline_full as usize)
    );
    let flooded = &latest["flood"];
    let summary = flooded
        .timeline
        .iter()
        .find(|e| e.kind == "INPUT_REFUSED_SUMMARY")
        .expect("the refusals are summarised in the trail");
    assert_eq!(
        summary.attributes["refused.timeline_full"],
        (timeline_full as u64).to_string()
    );
    assert!(flooded.timeline.iter().any(|e| e.kind == "INPUT_REFUSED"
        && e.reason.as_deref() == Some("oversize.event")
        && e.attributes["claimed_sequence"] == (3 + FLOOD).to_string()));
    let limit = hitl_runtime::config::KafkaSettings::default().output_limit();
    let largest = read_all(&run.topics.audit, Duration::from_millis(500))
        .iter()
        .map(|r| r.payload.as_ref().map_or(0, Vec::len))
        .max()
        .unwrap();
    eprintln!("largest audit record: {largest} bytes (limit {limit})");
    assert!(largest < limit);
    assert_eq!(feedback_for(&run, "flood"), 1);
    wait_for(
        WAIT,
        "a clean verify (the refused sequences are accounted for)",
        || {
            let (clean, report) = run.verify(&["--no-decisions", "--no-outcomes"]);
            clean.then_some(()).or_else(|| {
                eprintln!("not yet: {report}");
                None
            })
        },
    );
}

#[test]
fn verify_finds_a_forged_decision_and_missing_events() {
    let run = Run::new("audit-forged", 4);
    let _audit = run.start_audit();
    let at = hitl_runtime::now_millis();
    // What the publisher sent.
    let producer = producer();
    let codec = Codec::single_object();
    for id in ["honest", "forged", "gappy"] {
        let payload = codec
            .encode_to_vec(&run.topics.decisions, &decision(id))
            .unwrap();
        produce(&producer, &run.topics.decisions, id, &payload, &[]);
    }
    flush(&producer);
    // What the trail was told: a ROUTED event carrying another amount, and a trail without its
    // ASSIGNED event.
    let mut lying = decision("forged");
    lying.amount = Some(9.0);
    let mut events = lifecycle("honest", at);
    events.extend(lifecycle_of(lying, at));
    let mut gappy = lifecycle("gappy", at);
    gappy.remove(2);
    events.extend(gappy);
    run.publish(&events);
    let report = wait_for(WAIT, "verify to name both", || {
        let (_, report) = run.verify(&["--no-outcomes", "--allow-uncovered"]);
        (report.contains("decision forged:") && report.contains("decision gappy:"))
            .then_some(report)
    });
    eprintln!("{report}");
    assert!(
        report.contains("decision forged: forged decision") && report.contains("in amount"),
        "{report}"
    );
    assert!(
        report.contains("decision gappy: missing events: assignment events 2 are not in the trail"),
        "{report}"
    );
    assert!(!report.contains("decision honest:"), "{report}");
}

/// Copies `records` into a new topic named `name` (same partitions), as an attacker who deleted
/// the rest would leave it.
fn copy_topic(name: &str, partitions: i32, records: &[Received]) {
    let mut topics = unique_topics("unused");
    topics.partitions = partitions;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(hitl_runtime::kafka::ensure_topics(
            &kafka_settings(),
            &[hitl_runtime::config::TopicSpec {
                name: name.to_owned(),
                partitions,
                configs: vec![],
            }],
            1,
        ))
        .unwrap();
    let producer = producer();
    for record in records {
        let mut out = BaseRecord::<str, [u8]>::to(name)
            .key(record.key.as_deref().unwrap_or_default())
            .payload(record.payload.as_deref().unwrap())
            .partition(record.partition);
        while let Err((_, back)) = producer.send(out) {
            producer.poll(Duration::from_millis(10));
            out = back;
        }
    }
    flush(&producer);
}

#[test]
fn a_truncated_tail_is_found_against_the_head_kept_outside_kafka() {
    let run = Run::new("audit-tail", 2);
    let audit = run.start_audit();
    let at = hitl_runtime::now_millis();
    let first: Vec<LifecycleEvent> = (0..6)
        .flat_map(|i| lifecycle(&format!("early-{i}"), at + i))
        .collect();
    run.publish(&first);
    let head_of = |run: &Run| hitl_audit::head::read(&run.head_file).unwrap();
    wait_for(
        WAIT,
        "the first decisions checkpointed, the head written",
        || {
            let (clean, _) = run.verify(&["--no-decisions", "--no-outcomes"]);
            let covered: i64 = head_of(&run).values().map(|h| h.to_offset + 1).sum();
            (clean && covered == 30).then_some(())
        },
    );
    // What an attacker will leave: the topics as they are now.
    let early_records = read_all(&run.topics.audit, Duration::from_millis(700));
    let early_checkpoints = read_all(&run.topics.audit_checkpoints, Duration::from_millis(700));
    let early_head = head_of(&run);
    let later: Vec<LifecycleEvent> = (0..6)
        .flat_map(|i| lifecycle(&format!("later-{i}"), at + 100 + i))
        .collect();
    run.publish(&later);
    let head = wait_for(WAIT, "the later decisions checkpointed", || {
        let head = head_of(&run);
        let covered: i64 = head.values().map(|h| h.to_offset + 1).sum();
        (covered == 60).then_some(head)
    });
    assert!(head
        .values()
        .any(|h| h.sequence > early_head.get(&h.partition).map_or(-1, |e| e.sequence)));
    // The head is on the metrics endpoint too.
    let (_, metrics) = http_get(&audit.http, "/metrics").unwrap();
    for h in head.values() {
        assert!(
            metrics.contains(&format!(
                "hitl_audit_checkpoint_head{{partition=\"{}\",hash=\"{}\"}} {}",
                h.partition, h.hash, h.sequence
            )),
            "{metrics}"
        );
    }
    let head_path = run.head_file.display().to_string();
    let (clean, report) = run.verify(&[
        "--no-decisions",
        "--no-outcomes",
        "--expect-head",
        &head_path,
    ]);
    assert!(clean, "{report}");

    // The newest records and checkpoints deleted together: what is left verifies on its own…
    let audit_copy = format!("{}.truncated", run.topics.audit);
    let checkpoints_copy = format!("{}.truncated", run.topics.audit_checkpoints);
    copy_topic(&audit_copy, 2, &early_records);
    copy_topic(&checkpoints_copy, 2, &early_checkpoints);
    let truncated = [
        "--no-decisions",
        "--no-outcomes",
        "--audit-topic",
        &audit_copy,
        "--checkpoints-topic",
        &checkpoints_copy,
    ];
    let (clean, report) = run.verify(&truncated);
    assert!(
        clean,
        "the truncation is invisible without the head: {report}"
    );
    // …but not against the head kept outside Kafka, given as the file or as the newest hash.
    let newest = head.values().max_by_key(|h| h.created_at).unwrap();
    for expected in [head_path.as_str(), newest.hash.as_str()] {
        let mut args = truncated.to_vec();
        args.extend(["--expect-head", expected]);
        let (clean, report) = run.verify(&args);
        assert!(!clean, "{report}");
        assert!(
            report.contains("truncated") || report.contains("ends before it"),
            "{report}"
        );
        eprintln!("{report}");
    }

    // And the service will not continue a chain that ends before its head.
    assert_eq!(audit.terminate(), Some(0));
    let mut topics = run.topics.clone();
    topics.audit = audit_copy;
    topics.audit_checkpoints = checkpoints_copy;
    let restarted = Service::spawn(
        "hitl-audit",
        run.dir.path(),
        &run.config("trust-a", SEED_A, &topics),
    );
    let line = wait_for(WAIT, "the restart refused", || {
        let log = std::fs::read_to_string(&restarted.log).unwrap_or_default();
        log.lines()
            .find(|l| l.contains("the head file") && l.contains("were deleted or replaced"))
            .map(str::to_owned)
    });
    eprintln!("{line}");
    assert_ne!(restarted.terminate(), Some(0));
}

#[test]
fn a_rotated_signing_key_verifies_with_the_key_set_and_the_report_says_which_key_signed_what() {
    let run = Run::new("audit-rotate", 2);
    let first = run.start_audit();
    let at = hitl_runtime::now_millis();
    let events: Vec<Vec<LifecycleEvent>> = (0..4)
        .map(|i| lifecycle(&format!("rot-{i}"), at + i))
        .collect();
    run.publish(
        &events
            .iter()
            .flat_map(|e| e[..4].to_vec())
            .collect::<Vec<_>>(),
    );
    wait_for(WAIT, "the first key's 16 records checkpointed", || {
        let (clean, report) = run.verify(&["--no-decisions", "--no-outcomes"]);
        (clean && report.contains("16 audit records of 4 decisions")).then_some(())
    });
    assert_eq!(first.terminate(), Some(0));
    // The same instance, a new key.
    let _second = Service::start(
        "hitl-audit",
        run.dir.path(),
        &run.config("trust-b", SEED_B, &run.topics),
    );
    run.publish(&events.iter().map(|e| e[4].clone()).collect::<Vec<_>>());
    let public = |seed: &str| {
        hitl_audit::crypto::Keys::new(seed, "x", HASH_KEY)
            .unwrap()
            .public_hex()
    };
    let (a, b) = (public(SEED_A), public(SEED_B));
    let both = [
        "--no-decisions".to_owned(),
        "--no-outcomes".to_owned(),
        "--public-key".to_owned(),
        format!("trust-a={a}"),
        "--public-key".to_owned(),
        format!("trust-b={b}"),
    ];
    let both: Vec<&str> = both.iter().map(String::as_str).collect();
    let report = wait_for(WAIT, "the second key's records checkpointed", || {
        let (clean, report) = run.verify(&both);
        (clean && report.contains("`trust-b`: 4 records")).then_some(report)
    });
    eprintln!("{report}");
    assert!(
        report.contains("signed by key `trust-a`: 16 records"),
        "{report}"
    );
    // The new key alone: the old records are signed with a key it does not know.
    let only_b = format!("trust-b={b}");
    let (clean, report) = run.verify(&["--no-decisions", "--no-outcomes", "--public-key", &only_b]);
    assert!(!clean);
    assert!(
        report.contains("signed with unknown key `trust-a`"),
        "{report}"
    );
    // A keys file holding both.
    let file = run.dir.path().join("audit-keys.toml");
    std::fs::write(
        &file,
        format!(
            "# retired 2026\n[[keys]]\nkey_id = \"trust-a\"\nalgorithm = \"ed25519\"\npublic_key = \"{a}\"\n\n\
             [[keys]]\nkey_id = \"trust-b\"\npublic_key = \"{b}\"\n"
        ),
    )
    .unwrap();
    let file = file.display().to_string();
    let (clean, report) = run.verify(&["--no-decisions", "--no-outcomes", "--keys-file", &file]);
    assert!(clean, "{report}");
}

#[test]
fn the_development_keys_are_refused_without_dev() {
    let output = std::process::Command::new(binary("hitl-audit"))
        .args(["--config", "config/audit.toml"])
        .current_dir(repository())
        .env_remove("HITL_TRUST__DEV")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for field in [
        "service.signing_key: is a development key",
        "service.hash_key: is a development key",
        "trust.keys_file: key `",
    ] {
        assert!(stderr.contains(field), "{field:?} not in:\n{stderr}");
    }
}
