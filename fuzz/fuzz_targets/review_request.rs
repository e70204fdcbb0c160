//! The ReviewRequest decoder (generic path; the writer is hand-written). The first byte chooses
//! the reading (even: a datum of this build's schema, the harness adds the header; odd: a whole
//! framed record), the rest is the record.
//!
//! A request decoded re-encodes to a fixed point, and the router's shared encoding agrees with the
//! plain one: `encode_review_request` writes the bytes `encode` writes, and a lifecycle event that
//! copies the request's decision datum (`encode_lifecycle_event`) is byte-identical to one encoded
//! on its own.
#![no_main]

use hitl_fuzz::{codec, fuzz_framed_record, TOPIC};
use hitl_schema::{sample, ReviewRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(request) = fuzz_framed_record::<ReviewRequest>(data) else {
        return;
    };
    let plain = codec().encode_to_vec(TOPIC, &request).expect("encodes");
    let mut shared = Vec::new();
    let decision_datum = codec()
        .encode_review_request(TOPIC, &request, &mut shared)
        .expect("encodes");
    let mut event = sample::routed(
        (*request.decision).clone(),
        "human",
        &request.policy_rule,
        request.routed_at,
    );
    event.decision = Some(request.decision.clone());
    let mut spliced = Vec::new();
    codec()
        .encode_lifecycle_event(TOPIC, &event, Some(decision_datum), None, &mut spliced)
        .expect("encodes");
    assert_eq!(plain, shared, "encode_review_request differs from encode");
    let event_plain = codec().encode_to_vec(TOPIC, &event).expect("encodes");
    assert_eq!(
        spliced, event_plain,
        "a lifecycle event with a copied decision datum differs from one encoded on its own"
    );
});
