//! Property tests of the loop's state machine (`hitl_runtime::pipeline::state`), driven the way
//! the rdkafka driver drives it, against a simulated consumer group: partition logs (with gaps in
//! their offsets, as transaction markers leave), a consumer that reads in order and seeks, the
//! group's committed offsets, and rebalances (eager and incremental) whose revoke commits can
//! fail.
//!
//! After any sequence of records (processed, poisoned or failing transiently), ticks, commits
//! (succeeding or failing), revokes and assignments:
//! - every commit stores, per partition, the last offset its transaction processed + 1, only for
//!   partitions this instance owns (or is giving up in that very revoke), and the group's
//!   committed offsets never go back;
//! - an abort rewinds exactly to the first offsets the transaction read, for the partitions still
//!   owned, and commits nothing;
//! - held `last` records come out only with the commit of their transaction, and die with an
//!   abort;
//! - in the end, the records of the committed transactions of each partition are exactly the
//!   partition's records below its committed offset, each once: nothing committed that was not
//!   processed, nothing lost, nothing committed twice.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use hitl_runtime::{
    pipeline::state::{CommitPlan, Event, LoopState, PartitionKey, Read, Rewind, Timing},
    OutputRecord,
};
use proptest::prelude::*;

const PARTITIONS: i32 = 3;

fn key(partition: i32) -> PartitionKey {
    ("in".to_owned(), partition)
}

/// Partition p holds the offsets that are multiples of p + 1 (0: every offset; 1: every other one…).
fn stride(partition: i32) -> i64 {
    i64::from(partition) + 1
}

/// The first offset of `partition` at or after `position`.
fn next_offset(partition: i32, position: i64) -> i64 {
    let stride = stride(partition);
    (position + stride - 1) / stride * stride
}

/// The offsets of `partition` below `end`.
fn offsets_below(partition: i32, end: i64) -> Vec<i64> {
    (0..end)
        .filter(|offset| offset % stride(partition) == 0)
        .collect()
}

#[derive(Debug, Clone)]
enum Outcome {
    /// Processed; its outputs, each `last` or not.
    Processed(Vec<bool>),
    /// Dead-lettered: processed, one output.
    Poison,
    /// The hook failed transiently: abort, rewind, back off.
    Transient,
}

#[derive(Debug, Clone)]
enum Op {
    Read(i32, Outcome),
    Tick(Vec<bool>),
    TickTransient,
    Commit {
        succeed: bool,
        only_when_due: bool,
    },
    Revoke {
        partitions: Vec<i32>,
        incremental: bool,
        commit_succeeds: bool,
    },
    Assign(Vec<i32>),
    Advance(u64),
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        6 => prop::collection::vec(any::<bool>(), 0..3).prop_map(Outcome::Processed),
        1 => Just(Outcome::Poison),
        1 => Just(Outcome::Transient),
    ]
}

fn partitions() -> impl Strategy<Value = Vec<i32>> {
    prop::collection::btree_set(0..PARTITIONS, 1..=PARTITIONS as usize)
        .prop_map(|set| set.into_iter().collect())
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..PARTITIONS, outcome()).prop_map(|(partition, outcome)| Op::Read(partition, outcome)),
        2 => prop::collection::vec(any::<bool>(), 0..3).prop_map(Op::Tick),
        1 => Just(Op::TickTransient),
        3 => (prop::bool::weighted(0.8), any::<bool>())
            .prop_map(|(succeed, only_when_due)| Op::Commit { succeed, only_when_due }),
        1 => (partitions(), any::<bool>(), prop::bool::weighted(0.7)).prop_map(
            |(partitions, incremental, commit_succeeds)| Op::Revoke { partitions, incremental, commit_succeeds }
        ),
        2 => partitions().prop_map(Op::Assign),
        2 => (0u64..400).prop_map(Op::Advance),
    ]
}

/// The simulated consumer group, and what the open transaction did, as the test sees it.
struct World {
    state: LoopState,
    hold_last: bool,
    start: Instant,
    millis: u64,
    /// Per assigned partition, the consumer's position (the next offset to read).
    positions: BTreeMap<i32, i64>,
    /// The group's committed offsets.
    group_committed: BTreeMap<i32, i64>,
    /// The records of every committed transaction.
    committed_records: Vec<(i32, i64)>,
    /// Records processed in the open transaction.
    open_records: Vec<(i32, i64)>,
    /// Per partition, the first offset the open transaction read.
    open_first_read: BTreeMap<i32, i64>,
    /// Held records of the open transaction (by key).
    open_held: Vec<Vec<u8>>,
    /// Held records released by commits, and dropped by aborts.
    released: BTreeSet<Vec<u8>>,
    dropped: BTreeSet<Vec<u8>>,
    next_output: u64,
}

impl World {
    fn new(hold_last: bool) -> Self {
        let start = Instant::now();
        let timing = Timing::new(
            4,
            Duration::from_millis(500),
            Some(Duration::from_millis(200)),
        );
        Self {
            state: LoopState::new(timing, hold_last, start),
            hold_last,
            start,
            millis: 0,
            positions: BTreeMap::new(),
            group_committed: BTreeMap::new(),
            committed_records: Vec::new(),
            open_records: Vec::new(),
            open_first_read: BTreeMap::new(),
            open_held: Vec::new(),
            released: BTreeSet::new(),
            dropped: BTreeSet::new(),
            next_output: 0,
        }
    }

    fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.millis)
    }

    fn output(&mut self, last: bool) {
        self.next_output += 1;
        let record = OutputRecord {
            last,
            ..OutputRecord::new("out", self.next_output.to_be_bytes().to_vec(), Vec::new())
        };
        let key = record.key.clone();
        match self.state.handle_output(record) {
            Some(record) => {
                assert!(
                    !(self.hold_last && record.last),
                    "a last record is held under idempotent delivery"
                );
            }
            None => {
                assert!(
                    self.hold_last && last,
                    "only last records are held, and only when idempotent"
                );
                self.open_held.push(key);
            }
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Read(partition, outcome) => self.read(partition, outcome),
            Op::Tick(outputs) => {
                if outputs.is_empty() {
                    return;
                }
                let now = self.now();
                self.state.open_for_outputs(now);
                for last in outputs {
                    self.output(last);
                }
            }
            Op::TickTransient => {
                let rewind = self.state.handle_abort();
                self.aborted(rewind);
                self.state.handle_transient(self.now());
            }
            Op::Commit {
                succeed,
                only_when_due,
            } => {
                if only_when_due && !self.state.commit_due(self.now()) {
                    return;
                }
                if let Some(plan) = self.state.poll_commit() {
                    self.settle(plan, succeed, &BTreeSet::new());
                } else {
                    assert!(
                        !self.state.is_open(),
                        "an open transaction always has a plan"
                    );
                }
            }
            Op::Revoke {
                partitions,
                incremental,
                commit_succeeds,
            } => {
                // Eager: everything goes. Incremental: the partitions given that are assigned.
                let revoked: BTreeSet<i32> = if incremental {
                    partitions
                        .into_iter()
                        .filter(|p| self.positions.contains_key(p))
                        .collect()
                } else {
                    self.positions.keys().copied().collect()
                };
                for partition in &revoked {
                    self.positions.remove(partition);
                }
                let keys: Vec<PartitionKey> = revoked.iter().copied().map(key).collect();
                match self.state.handle_revoke(&keys, incremental) {
                    Some(plan) => self.settle(plan, commit_succeeds, &revoked),
                    None => assert!(
                        !self.state.is_open(),
                        "an open transaction commits before a revoke"
                    ),
                }
                for partition in &revoked {
                    assert!(!self.state.owns(&key(*partition)));
                }
            }
            Op::Assign(partitions) => {
                let new: Vec<i32> = partitions
                    .into_iter()
                    .filter(|p| !self.positions.contains_key(p))
                    .collect();
                for partition in &new {
                    // A new owner starts at the group's committed offset.
                    let start = self.group_committed.get(partition).copied().unwrap_or(0);
                    self.positions.insert(*partition, start);
                }
                let keys: Vec<PartitionKey> = new.into_iter().map(key).collect();
                self.state.handle_assign(&keys);
            }
            Op::Advance(millis) => self.millis += millis,
        }
        self.check_events();
        self.check_timers();
    }

    fn read(&mut self, partition: i32, outcome: Outcome) {
        let Some(position) = self.positions.get(&partition).copied() else {
            // Not assigned: the consumer returns nothing of it.
            return;
        };
        if self.state.retry_wait(self.now()).is_some() {
            // Backing off: the driver reads nothing.
            return;
        }
        let offset = next_offset(partition, position);
        // The committed offset is the next one to read: the consumer moves past this record.
        self.positions.insert(partition, offset + 1);
        let was_open = self.state.is_open();
        let read = self.state.handle_read(&key(partition), offset, self.now());
        assert_eq!(read, Read::Process { begin: !was_open });
        self.open_first_read.entry(partition).or_insert(offset);
        match outcome {
            Outcome::Processed(outputs) => {
                self.state.handle_processed(&key(partition), offset);
                self.open_records.push((partition, offset));
                for last in outputs {
                    self.output(last);
                }
            }
            Outcome::Poison => {
                self.state.handle_processed(&key(partition), offset);
                self.open_records.push((partition, offset));
                self.output(false);
            }
            Outcome::Transient => {
                let rewind = self.state.handle_abort();
                self.aborted(rewind);
                let backoff = self.state.handle_transient(self.now());
                assert_eq!(self.state.retry_wait(self.now()), Some(backoff));
            }
        }
    }

    /// Executes a commit plan (`revoking`: the partitions a revoke is taking away, whose offsets
    /// this commit may still store).
    fn settle(&mut self, plan: CommitPlan, succeed: bool, revoking: &BTreeSet<i32>) {
        let mut expected: BTreeMap<i32, i64> = BTreeMap::new();
        for (partition, offset) in &self.open_records {
            // The committed offset is the next one to read: the last processed + 1.
            expected.insert(*partition, offset + 1);
        }
        let planned: BTreeMap<i32, i64> = plan
            .offsets
            .iter()
            .map(|((_, partition), next)| (*partition, *next))
            .collect();
        let timers_only = self.open_records.is_empty();
        if timers_only {
            // A transaction of a tick's outputs commits the group's offsets again, unchanged (so
            // the coordinator checks the generation): never past what was read, never back.
            for (partition, next) in &planned {
                let position = self.positions.get(partition).copied();
                assert!(
                    position.is_some_and(|position| *next <= position),
                    "partition {partition}: a timers-only commit stores {next}, past the position {position:?}"
                );
                let committed = self.group_committed.get(partition).copied().unwrap_or(0);
                assert!(*next >= committed, "a timers-only commit never goes back");
            }
        } else {
            assert_eq!(
                planned, expected,
                "a commit stores each partition's last processed offset + 1"
            );
        }
        for partition in planned.keys() {
            assert!(
                self.positions.contains_key(partition) || revoking.contains(partition),
                "partition {partition} is committed by an instance that does not own it"
            );
        }
        assert_eq!(plan.records, self.open_records.len());
        let held: Vec<Vec<u8>> = plan.held.iter().map(|record| record.key.clone()).collect();
        assert_eq!(
            held, self.open_held,
            "the commit releases exactly its transaction's held records"
        );
        assert!(plan.held.iter().all(|record| record.last));

        if succeed {
            assert_eq!(self.state.handle_commit_ok(), self.open_records.len());
            for (partition, next) in planned {
                let previous = self.group_committed.insert(partition, next);
                assert!(
                    previous.is_none_or(|previous| previous <= next),
                    "the committed offset of partition {partition} went back from {previous:?} to {next}"
                );
                if self.positions.contains_key(&partition) && !timers_only {
                    assert_eq!(self.state.committed_offset(&key(partition)), Some(next));
                }
            }
            self.committed_records.append(&mut self.open_records);
            self.released.extend(self.open_held.drain(..));
            self.open_first_read.clear();
            assert!(!self.state.is_open());
        } else {
            // The plan took the held records (they may have been sent): the abort has none left.
            let attempted = std::mem::take(&mut self.open_held);
            let rewind = self.state.handle_abort();
            self.aborted(rewind);
            self.dropped.extend(attempted);
        }
    }

    /// Checks an abort's rewind against what the transaction read, and seeks.
    fn aborted(&mut self, rewind: Rewind) {
        let expected: BTreeMap<i32, i64> = self
            .open_first_read
            .iter()
            .filter(|(partition, _)| self.positions.contains_key(partition))
            .map(|(partition, offset)| (*partition, *offset))
            .collect();
        let positions: BTreeMap<i32, i64> = rewind
            .positions
            .iter()
            .map(|((_, partition), offset)| (*partition, *offset))
            .collect();
        assert_eq!(
            positions, expected,
            "an abort rewinds to the first offsets read, of owned partitions"
        );
        assert_eq!(rewind.held_dropped, self.open_held.len());
        for (partition, offset) in positions {
            let committed = self.group_committed.get(&partition).copied().unwrap_or(0);
            assert!(
                offset >= committed,
                "a rewind never goes below the committed offset"
            );
            self.positions.insert(partition, offset);
        }
        self.dropped.extend(self.open_held.drain(..));
        self.open_records.clear();
        self.open_first_read.clear();
        assert!(!self.state.is_open());
    }

    fn check_events(&mut self) {
        while let Some(event) = self.state.poll_event() {
            if let Event::Assignment(partitions) = event {
                let owned: Vec<PartitionKey> = self.positions.keys().copied().map(key).collect();
                assert_eq!(
                    partitions, owned,
                    "the processor is told the whole current assignment"
                );
            }
        }
    }

    fn check_timers(&self) {
        let now = self.now();
        let timeout = self.state.poll_timeout(now);
        assert!(timeout <= Duration::from_millis(100));
        if self.state.is_open() && !self.state.commit_due(now) {
            assert!(
                timeout > Duration::ZERO || self.state.tick_due(now),
                "a poll waits only while nothing is due"
            );
        }
        if self.state.is_open() {
            assert!(self.state.commit_due(now + Duration::from_millis(500)));
        }
    }

    /// Commits what is open (a clean shutdown) and checks that the committed transactions hold
    /// each partition's records below its committed offset, each once.
    fn finish(mut self) {
        if let Some(plan) = self.state.poll_commit() {
            self.settle(plan, true, &BTreeSet::new());
        }
        for partition in 0..PARTITIONS {
            let end = self.group_committed.get(&partition).copied().unwrap_or(0);
            let mut committed: Vec<i64> = self
                .committed_records
                .iter()
                .filter(|(p, _)| *p == partition)
                .map(|(_, offset)| *offset)
                .collect();
            committed.sort_unstable();
            assert_eq!(
                committed,
                offsets_below(partition, end),
                "partition {partition}: the committed transactions hold each record below the \
                 committed offset {end} exactly once"
            );
        }
        assert!(
            self.released.is_disjoint(&self.dropped),
            "a held record is released or dropped, not both"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_loop_commits_every_processed_record_once_and_nothing_else(
        hold_last in any::<bool>(),
        initial in partitions(),
        ops in prop::collection::vec(op(), 0..120),
    ) {
        let mut world = World::new(hold_last);
        world.apply(Op::Assign(initial));
        for op in ops {
            world.apply(op);
        }
        world.finish();
    }

    #[test]
    fn committed_offsets_are_the_last_processed_plus_one_whatever_the_gaps(
        partition in 0..PARTITIONS,
        start in 0i64..50,
        count in 1usize..20,
    ) {
        let now = Instant::now();
        let mut state = LoopState::new(Timing::new(1000, Duration::from_secs(1), None), false, now);
        state.handle_assign(&[key(partition)]);
        let mut position = start;
        let mut last = 0;
        for _ in 0..count {
            last = next_offset(partition, position);
            position = last + 1;
            state.handle_read(&key(partition), last, now);
            state.handle_processed(&key(partition), last);
        }
        let plan = state.poll_commit().expect("open");
        prop_assert_eq!(plan.offsets, vec![(key(partition), last + 1)]);
    }
}
