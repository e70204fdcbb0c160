//! The hitl audit service: each decision's provenance as a signed, hash-chained record on the
//! compacted `hitl.audit` topic, signed checkpoints per partition, exactly one labeled example per
//! human-decided outcome and QA sample on `hitl.feedback`, and `verify`.
//!
//! `trail`, `checkpoint`, `verify` and `crypto` are pure (no Kafka, no clock); `service` is the
//! shell and `reader` reads topics for `verify`.

pub mod checkpoint;
pub mod crypto;
pub mod trail;
pub mod verify;
