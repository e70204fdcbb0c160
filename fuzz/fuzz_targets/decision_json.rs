//! The JSON decision decoder (`content-type: application/json`). The input is the record.
//!
//! A decision decoded re-encodes (Avro) to a fixed point and, when valid, survives its JSON form.
//! A refusal is a `json` error whose message never quotes the input's values: no input value can
//! put `SECRET` into it (keys are not quoted either: unknown fields are ignored, and the missing
//! or duplicate ones are named from the schema).
#![no_main]

use hitl_fuzz::{assert_reencodes, assert_valid_decision_round_trips_through_json, codec};
use hitl_schema::Decision;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match codec().decode_json::<Decision>(data) {
        Ok(decision) => {
            assert_reencodes(&decision);
            assert_valid_decision_round_trips_through_json(&decision);
        }
        Err(error) => {
            assert_eq!(error.class(), "json");
            let message = error.to_string();
            assert!(
                !message.contains("SECRET"),
                "the error quotes a value of the input: {message}"
            );
        }
    }
});
