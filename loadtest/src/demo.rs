//! `hitl-loadtest demo`: publishes a steady mixed load and prints a live summary of what the
//! system did with it, read back from the output topics (what an operator would watch).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hitl_runtime::{
    config::{KafkaSettings, Topics},
    outln,
};
use hitl_schema::{Codec, LifecycleEvent, Outcome, ReviewKind, ReviewRequest};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::Headers,
    producer::{BaseProducer, BaseRecord, Producer},
    Message, Offset, TopicPartitionList,
};

use crate::mix::{generate, Generated, Rng};

/// What was seen on the output topics.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub auto_approved: u64,
    pub auto_rejected: u64,
    pub human_outcomes: u64,
    pub human_by: BTreeMap<&'static str, u64>,
    pub decision_times_ms: Vec<i64>,
    pub reviews_by_pool: BTreeMap<String, u64>,
    pub qa_samples: u64,
    pub dead_letters_by_class: BTreeMap<String, u64>,
    pub routing_latencies_ms: Vec<i64>,
}

impl Tally {
    pub fn routed(&self) -> u64 {
        self.routing_latencies_ms.len() as u64
    }
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters_by_class.values().sum()
    }
    pub fn reviews(&self) -> u64 {
        self.reviews_by_pool.values().sum()
    }
    fn line(&self, produced: u64, elapsed: Duration) -> String {
        format!(
            "t={:>4.0}s produced={produced:<7} routed={:<7} auto_approved={:<6} auto_rejected={:<6} \
             to_people={:<6} decided_by_people={:<6} qa={:<5} dlq={:<4} routing_ms p50={} p95={}",
            elapsed.as_secs_f64(),
            self.routed(),
            self.auto_approved,
            self.auto_rejected,
            self.reviews(),
            self.human_outcomes,
            self.qa_samples,
            self.dead_letters(),
            percentile(&self.routing_latencies_ms, 0.5),
            percentile(&self.routing_latencies_ms, 0.95),
        )
    }
}

fn percentile(values: &[i64], p: f64) -> i64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(0)
}

fn watcher(kafka: &KafkaSettings, topics: &[&str]) -> BaseConsumer {
    let consumer: BaseConsumer = hitl_runtime::kafka::reader_config(kafka, true)
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        for partition in metadata.topics()[0].partitions() {
            assignment
                .add_partition_offset(topic, partition.id(), Offset::End)
                .expect("partition");
        }
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}

fn observe(
    consumer: &BaseConsumer,
    topics: &Topics,
    codec: &Codec,
    tally: &mut Tally,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let payload = message.payload().unwrap_or_default();
        let topic = message.topic();
        if topic == topics.outcomes {
            if let Ok(outcome) = codec.decode::<Outcome>(payload) {
                match (outcome.decided_by, outcome.status) {
                    (hitl_schema::DecidedBy::Auto, hitl_schema::OutcomeStatus::Approved) => {
                        tally.auto_approved += 1
                    }
                    (hitl_schema::DecidedBy::Auto, _) => tally.auto_rejected += 1,
                    (decided_by, _) => {
                        tally.human_outcomes += 1;
                        let label = match decided_by {
                            hitl_schema::DecidedBy::Quorum => "QUORUM",
                            hitl_schema::DecidedBy::SlaFallback => "SLA_FALLBACK",
                            _ => "HUMAN",
                        };
                        *tally.human_by.entry(label).or_default() += 1;
                        tally.decision_times_ms.push(outcome.time_to_decision_ms);
                    }
                }
            }
        } else if topic == topics.review_requests {
            if let Ok(request) = codec.decode::<ReviewRequest>(payload) {
                match request.kind {
                    ReviewKind::QaSample => tally.qa_samples += 1,
                    ReviewKind::Review => {
                        *tally.reviews_by_pool.entry(request.pool).or_default() += 1
                    }
                }
            }
        } else if topic == topics.decisions_dlq {
            let class = message
                .headers()
                .and_then(|headers| headers.iter().find(|h| h.key == "hitl.error.class"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_else(|| "unknown".into());
            *tally.dead_letters_by_class.entry(class).or_default() += 1;
        } else if topic == topics.lifecycle {
            if let Ok(event) = codec.decode::<LifecycleEvent>(payload) {
                if let (hitl_schema::LifecycleKind::Routed, Some(decision)) =
                    (event.kind, &event.decision)
                {
                    tally
                        .routing_latencies_ms
                        .push(event.event_time - decision.created_at);
                }
            }
        }
    }
}

/// Runs the demo load for `duration` at `rate` decisions per second, printing a summary line every
/// two seconds; then waits (up to 60 s) until everything produced is accounted for. With
/// `reviewers`, simulated reviewers answer the assignments, and the wait includes the decisions
/// sent to people. Stops at the first summary line it cannot print (stdout closed).
pub fn run(
    kafka: &KafkaSettings,
    topics: &Topics,
    rate: u64,
    duration: Duration,
    reviewers: bool,
) -> std::io::Result<Tally> {
    let codec = Codec::single_object();
    let reviewer_stop = Arc::new(AtomicBool::new(false));
    let reviewer_tally = Arc::new(std::sync::Mutex::new(
        crate::reviewers::ReviewerTally::default(),
    ));
    let reviewer_thread = reviewers.then(|| {
        crate::reviewers::spawn(kafka, topics, reviewer_stop.clone(), reviewer_tally.clone())
    });
    let watch = watcher(
        kafka,
        &[
            &topics.outcomes,
            &topics.review_requests,
            &topics.decisions_dlq,
            &topics.lifecycle,
        ],
    );
    let produced = Arc::new(AtomicU64::new(0));
    let invalid = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let producer_thread = {
        let (kafka, topic, produced, invalid, done) = (
            kafka.clone(),
            topics.decisions.clone(),
            produced.clone(),
            invalid.clone(),
            done.clone(),
        );
        std::thread::spawn(move || {
            let producer: BaseProducer = hitl_runtime::kafka::producer_config(&kafka)
                .create()
                .expect("producer");
            let run_id = format!("demo{:x}", hitl_runtime::now_millis() % 0xffffff);
            let mut rng = Rng::new(hitl_runtime::now_millis() as u64);
            let started = Instant::now();
            let mut index = 0u64;
            while started.elapsed() < duration {
                let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                while index < due {
                    let (key, bytes) =
                        match generate(&mut rng, &run_id, index, hitl_runtime::now_millis(), 5) {
                            Generated::Decision(decision) => {
                                (decision.decision_id.clone(), codec_bytes(&decision))
                            }
                            Generated::Invalid { key, bytes } => {
                                invalid.fetch_add(1, Ordering::Relaxed);
                                (key, bytes)
                            }
                        };
                    let headers = crate::clients::signed(
                        &crate::clients::get().publisher,
                        hitl_runtime::auth::Kind::Decision,
                        &key,
                        &bytes,
                    );
                    let mut record = BaseRecord::<str, [u8]>::to(&topic)
                        .key(&key)
                        .payload(&bytes)
                        .headers(headers);
                    while let Err((_, returned)) = producer.send(record) {
                        producer.poll(Duration::from_millis(10));
                        record = returned;
                    }
                    index += 1;
                    produced.store(index, Ordering::Relaxed);
                }
                producer.poll(Duration::from_millis(5));
            }
            let _ = producer.flush(Duration::from_secs(30));
            done.store(true, Ordering::Relaxed);
        })
    };

    let started = Instant::now();
    let mut tally = Tally::default();
    let mut last_print = Instant::now();
    let mut settle_deadline: Option<Instant> = None;
    loop {
        observe(
            &watch,
            topics,
            &codec,
            &mut tally,
            Duration::from_millis(200),
        );
        let produced_now = produced.load(Ordering::Relaxed);
        if last_print.elapsed() >= Duration::from_secs(2) {
            outln!("{}", tally.line(produced_now, started.elapsed()))?;
            last_print = Instant::now();
        }
        if done.load(Ordering::Relaxed) {
            let deadline =
                *settle_deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(60));
            let accounted = tally.routed() + tally.dead_letters();
            let people_done = !reviewers || tally.human_outcomes >= tally.reviews();
            if (accounted >= produced_now && people_done) || Instant::now() >= deadline {
                break;
            }
        }
    }
    producer_thread.join().expect("producer thread");
    reviewer_stop.store(true, Ordering::Relaxed);
    if let Some(thread) = reviewer_thread {
        thread.join().expect("reviewer thread");
    }
    let produced_total = produced.load(Ordering::Relaxed);
    outln!("{}", tally.line(produced_total, started.elapsed()))?;
    outln!(
        "\nsummary: {produced_total} records published ({} deliberately invalid)",
        invalid.load(Ordering::Relaxed)
    )?;
    outln!(
        "  auto-approved {:>7}   auto-rejected {:>7}   QA samples {:>5}",
        tally.auto_approved,
        tally.auto_rejected,
        tally.qa_samples
    )?;
    outln!("  sent to people, by pool:")?;
    for (pool, count) in &tally.reviews_by_pool {
        outln!("    {pool:<20} {count:>7}")?;
    }
    outln!("  dead-lettered, by error class:")?;
    for (class, count) in &tally.dead_letters_by_class {
        outln!("    {class:<20} {count:>7}")?;
    }
    outln!(
        "  routing latency (created_at -> routed): p50 {} ms, p95 {} ms",
        percentile(&tally.routing_latencies_ms, 0.5),
        percentile(&tally.routing_latencies_ms, 0.95)
    )?;
    let unaccounted = produced_total.saturating_sub(tally.routed() + tally.dead_letters());
    outln!("  unaccounted for: {unaccounted}")?;
    if reviewers {
        let people = reviewer_tally.lock().expect("tally").clone();
        outln!(
            "  decided by people: {}   (of {} sent to them; still pending: {})",
            tally
                .human_by
                .iter()
                .map(|(by, n)| format!("{by} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            tally.reviews(),
            tally.reviews().saturating_sub(tally.human_outcomes)
        )?;
        outln!(
            "  simulated reviewers: {} assignments, {} revoked, {} left to expire; verdicts {}",
            people.assigned,
            people.revoked,
            people.ignored,
            people
                .verdicts
                .iter()
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        outln!(
            "  time to a human decision (created_at -> outcome): p50 {} ms, p95 {} ms",
            percentile(&tally.decision_times_ms, 0.5),
            percentile(&tally.decision_times_ms, 0.95)
        )?;
    }
    Ok(tally)
}

fn codec_bytes(decision: &hitl_schema::Decision) -> Vec<u8> {
    Codec::single_object()
        .encode_to_vec("", decision)
        .expect("encodes")
}
