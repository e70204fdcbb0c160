//! The hitl assignment service: puts each pending review item in front of the right reviewer —
//! priority with SLA decay, roles, capacity and fairness, leases, escalation, quorum — and turns
//! verdicts into outcomes.
//!
//! `queue`, `pools` and `core` are pure (no Kafka, no clock); the Kafka shell is `service`.

pub mod core;
pub mod pools;
pub mod queue;
