//! The assignment service, as a real process, against a real broker, with simulated reviewers: the
//! tests publish roster entries and verdicts and read assignments as reviewer apps would.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use hitl_schema::*;
use hitl_tests::*;

struct Run {
    dir: tempfile::TempDir,
    topics: hitl_runtime::config::Topics,
    instance: String,
    codec: Codec,
}

impl Run {
    fn new(test: &str) -> Self {
        let topics = unique_topics(test);
        create_topics(&topics);
        Self {
            dir: tempfile::tempdir().unwrap(),
            topics,
            instance: unique("assignment"),
            codec: Codec::single_object(),
        }
    }

    /// `pools` is TOML for `[service.pools.*]` tables (after the `[service]` keys).
    fn config(&self, pools: &str) -> String {
        format!(
            "{}\n{}\n[service]\ninstance_id = \"{}\"\ngroup_id = \"{}-group\"\ntick_interval = \"100ms\"\n\
             gauge_interval = \"500ms\"\n{pools}\n",
            kafka_toml(),
            topics_toml(&self.topics),
            self.instance,
            self.instance,
        )
    }

    fn start(&self, pools: &str) -> Service {
        Service::start("hitl-assignment", self.dir.path(), &self.config(pools))
    }

    fn reviewer(
        &self,
        id: &str,
        roles: &[&str],
        capacity: i32,
        partition: i32,
        presence: Presence,
    ) {
        let status = ReviewerStatus {
            reviewer_id: id.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            skills: vec![],
            pools: vec![],
            capacity,
            partition: Some(partition),
            presence,
            updated_at: now_millis(),
        };
        let payload = self
            .codec
            .encode_to_vec(&self.topics.reviewers, &status)
            .unwrap();
        let producer = producer();
        produce(&producer, &self.topics.reviewers, id, &payload, &[]);
        flush(&producer);
    }

    fn requests(&self, requests: &[ReviewRequest]) {
        let producer = producer();
        for request in requests {
            let payload = self
                .codec
                .encode_to_vec(&self.topics.review_requests, request)
                .unwrap();
            produce(
                &producer,
                &self.topics.review_requests,
                &request.pool,
                &payload,
                &[],
            );
        }
        flush(&producer);
    }

    fn verdict(&self, event: &AssignmentEvent, kind: VerdictKind) {
        self.send_verdict(&verdict_on(event, kind));
    }

    fn send_verdict(&self, verdict: &Verdict) {
        let payload = self
            .codec
            .encode_to_vec(&self.topics.verdicts, verdict)
            .unwrap();
        let producer = producer();
        produce(
            &producer,
            &self.topics.verdicts,
            &verdict.pool,
            &payload,
            &[],
        );
        flush(&producer);
    }
}

fn now_millis() -> i64 {
    hitl_runtime::now_millis()
}

fn request(id: &str, pool: &str, sla: Duration) -> ReviewRequest {
    let now = now_millis();
    let mut context = BTreeMap::new();
    context.insert("customer".to_owned(), "Alice Example".to_owned());
    context.insert("country".to_owned(), "DE".to_owned());
    ReviewRequest {
        decision: Arc::new(Decision {
            decision_id: id.to_owned(),
            workflow: "payments.card".into(),
            subject: format!("txn-{id}"),
            action: "approve".into(),
            confidence: 0.6,
            risk_score: Some(0.4),
            amount: Some(250.0),
            priority: None,
            producer: "fraud-model".into(),
            model_name: "fraud".into(),
            model_version: Some("7".into()),
            features: BTreeMap::new(),
            context,
            sensitive_fields: vec!["customer".into()],
            created_at: now,
            sla_ms: None,
        }),
        kind: ReviewKind::Review,
        pool: pool.to_owned(),
        required_roles: vec![],
        priority_tier: "normal".into(),
        sla_deadline: now + sla.as_millis() as i64,
        quorum: 1,
        policy_rule: "test-rule".into(),
        policy_version: "test-1".into(),
        auto_status: None,
        routed_at: now,
    }
}

fn decode<T: Record>(records: &[Received]) -> Vec<T> {
    let codec = Codec::single_object();
    records
        .iter()
        .filter_map(|r| r.payload.as_deref())
        .map(|payload| codec.decode::<T>(payload).expect("decodes"))
        .collect()
}

/// Assignment events read so far, with the partition each arrived on.
fn assignment_events(records: &[Received]) -> Vec<(i32, AssignmentEvent)> {
    let codec = Codec::single_object();
    records
        .iter()
        .filter_map(|r| Some((r.partition, codec.decode(r.payload.as_deref()?).ok()?)))
        .collect()
}

fn count_kind(records: &[Received], kind: AssignmentKind) -> usize {
    assignment_events(records)
        .iter()
        .filter(|(_, e)| e.kind == kind && e.reason.as_deref() != Some("renewed"))
        .count()
}

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn balances_across_reviewer_partitions_masks_pii_and_decides_on_approval() {
    let run = Run::new("asg-balance");
    run.reviewer("ann", &[], 2, 0, Presence::Online);
    run.reviewer("bob", &["pii"], 2, 1, Presence::Online);
    let service = run.start("");
    let requests: Vec<ReviewRequest> = (0..4)
        .map(|i| request(&format!("bal-{i}"), "general", Duration::from_secs(3600)))
        .collect();
    run.requests(&requests);

    let tail = Tail::new(&run.topics.assignments);
    let mut seen = Vec::new();
    assert!(
        tail.until(&mut seen, WAIT, |r| count_kind(r, AssignmentKind::Assigned)
            >= 4),
        "four assignments; log:\n{}",
        service.log_tail()
    );
    let events = assignment_events(&seen);
    let mut per_reviewer: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (partition, event) in &events {
        per_reviewer
            .entry(event.reviewer_id.as_str())
            .or_default()
            .push(*partition);
        // Each reviewer reads its own partition; nobody sees the customer's name on
        // hitl.assignments, which every reviewer app may read.
        let expected_partition = if event.reviewer_id == "ann" { 0 } else { 1 };
        assert_eq!(*partition, expected_partition, "{event:?}");
        assert_eq!(event.context["customer"], "***", "{event:?}");
        assert_eq!(event.context["country"], "DE");
    }
    assert_eq!(per_reviewer["ann"].len(), 2, "{per_reviewer:?}");
    assert_eq!(per_reviewer["bob"].len(), 2, "{per_reviewer:?}");
    // bob holds the pool's PII role: his two assignments, in clear, on hitl.assignments.pii
    // (readable only by PII-cleared reviewer apps), on his partition; nothing there for ann.
    let clear = assignment_events(&read_at_least(&run.topics.assignments_pii, 2, WAIT));
    assert_eq!(clear.len(), 2, "{clear:?}");
    for (partition, event) in &clear {
        assert_eq!(event.reviewer_id, "bob");
        assert_eq!(*partition, 1);
        assert_ne!(event.context["customer"], "***");
        assert!(events
            .iter()
            .any(|(_, masked)| masked.assignment_id == event.assignment_id));
    }

    for (_, event) in &events {
        run.verdict(event, VerdictKind::Approve);
    }
    let outcomes: Vec<Outcome> = decode(&read_at_least(&run.topics.outcomes, 4, WAIT));
    assert_eq!(outcomes.len(), 4, "log:\n{}", service.log_tail());
    for outcome in &outcomes {
        assert_eq!(outcome.decided_by, DecidedBy::Human);
        assert_eq!(outcome.status, OutcomeStatus::Approved);
        assert_eq!(outcome.policy_rule, "test-rule");
        let holder = events
            .iter()
            .find(|(_, e)| e.decision_id == outcome.decision_id)
            .map(|(_, e)| e.reviewer_id.clone())
            .unwrap();
        assert_eq!(outcome.reviewer_ids, [holder]);
    }
    let lifecycle: Vec<LifecycleEvent> =
        decode(&read_all(&run.topics.lifecycle, Duration::from_secs(2)));
    for request in &requests {
        let kinds: Vec<LifecycleKind> = lifecycle
            .iter()
            .filter(|e| e.decision_id == request.decision.decision_id)
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                LifecycleKind::Queued,
                LifecycleKind::Assigned,
                LifecycleKind::Verdict,
                LifecycleKind::Outcome
            ]
        );
    }
    wait_for(Duration::from_secs(10), "outcome metrics", || {
        (service.metric(r#"hitl_assignment_outcomes_total{pool="general",decided_by="HUMAN",overridden="false"}"#)? >= 4.0).then_some(())
    });
    assert_eq!(service.terminate(), Some(0));
}

#[test]
fn lease_expiry_revokes_and_reassigns_to_another_reviewer() {
    let run = Run::new("asg-lease");
    run.reviewer("ann", &[], 1, 0, Presence::Online);
    run.reviewer("bob", &[], 1, 1, Presence::Online);
    let service = run.start(
        "[service.pools.fast]\nlease = \"3s\"\nverdict_grace = \"0s\"\nescalate_after_expiries = 0\nescalate_at_sla = []\n",
    );
    run.requests(&[request("lease-1", "fast", Duration::from_secs(3600))]);
    let tail = Tail::new(&run.topics.assignments);
    let mut seen = Vec::new();
    // Partitions are read independently: wait for both events.
    assert!(
        tail.until(&mut seen, WAIT, |r| count_kind(r, AssignmentKind::Assigned)
            >= 2
            && count_kind(r, AssignmentKind::Revoked) >= 1),
        "revoked and assigned again; log:\n{}",
        service.log_tail()
    );
    let mut events = assignment_events(&seen);
    events.sort_by_key(|(_, e)| (e.attempt, e.kind == AssignmentKind::Assigned));
    let (first_partition, first) = &events
        .iter()
        .find(|(_, e)| e.kind == AssignmentKind::Assigned)
        .unwrap();
    assert_eq!(first.reviewer_id, "ann");
    assert_eq!(*first_partition, 0);
    let revoked = events
        .iter()
        .find(|(_, e)| e.kind == AssignmentKind::Revoked)
        .expect("a REVOKED event");
    assert_eq!(revoked.0, 0, "REVOKED goes to the holder's partition");
    assert_eq!(revoked.1.assignment_id, first.assignment_id);
    assert_eq!(revoked.1.reason.as_deref(), Some("lease_expired"));
    let second = &events
        .iter()
        .filter(|(_, e)| e.kind == AssignmentKind::Assigned)
        .nth(1)
        .unwrap()
        .1;
    assert_eq!(second.reviewer_id, "bob");
    assert_eq!(second.attempt, 2);
    // ann's late verdict is rejected; bob's counts.
    run.verdict(first, VerdictKind::Approve);
    run.verdict(second, VerdictKind::Reject);
    let outcomes: Vec<Outcome> = decode(&read_at_least(&run.topics.outcomes, 1, WAIT));
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].status, OutcomeStatus::Rejected);
    assert_eq!(outcomes[0].reviewer_ids, ["bob"]);
    wait_for(Duration::from_secs(10), "rejection metric", || {
        (service.metric(r#"hitl_assignment_rejected_verdicts_total{reason="lease_revoked"}"#)?
            >= 1.0)
            .then_some(())
    });
    wait_for(Duration::from_secs(10), "reassignment metric", || {
        (service
            .metric(r#"hitl_assignment_reassignments_total{pool="fast",reason="lease_expired"}"#)?
            >= 1.0)
            .then_some(())
    });
}

#[test]
fn a_reviewer_going_offline_has_items_requeued_to_others() {
    let run = Run::new("asg-offline");
    run.reviewer("ann", &[], 1, 0, Presence::Online);
    let service = run.start("");
    run.requests(&[request("off-1", "general", Duration::from_secs(3600))]);
    let tail = Tail::new(&run.topics.assignments);
    let mut seen = Vec::new();
    assert!(
        tail.until(&mut seen, WAIT, |r| count_kind(r, AssignmentKind::Assigned)
            >= 1)
    );
    run.reviewer("bob", &[], 1, 1, Presence::Online);
    run.reviewer("ann", &[], 1, 0, Presence::Offline);
    assert!(
        tail.until(&mut seen, WAIT, |r| count_kind(r, AssignmentKind::Assigned)
            >= 2
            && count_kind(r, AssignmentKind::Revoked) >= 1),
        "revoked and reassigned; log:\n{}",
        service.log_tail()
    );
    let events = assignment_events(&seen);
    let revoked = events
        .iter()
        .find(|(_, e)| e.kind == AssignmentKind::Revoked)
        .expect("REVOKED");
    assert_eq!(revoked.1.reviewer_id, "ann");
    assert_eq!(revoked.1.reason.as_deref(), Some("reviewer_offline"));
    let last = &events
        .iter()
        .filter(|(_, e)| e.kind == AssignmentKind::Assigned)
        .max_by_key(|(_, e)| e.attempt)
        .unwrap()
        .1;
    assert_eq!(last.reviewer_id, "bob");
    assert_eq!(last.sla_deadline, events[0].1.sla_deadline);
}

#[test]
fn escalates_to_the_next_tier_then_applies_the_sla_fallback() {
    let run = Run::new("asg-escalate");
    run.reviewer("ann", &[], 1, 0, Presence::Online);
    run.reviewer("cy", &["senior"], 1, 2, Presence::Online);
    let service = run.start(
        "[service.pools.urgent]\nlease = \"1s\"\nverdict_grace = \"0s\"\nescalate_after_expiries = 1\n\
         escalate_at_sla = []\ntiers = [{ name = \"senior\", roles = [\"senior\"] }]\nmin_sla = \"0s\"\n\
         on_sla_breach = { action = \"fallback\", status = \"REJECTED\", final_action = \"block\" }\n",
    );
    // ann is preferred at first (equal load, name order); she lets the lease expire, which
    // escalates the item to the senior tier: cy.
    let tail = Tail::new(&run.topics.assignments);
    let mut seen = Vec::new();
    run.requests(&[request("esc-1", "urgent", Duration::from_secs(8))]);
    assert!(
        tail.until(&mut seen, WAIT, |r| {
            assignment_events(r).iter().any(|(_, e)| {
                e.decision_id == "esc-1"
                    && e.kind == AssignmentKind::Assigned
                    && e.reviewer_id == "cy"
            })
        }),
        "escalated to cy; log:\n{}",
        service.log_tail()
    );
    let urgent: Vec<AssignmentEvent> = assignment_events(&seen)
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| e.decision_id == "esc-1")
        .collect();
    assert_eq!(urgent[0].reviewer_id, "ann");
    // Nobody answers: at the deadline the pool's fallback decides.
    let outcomes: Vec<Outcome> = decode(&read_topic(&run.topics.outcomes, WAIT, |r| {
        decode::<Outcome>(r)
            .iter()
            .any(|o| o.decision_id == "esc-1")
    }));
    let fallback = outcomes.iter().find(|o| o.decision_id == "esc-1").unwrap();
    assert_eq!(fallback.decided_by, DecidedBy::SlaFallback);
    assert_eq!(fallback.status, OutcomeStatus::Rejected);
    assert_eq!(fallback.final_action, "block");
    let lifecycle: Vec<LifecycleEvent> =
        decode(&read_all(&run.topics.lifecycle, Duration::from_secs(2)));
    let kinds: BTreeSet<LifecycleKind> = lifecycle
        .iter()
        .filter(|e| e.decision_id == "esc-1")
        .map(|e| e.kind)
        .collect();
    for kind in [
        LifecycleKind::Escalated,
        LifecycleKind::SlaBreached,
        LifecycleKind::Outcome,
    ] {
        assert!(kinds.contains(&kind), "{kind:?} in {kinds:?}");
    }
}

#[test]
fn quorum_needs_two_distinct_approvals() {
    let run = Run::new("asg-quorum");
    run.reviewer("ann", &[], 1, 0, Presence::Online);
    run.reviewer("bob", &[], 1, 1, Presence::Online);
    let _service = run.start("");
    let mut two_person = request("q-1", "general", Duration::from_secs(3600));
    two_person.quorum = 2;
    run.requests(&[two_person]);
    let tail = Tail::new(&run.topics.assignments);
    let mut seen = Vec::new();
    assert!(
        tail.until(&mut seen, WAIT, |r| count_kind(r, AssignmentKind::Assigned)
            >= 2)
    );
    let events = assignment_events(&seen);
    let holders: BTreeSet<&str> = events.iter().map(|(_, e)| e.reviewer_id.as_str()).collect();
    assert_eq!(holders, BTreeSet::from(["ann", "bob"]));
    run.verdict(&events[0].1, VerdictKind::Approve);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        read_all(&run.topics.outcomes, Duration::from_secs(1)).is_empty(),
        "one approval is not enough"
    );
    run.verdict(&events[1].1, VerdictKind::Approve);
    let outcomes: Vec<Outcome> = decode(&read_at_least(&run.topics.outcomes, 1, WAIT));
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].decided_by, DecidedBy::Quorum);
    let mut reviewers = outcomes[0].reviewer_ids.clone();
    reviewers.sort();
    assert_eq!(reviewers, ["ann", "bob"]);
}

#[test]
fn bad_verdicts_are_rejected_with_reasons_and_recorded() {
    let run = Run::new("asg-bad");
    run.reviewer("ann", &[], 1, 0, Presence::Online);
    run.reviewer("bob", &[], 1, 1, Presence::Online);
    let service = run.start("");
    run.requests(&[request("bad-1", "general", Duration::from_secs(3600))]);
    let tail = Tail::new(&run.topics.assignments);
    let mut seen = Vec::new();
    assert!(
        tail.until(&mut seen, WAIT, |r| count_kind(r, AssignmentKind::Assigned)
            >= 1)
    );
    let lease = assignment_events(&seen)[0].1.clone();
    let mut unknown = verdict_on(&lease, VerdictKind::Approve);
    unknown.decision_id = "never-seen".into();
    let mut foreign = verdict_on(&lease, VerdictKind::Approve);
    foreign.reviewer_id = "bob".into();
    let mut forged = verdict_on(&lease, VerdictKind::Approve);
    forged.assignment_id = "bad-1#7".into();
    let mut amend = verdict_on(&lease, VerdictKind::Amend);
    amend.amended_action = None;
    for bad in [&unknown, &foreign, &forged, &amend] {
        run.send_verdict(bad);
    }
    // Undecodable bytes go to the DLQ.
    let producer = producer();
    produce(
        &producer,
        &run.topics.verdicts,
        "general",
        b"not a verdict",
        &[],
    );
    flush(&producer);
    // The real one, then a duplicate and a late one after the outcome.
    run.verdict(&lease, VerdictKind::Approve);
    run.verdict(&lease, VerdictKind::Approve);
    run.verdict(&lease, VerdictKind::Reject);

    let expected = [
        "unknown_decision",
        "wrong_reviewer",
        "unknown_lease",
        "invalid_amendment",
        "already_decided",
    ];
    let lifecycle: Vec<LifecycleEvent> = decode(&read_topic(&run.topics.lifecycle, WAIT, |r| {
        decode::<LifecycleEvent>(r)
            .iter()
            .filter(|e| e.kind == LifecycleKind::VerdictRejected)
            .count()
            >= 6
    }));
    let reasons: Vec<String> = lifecycle
        .iter()
        .filter(|e| e.kind == LifecycleKind::VerdictRejected)
        .filter_map(|e| e.reason.clone())
        .collect();
    for reason in expected {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} in {reasons:?}; log:\n{}",
            service.log_tail()
        );
    }
    let outcomes: Vec<Outcome> = decode(&read_all(&run.topics.outcomes, Duration::from_secs(2)));
    assert_eq!(outcomes.len(), 1, "only the holder's verdict counted");
    assert_eq!(outcomes[0].status, OutcomeStatus::Approved);
    let dead = read_at_least(&run.topics.decisions_dlq, 1, WAIT);
    assert_eq!(dead[0].headers["hitl.source.topic"], run.topics.verdicts);
    assert!(dead[0].headers["hitl.error.class"].starts_with("decode"));
    wait_for(Duration::from_secs(10), "rejection metrics", || {
        (service.metric(r#"hitl_assignment_rejected_verdicts_total{reason="already_decided"}"#)?
            >= 2.0)
            .then_some(())
    });
}

#[test]
fn kill_9_mid_run_then_restart_restores_state_and_every_request_gets_one_outcome() {
    const REQUESTS: usize = 150;
    let run = Run::new("asg-kill");
    for (i, name) in ["ann", "bob", "cy"].iter().enumerate() {
        run.reviewer(name, &[], 4, i as i32, Presence::Online);
    }
    let first = run.start("");
    let requests: Vec<ReviewRequest> = (0..REQUESTS)
        .map(|i| {
            request(
                &format!("kill-{i:03}"),
                ["general", "payments"][i % 2],
                Duration::from_secs(3600),
            )
        })
        .collect();
    run.requests(&requests);

    // Simulated reviewers: approve every assignment they get, a little slowly.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(Mutex::new(BTreeMap::<String, BTreeSet<String>>::new()));
    let reviewers = {
        let answered = answered.clone();
        reviewer_app(&run.topics, stop.clone(), move |event, _| {
            answered
                .lock()
                .unwrap()
                .entry(event.decision_id.clone())
                .or_default()
                .insert(format!("{}@{}", event.assignment_id, event.reviewer_id));
            std::thread::sleep(Duration::from_millis(20));
            vec![verdict_on(event, VerdictKind::Approve)]
        })
    };

    // Kill once the reviewers answered about a third (watching their progress, not the outcome
    // topic, so the kill lands mid-run however fast the service is).
    wait_for(WAIT, "a third of the verdicts", || {
        (answered.lock().unwrap().len() >= REQUESTS / 3).then_some(())
    });
    first.kill9();
    let outcomes_at_kill = read_all(&run.topics.outcomes, Duration::from_millis(300)).len();
    assert!(outcomes_at_kill < REQUESTS, "the kill must land mid-run");
    // Restarted at once (static membership gives it the partitions back without a rebalance).
    let second = run.start("");
    let outcomes = read_topic(&run.topics.outcomes, Duration::from_secs(120), |records| {
        decode::<Outcome>(records)
            .iter()
            .map(|o| o.decision_id.clone())
            .collect::<BTreeSet<_>>()
            .len()
            >= REQUESTS
    });
    stop.store(true, Ordering::Relaxed);
    reviewers.join().unwrap();
    let outcomes: Vec<Outcome> = decode(&outcomes);
    let mut by_decision: BTreeMap<&str, Vec<&Outcome>> = BTreeMap::new();
    for outcome in &outcomes {
        by_decision
            .entry(&outcome.decision_id)
            .or_default()
            .push(outcome);
    }
    let missing: Vec<&str> = requests
        .iter()
        .map(|r| r.decision.decision_id.as_str())
        .filter(|id| !by_decision.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "no outcome for {missing:?}; log:\n{}",
        second.log_tail()
    );
    let duplicated: Vec<&&str> = by_decision
        .iter()
        .filter(|(_, o)| o.len() > 1)
        .map(|(id, _)| id)
        .collect();
    // With transactions the killed instance's open transaction is aborted: exactly one outcome per
    // decision. With idempotent delivery a kill between sending outputs and committing the input
    // offsets (and the changelog, sent after them) makes the restarted service read those verdicts
    // again: at least once, deduped by decision_id downstream, so repeats must be the same outcome.
    for (id, outcomes) in &by_decision {
        assert!(
            outcomes
                .windows(2)
                .all(|w| w[0].status == w[1].status && w[0].reviewer_ids == w[1].reviewer_ids),
            "{id}: {outcomes:?}"
        );
    }
    eprintln!(
        "{} decisions had their outcome repeated after the kill: {duplicated:?}",
        duplicated.len()
    );
    if transactional() {
        assert!(
            duplicated.is_empty(),
            "a second outcome after kill -9 in transactional mode: {duplicated:?}"
        );
    }
    // No decision was doubly assigned: one lease (and holder) each, across the restart.
    let answered = answered.lock().unwrap();
    let doubly: Vec<(&String, &BTreeSet<String>)> = answered
        .iter()
        .filter(|(_, leases)| leases.len() > 1)
        .collect();
    assert!(doubly.is_empty(), "assigned more than once: {doubly:?}");
    wait_for(Duration::from_secs(10), "restore metric", || {
        (second.metric("hitl_assignment_restored_entries_total")? > 0.0).then_some(())
    });
}

#[test]
fn a_bad_config_refuses_to_start_and_names_the_field() {
    let run = Run::new("asg-config");
    let config = run.config(
        "max_scan = 0\n[service.pools.broken]\nlease = \"0s\"\nescalate_at_sla = [0.9, 0.5]\n",
    );
    let path = run.dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let output = std::process::Command::new(binary("hitl-assignment"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for field in [
        "service.max_scan",
        "service.pools.broken.lease",
        "service.pools.broken.escalate_at_sla",
    ] {
        assert!(stderr.contains(field), "{field} in {stderr}");
    }
}

/// A tombstone for `key` on `topic` (the default partitioner puts it where the key's records are),
/// signed by the test gateway.
fn tombstone(topic: &str, key: &str) {
    use rdkafka::{
        message::{Header, OwnedHeaders},
        producer::BaseRecord,
    };
    let producer = producer();
    let signature = test_signature(topic, key, &[]).expect("a signed topic");
    let headers = OwnedHeaders::new().insert(Header {
        key: hitl_runtime::auth::HEADER,
        value: Some(&signature),
    });
    producer
        .send(BaseRecord::<str, [u8]>::to(topic).key(key).headers(headers))
        .map_err(|(error, _)| error)
        .unwrap();
    flush(&producer);
}

#[test]
fn compaction_of_the_roster_and_the_changelog_leaves_a_restore_that_is_right() {
    const REQUESTS: usize = 8;
    const DECIDED_FIRST: usize = 5;
    let run = Run::new("asg-compact");
    compact_quickly(&run.topics.reviewers);
    compact_quickly(&run.topics.assignment_state);
    run.reviewer("ann", &[], 10, 0, Presence::Online);
    run.reviewer("bob", &[], 10, 1, Presence::Online);
    tombstone(&run.topics.reviewers, "bob"); // bob is removed from the roster
    let pools = "done_retention = \"1s\"\n";
    let first = run.start(pools);
    let requests: Vec<ReviewRequest> = (0..REQUESTS)
        .map(|i| request(&format!("cmp-{i}"), "general", Duration::from_secs(3600)))
        .collect();
    run.requests(&requests);

    // The reviewer approves the first five; the other three stay leased across the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let held = Arc::new(Mutex::new(Vec::<AssignmentEvent>::new()));
    let reviewers = {
        let held = held.clone();
        reviewer_app(&run.topics, stop.clone(), move |event, _| {
            let index: usize = event.decision_id["cmp-".len()..].parse().unwrap();
            if index < DECIDED_FIRST {
                vec![verdict_on(event, VerdictKind::Approve)]
            } else {
                held.lock().unwrap().push(event.clone());
                vec![]
            }
        })
    };
    wait_for(WAIT, "the first outcomes", || {
        (read_all(&run.topics.outcomes, Duration::from_millis(300)).len() >= DECIDED_FIRST)
            .then_some(())
    });
    // Decided items are forgotten after done_retention: a tombstone each in the changelog.
    let decided: BTreeSet<String> = (0..DECIDED_FIRST).map(|i| format!("cmp-{i}")).collect();
    wait_for(WAIT, "tombstones for the decided items", || {
        let tombstoned: BTreeSet<String> =
            read_all(&run.topics.assignment_state, Duration::from_millis(300))
                .into_iter()
                .filter(|r| r.payload.is_none())
                .filter_map(|r| r.key)
                .collect();
        decided.is_subset(&tombstoned).then_some(())
    });
    assert_eq!(first.terminate(), Some(0));
    stop.store(true, Ordering::Relaxed);
    reviewers.join().unwrap();

    // The broker's cleaner removes every version but the latest, then the tombstones themselves.
    let partitions = run.topics.partitions;
    let state = wait_for_compaction(
        &run.topics.assignment_state,
        Duration::from_secs(120),
        || roll_segments(&run.topics.assignment_state, partitions, "segment-roll"),
        |records| {
            let mut per_key: BTreeMap<&str, usize> = BTreeMap::new();
            for record in records {
                *per_key
                    .entry(record.key.as_deref().unwrap_or_default())
                    .or_default() += 1;
            }
            decided.iter().all(|id| !per_key.contains_key(id.as_str()))
                && (DECIDED_FIRST..REQUESTS)
                    .all(|i| per_key.get(format!("cmp-{i}").as_str()) == Some(&1))
        },
    );
    assert!(state
        .iter()
        .all(|r| r.key.as_deref() == Some("segment-roll") || r.payload.is_some()));
    wait_for_compaction(
        &run.topics.reviewers,
        Duration::from_secs(120),
        || roll_segments(&run.topics.reviewers, partitions, "segment-roll"),
        |records| !records.iter().any(|r| r.key.as_deref() == Some("bob")),
    );

    // Restored from the compacted topics: the three open items are still ann's, nothing decided
    // comes back, and bob never existed.
    let second = run.start(pools);
    wait_for(Duration::from_secs(10), "restore metric", || {
        (second.metric("hitl_assignment_restored_entries_total")? >= 3.0).then_some(())
    });
    let held: Vec<AssignmentEvent> = held.lock().unwrap().clone();
    assert_eq!(held.len(), REQUESTS - DECIDED_FIRST);
    for event in &held {
        run.verdict(event, VerdictKind::Approve);
    }
    let outcomes: Vec<Outcome> = decode(&read_topic(&run.topics.outcomes, WAIT, |records| {
        records.len() >= REQUESTS
    }));
    let ids: BTreeSet<&str> = outcomes.iter().map(|o| o.decision_id.as_str()).collect();
    assert_eq!(ids.len(), REQUESTS, "log:\n{}", second.log_tail());
    assert_eq!(
        read_all(&run.topics.outcomes, Duration::from_secs(1)).len(),
        REQUESTS,
        "one outcome each"
    );
    let assigned = assignment_events(&read_all(&run.topics.assignments, Duration::from_secs(1)));
    assert!(
        assigned.iter().all(|(_, e)| e.reviewer_id == "ann"),
        "{assigned:?}"
    );
}

/// Lifecycle events read so far.
fn lifecycle_events(records: &[Received]) -> Vec<LifecycleEvent> {
    decode(records)
}

/// Time semantics (#12): a verdict is judged when the broker appended it, and timers fire only once
/// every input appended before them is applied. A service down for longer than a lease and an SLA
/// comes back to verdicts sent in time: it applies them, it does not revoke their leases or apply
/// the SLA fallback first.
#[test]
fn verdicts_sent_in_time_survive_an_outage_longer_than_the_lease_and_the_sla() {
    let run = Run::new("asg-outage");
    run.reviewer("ann", &[], 4, 0, Presence::Online);
    let pools = "[service.pools.leased]\nlease = \"4s\"\nverdict_grace = \"1s\"\nescalate_after_expiries = 0\n\
                 escalate_at_sla = []\n\
                 [service.pools.sla]\nlease = \"1m\"\nmin_sla = \"0s\"\nescalate_at_sla = []\n\
                 on_sla_breach = { action = \"fallback\", status = \"REJECTED\" }\n";
    let first = run.start(pools);
    run.requests(&[
        request("outage-lease", "leased", Duration::from_secs(3600)),
        request("outage-sla", "sla", Duration::from_secs(8)),
    ]);
    let tail = Tail::new(&run.topics.assignments);
    let mut seen = Vec::new();
    assert!(
        tail.until(&mut seen, WAIT, |r| count_kind(r, AssignmentKind::Assigned)
            >= 2),
        "both assigned; log:\n{}",
        first.log_tail()
    );
    let assigned: Vec<AssignmentEvent> = assignment_events(&seen)
        .into_iter()
        .map(|(_, event)| event)
        .filter(|event| event.kind == AssignmentKind::Assigned)
        .collect();
    // The service goes down; the reviewer answers both, in time, while it is down.
    first.kill9();
    for event in &assigned {
        run.verdict(event, VerdictKind::Approve);
    }
    // The outage outlasts the lease (4 s + 1 s grace) and the SLA (8 s).
    std::thread::sleep(Duration::from_secs(10));
    let second = run.start(pools);
    let outcomes = read_topic(&run.topics.outcomes, WAIT, |records| {
        decode::<Outcome>(records).len() >= 2
    });
    let outcomes: Vec<Outcome> = decode(&outcomes);
    for outcome in &outcomes {
        assert_eq!(
            (outcome.decided_by, outcome.status),
            (DecidedBy::Human, OutcomeStatus::Approved),
            "{}: the verdict sent in time decides; log:\n{}",
            outcome.decision_id,
            second.log_tail()
        );
    }
    let rejected: Vec<LifecycleEvent> =
        lifecycle_events(&read_all(&run.topics.lifecycle, Duration::from_secs(2)))
            .into_iter()
            .filter(|event| {
                matches!(
                    event.kind,
                    LifecycleKind::VerdictRejected | LifecycleKind::Revoked
                ) && event.reason.as_deref() != Some("decided")
            })
            .collect();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(second.terminate(), Some(0));
}

/// Deterministic replay (#12): with idempotent delivery, a crash after an outcome was sent and
/// before its changelog entry makes the restarted service read the verdict again. What it writes
/// then is byte for byte what it wrote before: the same outcome, the same lifecycle events under
/// the same ids, the same lease ids.
#[test]
fn a_crash_between_an_outcome_and_its_changelog_entry_replays_the_same_bytes() {
    let run = Run::new("asg-replay");
    run.reviewer("ann", &[], 2, 0, Presence::Online);
    let config = run
        .config("")
        .replace("delivery = \"transactional\"", "delivery = \"idempotent\"");
    assert!(config.contains("delivery = \"idempotent\""));
    let mut first = Service::spawn_with_env(
        "hitl-assignment",
        run.dir.path(),
        &config,
        &[("HITL_FAILPOINT_CRASH_BEFORE_STATE", &run.topics.outcomes)],
    );
    first.wait_ready(WAIT);
    run.requests(&[
        request("replay-1", "general", Duration::from_secs(3600)),
        request("replay-2", "general", Duration::from_secs(3600)),
    ]);
    let tail = Tail::new(&run.topics.assignments);
    let mut seen = Vec::new();
    assert!(
        tail.until(&mut seen, WAIT, |r| count_kind(r, AssignmentKind::Assigned)
            >= 2)
    );
    let assigned: Vec<AssignmentEvent> = assignment_events(&seen)
        .into_iter()
        .map(|(_, event)| event)
        .collect();
    run.verdict(&assigned[0], VerdictKind::Approve);
    run.verdict(&assigned[1], VerdictKind::Reject);
    assert!(
        first.wait_exit(WAIT),
        "the failpoint crashes the service once an outcome is acknowledged; log:\n{}",
        first.log_tail()
    );
    let second = Service::start("hitl-assignment", run.dir.path(), &config);
    read_topic(&run.topics.outcomes, WAIT, |records| {
        decode::<Outcome>(records)
            .iter()
            .map(|o| o.decision_id.clone())
            .collect::<BTreeSet<_>>()
            .len()
            >= 2
    });
    std::thread::sleep(Duration::from_secs(2));
    let outcomes = read_all(&run.topics.outcomes, Duration::from_secs(2));
    let mut by_decision: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for record in &outcomes {
        by_decision
            .entry(record.key.clone().unwrap_or_default())
            .or_default()
            .insert(record.payload.clone().unwrap_or_default());
    }
    assert!(
        outcomes.len() > by_decision.len(),
        "the crash repeated an outcome (it was sent before the crash and again by the replay)"
    );
    for (id, payloads) in &by_decision {
        assert_eq!(
            payloads.len(),
            1,
            "{id}: the replay wrote a different outcome; log:\n{}",
            second.log_tail()
        );
    }
    // Every lifecycle event id stands for one content, however often it was written.
    let mut by_event: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    let lifecycle = read_all(&run.topics.lifecycle, Duration::from_secs(2));
    let codec = Codec::single_object();
    for record in &lifecycle {
        let payload = record.payload.clone().unwrap_or_default();
        let event: LifecycleEvent = codec.decode(&payload).expect("decodes");
        by_event.entry(event.event_id).or_default().insert(payload);
    }
    let conflicting: Vec<&String> = by_event
        .iter()
        .filter(|(_, payloads)| payloads.len() > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(
        conflicting.is_empty(),
        "event ids reused with other content: {conflicting:?}"
    );
    assert_eq!(second.terminate(), Some(0));
}

/// Rebalances (#12): an instance paused past its session (its partitions given to another) must not
/// fire its timers when it resumes: the lease it saw expire was decided by the new owner meanwhile.
#[test]
fn a_paused_instance_that_lost_its_pool_does_not_fire_its_timers_when_it_resumes() {
    let run = Run::new("asg-zombie");
    run.reviewer("ann", &[], 1, 0, Presence::Online);
    run.reviewer("bob", &[], 1, 1, Presence::Online);
    let pools = "[service.pools.zombie]\nlease = \"8s\"\nverdict_grace = \"0s\"\nescalate_after_expiries = 0\n\
                 escalate_at_sla = []\n";
    let old = run.start(pools);
    run.requests(&[request("zombie-1", "zombie", Duration::from_secs(3600))]);
    let tail = Tail::new(&run.topics.assignments);
    let mut seen = Vec::new();
    assert!(
        tail.until(&mut seen, WAIT, |r| count_kind(r, AssignmentKind::Assigned)
            >= 1)
    );
    let (_, lease) = assignment_events(&seen).remove(0);
    // Paused: its session (6 s) ends, a second instance takes every partition.
    signal(old.pid(), "STOP");
    let new = Service::start(
        "hitl-assignment",
        run.dir.path(),
        &run.config(pools)
            .replace(&run.instance, &format!("{}-b", run.instance))
            .replace(
                &format!("group_id = \"{}-b-group\"", run.instance),
                &format!("group_id = \"{}-group\"", run.instance),
            ),
    );
    // The holder decides in time; the new owner applies it.
    run.verdict(&lease, VerdictKind::Approve);
    let outcomes = read_topic(&run.topics.outcomes, WAIT, |records| !records.is_empty());
    assert_eq!(decode::<Outcome>(&outcomes)[0].decided_by, DecidedBy::Human);
    // The old instance resumes after the lease would have expired.
    std::thread::sleep(Duration::from_secs(4));
    signal(old.pid(), "CONT");
    std::thread::sleep(Duration::from_secs(8));
    let events: Vec<AssignmentEvent> =
        assignment_events(&read_all(&run.topics.assignments, Duration::from_secs(2)))
            .into_iter()
            .map(|(_, event)| event)
            .collect();
    let expired: Vec<&AssignmentEvent> = events
        .iter()
        .filter(|e| {
            e.kind == AssignmentKind::Assigned && e.attempt > 1
                || e.reason.as_deref() == Some("lease_expired")
        })
        .collect();
    assert!(
        expired.is_empty(),
        "the paused instance fired a lease expiry for a pool it no longer owns: {expired:?}\nold log:\n{}",
        old.log_tail()
    );
    assert_eq!(
        decode::<Outcome>(&read_all(&run.topics.outcomes, Duration::from_secs(1))).len(),
        1
    );
    drop(new);
}
