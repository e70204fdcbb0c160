//! The audit core's laws: deterministic records and hashes, order-independence of timelines,
//! idempotence, exactly one label per human outcome and QA sample, restore; and `verify` against
//! every kind of tampering.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use hitl_audit::{
    checkpoint::Checkpointer,
    crypto::{random_seed_hex, Keys},
    trail::{AuditCore, Effect, Observation},
    verify::{verify, Input, Logged},
};
use hitl_schema::*;
use proptest::prelude::*;

const SEED: &str = "0101010101010101010101010101010101010101010101010101010101010101";
const T0: i64 = 1_800_000_000_000;

fn keys() -> Arc<Keys> {
    Arc::new(Keys::new(SEED, "k1", "pseudonym-secret").unwrap())
}

fn decision(id: &str) -> Decision {
    Decision {
        decision_id: id.into(),
        workflow: "payments.card".into(),
        subject: format!("txn-{id}"),
        action: "approve".into(),
        confidence: 0.7,
        risk_score: Some(0.4),
        amount: Some(120.0),
        priority: None,
        producer: "fraud-model".into(),
        model_name: "fraud".into(),
        model_version: Some("7".into()),
        features: BTreeMap::from([("velocity".to_owned(), 3.0)]),
        context: BTreeMap::from([
            ("customer".to_owned(), "Alice Example".to_owned()),
            ("country".to_owned(), "DE".to_owned()),
        ]),
        sensitive_fields: vec!["customer".into()],
        created_at: T0,
        sla_ms: None,
    }
}

fn outcome(
    id: &str,
    decided_by: DecidedBy,
    status: OutcomeStatus,
    reviewers: &[&str],
    at: i64,
) -> Outcome {
    Outcome {
        decision_id: id.into(),
        final_action: "approve".into(),
        status,
        decided_by,
        reviewer_ids: reviewers.iter().map(|r| (*r).to_owned()).collect(),
        policy_rule: "rule".into(),
        policy_version: "v1".into(),
        decided_at: at,
        time_to_decision_ms: at - T0,
        workflow: "payments.card".into(),
        rationale: None,
    }
}

fn event(id: &str, kind: LifecycleKind, service: &str, at: i64, sequence: i64) -> LifecycleEvent {
    let mut event = LifecycleEvent::new(
        format!("{id}:{service}:{sequence}:{}", kind.as_str()),
        id,
        kind,
        service,
        at,
    );
    event.sequence = sequence;
    event
}

/// A decision routed to people, assigned, a rejected verdict, then approved by ann.
fn human_events(id: &str) -> Vec<LifecycleEvent> {
    let mut routed = event(id, LifecycleKind::Routed, "router", T0 + 10, 0);
    routed.decision = Some(Arc::new(decision(id)));
    routed.policy_rule = Some("rule".into());
    routed.policy_version = Some("v1".into());
    routed.attributes.insert("route".into(), "human".into());
    let queued = event(id, LifecycleKind::Queued, "assignment", T0 + 20, 1);
    let mut assigned = event(id, LifecycleKind::Assigned, "assignment", T0 + 30, 2);
    assigned.reviewer_id = Some("ann".into());
    assigned.assignment_id = Some(format!("{id}#1"));
    let mut rejected = event(id, LifecycleKind::VerdictRejected, "assignment", T0 + 40, 3);
    rejected.reviewer_id = Some("bob".into());
    rejected.reason = Some("wrong_reviewer".into());
    let mut verdict = event(id, LifecycleKind::Verdict, "assignment", T0 + 50, 4);
    verdict.reviewer_id = Some("ann".into());
    verdict
        .attributes
        .insert("verdict".into(), "APPROVE".into());
    let mut done = event(id, LifecycleKind::Outcome, "assignment", T0 + 50, 5);
    done.outcome = Some(outcome(
        id,
        DecidedBy::Human,
        OutcomeStatus::Approved,
        &["ann"],
        T0 + 50,
    ));
    vec![routed, queued, assigned, rejected, verdict, done]
}

/// An auto-approved decision sampled for QA, then labeled REJECT by a reviewer.
fn qa_events(id: &str) -> Vec<LifecycleEvent> {
    let mut routed = event(id, LifecycleKind::Routed, "router", T0 + 10, 0);
    routed.decision = Some(Arc::new(decision(id)));
    routed
        .attributes
        .insert("route".into(), "auto_approve".into());
    routed.attributes.insert("qa_sample".into(), "true".into());
    routed.outcome = Some(outcome(
        id,
        DecidedBy::Auto,
        OutcomeStatus::Approved,
        &[],
        T0 + 10,
    ));
    let mut verdict = event(id, LifecycleKind::Verdict, "assignment", T0 + 90, 1);
    verdict.reviewer_id = Some("cy".into());
    verdict.attributes.insert("verdict".into(), "REJECT".into());
    verdict.attributes.insert("qa_sample".into(), "true".into());
    vec![routed, verdict]
}

fn auto_events(id: &str) -> Vec<LifecycleEvent> {
    let mut routed = event(id, LifecycleKind::Routed, "router", T0 + 10, 0);
    routed.decision = Some(Arc::new(decision(id)));
    routed
        .attributes
        .insert("route".into(), "auto_approve".into());
    routed.outcome = Some(outcome(
        id,
        DecidedBy::Auto,
        OutcomeStatus::Approved,
        &[],
        T0 + 10,
    ));
    vec![routed]
}

fn run(core: &mut AuditCore, events: &[LifecycleEvent]) -> Vec<Effect> {
    let mut out = Vec::new();
    for event in events {
        core.event(0, event, &mut out);
    }
    out
}

fn records(effects: &[Effect]) -> Vec<AuditRecord> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Record { record, .. } => Some(record.clone()),
            _ => None,
        })
        .collect()
}

fn feedback(effects: &[Effect]) -> Vec<FeedbackRecord> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Feedback(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_human_decision_gets_a_full_signed_trail_and_one_label() {
    let mut core = AuditCore::new(keys());
    let effects = run(&mut core, &human_events("h1"));
    let records = records(&effects);
    assert_eq!(records.len(), 6);
    let last = records.last().unwrap();
    assert_eq!(last.version, 6);
    assert_eq!(last.route.as_deref(), Some("human"));
    assert_eq!(last.timeline.len(), 6);
    assert_eq!(last.outcome.as_ref().unwrap().decided_by, DecidedBy::Human);
    assert_eq!(
        last.prev_hash.as_deref(),
        Some(records[4].content_hash.as_str())
    );
    let context = &last.decision.as_ref().unwrap().context;
    assert!(
        context["customer"].starts_with("hmac-sha256:"),
        "PII hashed"
    );
    assert!(!format!("{last:?}").contains("Alice"), "never in clear");
    assert_eq!(context["country"], "DE");
    let labels = feedback(&effects);
    assert_eq!(labels.len(), 1);
    let label = &labels[0];
    assert_eq!(label.label_source, LabelSource::Human);
    assert!(!label.overridden);
    assert_eq!(label.features["velocity"], 3.0);
    assert_eq!(label.reviewer_pseudonyms.len(), 1);
    assert!(!label.reviewer_pseudonyms[0].contains("ann"));
    assert_eq!(label.review_latency_ms, 40);
}

#[test]
fn auto_decisions_are_not_labeled_and_qa_samples_are_labeled_once() {
    let mut core = AuditCore::new(keys());
    let auto = run(&mut core, &auto_events("a1"));
    assert!(feedback(&auto).is_empty());
    let qa = run(&mut core, &qa_events("q1"));
    let labels = feedback(&qa);
    assert_eq!(labels.len(), 1);
    assert_eq!(labels[0].label_source, LabelSource::QaSample);
    assert_eq!(labels[0].label_status, "REJECTED");
    assert!(
        labels[0].overridden,
        "the reviewer disagreed with the automatic approval"
    );
}

#[test]
fn verify_reports_a_clean_trail_as_clean() {
    let (input, keys) = scenario();
    let report = verify(&input, &keys);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.uncovered, 0);
}

/// Three decisions' trails through the core, checkpointed, as `verify` would read them.
fn scenario() -> (Input, BTreeMap<String, ed25519_dalek::VerifyingKey>) {
    let keys = keys();
    let mut core = AuditCore::new(keys.clone());
    let mut checkpointer = Checkpointer::new(0, T0);
    let mut input = Input {
        require_checkpointed: true,
        ..Input::default()
    };
    let mut offset = 0;
    let mut checkpoint_offset = 0;
    let mut outcomes = Vec::new();
    for events in [human_events("h1"), qa_events("q1"), auto_events("a1")] {
        for effect in run(&mut core, &events) {
            if let Effect::Record { record, .. } = effect {
                checkpointer.append(&record);
                if let Some(outcome) = &record.outcome {
                    outcomes.retain(|o: &Outcome| o.decision_id != outcome.decision_id);
                    outcomes.push(outcome.clone());
                }
                input.audit.push(Logged {
                    partition: 0,
                    offset,
                    key: Some(record.decision_id.clone()),
                    payload: Some(Codec::single_object().encode_to_vec("", &record).unwrap()),
                });
                offset += 1;
                if checkpointer.due(T0, 4, i64::MAX) {
                    let checkpoint = checkpointer.cut(&keys, T0);
                    input.checkpoints.push(Logged {
                        partition: 0,
                        offset: checkpoint_offset,
                        key: Some("0".into()),
                        payload: Some(
                            Codec::single_object()
                                .encode_to_vec("", &checkpoint)
                                .unwrap(),
                        ),
                    });
                    checkpoint_offset += 1;
                }
            }
        }
    }
    let checkpoint = checkpointer.cut(&keys, T0);
    input.checkpoints.push(Logged {
        partition: 0,
        offset: checkpoint_offset,
        key: Some("0".into()),
        payload: Some(
            Codec::single_object()
                .encode_to_vec("", &checkpoint)
                .unwrap(),
        ),
    });
    input.decisions = Some(BTreeSet::from(["h1".into(), "q1".into(), "a1".into()]));
    input.outcomes = Some(outcomes);
    let public = BTreeMap::from([("k1".to_owned(), keys.verifying_key())]);
    (input, public)
}

fn problems_mention(
    input: &Input,
    keys: &BTreeMap<String, ed25519_dalek::VerifyingKey>,
    expected: &[&str],
) {
    let report = verify(input, keys);
    assert!(!report.is_clean(), "tampering not detected");
    let text = report.to_string();
    for needle in expected {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
}

fn last_record_of(input: &Input, id: &str) -> usize {
    input
        .audit
        .iter()
        .rposition(|l| l.key.as_deref() == Some(id))
        .unwrap()
}

#[test]
fn verify_detects_a_flipped_byte() {
    let (mut input, keys) = scenario();
    let index = last_record_of(&input, "h1");
    let payload = input.audit[index].payload.as_mut().unwrap();
    // A byte inside the subject string ("txn-h1" → "txn-i1").
    let position = payload.windows(6).position(|w| w == b"txn-h1").unwrap() + 4;
    payload[position] ^= 0x01;
    problems_mention(&input, &keys, &["decision h1", "altered"]);
}

#[test]
fn verify_detects_a_deleted_latest_record() {
    let (mut input, keys) = scenario();
    // A tombstone for the key, as a deletion through the compacted topic would leave.
    input.audit.push(Logged {
        partition: 0,
        offset: 999,
        key: Some("h1".into()),
        payload: None,
    });
    problems_mention(&input, &keys, &["decision h1", "deleted"]);
    // And after compaction removed every trace of it: the checkpoint still names it.
    let (mut input, keys) = scenario();
    input.audit.retain(|l| l.key.as_deref() != Some("h1"));
    problems_mention(
        &input,
        &keys,
        &["decision h1", "missing", "received but has no audit record"],
    );
}

#[test]
fn verify_detects_reordering_and_a_replayed_old_version() {
    let (mut input, keys) = scenario();
    let first = input
        .audit
        .iter()
        .position(|l| l.key.as_deref() == Some("h1"))
        .unwrap();
    let second = first + 1;
    input.audit.swap(first, second);
    problems_mention(
        &input,
        &keys,
        &["decision h1", "reordered or an old version replayed"],
    );

    let (mut input, keys) = scenario();
    let old = input
        .audit
        .iter()
        .position(|l| l.key.as_deref() == Some("h1"))
        .unwrap();
    let mut replay = input.audit[old].clone();
    replay.offset = 1000;
    input.audit.push(replay);
    problems_mention(&input, &keys, &["decision h1", "old version replayed"]);
}

#[test]
fn verify_detects_a_record_forged_without_the_key() {
    let (mut input, keys) = scenario();
    // A valid-looking record, correctly hashed, signed by someone else's key under our key id.
    let forger = Keys::new(&random_seed_hex().unwrap(), "k1", "x").unwrap();
    let index = last_record_of(&input, "h1");
    let mut record: AuditRecord = Codec::single_object()
        .decode(input.audit[index].payload.as_ref().unwrap())
        .unwrap();
    record.outcome.as_mut().unwrap().status = OutcomeStatus::Rejected;
    record.prev_hash = Some(record.content_hash.clone());
    record.version += 1;
    forger.seal_record(&mut record);
    input.audit.push(Logged {
        partition: 0,
        offset: 1001,
        key: Some("h1".into()),
        payload: Some(Codec::single_object().encode_to_vec("", &record).unwrap()),
    });
    input.require_checkpointed = false;
    problems_mention(&input, &keys, &["decision h1", "signature invalid"]);
}

#[test]
fn verify_detects_a_dropped_checkpoint() {
    let (mut input, keys) = scenario();
    assert!(input.checkpoints.len() >= 3);
    input.checkpoints.remove(1);
    problems_mention(
        &input,
        &keys,
        &["checkpoint 2 of audit partition 0", "missing"],
    );
    // Dropping the last one leaves records no checkpoint covers.
    let (mut input, keys) = scenario();
    input.checkpoints.pop();
    problems_mention(&input, &keys, &["not covered by any checkpoint"]);
}

#[test]
fn verify_detects_an_outcome_missing_from_the_trail() {
    let (mut input, keys) = scenario();
    input.outcomes.as_mut().unwrap().push(outcome(
        "ghost",
        DecidedBy::Human,
        OutcomeStatus::Approved,
        &["x"],
        T0,
    ));
    problems_mention(&input, &keys, &["decision ghost", "not in the audit trail"]);
}

#[test]
fn a_restored_core_continues_without_a_second_label() {
    let mut live = AuditCore::new(keys());
    let events = human_events("h1");
    let effects = run(&mut live, &events[..5]);
    let last = records(&effects).pop().unwrap();
    let mut restored = AuditCore::new(keys());
    restored.restore(0, last);
    // Everything again (a re-read after a crash), then the rest.
    let again = run(&mut restored, &events);
    let live_rest = run(&mut live, &events[5..]);
    assert_eq!(records(&again), records(&live_rest));
    assert_eq!(feedback(&again), feedback(&live_rest));
    assert_eq!(feedback(&again).len(), 1);
}

proptest! {
    /// Any arrival order of a decision's events gives the same final timeline, decision, outcome
    /// and version; a re-delivery of any event changes nothing; and at most one label.
    #[test]
    fn order_independent_and_idempotent(
        order in Just((0..6usize).collect::<Vec<_>>()).prop_shuffle(),
        redeliver in prop::collection::vec(0..6usize, 0..6),
    ) {
        let events = human_events("p1");
        let mut reference = AuditCore::new(keys());
        run(&mut reference, &events);
        let reference = reference.trail("p1").unwrap().clone();

        let mut core = AuditCore::new(keys());
        let shuffled: Vec<LifecycleEvent> = order.iter().map(|i| events[*i].clone()).collect();
        let first = run(&mut core, &shuffled);
        let again: Vec<LifecycleEvent> = redeliver.iter().map(|i| events[*i].clone()).collect();
        let second = run(&mut core, &again);
        prop_assert!(records(&second).is_empty());
        prop_assert!(second.iter().all(|e| *e == Effect::Observed(Observation::Duplicate)));
        let trail = core.trail("p1").unwrap();
        prop_assert_eq!(&trail.timeline, &reference.timeline);
        prop_assert_eq!(&trail.decision, &reference.decision);
        prop_assert_eq!(&trail.outcome, &reference.outcome);
        prop_assert_eq!(trail.version, reference.version);
        prop_assert_eq!(feedback(&first).len(), 1);
        // Each version chains to the previous one and verifies.
        let written = records(&first);
        for pair in written.windows(2) {
            prop_assert_eq!(pair[1].prev_hash.as_deref(), Some(pair[0].content_hash.as_str()));
        }
    }

    /// The same events in the same order give byte-identical records (hashes and signatures).
    #[test]
    fn deterministic(order in Just((0..6usize).collect::<Vec<_>>()).prop_shuffle()) {
        let events: Vec<LifecycleEvent> = order.iter().map(|i| human_events("d1")[*i].clone()).collect();
        let a = records(&run(&mut AuditCore::new(keys()), &events));
        let b = records(&run(&mut AuditCore::new(keys()), &events));
        prop_assert_eq!(a, b);
    }
}

/// Runs `events` through a core that seals every finished trail as soon as it can (after each
/// event), reloading a sealed trail from the latest record it wrote — what the service does with
/// the audit topic — whenever a new event needs it. Returns the effects and how many reloads.
fn run_sealing(events: &[LifecycleEvent]) -> (Vec<Effect>, usize) {
    let mut core = AuditCore::new(keys()).with_seal_after(0);
    let mut topic: BTreeMap<String, AuditRecord> = BTreeMap::new();
    let mut out = Vec::new();
    let mut reloads = 0;
    for event in events {
        if let Some(reload) = core.needs_reload(event) {
            reloads += 1;
            let record = topic[&event.decision_id].clone();
            assert_eq!(
                reload.written_at, record.written_at,
                "it knows when to look"
            );
            assert_eq!(reload.version, record.version, "and what to look for");
            core.restore(reload.partition, record);
        }
        let before = out.len();
        core.event(0, event, &mut out);
        for effect in &out[before..] {
            if let Effect::Record { record, .. } = effect {
                topic.insert(record.decision_id.clone(), record.clone());
            }
        }
        core.seal_idle(event.event_time.max(T0 + 1_000_000));
    }
    (out, reloads)
}

#[test]
fn finished_idle_trails_are_sealed_and_waiting_ones_are_not() {
    let mut core = AuditCore::new(keys()).with_seal_after(60_000);
    let human = human_events("h1");
    run(&mut core, &human[..human.len() - 1]); // not decided yet
    run(&mut core, &auto_events("a1")); // decided
    let qa = qa_events("q1");
    run(&mut core, &qa[..1]); // an auto decision still waiting for its QA label
    assert_eq!(
        core.seal_idle(T0 + 59_000),
        0,
        "nothing is idle long enough yet"
    );
    assert_eq!(
        core.seal_idle(T0 + 3_600_000),
        1,
        "only the decided auto one"
    );
    assert_eq!(core.sealed_len(), 1);
    assert!(core.trail("a1").is_none() && core.trail("h1").is_some() && core.trail("q1").is_some());
    assert_eq!(core.version("a1"), Some(1));
    assert_eq!(
        core.completeness(),
        (2, 2),
        "sealed trails still count as decided and complete"
    );

    // A re-delivered event of a sealed trail is a duplicate without the trail; a new one needs it.
    let mut out = Vec::new();
    assert_eq!(core.needs_reload(&auto_events("a1")[0]), None);
    core.event(0, &auto_events("a1")[0], &mut out);
    assert_eq!(out, vec![Effect::Observed(Observation::Duplicate)]);
    let late = event(
        "a1",
        LifecycleKind::VerdictRejected,
        "assignment",
        T0 + 500,
        9,
    );
    assert_eq!(core.needs_reload(&late).map(|r| r.partition), Some(0));
    out.clear();
    core.event(0, &late, &mut out);
    assert_eq!(
        out,
        vec![Effect::Observed(Observation::Sealed)],
        "never applied to a trail that is not there"
    );

    // Once labeled, the QA sample is finished too; the human decision once decided.
    run(&mut core, &qa[1..]);
    run(&mut core, &human[human.len() - 1..]);
    assert_eq!(core.seal_idle(T0 + 7_200_000), 2);
    assert_eq!((core.len(), core.sealed_len()), (0, 3));
    core.retain_partitions(|_| false);
    assert_eq!(core.sealed_len(), 0);
}

/// A human, an auto, a QA-sampled and a second human decision.
fn four_decisions() -> Vec<LifecycleEvent> {
    let mut all = human_events("s-h");
    all.extend(auto_events("s-a"));
    all.extend(qa_events("s-q"));
    all.extend(human_events("s-h2"));
    all
}

proptest! {
    /// Sealing changes nothing anyone sees: the same records, hashes, signatures and labels as a
    /// core that keeps every trail, for any interleaving of several decisions' events with
    /// re-deliveries, however often trails are sealed and reloaded.
    #[test]
    fn sealing_and_reloading_are_invisible(
        shuffled in Just(four_decisions()).prop_shuffle(),
        redeliver in prop::collection::vec(0..16usize, 0..8),
    ) {
        let mut events = shuffled.clone();
        events.extend(redeliver.iter().map(|i| shuffled[*i % shuffled.len()].clone()));
        let reference = run(&mut AuditCore::new(keys()), &events);
        let (sealing, _) = run_sealing(&events);
        prop_assert_eq!(records(&sealing), records(&reference));
        prop_assert_eq!(feedback(&sealing), feedback(&reference));
    }
}

#[test]
fn a_late_event_after_the_outcome_reloads_and_continues_the_chain() {
    let mut events = human_events("late");
    let mut late = event(
        "late",
        LifecycleKind::VerdictRejected,
        "assignment",
        T0 + 900,
        7,
    );
    late.reviewer_id = Some("carol".into());
    late.reason = Some("already_decided".into());
    events.push(late);
    let (sealing, reloads) = run_sealing(&events);
    assert!(reloads >= 1, "the decided trail was sealed and read back");
    let reference = run(&mut AuditCore::new(keys()), &events);
    assert_eq!(records(&sealing), records(&reference));
    let written = records(&sealing);
    let last = written.last().unwrap();
    assert_eq!(
        last.prev_hash.as_deref(),
        Some(written[written.len() - 2].content_hash.as_str())
    );
}
