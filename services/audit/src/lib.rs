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

use std::sync::Arc;

use hitl_runtime::{config::Settings, http, kafka, pipeline, Health, LoopMetrics, LoopSettings};
use tokio_util::sync::CancellationToken;

pub use service::{AuditProcessor, AuditSettings};

/// Runs the audit service until `shutdown` is cancelled or its loop fails fatally.
pub async fn run(
    settings: Settings<AuditSettings>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let keys = settings.service.keys().map_err(|problems| {
        anyhow::anyhow!("refusing to start:\n  - {}", problems.join("\n  - "))
    })?;
    tracing::info!(key_id = %keys.key_id(), public_key = %keys.public_hex(), "audit signing key");
    let mut registry = prometheus_client::registry::Registry::default();
    let loop_metrics = LoopMetrics::register(&mut registry);
    let metrics = Arc::new(metrics::AuditMetrics::register(&mut registry));
    let health = Health::default();
    let codec = settings.codec.build(settings.kafka.request_timeout)?;
    if settings.service.create_topics {
        let created = kafka::ensure_topics(
            &settings.kafka,
            &settings.topics.specs(),
            settings.topics.replication_factor,
        )
        .await?;
        if !created.is_empty() {
            tracing::info!(topics = ?created, "created topics");
        }
    }
    let processor = AuditProcessor::new(&settings, keys, codec, metrics);
    let (address, http_task) = http::serve(
        settings.http.listen,
        Arc::new(registry),
        health.clone(),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(%address, "audit http endpoint");
    let handle = pipeline::spawn(
        settings.kafka.clone(),
        loop_settings(&settings),
        processor,
        shutdown.clone(),
        health,
        loop_metrics,
    );
    let result = tokio::task::spawn_blocking(move || handle.join()).await?;
    shutdown.cancel();
    let _ = http_task.await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.into()),
        Err(_) => anyhow::bail!("audit loop thread panicked"),
    }
}

/// The loop settings the audit service runs with.
pub fn loop_settings(settings: &Settings<AuditSettings>) -> LoopSettings {
    LoopSettings {
        service: "audit".into(),
        group_id: settings.service.group_id.clone(),
        transactional_id: settings.service.transactional_id(),
        input_topics: vec![settings.topics.lifecycle.clone()],
        tick_interval: Some(settings.service.tick_interval),
        max_records_per_second: None,
    }
}
