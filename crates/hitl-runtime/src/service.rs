//! Running a service: metrics registry and trace export, topic bootstrap, the HTTP endpoint
//! (`/metrics`, `/healthz`, `/readyz`), the loop on its thread, and a clean stop. Every service's
//! `run` is "check what is specific to it, then [`run`] with a closure that builds its processor".

use std::thread::JoinHandle;

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Settings,
    http, kafka,
    pipeline::{self, BoxError, LoopError, LoopSettings, Processor},
    trace::{self, Tracer},
    Health, LoopMetrics,
};

/// Why a service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot start: {0}")]
    Build(#[source] BoxError),
    #[error("cannot create topics: {0}")]
    Topics(#[source] rdkafka::error::KafkaError),
    #[error("cannot serve HTTP: {0}")]
    Http(#[source] std::io::Error),
    #[error(transparent)]
    Loop(#[from] LoopError),
    #[error("the {0} loop thread panicked")]
    Panicked(String),
}

/// What a service builds its processor with.
pub struct Startup<'a> {
    /// Where the service registers its metrics; `/metrics` serves them with the loop's and the
    /// trace exporter's.
    pub registry: &'a mut Registry,
    /// Exports the service's spans (disabled without an OTLP endpoint). Its last spans are
    /// flushed when the service stops, once the processor (and every clone) is dropped.
    pub tracer: Tracer,
    /// Cancelled when the service stops, whatever the reason: helper threads and tasks end on it.
    pub shutdown: CancellationToken,
    /// Helper threads to join once the service has stopped.
    helpers: Vec<JoinHandle<()>>,
}

impl Startup<'_> {
    /// A helper thread that ends when `shutdown` is cancelled; `run` joins it before returning.
    pub fn join_on_stop(&mut self, helper: JoinHandle<()>) {
        self.helpers.push(helper);
    }
}

/// Runs a service until `shutdown` is cancelled or its loop fails:
/// starts trace export (`hitl-<service>`), builds the processor with `build`, creates the
/// contract topics (when `create_topics`), serves `/metrics`, `/healthz` and `/readyz`, runs the
/// loop; then stops everything (cancelling `shutdown`), flushes the trace exporter and joins the
/// helper threads, whatever the outcome.
pub async fn run<S, P, F>(
    settings: &Settings<S>,
    create_topics: bool,
    loop_settings: LoopSettings,
    shutdown: CancellationToken,
    build: F,
) -> Result<(), ServiceError>
where
    P: Processor,
    F: FnOnce(&mut Startup<'_>) -> Result<P, BoxError>,
{
    let mut registry = Registry::default();
    let (tracer, exporter) = trace::start(
        &settings.telemetry,
        &format!("hitl-{}", loop_settings.service),
        &mut registry,
    );
    let mut startup = Startup {
        registry: &mut registry,
        tracer,
        shutdown: shutdown.clone(),
        helpers: Vec::new(),
    };
    let built = build(&mut startup);
    // The exporter finishes once every tracer is dropped: this one now, the processor's with it.
    let helpers = std::mem::take(&mut startup.helpers);
    drop(startup);
    let result = match built {
        Ok(processor) => {
            run_loop(
                settings,
                create_topics,
                loop_settings,
                processor,
                registry,
                shutdown.clone(),
            )
            .await
        }
        Err(error) => Err(ServiceError::Build(error)),
    };
    shutdown.cancel();
    trace::finish(exporter).await;
    for helper in helpers {
        let _ = tokio::task::spawn_blocking(move || helper.join()).await;
    }
    result
}

/// Creates the contract topics (when `create_topics`), serves `/metrics` (`registry`, plus the
/// loop's metrics), `/healthz` and `/readyz`, and runs `processor` on the loop until `shutdown` is
/// cancelled or the loop fails fatally.
async fn run_loop<S, P: Processor>(
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

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };

    use super::*;
    use crate::{config::NoServiceSettings, pipeline::ProcessError, InputRecord, OutputRecord};

    struct Nothing;

    impl Processor for Nothing {
        fn process(
            &mut self,
            _input: &InputRecord<'_>,
            _output: &mut Vec<OutputRecord>,
        ) -> Result<(), ProcessError> {
            Ok(())
        }
    }

    fn loop_settings() -> LoopSettings {
        LoopSettings {
            service: "test".into(),
            group_id: "test".into(),
            transactional_id: "test-0".into(),
            input_topics: vec!["in".into()],
            dead_letter_topic: None,
            tick_interval: None,
            max_records_per_second: None,
        }
    }

    #[tokio::test]
    async fn a_service_that_cannot_start_stops_its_helpers_and_says_why() {
        let settings = Settings::<NoServiceSettings>::default();
        let helper_stopped = Arc::new(AtomicBool::new(false));
        let stopped = helper_stopped.clone();
        let result = run(
            &settings,
            true,
            loop_settings(),
            CancellationToken::new(),
            |startup| -> Result<Nothing, BoxError> {
                let shutdown = startup.shutdown.clone();
                startup.join_on_stop(std::thread::spawn(move || {
                    while !shutdown.is_cancelled() {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    stopped.store(true, Ordering::SeqCst);
                }));
                Err("the policy file is unreadable".into())
            },
        )
        .await;
        match result {
            Err(ServiceError::Build(error)) => {
                assert_eq!(error.to_string(), "the policy file is unreadable")
            }
            other => panic!("expected a build error, got {other:?}"),
        }
        assert!(
            helper_stopped.load(Ordering::SeqCst),
            "the helper was told to stop and joined before run returned"
        );
    }
}
