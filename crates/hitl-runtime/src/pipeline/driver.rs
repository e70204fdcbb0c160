//! The rdkafka shell around `LoopState`: it polls the consumer, calls the processor, produces,
//! commits or aborts, seeks, sleeps, and reports each of those to the state machine, which
//! decides. Errors are classified here by the action they need (see the module above).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use governor::{clock::Clock, DefaultDirectRateLimiter, Quota};
use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol},
    error::KafkaError,
    message::{BorrowedMessage, Header, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext},
    types::RDKafkaErrorCode,
    ClientContext, Message, Offset, TopicPartitionList,
};
use tokio_util::sync::CancellationToken;

use super::{
    error::{LoopError, ProcessError},
    now_millis,
    record::{InputRecord, OutputRecord},
    state::{CommitPlan, Event, LoopState, PartitionKey, Read, Timing},
    watermark::{EndReport, Watermarks},
    LoopSettings, Processor,
};
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

/// What the loop and the consumer's rebalance callbacks share. The callbacks run inside
/// `consumer.poll` on the loop thread, so the loop never polls while it holds `state`.
struct Shared {
    /// Every output goes through it, in the open transaction (or, idempotent, acknowledged
    /// before the offsets commit).
    producer: BaseProducer<OutputContext>,
    /// How outputs and input offsets become durable together.
    delivery: Delivery,
    /// The loop's bookkeeping (`super::state`).
    state: Mutex<LoopState>,
    /// A fatal error met inside a rebalance callback, for the loop to return after the poll.
    callback_fatal: Mutex<Option<KafkaError>>,
    /// Per input partition, what the consumer's statistics last said of its end.
    end_offsets: Mutex<HashMap<PartitionKey, EndReport>>,
    /// A fault-injection point for tests (`HITL_FAILPOINT_CRASH_BEFORE_STATE=<topic>`): with
    /// idempotent delivery, the process aborts once a commit's outputs to that topic are
    /// acknowledged and before its held state records are sent — the crash between an outcome
    /// and its changelog entry that deterministic replay must survive.
    crash_before_state: Option<String>,
    /// The topics written since the last commit, while `crash_before_state` is set.
    sent_topics: Mutex<BTreeSet<String>>,
    /// How long one transactional call, flush or seek may take.
    request_timeout: Duration,
    metrics: LoopMetrics,
}

struct LoopContext {
    shared: Arc<Shared>,
}

impl ClientContext for LoopContext {
    /// The consumer's statistics (only when a watermark is kept): per partition, whether its
    /// fetch position reached its last stable offset (the end a `read_committed` reader reads
    /// to, past any transaction markers) and whether anything fetched waits to be delivered.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let now = now_millis();
        let mut ends = self.shared.end_offsets.lock().expect("end offsets lock");
        for (topic, stats) in &statistics.topics {
            for (partition, stats) in &stats.partitions {
                if *partition >= 0 && stats.ls_offset >= 0 && stats.next_offset >= 0 {
                    ends.insert(
                        (topic.clone(), *partition),
                        EndReport {
                            fetched_to_end: stats.next_offset >= stats.ls_offset,
                            queue_empty: stats.fetchq_cnt == 0,
                            as_of: now,
                        },
                    );
                }
            }
        }
    }
}

impl ConsumerContext for LoopContext {
    /// Before partitions go: the open transaction commits (see `LoopState::handle_revoke`).
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut state = self.shared.lock_state();
        let (revoked, incremental) = match rebalance {
            Rebalance::Assign(_) => return,
            Rebalance::Revoke(partitions) => (
                partition_keys(partitions),
                matches!(
                    consumer.rebalance_protocol(),
                    RebalanceProtocol::Cooperative
                ),
            ),
            // librdkafka unassigns every partition after a rebalance error.
            Rebalance::Error(error) => {
                tracing::error!(%error, "rebalance error; every partition is unassigned");
                (state.owned(), false)
            }
        };
        // Lost (the session expired, or the rebalance failed): another member may own them
        // already, and this instance's generation is gone, so a commit now would not be fenced.
        // Commit nothing; abort what is open.
        let lost = !matches!(rebalance, Rebalance::Revoke(_)) || consumer.assignment_lost();
        if lost {
            tracing::warn!(
                partitions = revoked.len(),
                "partitions lost: aborting the open transaction, committing nothing"
            );
            state.handle_lost(&revoked);
            if let Err(error) = self.shared.abort_and_rewind(consumer, &mut state) {
                state.fail();
                *self.shared.callback_fatal.lock().expect("fatal lock") = Some(error);
            }
            return;
        }
        tracing::info!(
            partitions = revoked.len(),
            incremental,
            "partitions revoked"
        );
        let Some(plan) = state.handle_revoke(&revoked, incremental) else {
            return;
        };
        tracing::info!("committing the open transaction before the partitions go");
        if let Err(error) = self.shared.settle(consumer, &mut state, plan) {
            state.fail();
            *self.shared.callback_fatal.lock().expect("fatal lock") = Some(error);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            let assigned = partition_keys(partitions);
            tracing::info!(partitions = assigned.len(), "partitions assigned");
            self.shared.lock_state().handle_assign(&assigned);
        }
    }
}

fn partition_keys(partitions: &TopicPartitionList) -> Vec<PartitionKey> {
    partitions
        .elements()
        .iter()
        .map(|element| (element.topic().to_owned(), element.partition()))
        .collect()
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
/// How long one `abort_transaction` call may block before delivery reports are served again.
const ABORT_SLICE: Duration = Duration::from_millis(500);

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, LoopState> {
        self.state.lock().expect("loop state lock")
    }

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

    /// Begins the producer's transaction (after the state opened one). It fails only when the
    /// producer cannot go on (fenced, fatal), so any error is fatal.
    fn begin(&self) -> Result<(), KafkaError> {
        if self.delivery == Delivery::Transactional {
            self.producer.begin_transaction()?;
        }
        Ok(())
    }

    /// Commits `plan` and reports the outcome to `state`: committed, or (the broker refused)
    /// aborted and rewound. `Err`: a fatal error; the loop must stop.
    fn settle(
        &self,
        consumer: &BaseConsumer<LoopContext>,
        state: &mut LoopState,
        plan: CommitPlan,
    ) -> Result<(), KafkaError> {
        let started = Instant::now();
        match self.execute_commit(consumer, plan) {
            Ok(()) => {
                let records = state.handle_commit_ok();
                self.metrics.observe_commit(started.elapsed(), records);
                Ok(())
            }
            Err(CommitFailure::Fatal(error)) => Err(error),
            Err(CommitFailure::Abortable(error)) => {
                tracing::warn!(%error, "commit failed; aborting and rewinding");
                self.abort_and_rewind(consumer, state)
            }
        }
    }

    fn execute_commit(
        &self,
        consumer: &BaseConsumer<LoopContext>,
        plan: CommitPlan,
    ) -> Result<(), CommitFailure> {
        let classify = |error: KafkaError| {
            if is_fatal(&error) {
                CommitFailure::Fatal(error)
            } else {
                CommitFailure::Abortable(error)
            }
        };
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), next) in &plan.offsets {
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
                if let Some(topic) = &self.crash_before_state {
                    let sent = std::mem::take(&mut *self.sent_topics.lock().expect("sent"));
                    if !plan.held.is_empty() && sent.contains(topic) {
                        tracing::error!(%topic, "failpoint: crashing before the state records");
                        std::process::abort();
                    }
                }
                if !plan.held.is_empty() {
                    for record in &plan.held {
                        self.send(record).map_err(classify)?;
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

    /// Aborts the open transaction (if any) in `state` and in the producer, then seeks each
    /// partition still owned back to the first offset the transaction read.
    fn abort_and_rewind(
        &self,
        consumer: &BaseConsumer<LoopContext>,
        state: &mut LoopState,
    ) -> Result<(), KafkaError> {
        let rewind = state.handle_abort();
        if rewind.was_open {
            self.abort_producer()?;
        }
        if rewind.held_dropped > 0 {
            tracing::debug!(records = rewind.held_dropped, "held records dropped");
        }
        for ((topic, partition), offset) in rewind.positions {
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

    /// Aborts the producer's open transaction (idempotent delivery: nothing to abort there).
    fn abort_producer(&self) -> Result<(), KafkaError> {
        self.metrics.aborted();
        if self.delivery != Delivery::Transactional {
            return Ok(());
        }
        // The abort purges what is in flight and completes only once the delivery reports of
        // those records are served, by this thread: so it is called in short slices with the
        // reports served in between (one long call waited its whole timeout for reports nobody
        // served — 30 s per attempt after a broker pause — with the loop deaf meanwhile). The
        // slices add up to at most `request_timeout` times the retries of other calls.
        let deadline = Instant::now() + self.request_timeout * MAX_RETRIES;
        loop {
            self.producer.poll(Duration::ZERO);
            match self.producer.abort_transaction(ABORT_SLICE) {
                Ok(()) => return Ok(()),
                Err(error) if is_retriable(&error) && Instant::now() < deadline => {
                    tracing::debug!(%error, "abort_transaction not done yet; serving delivery reports");
                    self.producer.poll(Duration::from_millis(50));
                }
                Err(error) => return Err(error),
            }
        }
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
        if self.crash_before_state.is_some() {
            self.sent_topics
                .lock()
                .expect("sent")
                .insert(record.topic.clone());
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

/// Runs the loop until `shutdown` is cancelled (committing or aborting its open transaction
/// first) or a fatal error.
pub(super) fn run<P: Processor>(
    kafka: &KafkaSettings,
    settings: &LoopSettings,
    processor: P,
    shutdown: &CancellationToken,
    health: &Health,
    metrics: LoopMetrics,
) -> Result<(), LoopError> {
    let producer: BaseProducer<OutputContext> =
        loop_producer_config(kafka, &settings.transactional_id)
            .create_with_context(OutputContext::default())
            .map_err(LoopError::Client)?;
    let timing = Timing::new(
        kafka.commit_max_records,
        kafka.commit_interval,
        settings.tick_interval,
    );
    let shared = Arc::new(Shared {
        producer,
        delivery: kafka.delivery,
        state: Mutex::new(LoopState::new(
            timing,
            kafka.delivery == Delivery::Idempotent,
            Instant::now(),
        )),
        callback_fatal: Mutex::default(),
        end_offsets: Mutex::default(),
        crash_before_state: std::env::var("HITL_FAILPOINT_CRASH_BEFORE_STATE")
            .ok()
            .filter(|topic| !topic.is_empty()),
        sent_topics: Mutex::default(),
        request_timeout: kafka.request_timeout,
        metrics,
    });
    let mut consumer_config =
        loop_consumer_config(kafka, &settings.group_id, &settings.transactional_id);
    if processor.input_quiet().is_some() {
        consumer_config.set(
            "statistics.interval.ms",
            STATISTICS_INTERVAL.as_millis().to_string(),
        );
    }
    let consumer: BaseConsumer<LoopContext> = consumer_config
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

    let watermarks = processor.input_quiet().map(|quiet| {
        Watermarks::new(
            quiet.as_millis() as i64,
            CAUGHT_UP_MARGIN.as_millis() as i64,
        )
    });
    let mut driver = Driver {
        settings,
        watermarks,
        health,
        last_tick: None,
        processor,
        shared,
        consumer: &consumer,
        output: Vec::new(),
        limiter: settings
            .max_records_per_second
            .map(|rate| governor::RateLimiter::direct(Quota::per_second(rate))),
        clock: governor::clock::DefaultClock::default(),
        output_limit: kafka.output_limit(),
    };
    let result = loop {
        health.heartbeat();
        if shutdown.is_cancelled() {
            break Ok(());
        }
        if let Err(error) = driver.step() {
            break Err(error);
        }
    };
    driver.finish(result.is_ok());
    health.set_ready(false);
    drop(driver);
    // Dropping the consumer leaves the group; its revoke finds nothing open.
    drop(consumer);
    tracing::info!(service = %settings.service, "loop stopped");
    result.map_err(|error| match error {
        LoopError::Fatal(error) if is_unsupported(&error) => {
            LoopError::TransactionsUnsupported(error)
        }
        other => other,
    })
}

/// How far behind the consumer's report of its end offset the watermark of a caught-up partition
/// is: that end is as old as the last fetch response (a long poll waits up to
/// `fetch.wait.max.ms`, 500 ms by default).
const CAUGHT_UP_MARGIN: Duration = Duration::from_secs(1);
/// Ticks further apart than this mean the loop was stalled (see `Watermarks::stalled`).
const STALL: Duration = Duration::from_secs(2);
/// How often the consumer reports end offsets when a watermark is kept.
const STATISTICS_INTERVAL: Duration = Duration::from_millis(500);

/// The loop thread's side: the processor, the consumer, and what lives between iterations.
struct Driver<'a, P> {
    /// The dead-letter topic for poison records, among others.
    settings: &'a LoopSettings,
    /// The service's hooks.
    processor: P,
    /// Liveness: a restore (in `partitions_assigned`) is not a stall.
    health: &'a Health,
    /// The input watermark, for processors that ask for it (`Processor::input_quiet`).
    watermarks: Option<Watermarks>,
    /// When the watermark was last computed (a tick), to notice a stalled loop.
    last_tick: Option<i64>,
    /// The producer and the state machine, shared with the rebalance callbacks.
    shared: Arc<Shared>,
    /// Borrowed, so a polled message borrows the consumer and not the driver.
    consumer: &'a BaseConsumer<LoopContext>,
    /// The outputs of the hook being run; always empty between hooks.
    output: Vec<OutputRecord>,
    /// `LoopSettings::max_records_per_second`.
    limiter: Option<DefaultDirectRateLimiter>,
    /// The limiter's clock, to compute how long to wait.
    clock: governor::clock::DefaultClock,
    /// The most bytes one output record may take (`KafkaSettings::output_limit`).
    output_limit: usize,
}

impl<P: Processor> Driver<'_, P> {
    /// One iteration: back off, or commit if due, tick if due, poll, process what came.
    fn step(&mut self) -> Result<(), LoopError> {
        let now = Instant::now();
        if let Some(wait) = self.shared.lock_state().retry_wait(now) {
            // Backing off after a transient error: nothing is read until the wait is over (the
            // input that failed is the next one read).
            std::thread::sleep(wait.min(super::state::MAX_POLL_WAIT));
            return Ok(());
        }
        self.commit_if_due(now)?;

        let tick_due = {
            let mut state = self.shared.lock_state();
            let due = state.tick_due(now);
            if due {
                state.handle_ticked(now);
            }
            due
        };
        if tick_due {
            self.tick()?;
            if self
                .shared
                .lock_state()
                .retry_wait(Instant::now())
                .is_some()
            {
                return Ok(());
            }
        }

        let timeout = self.shared.lock_state().poll_timeout(Instant::now());
        // The message borrows the consumer, not the driver.
        let consumer = self.consumer;
        let polled = consumer.poll(timeout);
        let callback_fatal = self
            .shared
            .callback_fatal
            .lock()
            .expect("fatal lock")
            .take();
        if let Some(error) = callback_fatal {
            return Err(LoopError::Fatal(error));
        }
        self.deliver_events()?;
        self.shared.producer.poll(Duration::ZERO);
        let message = match polled {
            None => return Ok(()),
            Some(Err(error)) => {
                self.shared.metrics.consume_error();
                if is_fatal(&error) {
                    return Err(LoopError::Fatal(error));
                }
                tracing::warn!(%error, "consume error");
                return Ok(());
            }
            Some(Ok(message)) => message,
        };
        if let Some(limiter) = &self.limiter {
            while let Err(not_until) = limiter.check() {
                std::thread::sleep(not_until.wait_time_from(self.clock.now()));
            }
        }
        self.process(&message)
    }

    fn commit_if_due(&mut self, now: Instant) -> Result<(), LoopError> {
        {
            let mut state = self.shared.lock_state();
            if !state.commit_due(now) {
                return Ok(());
            }
            if let Some(plan) = state.poll_commit() {
                self.shared
                    .settle(self.consumer, &mut state, plan)
                    .map_err(LoopError::Fatal)?;
            }
        }
        self.deliver_events()
    }

    fn process(&mut self, message: &BorrowedMessage<'_>) -> Result<(), LoopError> {
        let partition: PartitionKey = (message.topic().to_owned(), message.partition());
        let offset = message.offset();
        let read = self
            .shared
            .lock_state()
            .handle_read(&partition, offset, Instant::now());
        match read {
            Read::NotOwned => {
                tracing::warn!(topic = %partition.0, partition = partition.1, offset, "record of a partition no longer owned skipped");
                return Ok(());
            }
            Read::Process { begin: true } => self.shared.begin().map_err(LoopError::Fatal)?,
            Read::Process { begin: false } => {}
        }

        let input = InputRecord::new(message);
        if let Some(watermarks) = &mut self.watermarks {
            let now = now_millis();
            let time = input.append_time_millis().map_or(now, |at| at.min(now));
            watermarks.record(&partition, time, now);
        }
        let mut result = self.processor.process(&input, &mut self.output);
        if result.is_ok() {
            result = self.check_output_sizes();
        }
        match result {
            Ok(()) => {}
            Err(ProcessError::Poison(poison)) => {
                self.output.clear();
                let Some(dlq_topic) = self.settings.dead_letter_topic.as_deref() else {
                    return Err(self.stop(LoopError::NoDeadLetterTopic(poison)));
                };
                tracing::warn!(
                    topic = input.topic(), partition = input.partition(), offset = input.offset(),
                    class = %poison.class, error = %poison.message, "dead-lettered"
                );
                let mut record = OutputRecord::dead_letter(
                    dlq_topic,
                    &input,
                    &poison.stage,
                    &poison.class,
                    &poison.message,
                );
                if let Some(content_type) = input.header("content-type") {
                    record = record.with_header("content-type", content_type);
                }
                self.output.push(record);
            }
            Err(ProcessError::Transient(error)) => {
                self.output.clear();
                return self.retry_later("process", &*error);
            }
            Err(fatal @ ProcessError::Fatal(_)) => {
                self.output.clear();
                return Err(self.stop(LoopError::Processor {
                    hook: "process",
                    source: fatal,
                }));
            }
        }
        // A dead letter carries its input: an input as large as the topic allows, with the
        // headers added, may not fit the producer's limit. It is cut to fit (and says so) rather
        // than failing the transaction for ever.
        let limit = self.output_limit;
        for record in &mut self.output {
            if record.is_dead_letter() {
                record.fit_dead_letter(limit);
            }
        }
        self.shared.metrics.record_in();
        self.shared
            .lock_state()
            .handle_processed(&partition, offset);
        self.produce()
    }

    /// An input whose outputs would not fit the producer's limit is refused — dead-lettered,
    /// never retried (the send would fail the same way every time and stop the partition). The
    /// services bound their inputs so that this does not happen; this is the backstop.
    fn check_output_sizes(&mut self) -> Result<(), ProcessError> {
        let limit = self.output_limit;
        let Some(record) = self
            .output
            .iter()
            .find(|record| !record.is_dead_letter() && record.size() > limit)
        else {
            return Ok(());
        };
        Err(ProcessError::poison(
            "output",
            "oversize.output",
            format!(
                "an output record for {} would take {} bytes, over the limit of {limit} \
                 (kafka.message_max_bytes less a margin)",
                record.topic,
                record.size()
            ),
        ))
    }

    /// The input watermark now: the owned partitions brought up to date, their end offsets as
    /// last fetched (cached by the client; no request). `None`: the processor does not use one.
    fn watermark(&mut self, now: i64) -> Option<Option<i64>> {
        let watermarks = self.watermarks.as_mut()?;
        let owned = self.shared.lock_state().owned();
        watermarks.reconcile(&owned, now);
        let mut ends = self.shared.end_offsets.lock().expect("end offsets lock");
        let stalled = self
            .last_tick
            .is_some_and(|last| now.saturating_sub(last) > STALL.as_millis() as i64);
        self.last_tick = Some(now);
        if stalled {
            tracing::warn!("the loop was stalled: timers wait until the partitions are read again");
            watermarks.stalled(now);
            ends.clear();
        }
        for (partition, report) in ends.iter() {
            // Reported before the stall ended: stale.
            if !stalled {
                watermarks.report(partition, *report);
            }
        }
        drop(ends);
        Some(watermarks.watermark(now))
    }

    fn tick(&mut self) -> Result<(), LoopError> {
        let now = now_millis();
        let watermark = self.watermark(now);
        match self
            .processor
            .tick_watermarked(now, watermark, &mut self.output)
        {
            Ok(()) => {}
            Err(ProcessError::Transient(error)) => {
                self.output.clear();
                return self.retry_later("tick", &*error);
            }
            // A tick has no input to dead-letter: a poison record from it is a bug too.
            Err(error) => {
                self.output.clear();
                return Err(self.stop(LoopError::Processor {
                    hook: "tick",
                    source: error,
                }));
            }
        }
        if self.output.is_empty() {
            return Ok(());
        }
        let begin = self.shared.lock_state().open_for_outputs(Instant::now());
        if begin {
            self.shared.begin().map_err(LoopError::Fatal)?;
        }
        self.produce()
    }

    /// Sends the hook's outputs in the open transaction (holding `last` ones if idempotent). A
    /// failed send aborts it.
    fn produce(&mut self) -> Result<(), LoopError> {
        if self.output.is_empty() {
            return Ok(());
        }
        self.shared.metrics.records_out(self.output.len());
        let shared = &*self.shared;
        let mut state = shared.lock_state();
        let sent = self
            .output
            .drain(..)
            .try_for_each(|record| match state.handle_output(record) {
                Some(record) => shared.send(&record),
                None => Ok(()),
            });
        match sent {
            Ok(()) => Ok(()),
            Err(error) if is_fatal(&error) => Err(LoopError::Fatal(error)),
            Err(error) => {
                tracing::warn!(%error, "produce failed; aborting transaction");
                shared
                    .abort_and_rewind(self.consumer, &mut state)
                    .map_err(LoopError::Fatal)?;
                drop(state);
                self.deliver_events()
            }
        }
    }

    /// A hook failed transiently: abort, rewind, tell the processor, back off.
    fn retry_later(
        &mut self,
        hook: &'static str,
        error: &(dyn std::error::Error + Send + Sync),
    ) -> Result<(), LoopError> {
        let backoff = {
            let mut state = self.shared.lock_state();
            self.shared
                .abort_and_rewind(self.consumer, &mut state)
                .map_err(LoopError::Fatal)?;
            state.handle_transient(Instant::now())
        };
        tracing::warn!(
            hook, %error, backoff_ms = backoff.as_millis() as u64,
            "transient error: transaction aborted and inputs rewound; retrying after the backoff"
        );
        self.deliver_events()
    }

    /// The processor failed for good: abort the open transaction (no rewind, no `aborted`: the
    /// loop stops and the processor goes with it) and return `error`.
    fn stop(&mut self, error: LoopError) -> LoopError {
        let mut state = self.shared.lock_state();
        let rewind = state.handle_abort();
        if rewind.was_open {
            if let Err(abort_error) = self.shared.abort_producer() {
                tracing::error!(error = %abort_error, "cannot abort the open transaction");
            }
        }
        state.fail();
        error
    }

    /// Tells the processor what happened (commits, aborts, a new assignment), in order.
    fn deliver_events(&mut self) -> Result<(), LoopError> {
        loop {
            let event = self.shared.lock_state().poll_event();
            let (hook, result) = match event {
                None => return Ok(()),
                Some(Event::Committed) => {
                    self.processor.committed();
                    continue;
                }
                Some(Event::Aborted) => {
                    self.health.set_restoring(true);
                    let result = self.processor.aborted();
                    self.health.set_restoring(false);
                    ("aborted", result)
                }
                Some(Event::Assignment(partitions)) => {
                    self.health.set_restoring(true);
                    let result = self.processor.partitions_assigned(&partitions);
                    self.health.set_restoring(false);
                    ("partitions_assigned", result)
                }
            };
            if let Err(source) = result {
                return Err(self.stop(LoopError::Processor { hook, source }));
            }
        }
    }

    /// Shutting down: commit what is open (or abort it), then nothing commits any more. After an
    /// error there is nothing to save: the open transaction was aborted or dies with the producer.
    /// The processor hears of a final commit, not of an abort (it is dropped next: rebuilding
    /// its state would be wasted).
    fn finish(&mut self, stopped_cleanly: bool) {
        let mut state = self.shared.lock_state();
        if stopped_cleanly {
            if let Some(plan) = state.poll_commit() {
                if let Err(error) = self.shared.settle(self.consumer, &mut state, plan) {
                    tracing::error!(%error, "final commit failed");
                }
            }
        }
        state.fail();
        let committed = std::iter::from_fn(|| state.poll_event())
            .filter(|event| *event == Event::Committed)
            .count();
        drop(state);
        for _ in 0..committed {
            self.processor.committed();
        }
    }
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
