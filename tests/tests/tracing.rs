//! One trace per decision across the three services, exported over OTLP/HTTP to a receiver built
//! on OpenTelemetry's own protocol definitions (`tests/python/otlp_receiver.py`, which refuses
//! anything that does not parse as an `ExportTraceServiceRequest`).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use hitl_runtime::trace::TraceContext;
use hitl_schema::*;
use hitl_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);
/// The producer's own trace: the router must continue it.
const PRODUCER_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Receiver {
    fn start(dir: &Path) -> Self {
        let python = python();
        let probe = Command::new(&python)
            .args(["-c", "import opentelemetry.proto, google.protobuf"])
            .output();
        assert!(
            probe.as_ref().is_ok_and(|o| o.status.success()),
            "{} lacks opentelemetry-proto: run scripts/test.sh (it installs \
             tests/python/requirements.txt into .hitl/venv) or set HITL_PYTHON",
            python.display()
        );
        let out = dir.join("spans.jsonl");
        let mut child = Command::new(&python)
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/otlp_receiver.py"))
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the OTLP receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("receiver said {line:?}"));
        Self { child, port, out }
    }

    /// Every span line received so far; panics on a request the receiver refused.
    fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .inspect(|span| {
                if let Some(error) = span.get("error") {
                    panic!("the OTLP receiver refused an export: {error}")
                }
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn decision(id: &str, confidence: f64) -> Decision {
    Decision {
        decision_id: id.into(),
        workflow: "payments.card".into(),
        subject: format!("txn-{id}"),
        action: "approve".into(),
        confidence,
        risk_score: Some(0.5),
        amount: Some(10.0),
        priority: None,
        producer: "fraud-model".into(),
        model_name: "fraud".into(),
        model_version: None,
        features: BTreeMap::new(),
        context: BTreeMap::new(),
        sensitive_fields: vec![],
        created_at: hitl_runtime::now_millis(),
        sla_ms: None,
    }
}

fn str_of<'a>(span: &'a Value, field: &str) -> &'a str {
    span[field].as_str().unwrap_or_default()
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"].get(key)
}

#[test]
fn one_trace_per_decision_across_the_services_exported_over_otlp() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path());
    let topics = unique_topics("tracing");
    create_topics(&topics);
    let name = unique("tracing");
    let telemetry = format!(
        "[telemetry]\notlp_endpoint = \"http://127.0.0.1:{}\"\ntrace_export_interval = \"200ms\"\n",
        receiver.port
    );
    let shared = format!("{}\n{}\n{telemetry}", kafka_toml(), topics_toml(&topics));
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: traced\nrules:\n\
         - { name: confident, when: { confidence: { gte: 0.9 } }, then: auto_approve }\n\
         default: { review: { pool: general, sla: 1h } }\n",
    )
    .unwrap();
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
            "{shared}[service]\ninstance_id = \"{name}\"\ngroup_id = \"{name}-assignment\"\ntick_interval = \"100ms\"\n"
        ),
    );
    let audit = Service::start(
        "hitl-audit",
        dir.path(),
        &format!(
            "{shared}[service]\ninstance_id = \"{name}\"\ngroup_id = \"{name}-audit\"\n\
             signing_key = \"{}\"\nkey_id = \"t\"\nhash_key = \"test-hash-key-0123456789\"\n",
            "7".repeat(64)
        ),
    );

    // One reviewer who approves what it is given.
    let codec = Codec::single_object();
    let producer = producer();
    let status = ReviewerStatus {
        reviewer_id: "ann".into(),
        roles: vec![],
        skills: vec![],
        pools: vec![],
        capacity: 10,
        partition: None,
        presence: Presence::Online,
        updated_at: hitl_runtime::now_millis(),
    };
    let payload = codec.encode_to_vec(&topics.reviewers, &status).unwrap();
    produce(&producer, &topics.reviewers, "ann", &payload, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let assignment_headers = Arc::new(Mutex::new(Vec::new()));
    let reviewer = {
        let assignment_headers = assignment_headers.clone();
        let mut first = true;
        reviewer_app(&topics, stop.clone(), move |event, headers| {
            assignment_headers
                .lock()
                .unwrap()
                .push((event.decision_id.clone(), headers.clone()));
            // Someone else's lease first: rejected, an error span in that decision's trace.
            approve_after_one_foreign(&mut first, event)
        })
    };

    // Three auto-approved, three for people (one carrying the producer's own trace), and one
    // invalid decision (a dead letter, whose span is an error).
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push((format!("auto-{i}"), 0.95));
        ids.push((format!("human-{i}"), 0.5));
    }
    for (id, confidence) in &ids {
        let payload = codec
            .encode_to_vec(&topics.decisions, &decision(id, *confidence))
            .unwrap();
        let headers: &[(&str, &str)] = if id == "human-0" {
            &[("traceparent", PRODUCER_TRACE)]
        } else {
            &[]
        };
        produce(&producer, &topics.decisions, id, &payload, headers);
    }
    let payload = codec
        .encode_to_vec(&topics.decisions, &decision("broken-0", 1.5))
        .unwrap();
    produce(&producer, &topics.decisions, "broken-0", &payload, &[]);
    flush(&producer);

    // Wait for every span: a route span per decision (the dead letter's too), a review span per
    // human decision, and audit spans for each decision's outcome.
    let spans = wait_for(WAIT, "every decision's spans", || {
        let spans = receiver.spans();
        let named = |name: &str, id: &str| {
            spans.iter().any(|span| {
                str_of(span, "name") == name
                    && attribute(span, "hitl.decision_id").and_then(Value::as_str) == Some(id)
            })
        };
        let audited_outcomes = |id: &str| {
            spans.iter().any(|span| {
                str_of(span, "name") == "hitl.audit record"
                    && attribute(span, "hitl.decision_id").and_then(Value::as_str) == Some(id)
                    && attribute(span, "hitl.event.kind").and_then(Value::as_str)
                        == Some(if id.starts_with("auto") {
                            "Routed"
                        } else {
                            "Outcome"
                        })
            })
        };
        let complete = ids.iter().all(|(id, _)| {
            named("hitl.router route", id)
                && (id.starts_with("auto") || named("hitl.assignment review", id))
                && audited_outcomes(id)
        }) && named("hitl.router route", "broken-0")
            && spans.iter().any(|span| {
                str_of(span, "name") == "hitl.assignment verdict" && span["status_code"] == 2
            });
        complete.then_some(spans)
    });
    stop.store(true, Ordering::Relaxed);
    reviewer.join().unwrap();
    let assignment_headers = assignment_headers.lock().unwrap().clone();

    let by_id: BTreeMap<&str, &Value> = spans
        .iter()
        .map(|span| (str_of(span, "span_id"), span))
        .collect();
    for (id, _) in &ids {
        let of_decision: Vec<&Value> = spans
            .iter()
            .filter(|span| {
                attribute(span, "hitl.decision_id").and_then(Value::as_str) == Some(id.as_str())
            })
            .collect();
        let traces: BTreeSet<&str> = of_decision
            .iter()
            .map(|span| str_of(span, "trace_id"))
            .collect();
        assert_eq!(traces.len(), 1, "{id}: one trace, got {traces:?}");
        let route = of_decision
            .iter()
            .find(|span| str_of(span, "name") == "hitl.router route")
            .unwrap();
        assert_eq!(str_of(route, "service"), "hitl-router");
        assert_eq!(route["kind"], 5, "{id}: a consumer span");
        assert_eq!(
            attribute(route, "hitl.route").and_then(Value::as_str),
            Some(if id.starts_with("auto") {
                "auto_approve"
            } else {
                "human"
            })
        );
        if id == "human-0" {
            let producer = TraceContext::parse(PRODUCER_TRACE.as_bytes()).unwrap();
            assert_eq!(str_of(route, "trace_id"), producer.trace_id_hex());
            assert_eq!(
                str_of(route, "parent_span_id"),
                hitl_runtime::trace::span_id_hex(producer.span_id),
                "the producer's span is the router's parent"
            );
        } else {
            assert_eq!(str_of(route, "parent_span_id"), "", "{id}: a new trace");
        }
        // Every other span of the decision hangs under the router's, directly or through the
        // assignment's review span.
        for span in &of_decision {
            if str_of(span, "name") == "hitl.router route" {
                continue;
            }
            let mut parent = str_of(span, "parent_span_id");
            let mut hops = 0;
            while parent != str_of(route, "span_id") {
                let next = by_id
                    .get(parent)
                    .unwrap_or_else(|| panic!("{id}: span {span} has no exported parent"));
                parent = str_of(next, "parent_span_id");
                hops += 1;
                assert!(hops < 4, "{id}: no path to the route span from {span}");
            }
        }
        if id.starts_with("human") {
            let review = of_decision
                .iter()
                .find(|span| str_of(span, "name") == "hitl.assignment review")
                .unwrap();
            assert_eq!(str_of(review, "service"), "hitl-assignment");
            assert_eq!(str_of(review, "parent_span_id"), str_of(route, "span_id"));
            assert_eq!(
                attribute(review, "hitl.result").and_then(Value::as_str),
                Some("decided")
            );
            let (start, end) = (
                review["start"].as_u64().unwrap(),
                review["end"].as_u64().unwrap(),
            );
            assert!(start > 0 && end >= start, "{review}");
            // The verdict that decided it hangs under the review span.
            assert!(
                of_decision.iter().any(|span| {
                    str_of(span, "name") == "hitl.assignment verdict"
                        && span["status_code"] == 0
                        && str_of(span, "parent_span_id") == str_of(review, "span_id")
                }),
                "{id}: no accepted verdict span under the review span"
            );
            // The assignment record the reviewer app got names the review span.
            let headers = &assignment_headers
                .iter()
                .find(|(decision, _)| decision == id)
                .unwrap()
                .1;
            let carried = TraceContext::parse(headers["traceparent"].as_bytes()).unwrap();
            assert_eq!(
                hitl_runtime::trace::span_id_hex(carried.span_id),
                str_of(review, "span_id")
            );
        }
    }
    let rejected: Vec<&Value> = spans
        .iter()
        .filter(|span| {
            str_of(span, "name") == "hitl.assignment verdict" && span["status_code"] == 2
        })
        .collect();
    assert_eq!(rejected.len(), 1, "one rejected verdict: {rejected:?}");
    assert!(str_of(rejected[0], "status_message").starts_with("verdict rejected: "));
    let broken = spans
        .iter()
        .find(|span| {
            attribute(span, "hitl.decision_id").and_then(Value::as_str) == Some("broken-0")
        })
        .unwrap();
    assert_eq!(broken["status_code"], 2, "a dead letter is an error span");
    assert!(str_of(broken, "status_message").contains("validation"));

    // A reviewer app that propagates context: a late verdict on a decided item, sent with a
    // traceparent of its own span (a child of the assignment record's), is a span under it.
    let (decision, headers) = assignment_headers
        .iter()
        .find(|(decision, _)| decision == "human-1")
        .unwrap();
    let carried = TraceContext::parse(headers["traceparent"].as_bytes()).unwrap();
    let app_span = TraceContext::child(Some(&carried), b"reviewer-app", 1.0);
    let lease = AssignmentEvent {
        assignment_id: format!("{decision}#1"),
        decision_id: decision.clone(),
        reviewer_id: "ann".into(),
        kind: AssignmentKind::Assigned,
        pool: "general".into(),
        priority: 0.0,
        sla_deadline: 0,
        lease_expires_at: 0,
        action: "approve".into(),
        confidence: 0.5,
        context: BTreeMap::new(),
        attempt: 1,
        reason: None,
        workflow: String::new(),
        subject: String::new(),
        qa_sample: false,
        verdict_partition: None,
    };
    let late = verdict_on(&lease, VerdictKind::Reject);
    let payload = codec.encode_to_vec(&topics.verdicts, &late).unwrap();
    produce(
        &producer,
        &topics.verdicts,
        &late.pool,
        &payload,
        &[("traceparent", &app_span.header())],
    );
    flush(&producer);
    let late_span = wait_for(WAIT, "the late verdict's span", || {
        receiver.spans().into_iter().find(|span| {
            str_of(span, "name") == "hitl.assignment verdict"
                && str_of(span, "parent_span_id")
                    == hitl_runtime::trace::span_id_hex(app_span.span_id)
        })
    });
    assert_eq!(str_of(&late_span, "trace_id"), carried.trace_id_hex());
    assert_eq!(late_span["status_code"], 2, "{late_span}");

    for service in [&router, &assignment, &audit] {
        assert!(
            service
                .metric("hitl_trace_spans_exported_total")
                .unwrap_or(0.0)
                > 0.0
        );
        assert_eq!(
            service.metric("hitl_trace_spans_dropped_total{reason=\"export_failed\"}"),
            Some(0.0),
            "no export failed"
        );
    }
}
