//! The hand-written datum codecs (`Decision`, `Outcome`, `ReviewRequest`, `LifecycleEvent`) against
//! the generic `serde_avro_fast` path driven by the `.avsc` files: the same bytes out, the same value
//! back, and a decoder that never panics, allocates only for bytes that are there, and accepts a
//! datum only when the generic path reads the same value from exactly those bytes.

use std::{collections::BTreeMap, io::BufRead, sync::Arc};

use hitl_schema::*;
use proptest::prelude::*;
use serde::{de::DeserializeOwned, Serialize};

/// The generic path's datum of `value`.
fn serde_datum<T: Record + Serialize>(value: &T) -> Vec<u8> {
    let mut config = serde_avro_fast::ser::SerializerConfig::new(T::schema());
    serde_avro_fast::to_datum(value, Vec::new(), &mut config).unwrap()
}

/// The generic path's reading of `datum`, `None` unless it reads a value from every byte.
fn serde_read_exactly<T: Record + DeserializeOwned>(datum: &[u8]) -> Option<T> {
    let mut state = serde_avro_fast::de::DeserializerState::from_slice(datum, T::schema());
    let value = T::deserialize(state.deserializer()).ok()?;
    state
        .into_reader()
        .fill_buf()
        .is_ok_and(|rest| rest.is_empty())
        .then_some(value)
}

/// The codec's datum of `value` (the hand-written path for the hot records).
fn codec_datum<T: Record>(value: &T) -> Vec<u8> {
    let codec = Codec::single_object();
    let framed = codec.encode_to_vec("t", value).unwrap();
    assert_eq!(&framed[..2], &[0xC3, 0x01]);
    assert_eq!(&framed[2..10], &T::fingerprint());
    codec.datum(&framed).to_vec()
}

/// The codec's reading of a single-object record holding `datum`.
fn codec_read<T: Record>(datum: &[u8]) -> Result<T, CodecError> {
    let mut framed = vec![0xC3, 0x01];
    framed.extend_from_slice(&T::fingerprint());
    framed.extend_from_slice(datum);
    Codec::single_object().decode(&framed)
}

fn text() -> impl Strategy<Value = String> {
    // Mostly short ASCII, sometimes any printable Unicode, sometimes long (multi-byte lengths).
    prop_oneof![
        4 => "[a-z0-9_.:-]{0,16}",
        2 => "\\PC{0,12}",
        1 => "[a-z]{100,300}",
    ]
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -1e9f64..1e9,
        1 => any::<f64>(),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(-0.0),
    ]
}

fn long() -> impl Strategy<Value = i64> {
    prop_oneof![3 => 0i64..4_000_000_000_000, 1 => any::<i64>()]
}

prop_compose! {
    fn decision_fields()(
        decision_id in text(),
        workflow in text(),
        subject in text(),
        action in text(),
        confidence in number(),
        risk_score in proptest::option::of(number()),
        amount in proptest::option::of(number()),
        priority in proptest::option::of(text()),
        producer in text(),
        model_name in text(),
        model_version in proptest::option::of(text()),
        features in proptest::collection::btree_map(text(), number(), 0..5),
        context in proptest::collection::btree_map(text(), text(), 0..5),
        sensitive_fields in proptest::collection::vec(text(), 0..4),
        created_at in long(),
        sla_ms in proptest::option::of(long()),
    ) -> Decision {
        Decision {
            decision_id, workflow, subject, action, confidence, risk_score, amount, priority,
            producer, model_name, model_version, features, context, sensitive_fields, created_at,
            sla_ms,
        }
    }
}

/// Boxed, so the nested strategies' value trees live on the heap (debug builds overflow the stack).
fn decision() -> BoxedStrategy<Decision> {
    decision_fields().boxed()
}

prop_compose! {
    fn outcome_fields()(
        decision_id in text(),
        final_action in text(),
        status in prop_oneof![
            Just(OutcomeStatus::Approved), Just(OutcomeStatus::Rejected), Just(OutcomeStatus::Amended)
        ],
        decided_by in prop_oneof![
            Just(DecidedBy::Auto), Just(DecidedBy::Human), Just(DecidedBy::Quorum),
            Just(DecidedBy::SlaFallback)
        ],
        reviewer_ids in proptest::collection::vec(text(), 0..4),
        policy_rule in text(),
        policy_version in text(),
        decided_at in long(),
        time_to_decision_ms in long(),
        workflow in text(),
        rationale in proptest::option::of(text()),
    ) -> Outcome {
        Outcome {
            decision_id, final_action, status, decided_by, reviewer_ids, policy_rule, policy_version,
            decided_at, time_to_decision_ms, workflow, rationale,
        }
    }
}

/// Boxed, so the nested strategies' value trees live on the heap (debug builds overflow the stack).
fn outcome() -> BoxedStrategy<Outcome> {
    outcome_fields().boxed()
}

prop_compose! {
    fn review_request_fields()(
        decision in decision(),
        kind in prop_oneof![Just(ReviewKind::Review), Just(ReviewKind::QaSample)],
        pool in text(),
        required_roles in proptest::collection::vec(text(), 0..4),
        priority_tier in text(),
        sla_deadline in long(),
        quorum in any::<i32>(),
        policy_rule in text(),
        policy_version in text(),
        auto_status in proptest::option::of(text()),
        routed_at in long(),
    ) -> ReviewRequest {
        ReviewRequest {
            decision: Arc::new(decision), kind, pool, required_roles, priority_tier, sla_deadline,
            quorum, policy_rule, policy_version, auto_status, routed_at,
        }
    }
}

/// Boxed, so the nested strategies' value trees live on the heap (debug builds overflow the stack).
fn review_request() -> BoxedStrategy<ReviewRequest> {
    review_request_fields().boxed()
}

fn lifecycle_kind() -> impl Strategy<Value = LifecycleKind> {
    proptest::sample::select(vec![
        LifecycleKind::Routed,
        LifecycleKind::QaSampled,
        LifecycleKind::Queued,
        LifecycleKind::Assigned,
        LifecycleKind::Revoked,
        LifecycleKind::Escalated,
        LifecycleKind::Verdict,
        LifecycleKind::VerdictRejected,
        LifecycleKind::SlaBreached,
        LifecycleKind::Outcome,
        LifecycleKind::DeadLettered,
    ])
}

prop_compose! {
    fn lifecycle_event_fields()(
        event_id in text(),
        decision_id in text(),
        kind in lifecycle_kind(),
        service in text(),
        event_time in long(),
        sequence in long(),
        reviewer_id in proptest::option::of(text()),
        assignment_id in proptest::option::of(text()),
        policy_rule in proptest::option::of(text()),
        policy_version in proptest::option::of(text()),
        reason in proptest::option::of(text()),
        attributes in proptest::collection::btree_map(text(), text(), 0..5),
        decision in proptest::option::of(decision()),
        outcome in proptest::option::of(outcome()),
        traceparent in proptest::option::of(text()),
    ) -> LifecycleEvent {
        LifecycleEvent {
            event_id, decision_id, kind, service, event_time, sequence, reviewer_id, assignment_id,
            policy_rule, policy_version, reason, attributes, decision: decision.map(Arc::new),
            outcome, traceparent,
        }
    }
}

/// Boxed, so the nested strategies' value trees live on the heap (debug builds overflow the stack).
fn lifecycle_event() -> BoxedStrategy<LifecycleEvent> {
    lifecycle_event_fields().boxed()
}

/// Same bytes out as the generic path, and the generic path reads them back to the same value
/// (compared by its bytes, so NaN payloads count too).
fn same_as_serde<T: Record + Serialize + DeserializeOwned>(value: &T) -> Result<(), TestCaseError> {
    let datum = codec_datum(value);
    prop_assert_eq!(&datum, &serde_datum(value));
    let back: T = serde_read_exactly(&datum).expect("the generic path reads the datum");
    prop_assert_eq!(serde_datum(&back), datum);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decisions_encode_and_decode_like_the_generic_path(value in decision()) {
        same_as_serde(&value)?;
        let datum = serde_datum(&value);
        let decoded: Decision = codec_read(&datum).unwrap();
        prop_assert_eq!(serde_datum(&decoded), datum);
    }

    #[test]
    fn outcomes_encode_like_the_generic_path(value in outcome()) {
        same_as_serde(&value)?;
        prop_assert_eq!(&codec_read::<Outcome>(&serde_datum(&value)).unwrap(), &value);
    }

    #[test]
    fn review_requests_encode_like_the_generic_path(value in review_request()) {
        same_as_serde(&value)?;
    }

    #[test]
    fn lifecycle_events_encode_like_the_generic_path(value in lifecycle_event()) {
        same_as_serde(&value)?;
    }
}

/// A finite decision (no NaN), so `PartialEq` can compare it directly.
fn finite_decision() -> impl Strategy<Value = Decision> {
    decision().prop_filter("finite numbers", |decision| {
        [decision.confidence]
            .into_iter()
            .chain(decision.risk_score)
            .chain(decision.amount)
            .chain(decision.features.values().copied())
            .all(|number| !number.is_nan())
    })
}

/// One edit of a valid datum.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    Append(Vec<u8>),
}

/// Mostly the small varints that steer a decoder (union branches, block counts, short lengths,
/// negative ones included), sometimes any byte.
fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![3 => 0u8..8, 1 => any::<u8>()]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), byte()).prop_map(|(at, byte)| Mutation::Set(at, byte)),
        1 => (any::<usize>(), byte()).prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        1 => any::<usize>().prop_map(Mutation::Remove),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => proptest::collection::vec(any::<u8>(), 1..4).prop_map(Mutation::Append),
    ]
}

fn mutate(datum: &mut Vec<u8>, mutation: &Mutation) {
    let len = datum.len().max(1);
    match mutation {
        Mutation::Set(at, byte) => {
            if let Some(slot) = datum.get_mut(at % len) {
                *slot = *byte;
            }
        }
        Mutation::Insert(at, byte) => datum.insert(at % (datum.len() + 1), *byte),
        Mutation::Remove(at) => {
            if !datum.is_empty() {
                datum.remove(at % len);
            }
        }
        Mutation::Truncate(at) => datum.truncate(at % len),
        Mutation::Append(bytes) => datum.extend_from_slice(bytes),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Damaged decisions: the decoder never panics, and it accepts exactly the datums the generic
    /// path reads completely, with the same value.
    #[test]
    fn damaged_decisions_decode_like_the_generic_path(
        value in finite_decision(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let mut datum = serde_datum(&value);
        for mutation in &mutations {
            mutate(&mut datum, mutation);
        }
        let fast = codec_read::<Decision>(&datum);
        let generic = serde_read_exactly::<Decision>(&datum);
        match (&fast, &generic) {
            (Ok(fast), Some(generic)) => prop_assert_eq!(serde_datum(fast), serde_datum(generic)),
            (Err(error), None) => prop_assert_eq!(error.class(), "avro"),
            _ => prop_assert!(false, "fast {:?} vs generic {:?} on {:02x?}", fast, generic, datum),
        }
    }

    /// Arbitrary bytes: never a panic, and never a value the generic path would not read.
    #[test]
    fn arbitrary_datums_never_panic(datum in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(fast) = codec_read::<Decision>(&datum) {
            let generic = serde_read_exactly::<Decision>(&datum);
            prop_assert!(generic.is_some());
            prop_assert_eq!(serde_datum(&fast), serde_datum(&generic.unwrap()));
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let decision = Decision {
        decision_id: "d".into(),
        workflow: "w".into(),
        subject: "s".into(),
        action: "a".into(),
        confidence: 0.5,
        risk_score: None,
        amount: None,
        priority: None,
        producer: "p".into(),
        model_name: String::new(),
        model_version: None,
        features: BTreeMap::new(),
        context: BTreeMap::new(),
        sensitive_fields: Vec::new(),
        created_at: 1,
        sla_ms: None,
    };
    let mut datum = serde_datum(&decision);
    assert_eq!(codec_read::<Decision>(&datum).unwrap(), decision);
    datum.push(0);
    let error = codec_read::<Decision>(&datum).unwrap_err();
    assert_eq!(error.class(), "avro");
    assert!(error.to_string().contains("1 trailing bytes"), "{error}");
    // The generic path (other writer schemas, other records) refuses them too.
    let mut verdict = codec_datum(&Verdict {
        decision_id: "d".into(),
        assignment_id: "a".into(),
        reviewer_id: "r".into(),
        verdict: VerdictKind::Approve,
        amended_action: None,
        rationale: String::new(),
        decided_at: 1,
        pool: "p".into(),
    });
    verdict.push(0);
    assert_eq!(codec_read::<Verdict>(&verdict).unwrap_err().class(), "avro");
}

/// A datum with `features` as given (the raw map encoding) and everything else empty.
fn decision_with_raw_features(features: &[u8]) -> Vec<u8> {
    let mut datum = serde_datum(&Decision {
        decision_id: "d".into(),
        workflow: "w".into(),
        subject: "s".into(),
        action: "a".into(),
        confidence: 0.5,
        risk_score: None,
        amount: None,
        priority: None,
        producer: "p".into(),
        model_name: String::new(),
        model_version: None,
        features: BTreeMap::new(),
        context: BTreeMap::new(),
        sensitive_fields: Vec::new(),
        created_at: 1,
        sla_ms: None,
    });
    let tail = datum.split_off(datum.len() - 5);
    datum.extend_from_slice(features);
    datum.extend_from_slice(&tail[1..]);
    datum
}

#[test]
fn blocks_with_a_byte_size_and_repeated_keys_read_like_the_generic_path() {
    let entry = |key: u8, value: f64| {
        let mut entry = vec![0x02, key];
        entry.extend_from_slice(&value.to_le_bytes());
        entry
    };
    // Two blocks: -2 entries (then their 20-byte size), 1 entry repeating a key, the end.
    let mut features = vec![0x03, 0x28];
    features.extend(entry(b'a', 1.0));
    features.extend(entry(b'b', 2.0));
    features.push(0x02);
    features.extend(entry(b'a', 3.0));
    features.push(0x00);
    let datum = decision_with_raw_features(&features);
    let fast = codec_read::<Decision>(&datum).unwrap();
    assert_eq!(
        fast.features,
        BTreeMap::from([("a".into(), 3.0), ("b".into(), 2.0)])
    );
    assert_eq!(Some(fast), serde_read_exactly::<Decision>(&datum));
}

#[test]
fn unknown_union_branches_are_refused() {
    let mut datum = decision_with_raw_features(&[0x00]);
    // sla_ms, the last byte, is a ["null", "long"] union: branch 2 does not exist.
    *datum.last_mut().unwrap() = 0x04;
    let error = codec_read::<Decision>(&datum).unwrap_err();
    assert!(error.to_string().contains("sla_ms"), "{error}");
    assert!(serde_read_exactly::<Decision>(&datum).is_none());
}

#[test]
fn huge_claimed_lengths_fail_without_allocating() {
    // decision_id claims i64::MAX bytes; features claims 2^62 entries.
    let mut datum = vec![0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
    datum.extend_from_slice(b"abc");
    let error = codec_read::<Decision>(&datum).unwrap_err();
    assert!(error.to_string().contains("decision_id"), "{error}");

    let mut decision = serde_datum(&Decision {
        decision_id: "d".into(),
        workflow: "w".into(),
        subject: "s".into(),
        action: "a".into(),
        confidence: 0.5,
        risk_score: None,
        amount: None,
        priority: None,
        producer: "p".into(),
        model_name: String::new(),
        model_version: None,
        features: BTreeMap::new(),
        context: BTreeMap::new(),
        sensitive_fields: Vec::new(),
        created_at: 1,
        sla_ms: None,
    });
    // The last five bytes are the empty features, context and sensitive_fields, created_at and
    // sla_ms; replace them by a giant features block count.
    decision.truncate(decision.len() - 5);
    decision.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
    let error = codec_read::<Decision>(&decision).unwrap_err();
    assert!(error.to_string().contains("features"), "{error}");
}
