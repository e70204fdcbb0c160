//! The chaos suite's independent verifier: reads the raw topics at the end of a run and checks
//! what the platform promises, record by record. It shares nothing with the services but the
//! public record schemas (`hitl-schema`) and the broker: no service core, no runtime helper.
//!
//! Checks (each failure is a [`Violation`] naming the decision):
//! - exactly one final outcome per published decision (`missing_outcome`, `duplicate_outcome`,
//!   `conflicting_outcomes`), none for anything else (`unexpected_outcome`); a decision without
//!   one is not a violation only when it is set aside by design (a QUEUED `set_aside=true` with
//!   no ASSIGNED or `set_aside=false` after it and no lease open, its pool holds on an SLA
//!   breach, it is at the highest tier and every reviewer eligible there has held a lease on
//!   it): those are reported apart, waiting for an eligible reviewer to join;
//! - at most one label per human outcome and one per QA sample, a label for every human outcome,
//!   agreeing with it (`duplicate_label`, `missing_label`, `label_mismatch`, `unexpected_label`);
//! - no decision actively leased to more reviewers than its quorum (`double_lease`), no lease
//!   handed out twice (`lease_replayed`, work redone from a stale state): a lease is
//!   open from its ASSIGNED lifecycle event to its REVOKED event or the holder's accepted verdict,
//!   in the decision's own (single-partition, committed) lifecycle order, so a handover whose
//!   REVOKED precedes the new ASSIGNED is no overlap; the assignments topic must carry exactly the
//!   leases the lifecycle records (`assignment_mismatch`);
//! - every outcome agrees with what produced it: AUTO with the router's ROUTED
//!   (`auto_mismatch`); HUMAN / QUORUM with accepted VERDICT events of exactly its reviewers, each
//!   on a live lease, sent by that reviewer on `hitl.verdicts` before its lease's expiry plus grace
//!   by the broker's append time, by reviewers holding the roles of the tier the item had reached
//!   (`human_mismatch`, `verdict_on_closed_lease`, `late_verdict_accepted`, `vote_below_tier`);
//!   votes of reviewers an escalation discarded (the ESCALATED event's `votes_discarded`) stop
//!   counting there;
//!   SLA_FALLBACK with the pool's configured fallback, not before the SLA deadline
//!   (`fallback_mismatch`, `fallback_before_sla`); SLA_BREACHED not before the deadline
//!   (`breach_before_sla`);
//! - no verdict appended in time is rejected because a timer overtook it
//!   (`in_time_verdict_rejected`: appended before its lease's expiry + grace, or before the SLA
//!   deadline that the fallback decided at). "Appended" is the verdict record's broker append
//!   time (`hitl.verdicts` is a `LogAppendTime` topic; records with the writer's timestamp are
//!   `verdicts_not_log_append_time`), not the reviewer app's send time: a verdict sent during a
//!   broker pause is appended after it, and rejecting it as `lease_expired` is right. SLA
//!   deadlines are the ones in force (the QUEUED event's `sla_deadline` when the pool bounded the
//!   request's);
//! - the dead-letter topic holds exactly the poison records, once each (`dlq_unexpected`,
//!   `dlq_missing`, `dlq_duplicate`);
//! - `hitl-audit verify` is clean (`audit_verify`).
//!
//! Topics written by the services' transactions are read `read_committed`; each is read again
//! `read_uncommitted` only to count raw repeats (aborted or duplicated records), for information.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt::Write as _,
    time::{Duration, Instant},
};

use hitl_schema::{
    AssignmentEvent, AssignmentKind, Codec, DecidedBy, FeedbackRecord, LabelSource, LifecycleEvent,
    LifecycleKind, Outcome, OutcomeStatus, ReviewKind, ReviewRequest, Verdict, VerdictKind,
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::BorrowedMessage,
    ClientConfig, Message, Offset, TopicPartitionList,
};
use serde::{Deserialize, Serialize};

/// The topics the verifier reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicNames {
    pub decisions_dlq: String,
    pub review_requests: String,
    pub assignments: String,
    pub verdicts: String,
    pub outcomes: String,
    pub lifecycle: String,
    pub feedback: String,
}

/// What the verifier needs to know of a pool's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolRules {
    pub verdict_grace_ms: i64,
    /// The roles each escalation tier adds, lowest first.
    pub tiers: Vec<Vec<String>>,
    /// The SLA fallback (status, final action; `None` action = the decision's own), if any.
    pub fallback: Option<(OutcomeStatus, Option<String>)>,
}

/// A fault the driver injected, for placing violations in time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    pub at_ms: i64,
    pub what: String,
}

/// Everything the verifier is told by the run (the rest it reads from the topics).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Expectations {
    pub bootstrap: String,
    pub topics: TopicNames,
    /// Every valid decision published (at least once).
    pub decisions: BTreeSet<String>,
    /// The decisions the publisher sent a second time (a producer's retry).
    #[serde(default)]
    pub republished: BTreeSet<String>,
    /// Key → kind of every poison record published to the decisions topic.
    pub poison: BTreeMap<String, String>,
    pub pools: BTreeMap<String, PoolRules>,
    pub default_pool: PoolRules,
    /// Reviewer → roles.
    pub roster: BTreeMap<String, Vec<String>>,
    pub faults: Vec<Fault>,
    /// When the run started (ms since the epoch), for relative times in the report.
    pub started_ms: i64,
    /// The `hitl-audit verify` command line (program first), if it is to be run.
    pub audit_verify: Option<Vec<String>>,
}

/// One broken promise.
#[derive(Debug, Clone)]
pub struct Violation {
    pub class: &'static str,
    pub decision_id: String,
    pub detail: String,
    /// When it happened (ms since the epoch, a broker timestamp), if known.
    pub at_ms: Option<i64>,
}

/// What the verifier found.
#[derive(Debug, Default)]
pub struct Report {
    pub counts: BTreeMap<String, u64>,
    pub violations: Vec<Violation>,
    pub audit_verify: Option<(bool, String)>,
    /// Decisions without an outcome, set aside by design: quorum items at the highest tier of a
    /// `hold` pool whose eligible reviewers are all excluded (they voted, deferred, escalated or
    /// let leases expire); they wait for an eligible reviewer to join the roster.
    pub set_aside: Vec<String>,
    /// Decision id → its records, printed for the first violations of each class.
    timelines: HashMap<String, String>,
}

impl Report {
    pub fn violations_by_class(&self) -> BTreeMap<&'static str, usize> {
        let mut by = BTreeMap::new();
        for violation in &self.violations {
            *by.entry(violation.class).or_default() += 1;
        }
        by
    }

    /// The report as text: counts, violations by class, then up to `examples` of each class with
    /// the decision's records and the fault that preceded it.
    pub fn render(&self, expectations: &Expectations, examples: usize) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "== chaos verifier");
        for (name, count) in &self.counts {
            let _ = writeln!(text, "  {name:<44} {count:>9}");
        }
        if let Some((clean, report)) = &self.audit_verify {
            let _ = writeln!(
                text,
                "  hitl-audit verify: {}",
                if *clean { "clean" } else { "FAILED" }
            );
            if !clean {
                for line in report.lines().take(30) {
                    let _ = writeln!(text, "    {line}");
                }
            }
        }
        if !self.set_aside.is_empty() {
            let _ = writeln!(
                text,
                "  set aside, waiting for an eligible reviewer (not a violation: hold pool, every eligible reviewer excluded): {}",
                self.set_aside.join(" ")
            );
        }
        let by = self.violations_by_class();
        let _ = writeln!(text, "== violations: {}", self.violations.len());
        for (class, count) in &by {
            let _ = writeln!(text, "  {class:<44} {count:>9}");
        }
        let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
        for violation in &self.violations {
            let seen = shown.entry(violation.class).or_default();
            *seen += 1;
            if *seen > examples {
                continue;
            }
            let _ = writeln!(
                text,
                "\n-- {} #{}: {}\n   {}",
                violation.class, seen, violation.decision_id, violation.detail
            );
            if let Some(at) = violation.at_ms {
                let _ = writeln!(
                    text,
                    "   at +{:.1}s; {}",
                    (at - expectations.started_ms) as f64 / 1000.0,
                    preceding_faults(expectations, at)
                );
            }
            if let Some(timeline) = self.timelines.get(&violation.decision_id) {
                text.push_str(timeline);
            }
        }
        for (class, count) in &by {
            if *count > examples {
                let ids: Vec<&str> = self
                    .violations
                    .iter()
                    .filter(|v| v.class == *class)
                    .skip(examples)
                    .take(50)
                    .map(|v| v.decision_id.as_str())
                    .collect();
                let _ = writeln!(text, "\n{class}: more decisions: {}", ids.join(" "));
            }
        }
        text
    }
}

/// The faults in the 30 s before `at`, newest first.
fn preceding_faults(expectations: &Expectations, at: i64) -> String {
    let recent: Vec<String> = expectations
        .faults
        .iter()
        .rev()
        .filter(|fault| fault.at_ms <= at && at - fault.at_ms <= 30_000)
        .take(4)
        .map(|fault| {
            format!(
                "{} at +{:.1}s ({:.1}s before)",
                fault.what,
                (fault.at_ms - expectations.started_ms) as f64 / 1000.0,
                (at - fault.at_ms) as f64 / 1000.0
            )
        })
        .collect();
    if recent.is_empty() {
        "no fault in the 30 s before".into()
    } else {
        format!("preceded by: {}", recent.join("; "))
    }
}

// ------------------------------------------------------------------------------------ reading

/// A reader's context: reaching a partition's end is how a scan knows it is done, not an error
/// worth logging.
struct QuietContext;

impl rdkafka::ClientContext for QuietContext {
    fn error(&self, error: KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode;
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::warn!(%error, %reason, "verifier: librdkafka error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

/// Reads every partition of `topic` from its start to its current end, calling `each` per record.
fn scan(
    bootstrap: &str,
    topic: &str,
    read_committed: bool,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> anyhow::Result<u64> {
    let consumer: BaseConsumer<QuietContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "hitl-chaos-verifier")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create_with_context(QuietContext)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    anyhow::ensure!(!partitions.is_empty(), "{topic}: no partitions");
    let mut assignment = TopicPartitionList::new();
    let mut done: HashMap<i32, bool> = HashMap::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for &partition in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(30))?;
        done.insert(partition, high <= low);
        ends.insert(partition, high);
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let mut records = 0u64;
    while done.values().any(|d| !d) {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "{topic}: not read to its end within 10 minutes"
        );
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                records += 1;
                each(&message);
                // The high watermark is the offset after the last record.
                if message.offset() + 1 >= ends[&message.partition()] {
                    done.insert(message.partition(), true);
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                done.insert(partition, true);
            }
            Some(Err(error)) => tracing::warn!(%error, topic, "verifier read"),
            None => {}
        }
    }
    Ok(records)
}

fn header<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    use rdkafka::message::Headers;
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
}

fn timestamp(message: &BorrowedMessage<'_>) -> i64 {
    message.timestamp().to_millis().unwrap_or(0)
}

/// The broker's append time of a record on a `LogAppendTime` topic; `None` on a topic that keeps
/// the writer's clock (`CreateTime`), where the record's timestamp is the client's send time.
fn append_time(message: &BorrowedMessage<'_>) -> Option<i64> {
    match message.timestamp() {
        rdkafka::Timestamp::LogAppendTime(at) => Some(at),
        _ => None,
    }
}

fn key_of(message: &BorrowedMessage<'_>) -> String {
    String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned()
}

/// Counts a topic's records and raw repeats (same key and value) at read_uncommitted.
fn raw_repeats(bootstrap: &str, topic: &str) -> anyhow::Result<(u64, u64)> {
    let mut seen: HashSet<u64> = HashSet::new();
    let mut repeats = 0u64;
    let total = scan(bootstrap, topic, false, |message| {
        let mut bytes = message.key().unwrap_or_default().to_vec();
        bytes.push(0xff);
        bytes.extend_from_slice(message.payload().unwrap_or_default());
        if !seen.insert(xxhash_rust::xxh3::xxh3_64(&bytes)) {
            repeats += 1;
        }
    })?;
    Ok((total, repeats))
}

// ------------------------------------------------------------------------------------ model

/// One lifecycle event as the verifier keeps it.
#[derive(Debug, Clone)]
struct Event {
    /// The record's broker timestamp.
    ts: i64,
    partition: i32,
    offset: i64,
    kind: LifecycleKind,
    service: String,
    event_time: i64,
    reviewer: Option<String>,
    assignment: Option<String>,
    reason: Option<String>,
    attributes: BTreeMap<String, String>,
    outcome: Option<Outcome>,
    /// From ROUTED: the decision's recommended action.
    action: Option<String>,
}

impl Event {
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }
    fn attribute_i64(&self, name: &str) -> Option<i64> {
        self.attribute(name)?.parse().ok()
    }
}

#[derive(Debug, Clone)]
struct Request {
    kind: ReviewKind,
    pool: String,
    quorum: i32,
    sla_deadline: i64,
    required_roles: Vec<String>,
}

#[derive(Debug, Clone)]
struct SentVerdict {
    ts: i64,
    assignment: String,
    reviewer: String,
    kind: VerdictKind,
    amended_action: Option<String>,
}

#[derive(Debug, Clone)]
struct AssignmentRecord {
    ts: i64,
    kind: AssignmentKind,
    reason: Option<String>,
    reviewer: String,
    assignment: String,
    lease_expires_at: i64,
}

#[derive(Debug, Default)]
struct Decision {
    events: Vec<Event>,
    outcomes: Vec<(i64, Outcome)>,
    requests: Vec<Request>,
    labels: Vec<(i64, FeedbackRecord)>,
    verdicts: Vec<SentVerdict>,
    assignments: Vec<AssignmentRecord>,
}

impl Decision {
    fn request(&self, kind: ReviewKind) -> Option<&Request> {
        self.requests.iter().find(|r| r.kind == kind)
    }
    fn routed(&self) -> Option<&Event> {
        self.events.iter().find(|e| e.kind == LifecycleKind::Routed)
    }
}

fn verdict_name(kind: VerdictKind) -> &'static str {
    match kind {
        VerdictKind::Approve => "APPROVE",
        VerdictKind::Reject => "REJECT",
        VerdictKind::Amend => "AMEND",
        VerdictKind::Defer => "DEFER",
        VerdictKind::Escalate => "ESCALATE",
        VerdictKind::Renew => "RENEW",
    }
}

fn status_of(verdict: &str) -> Option<OutcomeStatus> {
    match verdict {
        "APPROVE" => Some(OutcomeStatus::Approved),
        "REJECT" => Some(OutcomeStatus::Rejected),
        "AMEND" => Some(OutcomeStatus::Amended),
        _ => None,
    }
}

fn short(id: &str) -> &str {
    // Lease ids are `<decision>#<attempt>.<hmac>`: the attempt is enough to tell them apart.
    match id.split_once('#') {
        Some((_, rest)) => rest.split('.').next().unwrap_or(rest),
        None => id,
    }
}

fn timeline(decision: &Decision, started_ms: i64) -> String {
    let rel = |ts: i64| (ts - started_ms) as f64 / 1000.0;
    let mut lines: Vec<(i64, i32, String)> = Vec::new();
    for event in &decision.events {
        let mut line = format!(
            "   lifecycle p{}@{} +{:.3}s {} {}",
            event.partition,
            event.offset,
            rel(event.ts),
            event.service,
            event.kind.as_str()
        );
        if let Some(reviewer) = &event.reviewer {
            let _ = write!(line, " reviewer={reviewer}");
        }
        if let Some(lease) = &event.assignment {
            let _ = write!(line, " lease=#{}", short(lease));
        }
        if let Some(reason) = &event.reason {
            let _ = write!(line, " reason={reason:?}");
        }
        for (name, value) in &event.attributes {
            if name == "rationale" {
                continue;
            }
            if name == "lease_expires_at" {
                if let Ok(at) = value.parse::<i64>() {
                    let _ = write!(line, " expires=+{:.3}s", rel(at));
                    continue;
                }
            }
            let _ = write!(line, " {name}={value}");
        }
        if let Some(outcome) = &event.outcome {
            let _ = write!(
                line,
                " outcome={:?}/{:?}/{}/{:?}",
                outcome.decided_by, outcome.status, outcome.final_action, outcome.reviewer_ids
            );
        }
        lines.push((event.ts, 0, line));
    }
    for verdict in &decision.verdicts {
        lines.push((
            verdict.ts,
            1,
            format!(
                "   verdicts  +{:.3}s sent {} by {} lease=#{}{}",
                rel(verdict.ts),
                verdict_name(verdict.kind),
                verdict.reviewer,
                short(&verdict.assignment),
                verdict
                    .amended_action
                    .as_ref()
                    .map(|a| format!(" amended={a}"))
                    .unwrap_or_default()
            ),
        ));
    }
    for (ts, outcome) in &decision.outcomes {
        lines.push((
            *ts,
            2,
            format!(
                "   outcomes  +{:.3}s {:?} {:?} {} by {:?} decided_at=+{:.3}s",
                rel(*ts),
                outcome.decided_by,
                outcome.status,
                outcome.final_action,
                outcome.reviewer_ids,
                rel(outcome.decided_at)
            ),
        ));
    }
    for (ts, label) in &decision.labels {
        lines.push((
            *ts,
            3,
            format!(
                "   feedback  +{:.3}s {:?} label={} {}",
                rel(*ts),
                label.label_source,
                label.label_action,
                label.label_status
            ),
        ));
    }
    // Lifecycle lines keep their log order (their timestamps are the writer's); the others are
    // placed by time.
    let mut out = String::new();
    let mut others: Vec<&(i64, i32, String)> = lines.iter().filter(|l| l.1 != 0).collect();
    others.sort_by_key(|l| (l.0, l.1));
    let mut others = others.into_iter().peekable();
    for (ts, _, line) in lines.iter().filter(|l| l.1 == 0) {
        while let Some(other) = others.next_if(|o| o.0 < *ts) {
            out.push_str(&other.2);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    for other in others {
        out.push_str(&other.2);
        out.push('\n');
    }
    for record in &decision.assignments {
        let _ = writeln!(
            out,
            "   assignments +{:.3}s {:?} reviewer={} lease=#{}{} expires=+{:.3}s",
            rel(record.ts),
            record.kind,
            record.reviewer,
            short(&record.assignment),
            record
                .reason
                .as_ref()
                .map(|r| format!(" reason={r}"))
                .unwrap_or_default(),
            rel(record.lease_expires_at)
        );
    }
    out
}

// ------------------------------------------------------------------------------------ checks

/// Reads the topics and checks every promise; `Err` only when the topics cannot be read.
pub fn verify(expectations: &Expectations) -> anyhow::Result<Report> {
    let codec = Codec::single_object();
    let bootstrap = expectations.bootstrap.as_str();
    let topics = &expectations.topics;
    let mut report = Report::default();
    fn count(report: &mut Report, name: &str, by: u64) {
        *report.counts.entry(name.to_owned()).or_default() += by;
    }
    let mut decisions: HashMap<String, Decision> = HashMap::new();
    let mut undecodable: BTreeMap<&str, u64> = BTreeMap::new();

    // Lifecycle (committed): one partition per decision, so log order is the decision's order.
    scan(bootstrap, &topics.lifecycle, true, |message| {
        let Ok(event) = codec.decode::<LifecycleEvent>(message.payload().unwrap_or_default())
        else {
            *undecodable.entry("lifecycle").or_default() += 1;
            return;
        };
        let action = event.decision.as_ref().map(|d| d.action.clone());
        decisions
            .entry(event.decision_id.clone())
            .or_default()
            .events
            .push(Event {
                ts: timestamp(message),
                partition: message.partition(),
                offset: message.offset(),
                kind: event.kind,
                service: event.service,
                event_time: event.event_time,
                reviewer: event.reviewer_id,
                assignment: event.assignment_id,
                reason: event.reason,
                attributes: event.attributes,
                outcome: event.outcome,
                action,
            });
    })?;
    scan(bootstrap, &topics.review_requests, true, |message| {
        let Ok(request) = codec.decode::<ReviewRequest>(message.payload().unwrap_or_default())
        else {
            *undecodable.entry("review_requests").or_default() += 1;
            return;
        };
        decisions
            .entry(request.decision.decision_id.clone())
            .or_default()
            .requests
            .push(Request {
                kind: request.kind,
                pool: request.pool,
                quorum: request.quorum,
                sla_deadline: request.sla_deadline,
                required_roles: request.required_roles,
            });
    })?;
    scan(bootstrap, &topics.outcomes, true, |message| {
        let Ok(outcome) = codec.decode::<Outcome>(message.payload().unwrap_or_default()) else {
            *undecodable.entry("outcomes").or_default() += 1;
            return;
        };
        decisions
            .entry(outcome.decision_id.clone())
            .or_default()
            .outcomes
            .push((timestamp(message), outcome));
    })?;
    scan(bootstrap, &topics.feedback, true, |message| {
        let Ok(label) = codec.decode::<FeedbackRecord>(message.payload().unwrap_or_default())
        else {
            *undecodable.entry("feedback").or_default() += 1;
            return;
        };
        decisions
            .entry(label.decision_id.clone())
            .or_default()
            .labels
            .push((timestamp(message), label));
    })?;
    // Verdicts are the reviewer apps' own (not transactional) writes: read them all. A verdict
    // is judged at its broker append time (the topic is `LogAppendTime`): one the reviewer sent
    // during a broker pause is appended after it.
    let mut create_time_verdicts = 0u64;
    scan(bootstrap, &topics.verdicts, false, |message| {
        let Ok(verdict) = codec.decode::<Verdict>(message.payload().unwrap_or_default()) else {
            *undecodable.entry("verdicts").or_default() += 1;
            return;
        };
        let ts = append_time(message).unwrap_or_else(|| {
            create_time_verdicts += 1;
            timestamp(message)
        });
        decisions
            .entry(verdict.decision_id.clone())
            .or_default()
            .verdicts
            .push(SentVerdict {
                ts,
                assignment: verdict.assignment_id,
                reviewer: verdict.reviewer_id,
                kind: verdict.verdict,
                amended_action: verdict.amended_action,
            });
    })?;
    scan(bootstrap, &topics.assignments, true, |message| {
        let Ok(event) = codec.decode::<AssignmentEvent>(message.payload().unwrap_or_default())
        else {
            *undecodable.entry("assignments").or_default() += 1;
            return;
        };
        decisions
            .entry(event.decision_id.clone())
            .or_default()
            .assignments
            .push(AssignmentRecord {
                ts: timestamp(message),
                kind: event.kind,
                reason: event.reason,
                reviewer: event.reviewer_id,
                assignment: event.assignment_id,
                lease_expires_at: event.lease_expires_at,
            });
    })?;
    let mut dead_letters: BTreeMap<String, u64> = BTreeMap::new();
    let mut dead_letter_classes: BTreeMap<String, u64> = BTreeMap::new();
    scan(bootstrap, &topics.decisions_dlq, true, |message| {
        *dead_letters.entry(key_of(message)).or_default() += 1;
        let class = header(message, "hitl.error.class")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| "?".into());
        *dead_letter_classes.entry(class).or_default() += 1;
    })?;
    for (topic, n) in &undecodable {
        count(&mut report, &format!("undecodable records on {topic}"), *n);
    }
    let mut violations: Vec<Violation> = Vec::new();
    if create_time_verdicts > 0 {
        // Verdicts are judged at their append time; on a CreateTime topic the service and this
        // verifier would judge by the reviewer app's clock.
        violations.push(Violation {
            class: "verdicts_not_log_append_time",
            decision_id: "-".into(),
            detail: format!(
                "{create_time_verdicts} records on {} carry the writer's timestamp (CreateTime), not the broker's append time",
                topics.verdicts
            ),
            at_ms: None,
        });
    }

    let started = expectations.started_ms;
    let mut ids: Vec<&String> = decisions.keys().collect();
    ids.sort();
    count(
        &mut report,
        "decisions published (valid)",
        expectations.decisions.len() as u64,
    );
    count(
        &mut report,
        "poison records published",
        expectations.poison.len() as u64,
    );
    for id in ids {
        let decision = &decisions[id];
        let valid = expectations.decisions.contains(id);
        let before = violations.len();
        check_decision(
            expectations,
            id,
            decision,
            valid,
            &mut violations,
            &mut report.counts,
            &mut report.set_aside,
        );
        if violations.len() > before {
            report
                .timelines
                .insert(id.clone(), timeline(decision, started));
        }
    }
    for id in &expectations.decisions {
        if !decisions.contains_key(id) {
            violations.push(Violation {
                class: "missing_outcome",
                decision_id: id.clone(),
                detail: "no record of it on any topic (never routed)".into(),
                at_ms: None,
            });
        }
    }

    // The dead-letter topic: exactly the poison records, once each.
    count(
        &mut report,
        "dead letters",
        dead_letters.values().sum::<u64>(),
    );
    for (class, n) in &dead_letter_classes {
        count(&mut report, &format!("dead letters: {class}"), *n);
    }
    for (key, n) in &dead_letters {
        if !expectations.poison.contains_key(key) {
            violations.push(Violation {
                class: "dlq_unexpected",
                decision_id: key.clone(),
                detail: format!("{n} dead letter(s) for a record that was not poison"),
                at_ms: None,
            });
        } else if *n > 1 {
            violations.push(Violation {
                class: "dlq_duplicate",
                decision_id: key.clone(),
                detail: format!("{n} dead letters for one poison record"),
                at_ms: None,
            });
        }
    }
    for (key, kind) in &expectations.poison {
        if !dead_letters.contains_key(key) {
            violations.push(Violation {
                class: "dlq_missing",
                decision_id: key.clone(),
                detail: format!("poison record ({kind}) not dead-lettered"),
                at_ms: None,
            });
        }
    }

    // Raw repeats at read_uncommitted (aborted transactions' records and real duplicates).
    for (name, topic) in [
        ("outcomes", &topics.outcomes),
        ("lifecycle", &topics.lifecycle),
        ("feedback", &topics.feedback),
        ("assignments", &topics.assignments),
        ("dlq", &topics.decisions_dlq),
    ] {
        let (total, repeats) = raw_repeats(bootstrap, topic)?;
        count(
            &mut report,
            &format!("raw (read_uncommitted) {name} records"),
            total,
        );
        count(
            &mut report,
            &format!("raw (read_uncommitted) {name} repeats"),
            repeats,
        );
    }

    if let Some(command) = &expectations.audit_verify {
        let output = std::process::Command::new(&command[0])
            .args(&command[1..])
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let clean = output.status.code() == Some(0);
        if !clean {
            violations.push(Violation {
                class: "audit_verify",
                decision_id: "-".into(),
                detail: text.lines().take(5).collect::<Vec<_>>().join(" | "),
                at_ms: None,
            });
        }
        report.audit_verify = Some((clean, text));
    }
    report.violations = violations;
    Ok(report)
}

/// A lease as the lifecycle shows it.
#[derive(Debug, Clone)]
struct Lease {
    reviewer: String,
    expires_at: i64,
    open: bool,
    /// Why and when (broker time) it closed.
    closed: Option<(String, i64)>,
}

fn check_decision(
    expectations: &Expectations,
    id: &str,
    decision: &Decision,
    valid: bool,
    violations: &mut Vec<Violation>,
    counts: &mut BTreeMap<String, u64>,
    set_aside: &mut Vec<String>,
) {
    let mut count = |name: &str| *counts.entry(name.to_owned()).or_default() += 1;
    let mut violation = |class: &'static str, detail: String, at_ms: Option<i64>| {
        violations.push(Violation {
            class,
            decision_id: id.to_owned(),
            detail,
            at_ms,
        })
    };
    let review = decision.request(ReviewKind::Review);
    let qa = decision.request(ReviewKind::QaSample);
    if review.is_some() {
        count("sent to people (review requests)");
    }
    if qa.is_some() {
        count("QA samples");
    }
    let pool = review.or(qa).map(|r| r.pool.as_str()).unwrap_or("");
    let rules = expectations
        .pools
        .get(pool)
        .unwrap_or(&expectations.default_pool);
    let grace = rules.verdict_grace_ms;
    let quorum = review.map_or(1, |r| r.quorum.max(1)) as usize;
    // The SLA deadline in force: the request's, unless the pool bounded it (min_sla, max_sla):
    // then the QUEUED event records the one it used.
    let sla_deadline = decision
        .events
        .iter()
        .find(|e| e.kind == LifecycleKind::Queued)
        .and_then(|e| e.attribute_i64("sla_deadline"))
        .or(review.or(qa).map(|r| r.sla_deadline));
    let action = decision.routed().and_then(|e| e.action.clone());

    // Walk the decision's lifecycle in log order.
    let mut leases: BTreeMap<String, Lease> = BTreeMap::new();
    let mut level = 0usize;
    // Accepted deciding votes since the last quorum disagreement: (reviewer, verdict, amended).
    let mut votes: Vec<(String, String, Option<String>, i64)> = Vec::new();
    let mut level_at_outcome = None;
    let mut qa_labeled = false;
    for event in &decision.events {
        match event.kind {
            LifecycleKind::Routed => count("routed"),
            LifecycleKind::Assigned => {
                count("leases (ASSIGNED)");
                let (Some(lease), Some(reviewer)) = (&event.assignment, &event.reviewer) else {
                    violation(
                        "malformed_event",
                        "ASSIGNED without lease or reviewer".into(),
                        Some(event.ts),
                    );
                    continue;
                };
                if leases.contains_key(lease) {
                    violation(
                        "lease_replayed",
                        format!("lease #{} ASSIGNED twice", short(lease)),
                        Some(event.ts),
                    );
                }
                let open: Vec<(&String, &Lease)> = leases.iter().filter(|(_, l)| l.open).collect();
                if open.iter().any(|(_, l)| l.reviewer == *reviewer) {
                    violation(
                        "double_lease",
                        format!("{reviewer} given a second live lease #{}", short(lease)),
                        Some(event.ts),
                    );
                }
                if open.len() + 1 > quorum {
                    violation(
                        "double_lease",
                        format!(
                            "lease #{} to {reviewer} while {} (quorum {quorum})",
                            short(lease),
                            open.iter()
                                .map(|(id, l)| format!("#{} held by {}", short(id), l.reviewer))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        Some(event.ts),
                    );
                }
                leases.insert(
                    lease.clone(),
                    Lease {
                        reviewer: reviewer.clone(),
                        expires_at: event.attribute_i64("lease_expires_at").unwrap_or(i64::MAX),
                        open: true,
                        closed: None,
                    },
                );
            }
            LifecycleKind::Revoked => {
                let reason = event.reason.clone().unwrap_or_default();
                count(&format!("revocations: {reason}"));
                if let Some(lease) = event.assignment.as_ref().and_then(|l| leases.get_mut(l)) {
                    if lease.open {
                        lease.open = false;
                        lease.closed = Some((reason, event.ts));
                    }
                }
            }
            LifecycleKind::Escalated => {
                count("escalations");
                if let Some(next) = event.attribute_i64("level") {
                    level = next as usize;
                }
                if event
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("quorum_disagreement"))
                {
                    votes.clear();
                }
                // Votes of reviewers who lack the new tier's roles stop counting.
                if let Some(discarded) = event.attribute("votes_discarded") {
                    let discarded: BTreeSet<&str> = discarded.split(',').map(str::trim).collect();
                    votes.retain(|vote| !discarded.contains(vote.0.as_str()));
                }
            }
            LifecycleKind::SlaBreached => {
                count("SLA breaches");
                if let Some(deadline) = sla_deadline {
                    if event.event_time < deadline {
                        violation(
                            "breach_before_sla",
                            format!(
                                "SLA_BREACHED at {} ms before the deadline",
                                deadline - event.event_time
                            ),
                            Some(event.ts),
                        );
                    }
                }
            }
            LifecycleKind::Verdict => {
                let kind = event.attribute("verdict").unwrap_or("?").to_owned();
                count(&format!("verdicts accepted: {kind}"));
                let (Some(lease_id), Some(reviewer)) = (&event.assignment, &event.reviewer) else {
                    violation(
                        "malformed_event",
                        "VERDICT without lease or reviewer".into(),
                        Some(event.ts),
                    );
                    continue;
                };
                let sent = decision
                    .verdicts
                    .iter()
                    .filter(|v| {
                        v.assignment == *lease_id
                            && v.reviewer == *reviewer
                            && verdict_name(v.kind) == kind
                    })
                    .map(|v| v.ts)
                    .min();
                let Some(lease) = leases.get_mut(lease_id) else {
                    violation(
                        "verdict_on_closed_lease",
                        format!(
                            "{kind} by {reviewer} accepted on lease #{} never ASSIGNED",
                            short(lease_id)
                        ),
                        Some(event.ts),
                    );
                    continue;
                };
                if !lease.open {
                    violation(
                        "verdict_on_closed_lease",
                        format!(
                            "{kind} by {reviewer} accepted on lease #{} closed before ({:?})",
                            short(lease_id),
                            lease.closed.as_ref().map(|c| &c.0)
                        ),
                        Some(event.ts),
                    );
                }
                match sent {
                    None => violation(
                        "human_mismatch",
                        format!(
                            "{kind} by {reviewer} accepted but never sent on the verdicts topic"
                        ),
                        Some(event.ts),
                    ),
                    Some(sent) if sent > lease.expires_at.saturating_add(grace) => violation(
                        "late_verdict_accepted",
                        format!(
                            "{kind} by {reviewer} appended {} ms after lease #{} expiry + grace",
                            sent - lease.expires_at.saturating_add(grace),
                            short(lease_id)
                        ),
                        Some(event.ts),
                    ),
                    Some(_) => {}
                }
                if kind == "RENEW" {
                    if let Some(at) = event.attribute_i64("lease_expires_at") {
                        lease.expires_at = at;
                    }
                    continue;
                }
                lease.open = false;
                lease.closed = Some((format!("verdict {kind}"), event.ts));
                if event.attribute("qa_sample") == Some("true") {
                    if status_of(&kind).is_some() {
                        qa_labeled = true;
                    }
                } else if status_of(&kind).is_some() {
                    votes.push((
                        reviewer.clone(),
                        kind.clone(),
                        event.attribute("amended_action").map(str::to_owned),
                        event.ts,
                    ));
                }
            }
            LifecycleKind::VerdictRejected => {
                let reason = event.reason.clone().unwrap_or_default();
                count(&format!("verdicts rejected: {reason}"));
                let (Some(lease_id), Some(reviewer)) = (&event.assignment, &event.reviewer) else {
                    continue;
                };
                let kind = event.attribute("verdict").unwrap_or("?");
                let Some(sent) = decision
                    .verdicts
                    .iter()
                    .filter(|v| {
                        v.assignment == *lease_id
                            && v.reviewer == *reviewer
                            && verdict_name(v.kind) == kind
                    })
                    .map(|v| v.ts)
                    .min()
                else {
                    continue;
                };
                let Some(lease) = leases.get(lease_id) else {
                    continue;
                };
                if lease.reviewer != *reviewer {
                    continue;
                }
                let deadline = lease.expires_at.saturating_add(grace);
                let expired_by_timer = reason == "lease_expired"
                    || lease
                        .closed
                        .as_ref()
                        .is_some_and(|(why, _)| why == "lease_expired");
                if expired_by_timer && sent <= deadline {
                    violation(
                        "in_time_verdict_rejected",
                        format!(
                            "{kind} by {reviewer} on lease #{} appended {} ms before its expiry + grace, rejected as {reason}",
                            short(lease_id),
                            deadline - sent
                        ),
                        Some(event.ts),
                    );
                }
                if reason == "already_decided" {
                    let fallback = decision
                        .outcomes
                        .first()
                        .filter(|(_, o)| o.decided_by == DecidedBy::SlaFallback);
                    if let (Some(_), Some(deadline)) = (fallback, sla_deadline) {
                        if sent < deadline && sent <= lease.expires_at.saturating_add(grace) {
                            violation(
                                "in_time_verdict_rejected",
                                format!(
                                    "{kind} by {reviewer} appended {} ms before the SLA deadline, rejected as already decided by the SLA fallback",
                                    deadline - sent
                                ),
                                Some(event.ts),
                            );
                        }
                    }
                }
            }
            LifecycleKind::Outcome => {
                level_at_outcome.get_or_insert(level);
            }
            LifecycleKind::DeadLettered => count("DEAD_LETTERED events"),
            LifecycleKind::QaSampled | LifecycleKind::Queued => {}
        }
    }

    // Leases handed out already over: the ASSIGNED record was written after the lease's expiry
    // plus grace (its expiry counted from a time far behind the clock), so no verdict on it can
    // be in time. Not a broken promise by itself; counted, since it costs reviewers' work.
    for record in &decision.assignments {
        if record.kind == AssignmentKind::Assigned
            && record.reason.is_none()
            && record.ts > record.lease_expires_at.saturating_add(grace)
        {
            count("leases written after their expiry + grace (dead on arrival)");
        }
    }

    // Assignments topic against the lifecycle: the same leases, each ASSIGNED once.
    let mut assigned_on_topic: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for record in &decision.assignments {
        if record.kind == AssignmentKind::Assigned && record.reason.is_none() {
            let entry = assigned_on_topic
                .entry(record.assignment.as_str())
                .or_insert((0, record.reviewer.as_str()));
            entry.0 += 1;
        }
    }
    for (lease_id, lease) in &leases {
        match assigned_on_topic.get(lease_id.as_str()) {
            None => violation(
                "assignment_mismatch",
                format!(
                    "lease #{} in the lifecycle, never on the assignments topic",
                    short(lease_id)
                ),
                None,
            ),
            Some((n, reviewer)) if *n > 1 || *reviewer != lease.reviewer => violation(
                "assignment_mismatch",
                format!(
                    "lease #{} ASSIGNED {n} times on the assignments topic (to {reviewer})",
                    short(lease_id)
                ),
                None,
            ),
            Some(_) => {}
        }
    }
    for lease_id in assigned_on_topic.keys() {
        if !leases.contains_key(*lease_id) {
            violation(
                "assignment_mismatch",
                format!(
                    "lease #{} on the assignments topic, not in the lifecycle",
                    short(lease_id)
                ),
                None,
            );
        }
    }

    // Outcomes.
    let outcomes = &decision.outcomes;
    if !valid {
        if let Some((ts, outcome)) = outcomes.first() {
            violation(
                "unexpected_outcome",
                format!(
                    "outcome {:?} for a record that is not a valid decision",
                    outcome.decided_by
                ),
                Some(*ts),
            );
        }
        return;
    }
    let Some((outcome_ts, outcome)) = outcomes.first() else {
        // Set aside by design: the assignment service set it aside (QUEUED, set_aside=true) and
        // nothing brought it back (QUEUED set_aside=false) or handed it out (ASSIGNED) since —
        // the verdict on a lease granted just before the set-aside may still follow — and no
        // lease is open; the pool holds on an SLA breach (no fallback); the item has reached the
        // highest tier; and every reviewer on the roster eligible there has held a lease on it
        // (voted, deferred, escalated or let it expire). Anything else missing is a violation.
        let mut aside = false;
        for event in decision.events.iter().filter(|e| e.service == "assignment") {
            match (event.kind, event.attribute("set_aside")) {
                (LifecycleKind::Queued, Some("true")) => aside = true,
                (LifecycleKind::Queued, Some("false")) | (LifecycleKind::Assigned, _) => {
                    aside = false
                }
                _ => {}
            }
        }
        let open_leases = leases.values().filter(|l| l.open).count();
        let aside = aside && open_leases == 0;
        let required: Vec<&String> = review
            .map(|r| r.required_roles.iter())
            .into_iter()
            .flatten()
            .chain(rules.tiers.iter().take(level).flatten())
            .collect();
        let never_leased: Vec<&String> = expectations
            .roster
            .iter()
            .filter(|(_, roles)| required.iter().all(|role| roles.contains(role)))
            .map(|(reviewer, _)| reviewer)
            .filter(|reviewer| !leases.values().any(|l| l.reviewer == **reviewer))
            .collect();
        let hold = rules.fallback.is_none();
        let top = level >= rules.tiers.len();
        if aside && hold && top && never_leased.is_empty() && review.is_some() {
            count("set aside (waiting for an eligible reviewer)");
            set_aside.push(id.to_owned());
            return;
        }
        violation(
            "missing_outcome",
            format!(
                "no outcome; routed: {}, review request: {}, QA: {}; set aside: {aside} (open leases: {open_leases}, pool holds: {hold}, at the highest tier: {top}, eligible reviewers never leased it: {never_leased:?})",
                decision.routed().is_some(),
                review.is_some(),
                qa.is_some()
            ),
            decision.events.last().map(|e| e.ts),
        );
        return;
    };
    let outcome_ts = *outcome_ts;
    count("outcomes");
    count(&format!("outcomes: {:?}", outcome.decided_by));
    if outcomes.len() > 1 {
        // The same decision taken twice (only its time differs) is a duplicate; anything else
        // a conflict.
        let same = outcomes.iter().all(|(_, o)| {
            (o.decided_by, o.status, &o.final_action, &o.reviewer_ids)
                == (
                    outcome.decided_by,
                    outcome.status,
                    &outcome.final_action,
                    &outcome.reviewer_ids,
                )
        });
        let republished = expectations.republished.contains(id);
        if republished {
            count("outcomes: more than one for a re-published decision");
        }
        violation(
            if same {
                "duplicate_outcome"
            } else {
                "conflicting_outcomes"
            },
            format!(
                "{} outcomes{}: {}",
                outcomes.len(),
                if republished {
                    " (the publisher sent this decision twice)"
                } else {
                    " (published once)"
                },
                outcomes
                    .iter()
                    .map(|(_, o)| format!(
                        "{:?}/{:?}/{}/{:?}",
                        o.decided_by, o.status, o.final_action, o.reviewer_ids
                    ))
                    .collect::<Vec<_>>()
                    .join(" then ")
            ),
            Some(outcomes[1].0),
        );
    }
    let route = decision
        .routed()
        .and_then(|e| e.attribute("route"))
        .unwrap_or("");
    match outcome.decided_by {
        DecidedBy::Auto => {
            let routed = decision.routed().and_then(|e| e.outcome.as_ref());
            let agrees = routed.is_some_and(|r| {
                r.status == outcome.status
                    && r.final_action == outcome.final_action
                    && r.policy_rule == outcome.policy_rule
                    && r.policy_version == outcome.policy_version
                    && r.decided_by == DecidedBy::Auto
            });
            if !agrees || review.is_some() {
                violation(
                    "auto_mismatch",
                    format!(
                        "AUTO {:?}/{} by rule {}, routed {route:?} with {:?}; review request: {}",
                        outcome.status,
                        outcome.final_action,
                        outcome.policy_rule,
                        routed.map(|r| (r.status, &r.final_action, &r.policy_rule)),
                        review.is_some()
                    ),
                    Some(outcome_ts),
                );
            }
        }
        DecidedBy::Human | DecidedBy::Quorum => {
            let Some(review) = review else {
                violation(
                    "human_mismatch",
                    format!(
                        "{:?} outcome without a review request (routed {route:?})",
                        outcome.decided_by
                    ),
                    Some(outcome_ts),
                );
                return;
            };
            let expected_by = if review.quorum > 1 {
                DecidedBy::Quorum
            } else {
                DecidedBy::Human
            };
            let distinct: BTreeSet<&String> = outcome.reviewer_ids.iter().collect();
            if outcome.decided_by != expected_by
                || outcome.reviewer_ids.len() != quorum
                || distinct.len() != quorum
            {
                violation(
                    "human_mismatch",
                    format!(
                        "{:?} by {:?} for quorum {}",
                        outcome.decided_by, outcome.reviewer_ids, review.quorum
                    ),
                    Some(outcome_ts),
                );
            }
            let voters: BTreeSet<&String> = votes.iter().map(|v| &v.0).collect();
            if voters != distinct {
                violation(
                    "human_mismatch",
                    format!(
                        "outcome names {:?}, the accepted votes since the last disagreement are {:?}",
                        outcome.reviewer_ids,
                        votes.iter().map(|v| format!("{} {}", v.0, v.1)).collect::<Vec<_>>()
                    ),
                    Some(outcome_ts),
                );
            }
            for (reviewer, kind, amended, _) in &votes {
                let expected_action = if kind == "AMEND" {
                    amended.clone()
                } else {
                    action.clone()
                };
                if status_of(kind) != Some(outcome.status)
                    || expected_action.as_deref() != Some(outcome.final_action.as_str())
                {
                    violation(
                        "human_mismatch",
                        format!(
                            "outcome {:?}/{} but {reviewer} voted {kind} (action {:?})",
                            outcome.status, outcome.final_action, expected_action
                        ),
                        Some(outcome_ts),
                    );
                }
            }
            let level = level_at_outcome.unwrap_or(level);
            let required: Vec<&String> = review
                .required_roles
                .iter()
                .chain(rules.tiers.iter().take(level).flatten())
                .collect();
            for reviewer in &outcome.reviewer_ids {
                let roles = expectations.roster.get(reviewer);
                let missing: Vec<&String> = required
                    .iter()
                    .copied()
                    .filter(|role| !roles.is_some_and(|r| r.iter().any(|held| held == *role)))
                    .collect();
                if !missing.is_empty() {
                    violation(
                        "vote_below_tier",
                        format!(
                            "{reviewer} lacks {missing:?}, required at escalation level {level} when the outcome was decided"
                        ),
                        Some(outcome_ts),
                    );
                }
            }
        }
        DecidedBy::SlaFallback => {
            let expected = rules.fallback.as_ref().map(|(status, action_override)| {
                (
                    *status,
                    action_override
                        .clone()
                        .or_else(|| action.clone())
                        .unwrap_or_default(),
                )
            });
            if review.is_none()
                || expected != Some((outcome.status, outcome.final_action.clone()))
                || !outcome.reviewer_ids.is_empty()
            {
                violation(
                    "fallback_mismatch",
                    format!(
                        "SLA_FALLBACK {:?}/{} in pool {pool:?}, configured {expected:?}",
                        outcome.status, outcome.final_action
                    ),
                    Some(outcome_ts),
                );
            }
            if let Some(deadline) = sla_deadline {
                if outcome.decided_at < deadline {
                    violation(
                        "fallback_before_sla",
                        format!(
                            "decided {} ms before the SLA deadline",
                            deadline - outcome.decided_at
                        ),
                        Some(outcome_ts),
                    );
                }
            }
        }
    }

    // Labels: one per human outcome, one per labeled QA sample, none otherwise.
    let human = matches!(outcome.decided_by, DecidedBy::Human | DecidedBy::Quorum);
    let mut human_labels = 0;
    let mut qa_labels = 0;
    for (ts, label) in &decision.labels {
        count(&format!("labels: {:?}", label.label_source));
        match label.label_source {
            LabelSource::Human | LabelSource::Quorum => {
                human_labels += 1;
                if !human || label.label_action != outcome.final_action {
                    violation(
                        "label_mismatch",
                        format!(
                            "{:?} label {} for a {:?} outcome {}",
                            label.label_source,
                            label.label_action,
                            outcome.decided_by,
                            outcome.final_action
                        ),
                        Some(*ts),
                    );
                }
            }
            LabelSource::QaSample => {
                qa_labels += 1;
                if qa.is_none() || !qa_labeled {
                    violation(
                        "unexpected_label",
                        format!("QA label without a QA sample ({}) or accepted QA verdict ({qa_labeled})", qa.is_some()),
                        Some(*ts),
                    );
                }
            }
        }
    }
    if human_labels > 1 {
        violation(
            "duplicate_label",
            format!("{human_labels} human labels"),
            decision.labels.get(1).map(|l| l.0),
        );
    }
    if qa_labels > 1 {
        violation(
            "duplicate_label",
            format!("{qa_labels} QA labels"),
            decision.labels.get(1).map(|l| l.0),
        );
    }
    if human && human_labels == 0 {
        violation(
            "missing_label",
            format!("{:?} outcome without a label", outcome.decided_by),
            Some(outcome_ts),
        );
    }
    if qa_labeled && qa_labels == 0 {
        violation(
            "missing_label",
            "labeled QA sample without a label".into(),
            Some(outcome_ts),
        );
    }
    if qa_labeled {
        count("QA samples labeled");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(offset: i64, kind: LifecycleKind, attributes: &[(&str, &str)]) -> Event {
        let attributes: BTreeMap<String, String> = attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Event {
            ts: 1_000 + offset,
            partition: 0,
            offset,
            kind,
            service: if kind == LifecycleKind::Routed {
                "router".into()
            } else {
                "assignment".into()
            },
            event_time: 1_000 + offset,
            reviewer: attributes.get("reviewer").cloned(),
            assignment: attributes.get("lease").cloned(),
            reason: attributes.get("reason").cloned(),
            attributes,
            outcome: None,
            action: Some("block".into()),
        }
    }

    fn expectations(fallback: bool) -> Expectations {
        let rules = PoolRules {
            verdict_grace_ms: 1_000,
            tiers: vec![vec!["head".into()]],
            fallback: fallback.then_some((OutcomeStatus::Rejected, None)),
        };
        Expectations {
            bootstrap: String::new(),
            topics: TopicNames {
                decisions_dlq: String::new(),
                review_requests: String::new(),
                assignments: String::new(),
                verdicts: String::new(),
                outcomes: String::new(),
                lifecycle: String::new(),
                feedback: String::new(),
            },
            decisions: ["d1".to_owned()].into(),
            republished: BTreeSet::new(),
            poison: BTreeMap::new(),
            pools: [("big".to_owned(), rules.clone())].into(),
            default_pool: rules,
            roster: [
                ("a", vec!["senior", "head"]),
                ("b", vec!["senior", "head"]),
                ("c", vec!["senior", "head"]),
                ("d", vec!["senior"]),
            ]
            .into_iter()
            .map(|(id, roles)| (id.to_owned(), roles.into_iter().map(Into::into).collect()))
            .collect(),
            faults: Vec::new(),
            started_ms: 0,
            audit_verify: None,
        }
    }

    fn lease(id: &str, reviewer: &str) -> [(&'static str, String); 3] {
        [
            ("lease", id.to_owned()),
            ("reviewer", reviewer.to_owned()),
            ("lease_expires_at", "999999".to_owned()),
        ]
    }

    /// A quorum item at its top tier: a and b disagree, c is handed the last lease just before
    /// the item is set aside, and c's vote follows (no quorum: nobody eligible is left).
    fn decision(every_eligible_leased: bool) -> Decision {
        let mut events = vec![
            event(0, LifecycleKind::Routed, &[("route", "human")]),
            event(1, LifecycleKind::Queued, &[("pool", "big")]),
            event(
                2,
                LifecycleKind::Escalated,
                &[("level", "1"), ("reason", "sla_risk")],
            ),
        ];
        let mut offset = 3;
        let mut push = |kind, attributes: Vec<(&str, String)>| {
            let borrowed: Vec<(&str, &str)> =
                attributes.iter().map(|(k, v)| (*k, v.as_str())).collect();
            events.push(event(offset, kind, &borrowed));
            offset += 1;
        };
        let voters: &[(&str, &str, &str)] = if every_eligible_leased {
            &[("a", "#1", "APPROVE"), ("b", "#2", "REJECT")]
        } else {
            &[("a", "#1", "APPROVE")]
        };
        for (reviewer, id, verdict) in voters {
            push(LifecycleKind::Assigned, lease(id, reviewer).to_vec());
            let mut attributes = lease(id, reviewer).to_vec();
            attributes.push(("verdict", (*verdict).to_owned()));
            push(LifecycleKind::Verdict, attributes);
        }
        push(
            LifecycleKind::Escalated,
            vec![
                ("level", "1".into()),
                (
                    "reason",
                    "quorum_disagreement: already at the highest tier".into(),
                ),
            ],
        );
        push(LifecycleKind::Assigned, lease("#3", "c").to_vec());
        push(LifecycleKind::Queued, vec![("set_aside", "true".into())]);
        let mut attributes = lease("#3", "c").to_vec();
        attributes.push(("verdict", "APPROVE".into()));
        push(LifecycleKind::Verdict, attributes);
        let mut sent: Vec<(&str, &str, &str)> = voters.to_vec();
        sent.push(("c", "#3", "APPROVE"));
        let verdicts = sent
            .into_iter()
            .map(|(reviewer, id, verdict)| SentVerdict {
                ts: 1_000,
                assignment: id.into(),
                reviewer: reviewer.into(),
                kind: match verdict {
                    "APPROVE" => VerdictKind::Approve,
                    _ => VerdictKind::Reject,
                },
                amended_action: None,
            })
            .collect();
        Decision {
            events,
            verdicts,
            requests: vec![Request {
                kind: ReviewKind::Review,
                pool: "big".into(),
                quorum: 2,
                sla_deadline: 0,
                required_roles: vec!["senior".into()],
            }],
            ..Decision::default()
        }
    }

    fn check(expectations: &Expectations, decision: &Decision) -> (Vec<Violation>, Vec<String>) {
        let (mut violations, mut counts, mut aside) = (Vec::new(), BTreeMap::new(), Vec::new());
        check_decision(
            expectations,
            "d1",
            decision,
            true,
            &mut violations,
            &mut counts,
            &mut aside,
        );
        violations.retain(|v| v.class != "assignment_mismatch");
        (violations, aside)
    }

    #[test]
    fn a_top_tier_item_of_a_hold_pool_nobody_eligible_can_take_is_set_aside_not_missing() {
        let (violations, aside) = check(&expectations(false), &decision(true));
        assert!(violations.is_empty(), "{violations:?}");
        assert_eq!(aside, vec!["d1".to_owned()]);
    }

    #[test]
    fn set_aside_while_an_eligible_reviewer_never_had_it_is_missing() {
        let (violations, aside) = check(&expectations(false), &decision(false));
        assert!(aside.is_empty());
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].class, "missing_outcome");
        assert!(
            violations[0].detail.contains("\"b\""),
            "{}",
            violations[0].detail
        );
    }

    #[test]
    fn set_aside_in_a_pool_with_a_fallback_is_missing() {
        let (violations, aside) = check(&expectations(true), &decision(true));
        assert!(aside.is_empty());
        assert_eq!(violations[0].class, "missing_outcome");
    }

    #[test]
    fn votes_an_escalation_discarded_do_not_count() {
        let attributes = |reviewer: &str, id: &str, verdict: Option<&str>| {
            let mut all = lease(id, reviewer).to_vec();
            if let Some(verdict) = verdict {
                all.push(("verdict", verdict.to_owned()));
            }
            all
        };
        let mut events = vec![
            event(0, LifecycleKind::Routed, &[("route", "human")]),
            event(1, LifecycleKind::Queued, &[("pool", "big")]),
        ];
        let steps: Vec<(LifecycleKind, Vec<(&str, String)>)> = vec![
            (LifecycleKind::Assigned, attributes("d", "#1", None)),
            (
                LifecycleKind::Verdict,
                attributes("d", "#1", Some("APPROVE")),
            ),
            (
                LifecycleKind::Escalated,
                vec![
                    ("level", "1".into()),
                    ("reason", "sla_risk".into()),
                    ("votes_discarded", "d".into()),
                ],
            ),
            (LifecycleKind::Assigned, attributes("a", "#2", None)),
            (LifecycleKind::Assigned, attributes("b", "#3", None)),
            (
                LifecycleKind::Verdict,
                attributes("a", "#2", Some("APPROVE")),
            ),
            (
                LifecycleKind::Verdict,
                attributes("b", "#3", Some("APPROVE")),
            ),
            (LifecycleKind::Outcome, vec![]),
        ];
        for (offset, (kind, attributes)) in steps.into_iter().enumerate() {
            let borrowed: Vec<(&str, &str)> =
                attributes.iter().map(|(k, v)| (*k, v.as_str())).collect();
            events.push(event(offset as i64 + 2, kind, &borrowed));
        }
        let verdicts = [("d", "#1"), ("a", "#2"), ("b", "#3")]
            .into_iter()
            .map(|(reviewer, id)| SentVerdict {
                ts: 1_000,
                assignment: id.into(),
                reviewer: reviewer.into(),
                kind: VerdictKind::Approve,
                amended_action: None,
            })
            .collect();
        let outcome = Outcome {
            decision_id: "d1".into(),
            status: OutcomeStatus::Approved,
            final_action: "block".into(),
            decided_by: DecidedBy::Quorum,
            reviewer_ids: vec!["a".into(), "b".into()],
            policy_rule: "big".into(),
            policy_version: "1".into(),
            decided_at: 2_000,
            time_to_decision_ms: 1_000,
            workflow: String::new(),
            rationale: None,
        };
        let decision = Decision {
            events,
            verdicts,
            outcomes: vec![(2_000, outcome)],
            requests: decision(true).requests,
            ..Decision::default()
        };
        let (violations, _) = check(&expectations(false), &decision);
        let wrong: Vec<&Violation> = violations
            .iter()
            .filter(|v| matches!(v.class, "human_mismatch" | "vote_below_tier"))
            .collect();
        assert!(wrong.is_empty(), "{wrong:?}");
    }

    #[test]
    fn handed_out_again_after_the_set_aside_is_not_set_aside() {
        let mut decision = decision(true);
        let mut again = event(100, LifecycleKind::Assigned, &[]);
        again.reviewer = Some("d".into());
        again.assignment = Some("#4".into());
        decision.events.push(again);
        let (violations, aside) = check(&expectations(false), &decision);
        assert!(aside.is_empty());
        assert!(violations.iter().any(|v| v.class == "missing_outcome"));
    }
}
