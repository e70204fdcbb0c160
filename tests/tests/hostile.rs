//! Hostile clients (issue #11, docs/trust.md): a client with nothing but Kafka access and, at
//! most, its own key tries to decide in someone else's name, to grant itself roles, to change the
//! roster, to choose its own producer, to smuggle bytes past the schema and to stall a partition
//! with oversize records. Every attempt is refused, counted in a metric, recorded in the audit trail
//! where it concerns a decision, and never applied: the decisions it targets are decided by the
//! right person only.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hitl_runtime::auth::{Kind, HEADER};
use hitl_schema::*;
use hitl_tests::*;

const WAIT: Duration = Duration::from_secs(60);

struct Run {
    dir: tempfile::TempDir,
    topics: hitl_runtime::config::Topics,
    name: String,
    codec: Codec,
}

impl Run {
    fn new(test: &str) -> Self {
        let topics = unique_topics(test);
        create_topics(&topics);
        Self {
            dir: tempfile::tempdir().unwrap(),
            topics,
            name: unique(test),
            codec: Codec::single_object(),
        }
    }

    fn shared(&self) -> String {
        format!("{}\n{}\n", kafka_toml(), topics_toml(&self.topics))
    }

    /// The three services: the policy sends `senior` work to a pool that needs the `senior`
    /// role, everything else to `general`.
    fn start(&self) -> (Service, Service, Service) {
        let policy = self.dir.path().join("policy.yaml");
        std::fs::write(
            &policy,
            "version: hostile\nrules:\n\
             - { name: senior, when: { workflow: [senior] }, then: { review: { pool: senior, roles: [senior], sla: 1h } } }\n\
             default: { review: { pool: general, sla: 1h } }\n",
        )
        .unwrap();
        let router = Service::start(
            "hitl-router",
            self.dir.path(),
            &format!(
                "{}[service]\npolicy_path = \"{}\"\ninstance_id = \"{n}\"\ngroup_id = \"{n}-router\"\n",
                self.shared(),
                policy.display(),
                n = self.name
            ),
        );
        let assignment = Service::start(
            "hitl-assignment",
            self.dir.path(),
            &format!(
                "{}[service]\ninstance_id = \"{n}\"\ngroup_id = \"{n}-assignment\"\ntick_interval = \"100ms\"\n\
                 [service.default_pool]\nlease = \"10m\"\nescalate_at_sla = []\ntiers = []\n",
                self.shared(),
                n = self.name
            ),
        );
        let audit = Service::start(
            "hitl-audit",
            self.dir.path(),
            &format!(
                "{}[service]\ninstance_id = \"{n}\"\ngroup_id = \"{n}-audit\"\n\
                 signing_key = \"7c1f4b0a9e3d2c5b6a7f8e9d0c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d8c9b\"\n\
                 key_id = \"hostile-1\"\nhash_key = \"hostile-test-hash-key-0123456789\"\n\
                 tick_interval = \"100ms\"\ncheckpoint_interval = \"500ms\"\n",
                self.shared(),
                n = self.name
            ),
        );
        (router, assignment, audit)
    }

    fn status(&self, id: &str, roles: &[&str], partition: i32, presence: Presence) -> Vec<u8> {
        let status = ReviewerStatus {
            reviewer_id: id.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            skills: vec![],
            pools: vec![],
            capacity: 10,
            partition: Some(partition),
            presence,
            updated_at: hitl_runtime::now_millis(),
        };
        self.codec
            .encode_to_vec(&self.topics.reviewers, &status)
            .unwrap()
    }

    fn decision(&self, id: &str, workflow: &str, producer: &str) -> Vec<u8> {
        let decision = Decision {
            decision_id: id.into(),
            workflow: workflow.into(),
            subject: format!("subject-{id}"),
            action: "block".into(),
            confidence: 0.5,
            risk_score: None,
            amount: Some(100.0),
            priority: None,
            producer: producer.into(),
            model_name: "m".into(),
            model_version: None,
            features: BTreeMap::new(),
            context: BTreeMap::new(),
            sensitive_fields: vec![],
            created_at: hitl_runtime::now_millis(),
            sla_ms: None,
        };
        self.codec
            .encode_to_vec(&self.topics.decisions, &decision)
            .unwrap()
    }

    fn verdict(&self, verdict: &Verdict) -> Vec<u8> {
        self.codec
            .encode_to_vec(&self.topics.verdicts, verdict)
            .unwrap()
    }

    fn outcomes(&self) -> BTreeMap<String, Vec<Outcome>> {
        let mut outcomes: BTreeMap<String, Vec<Outcome>> = BTreeMap::new();
        for record in everything(&self.topics.outcomes) {
            if let Ok(outcome) = self
                .codec
                .decode::<Outcome>(record.payload.as_deref().unwrap_or_default())
            {
                outcomes
                    .entry(outcome.decision_id.clone())
                    .or_default()
                    .push(outcome);
            }
        }
        outcomes
    }

    /// The latest audit record of `decision_id`.
    fn trail(&self, decision_id: &str) -> Option<AuditRecord> {
        everything(&self.topics.audit)
            .into_iter()
            .filter(|record| record.key.as_deref() == Some(decision_id))
            .filter_map(|record| {
                self.codec
                    .decode::<AuditRecord>(record.payload.as_deref()?)
                    .ok()
            })
            .max_by_key(|record| record.version)
    }

    /// Dead letters by `hitl.error.class`.
    fn dead_letters(&self) -> BTreeMap<String, Vec<Received>> {
        let mut classes: BTreeMap<String, Vec<Received>> = BTreeMap::new();
        for record in everything(&self.topics.decisions_dlq) {
            let class = record
                .headers
                .get("hitl.error.class")
                .cloned()
                .unwrap_or_default();
            classes.entry(class).or_default().push(record);
        }
        classes
    }
}

/// Every record of `topic` up to its end now (read_committed: up to the last stable offset).
fn everything(topic: &str) -> Vec<Received> {
    use rdkafka::message::{Headers, Message};
    let mut records = Vec::new();
    hitl_runtime::kafka::read_topic(&kafka_settings(), topic, WAIT, |message| {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| {
                        (
                            header.key.to_owned(),
                            String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(Received {
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|key| String::from_utf8_lossy(key).into_owned()),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        });
    })
    .expect("read the topic");
    records
}

fn metric(service: &Service, series: &str) -> f64 {
    service.metric(series).unwrap_or(0.0)
}

fn signed_by(signer: &hitl_runtime::auth::Signer, kind: Kind, key: &str, payload: &[u8]) -> String {
    signer.sign(kind, Some(key.as_bytes()), Some(payload))
}

/// Reviewers and impostors: blind and informed impersonation, replay, self-granted roles, a
/// second identity for a quorum, another reviewer set offline, an oversize rationale, review
/// requests written past the router. Every
/// attempt is refused (a metric each), the verdicts are recorded in the decisions' trails as
/// rejected, and only alice and bob decide.
#[test]
fn hostile_reviewers_cannot_decide_for_others_or_change_the_roster() {
    let run = Run::new("hostile-reviewers");
    let (_router, assignment, audit) = run.start();
    let producer = producer();
    let trust = trust();

    // The roster, as the gateway vouches for it: alice (senior) and bob. mallory has an app key
    // of her own (reviewer mallory, no roles) and nothing else.
    let gateway = |id: &str, payload: &[u8]| signed_by(&trust.gateway, Kind::Reviewer, id, payload);
    for (id, roles, partition) in [("alice", &["senior"][..], 0), ("bob", &[][..], 1)] {
        let payload = run.status(id, roles, partition, Presence::Online);
        produce(
            &producer,
            &run.topics.reviewers,
            id,
            &payload,
            &[(HEADER, &gateway(id, &payload))],
        );
    }
    // Roster attacks, each with mallory's own key or none:
    // a role she was not granted;
    let promoted = run.status("mallory", &["senior"], 2, Presence::Online);
    produce(
        &producer,
        &run.topics.reviewers,
        "mallory",
        &promoted,
        &[(
            HEADER,
            &signed_by(&trust.mallory, Kind::Reviewer, "mallory", &promoted),
        )],
    );
    // a second identity, to make up a quorum alone;
    let twin = run.status("mallory-2", &[], 3, Presence::Online);
    produce(
        &producer,
        &run.topics.reviewers,
        "mallory-2",
        &twin,
        &[(
            HEADER,
            &signed_by(&trust.mallory, Kind::Reviewer, "mallory-2", &twin),
        )],
    );
    // alice set offline, with mallory's key and with no signature at all;
    let offline = run.status("alice", &["senior"], 0, Presence::Offline);
    produce(
        &producer,
        &run.topics.reviewers,
        "alice",
        &offline,
        &[(
            HEADER,
            &signed_by(&trust.mallory, Kind::Reviewer, "alice", &offline),
        )],
    );
    produce_unsigned(&producer, &run.topics.reviewers, "alice", &offline, &[]);
    // and bob's entry forged under the gateway's key id (a guessed signature).
    let forged = format!("hmac-sha256:gateway-test:{}", "ab".repeat(32));
    produce_unsigned(
        &producer,
        &run.topics.reviewers,
        "bob",
        &run.status("bob", &[], 1, Presence::Offline),
        &[(HEADER, &forged)],
    );
    flush(&producer);
    wait_for(WAIT, "five roster entries refused", || {
        let refused = metric(
            &assignment,
            r#"hitl_assignment_rejected_roster_entries_total{reason="not_allowed"}"#,
        ) + metric(
            &assignment,
            r#"hitl_assignment_rejected_roster_entries_total{reason="unauthenticated"}"#,
        ) + metric(
            &assignment,
            r#"hitl_assignment_rejected_roster_entries_total{reason="bad_signature"}"#,
        );
        (refused >= 5.0).then_some(())
    });
    assert_eq!(
        metric(
            &assignment,
            r#"hitl_assignment_rejected_roster_entries_total{reason="not_allowed"}"#
        ),
        3.0,
        "the promotion, the twin and alice set offline by mallory"
    );

    // A review request written straight to the topic (choosing its own pool, roles and quorum):
    // unsigned, and signed by a publisher's key. Only the router's signature makes one.
    let smuggled = hitl_schema::sample::review_request(
        "smuggled".into(),
        0,
        "general".into(),
        hitl_runtime::now_millis(),
        hitl_runtime::now_millis() + 3_600_000,
    );
    let payload = run
        .codec
        .encode_to_vec(&run.topics.review_requests, &smuggled)
        .unwrap();
    produce_unsigned(
        &producer,
        &run.topics.review_requests,
        "general",
        &payload,
        &[],
    );
    produce_unsigned(
        &producer,
        &run.topics.review_requests,
        "general",
        &payload,
        &[(
            HEADER,
            &signed_by(&trust.publisher, Kind::ReviewRequest, "general", &payload),
        )],
    );

    // Work: four general items and two that need a senior.
    for i in 0..4 {
        let id = format!("gen-{i}");
        produce(
            &producer,
            &run.topics.decisions,
            &id,
            &run.decision(&id, "payments", "fraud-model"),
            &[],
        );
    }
    for i in 0..2 {
        let id = format!("senior-{i}");
        produce(
            &producer,
            &run.topics.decisions,
            &id,
            &run.decision(&id, "senior", "fraud-model"),
            &[],
        );
    }
    flush(&producer);

    // Every assignment as it appears on the topic (anyone who can read it sees the leases).
    let assigned: Arc<Mutex<Vec<AssignmentEvent>>> = Arc::default();
    let tail = Tail::new(&run.topics.assignments);
    let collect = |assigned: &Arc<Mutex<Vec<AssignmentEvent>>>| {
        while let Some(record) = tail.next(Duration::from_millis(200)) {
            if let Ok(event) = run
                .codec
                .decode::<AssignmentEvent>(record.payload.as_deref().unwrap_or_default())
            {
                if event.kind == AssignmentKind::Assigned && event.reason.is_none() {
                    assigned.lock().unwrap().push(event);
                }
            }
        }
    };
    wait_for(WAIT, "six items assigned", || {
        collect(&assigned);
        (assigned.lock().unwrap().len() >= 6).then_some(())
    });
    let events = assigned.lock().unwrap().clone();
    for event in &events {
        assert!(
            ["alice", "bob"].contains(&event.reviewer_id.as_str()),
            "assigned to {} (a refused roster entry was applied)",
            event.reviewer_id
        );
        if event.decision_id.starts_with("senior-") {
            assert_eq!(
                event.reviewer_id, "alice",
                "only alice holds the senior role"
            );
        }
        let (base, digest) = event.assignment_id.split_once('.').expect("a lease token");
        assert!(
            base.starts_with(&event.decision_id) && digest.len() == 32,
            "lease ids carry an unguessable part: {}",
            event.assignment_id
        );
    }
    let lease = |id: &str| {
        events
            .iter()
            .find(|event| event.decision_id == id)
            .unwrap()
            .clone()
    };

    let rejected = |reason: &str| {
        metric(
            &assignment,
            &format!(r#"hitl_assignment_rejected_verdicts_total{{reason="{reason}"}}"#),
        )
    };
    // 1. Blind: a guessed lease id, no signature.
    let target = lease("gen-0");
    let mut blind = verdict_on(&target, VerdictKind::Approve);
    blind.assignment_id = format!("{}#1", target.decision_id);
    blind.reviewer_id = "mallory".into();
    produce_unsigned(
        &producer,
        &run.topics.verdicts,
        &blind.pool,
        &run.verdict(&blind),
        &[],
    );
    // 2. With the holder's lease read from the topic, in the holder's name: unsigned, and signed
    //    with mallory's own key.
    let informed = verdict_on(&target, VerdictKind::Reject);
    let payload = run.verdict(&informed);
    produce_unsigned(
        &producer,
        &run.topics.verdicts,
        &informed.pool,
        &payload,
        &[],
    );
    produce_unsigned(
        &producer,
        &run.topics.verdicts,
        &informed.pool,
        &payload,
        &[(
            HEADER,
            &signed_by(&trust.mallory, Kind::Verdict, &informed.pool, &payload),
        )],
    );
    // 3. A senior item approved by alice's own app key... in bob's name.
    let senior = lease("senior-0");
    let mut as_bob = verdict_on(&senior, VerdictKind::Approve);
    as_bob.reviewer_id = "bob".into();
    let payload = run.verdict(&as_bob);
    produce_unsigned(
        &producer,
        &run.topics.verdicts,
        &as_bob.pool,
        &payload,
        &[(
            HEADER,
            &signed_by(&trust.alice, Kind::Verdict, &as_bob.pool, &payload),
        )],
    );
    // 4. A rationale over the bound (4 KiB), properly signed by the holder's gateway.
    let long = lease("gen-1");
    let mut essay = verdict_on(&long, VerdictKind::Approve);
    essay.rationale = "x".repeat(6 * 1024);
    produce(
        &producer,
        &run.topics.verdicts,
        &essay.pool,
        &run.verdict(&essay),
        &[],
    );
    // 5. A megabyte verdict: dead-lettered unread.
    let mut huge = verdict_on(&long, VerdictKind::Approve);
    huge.rationale = "y".repeat(990_000);
    produce(
        &producer,
        &run.topics.verdicts,
        &huge.pool,
        &run.verdict(&huge),
        &[],
    );
    flush(&producer);
    wait_for(WAIT, "the impostors' verdicts rejected", || {
        (rejected("unauthenticated") >= 2.0
            && rejected("not_authorized") >= 2.0
            && rejected("oversize") >= 1.0)
            .then_some(())
    });
    assert!(run.outcomes().is_empty(), "nothing decided by impostors");

    // The right people decide, with their gateway; then alice's verdict is replayed (copied
    // from the topic with its signature) onto the decided item.
    for event in &events {
        let verdict = verdict_on(event, VerdictKind::Approve);
        produce(
            &producer,
            &run.topics.verdicts,
            &verdict.pool,
            &run.verdict(&verdict),
            &[],
        );
    }
    flush(&producer);
    wait_for(WAIT, "six outcomes", || {
        (run.outcomes().len() >= 6).then_some(())
    });
    let sent = everything(&run.topics.verdicts);
    let original = sent
        .iter()
        .rev()
        .find(|record| {
            run.codec
                .decode::<Verdict>(record.payload.as_deref().unwrap_or_default())
                .is_ok_and(|v| v.decision_id == "senior-0" && v.reviewer_id == "alice")
        })
        .expect("alice's verdict on the topic");
    let before_replay = rejected("already_decided") + rejected("duplicate");
    produce_unsigned(
        &producer,
        &run.topics.verdicts,
        original.key.as_deref().unwrap(),
        original.payload.as_deref().unwrap(),
        &[(HEADER, &original.headers[HEADER])],
    );
    flush(&producer);
    wait_for(WAIT, "the replay rejected", || {
        (rejected("already_decided") + rejected("duplicate") > before_replay).then_some(())
    });

    // One outcome each, decided by the holder of the lease.
    let outcomes = run.outcomes();
    assert_eq!(outcomes.len(), 6);
    for event in &events {
        let outcome = &outcomes[&event.decision_id];
        assert_eq!(outcome.len(), 1, "one outcome for {}", event.decision_id);
        assert_eq!(outcome[0].status, OutcomeStatus::Approved);
        assert_eq!(outcome[0].reviewer_ids, vec![event.reviewer_id.clone()]);
    }
    // The megabyte verdict is a dead letter, cut to fit and saying so; the smuggled review
    // requests are dead letters too, and were never assigned.
    let dead = run.dead_letters();
    assert_eq!(dead["auth.unauthenticated"].len(), 1, "{:?}", dead.keys());
    assert_eq!(dead["auth.not_allowed"].len(), 1, "{:?}", dead.keys());
    assert!(!events.iter().any(|event| event.decision_id == "smuggled"));
    let oversize = &dead["oversize"];
    assert_eq!(oversize.len(), 1, "{:?}", dead.keys());
    assert!(oversize[0].headers.contains_key("hitl.error.truncated"));

    // The trail of gen-0 records the impostors' attempts as rejected verdicts.
    wait_for(WAIT, "the rejections in gen-0's trail", || {
        let trail = run.trail("gen-0")?;
        let reasons: Vec<String> = trail
            .timeline
            .iter()
            .filter(|entry| entry.kind == "VERDICT_REJECTED")
            .filter_map(|entry| entry.reason.clone())
            .collect();
        (reasons.iter().filter(|r| *r == "unauthenticated").count() >= 2
            && reasons.iter().any(|r| r == "not_authorized")
            && trail.outcome.is_some())
        .then_some(())
    });
    let trail = run.trail("gen-0").unwrap();
    assert_eq!(
        trail.outcome.as_ref().unwrap().reviewer_ids,
        vec![target.reviewer_id.clone()],
        "the signed trail names the reviewer who decided"
    );

    // Alice loses the senior role (the gateway says so); her old entry, copied from the topic
    // with its signature, is sent again to bring it back: refused as a replay, and a new senior
    // item is not hers.
    let old_entry = everything(&run.topics.reviewers)
        .into_iter()
        .find(|record| {
            record.key.as_deref() == Some("alice") && record.headers.contains_key(HEADER)
        })
        .expect("alice's first entry");
    std::thread::sleep(Duration::from_millis(5));
    let demoted = run.status("alice", &[], 0, Presence::Online);
    produce(
        &producer,
        &run.topics.reviewers,
        "alice",
        &demoted,
        &[(HEADER, &gateway("alice", &demoted))],
    );
    produce_unsigned(
        &producer,
        &run.topics.reviewers,
        "alice",
        old_entry.payload.as_deref().unwrap(),
        &[(HEADER, &old_entry.headers[HEADER])],
    );
    flush(&producer);
    wait_for(WAIT, "the replayed roster entry refused", || {
        (metric(
            &assignment,
            r#"hitl_assignment_rejected_roster_entries_total{reason="not_allowed"}"#,
        ) >= 4.0)
            .then_some(())
    });
    produce(
        &producer,
        &run.topics.decisions,
        "senior-9",
        &run.decision("senior-9", "senior", "fraud-model"),
        &[],
    );
    flush(&producer);
    wait_for(WAIT, "senior-9 queued", || {
        run.trail("senior-9")
            .filter(|trail| trail.timeline.iter().any(|entry| entry.kind == "QUEUED"))
    });
    std::thread::sleep(Duration::from_secs(2));
    collect(&assigned);
    assert!(
        !assigned
            .lock()
            .unwrap()
            .iter()
            .any(|event| event.decision_id == "senior-9"),
        "a senior item went to the demoted alice"
    );
    drop(audit);
}

/// Publishers: a decision that names a producer its key was not granted (so that its author
/// could approve it), one signed by a reviewer's key, one unsigned, one with bytes after its
/// datum, one with a foreign schema fingerprint, and a megabyte record (and a valid one whose context
/// grows sixfold once JSON-escaped, which is routed and audited). Each is dead-lettered with
/// its reason (the trail records the ones with a decision id); the partition they were on keeps
/// routing, and the time it took is printed.
#[test]
fn hostile_publishers_cannot_choose_their_producer_smuggle_bytes_or_stall_a_partition() {
    let run = Run::new("hostile-publishers");
    let (router, _assignment, _audit) = run.start();
    let producer = producer();
    let trust = trust();

    // All on one partition (one key), so that a stall would show.
    let key = "one-partition";
    let send = |payload: &[u8], headers: &[(&str, &str)]| {
        produce_unsigned(&producer, &run.topics.decisions, key, payload, headers)
    };
    let publisher = |payload: &[u8]| signed_by(&trust.publisher, Kind::Decision, key, payload);

    // Self-approval: the author ("alice", a reviewer) is not a producer this key may name.
    let alice = run.decision("self-approval", "payments", "alice");
    send(&alice, &[(HEADER, &publisher(&alice))]);
    // A reviewer's key publishing.
    let by_mallory = run.decision("by-mallory", "payments", "fraud-model");
    send(
        &by_mallory,
        &[(
            HEADER,
            &signed_by(&trust.mallory, Kind::Decision, key, &by_mallory),
        )],
    );
    // Unsigned.
    let unsigned = run.decision("unsigned", "payments", "fraud-model");
    send(&unsigned, &[]);
    // A valid signature on other bytes (a verdict's signature does not make a decision).
    let retargeted = run.decision("retargeted", "payments", "fraud-model");
    send(
        &retargeted,
        &[(
            HEADER,
            &signed_by(&trust.publisher, Kind::Verdict, key, &retargeted),
        )],
    );
    // Trailing bytes after a valid datum, signed: the publisher's own bytes, still refused.
    let mut trailing = run.decision("trailing", "payments", "fraud-model");
    trailing.extend_from_slice(b"\x02\x0cgeneral");
    send(&trailing, &[(HEADER, &publisher(&trailing))]);
    // A schema fingerprint nobody registered.
    let mut foreign = run.decision("foreign", "payments", "fraud-model");
    foreign[2..10].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3]);
    send(&foreign, &[(HEADER, &publisher(&foreign))]);
    // A megabyte record (near the broker's limit).
    let mut huge = run.decision("huge", "payments", "fraud-model");
    huge.resize(1000 * 1000 - 2048, b'z');
    let sent_huge = Instant::now();
    send(&huge, &[(HEADER, &publisher(&huge))]);
    // A valid decision whose context is 60 KB of control characters: six times larger once
    // JSON-escaped (`\u0001`). It must be routed and audited like any other, not stall anything.
    let escaped = {
        let mut decision: Decision = run
            .codec
            .decode(&run.decision("escaped", "payments", "fraud-model"))
            .unwrap();
        for i in 0..4 {
            decision
                .context
                .insert(format!("blob-{i}"), "\u{1}".repeat(15_000));
        }
        decision.sensitive_fields = vec!["blob-0".into()];
        run.codec
            .encode_to_vec(&run.topics.decisions, &decision)
            .unwrap()
    };
    send(&escaped, &[(HEADER, &publisher(&escaped))]);
    // And a good decision right behind them all, on the same partition.
    let good = run.decision("good", "payments", "fraud-model");
    send(&good, &[(HEADER, &publisher(&good))]);
    flush(&producer);

    let review = wait_for(WAIT, "the good decision routed", || {
        everything(&run.topics.review_requests)
            .into_iter()
            .find_map(|record| {
                run.codec
                    .decode::<ReviewRequest>(record.payload.as_deref()?)
                    .ok()
                    .filter(|request| request.decision.decision_id == "good")
            })
    });
    println!(
        "the decision behind a 1 MB record and six hostile ones on its partition was routed {} ms after the 1 MB record was sent",
        sent_huge.elapsed().as_millis()
    );
    assert_eq!(review.decision.producer, "fraud-model");
    let requests = everything(&run.topics.review_requests);
    assert_eq!(
        requests.len(),
        2,
        "only the escaped and the good decision reached people"
    );

    let dead = run.dead_letters();
    let classes: BTreeMap<&str, usize> = dead.iter().map(|(c, r)| (c.as_str(), r.len())).collect();
    assert_eq!(classes.get("auth.not_allowed"), Some(&2), "{classes:?}");
    assert_eq!(classes.get("auth.unauthenticated"), Some(&1), "{classes:?}");
    assert_eq!(classes.get("auth.bad_signature"), Some(&1), "{classes:?}");
    assert_eq!(classes.get("decode.avro"), Some(&1), "{classes:?}");
    assert_eq!(
        classes.get("decode.unknown_schema"),
        Some(&1),
        "{classes:?}"
    );
    assert_eq!(classes.get("oversize"), Some(&1), "{classes:?}");
    assert_eq!(dead.values().map(Vec::len).sum::<usize>(), 7, "{classes:?}");
    assert!(dead["oversize"][0]
        .headers
        .contains_key("hitl.error.truncated"));
    let messages: Vec<&str> = dead
        .values()
        .flatten()
        .filter_map(|record| record.headers.get("hitl.error.message").map(String::as_str))
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("may not publish as producer `alice`")),
        "{messages:?}"
    );
    assert!(
        metric(
            &router,
            r#"hitl_router_dead_letters_total{class="auth.not_allowed"}"#
        ) >= 2.0
    );
    // The escaped decision has its trail (the audit's bounds cover escaping).
    wait_for(WAIT, "the escaped decision's trail", || {
        run.trail("escaped")
    });
    // The refused self-approval is on its decision's trail, as dead-lettered.
    wait_for(WAIT, "the self-approval's trail", || {
        let trail = run.trail("self-approval")?;
        trail
            .timeline
            .iter()
            .any(|entry| {
                entry.kind == "DEAD_LETTERED"
                    && entry
                        .reason
                        .as_deref()
                        .is_some_and(|r| r.starts_with("auth.not_allowed"))
            })
            .then_some(())
    });
}

/// The development keys published in the repository are refused unless a service is started with
/// `--dev`, and the refusal names the field.
#[test]
fn development_keys_in_a_production_config_are_refused() {
    let repository = repository();
    for (binary, config, field) in [
        ("hitl-router", "config/router.toml", "trust.signing_secret"),
        (
            "hitl-assignment",
            "config/assignment.toml",
            "trust.signing_secret",
        ),
        (
            "hitl-assignment",
            "config/assignment.toml",
            "service.lease_secret",
        ),
        ("hitl-audit", "config/audit.toml", "service.signing_key"),
    ] {
        let output = std::process::Command::new(binary_path(binary))
            .current_dir(&repository)
            .env_remove("HITL_TRUST__DEV")
            .args(["--config", config])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{binary}: {stderr}");
        assert!(
            stderr.contains(field) && stderr.contains("development key"),
            "{binary}: {field} not named: {stderr}"
        );
    }
    // The same files with --dev: the keys are accepted (the service then starts; stopped here).
    let mut child = std::process::Command::new(binary_path("hitl-router"))
        .current_dir(&repository)
        .args(["--dev", "--config", "config/router.toml"])
        .env("HITL_KAFKA__BOOTSTRAP_SERVERS", &broker().bootstrap)
        .env("HITL_HTTP__LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("HITL_SERVICE__CREATE_TOPICS", "false")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    assert!(
        running,
        "with --dev the router starts: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn binary_path(name: &str) -> std::path::PathBuf {
    binary(name)
}
