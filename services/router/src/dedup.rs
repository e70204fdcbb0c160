//! A bounded window of recently routed decision ids, transaction-aware: ids seen in the open
//! transaction are tentative until it commits and forgotten if it aborts (their input is read again).

use std::collections::{HashSet, VecDeque};

#[derive(Debug)]
pub struct RecentIds {
    capacity: usize,
    committed: HashSet<String>,
    order: VecDeque<String>,
    tentative: HashSet<String>,
}

impl RecentIds {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            committed: HashSet::new(),
            order: VecDeque::new(),
            tentative: HashSet::new(),
        }
    }

    /// Records `id`; false if it was already seen (a duplicate).
    pub fn insert(&mut self, id: &str) -> bool {
        if self.capacity == 0 {
            return true;
        }
        if self.committed.contains(id) || self.tentative.contains(id) {
            return false;
        }
        self.tentative.insert(id.to_owned());
        true
    }

    /// The open transaction committed.
    pub fn commit(&mut self) {
        for id in self.tentative.drain() {
            self.order.push_back(id.clone());
            self.committed.insert(id);
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
