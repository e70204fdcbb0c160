//! The audit core against what an authenticated but misbehaving (or flooded) service can send:
//! a known event id with other content, events over their size bounds, thousands of rejected
//! verdicts on one trail; every record stays within its proven bound, refusals are noted in the
//! trail as the audit's own entries (never as events), and `verify` tells missing events, a forged
//! decision and a truncated tail.

use std::{collections::BTreeMap, sync::Arc};

use hitl_audit::{
    bounds::{self, Limits},
    checkpoint::Checkpointer,
    crypto::{Hasher, Keys},
    head::{Head, Heads},
    trail::{AuditCore, Claim, Effect, Note, Noted, Observation, REFUSED, REFUSED_SUMMARY},
    verify::{missing_events, verify_with, Checks, ExpectedHead, Input, Logged},
};
use hitl_schema::*;

const SEED: &str = "0202020202020202020202020202020202020202020202020202020202020202";
const HASH_KEY: &str = "trust-test-hash-key";
const T0: i64 = 1_800_000_000_000;

fn keys() -> Arc<Keys> {
    Arc::new(Keys::new(SEED, "k1", HASH_KEY).unwrap())
}

fn decision(id: &str) -> Decision {
    Decision {
        decision_id: id.into(),
        workflow: "payments.card".into(),
        subject: format!("txn-{id}"),
        action: "approve".into(),
        confidence: 0.6,
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

fn lifecycle(id: &str) -> Vec<LifecycleEvent> {
    hitl_schema::sample::human_lifecycle(decision(id), "ann", "rule", T0, 10)
}

fn rejected(id: &str, sequence: i64) -> LifecycleEvent {
    let mut event = LifecycleEvent::new(
        format!("{id}:assignment:{sequence}"),
        id,
        LifecycleKind::VerdictRejected,
        "assignment",
        T0 + 100 + sequence,
    );
    event.sequence = sequence;
    event.reviewer_id = Some("mallory".into());
    event.reason = Some("not_holder".into());
    event.attributes.insert("verdict".into(), "APPROVE".into());
    event
        .attributes
        .insert("rationale".into(), "please".repeat(20));
    event
}

fn records(effects: &[Effect]) -> Vec<&AuditRecord> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Record { record, .. } => Some(record),
            _ => None,
        })
        .collect()
}

fn refused(effects: &[Effect]) -> Vec<(&'static str, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Refused { reason, class, .. } => Some((*reason, class.clone())),
            _ => None,
        })
        .collect()
}

fn encoded_size(record: &AuditRecord) -> usize {
    Codec::single_object()
        .encode_to_vec("", record)
        .unwrap()
        .len()
}

#[test]
fn a_known_event_id_with_other_content_is_refused_noted_and_the_first_kept() {
    let mut core = AuditCore::new(keys());
    let events = lifecycle("d1");
    let mut out = Vec::new();
    for event in &events {
        core.event(0, event, &mut out);
    }
    let before = core.trail("d1").unwrap().clone();
    // The same event again, even re-stamped and with another trace context: a re-delivery.
    let mut again = events[2].clone();
    again.event_time += 5_000;
    again.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    let mut out = Vec::new();
    core.event(0, &again, &mut out);
    assert_eq!(out, vec![Effect::Observed(Observation::Duplicate)]);
    // The ASSIGNED event's id with another reviewer: a conflict, refused and noted.
    let mut hijack = events[2].clone();
    hijack.reviewer_id = Some("mallory".into());
    let mut out = Vec::new();
    core.event(0, &hijack, &mut out);
    assert_eq!(
        refused(&out),
        vec![("conflicting_event", "audit.conflicting_event".to_owned())]
    );
    let written = records(&out);
    assert_eq!(written.len(), 1, "one version with the note");
    let trail = core.trail("d1").unwrap();
    let assigned = trail
        .timeline
        .values()
        .find(|e| e.event_id == events[2].event_id)
        .unwrap();
    assert_eq!(
        assigned.reviewer_id.as_deref(),
        Some("ann"),
        "the first is kept"
    );
    let note = trail.timeline.values().find(|e| e.kind == REFUSED).unwrap();
    assert_eq!(note.service, "audit");
    assert_eq!(note.reason.as_deref(), Some("audit.conflicting_event"));
    assert_eq!(
        note.attributes.get("claimed_event_id"),
        Some(&events[2].event_id)
    );
    assert_eq!(note.reviewer_id, None, "a note names no reviewer");
    assert_eq!(trail.outcome, before.outcome);
    assert_eq!(trail.decision, before.decision);
    // The same conflicting event again: refused again, not noted twice.
    let mut out = Vec::new();
    core.event(0, &hijack, &mut out);
    assert_eq!(refused(&out).len(), 1);
    assert!(records(&out).is_empty());
    // An outcome under the OUTCOME event's id with another status: refused, outcome unchanged.
    let mut flipped = events[4].clone();
    flipped.outcome.as_mut().unwrap().status = OutcomeStatus::Rejected;
    let mut out = Vec::new();
    core.event(0, &flipped, &mut out);
    assert_eq!(refused(&out)[0].0, "conflicting_event");
    assert!(!out.iter().any(|e| matches!(e, Effect::Feedback(_))));
    assert_eq!(
        core.trail("d1").unwrap().outcome.as_ref().unwrap().status,
        OutcomeStatus::Approved
    );
}

#[test]
fn a_conflict_on_a_sealed_trail_reloads_it_but_a_redelivery_does_not() {
    let mut core = AuditCore::new(keys()).with_seal_after(0);
    let events = lifecycle("d1");
    let mut out = Vec::new();
    for event in &events {
        core.event(0, event, &mut out);
    }
    assert_eq!(core.seal_idle(T0 + 1_000_000), 1);
    for event in &events {
        assert_eq!(core.needs_reload(event), None, "{}", event.event_id);
    }
    let mut hijack = events[3].clone();
    hijack.attributes.insert("verdict".into(), "REJECT".into());
    assert!(core.needs_reload(&hijack).is_some());
}

#[test]
fn events_over_their_bounds_are_refused_and_noted_never_applied() {
    let mut core = AuditCore::new(keys());
    let events = lifecycle("d1");
    let mut out = Vec::new();
    for event in &events[..3] {
        core.event(0, event, &mut out);
    }
    // A verdict with a ~1 MB attribute.
    let mut huge = events[3].clone();
    huge.attributes
        .insert("rationale".into(), "x".repeat(1 << 20));
    let mut out = Vec::new();
    core.event(0, &huge, &mut out);
    assert_eq!(
        refused(&out),
        vec![("oversize", "oversize.event".to_owned())]
    );
    let trail = core.trail("d1").unwrap();
    assert_eq!(trail.events, 3);
    let note = trail.timeline.values().find(|e| e.kind == REFUSED).unwrap();
    assert_eq!(note.attributes["authenticated"], "true");
    assert_eq!(note.attributes["claimed_sequence"], "3");
    for record in records(&out) {
        assert!(encoded_size(record) < 64 * 1024);
    }
    // The real verdict and outcome still go in; the refused sequence is accounted for.
    let mut out = Vec::new();
    core.event(0, &events[3], &mut out);
    core.event(0, &events[4], &mut out);
    let last = records(&out).last().unwrap().to_owned().clone();
    assert!(last.outcome.is_some());
    assert_eq!(missing_events(&last), Vec::<String>::new());
    // An oversize decision, a decision about another id, an outcome naming 65 reviewers.
    let mut big = lifecycle("d2")[0].clone();
    let mut decision = decision("d2");
    decision.context.insert("blob".into(), "y".repeat(200_000));
    big.decision = Some(Arc::new(decision));
    let mut other = lifecycle("d3")[0].clone();
    other.decision = Some(Arc::new(self::decision("someone-else")));
    let mut crowd = lifecycle("d4")[4].clone();
    crowd.outcome.as_mut().unwrap().reviewer_ids = (0..65).map(|i| format!("r{i}")).collect();
    let mut out = Vec::new();
    core.event(0, &big, &mut out);
    core.event(0, &other, &mut out);
    core.event(0, &crowd, &mut out);
    assert_eq!(
        refused(&out),
        vec![
            ("oversize", "oversize.decision".to_owned()),
            ("invalid", "validation.decision".to_owned()),
            ("oversize", "oversize.outcome".to_owned())
        ]
    );
    assert!(core.trail("d2").is_none() && core.trail("d3").is_none() && core.trail("d4").is_none());
}

#[test]
fn thousands_of_rejected_verdicts_fill_at_most_three_quarters_and_the_outcome_still_fits() {
    let limits = Limits::default();
    let mut core = AuditCore::new(keys()).with_limits(limits);
    let events = lifecycle("d1");
    let mut out = Vec::new();
    for event in &events[..3] {
        core.event(0, event, &mut out);
    }
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    for sequence in 3..3003 {
        core.event(0, &rejected("d1", sequence), &mut out);
    }
    let flood = started.elapsed();
    let versions = records(&out).len();
    let refusals = refused(&out);
    let general = limits.max_timeline_entries * 3 / 4;
    assert_eq!(versions, general - 3, "one version per admitted event");
    assert_eq!(refusals.len(), 3000 - versions);
    assert!(refusals.iter().all(|(r, _)| *r == "timeline_full"));
    eprintln!(
        "3000 rejected verdicts: {versions} versions, {} refused, {:.1} ms",
        refusals.len(),
        flood.as_secs_f64() * 1000.0
    );
    // The summary is written once, at the next flush, however many refusals it counts.
    let mut out = Vec::new();
    core.flush_summaries(&mut out);
    core.flush_summaries(&mut out);
    let summary_versions = records(&out);
    assert_eq!(summary_versions.len(), 1);
    let summary = summary_versions[0]
        .timeline
        .iter()
        .find(|e| e.kind == REFUSED_SUMMARY)
        .unwrap();
    assert_eq!(
        summary.attributes["refused.timeline_full"],
        refusals.len().to_string()
    );
    assert_eq!(
        summary.attributes["omitted.assignment"],
        format!("{}-3002", 3 + versions)
    );
    // The essential events still find room: the deciding verdict and the outcome.
    let mut verdict = events[3].clone();
    verdict.sequence = 3003;
    verdict.event_id = "d1:assignment:3003".into();
    let mut done = events[4].clone();
    done.sequence = 3004;
    done.event_id = "d1:assignment:3004".into();
    let mut out = Vec::new();
    core.event(0, &verdict, &mut out);
    core.event(0, &done, &mut out);
    assert!(refused(&out).is_empty(), "{:?}", refused(&out));
    assert_eq!(
        out.iter()
            .filter(|e| matches!(e, Effect::Feedback(_)))
            .count(),
        1
    );
    let last = records(&out).last().unwrap().to_owned().clone();
    assert!(last.outcome.is_some());
    let size = encoded_size(&last);
    assert!(size + 1024 < limits.record_bound(), "{size}");
    assert_eq!(
        missing_events(&last),
        Vec::<String>::new(),
        "the summary accounts for the gap"
    );
    eprintln!(
        "flooded trail: {} entries, {size} bytes (bound {})",
        last.timeline.len(),
        limits.record_bound()
    );
    // A restored core carries on with the same counts.
    let mut restored = AuditCore::new(keys()).with_limits(limits);
    restored.restore(0, last.clone());
    let trail = restored.trail("d1").unwrap();
    assert_eq!(trail.events, core.trail("d1").unwrap().events);
    assert_eq!(trail.summary, core.trail("d1").unwrap().summary);
}

#[test]
fn the_largest_trail_the_limits_allow_encodes_within_the_record_bound() {
    // Small limits, every one reached: decision, entries, outcome, notes and summary.
    let limits = Limits {
        max_id_bytes: 64,
        max_entry_bytes: 2048,
        max_decision_bytes: 4096,
        max_timeline_entries: 32,
        max_timeline_bytes: 16 * 1024,
        max_notes: 4,
    };
    let id = "d".repeat(64);
    let mut core = AuditCore::new(keys()).with_limits(limits);
    let mut routed =
        hitl_schema::sample::routed(decision(&id), "human", "r".repeat(256).as_str(), T0);
    routed.policy_version = Some("v".repeat(256));
    routed.attributes.insert("route".into(), "h".repeat(256));
    let mut decision = decision(&id);
    let room = limits.max_decision_bytes - bounds::decision(&decision) - 100;
    decision.subject = "s".repeat(room);
    routed.decision = Some(Arc::new(decision));
    let mut out = Vec::new();
    core.event(0, &routed, &mut out);
    assert!(refused(&out).is_empty(), "{:?}", refused(&out));
    for sequence in 1..200 {
        let mut event = rejected(&id, sequence);
        event.event_id = format!("{id}:{sequence}");
        let size = bounds::entry(&TimelineEntry {
            event_id: event.event_id.clone(),
            kind: event.kind.as_str().into(),
            service: event.service.clone(),
            event_time: event.event_time,
            sequence,
            reviewer_id: event.reviewer_id.clone(),
            assignment_id: None,
            reason: event.reason.clone(),
            attributes: event.attributes.clone(),
        });
        event
            .attributes
            .insert("pad".into(), "p".repeat(limits.max_entry_bytes - size - 10));
        if sequence > 150 {
            event.kind = LifecycleKind::Verdict;
        }
        core.event(0, &event, &mut out);
    }
    let mut done = lifecycle(&id)[4].clone();
    done.outcome.as_mut().unwrap().rationale = Some("w".repeat(1500));
    done.sequence = 200;
    core.event(0, &done, &mut out);
    for i in 0..10 {
        let note = Note {
            id: format!("{i:016x}"),
            reason: "bad_signature",
            class: "auth.bad_signature".into(),
            authenticated: false,
            claim: Some(Claim {
                kind: "OUTCOME".repeat(40),
                service: "router".repeat(40),
                event_id: "e".repeat(400),
                sequence: i64::MAX,
            }),
            key_id: Some("k".repeat(64)),
            source: Some(format!("{}/{}", i32::MAX, i64::MAX)),
        };
        let noted = core.note(&id, &note, T0 + i, &mut out);
        assert!(matches!(noted, Noted::Written | Noted::Counted));
    }
    core.flush_summaries(&mut out);
    let largest = records(&out)
        .into_iter()
        .map(|r| {
            let mut r = r.clone();
            r.key_id = "k".repeat(128);
            encoded_size(&r) + r.decision_id.len() + bounds::HEADERS_BYTES
        })
        .max()
        .unwrap();
    let trail = core.trail(&id).unwrap();
    assert!(trail.event_bytes > limits.max_timeline_bytes - limits.max_entry_bytes);
    assert_eq!(trail.notes, limits.max_notes);
    assert!(
        largest <= limits.record_bound(),
        "{largest} > {}",
        limits.record_bound()
    );
    eprintln!(
        "largest record {largest} of bound {}",
        limits.record_bound()
    );
    for effect in &out {
        if let Effect::Feedback(feedback) = effect {
            let size = Codec::single_object()
                .encode_to_vec("", feedback)
                .unwrap()
                .len();
            assert!(size <= limits.feedback_bound());
        }
    }
}

#[test]
fn notes_past_the_cap_are_counted_in_one_summary() {
    let limits = Limits::default();
    let mut core = AuditCore::new(keys());
    let mut out = Vec::new();
    for event in &lifecycle("d1") {
        core.event(0, event, &mut out);
    }
    let note = |i: usize| Note {
        id: format!("{i:016x}"),
        reason: "bad_signature",
        class: "auth.bad_signature".into(),
        authenticated: false,
        claim: None,
        key_id: Some("router-1".into()),
        source: Some(format!("0/{i}")),
    };
    let mut out = Vec::new();
    let noted: Vec<Noted> = (0..40)
        .map(|i| core.note("d1", &note(i), T0 + 1, &mut out))
        .collect();
    assert_eq!(
        noted.iter().filter(|n| **n == Noted::Written).count(),
        limits.max_notes
    );
    assert_eq!(core.note("d1", &note(0), T0 + 1, &mut out), Noted::Counted);
    assert_eq!(
        core.note("nobody", &note(0), T0 + 1, &mut out),
        Noted::NoTrail
    );
    assert_eq!(records(&out).len(), limits.max_notes);
    let mut out = Vec::new();
    core.flush_summaries(&mut out);
    let record = records(&out)[0].clone();
    let summary = record
        .timeline
        .iter()
        .find(|e| e.kind == REFUSED_SUMMARY)
        .unwrap();
    assert_eq!(
        summary.attributes["refused.bad_signature"],
        (41 - 16).to_string()
    );
    // Notes never change what happened.
    assert!(record.outcome.is_some());
    assert_eq!(
        record
            .timeline
            .iter()
            .filter(|e| e.service != "audit")
            .count(),
        5
    );
    // Same input noted before, on a fresh core: once.
    let mut core = AuditCore::new(keys());
    let mut out = Vec::new();
    for event in &lifecycle("d2") {
        core.event(0, event, &mut out);
    }
    assert_eq!(core.note("d2", &note(1), T0, &mut out), Noted::Written);
    assert_eq!(core.note("d2", &note(1), T0, &mut out), Noted::Again);
}

/// A trail's records and one checkpoint of them, as `verify` reads them.
fn logged(effects: &[Effect], keys: &Keys) -> (Input, Head) {
    let codec = Codec::single_object();
    let mut input = Input::default();
    let mut checkpointer = Checkpointer::new(0, T0);
    for (offset, record) in records(effects).into_iter().enumerate() {
        checkpointer.append(record);
        input.audit.push(Logged {
            partition: 0,
            offset: offset as i64,
            key: Some(record.decision_id.clone()),
            payload: Some(codec.encode_to_vec("", record).unwrap()),
        });
    }
    let checkpoint = checkpointer.cut(keys, T0);
    input.checkpoints.push(Logged {
        partition: 0,
        offset: 0,
        key: Some("0".into()),
        payload: Some(codec.encode_to_vec("", &checkpoint).unwrap()),
    });
    (input, Head::of(&checkpoint))
}

#[test]
fn verify_finds_missing_events_a_forged_decision_and_a_truncated_tail() {
    let keys = keys();
    let public = BTreeMap::from([("k1".to_owned(), keys.verifying_key())]);
    let mut core = AuditCore::new(keys.clone());
    let mut out = Vec::new();
    let events = lifecycle("d1");
    for event in &events {
        core.event(0, event, &mut out);
    }
    let (input, head) = logged(&out, &keys);
    let received = BTreeMap::from([("d1".to_owned(), vec![decision("d1")])]);
    let checks = Checks {
        received: Some(received.clone()),
        hasher: Some(Hasher::new(HASH_KEY.as_bytes())),
        expect_heads: vec![ExpectedHead::Partitions(Heads::from([(0, head.clone())]))],
    };
    let report = verify_with(&input, &public, &checks);
    assert!(report.is_clean(), "{report}");
    assert!(report
        .to_string()
        .contains("signed by key `k1`: 5 records, 1 checkpoints"));

    // (a) The decision in the trail is not the one published: a forged amount.
    let mut published = decision("d1");
    published.amount = Some(99_000.0);
    let forged = Checks {
        received: Some(BTreeMap::from([("d1".to_owned(), vec![published])])),
        hasher: Some(Hasher::new(HASH_KEY.as_bytes())),
        expect_heads: vec![],
    };
    let text = verify_with(&input, &public, &forged).to_string();
    assert!(
        text.contains("decision d1: forged decision") && text.contains("amount"),
        "{text}"
    );
    // A sensitive value differs: found only with the hash key.
    let mut published = decision("d1");
    published
        .context
        .insert("customer".into(), "Mallory Example".into());
    let mut forged = Checks {
        received: Some(BTreeMap::from([("d1".to_owned(), vec![published])])),
        hasher: Some(Hasher::new(HASH_KEY.as_bytes())),
        expect_heads: vec![],
    };
    let text = verify_with(&input, &public, &forged).to_string();
    assert!(
        text.contains("forged decision") && text.contains("context"),
        "{text}"
    );
    forged.hasher = None;
    assert!(verify_with(&input, &public, &forged).is_clean());
    // A decision never published at all.
    let never = Checks {
        received: Some(BTreeMap::new()),
        ..Checks::default()
    };
    assert!(verify_with(&input, &public, &never)
        .to_string()
        .contains("never published"));

    // (b) A trail whose ASSIGNED event was withheld: a gap in the assignment's sequence.
    let mut core = AuditCore::new(keys.clone());
    let mut out = Vec::new();
    for (i, event) in events.iter().enumerate() {
        if i != 2 {
            core.event(0, event, &mut out);
        }
    }
    let (gapped, _) = logged(&out, &keys);
    let text = verify_with(&gapped, &public, &Checks::default()).to_string();
    assert!(
        text.contains("decision d1: missing events: assignment events 2 are not in the trail"),
        "{text}"
    );
    // The router's event withheld.
    let mut core = AuditCore::new(keys.clone());
    let mut out = Vec::new();
    for event in &events[1..] {
        core.event(0, event, &mut out);
    }
    let (no_router, _) = logged(&out, &keys);
    assert!(verify_with(&no_router, &public, &Checks::default())
        .to_string()
        .contains("not the router's"));

    // (c) The newest records and their checkpoint deleted together: the rest verifies, but not
    // against the head kept outside Kafka.
    let mut core = AuditCore::new(keys.clone());
    let mut out = Vec::new();
    for event in &events[..3] {
        core.event(0, event, &mut out);
    }
    let (truncated, _) = logged(&out, &keys);
    assert!(verify_with(&truncated, &public, &Checks::default()).is_clean());
    let mut later = head.clone();
    later.sequence = 1;
    for expected in [
        ExpectedHead::Partitions(Heads::from([(0, later)])),
        ExpectedHead::Hash(head.hash.clone()),
    ] {
        let checks = Checks {
            expect_heads: vec![expected],
            ..Checks::default()
        };
        let text = verify_with(&truncated, &public, &checks).to_string();
        assert!(
            text.contains("truncated") || text.contains("ends before it"),
            "{text}"
        );
    }
}
