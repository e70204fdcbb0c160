//! The checkpoint head kept outside Kafka: per audit partition, the sequence and hash of the newest
//! checkpoint this instance has committed. Whoever can delete the newest records and checkpoints
//! of the audit topics together leaves a chain that verifies — but ends before this head, which
//! `hitl-audit verify --expect-head FILE` then reports, and which the service itself refuses to
//! continue from when it restores.
//!
//! The file is rewritten atomically (a temporary file in the same folder, synced, renamed) after
//! each commit that wrote checkpoints, so it never names a checkpoint of an aborted transaction;
//! it may lag the topic by the last commit (it is a lower bound). Keep it where the Kafka
//! credentials cannot reach (a volume of the audit host, copied to write-once storage), or let
//! Prometheus keep it: the service exports it as `hitl_audit_checkpoint_head{partition,hash}`.
//!
//! Format, one line per partition after `#` comments:
//! `<partition> <sequence> <checkpoint hash> <to_offset> <created_at>`.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use hitl_schema::AuditCheckpoint;

use crate::crypto::checkpoint_hash;

/// The newest checkpoint of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub partition: i32,
    pub sequence: i64,
    /// `crypto::checkpoint_hash` of the checkpoint (what the next one's `prev_checkpoint_hash`
    /// names).
    pub hash: String,
    pub to_offset: i64,
    pub created_at: i64,
}

impl Head {
    pub fn of(checkpoint: &AuditCheckpoint) -> Self {
        Self {
            partition: checkpoint.partition,
            sequence: checkpoint.sequence,
            hash: checkpoint_hash(checkpoint),
            to_offset: checkpoint.to_offset,
            created_at: checkpoint.created_at,
        }
    }
}

/// Heads by partition.
pub type Heads = BTreeMap<i32, Head>;

/// The file's text.
pub fn render(heads: &Heads) -> String {
    let mut text = String::from(
        "# hitl-audit checkpoint head: the newest committed checkpoint per audit partition\n\
         # partition sequence checkpoint_hash to_offset created_at\n",
    );
    for head in heads.values() {
        text.push_str(&format!(
            "{} {} {} {} {}\n",
            head.partition, head.sequence, head.hash, head.to_offset, head.created_at
        ));
    }
    text
}

/// Reads the file's text.
pub fn parse(text: &str) -> Result<Heads, String> {
    let mut heads = Heads::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let bad = || {
            format!(
                "line {}: expected `partition sequence hash to_offset created_at`",
                number + 1
            )
        };
        let [partition, sequence, hash, to_offset, created_at] = fields[..] else {
            return Err(bad());
        };
        let hash_ok = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        let head = Head {
            partition: partition.parse().map_err(|_| bad())?,
            sequence: sequence.parse().map_err(|_| bad())?,
            hash: hash_ok.then(|| hash.to_ascii_lowercase()).ok_or_else(bad)?,
            to_offset: to_offset.parse().map_err(|_| bad())?,
            created_at: created_at.parse().map_err(|_| bad())?,
        };
        heads.insert(head.partition, head);
    }
    Ok(heads)
}

/// Reads a head file; a file that does not exist holds no heads.
pub fn read(path: &Path) -> Result<Heads, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text).map_err(|error| format!("{}: {error}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Heads::new()),
        Err(error) => Err(format!("cannot read {}: {error}", path.display())),
    }
}

/// Replaces the file atomically: a synced temporary file renamed over it.
pub fn write(path: &Path, heads: &Heads) -> std::io::Result<()> {
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "head".into());
    let temporary = folder.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(render(heads).as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    // The rename itself is durable once the folder is synced.
    if let Ok(folder) = std::fs::File::open(&folder) {
        let _ = folder.sync_all();
    }
    Ok(())
}

/// Merges `newer` into `heads`: a partition's head only moves forward.
pub fn advance(heads: &mut Heads, newer: impl IntoIterator<Item = Head>) -> bool {
    let mut changed = false;
    for head in newer {
        let forward = heads
            .get(&head.partition)
            .is_none_or(|known| head.sequence > known.sequence);
        if forward {
            heads.insert(head.partition, head);
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(partition: i32, sequence: i64) -> Head {
        Head {
            partition,
            sequence,
            hash: format!("{:064x}", sequence),
            to_offset: sequence * 10,
            created_at: 1_800_000_000_000,
        }
    }

    #[test]
    fn a_head_file_round_trips_and_only_moves_forward() {
        let dir = std::env::temp_dir().join(format!(
            "hitl-audit-head-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("head");
        assert_eq!(read(&path).unwrap(), Heads::new());
        let mut heads = Heads::new();
        assert!(advance(&mut heads, [head(0, 3), head(2, 7)]));
        assert!(!advance(&mut heads, [head(0, 2)]));
        assert!(advance(&mut heads, [head(0, 4)]));
        write(&path, &heads).unwrap();
        assert_eq!(read(&path).unwrap(), heads);
        assert_eq!(heads[&0].sequence, 4);
        assert!(parse("0 1 nothex 3 4\n").is_err());
        assert!(parse("0 1\n").is_err());
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
