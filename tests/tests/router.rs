//! The router, as a real process, against a real broker.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
    time::Duration,
};

use hitl_schema::*;
use hitl_tests::*;

const ALL_HUMAN: &str = "version: all-human\ndefault: { review: { pool: general, sla: 1h } }\n";
const ALL_AUTO: &str = "version: all-auto\ndefault: auto_approve\n";

const THREE_WAYS: &str = r#"
version: three-ways
rules:
  - { name: reject-certain, when: { confidence: { gte: 0.99 } }, then: auto_reject }
  - { name: approve-confident, when: { confidence: { gte: 0.8 } }, then: auto_approve }
default: { review: { pool: general, roles: [analyst], tier: normal, sla: 1h } }
"#;

struct Run {
    dir: tempfile::TempDir,
    topics: hitl_runtime::config::Topics,
    instance: String,
}

impl Run {
    fn new(test: &str) -> Self {
        let topics = unique_topics(test);
        create_topics(&topics);
        Self {
            dir: tempfile::tempdir().unwrap(),
            topics,
            instance: unique("router"),
        }
    }

    fn write_policy(&self, name: &str, yaml: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        path
    }

    fn config(&self, policy: &Path, extra_service: &str) -> String {
        format!(
            "{}\n{}\n[service]\npolicy_path = \"{}\"\ninstance_id = \"{}\"\ngroup_id = \"{}-group\"\n\
             policy_check_interval = \"200ms\"\n{extra_service}\n",
            kafka_toml(),
            topics_toml(&self.topics),
            policy.display(),
            self.instance,
            self.instance,
        )
    }

    fn start(&self, policy_yaml: &str, extra_service: &str) -> Service {
        let policy = self.write_policy("policy.yaml", policy_yaml);
        Service::start(
            "hitl-router",
            self.dir.path(),
            &self.config(&policy, extra_service),
        )
    }
}

fn decision(id: &str, confidence: f64) -> Decision {
    Decision {
        decision_id: id.into(),
        workflow: "payments.fraud".into(),
        subject: format!("txn-{id}"),
        action: "block".into(),
        confidence,
        risk_score: Some(0.4),
        amount: Some(120.0),
        priority: None,
        producer: "fraud-model".into(),
        model_name: "gbm".into(),
        model_version: Some("7".into()),
        features: BTreeMap::from([("velocity".into(), 2.5)]),
        context: BTreeMap::from([("card".into(), "4111-xxxx".into())]),
        sensitive_fields: vec!["card".into()],
        created_at: now_millis(),
        sla_ms: None,
    }
}

fn now_millis() -> i64 {
    hitl_runtime::now_millis()
}

fn avro(decision: &Decision) -> Vec<u8> {
    Codec::single_object().encode_to_vec("", decision).unwrap()
}

fn publish(topic: &str, decisions: &[Decision]) {
    let producer = producer();
    for decision in decisions {
        produce(
            &producer,
            topic,
            &decision.decision_id,
            &avro(decision),
            &[],
        );
    }
    flush(&producer);
}

fn decode<T: Record>(records: &[Received]) -> Vec<T> {
    let codec = Codec::single_object();
    records
        .iter()
        .map(|r| {
            codec
                .decode(r.payload.as_deref().unwrap())
                .expect("decodes")
        })
        .collect()
}

const WAIT: Duration = Duration::from_secs(60);
const QUIET: Duration = Duration::from_secs(3);

#[test]
fn routes_auto_approve_auto_reject_and_human() {
    let run = Run::new("three-ways");
    let router = run.start(THREE_WAYS, "");
    publish(
        &run.topics.decisions,
        &[
            decision("rej", 0.995),
            decision("app", 0.85),
            decision("hum", 0.3),
        ],
    );

    let outcomes: Vec<Outcome> = decode(&read_at_least(&run.topics.outcomes, 2, WAIT));
    let by_id: HashMap<_, _> = outcomes
        .iter()
        .map(|o| (o.decision_id.as_str(), o))
        .collect();
    assert_eq!(by_id["rej"].status, OutcomeStatus::Rejected);
    assert_eq!(by_id["rej"].policy_rule, "reject-certain");
    assert_eq!(by_id["app"].status, OutcomeStatus::Approved);
    assert_eq!(by_id["app"].decided_by, DecidedBy::Auto);
    assert_eq!(by_id["app"].policy_version, "three-ways");
    assert!(!by_id.contains_key("hum"));

    let requests = read_at_least(&run.topics.review_requests, 1, WAIT);
    assert_eq!(
        requests[0].key.as_deref(),
        Some("general"),
        "review requests are keyed by pool"
    );
    let request: ReviewRequest = decode(&requests).remove(0);
    assert_eq!(
        *request.decision,
        decision("hum", 0.3).with_created_at(request.decision.created_at)
    );
    assert_eq!(
        (request.kind, request.required_roles.clone()),
        (ReviewKind::Review, vec!["analyst".to_owned()])
    );
    assert_eq!(
        request.sla_deadline,
        request.decision.created_at + 3_600_000
    );

    let lifecycle: Vec<LifecycleEvent> = decode(&read_at_least(&run.topics.lifecycle, 3, WAIT));
    let routes: BTreeMap<_, _> = lifecycle
        .iter()
        .map(|e| (e.decision_id.clone(), e.attributes["route"].clone()))
        .collect();
    assert_eq!(
        routes,
        BTreeMap::from([
            ("app".into(), "auto_approve".into()),
            ("hum".into(), "human".into()),
            ("rej".into(), "auto_reject".into())
        ])
    );
    let outcomes_header = read_at_least(&run.topics.outcomes, 1, WAIT);
    assert!(
        outcomes_header[0].headers["traceparent"].starts_with("00-"),
        "trace context travels"
    );
    wait_for(WAIT, "metrics", || {
        (router.metric("hitl_router_decisions_total{route=\"human\",workflow=\"payments.fraud\"}")
            == Some(1.0))
        .then_some(())
    });
    assert_eq!(router.terminate(), Some(0), "SIGTERM exits cleanly");
}

trait WithCreatedAt {
    fn with_created_at(self, created_at: i64) -> Self;
}
impl WithCreatedAt for Decision {
    fn with_created_at(mut self, created_at: i64) -> Self {
        self.created_at = created_at;
        self
    }
}

#[test]
fn json_decisions_are_accepted() {
    let run = Run::new("json");
    let _router = run.start(ALL_AUTO, "");
    let producer = producer();
    let json = serde_json::to_vec(&decision("json-1", 0.5)).unwrap();
    produce(
        &producer,
        &run.topics.decisions,
        "json-1",
        &json,
        &[("content-type", "application/json")],
    );
    flush(&producer);
    let outcomes: Vec<Outcome> = decode(&read_at_least(&run.topics.outcomes, 1, WAIT));
    assert_eq!(outcomes[0].decision_id, "json-1");
}

#[test]
fn invalid_input_goes_to_the_dlq_with_reasons_and_routing_continues() {
    let run = Run::new("dlq");
    let router = run.start(ALL_AUTO, "max_record_bytes = 4096");
    let producer = producer();
    let topic = &run.topics.decisions;
    let verdict = Verdict {
        decision_id: "v".into(),
        assignment_id: "a".into(),
        reviewer_id: "r".into(),
        verdict: VerdictKind::Approve,
        amended_action: None,
        rationale: String::new(),
        decided_at: 1,
        pool: String::new(),
    };
    let mut nan = decision("bad-nan", 0.5);
    nan.confidence = f64::NAN;
    let mut negative_sla = decision("bad-sla", 0.5);
    negative_sla.sla_ms = Some(-1);
    let mut oversize = decision("bad-big", 0.5);
    oversize.context.insert("blob".into(), "x".repeat(8000));
    let mut truncated = avro(&decision("bad-cut", 0.5));
    truncated.truncate(truncated.len() - 8);
    // A valid decision with bytes after its datum (a publisher smuggling fields past the schema).
    let mut trailing = avro(&decision("bad-tail", 0.5));
    trailing.extend_from_slice(b"\x06pwn");
    // (key, bytes, headers, expected error class, expected stage)
    type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case<'_>> = vec![
        ("garbage", b"\x07not a record".to_vec(), vec![], "decode.framing", "decode"),
        ("unknown-schema", Codec::single_object().encode_to_vec("", &verdict).unwrap(), vec![], "decode.unknown_schema", "decode"),
        ("cut", truncated, vec![], "decode.avro", "decode"),
        ("trailing", trailing, vec![], "decode.avro", "decode"),
        (
            "missing-field",
            br#"{"decision_id":"m","workflow":"w","subject":"s","action":"a","producer":"p","created_at":1}"#.to_vec(),
            vec![("content-type", "application/json")],
            "decode.json",
            "decode",
        ),
        ("empty-id", avro(&decision("", 0.5)), vec![], "validation", "validate"),
        ("over-one", avro(&decision("bad-conf", 1.5)), vec![], "validation", "validate"),
        ("nan", avro(&nan), vec![], "validation", "validate"),
        ("neg-sla", avro(&negative_sla), vec![], "validation", "validate"),
        ("oversize", avro(&oversize), vec![], "oversize", "decode"),
    ];
    for (key, payload, headers, _, _) in &cases {
        produce(&producer, topic, key, payload, headers);
    }
    publish(topic, &[decision("good-after", 0.5)]);
    flush(&producer);

    let dead = read_at_least(&run.topics.decisions_dlq, cases.len(), WAIT);
    assert_eq!(dead.len(), cases.len());
    let by_key: HashMap<_, _> = dead.iter().map(|r| (r.key.clone().unwrap(), r)).collect();
    for (key, payload, _, class, stage) in &cases {
        let record = by_key
            .get(*key)
            .unwrap_or_else(|| panic!("{key} not in the DLQ"));
        assert_eq!(record.headers["hitl.error.class"], *class, "{key}");
        assert_eq!(record.headers["hitl.error.stage"], *stage, "{key}");
        assert_eq!(record.headers["hitl.source.topic"], *topic);
        assert!(record.headers["hitl.source.offset"].parse::<i64>().is_ok());
        assert!(record.headers["hitl.source.partition"]
            .parse::<i32>()
            .is_ok());
        assert!(!record.headers["hitl.error.message"].is_empty());
        assert_eq!(
            record.payload.as_deref(),
            Some(&payload[..]),
            "{key}: original bytes kept"
        );
    }
    assert!(by_key["nan"].headers["hitl.error.message"].contains("confidence"));
    assert!(by_key["neg-sla"].headers["hitl.error.message"].contains("sla_ms"));
    assert!(by_key["trailing"].headers["hitl.error.message"].contains("trailing"));

    let outcomes: Vec<Outcome> = decode(&read_at_least(&run.topics.outcomes, 1, WAIT));
    assert_eq!(outcomes.len(), 1);
    assert_eq!(
        outcomes[0].decision_id, "good-after",
        "the service keeps routing"
    );
    wait_for(WAIT, "dlq metric", || {
        (router.metric("hitl_router_dead_letters_total{class=\"validation\"}") == Some(4.0))
            .then_some(())
    });
}

#[test]
fn qa_sampling_is_deterministic_and_non_blocking() {
    let run = Run::new("qa");
    let policy = "version: qa\nqa_seed: 11\nqa_review: { pool: qa-pool, sla: 2h }\ndefault: auto_approve\ndefault_qa_sample_rate: 0.3\n";
    let _router = run.start(policy, "");
    let decisions: Vec<Decision> = (0..60).map(|i| decision(&format!("qa-{i}"), 0.7)).collect();
    publish(&run.topics.decisions, &decisions);

    let outcomes: Vec<Outcome> = decode(&read_at_least(&run.topics.outcomes, 60, WAIT));
    assert_eq!(
        outcomes.len(),
        60,
        "every decision gets its auto outcome, sampled or not"
    );
    let expected: BTreeSet<String> = decisions
        .iter()
        .filter(|d| hitl_router::policy::sampled(&d.decision_id, 0.3, 11))
        .map(|d| d.decision_id.clone())
        .collect();
    assert!(!expected.is_empty() && expected.len() < 60);
    let samples: Vec<ReviewRequest> = decode(&read_all(&run.topics.review_requests, QUIET));
    let sampled: BTreeSet<String> = samples
        .iter()
        .map(|r| r.decision.decision_id.clone())
        .collect();
    assert_eq!(
        sampled, expected,
        "the sample is exactly the deterministic choice"
    );
    assert!(samples
        .iter()
        .all(|r| r.kind == ReviewKind::QaSample && r.pool == "qa-pool"));
    assert!(samples
        .iter()
        .all(|r| r.auto_status.as_deref() == Some("APPROVED")));
}

#[test]
fn shadow_policy_never_changes_outcomes() {
    let run = Run::new("shadow");
    let shadow = run.write_policy("shadow.yaml", "version: candidate\ndefault: auto_approve\n");
    let policy = run.write_policy("policy.yaml", THREE_WAYS);
    let router = Service::start(
        "hitl-router",
        run.dir.path(),
        &run.config(
            &policy,
            &format!("shadow_policy_path = \"{}\"", shadow.display()),
        ),
    );
    let decisions: Vec<Decision> = (0..20)
        .map(|i| decision(&format!("sh-{i}"), (i as f64) / 20.0))
        .collect();
    publish(&run.topics.decisions, &decisions);
    let lifecycle: Vec<LifecycleEvent> = decode(&read_at_least(&run.topics.lifecycle, 20, WAIT));
    let outcomes: Vec<Outcome> = decode(&read_all(&run.topics.outcomes, QUIET));
    let reviews: Vec<ReviewRequest> = decode(&read_all(&run.topics.review_requests, QUIET));
    // Active policy alone decides: confidence < 0.8 goes to people although the shadow approves all.
    assert_eq!(
        reviews.len(),
        decisions.iter().filter(|d| d.confidence < 0.8).count()
    );
    assert_eq!(
        outcomes.len(),
        decisions.iter().filter(|d| d.confidence >= 0.8).count()
    );
    assert!(outcomes.iter().all(|o| o.policy_version == "three-ways"));
    for event in &lifecycle {
        let agrees = event.attributes["route"] == "auto_approve";
        assert_eq!(event.attributes["shadow_agrees"], agrees.to_string());
        assert_eq!(event.attributes["shadow_version"], "candidate");
    }
    wait_for(WAIT, "shadow metrics", || {
        let disagreements =
            router.metric("hitl_router_shadow_evaluations_total{agrees=\"false\"}")?;
        (disagreements as usize
            == reviews.len()
                + outcomes
                    .iter()
                    .filter(|o| o.status == OutcomeStatus::Rejected)
                    .count())
        .then_some(())
    });
}

/// Every decision id maps to the set of routes its records show; exactly one route each.
fn routes_by_decision(run: &Run) -> BTreeMap<String, BTreeSet<String>> {
    let lifecycle: Vec<LifecycleEvent> = decode(&read_all(&run.topics.lifecycle, QUIET));
    let mut routes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for event in lifecycle {
        routes
            .entry(event.decision_id.clone())
            .or_default()
            .insert(format!(
                "{}@{}",
                event.attributes["route"],
                event.policy_version.unwrap_or_default()
            ));
    }
    routes
}

/// Waits until `router` has read `count` decisions (so a reload lands after them).
fn routed_at_least(router: &Service, count: usize) {
    wait_for(WAIT, "the router to catch up", || {
        (router.metric("hitl_loop_records_in_total")? >= count as f64).then_some(())
    });
}

#[test]
fn policy_reload_mid_stream_loses_and_duplicates_nothing() {
    let run = Run::new("reload");
    let router = run.start(ALL_AUTO, "");
    let policy_path = run.dir.path().join("policy.yaml");
    let total = 600;
    let decisions: Vec<Decision> = (0..total)
        .map(|i| decision(&format!("rl-{i}"), 0.5))
        .collect();
    let producer = producer();
    for (i, d) in decisions.iter().enumerate() {
        produce(
            &producer,
            &run.topics.decisions,
            &d.decision_id,
            &avro(d),
            &[],
        );
        if i == total / 3 {
            flush(&producer);
            routed_at_least(&router, i + 1);
            // A broken policy is refused; the running one stays.
            std::fs::write(
                &policy_path,
                "version: broken\ndefault: { review: { pool: \"\", sla: 0s } }\n",
            )
            .unwrap();
            std::thread::sleep(Duration::from_millis(600));
        }
        if i == total / 2 {
            flush(&producer);
            routed_at_least(&router, i + 1);
            std::fs::write(&policy_path, ALL_HUMAN).unwrap();
            signal(router.pid(), "HUP");
            std::thread::sleep(Duration::from_millis(600));
        }
    }
    flush(&producer);
    let outcomes = read_at_least(&run.topics.outcomes, 1, WAIT);
    assert!(
        !outcomes.is_empty(),
        "no outcomes; log:\n{}",
        router.log_tail()
    );
    wait_for(WAIT, "all decisions routed", || {
        (routes_by_decision(&run).len() == total).then_some(())
    });
    let routes = routes_by_decision(&run);
    let versions: BTreeSet<&str> = routes
        .values()
        .flatten()
        .map(|route| route.split('@').nth(1).unwrap())
        .collect();
    assert_eq!(
        versions,
        BTreeSet::from(["all-auto", "all-human"]),
        "the broken policy never ran"
    );
    for (id, set) in &routes {
        assert_eq!(set.len(), 1, "{id} routed more than one way: {set:?}");
    }
    let outcome_count = read_all(&run.topics.outcomes, QUIET).len();
    let review_count = read_all(&run.topics.review_requests, QUIET).len();
    assert_eq!(
        outcome_count + review_count,
        total,
        "one route record per decision, none lost, none doubled"
    );
    assert_eq!(
        router.metric("hitl_router_policy_reloads_total{result=\"refused\"}"),
        Some(1.0)
    );
    assert!(
        router
            .metric("hitl_router_policy_reloads_total{result=\"ok\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[test]
fn kill_9_mid_stream_then_restart_routes_every_decision_once() {
    let run = Run::new("kill9");
    let total = 4000;
    let decisions: Vec<Decision> = (0..total)
        .map(|i| decision(&format!("k9-{i}"), if i % 3 == 0 { 0.3 } else { 0.9 }))
        .collect();
    publish(&run.topics.decisions, &decisions);
    let policy = "version: k9\nrules:\n  - { name: conf, when: { confidence: { gte: 0.8 } }, then: auto_approve }\ndefault: { review: { pool: general, sla: 1h } }\n";
    // Throttled (ingest rate limit), so the kill lands mid-stream.
    let router = run.start(policy, "max_decisions_per_second = 1000");
    wait_for(WAIT, "some progress", || {
        let done = router.metric("hitl_loop_records_in_total")?;
        (done >= 1500.0).then_some(())
    });
    let processed_before_kill = router
        .metric("hitl_loop_records_in_total")
        .unwrap_or_default();
    router.kill9();
    assert!(
        processed_before_kill < total as f64,
        "the kill must land mid-stream"
    );
    // Restarted at once: with static membership it takes its partitions back without waiting out
    // the killed member's session.
    let restart = std::time::Instant::now();
    let restarted = run.start(policy, "");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while routes_by_decision(&run).len() < total {
        if std::time::Instant::now() >= deadline {
            let routed = routes_by_decision(&run);
            let inputs = read_all(&run.topics.decisions, QUIET);
            let mut missing: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
            for input in &inputs {
                if !routed.contains_key(input.key.as_deref().unwrap_or_default()) {
                    missing
                        .entry(input.partition)
                        .or_default()
                        .push(input.offset);
                }
            }
            let ranges: Vec<String> = missing
                .iter()
                .map(|(p, offsets)| {
                    format!(
                        "p{p}: {} missing, offsets {}..={}",
                        offsets.len(),
                        offsets[0],
                        offsets[offsets.len() - 1]
                    )
                })
                .collect();
            let committed = {
                use rdkafka::consumer::{BaseConsumer, Consumer};
                let mut config = client_config();
                config.set("group.id", format!("{}-group", run.instance));
                let consumer: BaseConsumer = config.create().unwrap();
                let mut list = rdkafka::TopicPartitionList::new();
                for partition in 0..4 {
                    list.add_partition(&run.topics.decisions, partition);
                }
                consumer
                    .committed_offsets(list, Duration::from_secs(10))
                    .map(|l| {
                        l.elements()
                            .iter()
                            .map(|e| (e.partition(), e.offset()))
                            .collect::<Vec<_>>()
                    })
            };
            panic!(
                "not every decision routed after restart ({} of {total}); committed {committed:?}; missing input {ranges:?}; \
                 processed before the kill: {processed_before_kill}; restarted router:\n{}",
                routed.len(),
                restarted.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "kill -9: the restarted router routed every decision {:?} after its start",
        restart.elapsed()
    );
    let routes = routes_by_decision(&run);
    for decision in &decisions {
        let set = &routes[&decision.decision_id];
        let expected = if decision.confidence >= 0.8 {
            "auto_approve@k9"
        } else {
            "human@k9"
        };
        assert_eq!(
            set,
            &BTreeSet::from([expected.to_owned()]),
            "{}",
            decision.decision_id
        );
    }
    // Downstream view: distinct decision ids with an outcome or a review request.
    let outcome_records = decode::<Outcome>(&read_all(&run.topics.outcomes, QUIET));
    let review_records = decode::<ReviewRequest>(&read_all(&run.topics.review_requests, QUIET));
    let outcome_ids: BTreeSet<String> = outcome_records
        .iter()
        .map(|o| o.decision_id.clone())
        .collect();
    let review_ids: BTreeSet<String> = review_records
        .iter()
        .map(|r| r.decision.decision_id.clone())
        .collect();
    let repeated =
        outcome_records.len() + review_records.len() - outcome_ids.len() - review_ids.len();
    eprintln!(
        "kill -9: {total} decisions; {} outcome + {} review records for {} + {} distinct decisions \
         ({repeated} re-emitted after the crash)",
        outcome_records.len(),
        review_records.len(),
        outcome_ids.len(),
        review_ids.len(),
    );
    if transactional() {
        // The killed router's open transaction was aborted (fenced by the restart): a
        // read_committed reader sees each decision's route exactly once.
        assert_eq!(
            repeated, 0,
            "a route record repeated after kill -9 in transactional mode"
        );
    }
    assert!(outcome_ids.is_disjoint(&review_ids));
    assert_eq!(outcome_ids.len() + review_ids.len(), total);
}

/// Runs the router binary on `config` to completion (for configs it must refuse).
fn router_with_config(config: &Path) -> std::process::Output {
    std::process::Command::new(binary("hitl-router"))
        .envs(trust_environment("hitl-router"))
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn a_bad_config_refuses_to_start_and_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[kafka]\nbootstrap_servers = \"nohost\"\ncommit_interval = \"0s\"\n\
         [telemetry]\notlp_endpoint = \"https://collector:4318\"\ntrace_sample_ratio = 1.5\n\
         [service]\npolicy_path = \"/nope.yaml\"\n",
    )
    .unwrap();
    let output = router_with_config(&config);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for field in [
        "kafka.bootstrap_servers",
        "kafka.commit_interval",
        "telemetry.otlp_endpoint",
        "telemetry.trace_sample_ratio",
        "service.policy_path",
    ] {
        assert!(stderr.contains(field), "{field} not named in: {stderr}");
    }
    std::fs::write(&config, "[kafka]\nbootstrap_server = \"x:1\"\n").unwrap();
    let output = router_with_config(&config);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("bootstrap_server"),
        "unknown field named"
    );
}

#[test]
fn a_bad_policy_at_start_refuses_to_start() {
    let run = Run::new("badpolicy");
    let policy = run.write_policy("policy.yaml", "version: x\ndefault: maybe\n");
    let config = run.dir.path().join("router.toml");
    std::fs::write(&config, run.config(&policy, "")).unwrap();
    let output = router_with_config(&config);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown action `maybe`"));
}

#[test]
fn a_transaction_left_open_by_an_earlier_run_does_not_hide_new_outputs() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    if !transactional() {
        return; // idempotent delivery does not fence: the broker aborts the stale one at its timeout
    }
    let run = Run::new("open-txn");
    // What a crashed transactional run of this instance leaves behind: an open transaction on
    // every outcomes partition, which holds back read_committed readers until the broker times it
    // out (transaction_timeout, 60 s). The restarted router's init_transactions fences and aborts it.
    let settings = hitl_runtime::config::KafkaSettings {
        delivery: hitl_runtime::config::Delivery::Transactional,
        ..kafka_settings()
    };
    let stale: BaseProducer = hitl_runtime::kafka::loop_producer_config(
        &settings,
        &format!("hitl-router-{}", run.instance),
    )
    .create()
    .unwrap();
    stale.init_transactions(Duration::from_secs(30)).unwrap();
    stale.begin_transaction().unwrap();
    for partition in 0..run.topics.partitions {
        stale
            .send(
                BaseRecord::to(&run.topics.outcomes)
                    .key("stale")
                    .payload("never committed")
                    .partition(partition),
            )
            .map_err(|(error, _)| error)
            .unwrap();
    }
    stale.flush(Duration::from_secs(30)).unwrap();

    let _router = run.start(ALL_AUTO, "");
    publish(&run.topics.decisions, &[decision("after-stale", 0.5)]);
    let visible = read_topic(&run.topics.outcomes, WAIT, |records| {
        records
            .iter()
            .any(|r| r.key.as_deref() == Some("after-stale"))
    });
    assert!(
        visible
            .iter()
            .any(|r| r.key.as_deref() == Some("after-stale")),
        "the new outcome is hidden from read_committed readers behind the stale transaction"
    );
    drop(stale);
}

// ---------------------------------------------------------------------------------------------
// Durable de-duplication (#12): a decision id routed once is not routed again within the
// horizon, whichever instance owns its partition and however often the router restarts.

impl Run {
    /// A config for another instance (`instance_id`) of this run's router group.
    fn config_as(&self, policy: &Path, instance_id: &str, extra_service: &str) -> String {
        format!(
            "{}\n{}\n[service]\npolicy_path = \"{}\"\ninstance_id = \"{instance_id}\"\ngroup_id = \"{}-group\"\n\
             policy_check_interval = \"200ms\"\n{extra_service}\n",
            kafka_toml(),
            topics_toml(&self.topics),
            policy.display(),
            self.instance,
        )
    }

    /// Waits until the router group's committed offsets cover every decision published so far,
    /// so that a kill cannot make the next instance read an already routed decision again
    /// (which, under idempotent delivery, would route it again: at-least-once by design).
    fn wait_committed(&self) {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let mut config = client_config();
        config.set("group.id", format!("{}-group", self.instance));
        let consumer: BaseConsumer = config.create().unwrap();
        wait_for(WAIT, "the router to commit every input", || {
            let mut list = rdkafka::TopicPartitionList::new();
            for partition in 0..self.topics.partitions {
                list.add_partition(&self.topics.decisions, partition);
            }
            let committed = consumer
                .committed_offsets(list, Duration::from_secs(10))
                .ok()?;
            for element in committed.elements() {
                let (_, end) = consumer
                    .fetch_watermarks(
                        &self.topics.decisions,
                        element.partition(),
                        Duration::from_secs(10),
                    )
                    .ok()?;
                // The committed offset is the next one to read: the end once everything is read.
                let done = match element.offset() {
                    rdkafka::Offset::Offset(offset) => offset >= end,
                    _ => end == 0,
                };
                if !done {
                    return None;
                }
            }
            Some(())
        });
    }
}

/// The same decision ids as `ids`, with different content: under ALL_HUMAN, routing one again
/// would send it to people.
fn republished(ids: &[String]) -> Vec<Decision> {
    ids.iter()
        .map(|id| {
            let mut again = decision(id, 0.1);
            again.action = "allow".into();
            again.subject = format!("retry-{id}");
            again
        })
        .collect()
}

/// The number of partitions the last `partitions assigned` line of `service`'s log names.
fn assigned_partitions(service: &Service) -> Option<usize> {
    let log = std::fs::read_to_string(&service.log).ok()?;
    let line = log
        .lines()
        .rev()
        .find(|line| line.contains("partitions assigned"))?;
    // Without the terminal colours (ESC [ … m) the log is written with.
    let mut line = line.to_owned();
    while let Some(start) = line.find('\u{1b}') {
        let end = line[start..]
            .find('m')
            .map_or(line.len(), |m| start + m + 1);
        line.replace_range(start..end, "");
    }
    let value = line.split("partitions=").nth(1)?;
    value
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Everything the router wrote for the decisions, once it has gone quiet: outcomes, review
/// requests and ROUTED lifecycle events, each counted by decision id.
struct Written {
    outcomes: BTreeMap<String, usize>,
    reviews: BTreeMap<String, usize>,
    routed: BTreeMap<String, usize>,
}

fn written(run: &Run) -> Written {
    let count = |ids: Vec<String>| {
        let mut counts = BTreeMap::new();
        for id in ids {
            *counts.entry(id).or_default() += 1;
        }
        counts
    };
    let outcomes: Vec<Outcome> = decode(&read_all(&run.topics.outcomes, QUIET));
    let reviews: Vec<ReviewRequest> = decode(&read_all(&run.topics.review_requests, QUIET));
    let lifecycle: Vec<LifecycleEvent> = decode(&read_all(&run.topics.lifecycle, QUIET));
    Written {
        outcomes: count(outcomes.into_iter().map(|o| o.decision_id).collect()),
        reviews: count(
            reviews
                .into_iter()
                .map(|r| r.decision.decision_id.clone())
                .collect(),
        ),
        routed: count(
            lifecycle
                .into_iter()
                .filter(|e| e.kind == LifecycleKind::Routed)
                .map(|e| e.decision_id)
                .collect(),
        ),
    }
}

/// Checks that each of `ids` was routed exactly once, automatically (ALL_AUTO), and never sent
/// to people, whatever was re-published since.
fn assert_routed_once(run: &Run, ids: &[String]) {
    let written = written(run);
    for id in ids {
        assert_eq!(
            written.outcomes.get(id),
            Some(&1),
            "{id}: exactly one outcome"
        );
        assert_eq!(
            written.routed.get(id),
            Some(&1),
            "{id}: exactly one ROUTED lifecycle event"
        );
        assert_eq!(
            written.reviews.get(id),
            None,
            "{id}: routed again (to people) after it was routed automatically"
        );
    }
}

fn duplicates(router: &Service) -> f64 {
    router.metric("hitl_router_duplicates_total").unwrap_or(0.0)
}

/// Routes decisions, stops the router (SIGKILL or SIGTERM), starts it again under a policy that
/// would route them differently, re-publishes the same ids: nothing is routed a second time,
/// and the new instance counts every re-published one as a duplicate.
fn a_restarted_router_drops_decisions_it_routed_before(kill: bool) {
    let run = Run::new(if kill { "dedup-kill" } else { "dedup-restart" });
    let router = run.start(ALL_AUTO, "");
    let ids: Vec<String> = (0..16).map(|i| format!("once-{i}")).collect();
    let first: Vec<Decision> = ids.iter().map(|id| decision(id, 0.9)).collect();
    publish(&run.topics.decisions, &first);
    read_at_least(&run.topics.outcomes, ids.len(), WAIT);
    run.wait_committed();
    if kill {
        router.kill9();
    } else {
        assert_eq!(router.terminate(), Some(0), "SIGTERM exits cleanly");
    }

    // Same instance (same transactional.id and group.instance.id), new process, new policy.
    let restarted = run.start(ALL_HUMAN, "");
    publish(&run.topics.decisions, &republished(&ids));
    wait_for(
        WAIT,
        "the restarted router to read the re-published ids",
        || (restarted.metric("hitl_loop_records_in_total")? >= ids.len() as f64).then_some(()),
    );
    // A fresh decision after them shows the new policy is live and the router went on.
    publish(&run.topics.decisions, &[decision("fresh", 0.9)]);
    read_topic(&run.topics.review_requests, WAIT, |records| {
        records.iter().any(|r| r.key.as_deref() == Some("general"))
    });
    assert_routed_once(&run, &ids);
    assert_eq!(
        duplicates(&restarted),
        ids.len() as f64,
        "every re-published id is counted as a duplicate; log:\n{}",
        restarted.log_tail()
    );
}

#[test]
fn a_router_killed_with_sigkill_does_not_route_a_decision_again_after_its_restart() {
    a_restarted_router_drops_decisions_it_routed_before(true);
}

#[test]
fn a_router_restarted_cleanly_does_not_route_a_decision_again() {
    a_restarted_router_drops_decisions_it_routed_before(false);
}

/// Two instances of one group: decisions routed by the first, re-published after a rebalance
/// gave half its partitions to the second, and again after the first died and the second took
/// every partition. No decision is routed twice.
#[test]
fn a_duplicate_arriving_at_another_instance_after_a_rebalance_is_dropped() {
    let run = Run::new("dedup-rebalance");
    let policy = run.write_policy("policy.yaml", ALL_AUTO);
    let first_instance = Service::start(
        "hitl-router",
        run.dir.path(),
        &run.config_as(&policy, &format!("{}-a", run.instance), ""),
    );
    let ids: Vec<String> = (0..16).map(|i| format!("moved-{i}")).collect();
    let first: Vec<Decision> = ids.iter().map(|id| decision(id, 0.9)).collect();
    publish(&run.topics.decisions, &first);
    read_at_least(&run.topics.outcomes, ids.len(), WAIT);
    run.wait_committed();

    // The policy changes (the first instance reloads it), and a second instance joins: the
    // group rebalances, and half the partitions move to it.
    std::fs::write(&policy, ALL_HUMAN).unwrap();
    wait_for(WAIT, "the first instance to load the new policy", || {
        (first_instance.metric("hitl_router_policy_reloads_total{result=\"ok\"}")? >= 1.0)
            .then_some(())
    });
    let second_instance = Service::start(
        "hitl-router",
        run.dir.path(),
        &run.config_as(&policy, &format!("{}-b", run.instance), ""),
    );
    wait_for(
        WAIT,
        "the partitions to be shared by both instances",
        || {
            let (a, b) = (
                assigned_partitions(&first_instance)?,
                assigned_partitions(&second_instance)?,
            );
            (a > 0 && b > 0 && a + b == run.topics.partitions as usize).then_some(())
        },
    );
    publish(&run.topics.decisions, &republished(&ids));
    wait_for(WAIT, "both instances to read the re-published ids", || {
        let read = first_instance.metric("hitl_loop_records_in_total")? - ids.len() as f64
            + second_instance
                .metric("hitl_loop_records_in_total")
                .unwrap_or(0.0);
        (read >= ids.len() as f64).then_some(())
    });
    assert_routed_once(&run, &ids);
    let caught_by_second = duplicates(&second_instance);
    assert!(
        caught_by_second > 0.0,
        "no re-published id reached the second instance: the test proves nothing"
    );
    assert_eq!(
        duplicates(&first_instance) + caught_by_second,
        ids.len() as f64,
        "every re-published id is counted as a duplicate"
    );

    // The first instance dies; once its session ends the second takes every partition.
    first_instance.kill9();
    wait_for(
        Duration::from_secs(90),
        "the second instance to own every partition",
        || (assigned_partitions(&second_instance)? == run.topics.partitions as usize).then_some(()),
    );
    let before = duplicates(&second_instance);
    let read_before = second_instance
        .metric("hitl_loop_records_in_total")
        .unwrap_or(0.0);
    publish(&run.topics.decisions, &republished(&ids));
    wait_for(WAIT, "the second instance to read them", || {
        (second_instance.metric("hitl_loop_records_in_total")? >= read_before + ids.len() as f64)
            .then_some(())
    });
    assert_routed_once(&run, &ids);
    assert_eq!(
        duplicates(&second_instance) - before,
        ids.len() as f64,
        "every re-published id is counted as a duplicate by the instance that owns it now; log:\n{}",
        second_instance.log_tail()
    );
}
