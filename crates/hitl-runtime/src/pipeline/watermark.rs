//! The input watermark: a time before which every input record of the partitions an instance owns
//! has been processed. Timers that must never overtake an input (a lease expiry must not revoke a
//! lease whose verdict waits in Kafka, an SLA fallback must not decide an item a reviewer already
//! decided) fire by the watermark rather than by the wall clock; after a restart or a rebalance
//! they wait until the backlog is read.
//!
//! Pure: no clock, no Kafka client. The driver reports what it read and the broker's end offsets;
//! time (wall-clock milliseconds) is a parameter.
//!
//! A record's time is its broker append time (`LogAppendTime` topics; hitl creates its input
//! topics so), or the time it was read (`CreateTime`: a writer's clock is not trusted). The
//! consumer reports (statistics) each partition's fetch position against its last stable offset:
//! fetched to that end, everything below it was fetched or skipped (transaction markers, aborted
//! records — a partition written by transactions can end with several markers, which take offsets
//! but are never delivered). Per owned partition the watermark is:
//! - fetched to its end and nothing of it waiting in the client's queue (or nothing of it
//!   delivered for `quiet` since): when the client reported that, less `caught_up_margin` (the
//!   end is as old as the fetch response it came in);
//! - not fetched to its end (a backlog): the time of the last record read;
//! - not reported yet (just assigned): if nothing was read for `quiet`, the wall clock less
//!   `quiet`; else the last record's time.
//!
//! Each value is also never less than the last record's time: records are read in offset order,
//! which is append order.
//!
//! The instance's watermark is the least over its partitions (`None` when it owns none: timers of
//! pools it may have lost must not fire). Each partition's value never goes back.

use std::collections::BTreeMap;

use super::state::PartitionKey;

/// What the consumer last reported of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndReport {
    /// Its fetch position reached its last stable offset.
    pub fetched_to_end: bool,
    /// Nothing fetched waits in the client's queue to be delivered.
    pub queue_empty: bool,
    /// When the report was made (wall-clock milliseconds).
    pub as_of: i64,
}

#[derive(Debug, Clone, PartialEq)]
struct PartitionClock {
    /// When a record of it was last read, or when it was assigned.
    active_at: i64,
    /// The time of the last record read.
    last_time: Option<i64>,
    /// The consumer's last report.
    report: Option<EndReport>,
    /// The value last returned (a partition's watermark never goes back).
    floor: i64,
}

/// Per-partition clocks of the partitions an instance owns.
#[derive(Debug, Clone, PartialEq)]
pub struct Watermarks {
    quiet: i64,
    caught_up_margin: i64,
    partitions: BTreeMap<PartitionKey, PartitionClock>,
}

impl Watermarks {
    /// `quiet_ms`: how long a partition with nothing to read holds the watermark back;
    /// `caught_up_margin_ms`: how far behind the consumer's report a caught-up partition's value is.
    pub fn new(quiet_ms: i64, caught_up_margin_ms: i64) -> Self {
        Self {
            quiet: quiet_ms.max(0),
            caught_up_margin: caught_up_margin_ms.max(0),
            partitions: BTreeMap::new(),
        }
    }

    /// The partitions owned now: new ones start at `now` with nothing read; gone ones are
    /// forgotten (one given back later starts again).
    pub fn reconcile(&mut self, owned: &[PartitionKey], now: i64) {
        self.partitions
            .retain(|partition, _| owned.contains(partition));
        for partition in owned {
            self.partitions
                .entry(partition.clone())
                .or_insert(PartitionClock {
                    active_at: now,
                    last_time: None,
                    report: None,
                    floor: i64::MIN,
                });
        }
    }

    /// A record of `partition`, appended at `time`, was read at `now`.
    pub fn record(&mut self, partition: &PartitionKey, time: i64, now: i64) {
        if let Some(clock) = self.partitions.get_mut(partition) {
            clock.active_at = now;
            clock.last_time = Some(clock.last_time.map_or(time, |last| last.max(time)));
        }
    }

    /// The consumer's report on `partition`.
    pub fn report(&mut self, partition: &PartitionKey, report: EndReport) {
        if let Some(clock) = self.partitions.get_mut(partition) {
            clock.report = Some(report);
        }
    }

    /// The loop was stalled (the process paused, the machine suspended) until `now`: nothing
    /// it knew of where it stands is current — its reports are as old as the pause, and its
    /// partitions may be another instance's by now. Every partition starts over as if just
    /// assigned (values never go back).
    pub fn stalled(&mut self, now: i64) {
        for clock in self.partitions.values_mut() {
            clock.active_at = now;
            clock.report = None;
        }
    }

    /// The owned partitions.
    pub fn partitions(&self) -> impl Iterator<Item = &PartitionKey> {
        self.partitions.keys()
    }

    /// The watermark at `now`; `None` when no partition is owned.
    pub fn watermark(&mut self, now: i64) -> Option<i64> {
        let (quiet, margin) = (self.quiet, self.caught_up_margin);
        self.partitions
            .values_mut()
            .map(|clock| {
                let last = clock.last_time.unwrap_or(i64::MIN);
                let idle = now.saturating_sub(clock.active_at) >= quiet;
                let value = match clock.report {
                    // Everything below the stable end was fetched, and delivered (nothing
                    // waits, or nothing of it came for `quiet`).
                    Some(report) if report.fetched_to_end && (report.queue_empty || idle) => {
                        report.as_of.saturating_sub(margin).max(last)
                    }
                    // A backlog is being fetched and read.
                    Some(_) => last,
                    // Not reported yet: it holds the watermark back while anything came lately.
                    None if idle => now.saturating_sub(quiet).max(last),
                    None => last,
                };
                clock.floor = clock.floor.max(value.min(now));
                clock.floor
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(topic: &str, partition: i32) -> PartitionKey {
        (topic.to_owned(), partition)
    }

    fn report(fetched_to_end: bool, queue_empty: bool, as_of: i64) -> EndReport {
        EndReport {
            fetched_to_end,
            queue_empty,
            as_of,
        }
    }

    #[test]
    fn nothing_owned_has_no_watermark() {
        let mut marks = Watermarks::new(3_000, 1_000);
        assert_eq!(marks.watermark(10_000), None);
    }

    #[test]
    fn a_new_partition_holds_timers_until_it_is_read_or_quiet() {
        let mut marks = Watermarks::new(3_000, 1_000);
        marks.reconcile(&[p("verdicts", 0)], 100_000);
        assert_eq!(marks.watermark(101_000), Some(i64::MIN), "nothing read yet");
        assert_eq!(
            marks.watermark(103_000),
            Some(100_000),
            "quiet: nothing came for 3 s"
        );
    }

    #[test]
    fn a_backlog_holds_the_watermark_at_the_last_record_read() {
        let mut marks = Watermarks::new(3_000, 1_000);
        let verdicts = p("verdicts", 0);
        marks.reconcile(std::slice::from_ref(&verdicts), 500_000);
        marks.report(&verdicts, report(false, false, 500_000));
        // Records appended ten minutes ago, read now, one every few milliseconds.
        for offset in 0..100 {
            marks.record(&verdicts, offset, 500_000 + offset);
        }
        assert_eq!(marks.watermark(500_100), Some(99));
        // Still behind, and quiet for a while (stuck behind other partitions' records): still
        // only the last record's time.
        marks.record(&verdicts, 200, 501_000);
        assert_eq!(marks.watermark(509_000), Some(200));
        // Fetched to the end, nothing waiting: the report's time, less the margin.
        marks.record(&verdicts, 400_000, 509_500);
        marks.report(&verdicts, report(true, true, 509_800));
        assert_eq!(marks.watermark(510_000), Some(508_800));
    }

    #[test]
    fn a_partition_ending_in_transaction_markers_is_read_to_its_end() {
        // Two transactions committed last: two markers after the last record. The fetch
        // position passes them; records of other partitions keep the client's queue busy, so
        // the partition counts as read once nothing of it came for `quiet`.
        let mut marks = Watermarks::new(3_000, 1_000);
        let requests = p("requests", 0);
        marks.reconcile(std::slice::from_ref(&requests), 0);
        marks.record(&requests, 900, 1_000);
        marks.report(&requests, report(true, false, 1_500));
        assert_eq!(marks.watermark(2_000), Some(900));
        marks.report(&requests, report(true, false, 4_500));
        assert_eq!(marks.watermark(4_600), Some(3_500));
    }

    #[test]
    fn the_least_partition_wins_and_revoked_partitions_stop_counting() {
        let mut marks = Watermarks::new(3_000, 1_000);
        let (a, b) = (p("requests", 0), p("verdicts", 0));
        marks.reconcile(&[a.clone(), b.clone()], 0);
        marks.record(&a, 5_000, 6_000);
        marks.report(&a, report(true, true, 7_000));
        marks.record(&b, 2_000, 6_000);
        marks.report(&b, report(false, false, 7_000));
        assert_eq!(marks.watermark(7_000), Some(2_000));
        marks.reconcile(std::slice::from_ref(&a), 7_000);
        assert_eq!(marks.watermark(7_000), Some(6_000));
        marks.reconcile(&[], 7_000);
        assert_eq!(marks.watermark(7_000), None);
    }

    #[test]
    fn after_a_stall_nothing_known_before_it_counts() {
        let mut marks = Watermarks::new(3_000, 1_000);
        let verdicts = p("verdicts", 0);
        marks.reconcile(std::slice::from_ref(&verdicts), 0);
        marks.record(&verdicts, 900, 1_000);
        marks.report(&verdicts, report(false, false, 1_000));
        assert_eq!(marks.watermark(1_500), Some(900));
        // Paused from 1,500 to 20,000: what was reported before means nothing now.
        marks.stalled(20_000);
        assert_eq!(marks.watermark(20_100), Some(900));
        assert_eq!(marks.watermark(23_000), Some(20_000), "then quiet");
    }

    proptest! {
        /// A partition's watermark never goes back and never passes the wall clock.
        #[test]
        fn watermarks_are_monotonic_and_never_ahead(
            steps in proptest::collection::vec(
                (0i64..2_000, 0i64..5_000, any::<bool>(), any::<bool>(), any::<bool>()),
                1..60,
            )
        ) {
            let mut marks = Watermarks::new(3_000, 1_000);
            let partition = p("verdicts", 0);
            marks.reconcile(std::slice::from_ref(&partition), 0);
            let (mut now, mut appended, mut previous) = (0i64, 0i64, i64::MIN);
            for (advance, lag, read, to_end, empty) in steps {
                now += advance;
                appended = appended.max(now - lag);
                if read {
                    marks.record(&partition, appended, now);
                }
                marks.report(&partition, report(to_end, empty, now));
                let mark = marks.watermark(now).expect("owned");
                prop_assert!(mark >= previous);
                prop_assert!(mark <= now);
                previous = mark;
            }
        }
    }
}
