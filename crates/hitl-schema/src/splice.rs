//! Encoding records that embed the decision being routed, without re-encoding the decision.
//!
//! In Avro binary, a record is the concatenation of its fields' encodings, and a union value is
//! the branch index (zig-zag varint) followed by the value. So a `ReviewRequest` is
//! `datum(decision) ++ datum(the remaining fields)`, and a `LifecycleEvent` carrying a decision is
//! `datum(fields before it) ++ 0x02 ++ datum(decision) ++ datum(fields after it)`. When the
//! decision arrived as a single-object record written with `decision.avsc`, its datum is copied
//! from the input as is. The head and tail encoders use sub-schemas derived from the `.avsc` files,
//! so the bytes are identical to `Codec::encode` (tested).

use std::sync::OnceLock;

use serde::Serialize;
use serde_avro_fast::{ser::SerializerConfig, Schema};

use crate::{types::*, CodecError, Record};

/// `schema_json` with only the fields in `range` (by position), renamed so it stands alone.
fn sub_schema(schema_json: &str, suffix: &str, range: std::ops::Range<usize>) -> Schema {
    let mut schema: serde_json::Value =
        serde_json::from_str(schema_json).expect("valid schema JSON");
    let fields = schema["fields"].as_array().expect("record fields")[range].to_vec();
    schema["fields"] = serde_json::Value::Array(fields);
    let name = format!("{}{suffix}", schema["name"].as_str().expect("record name"));
    schema["name"] = serde_json::Value::String(name);
    schema.to_string().parse().expect("sub-schema parses")
}

fn field_index(schema_json: &str, name: &str) -> usize {
    let schema: serde_json::Value = serde_json::from_str(schema_json).expect("valid schema JSON");
    schema["fields"]
        .as_array()
        .expect("record fields")
        .iter()
        .position(|f| f["name"] == name)
        .expect("field")
}

fn field_count(schema_json: &str) -> usize {
    let schema: serde_json::Value = serde_json::from_str(schema_json).expect("valid schema JSON");
    schema["fields"].as_array().expect("record fields").len()
}

fn encode_part<T: Serialize>(
    value: &T,
    schema: &Schema,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let mut config = SerializerConfig::new(schema);
    serde_avro_fast::to_datum(value, &mut *out, &mut config)
        .map_err(|error| CodecError::Encode(error.to_string()))?;
    Ok(())
}

#[derive(Serialize)]
struct ReviewRequestTail<'a> {
    kind: ReviewKind,
    pool: &'a str,
    required_roles: &'a [String],
    priority_tier: &'a str,
    sla_deadline: i64,
    quorum: i32,
    policy_rule: &'a str,
    policy_version: &'a str,
    auto_status: &'a Option<String>,
    routed_at: i64,
}

#[derive(Serialize)]
struct LifecycleHead<'a> {
    event_id: &'a str,
    decision_id: &'a str,
    kind: LifecycleKind,
    service: &'a str,
    event_time: i64,
    sequence: i64,
    reviewer_id: &'a Option<String>,
    assignment_id: &'a Option<String>,
    policy_rule: &'a Option<String>,
    policy_version: &'a Option<String>,
    reason: &'a Option<String>,
    attributes: &'a std::collections::BTreeMap<String, String>,
}

#[derive(Serialize)]
struct LifecycleRest<'a> {
    traceparent: &'a Option<String>,
}

/// Appends the datum of `request` with `decision_datum` in place of its `decision` field.
pub(crate) fn review_request_datum(
    request: &ReviewRequest,
    decision_datum: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    static TAIL: OnceLock<Schema> = OnceLock::new();
    let json = ReviewRequest::SCHEMA_JSON;
    debug_assert_eq!(field_index(json, "decision"), 0);
    let tail = TAIL.get_or_init(|| sub_schema(json, "Tail", 1..field_count(json)));
    out.extend_from_slice(decision_datum);
    encode_part(
        &ReviewRequestTail {
            kind: request.kind,
            pool: &request.pool,
            required_roles: &request.required_roles,
            priority_tier: &request.priority_tier,
            sla_deadline: request.sla_deadline,
            quorum: request.quorum,
            policy_rule: &request.policy_rule,
            policy_version: &request.policy_version,
            auto_status: &request.auto_status,
            routed_at: request.routed_at,
        },
        tail,
        out,
    )
}

/// Appends the datum of `event`, copying `decision_datum` as its (present) `decision` and, when
/// given, `outcome_datum` as its (present) `outcome`.
pub(crate) fn lifecycle_datum(
    event: &LifecycleEvent,
    decision_datum: &[u8],
    outcome_datum: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    if event.decision.is_none() || (outcome_datum.is_some() && event.outcome.is_none()) {
        return encode_part(event, LifecycleEvent::schema(), out);
    }
    static PARTS: OnceLock<(Schema, Schema, Schema)> = OnceLock::new();
    let json = LifecycleEvent::SCHEMA_JSON;
    let (head, outcome_field, rest) = PARTS.get_or_init(|| {
        let decision_at = field_index(json, "decision");
        let outcome_at = field_index(json, "outcome");
        assert_eq!(
            outcome_at,
            decision_at + 1,
            "lifecycle_event.avsc: outcome follows decision"
        );
        (
            sub_schema(json, "Head", 0..decision_at),
            sub_schema(json, "OutcomePart", outcome_at..outcome_at + 1),
            sub_schema(json, "Rest", outcome_at + 1..field_count(json)),
        )
    });
    encode_part(
        &LifecycleHead {
            event_id: &event.event_id,
            decision_id: &event.decision_id,
            kind: event.kind,
            service: &event.service,
            event_time: event.event_time,
            sequence: event.sequence,
            reviewer_id: &event.reviewer_id,
            assignment_id: &event.assignment_id,
            policy_rule: &event.policy_rule,
            policy_version: &event.policy_version,
            reason: &event.reason,
            attributes: &event.attributes,
        },
        head,
        out,
    )?;
    out.push(UNION_SECOND_BRANCH);
    out.extend_from_slice(decision_datum);
    match outcome_datum {
        Some(datum) => {
            out.push(UNION_SECOND_BRANCH);
            out.extend_from_slice(datum);
        }
        None => {
            #[derive(Serialize)]
            struct OutcomePart<'a> {
                outcome: &'a Option<Outcome>,
            }
            encode_part(
                &OutcomePart {
                    outcome: &event.outcome,
                },
                outcome_field,
                out,
            )?;
        }
    }
    encode_part(
        &LifecycleRest {
            traceparent: &event.traceparent,
        },
        rest,
        out,
    )
}

/// Branch 1 of a `["null", T]` union, zig-zag encoded.
const UNION_SECOND_BRANCH: u8 = 0x02;

/// Records with a `Decision` field that `Codec::encode_with_decision_datum` can fill from the
/// received datum.
pub trait EmbedsDecision: Record {
    #[doc(hidden)]
    fn datum_with_decision(
        &self,
        decision_datum: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError>;
}

impl EmbedsDecision for ReviewRequest {
    fn datum_with_decision(
        &self,
        decision_datum: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        review_request_datum(self, decision_datum, out)
    }
}

impl EmbedsDecision for LifecycleEvent {
    fn datum_with_decision(
        &self,
        decision_datum: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        lifecycle_datum(self, decision_datum, None, out)
    }
}
