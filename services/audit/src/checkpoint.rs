//! Signed checkpoints of one audit partition: every N records or T milliseconds, a summary of the
//! records appended since the previous one — their (decision, version, content hash), a Merkle root
//! over the hashes, the count, and the previous checkpoint's hash. Compaction may remove old record
//! versions; the checkpoints keep saying what the latest ones must be, so a deleted or altered
//! latest record is still detected. Pure: time is a parameter.

use hitl_schema::{AuditCheckpoint, AuditRecord, CheckpointEntry};

use crate::crypto::{checkpoint_hash, merkle_root, Keys};

/// One partition's checkpoint state.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpointer {
    pub partition: i32,
    /// The sequence number of the next checkpoint (0 for the first).
    pub next_sequence: i64,
    /// Records appended to the partition so far: the positions `from_offset` and `to_offset` count
    /// in (per-partition append order; not Kafka offsets, which the writer cannot know in advance).
    pub appended: i64,
    pub pending: Vec<CheckpointEntry>,
    pub prev_hash: Option<String>,
    pub last_cut: i64,
}

impl Checkpointer {
    pub fn new(partition: i32, now: i64) -> Self {
        Self {
            partition,
            next_sequence: 0,
            appended: 0,
            pending: Vec::new(),
            prev_hash: None,
            last_cut: now,
        }
    }

    /// Continues after `last`, the latest checkpoint of the partition.
    pub fn resume(partition: i32, last: Option<&AuditCheckpoint>, now: i64) -> Self {
        let mut checkpointer = Self::new(partition, now);
        if let Some(last) = last {
            checkpointer.next_sequence = last.sequence + 1;
            checkpointer.appended = last.to_offset + 1;
            checkpointer.prev_hash = Some(checkpoint_hash(last));
        }
        checkpointer
    }

    /// Notes a record appended to the partition.
    pub fn append(&mut self, record: &AuditRecord) {
        self.pending.push(CheckpointEntry {
            decision_id: record.decision_id.clone(),
            version: record.version,
            content_hash: record.content_hash.clone(),
        });
    }

    /// Whether a checkpoint is due: something pending, and `every_records` of it or `every_ms`
    /// since the last one.
    pub fn due(&self, now: i64, every_records: usize, every_ms: i64) -> bool {
        !self.pending.is_empty()
            && (self.pending.len() >= every_records || now - self.last_cut >= every_ms)
    }

    /// Cuts the signed checkpoint of everything pending.
    pub fn cut(&mut self, keys: &Keys, now: i64) -> AuditCheckpoint {
        self.cut_at_most(keys, now, usize::MAX)
    }

    /// Cuts the signed checkpoint of the oldest `max` records pending (a checkpoint's size is
    /// bounded by its entries: `bounds::Limits::checkpoint_bound`).
    pub fn cut_at_most(&mut self, keys: &Keys, now: i64, max: usize) -> AuditCheckpoint {
        let entries: Vec<CheckpointEntry> = if self.pending.len() <= max {
            std::mem::take(&mut self.pending)
        } else {
            self.pending.drain(..max).collect()
        };
        let count = entries.len() as i64;
        let mut checkpoint = AuditCheckpoint {
            partition: self.partition,
            sequence: self.next_sequence,
            from_offset: self.appended,
            to_offset: self.appended + count - 1,
            record_count: count,
            root_hash: merkle_root(entries.iter().map(|e| e.content_hash.as_str())),
            prev_checkpoint_hash: self.prev_hash.clone(),
            entries,
            created_at: now,
            signature: String::new(),
            key_id: String::new(),
        };
        keys.seal_checkpoint(&mut checkpoint);
        self.next_sequence += 1;
        self.appended += count;
        self.prev_hash = Some(checkpoint_hash(&checkpoint));
        self.last_cut = now;
        checkpoint
    }
}
