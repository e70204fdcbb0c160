//! Binds each record type to its `.avsc` file.

use std::sync::OnceLock;

use serde::{de::DeserializeOwned, Serialize};
use serde_avro_fast::Schema;

use crate::{codec, datum, types::*, CodecError};

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
    /// Appends the Avro datum of `self` written with `schema()`. Hand-written for the router's hot
    /// records (`datum.rs`), `serde_avro_fast` for the others; the same bytes either way.
    #[doc(hidden)]
    fn write_datum(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        codec::serde_write_datum(self, Self::schema(), Self::FULL_NAME, out)
    }
    /// Reads exactly one datum written with `schema()` (trailing bytes are an error).
    #[doc(hidden)]
    fn read_datum(datum: &[u8]) -> Result<Self, CodecError> {
        codec::serde_read_datum(datum, Self::schema(), Self::FULL_NAME)
    }
}

macro_rules! record {
    ($ty:ty, $name:literal, $file:literal $(, write = $write:path)? $(, read = $read:path)?) => {
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
            $(
                fn write_datum(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
                    $write(self, out);
                    Ok(())
                }
            )?
            $(
                fn read_datum(datum: &[u8]) -> Result<Self, CodecError> {
                    $read(datum)
                }
            )?
        }
    };
}

record!(
    Decision,
    "Decision",
    "decision.avsc",
    write = datum::write_decision,
    read = datum::read_decision
);
record!(
    ReviewRequest,
    "ReviewRequest",
    "review_request.avsc",
    write = datum::write_review_request_datum
);
record!(AssignmentEvent, "AssignmentEvent", "assignment_event.avsc");
record!(Verdict, "Verdict", "verdict.avsc");
record!(ReviewerStatus, "ReviewerStatus", "reviewer_status.avsc");
record!(
    Outcome,
    "Outcome",
    "outcome.avsc",
    write = datum::write_outcome
);
record!(
    LifecycleEvent,
    "LifecycleEvent",
    "lifecycle_event.avsc",
    write = datum::write_lifecycle_event
);
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
