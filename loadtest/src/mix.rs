//! A deterministic stream of decisions resembling the article's use cases.

use std::collections::BTreeMap;

use hitl_schema::Decision;

/// splitmix64: small, fast, deterministic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Skewed towards 1 (model confidence is usually high).
    pub fn confidence(&mut self) -> f64 {
        1.0 - self.unit().powi(3) * 0.9
    }
}

/// One generated record: a decision, or deliberately bad bytes.
pub enum Generated {
    Decision(Box<Decision>),
    Invalid { key: String, bytes: Vec<u8> },
}

/// Produces the `index`-th record of the mix; `invalid_per_mille` of them are bad input.
pub fn generate(
    rng: &mut Rng,
    run: &str,
    index: u64,
    now_millis: i64,
    invalid_per_mille: u64,
) -> Generated {
    let id = format!("{run}-{index:08}");
    if rng.next_u64() % 1000 < invalid_per_mille {
        let bytes = match index % 3 {
            0 => b"\x00not avro".to_vec(),
            1 => b"{\"decision_id\": 42}".to_vec(),
            _ => {
                let mut decision = payment(rng, &id, now_millis);
                decision.confidence = 1.7;
                hitl_schema::Codec::single_object()
                    .encode_to_vec("", &decision)
                    .expect("encodes")
            }
        };
        return Generated::Invalid { key: id, bytes };
    }
    let decision = match rng.next_u64() % 10 {
        0..=5 => payment(rng, &id, now_millis),
        6..=8 => moderation(rng, &id, now_millis),
        _ => deploy(rng, &id, now_millis),
    };
    Generated::Decision(Box::new(decision))
}

fn base(id: &str, workflow: &str, action: &str, producer: &str, now_millis: i64) -> Decision {
    Decision {
        decision_id: id.to_owned(),
        workflow: workflow.to_owned(),
        subject: format!("subject-{id}"),
        action: action.to_owned(),
        confidence: 0.5,
        risk_score: None,
        amount: None,
        priority: None,
        producer: producer.to_owned(),
        model_name: String::new(),
        model_version: None,
        features: BTreeMap::new(),
        context: BTreeMap::new(),
        sensitive_fields: Vec::new(),
        created_at: now_millis,
        sla_ms: None,
    }
}

fn payment(rng: &mut Rng, id: &str, now_millis: i64) -> Decision {
    let action = if rng.unit() < 0.7 { "block" } else { "allow" };
    let mut decision = base(id, "payments.fraud", action, "fraud-gbm", now_millis);
    decision.confidence = rng.confidence();
    decision.risk_score = Some(rng.unit() * 0.6);
    decision.amount = Some((rng.unit() * 9.0).exp() * 3.0); // ~3 .. ~24,000
    decision.model_name = "fraud-gbm".into();
    decision.model_version = Some("2026.11".into());
    decision.features = BTreeMap::from([
        ("velocity_1h".into(), (rng.unit() * 20.0).floor()),
        ("merchant_risk".into(), rng.unit()),
        ("distance_km".into(), rng.unit() * 5000.0),
    ]);
    decision.context = BTreeMap::from([
        (
            "card_number".into(),
            format!("4111-xxxx-xxxx-{:04}", rng.next_u64() % 10_000),
        ),
        (
            "merchant".into(),
            format!("merchant-{}", rng.next_u64() % 500),
        ),
        (
            "country".into(),
            ["NL", "DE", "US", "BR", "IN"][(rng.next_u64() % 5) as usize].into(),
        ),
    ]);
    decision.sensitive_fields = vec!["card_number".into()];
    decision
}

fn moderation(rng: &mut Rng, id: &str, now_millis: i64) -> Decision {
    let mut decision = base(id, "moderation.text", "remove", "toxicity-bert", now_millis);
    decision.confidence = rng.confidence();
    decision.risk_score = Some(rng.unit());
    decision.model_name = "toxicity-bert".into();
    decision.features =
        BTreeMap::from([("toxicity".into(), rng.unit()), ("spam".into(), rng.unit())]);
    decision.context = BTreeMap::from([
        (
            "excerpt".into(),
            "an example post that a classifier flagged".into(),
        ),
        ("author".into(), format!("user-{}", rng.next_u64() % 10_000)),
    ]);
    decision.sensitive_fields = vec!["author".into()];
    decision
}

fn deploy(rng: &mut Rng, id: &str, now_millis: i64) -> Decision {
    let mut decision = base(id, "cicd.deploy", "deploy", "ci-pipeline", now_millis);
    decision.confidence = rng.confidence();
    decision.risk_score = Some(rng.unit() * 0.5);
    decision.context = BTreeMap::from([
        ("service".into(), format!("svc-{}", rng.next_u64() % 40)),
        ("change".into(), "bump dependency versions".into()),
    ]);
    if rng.unit() < 0.1 {
        decision.priority = Some("urgent".into());
    }
    decision
}
