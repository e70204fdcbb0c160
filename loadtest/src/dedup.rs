//! What the router's durable de-duplication costs: `dedup-memory` (no broker) measures the memory
//! per remembered decision id; `bench-dedup-restore` the time to restore one partition's ids from
//! the seen-ids changelog, with the router's own restore.

use std::{fmt::Write as _, time::Duration, time::Instant};

use hitl_router::dedup::{self, Limits, SeenIds};
use hitl_runtime::{
    config::{KafkaSettings, TopicSpec},
    outln,
};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// The router's commit size (`kafka.commit_max_records` default): ids are committed in batches.
const COMMIT_EVERY: u64 = 5_000;

/// The ids of `count` routed decisions over 4 partitions, committed every 5,000, as the router
/// remembers them; prints the resident memory they take and the core's own estimate, per id.
pub fn memory(count: u64) -> anyhow::Result<()> {
    let mut seen = SeenIds::new(Limits {
        horizon_millis: 7 * 24 * 3_600_000,
        max_ids: usize::try_from(count)?,
    });
    let now = hitl_runtime::now_millis();
    let mut id = String::new();
    let base = hitl_runtime::metrics::resident_bytes();
    let started = Instant::now();
    for index in 0..count {
        id.clear();
        write!(id, "bench-decision-{index:012}")?;
        seen.insert((index % 4) as i32, dedup::digest(&id), now);
        if index % COMMIT_EVERY == COMMIT_EVERY - 1 {
            seen.commit(now);
        }
    }
    seen.commit(now);
    let took = started.elapsed();
    let grown = hitl_runtime::metrics::resident_bytes().saturating_sub(base);
    outln!(
        "router de-duplication, {count} ids remembered: {} bytes resident per id ({:.1} MB), \
         {} bytes per id by the core's estimate (hitl_router_dedup_bytes); {:.0} ns per id to insert and commit",
        grown / count.max(1),
        grown as f64 / 1e6,
        seen.heap_bytes() as u64 / count.max(1),
        took.as_nanos() as f64 / count.max(1) as f64,
    )?;
    Ok(())
}

/// Writes `count` seen-id entries to one partition of a new changelog topic (as the router writes
/// them), then restores them with the router's restore; prints how long it took and the memory.
pub fn restore(
    kafka: &KafkaSettings,
    runtime: &tokio::runtime::Runtime,
    count: u64,
) -> anyhow::Result<()> {
    let topic = format!("bench-dedup-{:x}.router.seen", hitl_runtime::now_millis());
    let spec = TopicSpec {
        name: topic.clone(),
        partitions: 1,
        configs: vec![("cleanup.policy", "compact,delete".into())],
    };
    runtime.block_on(hitl_runtime::kafka::ensure_topics(kafka, &[spec], 1))?;
    outln!("writing {count} seen-id entries to {topic} ...")?;
    let producer: BaseProducer = hitl_runtime::kafka::producer_config(kafka).create()?;
    let now = hitl_runtime::now_millis();
    let written = Instant::now();
    for index in 0..count {
        let (key, value) =
            dedup::encode_entry(dedup::digest(&format!("bench-decision-{index:012}")), now);
        let mut record = BaseRecord::<[u8], [u8]>::to(&topic)
            .key(&key[..])
            .payload(&value[..])
            .partition(0);
        while let Err((_, returned)) = producer.send(record) {
            producer.poll(Duration::from_millis(5));
            record = returned;
        }
    }
    producer.flush(Duration::from_secs(120))?;
    outln!("written in {:.1}s", written.elapsed().as_secs_f64())?;
    let mut seen = SeenIds::new(Limits {
        horizon_millis: 7 * 24 * 3_600_000,
        max_ids: usize::try_from(count)?,
    });
    let base = hitl_runtime::metrics::resident_bytes();
    let report = hitl_router::service::restore_seen_partition(
        &mut seen,
        kafka,
        &topic,
        0,
        hitl_runtime::now_millis(),
        Duration::from_secs(600),
    )?;
    let grown = hitl_runtime::metrics::resident_bytes().saturating_sub(base);
    outln!(
        "restored {} ids ({} records read) in {:.2}s: {:.0} ids/s; {} bytes resident per id",
        report.restored.ids,
        report.records,
        report.took.as_secs_f64(),
        report.restored.ids as f64 / report.took.as_secs_f64(),
        grown / report.restored.ids.max(1),
    )?;
    anyhow::ensure!(
        report.restored.ids == count,
        "restored {} of {count}",
        report.restored.ids
    );
    Ok(())
}
