//! Kafka security for real: the three services run on the broker's SASL/SCRAM listener, each as
//! its own principal, under exactly the ACLs of `deploy/kafka/acls.txt`, applied with
//! `scripts/kafka-acls.sh` (Apache Kafka's AclCommand) after its `users` command created their
//! SCRAM credentials (Kafka's ConfigCommand). The broker runs the StandardAuthorizer with
//! `allow.everyone.if.no.acl.found=false`, so whatever the file does not grant is refused.
//!
//! A publisher's decisions flow through to automatic and human outcomes and a signed audit trail
//! that `hitl-audit verify` checks as the reader principal; a reviewer app's principal can write a
//! roster entry and a verdict and read its assignments with a group of its own, and cannot write
//! any topic that is not its own, read decisions or state, join a service's group, or take a
//! service's transactional id (which would fence the service).

use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use hitl_runtime::config::{Delivery, KafkaSettings, Secret, SecurityProtocol, Topics};
use hitl_schema::*;
use hitl_tests::*;
use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer},
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::{BaseProducer, FutureProducer, FutureRecord, Producer},
    types::RDKafkaErrorCode,
    Message, Offset, TopicPartitionList,
};

const WAIT: Duration = Duration::from_secs(45);
const SIGNING_KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

/// The principals of the ACL file with this test's (development) passwords; `users` reads them
/// from `HITL_KAFKA_PASSWORD_<NAME>`.
const PRINCIPALS: [(&str, &str); 7] = [
    ("hitl-router", "test-router-secret"),
    ("hitl-assignment", "test-assignment-secret"),
    ("hitl-audit", "test-audit-secret"),
    ("hitl-reviewer-app", "test-reviewer-app-secret"),
    ("hitl-reviewer-app-pii", "test-reviewer-app-pii-secret"),
    ("hitl-publisher", "test-publisher-secret"),
    ("hitl-reader", "test-reader-secret"),
];

fn password(user: &str) -> &'static str {
    PRINCIPALS
        .iter()
        .find(|(name, _)| *name == user)
        .map(|(_, password)| *password)
        .expect("a principal of the ACL file")
}

fn password_variable(user: &str) -> String {
    format!(
        "HITL_KAFKA_PASSWORD_{}",
        user.to_uppercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    )
}

/// Client settings for `user` on the SASL listener.
fn as_user(sasl_bootstrap: &str, user: &str) -> KafkaSettings {
    KafkaSettings {
        bootstrap_servers: sasl_bootstrap.to_owned(),
        security_protocol: SecurityProtocol::SaslPlaintext,
        sasl_mechanism: Some("SCRAM-SHA-512".into()),
        sasl_username: Some(user.to_owned()),
        sasl_password: Some(Secret::new(password(user))),
        request_timeout: Duration::from_secs(10),
        ..KafkaSettings::default()
    }
}

/// The `[kafka]` table of a service that runs as `user`: the harness's delivery mode and group
/// protocol, on the SASL listener.
fn service_kafka_toml(sasl_bootstrap: &str, user: &str) -> String {
    format!(
        "[kafka]\nbootstrap_servers = \"{sasl_bootstrap}\"\nsecurity_protocol = \"sasl_plaintext\"\n\
         sasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"{user}\"\nsasl_password = \"{}\"\n\
         session_timeout = \"6s\"\ncommit_interval = \"100ms\"\ndelivery = \"{}\"\n{}",
        password(user),
        delivery(),
        std::env::var("HITL_TEST_GROUP_PROTOCOL")
            .map(|protocol| format!("group_protocol = \"{protocol}\"\n"))
            .unwrap_or_default(),
    )
}

/// Runs `scripts/kafka-acls.sh` with `args`; panics with its output unless it succeeds.
fn kafka_acls(args: &[&str]) -> String {
    let mut command = Command::new(repository().join("scripts/kafka-acls.sh"));
    command.args(args);
    for (user, password) in PRINCIPALS {
        command.env(password_variable(user), password);
    }
    let output = command.output().expect("run scripts/kafka-acls.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "scripts/kafka-acls.sh {args:?} failed:\n{text}"
    );
    text
}

/// Produces one record as `settings`' principal, signed as the harness's trusted clients sign it
/// (`test_signature`: decisions by the test publisher key, verdicts and roster entries by the test
/// gateway key), and waits for the broker's answer.
fn send_as(
    settings: &KafkaSettings,
    topic: &str,
    partition: Option<i32>,
    key: &str,
    payload: &[u8],
) -> Result<(), KafkaError> {
    let producer: FutureProducer = hitl_runtime::kafka::producer_config(settings)
        .set("message.timeout.ms", "10000")
        .create()?;
    let mut headers = OwnedHeaders::new();
    if let Some(signature) = test_signature(topic, key, payload) {
        headers = headers.insert(Header {
            key: hitl_runtime::auth::HEADER,
            value: Some(&signature),
        });
    }
    let mut record = FutureRecord::to(topic)
        .key(key)
        .payload(payload)
        .headers(headers);
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(producer.send(record, Duration::from_secs(10)))
        .map(|_| ())
        .map_err(|(error, _)| error)
}

/// Every committed record of `topic`, read as `settings`' principal until `done` holds for the
/// records decoded as `T` (panics after `WAIT`).
fn read_as<T: Record>(
    settings: &KafkaSettings,
    topic: &str,
    what: &str,
    mut done: impl FnMut(&[T]) -> bool,
) -> Vec<T> {
    let consumer: BaseConsumer = hitl_runtime::kafka::reader_config(settings, true)
        .create()
        .expect("consumer");
    let partitions = hitl_runtime::kafka::partition_count(settings, topic).expect("metadata");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    let codec = Codec::single_object();
    let mut records = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !done(&records) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.unwrap_or_else(|error| panic!("reading {topic}: {error}"));
            if let Ok(record) = codec.decode::<T>(message.payload().unwrap_or_default()) {
                records.push(record);
            }
        }
    }
    records
}

fn decision(id: &str, confidence: f64) -> Decision {
    Decision {
        decision_id: id.into(),
        workflow: "payments.card".into(),
        subject: format!("txn-{id}"),
        action: "approve".into(),
        confidence,
        risk_score: Some(0.4),
        amount: Some(120.0),
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

fn expect_code(result: Result<(), KafkaError>, code: RDKafkaErrorCode, what: &str) {
    match result {
        Err(error) if error.rdkafka_error_code() == Some(code) => {}
        other => panic!("{what}: expected {code:?}, got {other:?}"),
    }
}

/// The config of `hitl-audit` (the service, and `verify`) as `user`.
fn audit_toml(sasl_bootstrap: &str, user: &str, topics: &Topics) -> String {
    format!(
        "{}{}[service]\ncreate_topics = false\nsigning_key = \"{SIGNING_KEY}\"\nkey_id = \"test-1\"\n\
         hash_key = \"test-hash-key-0123456789\"\ncheckpoint_interval = \"500ms\"\n\
         checkpoint_every_records = 50\ntick_interval = \"100ms\"\n",
        service_kafka_toml(sasl_bootstrap, user),
        topics_toml(topics),
    )
}

/// `hitl-audit verify` as the reader principal; (clean, report).
fn verify_as_reader(dir: &Path, sasl_bootstrap: &str, topics: &Topics) -> (bool, String) {
    let config = dir.join(format!("{}.toml", unique("verify")));
    std::fs::write(
        &config,
        format!(
            "{}\n[http]\nlisten = \"127.0.0.1:0\"\n",
            audit_toml(sasl_bootstrap, "hitl-reader", topics)
        ),
    )
    .unwrap();
    let output = Command::new(binary("hitl-audit"))
        .arg("verify")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "verify could not run as hitl-reader: {report}"
    );
    (output.status.code() == Some(0), report)
}

#[test]
fn the_services_run_under_exactly_the_acl_file_and_a_reviewer_app_writes_only_its_own_topics() {
    let started = Instant::now();
    let Some(sasl_bootstrap) = broker().sasl_bootstrap.clone() else {
        eprintln!("skipped: the external cluster has no SASL listener named (HITL_SASL_BOOTSTRAP_SERVERS)");
        return;
    };
    let sasl = sasl_bootstrap.as_str();
    let dir = tempfile::tempdir().unwrap();
    let topics = unique_topics("acls");
    let prefix = topics
        .decisions
        .strip_suffix("decisions")
        .expect("unique_topics keeps the default names under a prefix")
        .to_owned();

    // The operator creates the topics (hitl-admin topics create), the principals' SCRAM
    // credentials and their ACLs, as the `admin` super user on the SASL listener.
    create_topics(&topics);
    let admin_properties = dir.path().join("admin.properties");
    std::fs::write(
        &admin_properties,
        format!(
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n\
             sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \
             username=\"admin\" password=\"{}\";\n",
            std::env::var("HITL_KAFKA_ADMIN_PASSWORD").unwrap_or_else(|_| "admin-secret".into())
        ),
    )
    .unwrap();
    let admin = admin_properties.to_str().unwrap();
    let users = kafka_acls(&["users", "--bootstrap", sasl, "--command-config", admin]);
    for (user, _) in PRINCIPALS {
        assert!(users.contains(&format!("User:{user}")), "{users}");
    }
    let applied = kafka_acls(&[
        "apply",
        "--bootstrap",
        sasl,
        "--prefix",
        &prefix,
        "--command-config",
        admin,
    ]);
    eprintln!(
        "{} ({:.1} s since the start, the broker's included)",
        applied.trim(),
        started.elapsed().as_secs_f64()
    );
    let listed = kafka_acls(&[
        "list",
        "--bootstrap",
        sasl,
        "--command-config",
        admin,
        "--principal",
        "User:hitl-reviewer-app",
    ]);
    assert!(
        listed.contains(&format!("name={prefix}verdicts, patternType=LITERAL")),
        "{listed}"
    );

    // The three services, each as its own principal. The router keeps `create_topics` on: refused
    // Create on topics that exist, it goes on.
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: acls\nrules:\n\
         - { name: confident, when: { confidence: { gte: 0.9 } }, then: auto_approve }\n\
         default: { review: { pool: general, sla: 1h } }\n",
    )
    .unwrap();
    let services = [
        Service::start(
            "hitl-router",
            dir.path(),
            &format!(
                "{}{}[service]\npolicy_path = \"{}\"\n",
                service_kafka_toml(sasl, "hitl-router"),
                topics_toml(&topics),
                policy.display()
            ),
        ),
        Service::start(
            "hitl-assignment",
            dir.path(),
            &format!(
                "{}{}[service]\ncreate_topics = false\ntick_interval = \"100ms\"\n",
                service_kafka_toml(sasl, "hitl-assignment"),
                topics_toml(&topics),
            ),
        ),
        Service::start(
            "hitl-audit",
            dir.path(),
            &audit_toml(sasl, "hitl-audit", &topics),
        ),
    ];

    let reviewer = as_user(sasl, "hitl-reviewer-app");
    let codec = Codec::single_object();
    // The reviewer app cannot take a service's transactional id: that would fence the service.
    for service in ["router", "assignment", "audit"] {
        let id = format!("hitl-{service}-0");
        let producer: BaseProducer = hitl_runtime::kafka::loop_producer_config(
            &KafkaSettings {
                delivery: Delivery::Transactional,
                ..reviewer.clone()
            },
            &id,
        )
        .create()
        .unwrap();
        expect_code(
            producer.init_transactions(Duration::from_secs(10)),
            RDKafkaErrorCode::TransactionalIdAuthorizationFailed,
            &format!("the reviewer app initialising transactional id {id}"),
        );
    }
    // Nor write any topic but verdicts and the roster, even a record signed with a service's key
    // (`send_as` signs a lifecycle event as the service it names): ACLs and signatures are
    // independent.
    let forged = codec
        .encode_to_vec(
            &topics.lifecycle,
            &LifecycleEvent::new(
                "forged:1",
                "forged",
                LifecycleKind::Outcome,
                "assignment",
                hitl_runtime::now_millis(),
            ),
        )
        .unwrap();
    for topic in [
        &topics.outcomes,
        &topics.lifecycle,
        &topics.audit,
        &topics.audit_checkpoints,
        &topics.assignment_state,
        // An entry there would make the router drop a decision with that id unrouted.
        &topics.router_seen,
        &topics.assignments,
        &topics.review_requests,
        &topics.feedback,
        &topics.decisions,
        &topics.decisions_dlq,
    ] {
        expect_code(
            send_as(&reviewer, topic, None, "forged", &forged),
            RDKafkaErrorCode::TopicAuthorizationFailed,
            &format!("the reviewer app writing {topic}"),
        );
    }
    // Nor read (or even see) decisions as received (PII in clear), the clear copies of PII-cleared
    // reviewers' assignments, a service's state or the trail.
    let peek: BaseConsumer = hitl_runtime::kafka::reader_config(&reviewer, true)
        .create()
        .unwrap();
    for topic in [
        &topics.decisions,
        &topics.assignments_pii,
        &topics.assignment_state,
        &topics.router_seen,
        &topics.audit,
    ] {
        let metadata = peek
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let error = metadata.topics().first().and_then(|t| t.error());
        assert_eq!(
            error.map(RDKafkaErrorCode::from),
            Some(RDKafkaErrorCode::TopicAuthorizationFailed),
            "the reviewer app describing {topic}"
        );
    }
    // Nor join the assignment service's group (it would take its partitions).
    let intruder: BaseConsumer = hitl_runtime::kafka::client_config(&reviewer)
        .set("group.id", "hitl-assignment")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    intruder.subscribe(&[&topics.assignments]).unwrap();
    wait_for(
        Duration::from_secs(15),
        "GroupAuthorizationFailed for the reviewer app joining hitl-assignment",
        || match intruder.poll(Duration::from_millis(100)) {
            Some(Err(error))
                if error.rdkafka_error_code()
                    == Some(RDKafkaErrorCode::GroupAuthorizationFailed) =>
            {
                Some(())
            }
            Some(Err(error)) => {
                eprintln!("the intruder's other error: {error}");
                None
            }
            _ => None,
        },
    );
    drop(intruder);
    // The publisher writes decisions only.
    let publisher = as_user(sasl, "hitl-publisher");
    expect_code(
        send_as(&publisher, &topics.outcomes, None, "forged", &forged),
        RDKafkaErrorCode::TopicAuthorizationFailed,
        "the publisher writing outcomes",
    );
    // Nor the router's seen-ids changelog: an entry there would make the router drop a decision
    // with that id unrouted, someone else's decision included.
    expect_code(
        send_as(&publisher, &topics.router_seen, None, "forged", &forged),
        RDKafkaErrorCode::TopicAuthorizationFailed,
        "the publisher writing router.seen",
    );

    // What each may do: the reviewer app puts itself on the roster…
    let rita = ReviewerStatus {
        reviewer_id: "rita".into(),
        roles: vec![],
        skills: vec![],
        pools: vec![],
        capacity: 5,
        partition: Some(0),
        presence: Presence::Online,
        updated_at: hitl_runtime::now_millis(),
    };
    send_as(
        &reviewer,
        &topics.reviewers,
        None,
        "rita",
        &codec.encode_to_vec(&topics.reviewers, &rita).unwrap(),
    )
    .expect("the reviewer app writes its roster entry");
    // …the publisher publishes decisions…
    let decisions = [
        decision("auto-1", 0.95),
        decision("auto-2", 0.97),
        decision("human-1", 0.5),
    ];
    for decision in &decisions {
        send_as(
            &publisher,
            &topics.decisions,
            None,
            &decision.decision_id,
            &codec.encode_to_vec(&topics.decisions, decision).unwrap(),
        )
        .expect("the publisher writes decisions");
    }
    // …the reviewer app reads its assignment with a group of its own (and commits there)…
    let assignments: BaseConsumer = hitl_runtime::kafka::client_config(&reviewer)
        .set("group.id", "hitl-reviewer-app-rita")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    assignments.subscribe(&[&topics.assignments]).unwrap();
    let assigned = wait_for(WAIT, "rita's assignment", || {
        let message = assignments.poll(Duration::from_millis(100))?;
        let message = message.unwrap_or_else(|error| panic!("reading assignments: {error}"));
        let event = codec
            .decode::<AssignmentEvent>(message.payload().unwrap_or_default())
            .ok()?;
        assignments
            .commit_message(&message, CommitMode::Sync)
            .expect("the reviewer app commits in its own group");
        (event.kind == AssignmentKind::Assigned && event.reviewer_id == "rita").then_some(event)
    });
    assert_eq!(assigned.decision_id, "human-1");
    // …and approves it.
    let verdict = verdict_on(&assigned, VerdictKind::Approve);
    send_as(
        &reviewer,
        &topics.verdicts,
        assigned.verdict_partition,
        &verdict.pool,
        &codec.encode_to_vec(&topics.verdicts, &verdict).unwrap(),
    )
    .expect("the reviewer app writes verdicts");

    // The reader (actuators, compliance) sees every outcome and the signed trail.
    let reader = as_user(sasl, "hitl-reader");
    let outcomes = read_as::<Outcome>(&reader, &topics.outcomes, "three outcomes", |outcomes| {
        outcomes.len() >= decisions.len()
    });
    let decided_by: BTreeMap<&str, DecidedBy> = outcomes
        .iter()
        .map(|o| (o.decision_id.as_str(), o.decided_by))
        .collect();
    assert_eq!(
        decided_by,
        BTreeMap::from([
            ("auto-1", DecidedBy::Auto),
            ("auto-2", DecidedBy::Auto),
            ("human-1", DecidedBy::Human),
        ])
    );
    let trail = read_as::<AuditRecord>(
        &reader,
        &topics.audit,
        "human-1's audit record",
        |records| {
            records
                .iter()
                .any(|r| r.decision_id == "human-1" && r.outcome.is_some())
        },
    );
    let record = trail
        .iter()
        .find(|r| r.decision_id == "human-1" && r.outcome.is_some())
        .unwrap();
    assert_eq!(
        record.outcome.as_ref().unwrap().reviewer_ids,
        vec!["rita".to_owned()]
    );
    wait_for(
        WAIT,
        "`hitl-audit verify` as hitl-reader to be clean",
        || {
            let (clean, report) = verify_as_reader(dir.path(), sasl, &topics);
            clean.then_some(()).or_else(|| {
                eprintln!("not yet: {report}");
                None
            })
        },
    );

    // The services needed nothing the file does not grant: none was refused anything.
    for service in &services {
        let log = std::fs::read_to_string(&service.log).unwrap();
        assert!(
            !log.contains("AuthorizationFailed"),
            "{} was refused something:\n{}",
            service.log.display(),
            service.log_tail()
        );
    }
    eprintln!(
        "the ACL test took {:.1} s, the broker's start included",
        started.elapsed().as_secs_f64()
    );
}
