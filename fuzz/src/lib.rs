//! What the fuzz targets (`fuzz_targets/`) share: the pure modules they exercise, the laws they
//! assert, and the seeds they start from.
//!
//! The router's policy, routing core and validation, and hitl-runtime's `auth` and `config`, are
//! compiled into this crate from their own source files (`#[path]`) instead of being linked from
//! their crates: those crates also hold the Kafka shell, and linking them would build librdkafka (C)
//! with sanitizer flags on every CI run. The modules are pure and refer to nothing of their crate
//! but each other (`crate::policy`, `crate::auth`, `crate::config`), so they compile here
//! unchanged; a change that makes one of them need the shell breaks this build, which CI runs.

use std::{fmt::Debug, io::BufRead, sync::OnceLock};

use hitl_schema::{Codec, Decision, Record};

#[path = "../../crates/hitl-runtime/src/auth.rs"]
pub mod auth;
#[path = "../../crates/hitl-runtime/src/config.rs"]
pub mod config;
#[path = "../../services/router/src/policy.rs"]
pub mod policy;
#[path = "../../services/router/src/core.rs"]
pub mod route;
pub mod seeds;
#[path = "../../services/router/src/validate.rs"]
pub mod validate;

/// The topic name handed to the codec (it only matters with a schema registry).
pub const TOPIC: &str = "fuzz";

/// `C3 01`, `fingerprint`, then `datum`: a single-object record.
pub fn framed_with(fingerprint: &[u8; 8], datum: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(10 + datum.len());
    framed.extend_from_slice(&[0xC3, 0x01]);
    framed.extend_from_slice(fingerprint);
    framed.extend_from_slice(datum);
    framed
}

/// `datum` framed as a record of this build's schema of `T`.
pub fn framed<T: Record>(datum: &[u8]) -> Vec<u8> {
    framed_with(&T::fingerprint(), datum)
}

/// An older version of `decision.avsc`: without `model_version`, `sensitive_fields` and `sla_ms`,
/// and with a field `legacy_score` this build does not know. Records written with it are read by
/// field name (Avro schema evolution): the missing fields take their defaults, the unknown one is
/// skipped.
pub fn old_decision_schema() -> &'static str {
    static SCHEMA: OnceLock<String> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let mut schema: serde_json::Value =
            serde_json::from_str(Decision::SCHEMA_JSON).expect("decision.avsc is JSON");
        let fields = schema["fields"].as_array_mut().expect("a record schema");
        fields.retain(|field| {
            !["model_version", "sensitive_fields", "sla_ms"]
                .contains(&field["name"].as_str().unwrap_or_default())
        });
        fields.insert(
            5,
            serde_json::json!({"name": "legacy_score", "type": "double"}),
        );
        schema.to_string()
    })
}

/// The CRC-64-AVRO fingerprint of `old_decision_schema()`.
pub fn old_decision_fingerprint() -> [u8; 8] {
    static FINGERPRINT: OnceLock<[u8; 8]> = OnceLock::new();
    *FINGERPRINT.get_or_init(|| {
        let schema: serde_avro_fast::Schema =
            old_decision_schema().parse().expect("a valid schema");
        *schema.rabin_fingerprint()
    })
}

/// The codec every target decodes with: single-object framing, this build's schemas, and
/// `old_decision_schema()` as another known writer schema.
pub fn codec() -> &'static Codec {
    static CODEC: OnceLock<Codec> = OnceLock::new();
    CODEC.get_or_init(|| {
        Codec::single_object()
            .with_writer_schema(old_decision_schema())
            .expect("the old decision schema is valid")
    })
}

/// Law: a decoded record encodes, its encoding decodes, and decoding then encoding again gives
/// the same bytes (compared as bytes, so NaN payloads count too). Returns the encoding.
pub fn assert_reencodes<T: Record + Debug>(value: &T) -> Vec<u8> {
    let name = T::FULL_NAME;
    let bytes = codec()
        .encode_to_vec(TOPIC, value)
        .unwrap_or_else(|error| panic!("a decoded {name} does not encode: {error}\n{value:?}"));
    let again: T = codec().decode(&bytes).unwrap_or_else(|error| {
        panic!("the encoding of a decoded {name} does not decode: {error}\n{value:?}")
    });
    let bytes_again = codec()
        .encode_to_vec(TOPIC, &again)
        .expect("a decoded record encodes");
    assert_eq!(
        bytes, bytes_again,
        "{name}: encode → decode → encode changed the bytes\n{value:?}\n{again:?}"
    );
    bytes
}

/// The generic path's reading of `datum` (`serde_avro_fast` with this build's schema of `T`),
/// `None` unless it reads a value from every byte.
pub fn generic_read<T: Record>(datum: &[u8]) -> Option<T> {
    let mut state = serde_avro_fast::de::DeserializerState::from_slice(datum, T::schema());
    let value = T::deserialize(state.deserializer()).ok()?;
    state
        .into_reader()
        .fill_buf()
        .is_ok_and(|rest| rest.is_empty())
        .then_some(value)
}

/// The body of the targets of records read through the generic path. The first byte chooses how
/// the rest is read: even, as the datum of a record of this build's schema (the harness adds the
/// header, so seeds survive a schema change); odd, as a whole framed record (the framing checks).
/// A record that decodes must satisfy `assert_reencodes`.
pub fn fuzz_framed_record<T: Record + Debug>(data: &[u8]) -> Option<T> {
    let (&selector, rest) = data.split_first()?;
    let decoded = if selector % 2 == 0 {
        codec().decode::<T>(&framed::<T>(rest))
    } else {
        codec().decode::<T>(rest)
    };
    let value = decoded.ok()?;
    assert_reencodes(&value);
    Some(value)
}

/// Law: a decision that passes the router's validation survives its JSON form: it encodes as JSON,
/// and that JSON decodes to the same decision, which is still valid.
pub fn assert_valid_decision_round_trips_through_json(decision: &Decision) {
    if !validate::problems(decision).is_empty() {
        return;
    }
    // Valid decisions hold finite numbers only, so `PartialEq` can compare them.
    let json = serde_json::to_vec(decision).expect("a decision encodes as JSON");
    let back: Decision = codec().decode_json(&json).unwrap_or_else(|error| {
        panic!(
            "the JSON of a valid decision does not decode: {error}\n{}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(&back, decision, "a valid decision changed through JSON");
    assert!(validate::problems(&back).is_empty());
}

/// A fixed "now" for routing, in milliseconds (November 2026): time is a parameter of the core.
pub const NOW_MILLIS: i64 = 1_795_000_000_000;
