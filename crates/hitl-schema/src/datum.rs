//! Hand-written Avro datum codecs for the records on the router's hot path: `Decision` (read and
//! written), `Outcome`, `ReviewRequest` and `LifecycleEvent` (written).
//!
//! Each function follows its `.avsc` field by field; `record.rs` plugs them into `Record`, so
//! `Codec` uses them whenever the datum is (or was) written with this build's schema. The generic
//! `serde_avro_fast` path stays for every other record and for other writer schemas. Tests hold the
//! two to the same bytes and the same values (`tests/datum.rs`), so any drift between an `.avsc`
//! and these functions fails there.

use std::collections::BTreeMap;

use crate::{
    binary::{
        put_double, put_int, put_len, put_long, put_optional_str, put_str, put_str_array,
        put_str_map, ReadError, Reader, END_OF_BLOCKS, NULL_BRANCH, VALUE_BRANCH,
    },
    types::*,
    CodecError,
};

/// Appends the datum of a `Decision` (`decision.avsc`).
pub(crate) fn write_decision(decision: &Decision, out: &mut Vec<u8>) {
    put_str(out, &decision.decision_id);
    put_str(out, &decision.workflow);
    put_str(out, &decision.subject);
    put_str(out, &decision.action);
    put_double(out, decision.confidence);
    put_optional_double(out, decision.risk_score);
    put_optional_double(out, decision.amount);
    put_optional_str(out, decision.priority.as_deref());
    put_str(out, &decision.producer);
    put_str(out, &decision.model_name);
    put_optional_str(out, decision.model_version.as_deref());
    if !decision.features.is_empty() {
        put_len(out, decision.features.len());
        for (name, value) in &decision.features {
            put_str(out, name);
            put_double(out, *value);
        }
    }
    out.push(END_OF_BLOCKS);
    put_str_map(out, decision.context.len(), decision.context.iter());
    put_str_array(out, &decision.sensitive_fields);
    put_long(out, decision.created_at);
    match decision.sla_ms {
        None => out.push(NULL_BRANCH),
        Some(sla_ms) => {
            out.push(VALUE_BRANCH);
            put_long(out, sla_ms);
        }
    }
}

fn put_optional_double(out: &mut Vec<u8>, value: Option<f64>) {
    match value {
        None => out.push(NULL_BRANCH),
        Some(value) => {
            out.push(VALUE_BRANCH);
            put_double(out, value);
        }
    }
}

/// Reads exactly one `Decision` datum written with `decision.avsc`: no byte may be left over.
pub(crate) fn read_decision(datum: &[u8]) -> Result<Decision, CodecError> {
    let mut reader = Reader::new(datum);
    let mut field = "decision_id";
    read_decision_fields(&mut reader, &mut field)
        .and_then(|decision| reader.expect_end().map(|()| decision))
        .map_err(|error| {
            CodecError::Avro(format!(
                "io.hitl.Decision: field {field} at byte {}: {error}",
                datum.len() - reader.left()
            ))
        })
}

/// Reads the fields in schema order, keeping `field` on the one being read (for the error).
fn read_decision_fields(
    reader: &mut Reader<'_>,
    field: &mut &'static str,
) -> Result<Decision, ReadError> {
    let decision_id = reader.string()?;
    *field = "workflow";
    let workflow = reader.string()?;
    *field = "subject";
    let subject = reader.string()?;
    *field = "action";
    let action = reader.string()?;
    *field = "confidence";
    let confidence = reader.double()?;
    *field = "risk_score";
    let risk_score = reader.optional_double()?;
    *field = "amount";
    let amount = reader.optional_double()?;
    *field = "priority";
    let priority = reader.optional_string()?;
    *field = "producer";
    let producer = reader.string()?;
    *field = "model_name";
    let model_name = reader.string()?;
    *field = "model_version";
    let model_version = reader.optional_string()?;
    *field = "features";
    let mut features = BTreeMap::new();
    // An entry is at least a one-byte key length and an 8-byte double.
    loop {
        let count = reader.block_len(9)?;
        if count == 0 {
            break;
        }
        for _ in 0..count {
            let name = reader.string()?;
            // A repeated key keeps its last value, as the serde path does.
            features.insert(name, reader.double()?);
        }
    }
    *field = "context";
    let mut context = BTreeMap::new();
    loop {
        let count = reader.block_len(2)?;
        if count == 0 {
            break;
        }
        for _ in 0..count {
            let key = reader.string()?;
            context.insert(key, reader.string()?);
        }
    }
    *field = "sensitive_fields";
    let mut sensitive_fields = Vec::new();
    loop {
        let count = reader.block_len(1)?;
        if count == 0 {
            break;
        }
        sensitive_fields.reserve(count);
        for _ in 0..count {
            sensitive_fields.push(reader.string()?);
        }
    }
    *field = "created_at";
    let created_at = reader.long()?;
    *field = "sla_ms";
    let sla_ms = reader.optional_long()?;
    Ok(Decision {
        decision_id,
        workflow,
        subject,
        action,
        confidence,
        risk_score,
        amount,
        priority,
        producer,
        model_name,
        model_version,
        features,
        context,
        sensitive_fields,
        created_at,
        sla_ms,
    })
}

fn outcome_status_index(status: OutcomeStatus) -> usize {
    match status {
        OutcomeStatus::Approved => 0,
        OutcomeStatus::Rejected => 1,
        OutcomeStatus::Amended => 2,
    }
}

fn decided_by_index(decided_by: DecidedBy) -> usize {
    match decided_by {
        DecidedBy::Auto => 0,
        DecidedBy::Human => 1,
        DecidedBy::Quorum => 2,
        DecidedBy::SlaFallback => 3,
    }
}

fn review_kind_index(kind: ReviewKind) -> usize {
    match kind {
        ReviewKind::Review => 0,
        ReviewKind::QaSample => 1,
    }
}

fn lifecycle_kind_index(kind: LifecycleKind) -> usize {
    match kind {
        LifecycleKind::Routed => 0,
        LifecycleKind::QaSampled => 1,
        LifecycleKind::Queued => 2,
        LifecycleKind::Assigned => 3,
        LifecycleKind::Revoked => 4,
        LifecycleKind::Escalated => 5,
        LifecycleKind::Verdict => 6,
        LifecycleKind::VerdictRejected => 7,
        LifecycleKind::SlaBreached => 8,
        LifecycleKind::Outcome => 9,
        LifecycleKind::DeadLettered => 10,
    }
}

/// Appends the datum of an `Outcome` (`outcome.avsc`).
pub(crate) fn write_outcome(outcome: &Outcome, out: &mut Vec<u8>) {
    put_str(out, &outcome.decision_id);
    put_str(out, &outcome.final_action);
    put_len(out, outcome_status_index(outcome.status));
    put_len(out, decided_by_index(outcome.decided_by));
    put_str_array(out, &outcome.reviewer_ids);
    put_str(out, &outcome.policy_rule);
    put_str(out, &outcome.policy_version);
    put_long(out, outcome.decided_at);
    put_long(out, outcome.time_to_decision_ms);
    put_str(out, &outcome.workflow);
    put_optional_str(out, outcome.rationale.as_deref());
}

/// Appends the datum of a `ReviewRequest` (`review_request.avsc`).
pub(crate) fn write_review_request_datum(request: &ReviewRequest, out: &mut Vec<u8>) {
    write_review_request(request, out);
}

/// Appends the datum of a `ReviewRequest`; returns where its decision's
/// datum (the first field) ends in `out`.
pub(crate) fn write_review_request(request: &ReviewRequest, out: &mut Vec<u8>) -> usize {
    write_decision(&request.decision, out);
    let decision_end = out.len();
    put_len(out, review_kind_index(request.kind));
    put_str(out, &request.pool);
    put_str_array(out, &request.required_roles);
    put_str(out, &request.priority_tier);
    put_long(out, request.sla_deadline);
    put_int(out, request.quorum);
    put_str(out, &request.policy_rule);
    put_str(out, &request.policy_version);
    put_optional_str(out, request.auto_status.as_deref());
    put_long(out, request.routed_at);
    decision_end
}

/// Appends the datum of a `LifecycleEvent` (`lifecycle_event.avsc`).
pub(crate) fn write_lifecycle_event(event: &LifecycleEvent, out: &mut Vec<u8>) {
    write_lifecycle_event_with(event, None, None, out);
}

/// Appends the datum of a `LifecycleEvent`, copying `decision_datum` and `outcome_datum`, when
/// given, as the datums of its (present) decision and outcome. The caller guarantees they are.
pub(crate) fn write_lifecycle_event_with(
    event: &LifecycleEvent,
    decision_datum: Option<&[u8]>,
    outcome_datum: Option<&[u8]>,
    out: &mut Vec<u8>,
) {
    put_str(out, &event.event_id);
    put_str(out, &event.decision_id);
    put_len(out, lifecycle_kind_index(event.kind));
    put_str(out, &event.service);
    put_long(out, event.event_time);
    put_long(out, event.sequence);
    put_optional_str(out, event.reviewer_id.as_deref());
    put_optional_str(out, event.assignment_id.as_deref());
    put_optional_str(out, event.policy_rule.as_deref());
    put_optional_str(out, event.policy_version.as_deref());
    put_optional_str(out, event.reason.as_deref());
    put_str_map(out, event.attributes.len(), event.attributes.iter());
    match (&event.decision, decision_datum) {
        (None, _) => out.push(NULL_BRANCH),
        (Some(_), Some(datum)) => {
            out.push(VALUE_BRANCH);
            out.extend_from_slice(datum);
        }
        (Some(decision), None) => {
            out.push(VALUE_BRANCH);
            write_decision(decision, out);
        }
    }
    match (&event.outcome, outcome_datum) {
        (None, _) => out.push(NULL_BRANCH),
        (Some(_), Some(datum)) => {
            out.push(VALUE_BRANCH);
            out.extend_from_slice(datum);
        }
        (Some(outcome), None) => {
            out.push(VALUE_BRANCH);
            write_outcome(outcome, out);
        }
    }
    put_optional_str(out, event.traceparent.as_deref());
}
