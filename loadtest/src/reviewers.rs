//! Simulated reviewers for the demo: a roster published to `hitl.reviewers`, and reviewer apps that
//! read their assignments and answer after a human-like pause — mostly approvals, some rejections,
//! amendments, deferrals and escalations, and now and then no answer at all (the lease expires).

use std::{
    collections::{BTreeMap, BinaryHeap},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use hitl_runtime::config::{KafkaSettings, Topics};
use hitl_schema::{
    AssignmentEvent, AssignmentKind, Codec, Presence, ReviewerStatus, Verdict, VerdictKind,
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    producer::{BaseProducer, BaseRecord, Producer},
    Message, Offset, TopicPartitionList,
};

use crate::mix::Rng;

/// What the simulated reviewers did.
#[derive(Debug, Default, Clone)]
pub struct ReviewerTally {
    pub assigned: u64,
    pub revoked: u64,
    pub verdicts: BTreeMap<&'static str, u64>,
    pub ignored: u64,
}

/// The demo roster: roles matching `config/policy.yaml` and `config/assignment.toml`.
pub fn roster(partitions: i32) -> Vec<ReviewerStatus> {
    let people: [(&str, &[&str], i32); 20] = [
        ("ana", &[], 8),
        ("ben", &[], 8),
        ("caro", &[], 8),
        ("dev", &[], 8),
        ("eli", &["pii"], 8),
        ("fay", &[], 8),
        ("gus", &["senior", "pii"], 6),
        ("hana", &["senior"], 6),
        ("ivo", &["senior"], 6),
        ("jo", &["senior", "pii"], 6),
        ("kai", &["moderator"], 8),
        ("lea", &["moderator"], 8),
        ("max", &["moderator", "senior"], 8),
        ("nia", &["moderator", "senior", "pii"], 8),
        ("oto", &["release-manager"], 6),
        ("pia", &["release-manager", "senior"], 6),
        ("quin", &["head-of-risk", "senior", "pii"], 4),
        ("rey", &["head-of-risk", "senior"], 4),
        ("sol", &["head-of-risk"], 4),
        ("tam", &["head-of-risk"], 4),
    ];
    people
        .iter()
        .enumerate()
        .map(|(i, (name, roles, capacity))| ReviewerStatus {
            reviewer_id: format!("reviewer-{name}"),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            skills: vec![],
            pools: vec![],
            capacity: *capacity,
            partition: Some(i as i32 % partitions.max(1)),
            presence: Presence::Online,
            updated_at: hitl_runtime::now_millis(),
        })
        .collect()
}

/// What a careful reviewer would conclude about a decision (the same for everyone: reviewers of
/// one item mostly agree, as real ones do).
fn truth(decision_id: &str) -> VerdictKind {
    match xxhash_rust::xxh3::xxh3_64(decision_id.as_bytes()) % 100 {
        0..=79 => VerdictKind::Approve,
        80..=94 => VerdictKind::Reject,
        _ => VerdictKind::Amend,
    }
}

/// This reviewer's answer, or `None` when they walk away (the lease expires).
fn pick_verdict(rng: &mut Rng, decision_id: &str) -> Option<VerdictKind> {
    Some(match rng.below(1000) {
        0..=9 => return None,
        10..=39 => VerdictKind::Defer,
        40..=59 => VerdictKind::Escalate,
        60..=99 => match truth(decision_id) {
            VerdictKind::Approve => VerdictKind::Reject,
            _ => VerdictKind::Approve,
        },
        _ => truth(decision_id),
    })
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

/// Publishes the roster, then answers assignments until `stop` is set. Runs on its own thread.
pub fn spawn(
    kafka: &KafkaSettings,
    topics: &Topics,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<ReviewerTally>>,
) -> std::thread::JoinHandle<()> {
    let (kafka, topics) = (kafka.clone(), topics.clone());
    std::thread::spawn(move || {
        let codec = Codec::single_object();
        let producer: BaseProducer = hitl_runtime::kafka::producer_config(&kafka)
            .create()
            .expect("producer");
        for status in roster(topics.partitions) {
            let payload = codec
                .encode_to_vec(&topics.reviewers, &status)
                .expect("encodes");
            let headers = crate::clients::signed(
                &crate::clients::get().gateway,
                hitl_runtime::auth::Kind::Reviewer,
                &status.reviewer_id,
                &payload,
            );
            let _ = producer.send(
                BaseRecord::<str, [u8]>::to(&topics.reviewers)
                    .key(&status.reviewer_id)
                    .payload(&payload)
                    .headers(headers),
            );
        }
        let _ = producer.flush(Duration::from_secs(10));

        let consumer: BaseConsumer = hitl_runtime::kafka::reader_config(&kafka, true)
            .create()
            .expect("consumer");
        let metadata = consumer
            .fetch_metadata(Some(&topics.assignments), Duration::from_secs(10))
            .expect("metadata");
        let mut assignment = TopicPartitionList::new();
        for partition in metadata.topics()[0].partitions() {
            let _ =
                assignment.add_partition_offset(&topics.assignments, partition.id(), Offset::End);
        }
        consumer.assign(&assignment).expect("assign");

        let mut rng = Rng::new(hitl_runtime::now_millis() as u64 ^ 0x5eed);
        // Answers due, soonest first: (due, sequence, verdict).
        let mut due: BinaryHeap<std::cmp::Reverse<(Instant, u64, VerdictBox)>> = BinaryHeap::new();
        let mut sequence = 0u64;
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(20)) {
                if let Ok(event) =
                    codec.decode::<AssignmentEvent>(message.payload().unwrap_or_default())
                {
                    let mut tally = tally.lock().expect("tally");
                    match (event.kind, event.reason.as_deref()) {
                        (AssignmentKind::Revoked, _) => tally.revoked += 1,
                        (AssignmentKind::Assigned, Some(_)) => {} // a renewal
                        (AssignmentKind::Assigned, None) => {
                            tally.assigned += 1;
                            match pick_verdict(&mut rng, &event.decision_id) {
                                None => tally.ignored += 1,
                                Some(kind) => {
                                    let think = Duration::from_millis(150 + rng.below(1200));
                                    sequence += 1;
                                    due.push(std::cmp::Reverse((
                                        Instant::now() + think,
                                        sequence,
                                        VerdictBox(
                                            event.verdict_partition,
                                            Verdict {
                                                decision_id: event.decision_id.clone(),
                                                assignment_id: event.assignment_id.clone(),
                                                reviewer_id: event.reviewer_id.clone(),
                                                verdict: kind,
                                                amended_action: (kind == VerdictKind::Amend)
                                                    .then(|| format!("{}-reduced", event.action)),
                                                rationale: format!("demo reviewer: {}", name(kind)),
                                                decided_at: 0,
                                                pool: event.pool.clone(),
                                            },
                                        ),
                                    )));
                                }
                            }
                        }
                    }
                }
            }
            while due
                .peek()
                .is_some_and(|std::cmp::Reverse((at, _, _))| *at <= Instant::now())
            {
                let std::cmp::Reverse((_, _, VerdictBox(partition, mut verdict))) =
                    due.pop().expect("peeked");
                verdict.decided_at = hitl_runtime::now_millis();
                let payload = codec
                    .encode_to_vec(&topics.verdicts, &verdict)
                    .expect("encodes");
                // Where the pool's owner reads it (the assignment names the partition).
                let headers = crate::clients::signed(
                    &crate::clients::get().gateway,
                    hitl_runtime::auth::Kind::Verdict,
                    &verdict.pool,
                    &payload,
                );
                let mut record = BaseRecord::<str, [u8]>::to(&topics.verdicts)
                    .key(&verdict.pool)
                    .payload(&payload)
                    .headers(headers);
                if let Some(partition) = partition {
                    record = record.partition(partition);
                }
                while let Err((_, returned)) = producer.send(record) {
                    producer.poll(Duration::from_millis(5));
                    record = returned;
                }
                *tally
                    .lock()
                    .expect("tally")
                    .verdicts
                    .entry(name(verdict.verdict))
                    .or_default() += 1;
            }
            producer.poll(Duration::ZERO);
        }
        let _ = producer.flush(Duration::from_secs(10));
    })
}

/// A verdict to send and the partition to send it to, ordered by nothing (the heap orders by time
/// and sequence first).
#[derive(Debug)]
struct VerdictBox(Option<i32>, Verdict);

impl PartialEq for VerdictBox {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for VerdictBox {}
impl PartialOrd for VerdictBox {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for VerdictBox {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}
