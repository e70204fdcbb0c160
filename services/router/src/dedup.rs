//! A bounded window of recently routed decision ids, transaction-aware: ids seen in the open
//! transaction are tentative until it commits and forgotten if it aborts (their input is read again).
//!
//! Ids are kept as 128-bit xxh3 digests: no allocation or string comparison per id, 16 bytes per
//! remembered id, and two different ids are taken for duplicates only on a 128-bit collision.

use std::{
    collections::{HashSet, VecDeque},
    hash::{BuildHasherDefault, Hasher},
};

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

type Digests = HashSet<u128, BuildHasherDefault<DigestHasher>>;

#[derive(Debug)]
pub struct RecentIds {
    capacity: usize,
    committed: Digests,
    order: VecDeque<u128>,
    tentative: Digests,
}

impl RecentIds {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            committed: Digests::default(),
            order: VecDeque::new(),
            tentative: Digests::default(),
        }
    }

    /// Records `id`; false if it was already seen (a duplicate).
    pub fn insert(&mut self, id: &str) -> bool {
        if self.capacity == 0 {
            return true;
        }
        let digest = xxhash_rust::xxh3::xxh3_128(id.as_bytes());
        !self.committed.contains(&digest) && self.tentative.insert(digest)
    }

    /// The open transaction committed.
    pub fn commit(&mut self) {
        for digest in self.tentative.drain() {
            self.order.push_back(digest);
            self.committed.insert(digest);
        }
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.committed.remove(&oldest);
            }
        }
    }

    /// The open transaction aborted.
    pub fn abort(&mut self) {
        self.tentative.clear();
    }

    pub fn len(&self) -> usize {
        self.committed.len() + self.tentative.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_caught_and_aborts_forget() {
        let mut ids = RecentIds::new(2);
        assert!(ids.insert("a"));
        assert!(!ids.insert("a"));
        ids.abort();
        assert!(
            ids.insert("a"),
            "an aborted id is read again and must route again"
        );
        ids.commit();
        assert!(!ids.insert("a"));
        assert!(ids.insert("b"));
        assert!(ids.insert("c"));
        ids.commit();
        assert_eq!(ids.len(), 2, "oldest evicted beyond capacity");
        assert!(ids.insert("a"));
    }
}
