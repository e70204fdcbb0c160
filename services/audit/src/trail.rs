//! The timeline core: builds each decision's provenance from its lifecycle events and turns every
//! change into the next signed version of its audit record, plus exactly one labeled example per
//! human (or quorum) outcome and per QA sample. Pure and deterministic: no Kafka, no clock — the
//! record's `written_at` is the time of its latest event, and Ed25519 signatures are deterministic.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
};

use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use hitl_schema::{
    AuditRecord, DecidedBy, Decision, FeedbackRecord, LabelSource, LifecycleEvent, LifecycleKind,
    Outcome, OutcomeStatus, TimelineEntry,
};

use crate::crypto::Keys;

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
    /// xxh3-64 of every event id in the trail, to drop re-deliveries without the trail.
    event_ids: Box<[u64]>,
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
        }
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
                        .map(|entry| xxh3_64(entry.event_id.as_bytes()))
                        .collect(),
                },
            );
            sealed += 1;
        }
        sealed
    }

    /// Where to reload a sealed decision's trail from before `event` can be applied: `Some` when
    /// the decision is sealed and the event is new to it (a re-delivered event needs nothing:
    /// `event` drops it).
    pub fn needs_reload(&self, event: &LifecycleEvent) -> Option<Reload> {
        let sealed = self.sealed.get(&xxh3_128(event.decision_id.as_bytes()))?;
        let id = xxh3_64(event.event_id.as_bytes());
        (!sealed.event_ids.contains(&id)).then_some(Reload {
            partition: sealed.partition,
            version: sealed.version,
            written_at: sealed.written_at,
        })
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

    /// One lifecycle event of a decision on `partition`. Idempotent by event id.
    ///
    /// An event for a sealed decision is a re-delivery (dropped) or needs the trail back first
    /// (`needs_reload`, then `restore`); without that it is refused and observed as `Sealed`.
    pub fn event(&mut self, partition: i32, event: &LifecycleEvent, out: &mut Vec<Effect>) {
        if !self.sealed.is_empty() && !self.trails.contains_key(&event.decision_id) {
            if let Some(sealed) = self.sealed.get(&xxh3_128(event.decision_id.as_bytes())) {
                let id = xxh3_64(event.event_id.as_bytes());
                out.push(Effect::Observed(if sealed.event_ids.contains(&id) {
                    Observation::Duplicate
                } else {
                    Observation::Sealed
                }));
                return;
            }
        }
        let keys = self.keys.clone();
        let trail = self
            .trails
            .entry(event.decision_id.clone())
            .or_insert_with(|| Trail {
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
            });
        if trail
            .timeline
            .values()
            .any(|e| e.event_id == event.event_id)
        {
            out.push(Effect::Observed(Observation::Duplicate));
            return;
        }
        let entry = TimelineEntry {
            event_id: event.event_id.clone(),
            kind: event.kind.as_str().to_owned(),
            service: event.service.clone(),
            event_time: event.event_time,
            sequence: event.sequence,
            reviewer_id: event.reviewer_id.clone(),
            assignment_id: event.assignment_id.clone(),
            reason: event.reason.clone(),
            attributes: event.attributes.clone(),
        };
        trail.timeline.insert(place(&entry), entry);
        if let (None, Some(decision)) = (&trail.decision, &event.decision) {
            trail.decision = Some(hashed(&keys, decision));
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
        trail.version += 1;
        let record = build_record(&keys, &event.decision_id, trail);
        trail.last_hash = Some(record.content_hash.clone());
        out.push(Effect::Observed(Observation::Written {
            version: record.version,
        }));
        if let Some(outcome) = newly_decided {
            out.push(Effect::Observed(Observation::OutcomeRecorded {
                decided_by: outcome.decided_by,
                decided_at: outcome.decided_at,
            }));
        }
        let at = record.written_at;
        out.push(Effect::Record {
            partition: trail.partition,
            record,
        });
        label(&keys, trail, out);
        if finished(trail) {
            self.changed(&event.decision_id, at);
        }
    }

    /// Puts back a decision's latest audit record (on start, from the audit topic).
    pub fn restore(&mut self, partition: i32, record: AuditRecord) {
        let timeline = record
            .timeline
            .into_iter()
            .map(|entry| (place(&entry), entry))
            .collect();
        let mut trail = Trail {
            partition,
            decision: record.decision,
            route: record.route,
            policy_rule: record.policy_rule,
            policy_version: record.policy_version,
            timeline,
            outcome: record.outcome,
            version: record.version,
            last_hash: Some(record.content_hash),
            labeled_outcome: false,
            labeled_qa: false,
        };
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

/// The decision with every sensitive context value replaced by its keyed hash.
fn hashed(keys: &Keys, decision: &Decision) -> Decision {
    let mut decision = decision.clone();
    for key in &decision.sensitive_fields {
        if let Some(value) = decision.context.get_mut(key) {
            *value = keys.hash_sensitive(value);
        }
    }
    decision
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
