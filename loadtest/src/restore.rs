//! `bench-restore`: how long the assignment service takes to restore its state from the changelog.
//! Writes N changelog entries (one pending item each, as the service writes them) to a fresh
//! single-partition topic on the broker, then restores them into an empty core through the
//! service's own restore path, and reports the time, the rate and the memory it took.

use std::time::{Duration, Instant};

use hitl_assignment::{
    core::{Core, Effect},
    pools::CoreConfig,
    service::restore_partition,
};
use hitl_runtime::{
    config::{KafkaSettings, TopicSpec},
    outln,
};
use hitl_schema::ReviewRequest;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn request(i: u64, now: i64) -> ReviewRequest {
    hitl_schema::sample::review_request(
        format!("restore-{i:010}"),
        i,
        format!("pool-{}", i % 8),
        now,
        now + 3_600_000,
    )
}

/// Writes `count` entries, restores them, prints the numbers. Returns the restore time.
pub fn run(
    kafka: &KafkaSettings,
    runtime: &tokio::runtime::Runtime,
    count: u64,
) -> anyhow::Result<Duration> {
    let topic = format!(
        "bench-restore-{:x}.assignment.state",
        hitl_runtime::now_millis()
    );
    let spec = TopicSpec {
        name: topic.clone(),
        partitions: 1,
        configs: vec![("cleanup.policy", "compact".into())],
    };
    runtime.block_on(hitl_runtime::kafka::ensure_topics(kafka, &[spec], 1))?;

    outln!("writing {count} changelog entries to {topic} ...")?;
    let producer: BaseProducer = hitl_runtime::kafka::producer_config(kafka).create()?;
    let started = Instant::now();
    let now = hitl_runtime::now_millis();
    let mut written = 0u64;
    let mut effects = Vec::new();
    // Entries come from a real core, 10,000 at a time (the generator's memory stays small).
    while written < count {
        let mut generator = Core::new(CoreConfig::default());
        let batch = (count - written).min(10_000);
        for i in written..written + batch {
            generator.request(&request(i, now), now, &mut effects);
            for effect in effects.drain(..) {
                let Effect::State {
                    pool,
                    decision_id,
                    change,
                } = effect
                else {
                    continue;
                };
                let payload = generator
                    .state_payload(&decision_id, &pool, change)
                    .expect("a pending item has an entry");
                let mut record = BaseRecord::<str, [u8]>::to(&topic)
                    .key(decision_id.as_str())
                    .payload(&payload[..])
                    .partition(0);
                while let Err((_, returned)) = producer.send(record) {
                    producer.poll(Duration::from_millis(5));
                    record = returned;
                }
            }
        }
        written += batch;
    }
    producer.flush(Duration::from_secs(300))?;
    outln!(
        "written in {:.1}s ({:.0}/s)",
        started.elapsed().as_secs_f64(),
        count as f64 / started.elapsed().as_secs_f64()
    )?;

    let rss_before = hitl_runtime::metrics::resident_bytes();
    let mut core = Core::new(CoreConfig::default());
    let restored = restore_partition(&mut core, kafka, &topic, 0, Duration::from_secs(1800))?;
    let rss_after = hitl_runtime::metrics::resident_bytes();
    outln!(
        "restored {} records ({} pending items, {} pools, {} unreadable) in {:.2}s: {:.0} records/s; \
         resident memory +{} MB ({} bytes per item)",
        restored.records,
        core.len(),
        restored.pools.len(),
        restored.unreadable,
        restored.took.as_secs_f64(),
        restored.records as f64 / restored.took.as_secs_f64(),
        rss_after.saturating_sub(rss_before) / 1_000_000,
        rss_after.saturating_sub(rss_before) / (core.len().max(1) as u64),
    )?;
    anyhow::ensure!(
        core.len() as u64 == count,
        "restored {} items of {count}",
        core.len()
    );
    Ok(restored.took)
}
