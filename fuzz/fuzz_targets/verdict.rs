//! The Verdict decoder (generic path, `serde_avro_fast`). The first byte chooses the reading (even: a
//! datum of this build's schema, the harness adds the header; odd: a whole framed record), the rest
//! is the record. A record decoded re-encodes to a fixed point (`hitl_fuzz::fuzz_framed_record`).
#![no_main]

use hitl_schema::Verdict;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hitl_fuzz::fuzz_framed_record::<Verdict>(data);
});
