//! The LifecycleEvent decoder (generic path; the writer is hand-written). The first byte chooses
//! the reading (even: a datum of this build's schema, the harness adds the header; odd: a whole
//! framed record), the rest is the record.
//!
//! An event decoded re-encodes to a fixed point, and copying the datums of its decision and
//! outcome from the records they were first written into (`encode_lifecycle_event`, what the
//! router does) gives the bytes of encoding it on its own.
#![no_main]

use hitl_fuzz::{codec, fuzz_framed_record, TOPIC};
use hitl_schema::{sample, LifecycleEvent, ReviewRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(event) = fuzz_framed_record::<LifecycleEvent>(data) else {
        return;
    };
    let plain = codec().encode_to_vec(TOPIC, &event).expect("encodes");
    let request = event.decision.as_ref().map(|decision| ReviewRequest {
        decision: decision.clone(),
        ..sample::review_request(String::new(), 1, "general".into(), 1, 2)
    });
    let mut request_bytes = Vec::new();
    let decision_datum = request.as_ref().map(|request| {
        codec()
            .encode_review_request(TOPIC, request, &mut request_bytes)
            .expect("encodes")
    });
    let mut outcome_bytes = Vec::new();
    let outcome_datum = event.outcome.as_ref().map(|outcome| {
        codec()
            .encode_shared(TOPIC, outcome, &mut outcome_bytes)
            .expect("encodes")
    });
    let mut spliced = Vec::new();
    codec()
        .encode_lifecycle_event(TOPIC, &event, decision_datum, outcome_datum, &mut spliced)
        .expect("encodes");
    assert_eq!(
        spliced, plain,
        "a lifecycle event with copied datums differs from one encoded on its own"
    );
});
