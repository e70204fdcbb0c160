//! The chaos suite's simulated reviewers: one thread that reads every partition of
//! `hitl.assignments` (read_committed) and answers each new lease as a person might: mostly the
//! right verdict after a short pause, sometimes the wrong one (quorum disagreement), a deferral, an
//! escalation, a renewal and a verdict later, a verdict after the lease expired (which must be
//! rejected), or nothing at all (the lease expires). When told to drain, it answers everything
//! promptly and correctly, so that every decision can finish.

use std::{
    collections::{BTreeMap, BinaryHeap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use hitl_runtime::{
    auth::{Kind, Signer},
    config::{KafkaSettings, Topics},
};
use hitl_schema::{
    AssignmentEvent, AssignmentKind, Codec, Presence, ReviewerStatus, Verdict, VerdictKind,
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::{Header, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, Producer},
    Message, Offset, TopicPartitionList,
};

use crate::mix::Rng;

/// The chaos roster: (id, roles). Capacity is the same for everyone. Twelve of the fourteen
/// seniors hold `head-of-risk` (the top tier of large payments, a `hold` pool), so that a quorum
/// item there rarely runs out of eligible reviewers (every one of them voted, deferred or let a
/// lease expire) and is set aside without an outcome.
pub fn roster() -> Vec<(String, Vec<String>)> {
    (1..=24)
        .map(|i| {
            let mut roles = Vec::new();
            if i <= 14 {
                roles.push("senior".to_owned());
            }
            if i <= 12 {
                roles.push("head-of-risk".to_owned());
            }
            if (7..=18).contains(&i) {
                roles.push("moderator".to_owned());
            }
            if i >= 13 || i == 5 || i == 6 {
                roles.push("release-manager".to_owned());
            }
            (format!("rv{i:02}"), roles)
        })
        .collect()
}

/// What the simulated reviewers did.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub assigned: u64,
    pub renewed_events: u64,
    pub revoked: u64,
    pub sent: BTreeMap<&'static str, u64>,
    pub ignored: u64,
    pub late: u64,
}

/// Shared switches: `drain` (answer everything promptly and right), `stop`.
#[derive(Debug, Default)]
pub struct Control {
    pub drain: AtomicBool,
    pub stop: AtomicBool,
}

/// What a careful reviewer concludes (the same for everyone, so quorums mostly agree).
fn truth(decision_id: &str) -> VerdictKind {
    match xxhash_rust::xxh3::xxh3_64(decision_id.as_bytes()) % 100 {
        0..=79 => VerdictKind::Approve,
        80..=94 => VerdictKind::Reject,
        _ => VerdictKind::Amend,
    }
}

fn name(kind: VerdictKind) -> &'static str {
    match kind {
        VerdictKind::Approve => "APPROVE",
        VerdictKind::Reject => "REJECT",
        VerdictKind::Amend => "AMEND",
        VerdictKind::Defer => "DEFER",
        VerdictKind::Escalate => "ESCALATE",
        VerdictKind::Renew => "RENEW",
    }
}

/// A verdict to send at a time; `sticky` ones are sent even if the lease was revoked meanwhile
/// (the late verdicts, which exist to be rejected).
struct Due {
    at: Instant,
    sequence: u64,
    kind: VerdictKind,
    event: Arc<AssignmentEvent>,
    sticky: bool,
    /// After a RENEW: the verdict that follows it, this long after.
    then: Option<(VerdictKind, Duration)>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: the heap pops the soonest.
        (other.at, other.sequence).cmp(&(self.at, self.sequence))
    }
}

/// Publishes the roster (signed by `gateway`), then answers assignments until `control.stop`.
pub fn spawn(
    kafka: KafkaSettings,
    topics: Topics,
    gateway: Arc<Signer>,
    verdict_grace: Duration,
    seed: u64,
    control: Arc<Control>,
    tally: Arc<Mutex<Tally>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let codec = Codec::single_object();
        let producer: BaseProducer = hitl_runtime::kafka::producer_config(&kafka)
            .create()
            .expect("producer");
        let sign = |kind: Kind, key: &str, payload: &[u8]| {
            let signature = gateway.sign(kind, Some(key.as_bytes()), Some(payload));
            OwnedHeaders::new().insert(Header {
                key: hitl_runtime::auth::HEADER,
                value: Some(&signature),
            })
        };
        for (i, (id, roles)) in roster().into_iter().enumerate() {
            let status = ReviewerStatus {
                reviewer_id: id.clone(),
                roles,
                skills: vec![],
                pools: vec![],
                capacity: 8,
                partition: Some(i as i32 % topics.partitions.max(1)),
                presence: Presence::Online,
                updated_at: hitl_runtime::now_millis(),
            };
            let payload = codec
                .encode_to_vec(&topics.reviewers, &status)
                .expect("encodes");
            let mut record = BaseRecord::<str, [u8]>::to(&topics.reviewers)
                .key(&id)
                .payload(&payload)
                .headers(sign(Kind::Reviewer, &id, &payload));
            while let Err((_, returned)) = producer.send(record) {
                producer.poll(Duration::from_millis(5));
                record = returned;
            }
        }
        let _ = producer.flush(Duration::from_secs(30));

        let consumer: BaseConsumer = hitl_runtime::kafka::reader_config(&kafka, true)
            .create()
            .expect("consumer");
        let metadata = consumer
            .fetch_metadata(Some(&topics.assignments), Duration::from_secs(30))
            .expect("metadata");
        let mut assignment = TopicPartitionList::new();
        for partition in metadata.topics()[0].partitions() {
            let _ = assignment.add_partition_offset(
                &topics.assignments,
                partition.id(),
                Offset::Beginning,
            );
        }
        consumer.assign(&assignment).expect("assign");

        let mut rng = Rng::new(seed);
        let mut due: BinaryHeap<Due> = BinaryHeap::new();
        let mut sequence = 0u64;
        let mut revoked: HashSet<String> = HashSet::new();
        let mut answered: HashSet<String> = HashSet::new();
        while !control.stop.load(Ordering::Relaxed) {
            let mut polled = 0;
            while polled < 500 {
                let Some(Ok(message)) =
                    consumer.poll(Duration::from_millis(if polled == 0 { 10 } else { 0 }))
                else {
                    break;
                };
                polled += 1;
                let Ok(event) =
                    codec.decode::<AssignmentEvent>(message.payload().unwrap_or_default())
                else {
                    continue;
                };
                let mut tally = tally.lock().expect("tally");
                match (event.kind, event.reason.as_deref()) {
                    (AssignmentKind::Revoked, _) => {
                        tally.revoked += 1;
                        revoked.insert(event.assignment_id.clone());
                    }
                    (AssignmentKind::Assigned, Some(_)) => tally.renewed_events += 1,
                    (AssignmentKind::Assigned, None) => {
                        // One answer per lease, however often its ASSIGNED is read.
                        if !answered.insert(event.assignment_id.clone()) {
                            continue;
                        }
                        tally.assigned += 1;
                        let event = Arc::new(event);
                        let right = truth(&event.decision_id);
                        let now = Instant::now();
                        let think = |rng: &mut Rng, from: u64, to: u64| {
                            Duration::from_millis(from + rng.below(to - from))
                        };
                        let lease_left = Duration::from_millis(
                            (event.lease_expires_at - hitl_runtime::now_millis()).max(0) as u64,
                        );
                        let (kind, at, sticky, then) = if control.drain.load(Ordering::Relaxed) {
                            (right, now + think(&mut rng, 20, 200), false, None)
                        } else {
                            match rng.below(1000) {
                                0..=29 => {
                                    tally.ignored += 1;
                                    continue;
                                }
                                30..=69 => (
                                    VerdictKind::Renew,
                                    now + lease_left.mul_f64(0.5),
                                    false,
                                    Some((right, lease_left.mul_f64(0.8))),
                                ),
                                70..=109 => (
                                    VerdictKind::Defer,
                                    now + think(&mut rng, 100, 700),
                                    false,
                                    None,
                                ),
                                110..=139 => (
                                    VerdictKind::Escalate,
                                    now + think(&mut rng, 100, 700),
                                    false,
                                    None,
                                ),
                                140..=149 => {
                                    tally.late += 1;
                                    (
                                        right,
                                        now + lease_left
                                            + verdict_grace
                                            + Duration::from_millis(1500),
                                        true,
                                        None,
                                    )
                                }
                                150..=199 => {
                                    let wrong = match right {
                                        VerdictKind::Approve => VerdictKind::Reject,
                                        _ => VerdictKind::Approve,
                                    };
                                    (wrong, now + think(&mut rng, 100, 900), false, None)
                                }
                                _ => (right, now + think(&mut rng, 100, 900), false, None),
                            }
                        };
                        sequence += 1;
                        due.push(Due {
                            at,
                            sequence,
                            kind,
                            event,
                            sticky,
                            then,
                        });
                    }
                }
            }
            while due.peek().is_some_and(|d| d.at <= Instant::now()) {
                let item = due.pop().expect("peeked");
                if !item.sticky && revoked.contains(&item.event.assignment_id) {
                    continue;
                }
                let event = &item.event;
                let verdict = Verdict {
                    decision_id: event.decision_id.clone(),
                    assignment_id: event.assignment_id.clone(),
                    reviewer_id: event.reviewer_id.clone(),
                    verdict: item.kind,
                    amended_action: (item.kind == VerdictKind::Amend)
                        .then(|| format!("{}-reduced", event.action)),
                    rationale: format!("chaos reviewer: {}", name(item.kind)),
                    decided_at: hitl_runtime::now_millis(),
                    pool: event.pool.clone(),
                };
                let payload = codec
                    .encode_to_vec(&topics.verdicts, &verdict)
                    .expect("encodes");
                let mut record = BaseRecord::<str, [u8]>::to(&topics.verdicts)
                    .key(&verdict.pool)
                    .payload(&payload)
                    .headers(sign(Kind::Verdict, &verdict.pool, &payload));
                if let Some(partition) = event.verdict_partition {
                    record = record.partition(partition);
                }
                while let Err((_, returned)) = producer.send(record) {
                    producer.poll(Duration::from_millis(5));
                    record = returned;
                }
                *tally
                    .lock()
                    .expect("tally")
                    .sent
                    .entry(name(item.kind))
                    .or_default() += 1;
                if let Some((next, after)) = item.then {
                    sequence += 1;
                    due.push(Due {
                        at: Instant::now() + after,
                        sequence,
                        kind: next,
                        event: item.event.clone(),
                        sticky: false,
                        then: None,
                    });
                }
            }
            producer.poll(Duration::ZERO);
        }
        let _ = producer.flush(Duration::from_secs(30));
    })
}
