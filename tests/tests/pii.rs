//! PII (issue #11): after a run of the three services, no clear sensitive value is found on any
//! topic a reviewer without the PII role reads, nor in feedback, the audit trail, logs, metrics or
//! exported traces.
//!
//! The run: decisions whose `context` holds sensitive values (keys listed in `sensitive_fields`),
//! each a unique canary `PII-CANARY-<random>-…`, and one non-sensitive value, a positive control
//! `OPEN-CONTROL-<random>-…` that must show up wherever context is shown (so the scan is seen to
//! find what is there). Decisions go to people (one pool, a two-person pool whose PII role is
//! another one, QA samples of automatic decisions), one is invalid and dead-lettered after decoding,
//! one is JSON, and one is JSON the router cannot decode (a producer that sent its context as a
//! string). Reviewers with and without the pools' PII roles decide everything (one renews its lease
//! first, so a renewed assignment is scanned too). Spans are exported over OTLP/HTTP to a receiver
//! in this file that keeps every request body as sent.
//!
//! What a scan may find, and why (deploy/kafka/acls.txt):
//! - `hitl.decisions`: the input itself; written by publishers, read by the router and by the
//!   `hitl-reader` principal (a deployment keeps ML pipelines off it, says acls.txt). Not scanned.
//! - `hitl.review-requests` (router → assignment), `hitl.lifecycle` (services → audit; ROUTED carries
//!   the decision as received), `hitl.assignment.state` (the assignment service's changelog): read
//!   by one service principal each, by no reviewer, reader or publisher. Allowed, not scanned.
//! - `hitl.decisions.dlq`: the original bytes for operators (super user only). Allowed.
//! - `hitl.verdicts`, `hitl.reviewers`: written by the reviewer apps of this test, read by the
//!   assignment service only; nothing of a decision's context goes there. Not scanned.
//! - `hitl.assignments`: what reviewer apps read — all of it (the `hitl-reviewer-app` principal may
//!   read the whole topic: Kafka ACLs do not go below a topic, and reviewers share partitions).
//!   No sensitive value anywhere on it; the positive control in clear.
//! - `hitl.assignments.pii`: readable only by the PII-cleared reviewer-app principal: the clear
//!   copy of an ASSIGNED event, only for a reviewer holding one of its pool's `pii_roles`.
//! - `hitl.outcomes`, `hitl.feedback`, `hitl.audit`, `hitl.audit.checkpoints`: read by
//!   `hitl-reader` (actuators, ML pipelines, compliance): no sensitive value, no reviewer id in
//!   feedback (pseudonyms only); the trail keeps the keyed hash of each sensitive value and the
//!   positive control in clear.
//! - every service's log file, its `/metrics`, every exported span: no sensitive value.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use hitl_schema::*;
use hitl_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);
const SIGNING_KEY: &str = "4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d";

/// An OTLP/HTTP receiver that keeps every request body exactly as sent (the whole export: resource,
/// scopes, spans, attributes, events, status), and answers each with an empty success.
struct OtlpSink {
    port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl OtlpSink {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the OTLP sink");
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || Self::serve(stream, &kept));
            }
        });
        Self { port, bodies }
    }

    /// Serves one keep-alive connection: each request's body is kept.
    fn serve(stream: TcpStream, bodies: &Mutex<Vec<String>>) {
        let Ok(mut writer) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let (mut length, mut chunked) = (0usize, false);
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 {
                    return;
                }
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                    if name == "content-length" {
                        length = value.parse().unwrap_or(0);
                    } else if name == "transfer-encoding" && value.contains("chunked") {
                        chunked = true;
                    }
                }
            }
            let mut body = Vec::new();
            if chunked {
                loop {
                    let mut size = String::new();
                    if reader.read_line(&mut size).unwrap_or(0) == 0 {
                        return;
                    }
                    let size = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16)
                        .unwrap_or(0);
                    let mut chunk = vec![0; size + 2];
                    if reader.read_exact(&mut chunk).is_err() {
                        return;
                    }
                    if size == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..size]);
                }
            } else {
                body.resize(length, 0);
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
            }
            bodies
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let reply =
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
            if writer.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }

    /// (span name, `hitl.decision_id`) of every span exported so far.
    fn spans(&self) -> Vec<(String, String)> {
        let mut spans = Vec::new();
        for body in self.bodies() {
            let Ok(request) = serde_json::from_str::<Value>(&body) else {
                continue;
            };
            let each =
                |value: &Value, key: &str| value[key].as_array().cloned().unwrap_or_default();
            for resource in each(&request, "resourceSpans") {
                for scope in each(&resource, "scopeSpans") {
                    for span in each(&scope, "spans") {
                        let decision = each(&span, "attributes")
                            .iter()
                            .find(|a| a["key"] == "hitl.decision_id")
                            .and_then(|a| a["value"]["stringValue"].as_str().map(str::to_owned))
                            .unwrap_or_default();
                        let name = span["name"].as_str().unwrap_or_default().to_owned();
                        spans.push((name, decision));
                    }
                }
            }
        }
        spans
    }
}

/// A reviewer of the run: (id, roles, the `hitl.assignments` partition its app reads).
struct Reviewer {
    id: String,
    roles: Vec<String>,
    partition: i32,
}

/// What the run left behind, for the scans.
struct Evidence {
    /// The prefix of every sensitive value (`PII-CANARY-<random>`).
    canary: String,
    /// The prefix of every positive-control value (`OPEN-CONTROL-<random>`).
    control: String,
    /// decision id → its context as published.
    contexts: BTreeMap<String, BTreeMap<String, String>>,
    reviewers: Vec<Reviewer>,
    /// pool → the roles that see its sensitive values in clear.
    pii_roles: BTreeMap<String, Vec<String>>,
    assignments: Vec<Received>,
    assignments_pii: Vec<Received>,
    /// topic → its records, for the topics `hitl-reader` reads.
    reader_topics: BTreeMap<String, Vec<Received>>,
    audit: Vec<Received>,
    feedback: Vec<Received>,
    dead_letters: Vec<Received>,
    /// service → its log file's text.
    logs: BTreeMap<&'static str, String>,
    /// service → its `/metrics` text, read after the run.
    metrics: BTreeMap<&'static str, String>,
    /// Every OTLP export request body.
    traces: Vec<String>,
    spans: Vec<(String, String)>,
}

/// Every place `needle` occurs in a record (key, value, header values), named.
fn find_in_record(record: &Received, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let contains = |bytes: &[u8]| {
        bytes
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
    };
    if record.key.as_deref().is_some_and(|k| k.contains(needle)) {
        found.push("key".to_owned());
    }
    if record.payload.as_deref().is_some_and(contains) {
        found.push("value".to_owned());
    }
    for (name, value) in &record.headers {
        if value.contains(needle) {
            found.push(format!("header {name}"));
        }
    }
    found
}

fn where_in(records: &[Received], needle: &str) -> Vec<String> {
    records
        .iter()
        .flat_map(|record| {
            find_in_record(record, needle).into_iter().map(|place| {
                format!(
                    "partition {} offset {} ({place})",
                    record.partition, record.offset
                )
            })
        })
        .collect()
}

/// The lines of `text` that contain `needle`, shortened.
fn lines_with(text: &str, needle: &str) -> Vec<String> {
    text.lines()
        .filter(|line| line.contains(needle))
        .map(|line| line.chars().take(400).collect())
        .collect()
}

fn decision(id: &str, confidence: f64, amount: f64, canary: &str, control: &str) -> Decision {
    let context = BTreeMap::from([
        ("customer".to_owned(), format!("{canary}-{id}-customer")),
        ("iban".to_owned(), format!("{canary}-{id}-iban")),
        ("note".to_owned(), format!("{control}-{id}")),
        ("country".to_owned(), "DE".to_owned()),
    ]);
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
        context,
        sensitive_fields: vec!["customer".into(), "iban".into()],
        created_at: hitl_runtime::now_millis(),
        sla_ms: None,
    }
}

fn decode<T: Record>(records: &[Received]) -> Vec<T> {
    let codec = Codec::single_object();
    records
        .iter()
        .filter_map(|r| codec.decode::<T>(r.payload.as_deref()?).ok())
        .collect()
}

/// Runs the three services through the scenario above and gathers what the scans read.
fn pii_run(test: &str) -> Evidence {
    let started = Instant::now();
    let token: String = hitl_runtime::auth::random_secret().unwrap()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let canary = format!("PII-CANARY-{token}");
    let control = format!("OPEN-CONTROL-{token}");

    let sink = OtlpSink::start();
    let dir = tempfile::tempdir().unwrap();
    let topics = unique_topics(test);
    create_topics(&topics);
    let name = unique(test);
    let shared = format!(
        "{}\n{}\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:{}\"\ntrace_export_interval = \"200ms\"\n",
        kafka_toml(),
        topics_toml(&topics),
        sink.port
    );
    // Confident decisions are approved automatically, each also a QA sample for people; large
    // amounts need two people; the rest go to the general pool.
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: pii\nqa_seed: 3\nqa_review: { pool: qa, sla: 1h }\nrules:\n\
         - name: confident\n  when: { confidence: { gte: 0.9 } }\n  then: auto_approve\n  qa_sample_rate: 1.0\n\
         - { name: large, when: { amount: { gte: 10000 } }, then: { review: { pool: two-person, sla: 1h, quorum: 2 } } }\n\
         default: { review: { pool: general, sla: 1h } }\n",
    )
    .unwrap();
    // The two-person pool's sensitive values are for another role than the other pools'.
    let pii_roles: BTreeMap<String, Vec<String>> = [
        ("general", "pii"),
        ("qa", "pii"),
        ("two-person", "pii-payments"),
    ]
    .into_iter()
    .map(|(pool, role)| (pool.to_owned(), vec![role.to_owned()]))
    .collect();
    let router = Service::start(
        "hitl-router",
        dir.path(),
        &format!(
            "{shared}[service]\npolicy_path = \"{}\"\ninstance_id = \"{name}\"\ngroup_id = \"{name}-router\"\n",
            policy.display()
        ),
    );
    let assignment = Service::start(
        "hitl-assignment",
        dir.path(),
        &format!(
            "{shared}[service]\ninstance_id = \"{name}\"\ngroup_id = \"{name}-assignment\"\ntick_interval = \"100ms\"\n\
             [service.default_pool]\npii_roles = [\"pii\"]\n\
             [service.pools.two-person]\npii_roles = [\"pii-payments\"]\n"
        ),
    );
    let audit = Service::start(
        "hitl-audit",
        dir.path(),
        &format!(
            "{shared}[service]\ninstance_id = \"{name}\"\ngroup_id = \"{name}-audit\"\n\
             signing_key = \"{SIGNING_KEY}\"\nkey_id = \"pii-test\"\nhash_key = \"test-hash-key-0123456789\"\n\
             checkpoint_interval = \"500ms\"\ntick_interval = \"100ms\"\n"
        ),
    );

    // Reviewers, each reading a partition of its own: ann and carl hold no PII role anywhere; bob
    // sees the general and QA pools' sensitive values, dave the two-person pool's.
    let reviewers: Vec<Reviewer> = [
        ("ann", vec![], 0),
        ("bob", vec!["pii"], 1),
        ("carl", vec!["senior"], 2),
        ("dave", vec!["pii-payments"], 3),
    ]
    .into_iter()
    .map(|(who, roles, partition)| Reviewer {
        id: format!("{who}-{token}"),
        roles: roles.into_iter().map(str::to_owned).collect(),
        partition,
    })
    .collect();
    let codec = Codec::single_object();
    let producer = producer();
    for reviewer in &reviewers {
        let status = ReviewerStatus {
            reviewer_id: reviewer.id.clone(),
            roles: reviewer.roles.clone(),
            skills: vec![],
            pools: vec![],
            capacity: 20,
            partition: Some(reviewer.partition),
            presence: Presence::Online,
            updated_at: hitl_runtime::now_millis(),
        };
        let payload = codec.encode_to_vec(&topics.reviewers, &status).unwrap();
        produce(&producer, &topics.reviewers, &reviewer.id, &payload, &[]);
    }
    flush(&producer);
    // Everyone approves; ann renews her first lease before deciding it (a renewed ASSIGNED event
    // carries the context again).
    let stop = Arc::new(AtomicBool::new(false));
    let app = {
        let ann = reviewers[0].id.clone();
        let mut renewed = false;
        reviewer_app(&topics, stop.clone(), move |event, _| {
            let approve = verdict_on(event, VerdictKind::Approve);
            if event.reviewer_id == ann && !std::mem::replace(&mut renewed, true) {
                vec![verdict_on(event, VerdictKind::Renew), approve]
            } else {
                vec![approve]
            }
        })
    };

    let mut decisions = Vec::new();
    for i in 0..8 {
        decisions.push(decision(
            &format!("human-{i}"),
            0.5,
            50.0,
            &canary,
            &control,
        ));
    }
    for i in 0..4 {
        decisions.push(decision(
            &format!("quorum-{i}"),
            0.5,
            50_000.0,
            &canary,
            &control,
        ));
        decisions.push(decision(
            &format!("auto-{i}"),
            0.95,
            50.0,
            &canary,
            &control,
        ));
    }
    for decision in &decisions {
        let payload = codec.encode_to_vec(&topics.decisions, decision).unwrap();
        produce(
            &producer,
            &topics.decisions,
            &decision.decision_id,
            &payload,
            &[],
        );
    }
    // JSON: one good, one whose context is a string (a producer that serialised its map), which
    // the router cannot decode.
    let json = decision("json-0", 0.5, 50.0, &canary, &control);
    produce(
        &producer,
        &topics.decisions,
        "json-0",
        &serde_json::to_vec(&json).unwrap(),
        &[("content-type", "application/json")],
    );
    let mut undecodable =
        serde_json::to_value(decision("json-bad", 0.5, 50.0, &canary, &control)).unwrap();
    undecodable["context"] = Value::String(undecodable["context"].to_string());
    produce(
        &producer,
        &topics.decisions,
        "json-bad",
        &serde_json::to_vec(&undecodable).unwrap(),
        &[("content-type", "application/json")],
    );
    // Valid Avro, invalid content: dead-lettered after decoding, noted in the trail and in a span.
    let invalid = decision("invalid-0", 1.5, 50.0, &canary, &control);
    let payload = codec.encode_to_vec(&topics.decisions, &invalid).unwrap();
    produce(&producer, &topics.decisions, "invalid-0", &payload, &[]);
    flush(&producer);
    decisions.push(json);
    let decided: BTreeSet<String> = decisions.iter().map(|d| d.decision_id.clone()).collect();

    // Every decision decided; every human outcome and QA sample labeled (the audit has then
    // caught up with the last verdicts); a route span and an audit span for every decision.
    let outcomes = read_topic(&topics.outcomes, WAIT, |records| {
        decode::<Outcome>(records)
            .into_iter()
            .map(|o| o.decision_id)
            .collect::<BTreeSet<_>>()
            == decided
    });
    assert_eq!(
        decode::<Outcome>(&outcomes)
            .into_iter()
            .map(|o| o.decision_id)
            .collect::<BTreeSet<_>>(),
        decided,
        "every decision decided; assignment log:\n{}",
        assignment.log_tail()
    );
    let feedback = read_topic(&topics.feedback, WAIT, |records| {
        decode::<FeedbackRecord>(records)
            .into_iter()
            .map(|f| f.decision_id)
            .collect::<BTreeSet<_>>()
            == decided
    });
    assert_eq!(
        decode::<FeedbackRecord>(&feedback).len(),
        decided.len(),
        "one label per human decision and QA sample; audit log:\n{}",
        audit.log_tail()
    );
    wait_for(WAIT, "a route and an audit span for every decision", || {
        let spans = sink.spans();
        let has = |name: &str, id: &str| spans.iter().any(|(n, d)| n == name && d == id);
        (decided
            .iter()
            .chain(std::iter::once(&"invalid-0".to_owned()))
            .all(|id| has("hitl.router route", id) && has("hitl.audit record", id)))
        .then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    app.join().unwrap();
    // Let the last checkpoints and spans go out.
    std::thread::sleep(Duration::from_secs(1));

    let services = [
        ("router", router),
        ("assignment", assignment),
        ("audit", audit),
    ];
    let metrics: BTreeMap<&'static str, String> = services
        .iter()
        .map(|(name, service)| {
            let (status, body) = http_get(&service.http, "/metrics").expect("/metrics");
            assert_eq!(status, 200);
            (*name, body)
        })
        .collect();
    let log_paths: Vec<(&'static str, std::path::PathBuf)> = services
        .iter()
        .map(|(name, service)| (*name, service.log.clone()))
        .collect();
    // SIGTERM: each service ends its exporter (the last spans go out) and logs its shutdown.
    for (name, service) in services {
        assert_eq!(service.terminate(), Some(0), "{name} exits cleanly");
    }
    let logs = log_paths
        .into_iter()
        .map(|(name, path)| (name, std::fs::read_to_string(path).unwrap()))
        .collect();

    let quiet = Duration::from_secs(2);
    let reader_topics = [
        &topics.outcomes,
        &topics.feedback,
        &topics.audit,
        &topics.audit_checkpoints,
    ]
    .into_iter()
    .map(|topic| (topic.clone(), read_all(topic, quiet)))
    .collect::<BTreeMap<_, _>>();
    let evidence = Evidence {
        canary,
        control,
        contexts: decisions
            .iter()
            .chain(std::iter::once(&invalid))
            .map(|d| (d.decision_id.clone(), d.context.clone()))
            .collect(),
        reviewers,
        pii_roles,
        assignments: read_all(&topics.assignments, quiet),
        assignments_pii: read_all(&topics.assignments_pii, quiet),
        audit: reader_topics[&topics.audit].clone(),
        feedback: reader_topics[&topics.feedback].clone(),
        reader_topics,
        dead_letters: read_all(&topics.decisions_dlq, quiet),
        logs,
        metrics,
        traces: sink.bodies(),
        spans: sink.spans(),
    };
    eprintln!("PII run took {:?}", started.elapsed());
    evidence
}

impl Evidence {
    fn reviewer(&self, id: &str) -> &Reviewer {
        self.reviewers
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("an assignment for an unknown reviewer {id}"))
    }

    /// Whether `reviewer` holds one of `pool`'s PII roles.
    fn sees_pii(&self, reviewer: &Reviewer, pool: &str) -> bool {
        self.pii_roles[pool]
            .iter()
            .any(|role| reviewer.roles.contains(role))
    }
}

#[test]
fn no_clear_pii_for_reviewers_without_the_role_readers_logs_metrics_or_traces() {
    let started = Instant::now();
    let run = pii_run("pii");
    let canary = run.canary.as_str();
    let codec = Codec::single_object();

    // hitl.assignments, which every reviewer app may read (all of it: Kafka ACLs do not go below
    // a topic, and reviewers share partitions): every event masked, the positive control in clear.
    let mut pools_seen = BTreeSet::new();
    let mut renewed = false;
    let mut masked_ids = BTreeSet::new();
    for record in &run.assignments {
        let event: AssignmentEvent = codec
            .decode(record.payload.as_deref().expect("a value"))
            .expect("an AssignmentEvent");
        let reviewer = run.reviewer(&event.reviewer_id);
        assert_eq!(record.partition, reviewer.partition, "{event:?}");
        let found = find_in_record(record, canary);
        assert!(
            found.is_empty(),
            "hitl.assignments carries a sensitive value ({} {:?}, roles {:?}, pool {}) in {found:?}",
            event.reviewer_id,
            event.kind,
            reviewer.roles,
            event.pool
        );
        if event.kind != AssignmentKind::Assigned {
            continue;
        }
        renewed |= event.reason.as_deref() == Some("renewed");
        pools_seen.insert(event.pool.clone());
        masked_ids.insert(event.assignment_id.clone());
        let published = &run.contexts[&event.decision_id];
        assert_eq!(
            event.context["note"], published["note"],
            "the positive control is shown to every reviewer: {event:?}"
        );
        assert_eq!(event.context["country"], "DE");
        assert_eq!(event.context["customer"], "***", "{event:?}");
        assert_eq!(event.context["iban"], "***", "{event:?}");
    }
    assert_eq!(
        pools_seen,
        BTreeSet::from(["general".into(), "qa".into(), "two-person".into()]),
        "reviews, QA samples and two-person reviews were all assigned"
    );
    assert!(renewed, "a renewed assignment was scanned");
    assert!(
        !where_in(&run.assignments, &run.control).is_empty(),
        "the positive control is on hitl.assignments"
    );
    // hitl.assignments.pii, which only PII-cleared reviewer apps may read: the clear copy of an
    // ASSIGNED event, for a reviewer holding one of its pool's PII roles only (masking is by
    // role, not blanket: a holder of one pool's PII role gets none for another pool's items).
    let mut clear = 0;
    let mut holders_of_other_roles_left_out = false;
    for record in &run.assignments_pii {
        let event: AssignmentEvent = codec
            .decode(record.payload.as_deref().expect("a value"))
            .expect("an AssignmentEvent");
        let reviewer = run.reviewer(&event.reviewer_id);
        assert_eq!(record.partition, reviewer.partition, "{event:?}");
        assert_eq!(event.kind, AssignmentKind::Assigned);
        assert!(
            run.sees_pii(reviewer, &event.pool),
            "a clear copy for {} (roles {:?}) in pool {}",
            reviewer.id,
            reviewer.roles,
            event.pool
        );
        assert!(
            masked_ids.contains(&event.assignment_id),
            "its masked twin is on hitl.assignments"
        );
        let published = &run.contexts[&event.decision_id];
        assert_eq!(
            event.context["customer"], published["customer"],
            "{event:?}"
        );
        assert_eq!(event.context["iban"], published["iban"], "{event:?}");
        clear += 1;
    }
    assert!(clear > 0, "PII-cleared reviewers got their clear copies");
    for record in &run.assignments {
        let event: AssignmentEvent = codec
            .decode(record.payload.as_deref().expect("a value"))
            .expect("an AssignmentEvent");
        let reviewer = run.reviewer(&event.reviewer_id);
        let holds_some_pii_role = run
            .pii_roles
            .values()
            .flatten()
            .any(|role| reviewer.roles.contains(role));
        if event.kind == AssignmentKind::Assigned
            && holds_some_pii_role
            && !run.sees_pii(reviewer, &event.pool)
        {
            holders_of_other_roles_left_out = true;
        }
    }
    assert!(
        holders_of_other_roles_left_out,
        "a holder of one pool's PII role got another pool's item (masked, no clear copy)"
    );

    // The topics hitl-reader (actuators, ML pipelines, compliance) reads.
    for (topic, records) in &run.reader_topics {
        assert!(!records.is_empty(), "{topic} has records");
        let found = where_in(records, canary);
        assert!(
            found.is_empty(),
            "{topic} holds sensitive values at {found:?}"
        );
    }
    // The trail keeps the decision as received: the positive control in clear, each sensitive
    // value as its keyed hash (so the scan above read the context).
    let trail: Vec<AuditRecord> = decode(&run.audit);
    let mut audited = BTreeSet::new();
    for record in &trail {
        let Some(decision) = &record.decision else {
            continue;
        };
        audited.insert(decision.decision_id.clone());
        let published = &run.contexts[&decision.decision_id];
        assert_eq!(decision.context["note"], published["note"]);
        for key in ["customer", "iban"] {
            assert!(
                decision.context[key].starts_with("hmac-sha256:"),
                "{key} of {} kept as {}",
                decision.decision_id,
                decision.context[key]
            );
        }
    }
    assert!(
        !where_in(&run.audit, &run.control).is_empty(),
        "the positive control is on the audit topic"
    );
    assert_eq!(
        audited.len(),
        run.contexts.len() - 1,
        "every routed decision is in the trail (the invalid one has no decision)"
    );
    // Labeled examples carry reviewer pseudonyms, never reviewer ids (which outcomes do name:
    // the same search finds them there).
    let outcomes = run
        .reader_topics
        .iter()
        .find(|(topic, _)| topic.ends_with(".outcomes"))
        .map(|(_, records)| records)
        .unwrap();
    assert!(run
        .reviewers
        .iter()
        .any(|reviewer| !where_in(outcomes, &reviewer.id).is_empty()));
    for reviewer in &run.reviewers {
        let found = where_in(&run.feedback, &reviewer.id);
        assert!(
            found.is_empty(),
            "hitl.feedback names reviewer {} in clear at {found:?}",
            reviewer.id
        );
    }
    // Both broken decisions reached the operators' dead-letter topic, whose values are the
    // original bytes (allowed: operators only); its error headers (class, message), which
    // `hitl-admin dlq tail` prints, never copy a value.
    let dead: BTreeSet<&str> = run
        .dead_letters
        .iter()
        .filter_map(|r| r.key.as_deref())
        .collect();
    assert!(
        dead.contains("json-bad") && dead.contains("invalid-0"),
        "dead letters: {dead:?}"
    );
    for record in &run.dead_letters {
        let found: Vec<String> = find_in_record(record, canary)
            .into_iter()
            .filter(|place| place.starts_with("header"))
            .collect();
        assert!(
            found.is_empty(),
            "the dead letter {:?} copies a sensitive value into {found:?}: {:?}",
            record.key,
            record.headers
        );
    }

    // Logs, metrics, traces.
    for (service, log) in &run.logs {
        assert!(!log.is_empty(), "{service} logged");
        let found = lines_with(log, canary);
        assert!(
            found.is_empty(),
            "the {service} log holds sensitive values:\n{}",
            found.join("\n")
        );
    }
    for (service, metrics) in &run.metrics {
        assert!(metrics.contains("hitl_"), "{service} has metrics");
        let found = lines_with(metrics, canary);
        assert!(
            found.is_empty(),
            "{service}'s /metrics holds sensitive values:\n{}",
            found.join("\n")
        );
    }
    assert!(
        run.spans
            .iter()
            .any(|(name, id)| name == "hitl.router route" && id == "invalid-0"),
        "the dead-lettered decision's span was exported"
    );
    for (service, prefix) in [
        ("router", "hitl.router"),
        ("assignment", "hitl.assignment"),
        ("audit", "hitl.audit"),
    ] {
        assert!(
            run.spans.iter().any(|(name, _)| name.starts_with(prefix)),
            "the {service} exported spans"
        );
    }
    let found: Vec<String> = run
        .traces
        .iter()
        .flat_map(|body| {
            body.match_indices(canary)
                .map(|(at, _)| body[at.saturating_sub(200)..(at + 200).min(body.len())].to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        found.is_empty(),
        "exported spans hold sensitive values:\n{}",
        found.join("\n")
    );
    eprintln!("PII test took {:?}", started.elapsed());
}
