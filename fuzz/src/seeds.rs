//! The seed inputs of each target, built from the repository's own samples: the records of
//! `hitl_schema::sample` (what the benchmarks and the load generator send), the decision of the
//! Python interop test (`tests/python/interop.py`), the roster and verdicts of the demo's reviewers
//! (`loadtest/src/reviewers.rs`), `config/policy.yaml`, the policy of `services/router/tests/
//! policy.rs`, and the development keys of `config/`. `examples/write_seeds.rs` writes them to
//! `fuzz/seeds/<target>/`; each input is laid out as its target's doc comment says.

use std::{collections::BTreeMap, sync::Arc};

use hitl_schema::{
    sample, Decision, LifecycleEvent, Presence, Record, ReviewKind, ReviewRequest, ReviewerStatus,
    Verdict, VerdictKind,
};

use crate::{auth, codec, old_decision_fingerprint, TOPIC};

/// One seed: its target, a file name, the bytes.
pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
}

/// The routing policy the demo runs with.
pub const DEMO_POLICY: &str = include_str!("../../config/policy.yaml");
/// The keys the services trust in development.
pub const DEV_KEYS: &str = include_str!("../../config/dev-keys.toml");
/// The development clients' secrets (the gateway's ed25519 secret key among them).
pub const DEV_CLIENTS: &str = include_str!("../../config/dev-clients.toml");

/// The policy of the router's policy tests.
const TEST_POLICY: &str = r#"
version: v1
rules:
  - name: certain-block
    when: { action: [block], confidence: { gte: 0.98 } }
    then: auto_reject
  - name: large
    when: { amount: { gte: 10000 } }
    then: { review: { pool: senior, roles: [senior], tier: high, sla: 30m, quorum: 2 } }
  - name: confident
    when: { confidence: { gte: 0.9 }, risk_score: { lt: 0.3 } }
    then: auto_approve
    qa_sample_rate: 0.5
  - name: dutch
    when: { context: { country: [NL] }, features: { velocity: { gt: 2 } } }
    then: { review: { pool: nl, sla: 1h } }
default: { review: { pool: general, sla: 4h } }
"#;

/// The decision `tests/python/interop.py` publishes (its JSON form is the one it sends with
/// `content-type: application/json`).
pub fn interop_decision(decision_id: &str, confidence: f64, action: &str) -> Decision {
    Decision {
        decision_id: decision_id.into(),
        workflow: "payments.fraud".into(),
        subject: format!("txn-{decision_id}"),
        action: action.into(),
        confidence,
        risk_score: Some(0.2),
        amount: Some(42.5),
        priority: None,
        producer: "python-model".into(),
        model_name: "py-gbm".into(),
        model_version: Some("3.1".into()),
        features: BTreeMap::from([("velocity".into(), 1.25)]),
        context: BTreeMap::from([("card".into(), "4111-1111".into())]),
        sensitive_fields: vec!["card".into()],
        created_at: 1_795_000_000_000,
        sla_ms: None,
    }
}

/// Sample decisions: card payments of the load generator's shape, the interop test's, and one
/// with every optional field set.
pub fn decisions() -> Vec<Decision> {
    let mut decisions: Vec<Decision> = (0..4u64)
        .map(|i| {
            let request = sample::review_request(
                format!("d-{i}"),
                i * 12_347,
                "general".into(),
                1_795_000_000_000,
                1_795_000_060_000,
            );
            Arc::unwrap_or_clone(request.decision)
        })
        .collect();
    decisions.push(interop_decision("py-auto", 0.97, "allow"));
    decisions.push(interop_decision("py-human", 0.4, "block"));
    let mut full = interop_decision("full-1", 0.985, "block");
    full.workflow = "moderation.comments".into();
    full.priority = Some("urgent".into());
    full.amount = Some(12_500.0);
    full.risk_score = Some(0.81);
    full.sla_ms = Some(900_000);
    full.context.insert("country".into(), "NL".into());
    full.features.insert("toxicity".into(), 0.93);
    decisions.push(full);
    decisions
}

/// The Avro datum of `value` (this build's schema).
fn datum<T: Record>(value: &T) -> Vec<u8> {
    let framed = codec().encode_to_vec(TOPIC, value).expect("samples encode");
    codec().datum(&framed).to_vec()
}

/// A record's datum behind a selector byte, as `fuzz_framed_record` reads it.
fn selected(selector: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![selector];
    out.extend_from_slice(bytes);
    out
}

/// The datum of `decision` written with `old_decision_schema()`.
fn old_decision_datum(decision: &Decision) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct OldDecision<'a> {
        decision_id: &'a str,
        workflow: &'a str,
        subject: &'a str,
        action: &'a str,
        confidence: f64,
        legacy_score: f64,
        risk_score: Option<f64>,
        amount: Option<f64>,
        priority: Option<&'a str>,
        producer: &'a str,
        model_name: &'a str,
        features: &'a BTreeMap<String, f64>,
        context: &'a BTreeMap<String, String>,
        created_at: i64,
    }
    let old = OldDecision {
        decision_id: &decision.decision_id,
        workflow: &decision.workflow,
        subject: &decision.subject,
        action: &decision.action,
        confidence: decision.confidence,
        legacy_score: 0.5,
        risk_score: decision.risk_score,
        amount: decision.amount,
        priority: decision.priority.as_deref(),
        producer: &decision.producer,
        model_name: &decision.model_name,
        features: &decision.features,
        context: &decision.context,
        created_at: decision.created_at,
    };
    let schema: serde_avro_fast::Schema = crate::old_decision_schema().parse().expect("valid");
    let mut config = serde_avro_fast::ser::SerializerConfig::new(&schema);
    serde_avro_fast::to_datum(&old, Vec::new(), &mut config).expect("the old schema fits")
}

/// The demo's reviewers (`loadtest/src/reviewers.rs`) as roster entries.
pub fn reviewer_statuses() -> Vec<ReviewerStatus> {
    [
        ("ana", vec!["senior", "moderator"], 3, Presence::Online),
        ("ben", vec!["release-manager"], 1, Presence::Away),
        ("chen", vec![], 2, Presence::Offline),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (name, roles, capacity, presence))| ReviewerStatus {
        reviewer_id: format!("reviewer-{name}"),
        roles: roles.into_iter().map(str::to_owned).collect(),
        skills: if i == 0 { vec!["de".into()] } else { vec![] },
        pools: if i == 1 {
            vec!["release-managers".into()]
        } else {
            vec![]
        },
        capacity,
        partition: Some(i as i32),
        presence,
        updated_at: 1_795_000_000_000 + i as i64,
    })
    .collect()
}

/// Verdicts as the demo's reviewers write them (`loadtest/src/reviewers.rs`).
pub fn verdicts() -> Vec<Verdict> {
    [
        VerdictKind::Approve,
        VerdictKind::Reject,
        VerdictKind::Amend,
        VerdictKind::Defer,
        VerdictKind::Escalate,
        VerdictKind::Renew,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, kind)| Verdict {
        decision_id: format!("d-{i}"),
        assignment_id: format!("d-{i}:1"),
        reviewer_id: "reviewer-ana".into(),
        verdict: kind,
        amended_action: (kind == VerdictKind::Amend).then(|| "block-reduced".to_owned()),
        rationale: format!("demo reviewer: {kind:?}"),
        decided_at: 1_795_000_000_000,
        pool: "payments-senior".into(),
    })
    .collect()
}

/// Review requests: the samples, and a QA copy of an auto decision.
pub fn review_requests() -> Vec<ReviewRequest> {
    let mut requests: Vec<ReviewRequest> = decisions()
        .into_iter()
        .map(|decision| ReviewRequest {
            decision: Arc::new(decision),
            ..sample::review_request(
                String::new(),
                7,
                "general".into(),
                1_795_000_000_000,
                1_795_000_060_000,
            )
        })
        .collect();
    let mut qa = requests[0].clone();
    qa.kind = ReviewKind::QaSample;
    qa.pool = "qa".into();
    qa.required_roles = vec!["senior".into()];
    qa.quorum = 2;
    qa.auto_status = Some("APPROVED".into());
    requests.push(qa);
    requests
}

/// Lifecycle events: a whole human-reviewed lifecycle, and the ROUTED event of each decision.
pub fn lifecycle_events() -> Vec<LifecycleEvent> {
    let mut events = sample::human_lifecycle(
        interop_decision("py-human", 0.4, "block"),
        "reviewer-ana",
        "large-payments-two-person",
        1_795_000_000_000,
        1_000,
    );
    for decision in decisions() {
        events.push(sample::routed(
            decision,
            "human",
            "default",
            1_795_000_000_000,
        ));
    }
    events[0].traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    events
}

/// The development keys' signers: the HMAC secrets of `config/dev-keys.toml` and the gateway's
/// ed25519 secret of `config/dev-clients.toml`.
pub fn dev_signers() -> Vec<auth::Signer> {
    let mut signers: Vec<auth::Signer> = auth::parse_key_file(DEV_KEYS)
        .expect("config/dev-keys.toml parses")
        .iter()
        .filter_map(|entry| {
            let secret = entry.secret.as_ref()?;
            let secret = hex::decode(secret.expose()).expect("hex secrets");
            Some(auth::Signer::new(&entry.key_id, entry.algorithm, &secret).expect("valid"))
        })
        .collect();
    #[derive(serde::Deserialize)]
    struct Clients {
        gateway: Client,
    }
    #[derive(serde::Deserialize)]
    struct Client {
        key_id: String,
        algorithm: auth::Algorithm,
        secret: String,
    }
    let clients: Clients = ::config::Config::builder()
        .add_source(::config::File::from_str(
            DEV_CLIENTS,
            ::config::FileFormat::Toml,
        ))
        .build()
        .and_then(::config::Config::try_deserialize)
        .expect("config/dev-clients.toml parses");
    let gateway = clients.gateway;
    let secret = hex::decode(&gateway.secret).expect("a hex secret");
    signers.push(auth::Signer::new(&gateway.key_id, gateway.algorithm, &secret).expect("valid"));
    signers
}

/// The trusted keys of `config/dev-keys.toml`.
pub fn dev_key_set() -> auth::KeySet {
    let entries = auth::parse_key_file(DEV_KEYS).expect("config/dev-keys.toml parses");
    auth::key_set(&entries, "config/dev-keys.toml")
        .expect("config/dev-keys.toml loads")
        .0
}

/// An input of the `auth_header` target (its doc comment gives the layout).
pub fn auth_input(
    kind: u8,
    sign_with: Option<u8>,
    header: Option<&[u8]>,
    key: Option<&[u8]>,
    value: &[u8],
) -> Vec<u8> {
    let header_len = header.map_or(0, <[u8]>::len);
    let key_len = key.map_or(0, <[u8]>::len);
    assert!(header_len < 256 && key_len < 256);
    let flags = u8::from(key.is_some()) | u8::from(header.is_some()) << 1;
    let mut out = vec![
        kind,
        flags,
        sign_with.map_or(0xFF, |index| index),
        header_len as u8,
        key_len as u8,
    ];
    out.extend_from_slice(header.unwrap_or_default());
    out.extend_from_slice(key.unwrap_or_default());
    out.extend_from_slice(value);
    out
}

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let mut add = |target: &'static str, name: String, bytes: Vec<u8>| {
        seeds.push(Seed {
            target,
            name,
            bytes,
        })
    };
    let old_fingerprint = old_decision_fingerprint();
    for (i, decision) in decisions().iter().enumerate() {
        add(
            "decision_avro",
            format!("datum-{i}"),
            selected(0, &datum(decision)),
        );
        let old = crate::framed_with(&old_fingerprint, &old_decision_datum(decision));
        add(
            "decision_avro",
            format!("old-schema-{i}"),
            selected(1, &old[10..]),
        );
        let framed = codec().encode_to_vec(TOPIC, decision).expect("encodes");
        add("decision_avro", format!("framed-{i}"), selected(2, &framed));
        let json = serde_json::to_vec_pretty(decision).expect("JSON");
        add("decision_json", format!("decision-{i}"), json.clone());
        let routed = [&[0u8][..], &json].concat();
        add(
            "policy",
            format!("demo-policy-decision-{i}"),
            [DEMO_POLICY.as_bytes(), &routed].concat(),
        );
        add(
            "policy",
            format!("test-policy-decision-{i}"),
            [TEST_POLICY.as_bytes(), &routed].concat(),
        );
    }
    add(
        "decision_json",
        "interop-wrong-types".into(),
        br#"{"decision_id": "py-json", "workflow": "payments.fraud", "subject": "txn-py-json",
        "action": "allow", "confidence": "SECRET-0.99", "risk_score": 0.2, "amount": 42.5,
        "priority": null, "producer": "python-model", "model_name": "py-gbm",
        "model_version": "3.1", "features": {"velocity": 1.25},
        "context": {"card": ["SECRET-4111-1111"]}, "sensitive_fields": ["card"],
        "created_at": 1795000000000, "sla_ms": null}"#
            .to_vec(),
    );
    add(
        "decision_json",
        "minimal".into(),
        br#"{"decision_id":"m","workflow":"w","subject":"s","action":"a","confidence":0.5,"producer":"p","created_at":1}"#.to_vec(),
    );
    add(
        "policy",
        "demo-policy".into(),
        DEMO_POLICY.as_bytes().to_vec(),
    );
    add(
        "policy",
        "minimal".into(),
        b"version: v\ndefault: auto_approve\n".to_vec(),
    );
    for (i, verdict) in verdicts().iter().enumerate() {
        add(
            "verdict",
            format!("datum-{i}"),
            selected(0, &datum(verdict)),
        );
    }
    for (i, status) in reviewer_statuses().iter().enumerate() {
        add(
            "reviewer_status",
            format!("datum-{i}"),
            selected(0, &datum(status)),
        );
    }
    for (i, request) in review_requests().iter().enumerate() {
        add(
            "review_request",
            format!("datum-{i}"),
            selected(0, &datum(request)),
        );
    }
    for (i, event) in lifecycle_events().iter().enumerate() {
        add(
            "lifecycle_event",
            format!("datum-{i}"),
            selected(0, &datum(event)),
        );
    }
    // Signed records of each kind, by each development key, and the same with a forged header.
    let signers = dev_signers();
    let decision = datum(&decisions()[4]);
    let verdict = datum(&verdicts()[0]);
    for (index, signer) in signers.iter().enumerate() {
        let (kind, key, value): (u8, &[u8], &[u8]) = match index % 3 {
            0 => (0, b"py-auto", &decision),
            1 => (2, b"payments-senior", &verdict),
            _ => (3, b"reviewer-ana", b"roster entry"),
        };
        let header = signer.sign(auth_kind(kind), Some(key), Some(value));
        add(
            "auth_header",
            format!("signed-{}", signer.key_id()),
            auth_input(kind, None, Some(header.as_bytes()), Some(key), value),
        );
        add(
            "auth_header",
            format!("sign-{}", signer.key_id()),
            auth_input(kind, Some(index as u8), None, Some(key), value),
        );
        let forged = header.replace(':', ":x");
        add(
            "auth_header",
            format!("forged-{}", signer.key_id()),
            auth_input(kind, None, Some(forged.as_bytes()), None, value),
        );
    }
    add("key_file", "dev-keys".into(), DEV_KEYS.as_bytes().to_vec());
    add(
        "key_file",
        "reviewer-and-env".into(),
        br#"[[keys]]
key_id = "reviewer-app-ana"
algorithm = "hmac-sha256"
secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
grant = { kind = "reviewer", reviewer_id = "reviewer-ana", roles = ["senior"] }

[[keys]]
key_id = "from-env"
algorithm = "hmac-sha256"
secret_env = "HITL_FUZZ_NO_SUCH_VARIABLE"
grant = { kind = "publisher", producers = ["fraud-model"] }
"#
        .to_vec(),
    );
    seeds
}

/// The record kind of the `auth_header` target's first byte.
pub fn auth_kind(byte: u8) -> auth::Kind {
    match byte % 5 {
        0 => auth::Kind::Decision,
        1 => auth::Kind::ReviewRequest,
        2 => auth::Kind::Verdict,
        3 => auth::Kind::Reviewer,
        _ => auth::Kind::Lifecycle,
    }
}

/// Decodes the decision a `policy` input carries after its policy: JSON when it starts with `{`,
/// else an Avro datum of this build's schema.
pub fn decode_decision(bytes: &[u8]) -> Option<Decision> {
    if bytes.first() == Some(&b'{') {
        codec().decode_json(bytes).ok()
    } else {
        codec().decode(&crate::framed::<Decision>(bytes)).ok()
    }
}
