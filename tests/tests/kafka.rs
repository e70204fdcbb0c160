//! What hitl relies on from Apache Kafka itself, shown on the real broker: transactions hide
//! aborted records from `read_committed` readers, and the assignment service's co-partitioning
//! holds with two instances under both group protocols (classic with the `range` assignor, and
//! KIP-848's `consumer` protocol with the broker-side `range` assignor), across a kill -9 and an
//! immediate restart (static membership).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hitl_schema::*;
use hitl_tests::*;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const WAIT: Duration = Duration::from_secs(90);

#[test]
fn read_committed_readers_never_see_records_of_aborted_transactions() {
    let topics = unique_topics("aborted");
    create_topics(&topics);
    let topic = &topics.outcomes;
    let settings = hitl_runtime::config::KafkaSettings {
        delivery: hitl_runtime::config::Delivery::Transactional,
        ..kafka_settings()
    };
    let producer: BaseProducer =
        hitl_runtime::kafka::loop_producer_config(&settings, &unique("aborting-producer"))
            .create()
            .unwrap();
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout).unwrap();
    let mut committed = BTreeSet::new();
    for round in 0..6 {
        let commit = round % 2 == 0;
        producer.begin_transaction().unwrap();
        for i in 0..40 {
            let key = format!(
                "{}-{round}-{i}",
                if commit { "committed" } else { "aborted" }
            );
            producer
                .send(
                    BaseRecord::to(topic)
                        .key(&key)
                        .payload("x")
                        .partition(i % topics.partitions),
                )
                .map_err(|(error, _)| error)
                .unwrap();
            if commit {
                committed.insert(key);
            }
        }
        producer.flush(timeout).unwrap();
        if commit {
            producer.commit_transaction(timeout).unwrap();
        } else {
            producer.abort_transaction(timeout).unwrap();
        }
    }
    let everything = read_topic_with(topic, false, WAIT, |records| records.len() >= 240);
    assert_eq!(
        everything.len(),
        240,
        "the aborted records were written to the log"
    );
    let visible = read_all(topic, Duration::from_secs(2));
    let keys: BTreeSet<String> = visible.iter().filter_map(|r| r.key.clone()).collect();
    assert_eq!(visible.len(), committed.len(), "each committed record once");
    assert_eq!(
        keys, committed,
        "no record of an aborted transaction is visible"
    );
}

/// Two assignment instances in one group split the pools; verdicts reach the instance that holds
/// their pool (its verdict partitions are the same numbers as its review-request partitions).
/// One instance is killed and restarted at once; returns how long the restarted process took from
/// its start to having its partitions again.
fn two_instances_split_the_pools(group_protocol: &str) -> Duration {
    const POOLS: usize = 8;
    const PER_ROUND: usize = 40;
    let topics = unique_topics(&format!("asg-{group_protocol}"));
    create_topics(&topics);
    let dir = tempfile::tempdir().unwrap();
    let group = unique("asg-group");
    // Instance ids name transactional ids: unique per test, as tests share the broker.
    let (a, b) = (unique("a"), unique("b"));
    let config = |instance: &str| {
        format!(
            "{}group_protocol = \"{group_protocol}\"\n{}\n[service]\ninstance_id = \"{instance}\"\n\
             group_id = \"{group}\"\ntick_interval = \"100ms\"\ngauge_interval = \"500ms\"\n",
            kafka_toml(),
            topics_toml(&topics),
        )
    };
    let codec = Codec::single_object();
    let producer = producer();
    for (partition, name) in ["ann", "bob"].iter().enumerate() {
        let status = ReviewerStatus {
            reviewer_id: (*name).to_owned(),
            roles: vec![],
            skills: vec![],
            pools: vec![],
            capacity: 100,
            partition: Some(partition as i32),
            presence: Presence::Online,
            updated_at: hitl_runtime::now_millis(),
        };
        let payload = codec.encode_to_vec(&topics.reviewers, &status).unwrap();
        produce(&producer, &topics.reviewers, name, &payload, &[]);
    }
    flush(&producer);

    let first = Service::start("hitl-assignment", dir.path(), &config(&a));
    let second = Service::start("hitl-assignment", dir.path(), &config(&b));
    let assigned = |service: &Service| {
        std::fs::read_to_string(&service.log)
            .unwrap_or_default()
            .contains("partitions assigned")
    };
    wait_for(WAIT, "both instances to hold partitions", || {
        (assigned(&first) && assigned(&second)).then_some(())
    });

    let stop = Arc::new(AtomicBool::new(false));
    let reviewers = reviewer_app(&topics, stop.clone(), |event, _| {
        vec![verdict_on(event, VerdictKind::Approve)]
    });
    let publish = |round: usize| {
        let producer = hitl_tests::producer();
        for i in 0..PER_ROUND {
            let pool = format!("pool-{}", i % POOLS);
            let now = hitl_runtime::now_millis();
            let request = hitl_schema::sample::review_request(
                format!("r{round}-{i:02}"),
                i as u64,
                pool.clone(),
                now,
                now + 3_600_000,
            );
            let payload = codec
                .encode_to_vec(&topics.review_requests, &request)
                .unwrap();
            produce(&producer, &topics.review_requests, &pool, &payload, &[]);
        }
        flush(&producer);
    };
    let outcomes_for = |count: usize| {
        let records = read_topic(&topics.outcomes, WAIT, |records| records.len() >= count);
        let ids: BTreeMap<String, usize> = records.iter().fold(BTreeMap::new(), |mut ids, r| {
            *ids.entry(r.key.clone().unwrap_or_default()).or_default() += 1;
            ids
        });
        (records.len(), ids)
    };

    publish(0);
    let (records, ids) = outcomes_for(PER_ROUND);
    assert_eq!(
        ids.len(),
        PER_ROUND,
        "every request decided: {ids:?}\nfirst:\n{}\nsecond:\n{}",
        first.log_tail(),
        second.log_tail()
    );
    assert_eq!(records, PER_ROUND, "one outcome each");
    let decided_by = |service: &Service| {
        service
            .metric("hitl_loop_records_in_total")
            .unwrap_or_default()
    };
    assert!(
        decided_by(&first) > 0.0 && decided_by(&second) > 0.0,
        "both instances took input"
    );

    // kill -9 one instance and restart it at once with the same instance id.
    second.kill9();
    let restarted_at = Instant::now();
    let restarted = Service::spawn("hitl-assignment", dir.path(), &config(&b));
    let back = wait_for(
        WAIT,
        "the restarted instance to hold partitions again",
        || assigned(&restarted).then(|| restarted_at.elapsed()),
    );
    publish(1);
    let (records, ids) = outcomes_for(2 * PER_ROUND);
    assert_eq!(
        ids.len(),
        2 * PER_ROUND,
        "every request decided after the restart:\nrestarted:\n{}",
        restarted.log_tail()
    );
    assert_eq!(
        records,
        2 * PER_ROUND,
        "one outcome each, across the restart"
    );
    stop.store(true, Ordering::Relaxed);
    reviewers.join().unwrap();
    eprintln!(
        "group.protocol={group_protocol}: the restarted instance held its partitions {back:?} after its start"
    );
    back
}

#[test]
fn two_assignment_instances_under_the_classic_protocol_with_range() {
    two_instances_split_the_pools("classic");
}

#[test]
fn two_assignment_instances_under_kip_848_with_the_broker_side_range_assignor() {
    two_instances_split_the_pools("consumer");
}

#[test]
fn the_sasl_listener_authenticates_scram_users_and_the_authorizer_denies_without_acls() {
    use hitl_runtime::config::{KafkaSettings, Secret, SecurityProtocol};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let Some(sasl_bootstrap) = broker().sasl_bootstrap.clone() else {
        eprintln!("skipped: the external cluster has no SASL listener named (HITL_SASL_BOOTSTRAP_SERVERS)");
        return;
    };
    let topics = unique_topics("sasl");
    create_topics(&topics);
    let as_user = |user: &str, password: &str| KafkaSettings {
        bootstrap_servers: sasl_bootstrap.clone(),
        security_protocol: SecurityProtocol::SaslPlaintext,
        sasl_mechanism: Some("SCRAM-SHA-512".into()),
        sasl_username: Some(user.into()),
        sasl_password: Some(Secret::new(password)),
        request_timeout: Duration::from_secs(10),
        ..KafkaSettings::default()
    };
    // Produces one record and waits for its delivery report: the error, if the broker refused it.
    let produce_as = |settings: &KafkaSettings| -> Result<(), String> {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = hitl_runtime::kafka::producer_config(settings)
            .set("message.timeout.ms", "10000")
            .create()
            .map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(producer.send(
                FutureRecord::to(&topics.decisions).key("k").payload("v"),
                Duration::from_secs(10),
            ))
            .map(|_| ())
            .map_err(|(error, _)| error.to_string())
    };
    // The operator's super user is authenticated and allowed.
    let admin = as_user("admin", "admin-secret");
    let metadata: BaseConsumer = hitl_runtime::kafka::reader_config(&admin, true)
        .create()
        .unwrap();
    metadata
        .fetch_metadata(Some(&topics.decisions), Duration::from_secs(10))
        .expect("admin authenticates over SASL/SCRAM");
    produce_as(&admin).expect("admin may write");
    // A wrong password is not authenticated.
    let wrong: BaseConsumer = hitl_runtime::kafka::reader_config(&as_user("admin", "guess"), true)
        .create()
        .unwrap();
    assert!(
        wrong
            .fetch_metadata(Some(&topics.decisions), Duration::from_secs(5))
            .is_err(),
        "a wrong password must not authenticate"
    );
    // An authenticated user without ACLs may not write.
    let denied = produce_as(&as_user(SCRAM_USER, SCRAM_PASSWORD));
    assert!(
        denied.is_err(),
        "the authorizer let a user without ACLs write"
    );
    eprintln!("without ACLs: {}", denied.unwrap_err());
}
