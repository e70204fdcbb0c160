//! Size bounds: what one lifecycle event may add to an audit record, and the largest audit record,
//! feedback record and checkpoint those limits allow — so that every output provably fits the
//! producer's `message.max.bytes` (less its margin) and an event that would break that is refused
//! at the input instead of failing the transaction for ever.
//!
//! Sizes are the exact lengths of the records' Avro binary datums (`hitl_schema::binary`: zig-zag
//! varints, a string as its length then its bytes, a map or array as one block with a count then
//! the `0` that ends it), computed from the values without encoding them. The bounds of whole
//! records add the largest size of every field; a test encodes records with every field at its
//! largest and checks that they stay within.

use hitl_schema::{Decision, LifecycleKind, Outcome, TimelineEntry};

/// The single-object framing (`C3 01` and the 8-byte fingerprint) or the Confluent one (5 bytes).
pub const FRAMING_BYTES: usize = 10;
/// The `traceparent` header of an output (`traceparent` and a 55-byte W3C value).
pub const HEADERS_BYTES: usize = 11 + 64;
/// The most bytes of a `route`, `policy_rule` or `policy_version` (they become record fields of
/// their own besides the timeline entry that carries them).
pub const MAX_LABEL_BYTES: usize = 256;
/// The most reviewers an outcome may name (each becomes a 27-byte pseudonym in the feedback).
pub const MAX_REVIEWERS: usize = 64;
/// A reviewer pseudonym: `rv-` and 24 hex digits.
const PSEUDONYM_BYTES: usize = 27;
/// An audit key id (`hitl_runtime::auth` allows 128 characters).
pub const MAX_KEY_ID_BYTES: usize = 128;
/// The longest attribute value in a refusal note (longer claims are cut).
pub const NOTE_VALUE_BYTES: usize = 128;

/// The bytes of a zig-zag varint.
pub fn varint(value: i64) -> usize {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let mut len = 1;
    while zigzag >= 0x80 {
        zigzag >>= 7;
        len += 1;
    }
    len
}

fn len_prefix(len: usize) -> usize {
    varint(len as i64)
}

/// An Avro string.
pub fn string(value: &str) -> usize {
    len_prefix(value.len()) + value.len()
}

/// A `["null", "string"]` union.
pub fn optional(value: Option<&str>) -> usize {
    1 + value.map_or(0, string)
}

/// A `["null", T]` union of a `double` or `long`.
fn optional_number<T>(value: Option<T>, bytes: usize) -> usize {
    1 + value.map_or(0, |_| bytes)
}

fn block(count: usize, items: usize) -> usize {
    if count == 0 {
        1
    } else {
        len_prefix(count) + items + 1
    }
}

/// A map of strings.
pub fn string_map<'a>(map: impl ExactSizeIterator<Item = (&'a String, &'a String)>) -> usize {
    let count = map.len();
    block(count, map.map(|(k, v)| string(k) + string(v)).sum())
}

/// An array of strings.
pub fn string_array<'a>(items: impl ExactSizeIterator<Item = &'a String>) -> usize {
    let count = items.len();
    block(count, items.map(|s| string(s)).sum())
}

/// A timeline entry's datum.
pub fn entry(entry: &TimelineEntry) -> usize {
    string(&entry.event_id)
        + string(&entry.kind)
        + string(&entry.service)
        + varint(entry.event_time)
        + varint(entry.sequence)
        + optional(entry.reviewer_id.as_deref())
        + optional(entry.assignment_id.as_deref())
        + optional(entry.reason.as_deref())
        + string_map(entry.attributes.iter())
}

/// A decision's datum (as the audit stores it: call it on the hashed decision).
pub fn decision(decision: &Decision) -> usize {
    string(&decision.decision_id)
        + string(&decision.workflow)
        + string(&decision.subject)
        + string(&decision.action)
        + 8
        + optional_number(decision.risk_score, 8)
        + optional_number(decision.amount, 8)
        + optional(decision.priority.as_deref())
        + string(&decision.producer)
        + string(&decision.model_name)
        + optional(decision.model_version.as_deref())
        + block(
            decision.features.len(),
            decision.features.keys().map(|k| string(k) + 8).sum(),
        )
        + string_map(decision.context.iter())
        + string_array(decision.sensitive_fields.iter())
        + varint(decision.created_at)
        + decision.sla_ms.map_or(1, |sla| 1 + varint(sla))
}

/// An outcome's datum.
pub fn outcome(outcome: &Outcome) -> usize {
    string(&outcome.decision_id)
        + string(&outcome.final_action)
        + 1
        + 1
        + string_array(outcome.reviewer_ids.iter())
        + string(&outcome.policy_rule)
        + string(&outcome.policy_version)
        + varint(outcome.decided_at)
        + varint(outcome.time_to_decision_ms)
        + string(&outcome.workflow)
        + optional(outcome.rationale.as_deref())
}

/// A string of at most `max` bytes.
fn string_up_to(max: usize) -> usize {
    len_prefix(max) + max
}

/// Limits on what one event may add to a trail, and on a trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A decision id (the record key of every output).
    pub max_id_bytes: usize,
    /// One timeline entry, and one outcome.
    pub max_entry_bytes: usize,
    /// The decision as the audit stores it (sensitive values hashed).
    pub max_decision_bytes: usize,
    /// Entries in one timeline (lifecycle events; the audit's refusal notes are bounded apart).
    pub max_timeline_entries: usize,
    /// Bytes of one timeline's entries.
    pub max_timeline_bytes: usize,
    /// Refusal notes kept one by one in a trail; later refusals are only counted in its summary.
    pub max_notes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_id_bytes: 256,
            max_entry_bytes: 16 * 1024,
            max_decision_bytes: 128 * 1024,
            max_timeline_entries: 256,
            max_timeline_bytes: 512 * 1024,
            max_notes: 16,
        }
    }
}

/// Whether an event is one a trail must always have room for: what routes, decides, labels or ends
/// a decision. The others (queued, assigned, revoked, escalated, rejected verdicts, renewals and
/// deferrals) can repeat without bound and may fill only `GENERAL_SHARE` of a timeline.
pub fn essential(kind: LifecycleKind, verdict: Option<&str>) -> bool {
    match kind {
        LifecycleKind::Routed
        | LifecycleKind::QaSampled
        | LifecycleKind::SlaBreached
        | LifecycleKind::Outcome
        | LifecycleKind::DeadLettered => true,
        LifecycleKind::Verdict => matches!(verdict, Some("APPROVE" | "REJECT" | "AMEND")),
        _ => false,
    }
}

/// The share of a timeline (entries and bytes, in quarters) that events which are not essential
/// may fill; the rest is kept for the essential ones.
pub const GENERAL_QUARTERS: usize = 3;

impl Limits {
    /// The most bytes of one refusal note (an entry the audit writes: its id, kind, `audit`, the
    /// reason, and at most 8 attributes of at most `NOTE_VALUE_BYTES`).
    pub fn note_bytes(&self) -> usize {
        let id = string_up_to(self.max_id_bytes + 48);
        let small = string_up_to(64);
        let attribute = string_up_to(24) + string_up_to(NOTE_VALUE_BYTES);
        id + small + small + 10 + 10 + 1 + 1 + (1 + small) + 3 + NOTE_ATTRIBUTES * attribute
    }

    /// The most bytes of the refusal summary entry (counts per reason, omitted sequences per
    /// service).
    pub fn summary_bytes(&self) -> usize {
        let id = string_up_to(self.max_id_bytes + 48);
        let small = string_up_to(64);
        let attribute = string_up_to(40) + string_up_to(48);
        id + small + small + 10 + 10 + 1 + 1 + (1 + small) + 3 + SUMMARY_ATTRIBUTES * attribute
    }

    /// The largest audit record's value plus key and headers.
    pub fn record_bound(&self) -> usize {
        let timeline = 10
            + self.max_timeline_bytes
            + self.max_notes * self.note_bytes()
            + self.summary_bytes()
            + 1;
        FRAMING_BYTES
            + string_up_to(self.max_id_bytes) // decision_id
            + 10 // version
            + 1 + self.max_decision_bytes
            + 3 * (1 + string_up_to(MAX_LABEL_BYTES)) // route, policy_rule, policy_version
            + timeline
            + 1 + self.max_entry_bytes // outcome
            + string_up_to(64) // content_hash
            + 1 + string_up_to(64) // prev_hash
            + string_up_to(128) // signature
            + string_up_to(MAX_KEY_ID_BYTES)
            + 10 // written_at
            + self.max_id_bytes // the record's key
            + HEADERS_BYTES
    }

    /// The largest feedback record's value plus key and headers. Its model fields (workflow,
    /// model, version, features, predicted action, confidence, created_at, decision_id) are fields
    /// of the stored decision, so together at most `max_decision_bytes`; the label action and
    /// policy version come from an outcome or a timeline entry.
    pub fn feedback_bound(&self) -> usize {
        FRAMING_BYTES
            + self.max_decision_bytes
            + self.max_entry_bytes // label_action
            + string_up_to(16) // label_status
            + 1 + 1 // label_source, overridden
            + block(MAX_REVIEWERS, MAX_REVIEWERS * string_up_to(PSEUDONYM_BYTES))
            + 10 // review_latency_ms
            + self.max_entry_bytes // policy_version
            + 10 + 10 // labeled_at, and the optional model_version's union index slack
            + self.max_id_bytes
            + HEADERS_BYTES
    }

    /// The largest checkpoint of `entries` records' value plus key.
    pub fn checkpoint_bound(&self, entries: usize) -> usize {
        let entry = string_up_to(self.max_id_bytes) + 10 + string_up_to(64);
        FRAMING_BYTES
            + 5 // partition
            + 10 * 4 // sequence, from_offset, to_offset, record_count
            + string_up_to(64) // root_hash
            + 1 + string_up_to(64) // prev_checkpoint_hash
            + block(entries, entries * entry)
            + 10 // created_at
            + string_up_to(128)
            + string_up_to(MAX_KEY_ID_BYTES)
            + 11 // key: the partition number
    }

    /// Every problem with these limits against `output_limit` (the most bytes one output record
    /// may take) and `checkpoint_every_records`, each naming the field to change.
    pub fn problems(&self, output_limit: usize, checkpoint_every_records: usize) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_id_bytes < 16 {
            problems.push("service.max_id_bytes: must be at least 16".into());
        }
        if self.max_entry_bytes < 1024 {
            problems.push("service.max_entry_bytes: must be at least 1024".into());
        }
        if self.max_decision_bytes < 1024 {
            problems.push("service.max_decision_bytes: must be at least 1024".into());
        }
        if self.max_timeline_entries < 16 {
            problems.push("service.max_timeline_entries: must be at least 16".into());
        }
        if self.max_timeline_bytes < 4 * self.max_entry_bytes {
            problems.push(format!(
                "service.max_timeline_bytes: {} must hold at least 4 entries of \
                 service.max_entry_bytes ({})",
                self.max_timeline_bytes, self.max_entry_bytes
            ));
        }
        let record = self.record_bound();
        if record > output_limit {
            problems.push(format!(
                "service.max_timeline_bytes: the largest audit record these limits allow \
                 (service.max_timeline_bytes {} + service.max_decision_bytes {} + \
                 service.max_entry_bytes {} + {} refusal notes and fixed fields) takes {record} \
                 bytes, over the {output_limit} bytes one output may take \
                 (kafka.message_max_bytes less its margin): lower these limits or raise \
                 kafka.message_max_bytes",
                self.max_timeline_bytes,
                self.max_decision_bytes,
                self.max_entry_bytes,
                self.max_notes
            ));
        }
        let feedback = self.feedback_bound();
        if feedback > output_limit {
            problems.push(format!(
                "service.max_decision_bytes: the largest feedback record takes {feedback} bytes, \
                 over the {output_limit} bytes one output may take (kafka.message_max_bytes less \
                 its margin)"
            ));
        }
        let checkpoint = self.checkpoint_bound(checkpoint_every_records);
        if checkpoint > output_limit {
            problems.push(format!(
                "service.checkpoint_every_records: a checkpoint of {checkpoint_every_records} \
                 records with ids of service.max_id_bytes ({}) takes {checkpoint} bytes, over the \
                 {output_limit} bytes one output may take (kafka.message_max_bytes less its margin)",
                self.max_id_bytes
            ));
        }
        problems
    }
}

/// The attributes of a refusal note at most.
pub const NOTE_ATTRIBUTES: usize = 8;
/// The attributes of the refusal summary at most: a count, a count per reason (at most 12), the
/// omitted sequences of each service (at most 4 services).
pub const SUMMARY_ATTRIBUTES: usize = 1 + 12 + 4 + 2;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hitl_schema::{Codec, DecidedBy, OutcomeStatus};

    use super::*;

    fn datum<T: hitl_schema::Record>(value: &T) -> usize {
        let codec = Codec::single_object();
        let framed = codec.encode_to_vec("", value).unwrap();
        codec.datum(&framed).len()
    }

    fn sample_decision(text: usize, entries: usize) -> Decision {
        Decision {
            decision_id: "d".repeat(text),
            workflow: "w".repeat(text),
            subject: "s".repeat(text),
            action: "a".repeat(text),
            confidence: 0.5,
            risk_score: Some(0.1),
            amount: None,
            priority: Some("p".repeat(text)),
            producer: "x".repeat(text),
            model_name: String::new(),
            model_version: None,
            features: (0..entries).map(|i| (format!("f{i}"), i as f64)).collect(),
            context: (0..entries)
                .map(|i| (format!("c{i}"), "v".repeat(text)))
                .collect(),
            sensitive_fields: (0..entries).map(|i| format!("c{i}")).collect(),
            created_at: 1_800_000_000_000,
            sla_ms: Some(-5),
        }
    }

    #[test]
    fn sizes_are_the_exact_lengths_of_the_datums() {
        for (text, entries) in [(0, 0), (1, 1), (70, 3), (200, 40), (20_000, 2)] {
            let decision = sample_decision(text, entries);
            assert_eq!(
                super::decision(&decision),
                datum(&decision),
                "{text} {entries}"
            );
            let outcome = Outcome {
                decision_id: "d".repeat(text),
                final_action: "a".repeat(text),
                status: OutcomeStatus::Amended,
                decided_by: DecidedBy::Quorum,
                reviewer_ids: (0..entries).map(|i| format!("r{i}")).collect(),
                policy_rule: "r".repeat(text),
                policy_version: String::new(),
                decided_at: -1,
                time_to_decision_ms: 1 << 40,
                workflow: "w".into(),
                rationale: (text > 1).then(|| "why".repeat(text)),
            };
            assert_eq!(super::outcome(&outcome), datum(&outcome));
        }
    }

    #[test]
    fn entry_sizes_match_the_encoded_timeline() {
        use hitl_schema::AuditRecord;
        let entries: Vec<TimelineEntry> = (0..5)
            .map(|i| TimelineEntry {
                event_id: format!("e{i}").repeat(i * 30),
                kind: "VERDICT".into(),
                service: "assignment".into(),
                event_time: 1_800_000_000_000 + i as i64,
                sequence: i as i64,
                reviewer_id: (i % 2 == 0).then(|| "ann".into()),
                assignment_id: None,
                reason: Some("x".repeat(i * 100)),
                attributes: (0..i)
                    .map(|j| (format!("k{j}"), "v".repeat(j * 50)))
                    .collect::<BTreeMap<_, _>>(),
            })
            .collect();
        let record = |timeline: Vec<TimelineEntry>| AuditRecord {
            decision_id: "d".into(),
            version: 1,
            decision: None,
            route: None,
            policy_rule: None,
            policy_version: None,
            timeline,
            outcome: None,
            content_hash: String::new(),
            prev_hash: None,
            signature: String::new(),
            key_id: String::new(),
            written_at: 0,
        };
        let empty = datum(&record(vec![]));
        let with = datum(&record(entries.clone()));
        let summed: usize = entries.iter().map(entry).sum();
        // One block: its count and the entries, in place of the empty array's single 0.
        assert_eq!(with - empty, summed + varint(entries.len() as i64));
    }

    #[test]
    fn the_default_limits_fit_a_one_megabyte_producer_limit() {
        let limits = Limits::default();
        let output_limit = 1_000_000 - 16 * 1024;
        assert_eq!(limits.problems(output_limit, 1000), Vec::<String>::new());
        eprintln!(
            "bounds: record {} feedback {} checkpoint(1000) {} of {output_limit}",
            limits.record_bound(),
            limits.feedback_bound(),
            limits.checkpoint_bound(1000)
        );
        let big = Limits {
            max_timeline_bytes: 2 * 1024 * 1024,
            ..limits
        };
        let problems = big.problems(output_limit, 1000);
        assert!(
            problems[0].starts_with("service.max_timeline_bytes:"),
            "{problems:?}"
        );
        let problems = limits.problems(output_limit, 100_000);
        assert!(
            problems[0].starts_with("service.checkpoint_every_records:"),
            "{problems:?}"
        );
    }
}
