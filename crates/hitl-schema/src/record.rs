//! Binds each record type to its `.avsc` file.

use std::sync::OnceLock;

use serde::{de::DeserializeOwned, Serialize};
use serde_avro_fast::Schema;

use crate::types::*;

/// A record type of the topic contract with its Avro schema.
pub trait Record: Serialize + DeserializeOwned {
    /// The Avro full name, e.g. `io.hitl.Decision`.
    const FULL_NAME: &'static str;
    /// The `.avsc` text, exactly as in `schemas/`.
    const SCHEMA_JSON: &'static str;
    /// The parsed schema, built once.
    fn schema() -> &'static Schema;
    /// CRC-64-AVRO (Rabin) fingerprint of the schema's canonical form.
    fn fingerprint() -> [u8; 8] {
        *Self::schema().rabin_fingerprint()
    }
}

macro_rules! record {
    ($ty:ty, $name:literal, $file:literal) => {
        impl Record for $ty {
            const FULL_NAME: &'static str = concat!("io.hitl.", $name);
            const SCHEMA_JSON: &'static str = include_str!(concat!("../../../schemas/", $file));
            fn schema() -> &'static Schema {
                static SCHEMA: OnceLock<Schema> = OnceLock::new();
                SCHEMA.get_or_init(|| {
                    Self::SCHEMA_JSON.parse().expect(concat!(
                        "schemas/",
                        $file,
                        " is a valid Avro schema"
                    ))
                })
            }
        }
    };
}

record!(Decision, "Decision", "decision.avsc");
record!(ReviewRequest, "ReviewRequest", "review_request.avsc");
record!(AssignmentEvent, "AssignmentEvent", "assignment_event.avsc");
record!(Verdict, "Verdict", "verdict.avsc");
record!(ReviewerStatus, "ReviewerStatus", "reviewer_status.avsc");
record!(Outcome, "Outcome", "outcome.avsc");
record!(LifecycleEvent, "LifecycleEvent", "lifecycle_event.avsc");
record!(AuditRecord, "AuditRecord", "audit_record.avsc");
record!(AuditCheckpoint, "AuditCheckpoint", "audit_checkpoint.avsc");
record!(FeedbackRecord, "FeedbackRecord", "feedback_record.avsc");

/// Every contract schema, by file name: for tooling (registry upload, documentation).
pub fn all_schemas() -> Vec<(&'static str, &'static str)> {
    vec![
        ("decision.avsc", Decision::SCHEMA_JSON),
        ("review_request.avsc", ReviewRequest::SCHEMA_JSON),
        ("assignment_event.avsc", AssignmentEvent::SCHEMA_JSON),
        ("verdict.avsc", Verdict::SCHEMA_JSON),
        ("reviewer_status.avsc", ReviewerStatus::SCHEMA_JSON),
        ("outcome.avsc", Outcome::SCHEMA_JSON),
        ("lifecycle_event.avsc", LifecycleEvent::SCHEMA_JSON),
        ("audit_record.avsc", AuditRecord::SCHEMA_JSON),
        ("audit_checkpoint.avsc", AuditCheckpoint::SCHEMA_JSON),
        ("feedback_record.avsc", FeedbackRecord::SCHEMA_JSON),
    ]
}
