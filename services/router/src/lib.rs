//! The hitl router: decodes and validates decisions, evaluates the routing policy, and emits an
//! automatic outcome, a review request for people, or a dead letter — exactly once per decision.
//!
//! `policy`, `core`, `validate` and `dedup` are pure (no Kafka, no clock); `service` is the shell.

pub mod core;
pub mod dedup;
mod metrics;
pub mod policy;
pub mod service;
pub mod validate;

use std::sync::{atomic::AtomicBool, Arc};

use hitl_runtime::{config::Settings, LoopSettings};
use tokio_util::sync::CancellationToken;

pub use service::{RouterProcessor, RouterSettings};

/// Runs the router until `shutdown` is cancelled or its loop fails fatally.
pub async fn run(
    settings: Settings<RouterSettings>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let reload_requested = Arc::new(AtomicBool::new(false));
    hitl_runtime::service::run(
        &settings,
        settings.service.create_topics,
        loop_settings(&settings),
        shutdown,
        |startup| {
            let processor = RouterProcessor::build(
                &settings,
                startup.registry,
                reload_requested.clone(),
                startup.tracer.clone(),
            )?;
            spawn_sighup_listener(reload_requested, startup.shutdown.clone());
            Ok(processor)
        },
    )
    .await?;
    Ok(())
}

/// The loop settings the router runs with.
pub fn loop_settings(settings: &Settings<RouterSettings>) -> LoopSettings {
    LoopSettings {
        service: "router".into(),
        group_id: settings.service.group_id.clone(),
        transactional_id: settings.service.transactional_id(),
        input_topics: vec![settings.topics.decisions.clone()],
        dead_letter_topic: Some(settings.topics.decisions_dlq.clone()),
        tick_interval: Some(std::time::Duration::from_millis(200)),
        max_records_per_second: settings.service.rate_limit(),
    }
}

fn spawn_sighup_listener(reload_requested: Arc<AtomicBool>, shutdown: CancellationToken) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading policies");
                    reload_requested.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });
}
