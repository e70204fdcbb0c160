//! The assignment service. Today: its pure queue core (`queue`, priority with SLA decay); the
//! balancing, leases, escalation, quorum and the Kafka shell are issue #3's remaining work.

pub mod queue;
