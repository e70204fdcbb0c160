//! The Avro decision decoder. The first byte chooses the path, the rest is the record:
//!
//! - 0: a datum of this build's `decision.avsc` (the harness adds the header), read by the
//!   hand-written decoder (`hitl-schema/src/datum.rs`), which must agree with the generic one
//!   (`serde_avro_fast` driven by the `.avsc`): both refuse it, or both read the same decision;
//! - 1: a datum of another version of the schema (`old_decision_schema`), read by field name;
//! - 2: a whole record, header included (single-object or Confluent framing; no registry here).
//!
//! Every decision decoded re-encodes to a fixed point, and a valid one survives its JSON form.
#![no_main]

use hitl_fuzz::{
    assert_reencodes, assert_valid_decision_round_trips_through_json, codec, framed, framed_with,
    generic_read, old_decision_fingerprint,
};
use hitl_schema::Decision;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let decoded = match selector % 3 {
        0 => {
            let fast = codec().decode::<Decision>(&framed::<Decision>(rest));
            let generic = generic_read::<Decision>(rest);
            match (&fast, &generic) {
                (Ok(fast), Some(generic)) => assert_eq!(
                    assert_reencodes(fast),
                    assert_reencodes(generic),
                    "the hand-written and the generic decoder read different decisions"
                ),
                (Err(error), None) => assert_eq!(error.class(), "avro", "{error}"),
                _ => panic!("hand-written decoder: {fast:?}\ngeneric decoder: {generic:?}"),
            }
            fast.ok()
        }
        1 => codec()
            .decode::<Decision>(&framed_with(&old_decision_fingerprint(), rest))
            .ok(),
        _ => codec().decode::<Decision>(rest).ok(),
    };
    if let Some(decision) = decoded {
        assert_reencodes(&decision);
        assert_valid_decision_round_trips_through_json(&decision);
    }
});
