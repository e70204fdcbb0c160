//! Running a service: topic bootstrap, the HTTP endpoint, the loop on its thread, and a clean stop.
//! Every service's `run` is "build the processor, then `run_loop`".

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Settings,
    http, kafka,
    pipeline::{self, LoopError, LoopSettings, Processor},
    Health, LoopMetrics,
};

/// Why a service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot create topics: {0}")]
    Topics(#[source] rdkafka::error::KafkaError),
    #[error("cannot serve HTTP: {0}")]
    Http(#[source] std::io::Error),
    #[error(transparent)]
    Loop(#[from] LoopError),
    #[error("the {0} loop thread panicked")]
    Panicked(String),
}

/// Creates the contract topics (when `create_topics`), serves `/metrics` (`registry`, plus the
/// loop's metrics), `/healthz` and `/readyz`, and runs `processor` on the loop until `shutdown` is
/// cancelled or the loop fails fatally.
pub async fn run_loop<S, P: Processor>(
    settings: &Settings<S>,
    create_topics: bool,
    loop_settings: LoopSettings,
    processor: P,
    mut registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    if create_topics {
        let created = kafka::ensure_topics(
            &settings.kafka,
            &settings.topics.specs(),
            settings.topics.replication_factor,
        )
        .await
        .map_err(ServiceError::Topics)?;
        if !created.is_empty() {
            tracing::info!(topics = ?created, "created topics");
        }
    }
    let loop_metrics = LoopMetrics::register(&mut registry);
    let health = Health::default();
    let (address, http_task) = http::serve(
        settings.http.listen,
        std::sync::Arc::new(registry),
        health.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(ServiceError::Http)?;
    let service = loop_settings.service.clone();
    tracing::info!(%address, %service, "http endpoint");
    let handle = pipeline::spawn(
        settings.kafka.clone(),
        loop_settings,
        processor,
        shutdown.clone(),
        health,
        loop_metrics,
    );
    let joined = tokio::task::spawn_blocking(move || handle.join()).await;
    shutdown.cancel();
    let _ = http_task.await;
    match joined {
        Ok(Ok(result)) => result.map_err(ServiceError::Loop),
        _ => Err(ServiceError::Panicked(service)),
    }
}
