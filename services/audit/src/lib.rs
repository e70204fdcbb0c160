//! The hitl audit service: each decision's provenance as a signed, hash-chained record on the
//! compacted `hitl.audit` topic, signed checkpoints per partition, exactly one labeled example per
//! human-decided outcome and QA sample on `hitl.feedback`, and `verify`.
//!
//! `trail`, `checkpoint`, `verify` and `crypto` are pure (no Kafka, no clock); `service` is the
//! shell and `reader` reads topics for `verify`.

pub mod bounds;
pub mod checkpoint;
pub mod crypto;
pub mod head;
mod metrics;
pub mod reader;
pub mod service;
pub mod trail;
pub mod verify;

use hitl_runtime::{config::Settings, LoopSettings};
use tokio_util::sync::CancellationToken;

pub use service::{AuditProcessor, AuditSettings};

/// Runs the audit service until `shutdown` is cancelled or its loop fails fatally.
pub async fn run(
    settings: Settings<AuditSettings>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    hitl_runtime::service::run(
        &settings,
        settings.service.create_topics,
        loop_settings(&settings),
        shutdown,
        |startup| {
            Ok(AuditProcessor::build(
                &settings,
                startup.registry,
                startup.tracer.clone(),
            )?)
        },
    )
    .await?;
    Ok(())
}

/// The loop settings the audit service runs with.
pub fn loop_settings(settings: &Settings<AuditSettings>) -> LoopSettings {
    LoopSettings {
        service: "audit".into(),
        group_id: settings.service.group_id.clone(),
        transactional_id: settings.service.transactional_id(),
        input_topics: vec![settings.topics.lifecycle.clone()],
        dead_letter_topic: Some(settings.topics.decisions_dlq.clone()),
        tick_interval: Some(settings.service.tick_interval),
        max_records_per_second: None,
    }
}
