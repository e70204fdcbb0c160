//! The loop's bookkeeping as a synchronous state machine: no Kafka client, no clock, no processor.
//!
//! The driver (`super::driver`) feeds it what happened through `handle_*` methods and asks it what
//! to do through `poll_*` and the other queries; time is always a parameter. It owns:
//!
//! - the open transaction: when it opened, how many inputs it processed, per partition the first
//!   offset it read (where an abort rewinds to) and the next offset to read (what a commit stores),
//!   and, with idempotent delivery, the `last` records held until the others are acknowledged;
//! - when a commit is due, and how long the driver may wait in a poll before something is due;
//! - the partitions this instance owns, and what a revoke requires before they go;
//! - the backoff after a transient error;
//! - the events the processor must hear of (committed, aborted, the partitions it owns now).
//!
//! Offsets follow Kafka's convention: a committed offset is the next offset to read, so it is the
//! last processed offset + 1.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::{Duration, Instant},
};

use super::record::OutputRecord;

/// A topic and one of its partitions.
pub type PartitionKey = (String, i32);

/// The longest the driver waits in one poll, so it heartbeats and notices shutdown promptly.
pub const MAX_POLL_WAIT: Duration = Duration::from_millis(100);
/// The wait after the first transient error in a row; it doubles with each further one…
pub const RETRY_INITIAL: Duration = Duration::from_millis(100);
/// …up to this (well below `max.poll.interval.ms`, as nothing is polled while waiting).
pub const RETRY_MAX: Duration = Duration::from_secs(10);

/// The loop's timers and limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// A transaction commits once it processed this many input records…
    pub commit_max_records: usize,
    /// …or this long after it opened, whichever comes first.
    pub commit_interval: Duration,
    /// How often `Processor::tick` runs (`None`: never).
    pub tick_interval: Option<Duration>,
    /// The longest wait in one poll.
    pub max_poll_wait: Duration,
    /// Backoff after the first transient error in a row (doubling, capped at `retry_max`).
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl Timing {
    /// The given commit and tick timing, with the default poll wait and retry backoff.
    pub fn new(
        commit_max_records: usize,
        commit_interval: Duration,
        tick_interval: Option<Duration>,
    ) -> Self {
        Self {
            commit_max_records,
            commit_interval,
            tick_interval,
            max_poll_wait: MAX_POLL_WAIT,
            retry_initial: RETRY_INITIAL,
            retry_max: RETRY_MAX,
        }
    }
}

/// What the processor must be told, in order (`LoopState::poll_event`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Everything since the previous commit or abort is durable: `Processor::committed`.
    Committed,
    /// It was thrown away and its inputs will be read again: `Processor::aborted`.
    Aborted,
    /// The partitions this instance owns changed; the whole set, sorted:
    /// `Processor::partitions_assigned`.
    Assignment(Vec<PartitionKey>),
}

/// What the driver sends to commit the open transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitPlan {
    /// Per partition read, the next offset to read (the last one processed + 1): the group's new
    /// committed offsets.
    pub offsets: Vec<(PartitionKey, i64)>,
    /// Idempotent delivery: the held `last` records, to send once every other output is
    /// acknowledged, and to see acknowledged before the offsets commit. Always empty with
    /// transactions (the commit makes every output visible at once).
    pub held: Vec<OutputRecord>,
    /// Input records the transaction processed.
    pub records: usize,
}

/// What an abort leaves to the driver.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rewind {
    /// A transaction was open: the producer's must be aborted too.
    pub was_open: bool,
    /// Per partition the aborted transaction read and this instance still owns, the first offset
    /// it read: seek there, so those inputs are read again. (A partition revoked meanwhile is not
    /// here: its next owner starts from its committed offset.)
    pub positions: Vec<(PartitionKey, i64)>,
    /// Held `last` records thrown away with the transaction (those a commit plan took are the
    /// failed commit's: they may have been sent, as any output of an aborted idempotent batch).
    pub held_dropped: usize,
}

/// What to do with a record just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Process it. `begin`: it opened a new transaction, so the driver begins the producer's
    /// transaction before anything is produced.
    Process { begin: bool },
    /// Its partition is not owned (any more): skip it; its owner reads it.
    NotOwned,
}

/// The open transaction.
#[derive(Debug)]
struct Transaction {
    opened_at: Instant,
    /// Input records processed (each one's offset is in `next_offsets`).
    records: usize,
    /// Per partition, the next offset to read: the last processed + 1.
    next_offsets: BTreeMap<PartitionKey, i64>,
    /// Per partition, the first offset read: where an abort rewinds to.
    rewind_offsets: BTreeMap<PartitionKey, i64>,
    /// `last` records held until the commit (idempotent delivery only).
    held: Vec<OutputRecord>,
    /// `poll_commit` handed out its plan: nothing more goes in until the commit or the abort.
    committing: bool,
}

/// The loop's bookkeeping. See the module documentation.
#[derive(Debug)]
pub struct LoopState {
    timing: Timing,
    /// Idempotent delivery: hold `last` records until the commit.
    hold_last: bool,
    /// The partitions this instance owns.
    owned: BTreeSet<PartitionKey>,
    open: Option<Transaction>,
    /// Per owned partition, the offset this instance last committed (the next one to read).
    committed: BTreeMap<PartitionKey, i64>,
    /// Per owned partition, the group's committed offset as far as known here: the first offset
    /// read since it was assigned, then each commit's (for `poll_commit`'s fencing).
    known_committed: BTreeMap<PartitionKey, i64>,
    events: VecDeque<Event>,
    /// The owned partitions changed since the processor was last told.
    assignment_changed: bool,
    next_tick: Option<Instant>,
    /// Transient errors since the last commit.
    transient_failures: u32,
    /// Backing off after a transient error: nothing is read before this.
    retry_at: Option<Instant>,
    /// The loop failed fatally: nothing commits any more.
    failed: bool,
}

impl LoopState {
    /// `hold_last`: idempotent delivery, where `last` records wait for the commit.
    pub fn new(timing: Timing, hold_last: bool, now: Instant) -> Self {
        Self {
            next_tick: timing.tick_interval.map(|interval| now + interval),
            timing,
            hold_last,
            owned: BTreeSet::new(),
            open: None,
            committed: BTreeMap::new(),
            known_committed: BTreeMap::new(),
            events: VecDeque::new(),
            assignment_changed: false,
            transient_failures: 0,
            retry_at: None,
            failed: false,
        }
    }

    pub fn owns(&self, partition: &PartitionKey) -> bool {
        self.owned.contains(partition)
    }

    /// The partitions this instance owns, sorted.
    pub fn owned(&self) -> Vec<PartitionKey> {
        self.owned.iter().cloned().collect()
    }

    /// A transaction is open (maybe with its commit in flight).
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// The offset this instance last committed for `partition` while owning it.
    pub fn committed_offset(&self, partition: &PartitionKey) -> Option<i64> {
        self.committed.get(partition).copied()
    }

    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Partitions were assigned (added to what is owned).
    pub fn handle_assign(&mut self, partitions: &[PartitionKey]) {
        self.owned.extend(partitions.iter().cloned());
        self.assignment_changed = true;
    }

    /// Partitions are about to be revoked (or lost). They stop being owned at once, so an abort
    /// does not rewind them and no later transaction reads or commits them.
    ///
    /// Returns the plan of the commit that must happen before they go: the whole open
    /// transaction. A transaction cannot be committed in part, and its outputs cannot all be
    /// traced to input partitions (a tick's timers, state shared across partitions), so it is
    /// committed whole, whichever partitions it read; this also stores the revoked partitions'
    /// offsets, so their next owner starts exactly after the last input processed here. If the
    /// commit fails, the driver aborts (`handle_abort`): the revoked partitions' inputs go back to
    /// their committed offsets for the next owner, the retained ones are rewound here.
    ///
    /// `incremental` (cooperative or KIP-848 protocol): the other partitions stay, and the
    /// processor is told the smaller set. Under the eager protocol every partition is revoked and
    /// a new assignment follows; the processor is told it owns nothing, then the new set, so it
    /// reads again the state of partitions it gets back (another instance may have owned them
    /// in between).
    pub fn handle_revoke(
        &mut self,
        partitions: &[PartitionKey],
        incremental: bool,
    ) -> Option<CommitPlan> {
        for partition in partitions {
            self.owned.remove(partition);
            self.committed.remove(partition);
            self.known_committed.remove(partition);
        }
        if incremental {
            self.assignment_changed = true;
        } else {
            // Everything goes. Partitions given back later may have been another instance's in
            // between: the processor drops their state now and reads it again when they return.
            self.events.push_back(Event::Assignment(self.owned()));
        }
        self.poll_commit()
    }

    /// Partitions were lost: the group gave them to another member while this one was away (its
    /// session expired: a paused process, a broker out of reach). They may be read and written by
    /// their new owner already, so nothing may be committed for them — nor anything this
    /// instance produced meanwhile (a tick's outputs for pools it no longer owns): the driver
    /// aborts the open transaction next (`handle_abort`). The processor hears of the smaller
    /// set first, then of the abort.
    pub fn handle_lost(&mut self, partitions: &[PartitionKey]) {
        for partition in partitions {
            self.owned.remove(partition);
            self.committed.remove(partition);
            self.known_committed.remove(partition);
        }
        self.events.push_back(Event::Assignment(self.owned()));
    }

    /// A record of `partition` at `offset` was read. Opens a transaction if none is open.
    pub fn handle_read(&mut self, partition: &PartitionKey, offset: i64, now: Instant) -> Read {
        if !self.owned.contains(partition) {
            return Read::NotOwned;
        }
        // The first record read of a partition is at (or, past aborted records and markers, just
        // after) the group's committed offset: known from here on, for `poll_commit`'s fencing.
        self.known_committed
            .entry(partition.clone())
            .or_insert(offset);
        let begin = self.open_transaction(now);
        let transaction = self.open.as_mut().expect("opened above");
        assert!(
            !transaction.committing,
            "a record read while a commit is in flight"
        );
        transaction
            .rewind_offsets
            .entry(partition.clone())
            .or_insert(offset);
        Read::Process { begin }
    }

    /// The record read at `offset` is processed (its outputs, or its dead letter, are next).
    pub fn handle_processed(&mut self, partition: &PartitionKey, offset: i64) {
        let transaction = self
            .open
            .as_mut()
            .expect("a record is processed in the transaction that read it");
        // The committed offset is the next one to read: the last processed + 1.
        let next = offset + 1;
        let previous = transaction.next_offsets.insert(partition.clone(), next);
        debug_assert!(
            previous.is_none_or(|previous| previous <= offset),
            "offsets of a partition are processed in order within a transaction"
        );
        transaction.records += 1;
    }

    /// Outputs without an input (a tick's) are about to be produced. Opens a transaction if none
    /// is open; `true`: it did, so the driver begins the producer's.
    pub fn open_for_outputs(&mut self, now: Instant) -> bool {
        self.open_transaction(now)
    }

    fn open_transaction(&mut self, now: Instant) -> bool {
        if self.open.is_some() {
            return false;
        }
        self.open = Some(Transaction {
            opened_at: now,
            records: 0,
            next_offsets: BTreeMap::new(),
            rewind_offsets: BTreeMap::new(),
            held: Vec::new(),
            committing: false,
        });
        true
    }

    /// An output of the open transaction: returned to be sent now, or `None` when it is held
    /// until the commit (a `last` record, idempotent delivery).
    pub fn handle_output(&mut self, record: OutputRecord) -> Option<OutputRecord> {
        let transaction = self
            .open
            .as_mut()
            .expect("outputs are produced in an open transaction");
        if self.hold_last && record.last {
            transaction.held.push(record);
            return None;
        }
        Some(record)
    }

    /// The open transaction has processed `commit_max_records` inputs or been open for
    /// `commit_interval`.
    pub fn commit_due(&self, now: Instant) -> bool {
        !self.failed
            && self.open.as_ref().is_some_and(|transaction| {
                !transaction.committing
                    && (transaction.records >= self.timing.commit_max_records
                        || now.saturating_duration_since(transaction.opened_at)
                            >= self.timing.commit_interval)
            })
    }

    /// The plan to commit the open transaction now (due or not: shutdown and revokes commit
    /// early), or `None` when there is nothing open, its commit is already in flight, or the loop
    /// has failed. The driver reports back with `handle_commit_ok` or `handle_abort`.
    pub fn poll_commit(&mut self) -> Option<CommitPlan> {
        if self.failed {
            return None;
        }
        let transaction = self.open.as_mut()?;
        if transaction.committing {
            return None;
        }
        transaction.committing = true;
        let mut offsets: Vec<(PartitionKey, i64)> = transaction
            .next_offsets
            .iter()
            .map(|(partition, next)| (partition.clone(), *next))
            .collect();
        if offsets.is_empty() {
            // A transaction of a tick's outputs only still commits offsets — the ones already
            // committed, unchanged — so that the group coordinator checks this instance's
            // generation: an instance that lost its partitions without knowing it yet (paused,
            // then resumed after its session expired) is fenced instead of committing timers'
            // outputs for pools a new owner now runs.
            offsets = self
                .known_committed
                .iter()
                .filter(|(partition, _)| self.owned.contains(*partition))
                .map(|(partition, next)| (partition.clone(), *next))
                .collect();
        }
        Some(CommitPlan {
            offsets,
            held: std::mem::take(&mut transaction.held),
            records: transaction.records,
        })
    }

    /// The planned commit succeeded. Returns the input records it covered.
    pub fn handle_commit_ok(&mut self) -> usize {
        let transaction = self.open.take().expect("a commit in flight");
        debug_assert!(transaction.committing, "committed without a plan");
        for (partition, next) in transaction.next_offsets {
            if self.owned.contains(&partition) {
                self.known_committed.insert(partition.clone(), next);
                let previous = self.committed.insert(partition, next);
                debug_assert!(
                    previous.is_none_or(|previous| previous <= next),
                    "committed offsets never go back"
                );
            }
        }
        self.transient_failures = 0;
        self.retry_at = None;
        self.events.push_back(Event::Committed);
        transaction.records
    }

    /// The open transaction (if any) is thrown away: its planned commit failed, a send failed, or
    /// the processor hit a transient error. The processor is told (`Event::Aborted`) even when
    /// nothing was open, since the failed hook may have changed its state.
    pub fn handle_abort(&mut self) -> Rewind {
        self.events.push_back(Event::Aborted);
        let Some(transaction) = self.open.take() else {
            return Rewind::default();
        };
        Rewind {
            was_open: true,
            positions: transaction
                .rewind_offsets
                .into_iter()
                .filter(|(partition, _)| self.owned.contains(partition))
                .collect(),
            held_dropped: transaction.held.len(),
        }
    }

    /// A hook failed transiently (after `handle_abort`). Returns how long to back off: nothing is
    /// read until then, so the failed input is the next one read, after the wait.
    pub fn handle_transient(&mut self, now: Instant) -> Duration {
        self.transient_failures = self.transient_failures.saturating_add(1);
        let doublings = (self.transient_failures - 1).min(30);
        let backoff = self
            .timing
            .retry_initial
            .saturating_mul(1 << doublings)
            .min(self.timing.retry_max);
        self.retry_at = Some(now + backoff);
        backoff
    }

    /// How much longer to back off, if backing off.
    pub fn retry_wait(&self, now: Instant) -> Option<Duration> {
        self.retry_at
            .filter(|at| *at > now)
            .map(|at| at.saturating_duration_since(now))
    }

    /// The loop failed fatally: nothing commits from now on.
    pub fn fail(&mut self) {
        self.failed = true;
    }

    pub fn tick_due(&self, now: Instant) -> bool {
        self.next_tick.is_some_and(|at| now >= at)
    }

    /// The tick ran at `now`; the next is due a `tick_interval` later.
    pub fn handle_ticked(&mut self, now: Instant) {
        self.next_tick = self.timing.tick_interval.map(|interval| now + interval);
    }

    /// How long the driver may wait in its next poll: until the commit, the tick or the end of a
    /// backoff is due, and never more than `max_poll_wait`.
    pub fn poll_timeout(&self, now: Instant) -> Duration {
        let commit_at = self
            .open
            .as_ref()
            .filter(|transaction| !transaction.committing)
            .map(|transaction| transaction.opened_at + self.timing.commit_interval);
        // A backoff already over no longer bounds the wait.
        let retry_at = self.retry_at.filter(|at| *at > now);
        [commit_at, self.next_tick, retry_at]
            .into_iter()
            .flatten()
            .map(|at| at.saturating_duration_since(now))
            .fold(self.timing.max_poll_wait, Duration::min)
    }

    /// The next thing the processor must be told: commits and aborts in order, then (once) the
    /// partitions it owns, if they changed.
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        if std::mem::take(&mut self.assignment_changed) {
            return Some(Event::Assignment(self.owned()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(number: i32) -> PartitionKey {
        ("in".to_owned(), number)
    }

    fn timing() -> Timing {
        Timing::new(
            3,
            Duration::from_millis(500),
            Some(Duration::from_millis(200)),
        )
    }

    fn output(last: bool) -> OutputRecord {
        OutputRecord {
            last,
            ..OutputRecord::new("out", "key", b"value".to_vec())
        }
    }

    fn state(hold_last: bool, now: Instant) -> LoopState {
        let mut state = LoopState::new(timing(), hold_last, now);
        state.handle_assign(&[partition(0), partition(1)]);
        state
    }

    /// Reads and processes `offset` of `partition`.
    fn process(state: &mut LoopState, partition: &PartitionKey, offset: i64, now: Instant) {
        assert!(matches!(
            state.handle_read(partition, offset, now),
            Read::Process { .. }
        ));
        state.handle_processed(partition, offset);
    }

    #[test]
    fn a_commit_stores_the_last_processed_offset_plus_one_per_partition() {
        let now = Instant::now();
        let mut state = state(false, now);
        assert_eq!(
            state.handle_read(&partition(0), 10, now),
            Read::Process { begin: true }
        );
        state.handle_processed(&partition(0), 10);
        process(&mut state, &partition(0), 11, now);
        process(&mut state, &partition(1), 7, now);
        let plan = state.poll_commit().expect("open");
        assert_eq!(plan.offsets, vec![(partition(0), 12), (partition(1), 8)]);
        assert_eq!(plan.records, 3);
        assert_eq!(state.handle_commit_ok(), 3);
        assert_eq!(state.committed_offset(&partition(0)), Some(12));
        assert!(!state.is_open());
        assert_eq!(state.poll_event(), Some(Event::Committed));
    }

    #[test]
    fn a_transaction_of_timer_outputs_commits_the_known_offsets_again_so_a_zombie_is_fenced() {
        let now = Instant::now();
        let mut state = state(false, now);
        // Nothing read yet: nothing known, nothing to send.
        assert!(state.open_for_outputs(now));
        assert_eq!(state.poll_commit().expect("open").offsets, vec![]);
        state.handle_commit_ok();
        // Partition 1's first record is read at 40 (its committed offset), then partition 0's
        // records commit 12.
        state.handle_read(&partition(1), 40, now);
        state.handle_abort();
        process(&mut state, &partition(0), 11, now);
        state.handle_commit_ok_after_plan();
        assert!(state.open_for_outputs(now));
        assert_eq!(
            state.poll_commit().expect("open").offsets,
            vec![(partition(0), 12), (partition(1), 40)],
            "a tick's transaction carries the group's offsets, unchanged"
        );
        state.handle_commit_ok();
        // Revoked partitions are not committed by this instance any more.
        state.handle_revoke(&[partition(1)], true);
        assert!(state.open_for_outputs(now));
        assert_eq!(
            state.poll_commit().expect("open").offsets,
            vec![(partition(0), 12)]
        );
    }

    #[test]
    fn an_abort_rewinds_to_the_first_offsets_read_and_commits_nothing() {
        let now = Instant::now();
        let mut state = state(false, now);
        process(&mut state, &partition(0), 5, now);
        state.handle_commit_ok_after_plan();
        process(&mut state, &partition(0), 6, now);
        process(&mut state, &partition(0), 7, now);
        // Read but not processed: the hook failed on it.
        state.handle_read(&partition(1), 3, now);
        let rewind = state.handle_abort();
        assert!(rewind.was_open);
        assert_eq!(rewind.positions, vec![(partition(0), 6), (partition(1), 3)]);
        assert_eq!(state.committed_offset(&partition(0)), Some(6));
        assert_eq!(state.committed_offset(&partition(1)), None);
        assert_eq!(state.poll_commit(), None, "nothing open after an abort");
    }

    #[test]
    fn an_abort_with_nothing_open_still_tells_the_processor() {
        let now = Instant::now();
        let mut state = state(false, now);
        state.poll_event();
        assert_eq!(state.handle_abort(), Rewind::default());
        assert_eq!(state.poll_event(), Some(Event::Aborted));
    }

    #[test]
    fn held_records_wait_for_the_commit_and_die_with_an_abort() {
        let now = Instant::now();
        let mut state = state(true, now);
        process(&mut state, &partition(0), 0, now);
        assert_eq!(state.handle_output(output(false)), Some(output(false)));
        assert_eq!(state.handle_output(output(true)), None);
        let rewind = state.handle_abort();
        assert_eq!(rewind.held_dropped, 1);

        process(&mut state, &partition(0), 0, now);
        assert_eq!(state.handle_output(output(true)), None);
        let plan = state.poll_commit().expect("open");
        assert_eq!(plan.held, vec![output(true)]);
        state.handle_commit_ok();
    }

    #[test]
    fn transactions_hold_nothing() {
        let now = Instant::now();
        let mut state = state(false, now);
        process(&mut state, &partition(0), 0, now);
        assert_eq!(state.handle_output(output(true)), Some(output(true)));
        assert!(state.poll_commit().expect("open").held.is_empty());
    }

    #[test]
    fn a_commit_is_due_after_max_records_or_the_interval() {
        let now = Instant::now();
        let mut state = state(false, now);
        assert!(!state.commit_due(now), "nothing open");
        process(&mut state, &partition(0), 0, now);
        process(&mut state, &partition(0), 1, now);
        assert!(!state.commit_due(now));
        assert!(!state.commit_due(now + Duration::from_millis(499)));
        assert!(state.commit_due(now + Duration::from_millis(500)));
        process(&mut state, &partition(0), 2, now);
        assert!(state.commit_due(now), "commit_max_records = 3");
        state.poll_commit();
        assert!(!state.commit_due(now), "in flight");
    }

    #[test]
    fn the_poll_timeout_ends_when_the_commit_or_the_tick_is_due() {
        let now = Instant::now();
        let mut state = state(false, now);
        assert_eq!(state.poll_timeout(now), MAX_POLL_WAIT);
        assert_eq!(
            state.poll_timeout(now + Duration::from_millis(150)),
            Duration::from_millis(50),
            "the tick is due at 200 ms"
        );
        assert!(state.tick_due(now + Duration::from_millis(200)));
        state.handle_ticked(now + Duration::from_millis(200));
        assert!(!state.tick_due(now + Duration::from_millis(399)));
        process(&mut state, &partition(0), 0, now);
        state.handle_ticked(now + Duration::from_millis(480));
        assert_eq!(
            state.poll_timeout(now + Duration::from_millis(480)),
            Duration::from_millis(20),
            "the commit is due at 500 ms"
        );
        assert_eq!(
            state.poll_timeout(now + Duration::from_millis(600)),
            Duration::ZERO
        );
    }

    #[test]
    fn transient_backoff_doubles_up_to_the_cap_and_resets_at_a_commit() {
        let now = Instant::now();
        let mut state = state(false, now);
        let backoffs: Vec<u128> = (0..10)
            .map(|_| state.handle_transient(now).as_millis())
            .collect();
        assert_eq!(
            backoffs,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        assert_eq!(state.retry_wait(now), Some(Duration::from_secs(10)));
        assert_eq!(state.poll_timeout(now), MAX_POLL_WAIT);
        assert_eq!(state.retry_wait(now + Duration::from_secs(10)), None);
        state.handle_ticked(now + Duration::from_secs(10));
        assert_eq!(
            state.poll_timeout(now + Duration::from_secs(10)),
            MAX_POLL_WAIT,
            "a backoff that is over does not shorten the poll"
        );
        process(&mut state, &partition(0), 0, now);
        state.handle_commit_ok_after_plan();
        assert_eq!(state.handle_transient(now), RETRY_INITIAL);
    }

    #[test]
    fn a_revoke_commits_the_whole_open_transaction_first() {
        let now = Instant::now();
        let mut state = state(false, now);
        process(&mut state, &partition(0), 4, now);
        process(&mut state, &partition(1), 9, now);
        state.poll_event();
        let plan = state
            .handle_revoke(&[partition(1)], true)
            .expect("the open transaction commits before partition 1 goes");
        assert_eq!(plan.offsets, vec![(partition(0), 5), (partition(1), 10)]);
        assert!(!state.owns(&partition(1)));
        state.handle_commit_ok();
        assert_eq!(state.committed_offset(&partition(0)), Some(5));
        assert_eq!(state.poll_event(), Some(Event::Committed));
        assert_eq!(
            state.poll_event(),
            Some(Event::Assignment(vec![partition(0)])),
            "the processor hears of the smaller set after the commit"
        );
        assert_eq!(state.poll_event(), None);
        assert_eq!(
            state.handle_read(&partition(1), 10, now),
            Read::NotOwned,
            "a record of a revoked partition is its next owner's"
        );
    }

    #[test]
    fn a_failed_revoke_commit_rewinds_only_the_partitions_that_stay() {
        let now = Instant::now();
        let mut state = state(false, now);
        process(&mut state, &partition(0), 4, now);
        process(&mut state, &partition(1), 9, now);
        assert!(state.handle_revoke(&[partition(1)], true).is_some());
        let rewind = state.handle_abort();
        assert_eq!(rewind.positions, vec![(partition(0), 4)]);
    }

    #[test]
    fn an_eager_revoke_tells_the_processor_it_owns_nothing_before_the_next_assignment() {
        let now = Instant::now();
        let mut state = state(false, now);
        assert_eq!(
            state.poll_event(),
            Some(Event::Assignment(vec![partition(0), partition(1)]))
        );
        assert_eq!(state.handle_revoke(&state.owned(), false), None);
        // Partition 1 comes back, but another instance may have owned it in between: its state
        // must be read again, so the processor hears that it owned nothing first — even when the
        // new assignment arrives before the processor is told.
        state.handle_assign(&[partition(1), partition(2)]);
        assert_eq!(state.poll_event(), Some(Event::Assignment(vec![])));
        assert_eq!(
            state.poll_event(),
            Some(Event::Assignment(vec![partition(1), partition(2)]))
        );
    }

    #[test]
    fn lost_partitions_commit_nothing_and_the_open_transaction_is_aborted() {
        let now = Instant::now();
        let mut state = state(false, now);
        state.poll_event();
        process(&mut state, &partition(0), 7, now);
        state.handle_lost(&[partition(0), partition(1)]);
        let rewind = state.handle_abort();
        assert!(rewind.was_open);
        assert_eq!(
            rewind.positions,
            vec![],
            "nothing to rewind: nothing is owned"
        );
        assert_eq!(state.poll_commit(), None, "nothing to commit");
        assert_eq!(state.poll_event(), Some(Event::Assignment(vec![])));
        assert_eq!(state.poll_event(), Some(Event::Aborted));
    }

    #[test]
    fn nothing_commits_after_a_fatal_error() {
        let now = Instant::now();
        let mut state = state(false, now);
        process(&mut state, &partition(0), 0, now);
        state.fail();
        assert!(!state.commit_due(now + Duration::from_secs(60)));
        assert_eq!(state.poll_commit(), None);
        assert_eq!(state.handle_revoke(&[partition(0)], false), None);
    }

    impl LoopState {
        /// Commits the open transaction successfully.
        fn handle_commit_ok_after_plan(&mut self) {
            self.poll_commit().expect("open");
            self.handle_commit_ok();
        }
    }
}
