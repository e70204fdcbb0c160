//! The consume → process → produce loop every service runs, transactional or idempotent.
//!
//! With `Delivery::Idempotent` (brokers without transactions) the same loop flushes its outputs
//! (every one acknowledged) before it commits the input offsets; "abort" then only rewinds.
//!
//! It runs on a dedicated OS thread (librdkafka's transactional calls block; they must never run on
//! an async worker). Each transaction holds the outputs of up to `commit_max_records` inputs or
//! `commit_interval` of time, plus the input offsets (`send_offsets_to_transaction`), so outputs and
//! progress commit atomically. Errors are handled by the action they need:
//! - retriable (a commit timed out, the coordinator moved): retry the same call with backoff;
//! - abortable (the transaction is doomed): abort, seek every partition back to the first offset
//!   the transaction read, tell the processor to forget what it did, carry on;
//! - fatal (fenced by a newer instance with the same `transactional.id`, …): return the error so
//!   the process exits non-zero and its supervisor restarts it.
//!
//! When partitions are revoked (rebalance), the open transaction is committed inside the
//! rebalance callback, before the partitions go, so the next owner starts exactly where we stopped.
//!
//! Processors must still be idempotent by key: idempotent delivery repeats outputs after a crash,
//! and any topic can be written by clients other than hitl's services.

use std::{
    collections::BTreeMap,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use governor::{clock::Clock, DefaultDirectRateLimiter, Quota};
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    error::KafkaError,
    message::{BorrowedMessage, Header, Headers, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext},
    types::RDKafkaErrorCode,
    ClientContext, Message, Offset, TopicPartitionList,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Delivery, KafkaSettings},
    health::Health,
    kafka::{loop_consumer_config, loop_producer_config},
    metrics::LoopMetrics,
};

/// Counts failed deliveries, so a commit never covers an output the broker did not take.
#[derive(Default)]
struct OutputContext {
    failed_deliveries: AtomicU64,
}

impl ClientContext for OutputContext {}

impl ProducerContext for OutputContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            tracing::warn!(%error, "delivery failed");
            self.failed_deliveries.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One input record, borrowed from the consumer.
pub struct InputRecord<'a> {
    message: &'a BorrowedMessage<'a>,
}

impl<'a> InputRecord<'a> {
    pub fn topic(&self) -> &str {
        self.message.topic()
    }
    pub fn partition(&self) -> i32 {
        self.message.partition()
    }
    pub fn offset(&self) -> i64 {
        self.message.offset()
    }
    pub fn key(&self) -> Option<&[u8]> {
        self.message.key()
    }
    pub fn payload(&self) -> Option<&[u8]> {
        self.message.payload()
    }
    pub fn timestamp_millis(&self) -> Option<i64> {
        self.message.timestamp().to_millis()
    }
    /// The value of the first header with this name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        let headers = self.message.headers()?;
        headers
            .iter()
            .find(|header| header.key == name)
            .and_then(|header| header.value)
    }
}

/// One record to produce inside the current transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRecord {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Explicit partition; `None` lets the partitioner hash the key.
    pub partition: Option<i32>,
    /// State that must never get ahead of the outputs it accounts for (a changelog entry, an audit
    /// record a restore reads back). With `Delivery::Idempotent` such records are sent only once
    /// every other record of the commit is acknowledged, so a crash in between repeats outputs
    /// (removed downstream by key) instead of losing them. Transactions need no ordering.
    pub last: bool,
}

impl OutputRecord {
    pub fn new(topic: impl Into<String>, key: impl Into<Vec<u8>>, payload: Vec<u8>) -> Self {
        Self {
            topic: topic.into(),
            key: key.into(),
            payload: Some(payload),
            headers: Vec::new(),
            partition: None,
            last: false,
        }
    }
    /// The contract's dead letter of `input`: its key and bytes, unchanged, to `dlq_topic`, with the
    /// `hitl.error.*` and `hitl.source.*` headers.
    pub fn dead_letter(
        dlq_topic: &str,
        input: &InputRecord<'_>,
        stage: &str,
        class: &str,
        message: &str,
    ) -> Self {
        Self {
            topic: dlq_topic.to_owned(),
            key: input.key().unwrap_or_default().to_vec(),
            payload: input.payload().map(<[u8]>::to_vec),
            headers: Vec::new(),
            partition: None,
            last: false,
        }
        .with_header("hitl.error.class", class)
        .with_header("hitl.error.message", message)
        .with_header("hitl.error.stage", stage)
        .with_header("hitl.source.topic", input.topic())
        .with_header("hitl.source.partition", input.partition().to_string())
        .with_header("hitl.source.offset", input.offset().to_string())
    }
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// What a service does with its input. Everything here runs on the loop thread.
pub trait Processor: Send + 'static {
    /// Handles one input record, pushing its outputs. Bad input is the processor's to route
    /// (to a DLQ); it never fails the transaction.
    fn process(&mut self, input: &InputRecord<'_>, output: &mut Vec<OutputRecord>);
    /// Called every `tick_interval` with the wall-clock time (timers: leases, SLAs, reloads).
    fn tick(&mut self, _now_millis: i64, _output: &mut Vec<OutputRecord>) {}
    /// The transaction holding everything since the last commit or abort has committed.
    fn committed(&mut self) {}
    /// That transaction was aborted: forget its effects; its inputs will be read again.
    fn aborted(&mut self) {}
    /// Partitions were assigned to this instance (restore state for them here).
    fn partitions_assigned(&mut self, _partitions: &[(String, i32)]) {}
}

/// What the loop needs to know besides the Kafka settings.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// The service name, for logs.
    pub service: String,
    pub group_id: String,
    /// Stable per instance: a restarted instance fences its predecessor's open transaction.
    pub transactional_id: String,
    pub input_topics: Vec<String>,
    /// How often `Processor::tick` runs; `None` never.
    pub tick_interval: Option<Duration>,
    /// Ingest rate limit in records per second (`None`: unlimited).
    pub max_records_per_second: Option<NonZeroU32>,
}

/// Why the loop stopped with an error: only fatal conditions end up here.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("cannot create Kafka client: {0}")]
    Client(#[source] KafkaError),
    #[error("fatal Kafka error: {0}")]
    Fatal(#[source] KafkaError),
    #[error(
        "the broker does not support Kafka transactions ({0}); set kafka.delivery = \"idempotent\" \
         (HITL_KAFKA__DELIVERY=idempotent) for brokers without transactions"
    )]
    TransactionsUnsupported(#[source] KafkaError),
}

type PartitionKey = (String, i32);

/// The open transaction's bookkeeping.
#[derive(Debug, Default)]
struct Txn {
    open: bool,
    started: Option<Instant>,
    records: usize,
    /// Next offset to read per partition (last processed + 1): what the transaction commits.
    next_offsets: BTreeMap<PartitionKey, i64>,
    /// First offset the transaction read per partition: where an abort rewinds to.
    rewind_offsets: BTreeMap<PartitionKey, i64>,
    /// `last` records held until the others are acknowledged (idempotent delivery).
    held: Vec<OutputRecord>,
}

/// What happened inside a rebalance callback that the loop must pass on to the processor.
#[derive(Debug, Default)]
struct Pending {
    committed: bool,
    aborted: bool,
    assigned: Option<Vec<PartitionKey>>,
    fatal: Option<KafkaError>,
}

struct Shared {
    producer: BaseProducer<OutputContext>,
    delivery: Delivery,
    /// Set once the loop failed fatally: no more commits or aborts (they would only time out).
    failed: std::sync::atomic::AtomicBool,
    txn: Mutex<Txn>,
    pending: Mutex<Pending>,
    request_timeout: Duration,
    metrics: LoopMetrics,
}

struct LoopContext {
    shared: Arc<Shared>,
}

impl ClientContext for LoopContext {}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            if self.shared.failed.load(Ordering::Relaxed) {
                return;
            }
            tracing::info!(
                partitions = partitions.count(),
                "partitions revoked; committing open transaction"
            );
            let mut txn = self.shared.txn.lock().expect("txn lock");
            if !txn.open {
                return;
            }
            let result = self.shared.commit(consumer, &mut txn);
            let mut pending = self.shared.pending.lock().expect("pending lock");
            match result {
                Ok(()) => pending.committed = true,
                Err(CommitFailure::Abortable(error)) => {
                    tracing::warn!(%error, "commit on revoke failed; aborting");
                    match self.shared.abort(&mut txn) {
                        Ok(()) => pending.aborted = true,
                        Err(error) => pending.fatal = Some(error),
                    }
                }
                Err(CommitFailure::Fatal(error)) => pending.fatal = Some(error),
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            let assigned: Vec<PartitionKey> = partitions
                .elements()
                .iter()
                .map(|element| (element.topic().to_owned(), element.partition()))
                .collect();
            tracing::info!(partitions = assigned.len(), "partitions assigned");
            self.shared.pending.lock().expect("pending lock").assigned = Some(assigned);
        }
    }
}

enum CommitFailure {
    Abortable(KafkaError),
    Fatal(KafkaError),
}

fn is_unsupported(error: &KafkaError) -> bool {
    error.rdkafka_error_code() == Some(RDKafkaErrorCode::UnsupportedFeature)
}

fn is_fatal(error: &KafkaError) -> bool {
    if is_unsupported(error) {
        return true;
    }
    match error {
        KafkaError::Transaction(rd) => rd.is_fatal(),
        other => matches!(other.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal)),
    }
}

fn is_retriable(error: &KafkaError) -> bool {
    if is_unsupported(error) {
        return false;
    }
    match error {
        KafkaError::Transaction(rd) => rd.is_retriable() && !rd.txn_requires_abort(),
        _ => false,
    }
}

const MAX_RETRIES: u32 = 8;

impl Shared {
    /// Retries a transactional call while librdkafka says the error is retriable.
    fn retrying(
        &self,
        what: &str,
        mut call: impl FnMut() -> Result<(), KafkaError>,
    ) -> Result<(), KafkaError> {
        let mut backoff = Duration::from_millis(50);
        for attempt in 1.. {
            match call() {
                Ok(()) => return Ok(()),
                Err(error) if is_retriable(&error) && attempt < MAX_RETRIES => {
                    tracing::warn!(%error, attempt, "{what} failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(error) => return Err(error),
            }
        }
        unreachable!("the loop returns")
    }

    fn begin_if_needed(&self, txn: &mut Txn) -> Result<(), KafkaError> {
        if !txn.open {
            if self.delivery == Delivery::Transactional {
                self.producer.begin_transaction()?;
            }
            txn.open = true;
            txn.started = Some(Instant::now());
        }
        Ok(())
    }

    fn commit(
        &self,
        consumer: &BaseConsumer<LoopContext>,
        txn: &mut Txn,
    ) -> Result<(), CommitFailure> {
        let started = Instant::now();
        let classify = |error: KafkaError| {
            if is_fatal(&error) {
                CommitFailure::Fatal(error)
            } else {
                CommitFailure::Abortable(error)
            }
        };
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), next) in &txn.next_offsets {
            offsets
                .add_partition_offset(topic, *partition, Offset::Offset(*next))
                .map_err(classify)?;
        }
        match self.delivery {
            Delivery::Transactional => {
                if offsets.count() > 0 {
                    let group = consumer.group_metadata().ok_or(CommitFailure::Abortable(
                        KafkaError::MessageConsumption(RDKafkaErrorCode::State),
                    ))?;
                    self.retrying("send_offsets_to_transaction", || {
                        self.producer.send_offsets_to_transaction(
                            &offsets,
                            &group,
                            self.request_timeout,
                        )
                    })
                    .map_err(classify)?;
                }
                // commit_transaction flushes too, but in rust-rdkafka's 100 ms slices.
                self.flush_promptly().map_err(classify)?;
                self.retrying("commit_transaction", || {
                    self.producer.commit_transaction(self.request_timeout)
                })
                .map_err(classify)?;
            }
            Delivery::Idempotent => {
                // Every output acknowledged before the input counts as done; state records
                // (`last`) only after the outputs they account for.
                self.flush_acknowledged().map_err(classify)?;
                if !txn.held.is_empty() {
                    for record in std::mem::take(&mut txn.held) {
                        self.send(&record).map_err(classify)?;
                    }
                    self.flush_acknowledged().map_err(classify)?;
                }
                if offsets.count() > 0 {
                    consumer
                        .commit(&offsets, CommitMode::Sync)
                        .map_err(classify)?;
                }
            }
        }
        self.metrics.observe_commit(started.elapsed(), txn.records);
        *txn = Txn::default();
        Ok(())
    }

    /// Waits until every record sent is acknowledged; fails if any delivery failed.
    fn flush_acknowledged(&self) -> Result<(), KafkaError> {
        self.flush_promptly()?;
        if self
            .producer
            .context()
            .failed_deliveries
            .swap(0, Ordering::Relaxed)
            > 0
        {
            return Err(KafkaError::MessageProduction(RDKafkaErrorCode::Fail));
        }
        Ok(())
    }

    /// Waits until the broker has answered for every record sent (or `request_timeout` passes),
    /// serving delivery reports as they arrive. `BaseProducer::flush` serves them in 100 ms polls
    /// that never end early, so each commit waited at least 100 ms (measured: 100.0–100.4 ms for
    /// every flush; the loop spent 79–94% of its time there at 5,000 records per commit). A short
    /// `poll` is no better: it rounds its timeout down to whole milliseconds and spins below one.
    /// So: serve what has arrived without blocking, and sleep briefly when nothing has.
    fn flush_promptly(&self) -> Result<(), KafkaError> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            match self.producer.flush(Duration::ZERO) {
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                    if Instant::now() < deadline =>
                {
                    let waiting = self.producer.in_flight_count();
                    self.producer.poll(Duration::ZERO);
                    if self.producer.in_flight_count() == waiting {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                }
                done => return done,
            }
        }
    }

    fn abort(&self, txn: &mut Txn) -> Result<(), KafkaError> {
        self.metrics.aborted();
        if self.delivery == Delivery::Transactional {
            self.retrying("abort_transaction", || {
                self.producer.abort_transaction(self.request_timeout)
            })?;
        }
        *txn = Txn::default();
        Ok(())
    }

    /// Aborts, then seeks each partition back to the first offset the transaction read.
    fn abort_and_rewind(
        &self,
        consumer: &BaseConsumer<LoopContext>,
        txn: &mut Txn,
    ) -> Result<(), KafkaError> {
        let rewind = std::mem::take(&mut txn.rewind_offsets);
        self.abort(txn)?;
        for ((topic, partition), offset) in rewind {
            if let Err(error) = consumer.seek(
                &topic,
                partition,
                Offset::Offset(offset),
                self.request_timeout,
            ) {
                // Not ours any more (rebalanced away): its next owner reads from the committed offset.
                tracing::warn!(%topic, partition, offset, %error, "cannot rewind partition");
            }
        }
        Ok(())
    }

    /// Produces one record in the open transaction; waits (never drops) while the queue is full.
    fn send(&self, record: &OutputRecord) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in &record.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let mut base = BaseRecord::to(&record.topic)
            .key(&record.key[..])
            .headers(headers);
        if let Some(payload) = &record.payload {
            base = base.payload(&payload[..]);
        }
        if let Some(partition) = record.partition {
            base = base.partition(partition);
        }
        loop {
            match self.producer.send(base) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    self.metrics.queue_full();
                    self.producer.poll(Duration::from_millis(20));
                    base = returned;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
}

/// Starts the loop on its own thread. It stops when `shutdown` is cancelled (committing or aborting
/// its open transaction first) or on a fatal error.
pub fn spawn<P: Processor>(
    kafka: KafkaSettings,
    settings: LoopSettings,
    processor: P,
    shutdown: CancellationToken,
    health: Health,
    metrics: LoopMetrics,
) -> std::thread::JoinHandle<Result<(), LoopError>> {
    std::thread::Builder::new()
        .name(format!("{}-loop", settings.service))
        .spawn(move || {
            let result = run(&kafka, &settings, processor, &shutdown, &health, metrics);
            health.set_alive(false);
            if let Err(error) = &result {
                tracing::error!(%error, "transactional loop stopped");
            }
            result
        })
        .expect("spawn loop thread")
}

fn run<P: Processor>(
    kafka: &KafkaSettings,
    settings: &LoopSettings,
    mut processor: P,
    shutdown: &CancellationToken,
    health: &Health,
    metrics: LoopMetrics,
) -> Result<(), LoopError> {
    let producer: BaseProducer<OutputContext> =
        loop_producer_config(kafka, &settings.transactional_id)
            .create_with_context(OutputContext::default())
            .map_err(LoopError::Client)?;
    let shared = Arc::new(Shared {
        producer,
        delivery: kafka.delivery,
        failed: std::sync::atomic::AtomicBool::new(false),
        txn: Mutex::default(),
        pending: Mutex::default(),
        request_timeout: kafka.request_timeout,
        metrics,
    });
    let consumer: BaseConsumer<LoopContext> =
        loop_consumer_config(kafka, &settings.group_id, &settings.transactional_id)
            .create_with_context(LoopContext {
                shared: shared.clone(),
            })
            .map_err(LoopError::Client)?;

    // init_transactions fences older instances with our transactional.id and aborts their open
    // transaction. Retry until the broker answers or we are told to stop.
    if kafka.delivery == Delivery::Transactional {
        init_transactions(&shared.producer, kafka.request_timeout, shutdown)?;
    }
    let topics: Vec<&str> = settings.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(LoopError::Client)?;
    tracing::info!(service = %settings.service, group = %settings.group_id, transactional_id = %settings.transactional_id, topics = ?topics, "loop started");
    health.set_ready(true);

    let limiter: Option<DefaultDirectRateLimiter> = settings
        .max_records_per_second
        .map(|rate| governor::RateLimiter::direct(Quota::per_second(rate)));
    let clock = governor::clock::DefaultClock::default();
    let mut output = Vec::new();
    let mut last_tick = Instant::now();

    let result = loop {
        health.heartbeat();
        if shutdown.is_cancelled() {
            break Ok(());
        }
        if let Err(error) = step(
            kafka,
            settings,
            &mut processor,
            &shared,
            &consumer,
            &mut output,
            &mut last_tick,
            limiter.as_ref(),
            &clock,
        ) {
            break Err(error);
        }
    };

    // Shutting down: commit what is open (or abort it), then leave the group. After a fatal
    // error there is nothing to save: the open transaction dies with the producer.
    shared.failed.store(result.is_err(), Ordering::Relaxed);
    let mut txn = shared.txn.lock().expect("txn lock");
    if txn.open && result.is_ok() {
        match shared.commit(&consumer, &mut txn) {
            Ok(()) => processor.committed(),
            Err(CommitFailure::Abortable(error) | CommitFailure::Fatal(error)) => {
                tracing::warn!(%error, "final commit failed; aborting");
                let _ = shared.abort(&mut txn);
                processor.aborted();
            }
        }
    }
    drop(txn);
    health.set_ready(false);
    drop(consumer);
    tracing::info!(service = %settings.service, "loop stopped");
    result.map_err(|error| match error {
        LoopError::Fatal(error) if is_unsupported(&error) => {
            LoopError::TransactionsUnsupported(error)
        }
        other => other,
    })
}

#[allow(clippy::too_many_arguments)]
fn step<P: Processor>(
    kafka: &KafkaSettings,
    settings: &LoopSettings,
    processor: &mut P,
    shared: &Shared,
    consumer: &BaseConsumer<LoopContext>,
    output: &mut Vec<OutputRecord>,
    last_tick: &mut Instant,
    limiter: Option<&DefaultDirectRateLimiter>,
    clock: &governor::clock::DefaultClock,
) -> Result<(), LoopError> {
    // Commit when due.
    let poll_timeout = {
        let mut txn = shared.txn.lock().expect("txn lock");
        let due = txn.open
            && (txn.records >= kafka.commit_max_records
                || txn
                    .started
                    .is_some_and(|started| started.elapsed() >= kafka.commit_interval));
        if due {
            commit_or_abort(shared, consumer, &mut txn, processor)?;
        }
        match txn.started.filter(|_| txn.open) {
            Some(started) => kafka
                .commit_interval
                .saturating_sub(started.elapsed())
                .min(Duration::from_millis(100)),
            None => Duration::from_millis(100),
        }
    };

    // Timers.
    if let Some(interval) = settings.tick_interval {
        if last_tick.elapsed() >= interval {
            *last_tick = Instant::now();
            processor.tick(now_millis(), output);
            if !output.is_empty() {
                produce_outputs(shared, consumer, output, processor)?;
            }
        }
    }

    let polled = consumer.poll(poll_timeout);
    apply_pending(shared, processor)?;
    shared.producer.poll(Duration::ZERO);
    let message = match polled {
        None => return Ok(()),
        Some(Err(error)) => {
            shared.metrics.consume_error();
            if is_fatal(&error) {
                return Err(LoopError::Fatal(error));
            }
            tracing::warn!(%error, "consume error");
            return Ok(());
        }
        Some(Ok(message)) => message,
    };

    if let Some(limiter) = limiter {
        while let Err(not_until) = limiter.check() {
            std::thread::sleep(not_until.wait_time_from(clock.now()));
        }
    }
    let key = (message.topic().to_owned(), message.partition());
    let offset = message.offset();
    processor.process(&InputRecord { message: &message }, output);
    shared.metrics.record_in();
    {
        let mut txn = shared.txn.lock().expect("txn lock");
        txn.rewind_offsets.entry(key.clone()).or_insert(offset);
        txn.next_offsets.insert(key, offset + 1); // the committed offset is the next one to read
        txn.records += 1;
    }
    produce_outputs(shared, consumer, output, processor)
}

/// Sends `output` in the open transaction (opening one if needed). A failed send aborts it.
fn produce_outputs<P: Processor>(
    shared: &Shared,
    consumer: &BaseConsumer<LoopContext>,
    output: &mut Vec<OutputRecord>,
    processor: &mut P,
) -> Result<(), LoopError> {
    let mut txn = shared.txn.lock().expect("txn lock");
    let begun = shared.begin_if_needed(&mut txn);
    shared.metrics.records_out(output.len());
    let hold = shared.delivery == Delivery::Idempotent;
    let sent = begun.and_then(|()| {
        output.drain(..).try_for_each(|record| {
            if hold && record.last {
                txn.held.push(record);
                Ok(())
            } else {
                shared.send(&record)
            }
        })
    });
    output.clear();
    match sent {
        Ok(()) => Ok(()),
        Err(error) if is_fatal(&error) => Err(LoopError::Fatal(error)),
        Err(error) => {
            tracing::warn!(%error, "produce failed; aborting transaction");
            shared
                .abort_and_rewind(consumer, &mut txn)
                .map_err(LoopError::Fatal)?;
            processor.aborted();
            Ok(())
        }
    }
}

fn commit_or_abort<P: Processor>(
    shared: &Shared,
    consumer: &BaseConsumer<LoopContext>,
    txn: &mut Txn,
    processor: &mut P,
) -> Result<(), LoopError> {
    match shared.commit(consumer, txn) {
        Ok(()) => {
            processor.committed();
            Ok(())
        }
        Err(CommitFailure::Fatal(error)) => Err(LoopError::Fatal(error)),
        Err(CommitFailure::Abortable(error)) => {
            tracing::warn!(%error, "commit failed; aborting and rewinding");
            shared
                .abort_and_rewind(consumer, txn)
                .map_err(LoopError::Fatal)?;
            processor.aborted();
            Ok(())
        }
    }
}

fn apply_pending<P: Processor>(shared: &Shared, processor: &mut P) -> Result<(), LoopError> {
    let pending = std::mem::take(&mut *shared.pending.lock().expect("pending lock"));
    if let Some(error) = pending.fatal {
        return Err(LoopError::Fatal(error));
    }
    if pending.committed {
        processor.committed();
    }
    if pending.aborted {
        processor.aborted();
    }
    if let Some(assigned) = pending.assigned {
        processor.partitions_assigned(&assigned);
    }
    Ok(())
}

/// Wall-clock milliseconds since the Unix epoch: the one place the shell reads the clock for cores.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or_default()
}

/// init_transactions fences older instances with our transactional.id and aborts their open
/// transaction. Retries until the broker answers or we are told to stop.
fn init_transactions(
    producer: &BaseProducer<OutputContext>,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<(), LoopError> {
    while !shutdown.is_cancelled() {
        match producer.init_transactions(timeout) {
            Ok(()) => return Ok(()),
            Err(error) if is_fatal(&error) => return Err(LoopError::Fatal(error)),
            Err(error) => {
                tracing::warn!(%error, "init_transactions failed; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    Ok(())
}
