//! Metrics of the shared loop. Names are defined here once; labels stay low-cardinality.

use std::time::Duration;

use prometheus_client::{
    metrics::{counter::Counter, histogram::Histogram},
    registry::Registry,
};

/// This process's resident memory in bytes (`VmRSS`; 0 where `/proc` has none), for benchmarks
/// that report memory per item.
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// Exponential buckets from 0.1 ms to ~6.5 s, for latencies in seconds.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 17)
}

/// Counters and histograms of the transactional loop.
#[derive(Debug, Clone)]
pub struct LoopMetrics {
    records_in: Counter,
    records_out: Counter,
    transactions_committed: Counter,
    transactions_aborted: Counter,
    commit_seconds: Histogram,
    records_per_transaction: Histogram,
    consume_errors: Counter,
    producer_queue_full: Counter,
}

impl LoopMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            records_in: Counter::default(),
            records_out: Counter::default(),
            transactions_committed: Counter::default(),
            transactions_aborted: Counter::default(),
            commit_seconds: Histogram::new(latency_buckets()),
            records_per_transaction: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1.0, 4.0, 8),
            ),
            consume_errors: Counter::default(),
            producer_queue_full: Counter::default(),
        };
        let loop_registry = registry.sub_registry_with_prefix("hitl_loop");
        loop_registry.register(
            "records_in",
            "Input records processed",
            metrics.records_in.clone(),
        );
        loop_registry.register(
            "records_out",
            "Records produced",
            metrics.records_out.clone(),
        );
        loop_registry.register(
            "transactions_committed",
            "Transactions committed",
            metrics.transactions_committed.clone(),
        );
        loop_registry.register(
            "transactions_aborted",
            "Transactions aborted (their input is read again)",
            metrics.transactions_aborted.clone(),
        );
        loop_registry.register(
            "commit_seconds",
            "Time to send offsets and commit a transaction",
            metrics.commit_seconds.clone(),
        );
        loop_registry.register(
            "records_per_transaction",
            "Input records per committed transaction",
            metrics.records_per_transaction.clone(),
        );
        loop_registry.register(
            "consume_errors",
            "Errors returned by the consumer",
            metrics.consume_errors.clone(),
        );
        loop_registry.register(
            "producer_queue_full",
            "Times the producer queue was full and the loop waited",
            metrics.producer_queue_full.clone(),
        );
        metrics
    }

    pub(crate) fn record_in(&self) {
        self.records_in.inc();
    }
    pub(crate) fn records_out(&self, count: usize) {
        self.records_out.inc_by(count as u64);
    }
    pub(crate) fn observe_commit(&self, elapsed: Duration, records: usize) {
        self.transactions_committed.inc();
        self.commit_seconds.observe(elapsed.as_secs_f64());
        self.records_per_transaction.observe(records as f64);
    }
    pub(crate) fn aborted(&self) {
        self.transactions_aborted.inc();
    }
    pub(crate) fn consume_error(&self) {
        self.consume_errors.inc();
    }
    pub(crate) fn queue_full(&self) {
        self.producer_queue_full.inc();
    }
}
