//! The decision ids the router routed within its horizon, for durable de-duplication: pure, no
//! Kafka and no clock (time is a parameter). What it guarantees, costs and leaves out:
//! docs/design.md, section 3, "Durable de-duplication in the router".
//!
//! - An id is kept as the 128-bit xxh3 digest of its bytes ([`digest`]): 16 bytes, no allocation
//!   or string comparison per id; two different ids are taken for one only on a 128-bit collision.
//! - Ids are remembered per input partition, because that is how they are restored: the shell
//!   writes each routed id to the changelog partition numbered like its input partition, and an
//!   instance given partition *p* restores exactly the ids of *p* ([`SeenIds::restore`]); when
//!   *p* goes, its ids go ([`SeenIds::retain_partitions`]). A lookup sees every owned partition,
//!   so an id re-published on another partition this instance owns is caught too.
//! - Transaction-aware: ids routed in the open transaction are tentative until it commits
//!   ([`SeenIds::commit`]) and forgotten if it aborts ([`SeenIds::abort`]; their input is read
//!   again). Restored ids were committed already.
//! - Bounded by time and by count: an id is forgotten once it is older than the horizon (within
//!   one time bucket, `horizon / 1024`), or earlier, oldest first, when more than `max_ids` are
//!   remembered. [`Evicted`] says which, so the shell can tell operators that the count, not the
//!   horizon, decides how far back de-duplication reaches.

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    hash::{BuildHasherDefault, Hasher},
};

/// An id's 128-bit xxh3 digest.
pub type Digest = u128;

/// The digest an id is remembered (and written to the changelog) as.
pub fn digest(id: &str) -> Digest {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}

/// Digests are uniform already: a table slot is their low 64 bits.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    fn write_u128(&mut self, digest: u128) {
        self.0 = digest as u64;
    }
}

type Digests = HashSet<Digest, BuildHasherDefault<DigestHasher>>;

/// How long and how many ids are remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// An id routed at `t` is remembered at least until `t + horizon_millis`.
    pub horizon_millis: i64,
    /// The most ids remembered (the memory bound); 0 turns de-duplication off.
    pub max_ids: usize,
}

impl Limits {
    /// The width of the time buckets ids are evicted by: a 1024th of the horizon (at least 1 ms).
    /// An id is forgotten between `horizon` and `horizon + bucket` after it was routed.
    pub fn bucket_millis(&self) -> i64 {
        (self.horizon_millis / 1024).max(1)
    }

    fn bucket_of(&self, at_millis: i64) -> i64 {
        let width = self.bucket_millis();
        at_millis.div_euclid(width) * width
    }

    /// Whether every id of the bucket starting at `bucket` is older than the horizon at `now`.
    fn expired(&self, bucket: i64, now_millis: i64) -> bool {
        bucket.saturating_add(self.bucket_millis())
            <= now_millis.saturating_sub(self.horizon_millis)
    }
}

/// What one call evicted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Ids older than the horizon.
    pub expired: u64,
    /// Ids evicted because more than `max_ids` were remembered, before their horizon.
    pub over_capacity: u64,
    /// The time bucket of the youngest id evicted for capacity: de-duplication reaches back
    /// only to about there, not the whole horizon.
    pub capacity_reach: Option<i64>,
}

impl Evicted {
    fn add(&mut self, other: Evicted) {
        self.expired += other.expired;
        self.over_capacity += other.over_capacity;
        self.capacity_reach = self.capacity_reach.max(other.capacity_reach);
    }
}

/// The ids of one input partition, oldest first.
#[derive(Debug, Default)]
struct Partition {
    /// Every remembered digest of this partition, in the order it was routed.
    order: VecDeque<Digest>,
    /// `order` run-length encoded by time bucket: (bucket start, how many ids), oldest first. At
    /// most about 1025 runs over a horizon, whatever the rate.
    runs: VecDeque<(i64, u32)>,
}

impl Partition {
    /// Appends `digest` routed at `bucket`. Buckets never go back within a partition: an id
    /// stamped earlier than the last (another instance's clock) joins the last bucket, so it is
    /// kept a little longer, never shorter.
    fn push(&mut self, digest: Digest, bucket: i64) {
        self.order.push_back(digest);
        match self.runs.back_mut() {
            Some((last, count)) if *last >= bucket && *count < u32::MAX => *count += 1,
            _ => {
                let bucket = self
                    .runs
                    .back()
                    .map_or(bucket, |(last, _)| bucket.max(*last));
                self.runs.push_back((bucket, 1));
            }
        }
    }

    /// The oldest id's bucket.
    fn oldest(&self) -> Option<i64> {
        self.runs.front().map(|(bucket, _)| *bucket)
    }

    /// Removes the oldest id.
    fn pop(&mut self) -> Option<(Digest, i64)> {
        let digest = self.order.pop_front()?;
        let (bucket, count) = self.runs.front_mut().expect("runs cover order");
        let bucket = *bucket;
        *count -= 1;
        if *count == 0 {
            self.runs.pop_front();
        }
        Some((digest, bucket))
    }
}

/// The remembered decision ids of the partitions this instance owns.
#[derive(Debug)]
pub struct SeenIds {
    limits: Limits,
    /// Every committed digest, of every partition (what a lookup checks).
    committed: Digests,
    /// The committed digests of each partition, oldest first (what eviction and revocation drop).
    partitions: BTreeMap<i32, Partition>,
    /// Digests routed in the open transaction…
    tentative: Digests,
    /// …with their partition and time, in the order they were routed.
    pending: Vec<(i32, Digest, i64)>,
}

impl SeenIds {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            committed: Digests::default(),
            partitions: BTreeMap::new(),
            tentative: Digests::default(),
            pending: Vec::new(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether de-duplication is on (`max_ids > 0`).
    pub fn enabled(&self) -> bool {
        self.limits.max_ids > 0
    }

    /// Whether `digest` was routed already: committed, or in the open transaction.
    pub fn contains(&self, digest: Digest) -> bool {
        self.enabled() && (self.committed.contains(&digest) || self.tentative.contains(&digest))
    }

    /// Records `digest`, read from input `partition` and routed at `now_millis`, in the open
    /// transaction. `false`: it was routed already (a duplicate), nothing changes.
    pub fn insert(&mut self, partition: i32, digest: Digest, now_millis: i64) -> bool {
        if !self.enabled() {
            return true;
        }
        if self.committed.contains(&digest) || !self.tentative.insert(digest) {
            return false;
        }
        self.pending.push((partition, digest, now_millis));
        true
    }

    /// The open transaction committed: its ids are remembered for good (until evicted). Then
    /// evicts what is older than the horizon at `now_millis`, and the oldest beyond `max_ids`.
    pub fn commit(&mut self, now_millis: i64) -> Evicted {
        self.tentative.clear();
        for (partition, digest, at) in std::mem::take(&mut self.pending) {
            if self.committed.insert(digest) {
                let bucket = self.limits.bucket_of(at);
                self.partitions
                    .entry(partition)
                    .or_default()
                    .push(digest, bucket);
            }
        }
        self.evict(now_millis)
    }

    /// The open transaction aborted: its ids are forgotten (their inputs are read again).
    pub fn abort(&mut self) {
        self.tentative.clear();
        self.pending.clear();
    }

    /// Evicts what is older than the horizon at `now_millis`, then the oldest ids beyond `max_ids`.
    pub fn evict(&mut self, now_millis: i64) -> Evicted {
        let mut evicted = Evicted::default();
        for partition in self.partitions.values_mut() {
            while let Some(oldest) = partition.oldest() {
                if !self.limits.expired(oldest, now_millis) {
                    break;
                }
                let (digest, _) = partition.pop().expect("an oldest id");
                self.committed.remove(&digest);
                evicted.expired += 1;
            }
        }
        evicted.add(self.trim());
        self.partitions
            .retain(|_, partition| !partition.order.is_empty());
        evicted
    }

    /// Evicts the oldest ids, whatever their partition, until at most `max_ids` are remembered.
    fn trim(&mut self) -> Evicted {
        let mut evicted = Evicted::default();
        while self.committed.len() > self.limits.max_ids {
            // Partitions are few (those of one instance): a scan for the oldest is cheap.
            let Some(partition) = self
                .partitions
                .values_mut()
                .filter(|partition| !partition.order.is_empty())
                .min_by_key(|partition| partition.oldest())
            else {
                break;
            };
            let (digest, bucket) = partition.pop().expect("not empty");
            self.committed.remove(&digest);
            evicted.over_capacity += 1;
            evicted.capacity_reach = evicted.capacity_reach.max(Some(bucket));
        }
        evicted
    }

    /// Restores `partition` from its changelog entries `(digest, routed at)`, in the order they
    /// were written, replacing what was remembered of it: [`SeenIds::forget_partition`], then
    /// [`SeenIds::restore_entry`] for each entry.
    pub fn restore(
        &mut self,
        partition: i32,
        entries: impl IntoIterator<Item = (Digest, i64)>,
        now_millis: i64,
    ) -> Restored {
        let mut restored = Restored::default();
        self.forget_partition(partition);
        for (digest, at) in entries {
            self.restore_entry(partition, digest, at, now_millis, &mut restored);
        }
        restored
    }

    /// Restores one changelog entry of `partition`: `digest`, routed at `at_millis`. An entry
    /// older than the horizon at `now_millis` is skipped; `max_ids` holds throughout (the oldest
    /// go first), so memory never exceeds the bound however long the changelog is.
    pub fn restore_entry(
        &mut self,
        partition: i32,
        digest: Digest,
        at_millis: i64,
        now_millis: i64,
        restored: &mut Restored,
    ) {
        if !self.enabled() {
            return;
        }
        let bucket = self.limits.bucket_of(at_millis);
        if self.limits.expired(bucket, now_millis) {
            restored.expired += 1;
            return;
        }
        if !self.committed.insert(digest) {
            // Already remembered (by another partition, or twice in this one).
            restored.repeated += 1;
            return;
        }
        self.partitions
            .entry(partition)
            .or_default()
            .push(digest, bucket);
        restored.ids += 1;
        if self.committed.len() > self.limits.max_ids {
            restored.evicted.add(self.trim());
            self.partitions
                .retain(|_, partition| !partition.order.is_empty());
        }
    }

    /// Keeps the ids of the partitions `owned` accepts; forgets the others'. Returns how many
    /// ids were forgotten.
    pub fn retain_partitions(&mut self, owned: impl Fn(i32) -> bool) -> usize {
        let gone: Vec<i32> = self
            .partitions
            .keys()
            .copied()
            .filter(|partition| !owned(*partition))
            .collect();
        gone.into_iter()
            .map(|partition| self.forget_partition(partition))
            .sum()
    }

    /// Forgets `partition`'s committed ids; how many.
    pub fn forget_partition(&mut self, partition: i32) -> usize {
        let Some(dropped) = self.partitions.remove(&partition) else {
            return 0;
        };
        // A digest also remembered for another partition (a repeat restored from two
        // changelogs) goes too: the other partition's copy was skipped at restore. Rare, and it
        // only shortens how long that one id is remembered.
        for digest in &dropped.order {
            self.committed.remove(digest);
        }
        dropped.order.len()
    }

    /// The partitions ids are remembered for.
    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions.keys().copied()
    }

    /// Remembered ids, committed and tentative.
    pub fn len(&self) -> usize {
        self.committed.len() + self.tentative.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The heap the remembered ids take, from the tables' capacities: the digest set (hashbrown:
    /// 16 bytes and a control byte per bucket, buckets a power of two holding up to 7/8), the
    /// per-partition queues (16 bytes per slot, a power of two) and the open transaction's ids.
    pub fn heap_bytes(&self) -> usize {
        let table = |set: &Digests| match set.capacity() {
            0 => 0,
            capacity => (capacity * 8 / 7).next_power_of_two() * (16 + 1) + 16,
        };
        let queues: usize = self
            .partitions
            .values()
            .map(|partition| {
                partition.order.capacity() * std::mem::size_of::<Digest>()
                    + partition.runs.capacity() * std::mem::size_of::<(i64, u32)>()
            })
            .sum();
        table(&self.committed)
            + table(&self.tentative)
            + queues
            + self.pending.capacity() * std::mem::size_of::<(i32, Digest, i64)>()
    }

    /// The time bucket of the oldest committed id: how far back de-duplication reaches now.
    pub fn oldest(&self) -> Option<i64> {
        self.partitions.values().filter_map(Partition::oldest).min()
    }
}

/// What a restore kept and skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Ids remembered.
    pub ids: u64,
    /// Entries older than the horizon.
    pub expired: u64,
    /// Entries whose id was remembered already.
    pub repeated: u64,
    /// What `max_ids` evicted meanwhile.
    pub evicted: Evicted,
}

/// The changelog value of a routed id: a format byte, then the time it was routed (milliseconds
/// since the Unix epoch, big-endian). The key is the id's digest, 16 bytes big-endian.
pub const ENTRY_FORMAT: u8 = 1;

/// Encodes a changelog entry: (key, value).
pub fn encode_entry(digest: Digest, routed_at_millis: i64) -> ([u8; 16], [u8; 9]) {
    let mut value = [0u8; 9];
    value[0] = ENTRY_FORMAT;
    value[1..].copy_from_slice(&routed_at_millis.to_be_bytes());
    (digest.to_be_bytes(), value)
}

/// Decodes a changelog entry exactly; `None` for anything else (skipped and counted by the shell).
pub fn decode_entry(key: Option<&[u8]>, value: Option<&[u8]>) -> Option<(Digest, i64)> {
    let key: [u8; 16] = key?.try_into().ok()?;
    let value: [u8; 9] = value?.try_into().ok()?;
    if value[0] != ENTRY_FORMAT {
        return None;
    }
    let at = i64::from_be_bytes(value[1..].try_into().ok()?);
    Some((Digest::from_be_bytes(key), at))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HOUR: i64 = 3_600_000;

    fn limits(horizon_millis: i64, max_ids: usize) -> Limits {
        Limits {
            horizon_millis,
            max_ids,
        }
    }

    fn id(n: u32) -> Digest {
        digest(&format!("d-{n}"))
    }

    #[test]
    fn duplicates_are_caught_and_aborts_forget() {
        let mut ids = SeenIds::new(limits(HOUR, 10));
        assert!(ids.insert(0, id(1), 0));
        assert!(
            !ids.insert(0, id(1), 0),
            "a duplicate in the open transaction"
        );
        ids.abort();
        assert!(
            ids.insert(0, id(1), 0),
            "an aborted id is read again and must route again"
        );
        ids.commit(0);
        assert!(!ids.insert(0, id(1), 1), "committed");
        assert!(
            !ids.insert(3, id(1), 1),
            "caught on another owned partition too"
        );
        assert_eq!(ids.len(), 1);
    }

    #[test]
    fn ids_are_forgotten_after_the_horizon_not_before() {
        let horizon = HOUR;
        let bucket = limits(horizon, 10).bucket_millis();
        let mut ids = SeenIds::new(limits(horizon, 10));
        ids.insert(0, id(1), 1_000);
        ids.commit(1_000);
        for now in [1_000, 1_000 + horizon, 1_000 + horizon - 1] {
            assert_eq!(ids.evict(now), Evicted::default());
            assert!(ids.contains(id(1)), "remembered at {now}");
        }
        // Gone once its whole bucket is past the horizon: at most one bucket late.
        let evicted = ids.evict(1_000 + horizon + bucket);
        assert_eq!(evicted.expired, 1);
        assert!(!ids.contains(id(1)));
        assert!(ids.is_empty());
        assert_eq!(ids.partitions().count(), 0);
    }

    #[test]
    fn the_count_bound_evicts_the_oldest_first_and_says_so() {
        let mut ids = SeenIds::new(limits(HOUR, 3));
        for (n, partition) in [(1, 0), (2, 1), (3, 0), (4, 1)] {
            ids.insert(partition, id(n), i64::from(n) * 10_000);
            let evicted = ids.commit(i64::from(n) * 10_000);
            if n == 4 {
                assert_eq!(evicted.over_capacity, 1);
                assert_eq!(evicted.expired, 0);
                assert!(evicted.capacity_reach.is_some());
            }
        }
        assert_eq!(ids.len(), 3);
        assert!(!ids.contains(id(1)), "the oldest, of whatever partition");
        assert!([2, 3, 4].into_iter().all(|n| ids.contains(id(n))));
    }

    #[test]
    fn a_restore_replaces_the_partition_and_skips_what_is_past_the_horizon() {
        let now = 10 * HOUR;
        let mut ids = SeenIds::new(limits(HOUR, 100));
        ids.insert(2, id(99), now);
        ids.commit(now);
        let restored = ids.restore(
            2,
            [
                (id(1), now - 2 * HOUR),
                (id(2), now - HOUR / 2),
                (id(2), now),
                (id(3), now),
            ],
            now,
        );
        assert_eq!(
            (restored.ids, restored.expired, restored.repeated),
            (2, 1, 1)
        );
        assert!(
            !ids.contains(id(99)),
            "the partition's old memory is replaced"
        );
        assert!(!ids.contains(id(1)), "older than the horizon");
        assert!(ids.contains(id(2)) && ids.contains(id(3)));
    }

    #[test]
    fn a_restore_never_holds_more_than_the_bound() {
        let mut ids = SeenIds::new(limits(HOUR, 5));
        let restored = ids.restore(0, (0..100).map(|n| (id(n), i64::from(n))), 100);
        assert_eq!(ids.len(), 5);
        assert_eq!(restored.ids, 100);
        assert_eq!(restored.evicted.over_capacity, 95);
        assert!((95..100).all(|n| ids.contains(id(n))), "the newest stay");
    }

    #[test]
    fn revoked_partitions_are_forgotten() {
        let mut ids = SeenIds::new(limits(HOUR, 100));
        ids.insert(0, id(1), 0);
        ids.insert(1, id(2), 0);
        ids.commit(0);
        assert_eq!(ids.retain_partitions(|p| p == 1), 1);
        assert!(!ids.contains(id(1)));
        assert!(ids.contains(id(2)));
        assert_eq!(ids.partitions().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn a_zero_bound_turns_it_off() {
        let mut ids = SeenIds::new(limits(HOUR, 0));
        assert!(ids.insert(0, id(1), 0));
        ids.commit(0);
        assert!(ids.insert(0, id(1), 0));
        assert!(!ids.contains(id(1)));
        assert_eq!(ids.restore(0, [(id(1), 0)], 0), Restored::default());
        assert!(ids.is_empty());
    }

    #[test]
    fn clocks_that_go_back_keep_ids_longer_never_shorter() {
        let mut ids = SeenIds::new(limits(HOUR, 100));
        ids.insert(0, id(1), 5 * HOUR);
        ids.insert(0, id(2), 4 * HOUR); // an earlier clock
        ids.commit(5 * HOUR);
        ids.evict(5 * HOUR + HOUR / 2);
        assert!(ids.contains(id(2)), "kept with the later bucket");
    }

    #[test]
    fn entries_round_trip_and_anything_else_is_refused() {
        let (key, value) = encode_entry(id(7), 1_764_000_000_123);
        assert_eq!(
            decode_entry(Some(&key), Some(&value)),
            Some((id(7), 1_764_000_000_123))
        );
        assert_eq!(value[0], ENTRY_FORMAT);
        assert_eq!(decode_entry(None, Some(&value)), None);
        assert_eq!(decode_entry(Some(&key), None), None, "a tombstone");
        assert_eq!(decode_entry(Some(&key[1..]), Some(&value)), None);
        assert_eq!(
            decode_entry(Some(&key), Some(&[value.as_slice(), &[0]].concat())),
            None
        );
        let mut other = value;
        other[0] = 2;
        assert_eq!(decode_entry(Some(&key), Some(&other)), None);
    }

    /// One step of the property test.
    #[derive(Debug, Clone)]
    enum Op {
        Route { partition: i32, n: u8 },
        Commit,
        Abort,
        Advance(i64),
        Revoke(i32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3i32, 0..40u8).prop_map(|(partition, n)| Op::Route { partition, n }),
            2 => Just(Op::Commit),
            1 => Just(Op::Abort),
            2 => (0..2_000i64).prop_map(Op::Advance),
            1 => (0..3i32).prop_map(Op::Revoke),
        ]
    }

    proptest! {
        /// Against a model of the transactions: an id is called a duplicate only if it is in the
        /// open transaction, or was committed (on a partition still owned) no more than horizon +
        /// one bucket before the last eviction; an id committed within the horizon is always a
        /// duplicate unless the count bound evicted something; aborted ids are forgotten; the
        /// bound always holds.
        #[test]
        fn matches_a_model(ops in prop::collection::vec(op(), 1..200), max_ids in 1usize..60) {
            let horizon = 5_000;
            let mut ids = SeenIds::new(limits(horizon, max_ids));
            let bucket = ids.limits().bucket_millis();
            let mut committed: BTreeMap<u8, (i32, i64)> = BTreeMap::new();
            let mut pending: BTreeMap<u8, (i32, i64)> = BTreeMap::new();
            let mut capacity_evicted = false;
            let mut now = 0i64;
            let mut last_eviction = 0i64;
            for op in ops {
                match op {
                    Op::Route { partition, n } => {
                        let fresh = ids.insert(partition, id(u32::from(n)), now);
                        let in_pending = pending.contains_key(&n);
                        let committed_at = committed.get(&n).map(|(_, at)| *at);
                        if fresh {
                            prop_assert!(!in_pending, "{} routed twice in one transaction", n);
                            if let Some(at) = committed_at {
                                prop_assert!(
                                    capacity_evicted || now - at > horizon,
                                    "{} forgotten {} ms after it was routed", n, now - at
                                );
                            }
                            pending.insert(n, (partition, now));
                        } else {
                            prop_assert!(
                                in_pending || committed_at.is_some_and(|at| last_eviction - at <= horizon + bucket),
                                "{} taken for a duplicate at {}", n, now
                            );
                        }
                    }
                    Op::Commit => {
                        let evicted = ids.commit(now);
                        last_eviction = now;
                        capacity_evicted |= evicted.over_capacity > 0;
                        committed.append(&mut pending);
                        prop_assert!(ids.len() <= max_ids);
                    }
                    Op::Abort => {
                        ids.abort();
                        pending.clear();
                    }
                    Op::Advance(millis) => now += millis,
                    Op::Revoke(partition) => {
                        // The loop commits the open transaction before partitions go.
                        let evicted = ids.commit(now);
                        last_eviction = now;
                        capacity_evicted |= evicted.over_capacity > 0;
                        committed.append(&mut pending);
                        ids.retain_partitions(|p| p != partition);
                        committed.retain(|_, (p, _)| *p != partition);
                    }
                }
            }
        }
    }
}
