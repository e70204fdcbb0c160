//! The consume → process → produce loop every service runs, transactional or idempotent.
//!
//! It is a pure state machine driven by a thin rdkafka shell:
//!
//! - [`state::LoopState`] holds the bookkeeping and makes every decision about it, with no Kafka
//!   client, clock or processor inside (time is a parameter): when the open transaction is due
//!   to commit and what it commits (per partition, the last processed offset + 1); where an abort
//!   rewinds to (per partition, the first offset the transaction read); the `last` records held
//!   until the commit under idempotent delivery; what a revoke requires; the backoff after a
//!   transient error; the poll timeout; what the processor must be told. Its unit and property
//!   tests need no broker.
//! - `driver` polls the consumer, calls the [`Processor`], produces, commits or aborts, seeks and
//!   sleeps, reporting each outcome to the state machine. It runs on a dedicated OS thread
//!   (librdkafka's transactional calls block; they must never run on an async worker).
//!
//! Each transaction holds the outputs of up to `commit_max_records` inputs or `commit_interval`
//! of time, plus the input offsets (`send_offsets_to_transaction`), so outputs and progress commit
//! atomically. With `Delivery::Idempotent` (brokers without transactions) the same loop waits for
//! every output to be acknowledged, then sends the held `last` records (state that must never get
//! ahead of the outputs it accounts for) and waits for those, then commits the input offsets;
//! "abort" then only rewinds and drops the held records.
//!
//! Errors are handled by the action they need. From Kafka:
//! - retriable (a commit timed out, the coordinator moved): retry the same call with backoff;
//! - abortable (the transaction is doomed, a send failed): abort, seek every partition back to
//!   the first offset the transaction read, tell the processor to forget what it did, carry on;
//! - fatal (fenced by a newer instance with the same `transactional.id`, …): return the error so
//!   the process exits non-zero and its supervisor restarts it.
//!
//! From the processor's hooks, a [`ProcessError`]:
//! - `Poison`: the input goes to the dead-letter topic (`LoopSettings::dead_letter_topic`) with
//!   the contract's headers instead of the outputs the hook pushed, and the loop goes on;
//! - `Transient` (the broker or the schema registry unavailable): abort, rewind, `aborted()`,
//!   back off (100 ms doubling to 10 s), then read the same input again;
//! - `Fatal`: abort the open transaction and return [`LoopError::Processor`], so the service's
//!   `run` flushes its telemetry and returns the error and `main` exits non-zero.
//!
//! No output is ever dropped while its input's offset commits: a hook either returns its outputs,
//! or an error that keeps its input from committing (or dead-letters it).
//!
//! When partitions are revoked (rebalance), the whole open transaction commits inside the
//! rebalance callback, before the partitions go, so their next owner starts exactly where this
//! instance stopped, and no later transaction can commit their offsets. This holds for eager and
//! for incremental (cooperative, KIP-848) rebalances alike: a transaction cannot commit in part,
//! and a tick's outputs belong to no input partition. If that commit fails, it aborts and only
//! the partitions that stay are rewound. The processor is told, after each change, the whole
//! set of partitions it owns (under the eager protocol: none, then the new assignment).
//!
//! Processors must still be idempotent by key: idempotent delivery repeats outputs after a crash,
//! and any topic can be written by clients other than hitl's services.

mod driver;
mod error;
mod record;
pub mod state;
pub mod watermark;

use std::{num::NonZeroU32, time::Duration};

use tokio_util::sync::CancellationToken;

pub use error::{
    is_transient_codec_error, BoxError, LoopError, OutputEncodeError, Poison, ProcessError,
};
pub use record::{InputRecord, OutputRecord};

use crate::{config::KafkaSettings, health::Health, metrics::LoopMetrics};

/// What a service does with its input. Everything here runs on the loop thread.
///
/// After any error (and after a failed commit) the open transaction is aborted, so a processor
/// keeps what it changed since the last `committed` tentative, and forgets it in `aborted`.
pub trait Processor: Send + 'static {
    /// Handles one input record, pushing its outputs. A bad input is either routed by the
    /// processor itself (its dead letter is an output) or returned as `ProcessError::Poison`.
    fn process(
        &mut self,
        input: &InputRecord<'_>,
        output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError>;
    /// Called every `tick_interval` with the wall-clock time (timers: leases, SLAs, reloads).
    /// `Poison` makes no sense here and stops the loop like `Fatal`.
    fn tick(
        &mut self,
        _now_millis: i64,
        _output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        Ok(())
    }
    /// How long an owned input partition with nothing to read holds back the input watermark
    /// (`pipeline::watermark`); `None` (the default): the processor does not use it, and
    /// `tick_watermarked` gets none.
    fn input_quiet(&self) -> Option<Duration> {
        None
    }
    /// `tick`, with the input watermark when `input_quiet` is set: every record of every partition
    /// this instance owns that was appended (by the broker's clock, on `LogAppendTime` topics)
    /// before `watermark_millis` has been processed. `Some(None)`: it owns no partition (a
    /// rebalance is under way). Timers that must never overtake an input fire by it. The default
    /// calls `tick`.
    fn tick_watermarked(
        &mut self,
        now_millis: i64,
        _watermark_millis: Option<Option<i64>>,
        output: &mut Vec<OutputRecord>,
    ) -> Result<(), ProcessError> {
        self.tick(now_millis, output)
    }
    /// The transaction holding everything since the last commit or abort has committed.
    fn committed(&mut self) {}
    /// That transaction was aborted: forget its effects; its inputs will be read again. Any error
    /// stops the loop (the processor's state is unknown; a restart rebuilds it).
    fn aborted(&mut self) -> Result<(), ProcessError> {
        Ok(())
    }
    /// The partitions this instance owns changed; `partitions` is the whole new set (restore state
    /// for new ones here, drop the state of those gone). Any error stops the loop.
    fn partitions_assigned(&mut self, _partitions: &[(String, i32)]) -> Result<(), ProcessError> {
        Ok(())
    }
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
    /// Where the loop writes an input a hook returned as `ProcessError::Poison` (`None`: such an
    /// error stops the loop).
    pub dead_letter_topic: Option<String>,
    /// How often `Processor::tick` runs; `None` never.
    pub tick_interval: Option<Duration>,
    /// Ingest rate limit in records per second (`None`: unlimited).
    pub max_records_per_second: Option<NonZeroU32>,
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
            let result = driver::run(&kafka, &settings, processor, &shutdown, &health, metrics);
            health.set_alive(false);
            if let Err(error) = &result {
                tracing::error!(%error, "transactional loop stopped");
            }
            result
        })
        .expect("spawn loop thread")
}

/// Wall-clock milliseconds since the Unix epoch: the one place the shell reads the clock for cores.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or_default()
}
