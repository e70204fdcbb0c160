//! The timeline core: builds each decision's provenance from its lifecycle events and turns every
//! change into the next signed version of its audit record, plus exactly one labeled example per
//! human (or quorum) outcome and per QA sample. Pure and deterministic: no Kafka, no clock — the
//! record's `written_at` is the time of its latest event, and Ed25519 signatures are deterministic.
//!
//! Only authenticated events reach `event` (the shell checks their `hitl-auth` signature and grant).
//! The core still bounds what one event may add (`bounds::Limits`), so every record, label and
//! checkpoint fits the producer's limit: an event over its bounds, or one the timeline has no room
//! for, is refused (`Effect::Refused`, which the shell dead-letters). A second event with a known
//! id but other content is refused too, never silently dropped. Refusals that concern a trail are
//! written into it as the audit's own notes — entries of kind `INPUT_REFUSED` from service `audit`,
//! a kind no lifecycle event has and a service no event may claim — never as events: at most
//! `max_notes` one by one, then counted in one `INPUT_REFUSED_SUMMARY` entry (with the sequences of
//! authenticated events left out, so `verify` can tell them from missing events).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
};

use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use hitl_schema::{
    AuditRecord, Codec, DecidedBy, Decision, FeedbackRecord, LabelSource, LifecycleEvent,
    LifecycleKind, Outcome, OutcomeStatus, TimelineEntry,
};

use crate::{
    bounds::{self, Limits, MAX_LABEL_BYTES, MAX_REVIEWERS, NOTE_VALUE_BYTES},
    crypto::Keys,
};

/// The kind of the audit's note of an input it refused (not a `LifecycleKind`: no event has it).
pub const REFUSED: &str = "INPUT_REFUSED";
/// The kind of the audit's summary of the refusals past `max_notes`.
pub const REFUSED_SUMMARY: &str = "INPUT_REFUSED_SUMMARY";
/// The service name of the audit's own entries; no lifecycle event may claim it.
pub const AUDIT_SERVICE: &str = "audit";

/// Where an event sits in a timeline: by event time, then the emitting service's sequence, then id
/// (a total order, so arrival order does not matter).
type Place = (i64, i64, String);

/// One decision's provenance so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Trail {
    /// The input (and audit) partition the decision lives on.
    pub partition: i32,
    /// The decision as received, sensitive context values hashed.
    pub decision: Option<Decision>,
    pub route: Option<String>,
    pub policy_rule: Option<String>,
    pub policy_version: Option<String>,
    pub timeline: BTreeMap<Place, TimelineEntry>,
    pub outcome: Option<Outcome>,
    pub version: i64,
    pub last_hash: Option<String>,
    /// Feedback already emitted for the human outcome / the QA label.
    pub labeled_outcome: bool,
    pub labeled_qa: bool,
    /// Lifecycle events in the timeline, and the bytes of their entries (the audit's notes aside).
    pub events: usize,
    pub event_bytes: usize,
    /// The audit's refusal notes in the timeline.
    pub notes: usize,
    /// The refusals past `max_notes`, and the events refused for want of room.
    pub summary: Option<Summary>,
    /// The summary changed since the trail's latest record.
    pub summary_dirty: bool,
}

/// What the `INPUT_REFUSED_SUMMARY` entry of a trail says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Its place in the timeline (the time of the first refusal it counts).
    pub at: i64,
    /// Refusals it counts, by reason.
    pub counts: BTreeMap<String, u64>,
    /// The sequences of the authenticated events it counts, per service: the lowest and highest
    /// (`verify` takes the sequences between as accounted for, not missing).
    pub omitted: BTreeMap<String, (i64, i64)>,
}

/// At most this many services' omitted sequences are kept in a summary.
const SUMMARY_SERVICES: usize = 4;
/// Longer service names are not kept in a summary's omitted sequences.
const SUMMARY_SERVICE_BYTES: usize = 24;

impl Summary {
    fn entry(&self, decision_id: &str) -> TimelineEntry {
        let mut attributes = BTreeMap::new();
        attributes.insert(
            "refused".to_owned(),
            self.counts.values().sum::<u64>().to_string(),
        );
        for (reason, count) in &self.counts {
            attributes.insert(format!("refused.{reason}"), count.to_string());
        }
        for (service, (first, last)) in &self.omitted {
            attributes.insert(format!("omitted.{service}"), format!("{first}-{last}"));
        }
        TimelineEntry {
            event_id: format!("{decision_id}:audit:refused-summary"),
            kind: REFUSED_SUMMARY.to_owned(),
            service: AUDIT_SERVICE.to_owned(),
            event_time: self.at,
            sequence: 0,
            reviewer_id: None,
            assignment_id: None,
            reason: Some("inputs refused past the trail's notes".to_owned()),
            attributes,
        }
    }

    /// Reads a summary entry back (a restored trail).
    pub fn parse(entry: &TimelineEntry) -> Self {
        let mut summary = Self {
            at: entry.event_time,
            ..Self::default()
        };
        for (name, value) in &entry.attributes {
            if let Some(reason) = name.strip_prefix("refused.") {
                summary
                    .counts
                    .insert(reason.to_owned(), value.parse().unwrap_or(0));
            } else if let Some(service) = name.strip_prefix("omitted.") {
                if let Some(range) = parse_range(value) {
                    summary.omitted.insert(service.to_owned(), range);
                }
            }
        }
        summary
    }

    fn count(&mut self, reason: &str, omitted: Option<(&str, i64)>) {
        *self.counts.entry(reason.to_owned()).or_default() += 1;
        if let Some((service, sequence)) = omitted.filter(|(_, sequence)| *sequence > 0) {
            let room = self.omitted.len() < SUMMARY_SERVICES;
            match self.omitted.get_mut(service) {
                Some((first, last)) => {
                    *first = (*first).min(sequence);
                    *last = (*last).max(sequence);
                }
                None if room && service.len() <= SUMMARY_SERVICE_BYTES => {
                    self.omitted
                        .insert(service.to_owned(), (sequence, sequence));
                }
                None => {}
            }
        }
    }
}

/// `first-last` as written in a summary.
pub fn parse_range(text: &str) -> Option<(i64, i64)> {
    let (first, last) = text.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// What an input the audit refused claimed to be (from its decoded value, when it decodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub kind: String,
    pub service: String,
    pub event_id: String,
    pub sequence: i64,
}

impl Claim {
    pub fn of(event: &LifecycleEvent) -> Self {
        Self {
            kind: event.kind.as_str().to_owned(),
            service: event.service.clone(),
            event_id: event.event_id.clone(),
            sequence: event.sequence,
        }
    }
}

/// An input the audit refused, to note in its decision's trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Names the note: the same refused input makes the same note once (16 hex digits).
    pub id: String,
    /// The low-cardinality reason (metric label): `unauthenticated`, `bad_signature`, …
    pub reason: &'static str,
    /// The dead-letter class: `auth.bad_signature`, `oversize.event`, …
    pub class: String,
    /// Whether a trusted key signed it (its claims are then a service's).
    pub authenticated: bool,
    pub claim: Option<Claim>,
    /// The key id its `hitl-auth` header named.
    pub key_id: Option<String>,
    /// `<partition>/<offset>` of the refused record.
    pub source: Option<String>,
}

/// The longest prefix of `text` of at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

impl Note {
    fn entry(&self, decision_id: &str, sequence: i64, at: i64) -> TimelineEntry {
        let mut attributes = BTreeMap::new();
        let mut put = |name: &str, value: &str| {
            attributes.insert(name.to_owned(), cut(value, NOTE_VALUE_BYTES));
        };
        put(
            "authenticated",
            if self.authenticated { "true" } else { "false" },
        );
        if let Some(claim) = &self.claim {
            put("claimed_kind", &claim.kind);
            put("claimed_service", &claim.service);
            put("claimed_event_id", &claim.event_id);
            put("claimed_sequence", &claim.sequence.to_string());
        }
        if let Some(key_id) = &self.key_id {
            put("key_id", key_id);
        }
        if let Some(source) = &self.source {
            put("source", source);
        }
        TimelineEntry {
            event_id: format!("{decision_id}:audit:refused:{}", cut(&self.id, 32)),
            kind: REFUSED.to_owned(),
            service: AUDIT_SERVICE.to_owned(),
            event_time: at,
            sequence,
            reviewer_id: None,
            assignment_id: None,
            reason: Some(cut(&self.class, 64)),
            attributes,
        }
    }
}

/// Why the core refuses an event (`AuditCore::check`).
struct Refusal {
    reason: &'static str,
    class: &'static str,
    message: String,
}

/// What became of a refusal note.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noted {
    /// Written into the trail (a new version).
    Written,
    /// Counted in the trail's summary (written with its next version, or at the next tick).
    Counted,
    /// The same input was noted before.
    Again,
    /// No trail of that decision here: only dead-lettered and counted.
    NoTrail,
    /// The trail is sealed: reload it, then note again.
    Reload(Reload),
}

/// Something for metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// A lifecycle event already in the trail (a re-delivery): nothing changed.
    Duplicate,
    /// A new version of an audit record.
    Written { version: i64 },
    /// The first version holding the decision's outcome (lag = written time − `decided_at`).
    OutcomeRecorded {
        decided_by: DecidedBy,
        decided_at: i64,
    },
    /// Two different final outcomes for one decision: the first is kept.
    ConflictingOutcome,
    /// A new event for a sealed decision arrived without its trail being reloaded: not applied.
    Sealed,
    Feedback {
        source: LabelSource,
        overridden: bool,
    },
}

/// What a core call produced.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // produced and consumed one at a time
pub enum Effect {
    /// The next version of a decision's audit record, for its partition.
    Record {
        partition: i32,
        record: AuditRecord,
    },
    Feedback(FeedbackRecord),
    Observed(Observation),
    /// The event was refused: the shell dead-letters its input with `class` and counts `reason`.
    Refused {
        reason: &'static str,
        class: String,
        message: String,
    },
}

/// A finished trail left idle for `seal_after`, kept as only what idempotence and the hash chain
/// need (about 100 bytes instead of kilobytes). A new event for it needs the trail back: the shell
/// reads the decision's latest record from the audit topic and `restore`s it first.
#[derive(Debug, Clone)]
struct Sealed {
    partition: i32,
    version: i64,
    /// Its latest record's `written_at`: where to look for it on the audit topic.
    written_at: i64,
    /// It had an outcome, and the decision as received (audit completeness).
    decided: bool,
    complete: bool,
    /// xxh3-64 of every event id in the trail and of the event's content, to drop re-deliveries
    /// (and tell a different event under a known id) without the trail.
    event_ids: Box<[(u64, u64)]>,
    /// Refusal notes in the trail.
    notes: u16,
}

/// Where a sealed decision's latest audit record is: its partition, and the `written_at` (the
/// time of its latest event) of the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reload {
    pub partition: i32,
    /// The version to find.
    pub version: i64,
    pub written_at: i64,
}

/// The trails of the decisions on the partitions this instance owns.
pub struct AuditCore {
    keys: Arc<Keys>,
    trails: HashMap<String, Trail>,
    /// Finished, idle trails, by the xxh3-128 digest of the decision id.
    sealed: HashMap<u128, Sealed>,
    /// How long a finished trail stays whole after its latest event (milliseconds); `None`: for ever.
    seal_after: Option<i64>,
    /// (time of the trail's latest event, decision id) per change of a finished trail, oldest
    /// first, for sealing.
    changed: VecDeque<(i64, String)>,
    /// Of the sealed: how many were decided, and decided with the decision as received.
    sealed_decided: usize,
    sealed_complete: usize,
    limits: Limits,
    /// Trails whose summary changed since their latest record (written at the next tick).
    dirty: Vec<String>,
}

fn place(entry: &TimelineEntry) -> Place {
    (entry.event_time, entry.sequence, entry.event_id.clone())
}

fn status_name(status: OutcomeStatus) -> &'static str {
    status.as_str()
}

/// The time of a trail's latest event (its record's `written_at`).
fn latest_event(trail: &Trail) -> i64 {
    trail
        .timeline
        .keys()
        .map(|(time, _, _)| *time)
        .max()
        .unwrap_or(0)
}

/// Whether nothing more is expected: decided (or dead-lettered), and not a QA sample waiting for
/// its label (a QA sample ends labeled, or expired by an SLA breach).
fn finished(trail: &Trail) -> bool {
    let ended = trail.outcome.is_some() || trail.route.as_deref() == Some("dead_lettered");
    let qa_sample = trail.timeline.values().any(|entry| {
        entry.kind == LifecycleKind::Routed.as_str()
            && entry
                .attributes
                .get("qa_sample")
                .is_some_and(|v| v == "true")
    });
    let qa_ended = trail.labeled_qa
        || trail
            .timeline
            .values()
            .any(|entry| entry.kind == LifecycleKind::SlaBreached.as_str());
    ended && (!qa_sample || qa_ended)
}

impl AuditCore {
    pub fn new(keys: Arc<Keys>) -> Self {
        Self {
            keys,
            trails: HashMap::new(),
            sealed: HashMap::new(),
            seal_after: None,
            changed: VecDeque::new(),
            sealed_decided: 0,
            sealed_complete: 0,
            limits: Limits::default(),
            dirty: Vec::new(),
        }
    }

    /// Bounds what events may add (default: `Limits::default()`).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Seals finished trails `millis` after their latest event (see `seal_idle`).
    pub fn with_seal_after(mut self, millis: i64) -> Self {
        self.seal_after = Some(millis.max(0));
        self
    }

    /// Seals every finished trail whose latest event is `seal_after` or more before `now`: it
    /// leaves memory but for a small summary. Returns how many were sealed.
    pub fn seal_idle(&mut self, now: i64) -> usize {
        let Some(after) = self.seal_after else {
            return 0;
        };
        let due = now.saturating_sub(after);
        let mut sealed = 0;
        while self.changed.front().is_some_and(|(at, _)| *at <= due) {
            let (_, id) = self.changed.pop_front().expect("front exists");
            // A trail changed since (a later entry stands for it) stays.
            let Some(trail) = self.trails.get(&id) else {
                continue;
            };
            if latest_event(trail) > due || !finished(trail) {
                continue;
            }
            let trail = self.trails.remove(&id).expect("present");
            self.insert_sealed(
                &id,
                Sealed {
                    partition: trail.partition,
                    version: trail.version,
                    written_at: latest_event(&trail),
                    decided: trail.outcome.is_some(),
                    complete: trail.outcome.is_some() && trail.decision.is_some(),
                    event_ids: trail
                        .timeline
                        .values()
                        .map(|entry| {
                            (
                                xxh3_64(entry.event_id.as_bytes()),
                                stored_fingerprint(&trail, entry),
                            )
                        })
                        .collect(),
                    notes: u16::try_from(trail.notes).unwrap_or(u16::MAX),
                },
            );
            sealed += 1;
        }
        sealed
    }

    /// Where to reload a sealed decision's trail from before `event` can be applied: `Some` when
    /// the decision is sealed and the event is new to it (a re-delivered event needs nothing:
    /// `event` drops it).
    ///
    /// An event whose id the trail holds, with other content, needs the trail too: it is refused
    /// as a conflict and noted in it.
    pub fn needs_reload(&self, event: &LifecycleEvent) -> Option<Reload> {
        let sealed = self.sealed.get(&xxh3_128(event.decision_id.as_bytes()))?;
        let reload = Reload {
            partition: sealed.partition,
            version: sealed.version,
            written_at: sealed.written_at,
        };
        match sealed_match(sealed, event, &self.keys) {
            Some(true) => None,
            _ => Some(reload),
        }
    }

    /// The latest version of a decision's record, whole or sealed.
    pub fn version(&self, decision_id: &str) -> Option<i64> {
        match self.trails.get(decision_id) {
            Some(trail) => Some(trail.version),
            None => self
                .sealed
                .get(&xxh3_128(decision_id.as_bytes()))
                .map(|sealed| sealed.version),
        }
    }

    fn insert_sealed(&mut self, decision_id: &str, sealed: Sealed) {
        self.sealed_decided += usize::from(sealed.decided);
        self.sealed_complete += usize::from(sealed.complete);
        if let Some(old) = self.sealed.insert(xxh3_128(decision_id.as_bytes()), sealed) {
            self.uncount(&old);
        }
    }

    fn remove_sealed(&mut self, decision_id: &str) {
        if let Some(old) = self.sealed.remove(&xxh3_128(decision_id.as_bytes())) {
            self.uncount(&old);
        }
    }

    fn uncount(&mut self, sealed: &Sealed) {
        self.sealed_decided -= usize::from(sealed.decided);
        self.sealed_complete -= usize::from(sealed.complete);
    }

    /// How many trails are sealed.
    pub fn sealed_len(&self) -> usize {
        self.sealed.len()
    }

    /// Notes that a finished trail changed at `at` (only finished trails can be sealed; an
    /// unfinished one is noted by the event that finishes it), for `seal_idle`.
    fn changed(&mut self, decision_id: &str, at: i64) {
        if self.seal_after.is_some() {
            self.changed.push_back((at, decision_id.to_owned()));
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn trail(&self, decision_id: &str) -> Option<&Trail> {
        self.trails.get(decision_id)
    }

    pub fn trails(&self) -> impl Iterator<Item = (&String, &Trail)> {
        self.trails.iter()
    }

    pub fn len(&self) -> usize {
        self.trails.len()
    }

    pub fn is_empty(&self) -> bool {
        self.trails.is_empty()
    }

    /// Trails with a final outcome, and of those the ones that also hold the decision as
    /// received (audit completeness, M7).
    pub fn completeness(&self) -> (usize, usize) {
        let decided = self.trails.values().filter(|t| t.outcome.is_some());
        let (mut all, mut complete) = (0, 0);
        for trail in decided {
            all += 1;
            if trail.decision.is_some() {
                complete += 1;
            }
        }
        (all + self.sealed_decided, complete + self.sealed_complete)
    }

    /// Drops the trails of partitions `keep` rejects (they moved to another instance).
    pub fn retain_partitions(&mut self, mut keep: impl FnMut(i32) -> bool) {
        self.trails.retain(|_, trail| keep(trail.partition));
        self.sealed.retain(|_, sealed| keep(sealed.partition));
        self.sealed_decided = self.sealed.values().filter(|s| s.decided).count();
        self.sealed_complete = self.sealed.values().filter(|s| s.complete).count();
    }

    /// Whether a refusal concerning `decision_id` can be noted only after its sealed trail is
    /// reloaded (it is sealed, with room for another note).
    pub fn note_needs_reload(&self, decision_id: &str) -> Option<Reload> {
        if self.trails.contains_key(decision_id) {
            return None;
        }
        let sealed = self.sealed.get(&xxh3_128(decision_id.as_bytes()))?;
        (usize::from(sealed.notes) < self.limits.max_notes).then_some(Reload {
            partition: sealed.partition,
            version: sealed.version,
            written_at: sealed.written_at,
        })
    }

    /// Notes an input the audit refused in the trail of `decision_id`, if this instance holds it,
    /// at `now`: one by one up to `max_notes` (a new version each), then counted in the trail's
    /// summary. The same input is noted once.
    pub fn note(
        &mut self,
        decision_id: &str,
        note: &Note,
        now: i64,
        out: &mut Vec<Effect>,
    ) -> Noted {
        let Some(trail) = self.trails.get_mut(decision_id) else {
            return match self.note_needs_reload(decision_id) {
                Some(reload) => Noted::Reload(reload),
                None => Noted::NoTrail,
            };
        };
        let omitted = note
            .claim
            .as_ref()
            .filter(|_| note.authenticated)
            .map(|claim| (claim.service.as_str(), claim.sequence));
        if trail.notes >= self.limits.max_notes {
            let summary = trail.summary.get_or_insert_with(|| Summary {
                at: now,
                ..Summary::default()
            });
            summary.count(note.reason, omitted);
            if !trail.summary_dirty {
                trail.summary_dirty = true;
                self.dirty.push(decision_id.to_owned());
            }
            return Noted::Counted;
        }
        let entry = note.entry(decision_id, trail.notes as i64 + 1, now);
        if trail
            .timeline
            .values()
            .any(|e| e.event_id == entry.event_id)
        {
            return Noted::Again;
        }
        debug_assert!(bounds::entry(&entry) <= self.limits.note_bytes());
        trail.timeline.insert(place(&entry), entry);
        trail.notes += 1;
        let keys = self.keys.clone();
        write_version(&keys, decision_id, trail, out);
        if finished(trail) {
            self.changed(decision_id, now);
        }
        Noted::Written
    }

    /// Writes a new version of every trail whose summary changed since its latest record (called
    /// on each tick: at most one version per trail per tick however many refusals came).
    pub fn flush_summaries(&mut self, out: &mut Vec<Effect>) {
        let keys = self.keys.clone();
        for decision_id in std::mem::take(&mut self.dirty) {
            if let Some(trail) = self.trails.get_mut(&decision_id) {
                if trail.summary_dirty {
                    write_version(&keys, &decision_id, trail, out);
                }
            }
        }
    }

    /// Checks what `event` would add to a trail against the limits: the timeline entry it makes
    /// and, when the trail has none yet, the decision as stored.
    fn check(&self, event: &LifecycleEvent, entry: &TimelineEntry) -> Result<(), Refusal> {
        let limits = &self.limits;
        let refuse = |reason: &'static str, class: &'static str, message: String| Refusal {
            reason,
            class,
            message,
        };
        if event.decision_id.len() > limits.max_id_bytes {
            return Err(refuse(
                "oversize",
                "oversize.id",
                format!(
                    "decision_id of {} bytes exceeds max_id_bytes ({})",
                    event.decision_id.len(),
                    limits.max_id_bytes
                ),
            ));
        }
        if event.service == AUDIT_SERVICE {
            return Err(refuse(
                "not_allowed",
                "auth.not_allowed",
                "no lifecycle event may claim service `audit` (the audit's own notes)".into(),
            ));
        }
        let size = bounds::entry(entry);
        if size > limits.max_entry_bytes {
            return Err(refuse(
                "oversize",
                "oversize.event",
                format!(
                    "the {} event's timeline entry takes {size} bytes, over max_entry_bytes ({})",
                    event.kind.as_str(),
                    limits.max_entry_bytes
                ),
            ));
        }
        let labels = [
            ("policy_rule", event.policy_rule.as_deref()),
            ("policy_version", event.policy_version.as_deref()),
            (
                "route",
                (event.kind == LifecycleKind::Routed)
                    .then(|| event.attributes.get("route").map(String::as_str))
                    .flatten(),
            ),
        ];
        for (name, value) in labels {
            if let Some(value) = value.filter(|v| v.len() > MAX_LABEL_BYTES) {
                return Err(refuse(
                    "oversize",
                    "oversize.event",
                    format!(
                        "{name} of {} bytes exceeds {MAX_LABEL_BYTES} bytes",
                        value.len()
                    ),
                ));
            }
        }
        if let Some(outcome) = &event.outcome {
            if outcome.decision_id != event.decision_id {
                return Err(refuse(
                    "invalid",
                    "validation.outcome",
                    "the outcome is about another decision than the event".into(),
                ));
            }
            let size = bounds::outcome(outcome);
            if size > limits.max_entry_bytes || outcome.reviewer_ids.len() > MAX_REVIEWERS {
                return Err(refuse(
                    "oversize",
                    "oversize.outcome",
                    format!(
                        "the outcome takes {size} bytes with {} reviewers (at most                          max_entry_bytes {} and {MAX_REVIEWERS} reviewers)",
                        outcome.reviewer_ids.len(),
                        limits.max_entry_bytes
                    ),
                ));
            }
        }
        if let Some(decision) = &event.decision {
            if decision.decision_id != event.decision_id {
                return Err(refuse(
                    "invalid",
                    "validation.decision",
                    "the decision carried is another decision than the event's".into(),
                ));
            }
            let size = hashed_size(decision);
            if size > limits.max_decision_bytes {
                return Err(refuse(
                    "oversize",
                    "oversize.decision",
                    format!(
                        "the decision as stored takes {size} bytes, over max_decision_bytes ({})",
                        limits.max_decision_bytes
                    ),
                ));
            }
        }
        Ok(())
    }

    /// One lifecycle event of a decision on `partition`, read at `source` (`partition/offset`,
    /// for notes). Idempotent by event id and content; see the module doc for refusals.
    ///
    /// An event for a sealed decision is a re-delivery (dropped) or needs the trail back first
    /// (`needs_reload`, then `restore`); without that it is refused and observed as `Sealed`.
    pub fn event_from(
        &mut self,
        partition: i32,
        event: &LifecycleEvent,
        source: Option<String>,
        out: &mut Vec<Effect>,
    ) {
        if !self.sealed.is_empty() && !self.trails.contains_key(&event.decision_id) {
            if let Some(sealed) = self.sealed.get(&xxh3_128(event.decision_id.as_bytes())) {
                out.push(Effect::Observed(
                    if sealed_match(sealed, event, &self.keys) == Some(true) {
                        Observation::Duplicate
                    } else {
                        Observation::Sealed
                    },
                ));
                return;
            }
        }
        let entry = timeline_entry(event);
        let note = |reason: &'static str, class: &str| Note {
            id: hex::encode(xxh3_64(event.event_id.as_bytes()).to_be_bytes()),
            reason,
            class: class.to_owned(),
            authenticated: true,
            claim: Some(Claim::of(event)),
            key_id: None,
            source: source.clone(),
        };
        if let Err(refused) = self.check(event, &entry) {
            let note = note(refused.reason, refused.class);
            self.note(&event.decision_id, &note, event.event_time, out);
            out.push(Effect::Refused {
                reason: refused.reason,
                class: refused.class.to_owned(),
                message: refused.message,
            });
            return;
        }
        let keys = self.keys.clone();
        let size = bounds::entry(&entry);
        if let Some(trail) = self.trails.get(&event.decision_id) {
            let known = trail
                .timeline
                .values()
                .find(|e| e.event_id == event.event_id)
                .map(|stored| stored_fingerprint(trail, stored) == live_fingerprint(event, &keys));
            match known {
                Some(true) => {
                    out.push(Effect::Observed(Observation::Duplicate));
                    return;
                }
                Some(false) => {
                    let class = "audit.conflicting_event";
                    let message = format!(
                        "event {} was seen before with other content: the first is kept",
                        event.event_id
                    );
                    let note = note("conflicting_event", class);
                    self.note(&event.decision_id, &note, event.event_time, out);
                    out.push(Effect::Refused {
                        reason: "conflicting_event",
                        class: class.into(),
                        message,
                    });
                    return;
                }
                None => {}
            }
            // Room: events that can repeat without bound fill at most 3/4 of the timeline.
            let essential = bounds::essential(
                event.kind,
                event.attributes.get("verdict").map(String::as_str),
            );
            let (max_entries, max_bytes) = if essential {
                (
                    self.limits.max_timeline_entries,
                    self.limits.max_timeline_bytes,
                )
            } else {
                (
                    self.limits.max_timeline_entries * bounds::GENERAL_QUARTERS / 4,
                    self.limits.max_timeline_bytes * bounds::GENERAL_QUARTERS / 4,
                )
            };
            if trail.events >= max_entries || trail.event_bytes + size > max_bytes {
                let message = format!(
                    "the trail holds {} events ({} bytes): no room for a {} event (at most \
                     {max_entries} events, {max_bytes} bytes for this kind); counted in its \
                     summary",
                    trail.events,
                    trail.event_bytes,
                    event.kind.as_str()
                );
                let trail = self
                    .trails
                    .get_mut(&event.decision_id)
                    .expect("looked up above");
                let summary = trail.summary.get_or_insert_with(|| Summary {
                    at: event.event_time,
                    ..Summary::default()
                });
                summary.count("timeline_full", Some((&event.service, event.sequence)));
                if !trail.summary_dirty {
                    trail.summary_dirty = true;
                    self.dirty.push(event.decision_id.clone());
                }
                out.push(Effect::Refused {
                    reason: "timeline_full",
                    class: "audit.timeline_full".into(),
                    message,
                });
                return;
            }
        }
        let trail = self
            .trails
            .entry(event.decision_id.clone())
            .or_insert_with(|| Trail::new(partition));
        trail.events += 1;
        trail.event_bytes += size;
        trail.timeline.insert(place(&entry), entry);
        if let (None, Some(decision)) = (&trail.decision, &event.decision) {
            trail.decision = Some(keys.hasher().hashed(decision));
        }
        if event.kind == LifecycleKind::Routed {
            trail.route = event.attributes.get("route").cloned();
            trail.policy_rule = event.policy_rule.clone();
            trail.policy_version = event.policy_version.clone();
        } else if event.kind == LifecycleKind::DeadLettered && trail.route.is_none() {
            trail.route = Some("dead_lettered".into());
        }
        let mut newly_decided = None;
        if let Some(outcome) = &event.outcome {
            match &trail.outcome {
                None => {
                    trail.outcome = Some(outcome.clone());
                    newly_decided = Some(outcome.clone());
                }
                Some(kept) if same_outcome(kept, outcome) => {}
                Some(_) => out.push(Effect::Observed(Observation::ConflictingOutcome)),
            }
        }
        if trail.policy_rule.is_none() {
            trail.policy_rule = event.policy_rule.clone();
            trail.policy_version = event.policy_version.clone();
        }
        if let Some(outcome) = newly_decided {
            out.push(Effect::Observed(Observation::OutcomeRecorded {
                decided_by: outcome.decided_by,
                decided_at: outcome.decided_at,
            }));
        }
        let at = write_version(&keys, &event.decision_id, trail, out);
        label(&keys, trail, out);
        if finished(trail) {
            self.changed(&event.decision_id, at);
        }
    }

    /// `event_from` without a source.
    pub fn event(&mut self, partition: i32, event: &LifecycleEvent, out: &mut Vec<Effect>) {
        self.event_from(partition, event, None, out);
    }

    /// Puts back a decision's latest audit record (on start, from the audit topic).
    pub fn restore(&mut self, partition: i32, record: AuditRecord) {
        let timeline = record
            .timeline
            .into_iter()
            .map(|entry| (place(&entry), entry))
            .collect();
        let mut trail = Trail {
            decision: record.decision,
            route: record.route,
            policy_rule: record.policy_rule,
            policy_version: record.policy_version,
            timeline,
            outcome: record.outcome,
            version: record.version,
            last_hash: Some(record.content_hash),
            ..Trail::new(partition)
        };
        for entry in trail.timeline.values() {
            match (entry.service.as_str(), entry.kind.as_str()) {
                (AUDIT_SERVICE, REFUSED) => trail.notes += 1,
                (AUDIT_SERVICE, REFUSED_SUMMARY) => trail.summary = Some(Summary::parse(entry)),
                _ => {
                    trail.events += 1;
                    trail.event_bytes += bounds::entry(entry);
                }
            }
        }
        // Labels were emitted with the first version where their conditions held.
        trail.labeled_outcome = trail.decision.is_some() && human_outcome(&trail).is_some();
        trail.labeled_qa = trail.decision.is_some() && qa_label(&trail).is_some();
        self.remove_sealed(&record.decision_id);
        if finished(&trail) {
            self.changed(&record.decision_id, record.written_at);
        }
        self.trails.insert(record.decision_id, trail);
    }

    /// Forgets a decision (its audit record was deleted by a tombstone).
    pub fn forget(&mut self, decision_id: &str) {
        self.trails.remove(decision_id);
        self.remove_sealed(decision_id);
    }
}

fn same_outcome(a: &Outcome, b: &Outcome) -> bool {
    a.decided_by == b.decided_by && a.status == b.status && a.final_action == b.final_action
}

impl Trail {
    fn new(partition: i32) -> Self {
        Self {
            partition,
            decision: None,
            route: None,
            policy_rule: None,
            policy_version: None,
            timeline: BTreeMap::new(),
            outcome: None,
            version: 0,
            last_hash: None,
            labeled_outcome: false,
            labeled_qa: false,
            events: 0,
            event_bytes: 0,
            notes: 0,
            summary: None,
            summary_dirty: false,
        }
    }
}

/// The size of a decision once its sensitive values are replaced by their keyed hashes, without
/// hashing them.
fn hashed_size(decision: &Decision) -> usize {
    // `hmac-sha256:` and 64 hex digits, with its one-byte length.
    const HASH: usize = 1 + 76;
    let mut size = bounds::decision(decision);
    for (index, key) in decision.sensitive_fields.iter().enumerate() {
        // A key listed twice is hashed twice, into a value of the same length.
        let first = !decision.sensitive_fields[..index].contains(key);
        if let Some(value) = decision.context.get(key).filter(|_| first) {
            size = size - bounds::string(value) + HASH;
        }
    }
    size
}

/// Puts the summary into the timeline and writes the trail's next version; returns its time.
fn write_version(keys: &Keys, decision_id: &str, trail: &mut Trail, out: &mut Vec<Effect>) -> i64 {
    if let Some(summary) = &trail.summary {
        let entry = summary.entry(decision_id);
        trail
            .timeline
            .retain(|_, e| !(e.service == AUDIT_SERVICE && e.kind == REFUSED_SUMMARY));
        trail.timeline.insert(place(&entry), entry);
    }
    trail.summary_dirty = false;
    trail.version += 1;
    let record = build_record(keys, decision_id, trail);
    trail.last_hash = Some(record.content_hash.clone());
    out.push(Effect::Observed(Observation::Written {
        version: record.version,
    }));
    let at = record.written_at;
    out.push(Effect::Record {
        partition: trail.partition,
        record,
    });
    at
}

/// What a re-delivered event must repeat to be the same event: everything but its time and trace
/// context — the timeline entry's fields, the decision a ROUTED event carries (as stored), and the
/// outcome a ROUTED (automatic) or OUTCOME event carries (but its times).
fn fingerprint(
    entry: &TimelineEntry,
    decision: Option<&Decision>,
    outcome: Option<&Outcome>,
) -> u64 {
    let mut bytes = Vec::with_capacity(256);
    let mut put = |text: &str| {
        bytes.extend_from_slice(&(text.len() as u64).to_le_bytes());
        bytes.extend_from_slice(text.as_bytes());
    };
    put(&entry.kind);
    put(&entry.service);
    put(&entry.sequence.to_string());
    for optional in [&entry.reviewer_id, &entry.assignment_id, &entry.reason] {
        match optional {
            Some(value) => {
                put("1");
                put(value);
            }
            None => put("0"),
        }
    }
    for (name, value) in &entry.attributes {
        put(name);
        put(value);
    }
    if let Some(outcome) = outcome {
        put("outcome");
        put(&outcome.final_action);
        put(outcome.status.as_str());
        put(&format!("{:?}", outcome.decided_by));
        for reviewer in &outcome.reviewer_ids {
            put(reviewer);
        }
        put(&outcome.policy_rule);
        put(&outcome.policy_version);
        put(&outcome.workflow);
        put(outcome.rationale.as_deref().unwrap_or("\0"));
    }
    if let Some(decision) = decision {
        put("decision");
        let codec = Codec::single_object();
        let framed = codec.encode_to_vec("", decision).expect("decisions encode");
        bytes.extend_from_slice(codec.datum(&framed));
    }
    xxh3_64(&bytes)
}

/// Which outcome of `trail` (or `outcome`) an entry of `kind` stands for in its fingerprint.
fn carried_outcome<'a>(kind: &str, outcome: Option<&'a Outcome>) -> Option<&'a Outcome> {
    let auto = |o: &&Outcome| o.decided_by == DecidedBy::Auto;
    if kind == LifecycleKind::Routed.as_str() {
        outcome.filter(auto)
    } else if kind == LifecycleKind::Outcome.as_str() {
        outcome.filter(|o| !auto(o))
    } else {
        None
    }
}

/// The fingerprint of an entry of `trail`.
fn stored_fingerprint(trail: &Trail, entry: &TimelineEntry) -> u64 {
    let routed = entry.kind == LifecycleKind::Routed.as_str();
    fingerprint(
        entry,
        trail.decision.as_ref().filter(|_| routed),
        carried_outcome(&entry.kind, trail.outcome.as_ref()),
    )
}

/// The timeline entry an event makes, as it arrives.
fn timeline_entry(event: &LifecycleEvent) -> TimelineEntry {
    TimelineEntry {
        event_id: event.event_id.clone(),
        kind: event.kind.as_str().to_owned(),
        service: event.service.clone(),
        event_time: event.event_time,
        sequence: event.sequence,
        reviewer_id: event.reviewer_id.clone(),
        assignment_id: event.assignment_id.clone(),
        reason: event.reason.clone(),
        attributes: event.attributes.clone(),
    }
}

/// The fingerprint of an event as it arrives.
fn live_fingerprint(event: &LifecycleEvent, keys: &Keys) -> u64 {
    let entry = timeline_entry(event);
    let decision = (event.kind == LifecycleKind::Routed)
        .then(|| event.decision.as_ref().map(|d| keys.hasher().hashed(d)))
        .flatten();
    fingerprint(
        &entry,
        decision.as_ref(),
        carried_outcome(&entry.kind, event.outcome.as_ref()),
    )
}

/// Whether a sealed trail holds `event`: `Some(true)` the same event, `Some(false)` another under
/// its id, `None` not its id.
fn sealed_match(sealed: &Sealed, event: &LifecycleEvent, keys: &Keys) -> Option<bool> {
    let id = xxh3_64(event.event_id.as_bytes());
    let (_, stored) = sealed.event_ids.iter().find(|(known, _)| *known == id)?;
    Some(*stored == live_fingerprint(event, keys))
}

fn build_record(keys: &Keys, decision_id: &str, trail: &Trail) -> AuditRecord {
    let timeline: Vec<TimelineEntry> = trail.timeline.values().cloned().collect();
    let written_at = timeline.iter().map(|e| e.event_time).max().unwrap_or(0);
    let mut record = AuditRecord {
        decision_id: decision_id.to_owned(),
        version: trail.version,
        decision: trail.decision.clone(),
        route: trail.route.clone(),
        policy_rule: trail.policy_rule.clone(),
        policy_version: trail.policy_version.clone(),
        timeline,
        outcome: trail.outcome.clone(),
        content_hash: String::new(),
        prev_hash: trail.last_hash.clone(),
        signature: String::new(),
        key_id: String::new(),
        written_at,
    };
    keys.seal_record(&mut record);
    record
}

/// The outcome people decided (HUMAN or QUORUM), if any.
fn human_outcome(trail: &Trail) -> Option<&Outcome> {
    trail
        .outcome
        .as_ref()
        .filter(|o| matches!(o.decided_by, DecidedBy::Human | DecidedBy::Quorum))
}

/// A QA sample's label: the deciding verdict on it (kind, amended action, reviewer, time).
fn qa_label(trail: &Trail) -> Option<&TimelineEntry> {
    trail.timeline.values().find(|entry| {
        entry.kind == LifecycleKind::Verdict.as_str()
            && entry
                .attributes
                .get("qa_sample")
                .is_some_and(|v| v == "true")
            && entry
                .attributes
                .get("verdict")
                .is_some_and(|v| matches!(v.as_str(), "APPROVE" | "REJECT" | "AMEND"))
    })
}

fn routed_at(trail: &Trail) -> Option<i64> {
    trail
        .timeline
        .values()
        .find(|e| e.kind == LifecycleKind::Routed.as_str())
        .map(|e| e.event_time)
}

/// Emits the labels whose conditions now hold for the first time.
fn label(keys: &Keys, trail: &mut Trail, out: &mut Vec<Effect>) {
    let Some(decision) = trail.decision.as_ref() else {
        return;
    };
    let policy_version = trail.policy_version.clone().unwrap_or_default();
    if !trail.labeled_outcome {
        if let Some(outcome) = human_outcome(trail) {
            let overridden = outcome.status != OutcomeStatus::Approved
                || outcome.final_action != decision.action;
            let source = if outcome.decided_by == DecidedBy::Quorum {
                LabelSource::Quorum
            } else {
                LabelSource::Human
            };
            let since = routed_at(trail).unwrap_or(decision.created_at);
            out.push(Effect::Feedback(FeedbackRecord {
                decision_id: decision.decision_id.clone(),
                workflow: decision.workflow.clone(),
                model_name: decision.model_name.clone(),
                model_version: decision.model_version.clone(),
                features: decision.features.clone(),
                predicted_action: decision.action.clone(),
                confidence: decision.confidence,
                label_action: outcome.final_action.clone(),
                label_status: status_name(outcome.status).to_owned(),
                label_source: source,
                overridden,
                reviewer_pseudonyms: outcome
                    .reviewer_ids
                    .iter()
                    .map(|id| keys.pseudonym(id))
                    .collect(),
                review_latency_ms: (outcome.decided_at - since).max(0),
                policy_version: if outcome.policy_version.is_empty() {
                    policy_version.clone()
                } else {
                    outcome.policy_version.clone()
                },
                created_at: decision.created_at,
                labeled_at: outcome.decided_at,
            }));
            out.push(Effect::Observed(Observation::Feedback {
                source,
                overridden,
            }));
            trail.labeled_outcome = true;
        }
    }
    if !trail.labeled_qa {
        if let Some(entry) = qa_label(trail) {
            let (status, action) = match entry.attributes.get("verdict").map(String::as_str) {
                Some("REJECT") => (OutcomeStatus::Rejected, decision.action.clone()),
                Some("AMEND") => (
                    OutcomeStatus::Amended,
                    entry
                        .attributes
                        .get("amended_action")
                        .cloned()
                        .unwrap_or_else(|| decision.action.clone()),
                ),
                _ => (OutcomeStatus::Approved, decision.action.clone()),
            };
            // The automatic decision the sample checks: its status is the model's (policy's) call.
            let predicted = trail
                .outcome
                .as_ref()
                .filter(|o| o.decided_by == DecidedBy::Auto)
                .map_or(OutcomeStatus::Approved, |o| o.status);
            let overridden = status != predicted || action != decision.action;
            let since = routed_at(trail).unwrap_or(decision.created_at);
            out.push(Effect::Feedback(FeedbackRecord {
                decision_id: decision.decision_id.clone(),
                workflow: decision.workflow.clone(),
                model_name: decision.model_name.clone(),
                model_version: decision.model_version.clone(),
                features: decision.features.clone(),
                predicted_action: decision.action.clone(),
                confidence: decision.confidence,
                label_action: action,
                label_status: status_name(status).to_owned(),
                label_source: LabelSource::QaSample,
                overridden,
                reviewer_pseudonyms: entry
                    .reviewer_id
                    .iter()
                    .map(|id| keys.pseudonym(id))
                    .collect(),
                review_latency_ms: (entry.event_time - since).max(0),
                policy_version,
                created_at: decision.created_at,
                labeled_at: entry.event_time,
            }));
            out.push(Effect::Observed(Observation::Feedback {
                source: LabelSource::QaSample,
                overridden,
            }));
            trail.labeled_qa = true;
        }
    }
}
