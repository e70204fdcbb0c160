//! `hitl-loadtest bench-router`: the router's throughput as a ratio to a raw consume→produce
//! passthrough. Both run on the same loop (`hitl_runtime::pipeline`), with the same client
//! settings, delivery mode and broker, over the same pre-published input, in one run, alternating
//! which goes first each round. Time runs from the first input record processed to the commit that
//! covers the last one, so consumer-group joins are not counted.

use std::{
    io,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use hitl_router::{RouterProcessor, RouterSettings};
use hitl_runtime::{
    config::Settings, outln, pipeline, Health, InputRecord, LoopMetrics, LoopSettings,
    OutputRecord, ProcessError, Processor,
};
use hitl_schema::Codec;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tokio_util::sync::CancellationToken;

use crate::mix::{generate, Generated, Rng};

#[derive(Default)]
struct Counters {
    processed: AtomicU64,
    uncommitted: AtomicU64,
    committed: AtomicU64,
    first_processed: Mutex<Option<Instant>>,
    last_commit: Mutex<Option<Instant>>,
}

/// Wraps a processor and counts what it processed and what got committed.
struct Counting<P> {
    inner: P,
    counters: Arc<Counters>,
}

impl<P: Processor> Processor for Counting<P> {
    fn process(
        &mut self,
        input: &InputRecord<'_>,
        output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        if self.counters.processed.fetch_add(1, Ordering::Relaxed) == 0 {
            *self.counters.first_processed.lock().unwrap() = Some(Instant::now());
        }
        self.counters.uncommitted.fetch_add(1, Ordering::Relaxed);
        self.inner.process(input, output)
    }
    fn tick(&mut self, now: i64, output: &mut Vec<OutputRecord>) -> Result<(), ProcessError> {
        self.inner.tick(now, output)
    }
    fn committed(&mut self) {
        let newly = self.counters.uncommitted.swap(0, Ordering::Relaxed);
        self.counters.committed.fetch_add(newly, Ordering::Relaxed);
        *self.counters.last_commit.lock().unwrap() = Some(Instant::now());
        self.inner.committed();
    }
    fn aborted(&mut self) -> Result<(), ProcessError> {
        self.counters.uncommitted.store(0, Ordering::Relaxed);
        self.inner.aborted()
    }
    fn partitions_assigned(&mut self, partitions: &[(String, i32)]) -> Result<(), ProcessError> {
        self.inner.partitions_assigned(partitions)
    }
}

/// Copies every input record to `topic`: the baseline.
pub struct Passthrough {
    pub topic: String,
}

impl Processor for Passthrough {
    fn process(
        &mut self,
        input: &InputRecord<'_>,
        output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        output.push(OutputRecord {
            topic: self.topic.clone(),
            key: input.key().unwrap_or_default().to_vec(),
            payload: input.payload().map(<[u8]>::to_vec),
            headers: Vec::new(),
            partition: None,
            last: false,
        });
        Ok(())
    }
}

/// Writes what the router writes per input, without routing: two records carrying about three
/// times the input's bytes, each with a `traceparent` header. The baseline that separates the
/// router's own work from the cost of the records the contract asks it to write.
pub struct Doubling {
    /// Where the first record goes (an outcome's or a review request's stand-in)…
    pub topic: String,
    /// …and the second, larger one (the lifecycle event's, which carries the decision).
    pub second_topic: String,
}

impl Processor for Doubling {
    fn process(
        &mut self,
        input: &InputRecord<'_>,
        output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        let key = input.key().unwrap_or_default();
        let payload = input.payload().unwrap_or_default();
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        output.push(
            OutputRecord::new(&self.topic, key, payload.to_vec())
                .with_header("traceparent", traceparent),
        );
        output.push(
            OutputRecord::new(&self.second_topic, key, [payload, payload].concat())
                .with_header("traceparent", traceparent),
        );
        Ok(())
    }
}

/// Decisions per second of one run.
fn measure<P: Processor>(
    settings: &Settings<RouterSettings>,
    name: &str,
    processor: P,
    count: u64,
) -> io::Result<f64> {
    measure_on(
        &settings.kafka,
        &settings.topics.decisions,
        name,
        processor,
        count,
    )
}

/// Input records per second of `processor` on the loop over `input_topic`, from the first record
/// processed to the commit covering the `count`-th.
pub fn measure_on<P: Processor>(
    kafka: &hitl_runtime::config::KafkaSettings,
    input_topic: &str,
    name: &str,
    processor: P,
    count: u64,
) -> io::Result<f64> {
    let counters = Arc::new(Counters::default());
    let shutdown = CancellationToken::new();
    let mut registry = prometheus_client::registry::Registry::default();
    let loop_settings = LoopSettings {
        service: name.to_owned(),
        group_id: format!("bench-{name}-{}", hitl_runtime::now_millis()),
        transactional_id: format!("bench-{name}-{}", hitl_runtime::now_millis()),
        input_topics: vec![input_topic.to_owned()],
        dead_letter_topic: None,
        tick_interval: Some(Duration::from_millis(200)),
        max_records_per_second: None,
    };
    let handle = pipeline::spawn(
        kafka.clone(),
        loop_settings,
        Counting {
            inner: processor,
            counters: counters.clone(),
        },
        shutdown.clone(),
        Health::default(),
        LoopMetrics::register(&mut registry),
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    while counters.committed.load(Ordering::Relaxed) < count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    shutdown.cancel();
    if let Ok(Err(error)) = handle.join() {
        eprintln!("{name}: loop error: {error}");
    }
    let first = counters
        .first_processed
        .lock()
        .unwrap()
        .expect("processed something");
    let last = counters
        .last_commit
        .lock()
        .unwrap()
        .expect("committed something");
    let committed = counters.committed.load(Ordering::Relaxed);
    let elapsed = last.duration_since(first).as_secs_f64();
    let (commit_seconds, commits, queue_full) = loop_waits(&registry);
    outln!(
        "  {name}: {committed} records in {elapsed:.2}s, {commits} commits taking {:.0}% of it ({:.1} ms each), producer queue full {queue_full} times",
        100.0 * commit_seconds / elapsed,
        1000.0 * commit_seconds / commits.max(1) as f64,
    )?;
    Ok(committed as f64 / elapsed)
}

/// Where the loop waited, from its metrics: seconds spent committing, commits, and how often the
/// producer's queue was full.
fn loop_waits(registry: &prometheus_client::registry::Registry) -> (f64, u64, u64) {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encodes");
    let value = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("hitl_loop_commit_seconds_sum"),
        value("hitl_loop_commit_seconds_count") as u64,
        value("hitl_loop_producer_queue_full_total") as u64,
    )
}

/// Publishes `count` valid decisions to the input topic.
pub fn publish(settings: &Settings<RouterSettings>, count: u64) {
    let producer: BaseProducer = hitl_runtime::kafka::producer_config(&settings.kafka)
        .create()
        .expect("producer");
    let codec = Codec::single_object();
    let mut rng = Rng::new(42);
    let mut index = 0u64;
    let mut buffer = Vec::new();
    while index < count {
        let Generated::Decision(decision) =
            generate(&mut rng, "bench", index, hitl_runtime::now_millis(), 0)
        else {
            unreachable!("no invalid records requested")
        };
        buffer.clear();
        codec
            .encode(&settings.topics.decisions, decision.as_ref(), &mut buffer)
            .expect("encodes");
        let headers = crate::clients::signed(
            &crate::clients::get().publisher,
            hitl_runtime::auth::Kind::Decision,
            &decision.decision_id,
            &buffer,
        );
        let mut record = BaseRecord::<str, [u8]>::to(&settings.topics.decisions)
            .key(decision.decision_id.as_str())
            .payload(&buffer[..])
            .headers(headers);
        while let Err((_, returned)) = producer.send(record) {
            producer.poll(Duration::from_millis(5));
            record = returned;
        }
        index += 1;
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
}

/// The settings of one router run: its own seen-ids changelog (created here), so that no run
/// restores the ids an earlier one routed from the same input and drops them all as duplicates.
fn router_run(
    settings: &Settings<RouterSettings>,
    name: &str,
) -> io::Result<Settings<RouterSettings>> {
    let mut run = settings.clone();
    run.topics.router_seen = format!(
        "{}.seen-{name}-{:x}",
        settings.topics.decisions,
        hitl_runtime::now_millis()
    );
    let spec = run
        .topics
        .specs()
        .into_iter()
        .find(|spec| spec.name == run.topics.router_seen)
        .expect("the seen-ids topic is a contract topic");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(hitl_runtime::kafka::ensure_topics(&run.kafka, &[spec], 1))
        .map_err(io::Error::other)?;
    Ok(run)
}

/// Runs `rounds` alternating rounds and prints each rate and the median ratio.
pub fn run(settings: &Settings<RouterSettings>, count: u64, rounds: u32) -> io::Result<f64> {
    outln!(
        "publishing {count} decisions to {} ...",
        settings.topics.decisions
    )?;
    let published = Instant::now();
    publish(settings, count);
    outln!(
        "published in {:.1}s ({:.0}/s)",
        published.elapsed().as_secs_f64(),
        count as f64 / published.elapsed().as_secs_f64()
    )?;
    let mut ratios = Vec::new();
    let mut doubling_ratios = Vec::new();
    let mut auth_ratios = Vec::new();
    for round in 0..rounds {
        let mut rates = [0.0f64; 4];
        let order: [usize; 4] = if round % 2 == 0 {
            [0, 1, 2, 3]
        } else {
            [3, 2, 1, 0]
        };
        for which in order {
            let topic = format!("{}.passthrough", settings.topics.decisions);
            rates[which] = if which == 3 {
                // The router without checking publishers' signatures (its own still sign): what
                // authenticating decisions costs.
                let settings = &router_run(settings, "unverified")?;
                let mut registry = prometheus_client::registry::Registry::default();
                let (tracer, _exporter) =
                    hitl_runtime::trace::start(&settings.telemetry, "bench-router", &mut registry);
                let processor = RouterProcessor::build(
                    settings,
                    &mut registry,
                    Arc::new(AtomicBool::new(false)),
                    tracer,
                )
                .expect("router builds")
                .with_trust(settings.trust.signer().ok().flatten(), None);
                measure(settings, "router-unverified", processor, count)?
            } else if which == 0 {
                measure(settings, "passthrough", Passthrough { topic }, count)?
            } else if which == 2 {
                let second_topic = format!("{topic}-lifecycle");
                let doubling = Doubling {
                    topic,
                    second_topic,
                };
                measure(settings, "two-records", doubling, count)?
            } else {
                // Traced as configured (`HITL_TELEMETRY__OTLP_ENDPOINT`), to measure the cost.
                let settings = &router_run(settings, "router")?;
                let mut registry = prometheus_client::registry::Registry::default();
                let (tracer, exporter) =
                    hitl_runtime::trace::start(&settings.telemetry, "bench-router", &mut registry);
                let processor = RouterProcessor::build(
                    settings,
                    &mut registry,
                    Arc::new(AtomicBool::new(false)),
                    tracer,
                )
                .expect("router builds");
                let rate = measure(settings, "router", processor, count)?;
                if let Some(exporter) = exporter {
                    exporter.finish(Duration::from_secs(30));
                    let mut text = String::new();
                    prometheus_client::encoding::text::encode(&mut text, &registry)
                        .expect("encodes");
                    let spans: Vec<&str> = text
                        .lines()
                        .filter(|line| line.starts_with("hitl_trace_spans_"))
                        .collect();
                    outln!("  router traces: {}", spans.join("; "))?;
                }
                rate
            };
        }
        let ratio = rates[1] / rates[0];
        outln!(
            "round {}: passthrough {:>8.0}/s   router {:>8.0}/s   ratio {:.3}   \
             (two records per input, no routing: {:>8.0}/s; router/that {:.3})",
            round + 1,
            rates[0],
            rates[1],
            ratio,
            rates[2],
            rates[1] / rates[2],
        )?;
        outln!(
            "         router without verifying publishers' signatures {:>8.0}/s; router/that {:.3}",
            rates[3],
            rates[1] / rates[3]
        )?;
        auth_ratios.push(rates[1] / rates[3]);
        ratios.push(ratio);
        doubling_ratios.push(rates[1] / rates[2]);
    }
    ratios.sort_by(f64::total_cmp);
    doubling_ratios.sort_by(f64::total_cmp);
    auth_ratios.sort_by(f64::total_cmp);
    outln!(
        "median router (verifying signatures) / router (not verifying): {:.3}",
        auth_ratios[auth_ratios.len() / 2]
    )?;
    let median = ratios[ratios.len() / 2];
    outln!(
        "median ratio router/passthrough: {median:.3}; router/two-records: {:.3} (delivery = {:?})",
        doubling_ratios[doubling_ratios.len() / 2],
        settings.kafka.delivery
    )?;
    Ok(median)
}
