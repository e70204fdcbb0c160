//! The hitl audit service: each decision's provenance as a signed, hash-chained record on the
//! compacted `hitl.audit` topic, signed checkpoints per partition, exactly one labeled example per
//! human-decided outcome and QA sample on `hitl.feedback`, and `verify`.
//!
//! `trail`, `checkpoint`, `verify` and `crypto` are pure (no Kafka, no clock); `service` is the
//! shell and `reader` reads topics for `verify`.

pub mod checkpoint;
pub mod crypto;
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
    let mut registry = prometheus_client::registry::Registry::default();
    let (tracer, exporter) =
        hitl_runtime::trace::start(&settings.telemetry, "hitl-audit", &mut registry);
    let processor = AuditProcessor::build(&settings, &mut registry, tracer)?;
    let result = hitl_runtime::service::run_loop(
        &settings,
        settings.service.create_topics,
        loop_settings(&settings),
        processor,
        registry,
        shutdown,
    )
    .await;
    hitl_runtime::trace::finish(exporter).await;
    Ok(result?)
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
