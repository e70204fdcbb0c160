//! `verify`: proves from Kafka alone that the audit trail is complete and untampered. Pure: it
//! takes the records as read (in log order per partition) and the public keys, and reports every
//! problem with the decision (or checkpoint) and the reason.
//!
//! Checks:
//! - every audit record decodes, its `content_hash` is the hash of its content, and its signature
//!   verifies with the public key named by `key_id` (a flipped byte, an edit, a forgery fail here);
//! - per decision, versions increase along the log and each `prev_hash` is the previous version's
//!   hash (a reordered or replayed old version fails here); a tombstone is a deletion;
//! - checkpoints verify, have no gap in their sequence, chain by `prev_checkpoint_hash`, and their
//!   Merkle root and count match their entries (a dropped or altered checkpoint fails here);
//! - the latest record of each decision is at least the version its latest checkpoint names, with
//!   that hash when equal (a deleted or replaced latest record fails here, even after compaction
//!   removed older versions); records newer than every checkpoint are reported as not covered;
//! - completeness: every decision received (if given) has an audit record, and every final outcome
//!   published (if given) is in its decision's latest record;
//! - the decision as received: the decision in each trail is one published on `hitl.decisions`
//!   with its id, compared after the same hashing of sensitive values (`Checks::received`; a
//!   forged ROUTED decision fails here);
//! - no missing events: in each latest record, every service's numbered events (`sequence` 1, 2,
//!   …) have no gap, but for sequences the audit itself noted as refused (a deleted or withheld
//!   event fails here), and a trail with numbered assignment events holds the router's event;
//! - the tail: the checkpoint chain reaches the head kept outside Kafka (`Checks::expect_heads`;
//!   deleting the newest records and checkpoints together fails here).
//!
//! The report also says which key signed how many records and checkpoints (key rotation).

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::VerifyingKey;
use hitl_schema::{AuditCheckpoint, AuditRecord, Codec, Decision, Outcome};

use crate::{
    crypto::{
        checkpoint_content, checkpoint_hash, merkle_root, record_content, sha256_hex, Hasher,
    },
    head::Heads,
    trail::{parse_range, AUDIT_SERVICE, REFUSED, REFUSED_SUMMARY},
};

/// A record as read from a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Option<Vec<u8>>,
}

/// What to verify.
#[derive(Debug, Default)]
pub struct Input {
    /// `hitl.audit`, every partition, in log order per partition.
    pub audit: Vec<Logged>,
    /// `hitl.audit.checkpoints`, in log order per partition. On a live system, read these before
    /// the audit topic (a checkpoint only names records written before it).
    pub checkpoints: Vec<Logged>,
    /// Ids of every decision received (from `hitl.decisions`), if completeness is to be checked.
    pub decisions: Option<BTreeSet<String>>,
    /// Every final outcome published (from `hitl.outcomes`), if completeness is to be checked.
    pub outcomes: Option<Vec<Outcome>>,
    /// Treat records newer than every checkpoint as problems (after the service has been quiet
    /// for longer than its checkpoint interval).
    pub require_checkpointed: bool,
}

/// Checks beyond the trail itself.
#[derive(Default)]
pub struct Checks {
    /// Every decision published on `hitl.decisions`, by id, in log order: the trail's decision
    /// must be one of them.
    pub received: Option<BTreeMap<String, Vec<Decision>>>,
    /// The audit's hash key, to hash the sensitive values of the decisions received as the trail
    /// does; without it those values are left out of the comparison.
    pub hasher: Option<Hasher>,
    /// Checkpoint heads kept outside Kafka that the chain must reach.
    pub expect_heads: Vec<ExpectedHead>,
}

/// A head the checkpoint chain must reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedHead {
    /// A head file: per partition, the checkpoint of that sequence with that hash.
    Partitions(Heads),
    /// One checkpoint's hash (any partition).
    Hash(String),
}

/// One thing wrong, with what it is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub subject: String,
    pub what: String,
}

/// The verdict.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    pub problems: Vec<Problem>,
    pub records: usize,
    pub decisions: usize,
    pub checkpoints: usize,
    pub uncovered: usize,
    /// Per key id: the records and checkpoints it signed (and verified or not).
    pub signed_by: BTreeMap<String, (usize, usize)>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
    fn problem(&mut self, subject: impl Into<String>, what: impl Into<String>) {
        self.problems.push(Problem {
            subject: subject.into(),
            what: what.into(),
        });
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} audit records of {} decisions, {} checkpoints, {} records not yet covered by a checkpoint",
            self.records, self.decisions, self.checkpoints, self.uncovered
        )?;
        for (key_id, (records, checkpoints)) in &self.signed_by {
            writeln!(
                f,
                "signed by key `{key_id}`: {records} records, {checkpoints} checkpoints"
            )?;
        }
        if self.problems.is_empty() {
            return writeln!(
                f,
                "OK: signatures valid, chains intact, checkpoints consistent, trail complete"
            );
        }
        writeln!(f, "{} PROBLEMS:", self.problems.len())?;
        for problem in &self.problems {
            writeln!(f, "  {}: {}", problem.subject, problem.what)?;
        }
        Ok(())
    }
}

fn at(logged: &Logged) -> String {
    format!("partition {} offset {}", logged.partition, logged.offset)
}

/// The latest record of a decision in log order.
struct Latest {
    record: AuditRecord,
    logged_at: String,
}

/// Decodes one audit record and checks its hash and signature.
fn check_one(
    logged: &Logged,
    keys: &BTreeMap<String, VerifyingKey>,
    codec: &Codec,
) -> (Option<AuditRecord>, Vec<String>) {
    let mut problems = Vec::new();
    let Some(payload) = &logged.payload else {
        problems.push(format!("deleted: tombstone at {}", at(logged)));
        return (None, problems);
    };
    let record: AuditRecord = match codec.decode(payload) {
        Ok(record) => record,
        Err(error) => {
            problems.push(format!("undecodable record at {}: {error}", at(logged)));
            return (None, problems);
        }
    };
    if Some(&record.decision_id) != logged.key.as_ref() {
        problems.push(format!(
            "record at {} is about {}",
            at(logged),
            record.decision_id
        ));
    }
    if sha256_hex(&record_content(&record)) != record.content_hash {
        problems.push(format!(
            "version {} at {} altered: content does not match its content_hash",
            record.version,
            at(logged)
        ));
    }
    match keys.get(&record.key_id) {
        None => problems.push(format!(
            "version {} at {} signed with unknown key `{}`",
            record.version,
            at(logged),
            record.key_id
        )),
        Some(public) => {
            if !crate::crypto::verify(public, record.content_hash.as_bytes(), &record.signature) {
                problems.push(format!(
                    "version {} at {}: signature invalid (forged or altered)",
                    record.version,
                    at(logged)
                ));
            }
        }
    }
    (Some(record), problems)
}

/// `check_one` over every record, on every core.
fn check_all(
    audit: &[Logged],
    keys: &BTreeMap<String, VerifyingKey>,
) -> Vec<(Option<AuditRecord>, Vec<String>)> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = audit.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = audit
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let codec = Codec::single_object();
                    part.iter()
                        .map(|logged| check_one(logged, keys, &codec))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("verify worker"))
            .collect()
    })
}

/// Verifies everything in `input` with the public keys by key id.
pub fn verify(input: &Input, keys: &BTreeMap<String, VerifyingKey>) -> Report {
    verify_with(input, keys, &Checks::default())
}

/// `verify`, plus `checks`.
pub fn verify_with(
    input: &Input,
    keys: &BTreeMap<String, VerifyingKey>,
    checks: &Checks,
) -> Report {
    let codec = Codec::single_object();
    let mut report = Report::default();
    // decision → (version, hash) of every version seen, and the latest in log order.
    let mut versions: BTreeMap<String, BTreeMap<i64, String>> = BTreeMap::new();
    let mut latest: BTreeMap<String, Latest> = BTreeMap::new();
    let mut deleted: BTreeSet<String> = BTreeSet::new();

    // Each record on its own (decode, hash, signature) in parallel; the chains in log order after.
    let checked = check_all(&input.audit, keys);
    for (logged, (record, problems)) in input.audit.iter().zip(checked) {
        let key = logged.key.clone().unwrap_or_default();
        let subject = format!("decision {key}");
        for what in problems {
            report.problem(&subject, what);
        }
        if logged.payload.is_none() {
            deleted.insert(key.clone());
            latest.remove(&key);
            continue;
        }
        report.records += 1;
        let Some(record) = record else { continue };
        report.signed_by.entry(record.key_id.clone()).or_default().0 += 1;
        // Chain: versions only go up along the log; each names the previous version's hash.
        if let Some(previous) = latest.get(&key) {
            if record.version <= previous.record.version {
                report.problem(
                    &subject,
                    format!(
                        "version {} at {} follows version {} at {}: reordered or an old version replayed",
                        record.version,
                        at(logged),
                        previous.record.version,
                        previous.logged_at
                    ),
                );
            }
        }
        let seen = versions.entry(key.clone()).or_default();
        match (record.version, &record.prev_hash) {
            (1, None) => {}
            (1, Some(_)) => report.problem(&subject, "version 1 names a previous version"),
            (version, prev) => match (seen.get(&(version - 1)), prev) {
                (Some(expected), Some(prev)) if expected != prev => report.problem(
                    &subject,
                    format!(
                        "version {version}: prev_hash does not match version {}",
                        version - 1
                    ),
                ),
                (_, None) => {
                    report.problem(&subject, format!("version {version} has no prev_hash"))
                }
                _ => {} // previous version compacted away: checked through checkpoints
            },
        }
        seen.insert(record.version, record.content_hash.clone());
        deleted.remove(&key);
        latest.insert(
            key,
            Latest {
                record,
                logged_at: at(logged),
            },
        );
    }
    report.decisions = latest.len() + deleted.len();

    // Checkpoints, per partition in log order.
    let mut checkpointed: BTreeMap<String, (i64, String, String)> = BTreeMap::new();
    let mut last_by_partition: BTreeMap<i32, AuditCheckpoint> = BTreeMap::new();
    // partition → sequence → checkpoint hash, for the expected heads.
    let mut chain: BTreeMap<i32, BTreeMap<i64, String>> = BTreeMap::new();
    for logged in &input.checkpoints {
        report.checkpoints += 1;
        let Some(payload) = &logged.payload else {
            report.problem(
                format!("checkpoints partition {}", logged.partition),
                format!("tombstone at {}", at(logged)),
            );
            continue;
        };
        let checkpoint: AuditCheckpoint = match codec.decode(payload) {
            Ok(checkpoint) => checkpoint,
            Err(error) => {
                report.problem(
                    format!("checkpoints partition {}", logged.partition),
                    format!("undecodable checkpoint at {}: {error}", at(logged)),
                );
                continue;
            }
        };
        let subject = format!(
            "checkpoint {} of audit partition {}",
            checkpoint.sequence, checkpoint.partition
        );
        report
            .signed_by
            .entry(checkpoint.key_id.clone())
            .or_default()
            .1 += 1;
        chain
            .entry(checkpoint.partition)
            .or_default()
            .insert(checkpoint.sequence, checkpoint_hash(&checkpoint));
        match keys.get(&checkpoint.key_id) {
            None => report.problem(
                &subject,
                format!("signed with unknown key `{}`", checkpoint.key_id),
            ),
            Some(public) => {
                if !crate::crypto::verify(
                    public,
                    &checkpoint_content(&checkpoint),
                    &checkpoint.signature,
                ) {
                    report.problem(&subject, "signature invalid (forged or altered)");
                }
            }
        }
        let root = merkle_root(checkpoint.entries.iter().map(|e| e.content_hash.as_str()));
        if root != checkpoint.root_hash {
            report.problem(&subject, "root_hash does not match its entries");
        }
        if checkpoint.record_count != checkpoint.entries.len() as i64 {
            report.problem(&subject, "record_count does not match its entries");
        }
        let previous = last_by_partition.get(&checkpoint.partition);
        let expected_sequence = previous.map_or(0, |p| p.sequence + 1);
        if checkpoint.sequence != expected_sequence {
            report.problem(
                &subject,
                if checkpoint.sequence > expected_sequence {
                    format!(
                        "checkpoints {expected_sequence}..{} are missing",
                        checkpoint.sequence - 1
                    )
                } else {
                    format!("out of order: expected sequence {expected_sequence}")
                },
            );
        }
        let expected_prev = previous.map(checkpoint_hash);
        if checkpoint.prev_checkpoint_hash != expected_prev
            && checkpoint.sequence == expected_sequence
        {
            report.problem(
                &subject,
                "prev_checkpoint_hash does not match the previous checkpoint",
            );
        }
        for entry in &checkpoint.entries {
            let newer = checkpointed
                .get(&entry.decision_id)
                .is_none_or(|(version, _, _)| entry.version >= *version);
            if newer {
                checkpointed.insert(
                    entry.decision_id.clone(),
                    (entry.version, entry.content_hash.clone(), subject.clone()),
                );
            }
        }
        last_by_partition.insert(checkpoint.partition, checkpoint);
    }

    // The latest record of every checkpointed decision must still say what its checkpoint says.
    for (decision_id, (version, hash, checkpoint)) in &checkpointed {
        let subject = format!("decision {decision_id}");
        match latest.get(decision_id) {
            None => report.problem(
                &subject,
                format!("missing: {checkpoint} names version {version}, the trail has no record"),
            ),
            Some(found) if found.record.version < *version => report.problem(
                &subject,
                format!(
                    "latest record is version {} ({}) but {checkpoint} names version {version}: \
                     the latest version was deleted or an old one replayed",
                    found.record.version, found.logged_at
                ),
            ),
            Some(found)
                if found.record.version == *version && found.record.content_hash != *hash =>
            {
                report.problem(
                    &subject,
                    format!("version {version} differs from what {checkpoint} recorded"),
                )
            }
            Some(_) => {}
        }
    }
    for (decision_id, found) in &latest {
        let covered = checkpointed
            .get(decision_id)
            .is_some_and(|(version, _, _)| *version >= found.record.version);
        if !covered {
            report.uncovered += 1;
            if input.require_checkpointed {
                report.problem(
                    format!("decision {decision_id}"),
                    format!(
                        "version {} ({}) is not covered by any checkpoint",
                        found.record.version, found.logged_at
                    ),
                );
            }
        }
    }

    // Each trail on its own: no missing events; the decision as received.
    for (decision_id, found) in &latest {
        let subject = format!("decision {decision_id}");
        for what in missing_events(&found.record) {
            report.problem(&subject, what);
        }
        if let (Some(received), Some(audited)) = (&checks.received, &found.record.decision) {
            if let Some(what) = forged_decision(
                audited,
                received.get(decision_id).map(Vec::as_slice),
                checks.hasher.as_ref(),
            ) {
                report.problem(&subject, what);
            }
        }
    }

    // The tail: the chain reaches every head kept outside Kafka.
    for expected in &checks.expect_heads {
        match expected {
            ExpectedHead::Hash(hash) => {
                let found = chain.values().any(|c| c.values().any(|h| h == hash));
                if !found {
                    report.problem(
                        "checkpoints",
                        format!(
                            "no checkpoint has the expected head hash {hash}: the trail ends \
                             before it (its newest records and checkpoints were deleted)"
                        ),
                    );
                }
            }
            ExpectedHead::Partitions(heads) => {
                for head in heads.values() {
                    let subject = format!("checkpoints of audit partition {}", head.partition);
                    let known = chain.get(&head.partition);
                    let newest = known.and_then(|c| c.keys().next_back().copied());
                    match known.and_then(|c| c.get(&head.sequence)) {
                        Some(hash) if *hash == head.hash => {}
                        Some(_) => report.problem(
                            &subject,
                            format!(
                                "checkpoint {} is not the one the head names ({}): replaced",
                                head.sequence, head.hash
                            ),
                        ),
                        None => report.problem(
                            &subject,
                            format!(
                                "truncated: the chain ends at checkpoint {} but the head kept \
                                 outside Kafka is checkpoint {} ({}, {} records): the newest \
                                 records and checkpoints were deleted",
                                newest.map_or("none".to_owned(), |n| n.to_string()),
                                head.sequence,
                                head.hash,
                                head.to_offset + 1
                            ),
                        ),
                    }
                }
            }
        }
    }

    // Completeness.
    if let Some(decisions) = &input.decisions {
        for decision_id in decisions {
            if !latest.contains_key(decision_id) {
                report.problem(
                    format!("decision {decision_id}"),
                    "received but has no audit record",
                );
            }
        }
    }
    if let Some(outcomes) = &input.outcomes {
        for outcome in outcomes {
            let subject = format!("decision {}", outcome.decision_id);
            match latest
                .get(&outcome.decision_id)
                .and_then(|l| l.record.outcome.as_ref())
            {
                None => report.problem(
                    &subject,
                    format!(
                        "outcome {:?} by {:?} is not in the audit trail",
                        outcome.status, outcome.decided_by
                    ),
                ),
                Some(recorded)
                    if recorded.decided_by != outcome.decided_by
                        || recorded.status != outcome.status
                        || recorded.final_action != outcome.final_action =>
                {
                    report.problem(
                        &subject,
                        format!(
                            "published outcome {:?}/{:?} differs from the audited {:?}/{:?}",
                            outcome.decided_by,
                            outcome.status,
                            recorded.decided_by,
                            recorded.status
                        ),
                    )
                }
                Some(_) => {}
            }
        }
    }
    report.problems.sort();
    report.problems.dedup();
    report
}

/// Ranges of numbers, `3..5, 9`.
fn ranges(numbers: &[i64]) -> String {
    let mut parts = Vec::new();
    let mut iter = numbers.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last = iter.next().expect("peeked");
        }
        parts.push(if first == last {
            first.to_string()
        } else {
            format!("{first}..{last}")
        });
    }
    parts.join(", ")
}

/// The gaps in each service's numbered events in a record's timeline. A sequence counts as
/// present when its event is in the timeline, or the audit noted it refused (an authenticated
/// event: a note, or the summary's omitted range).
pub fn missing_events(record: &AuditRecord) -> Vec<String> {
    let mut present: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    let mut omitted: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for entry in &record.timeline {
        if entry.service != AUDIT_SERVICE {
            present
                .entry(entry.service.as_str())
                .or_default()
                .insert(entry.sequence);
            continue;
        }
        if entry.kind == REFUSED
            && entry.attributes.get("authenticated").map(String::as_str) == Some("true")
        {
            let claimed = (
                entry.attributes.get("claimed_service"),
                entry
                    .attributes
                    .get("claimed_sequence")
                    .and_then(|s| s.parse::<i64>().ok()),
            );
            if let (Some(service), Some(sequence)) = claimed {
                omitted
                    .entry(service.clone())
                    .or_default()
                    .push((sequence, sequence));
            }
        } else if entry.kind == REFUSED_SUMMARY {
            for (name, value) in &entry.attributes {
                if let (Some(service), Some(range)) =
                    (name.strip_prefix("omitted."), parse_range(value))
                {
                    omitted.entry(service.to_owned()).or_default().push(range);
                }
            }
        }
    }
    let mut problems = Vec::new();
    for (service, sequences) in &present {
        let accounted = |n: i64| {
            sequences.contains(&n)
                || omitted
                    .get(*service)
                    .is_some_and(|r| r.iter().any(|(a, b)| (*a..=*b).contains(&n)))
        };
        let highest = sequences.iter().copied().max().unwrap_or(0);
        let missing: Vec<i64> = (1..highest).filter(|n| !accounted(*n)).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "missing events: {service} events {} are not in the trail (it holds {service} \
                 events up to {highest}): deleted or never ingested",
                ranges(&missing)
            ));
        }
    }
    let numbered_assignment = present
        .get("assignment")
        .is_some_and(|s| s.iter().any(|n| *n > 0));
    if numbered_assignment && !present.contains_key("router") {
        problems.push(
            "missing events: the trail holds the assignment service's events but not the \
             router's (the ROUTED event)"
                .to_owned(),
        );
    }
    problems
}

/// The decision with its sensitive values as the trail keeps them (hashed with the audit's key),
/// or left out (`***`) on both sides without it.
fn comparable(decision: &Decision, hasher: Option<&Hasher>, audited: bool) -> Decision {
    match (hasher, audited) {
        (Some(_), true) => decision.clone(),
        (Some(hasher), false) => hasher.hashed(decision),
        (None, _) => {
            let mut decision = decision.clone();
            for key in &decision.sensitive_fields {
                if let Some(value) = decision.context.get_mut(key) {
                    *value = "***".into();
                }
            }
            decision
        }
    }
}

/// The fields in which two decisions differ.
fn differences(a: &Decision, b: &Decision) -> Vec<&'static str> {
    let mut fields = Vec::new();
    let mut differ = |name, same: bool| {
        if !same {
            fields.push(name);
        }
    };
    differ("decision_id", a.decision_id == b.decision_id);
    differ("workflow", a.workflow == b.workflow);
    differ("subject", a.subject == b.subject);
    differ("action", a.action == b.action);
    differ(
        "confidence",
        a.confidence.to_bits() == b.confidence.to_bits(),
    );
    differ(
        "risk_score",
        a.risk_score.map(f64::to_bits) == b.risk_score.map(f64::to_bits),
    );
    differ(
        "amount",
        a.amount.map(f64::to_bits) == b.amount.map(f64::to_bits),
    );
    differ("priority", a.priority == b.priority);
    differ("producer", a.producer == b.producer);
    differ("model_name", a.model_name == b.model_name);
    differ("model_version", a.model_version == b.model_version);
    differ(
        "features",
        a.features.len() == b.features.len()
            && a.features
                .iter()
                .zip(&b.features)
                .all(|((ka, va), (kb, vb))| ka == kb && va.to_bits() == vb.to_bits()),
    );
    differ("context", a.context == b.context);
    differ("sensitive_fields", a.sensitive_fields == b.sensitive_fields);
    differ("created_at", a.created_at == b.created_at);
    differ("sla_ms", a.sla_ms == b.sla_ms);
    fields
}

/// Why the trail's decision is not one of those received with its id, if it is not.
fn forged_decision(
    audited: &Decision,
    received: Option<&[Decision]>,
    hasher: Option<&Hasher>,
) -> Option<String> {
    let Some(received) = received.filter(|r| !r.is_empty()) else {
        return Some(
            "the trail holds a decision that was never published on the decisions topic".into(),
        );
    };
    let audited = comparable(audited, hasher, true);
    let mut closest: Option<Vec<&'static str>> = None;
    for decision in received {
        let fields = differences(&audited, &comparable(decision, hasher, false));
        if fields.is_empty() {
            return None;
        }
        if closest.as_ref().is_none_or(|c| fields.len() < c.len()) {
            closest = Some(fields);
        }
    }
    Some(format!(
        "forged decision: the decision in the trail differs from the one received on the \
         decisions topic in {}{}",
        closest.unwrap_or_default().join(", "),
        if hasher.is_none() {
            " (sensitive values not compared: no hash_key)"
        } else {
            ""
        }
    ))
}
